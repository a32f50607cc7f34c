//! Warm start of a module with more than 10 MB of code, against the WasmEdge CLI's AOT start
//! of the same compiled module.
//!
//! - `wasmedge CLI: large.so`: what every start costs without a runner that keeps the module
//!   loaded: exec, dlopen, parse and validate the Wasm the `.so` embeds, instantiate, run.
//! - `runner model: fork + instantiate + run`: what a container start costs in the runner
//!   once the module is loaded there (the shim's warm path): fork a child of the process
//!   that holds the loaded module, instantiate it with WASI, run `_start`, reap the child.
//! - `interpreter: load bytes + instantiate + run`: the interpreter's start of the module.
//! - `one process: load .so + instantiate + run`: WasmEdge's load each time: parse and
//!   validate the Wasm the `.so` embeds (dlopen itself returns the already-mapped object for
//!   the same file), then instantiate and run; what a start costs without a kept module.
//!
//! The module is generated (tests/fixtures/gen_large.py) and compiled once (minutes) into
//! target/fixtures. `cargo criterion --bench large` (or `cargo bench --bench large`)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmedge_aot_engine::{Engine, Options, Outcome, WasiPlan};

fn large_module(engine: &Engine) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let wasm = dir.join("large.wasm");
    if !wasm.exists() {
        let wat = dir.join("large.wat");
        let gen = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen_large.py");
        assert!(Command::new("python3")
            .arg(gen)
            .arg(&wat)
            .status()
            .unwrap()
            .success());
        let tmp = dir.join("large.wasm.tmp");
        assert!(Command::new("wat2wasm")
            .arg(&wat)
            .arg("-o")
            .arg(&tmp)
            .status()
            .unwrap()
            .success());
        std::fs::rename(&tmp, &wasm).unwrap();
        let _ = std::fs::remove_file(&wat);
    }
    let so = dir.join("large.so");
    if !so.exists() {
        eprintln!("compiling {} (minutes, once)...", wasm.display());
        let tmp = dir.join("large.tmp.so");
        engine.compile(&wasm, &tmp).unwrap();
        std::fs::rename(&tmp, &so).unwrap();
    }
    (wasm, so)
}

fn warm_start(c: &mut Criterion) {
    let engine = Engine::new(Options::default()).unwrap();
    let (wasm, so) = large_module(&engine);
    eprintln!(
        "large module: {} MB of wasm, {} MB native",
        std::fs::metadata(&wasm).unwrap().len() >> 20,
        std::fs::metadata(&so).unwrap().len() >> 20
    );
    let links = tempfile::tempdir().unwrap();
    let plan = WasiPlan {
        args: vec!["large.wasm".into()],
        ..WasiPlan::default()
    };

    let mut g = c.benchmark_group("large module warm start");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("wasmedge CLI: large.so", |b| {
        b.iter(|| {
            let status = Command::new("wasmedge")
                .arg(&so)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        })
    });
    let loaded = engine.load_native(&so, links.path()).unwrap();
    g.bench_function("one process: instantiate + run (module kept loaded)", |b| {
        b.iter(|| {
            assert_eq!(
                engine.instantiate(&loaded, &plan).unwrap().run(),
                Outcome::Exited(0)
            );
        })
    });
    g.bench_function("runner model: fork + instantiate + run", |b| {
        b.iter(|| {
            // SAFETY: criterion runs benchmarks on this one thread; the child only uses
            // the engine and exits with _exit.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    let code = match engine.instantiate(&loaded, &plan).map(|i| i.run()) {
                        Ok(Outcome::Exited(0)) => 0,
                        _ => 1,
                    };
                    // SAFETY: the child must not run the parent's atexit handlers.
                    unsafe { libc::_exit(code) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let status = nix::sys::wait::waitpid(child, None).unwrap();
                    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
                }
            }
        })
    });
    let bytes = std::fs::read(&wasm).unwrap();
    g.bench_function("interpreter: load bytes + instantiate + run", |b| {
        b.iter(|| {
            let l = engine.load_bytes(&wasm, &bytes).unwrap();
            assert_eq!(
                engine.instantiate(&l, &plan).unwrap().run(),
                Outcome::Exited(0)
            );
        })
    });
    g.bench_function("one process: load .so + instantiate + run", |b| {
        b.iter(|| {
            let fresh = tempfile::tempdir().unwrap();
            let l = engine.load_native(&so, fresh.path()).unwrap();
            assert_eq!(
                engine.instantiate(&l, &plan).unwrap().run(),
                Outcome::Exited(0)
            );
        })
    });
    g.finish();
}

criterion_group!(benches, warm_start);
criterion_main!(benches);
