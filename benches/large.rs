//! Warm start of a module with more than 10 MB of code, against the WasmEdge CLI's AOT start
//! of the same compiled module (the artifact in the node cache).
//!
//! - `wasmedge CLI: large.so`: what every start costs without a runner that keeps the module
//!   loaded: exec, dlopen, parse and validate the Wasm the `.so` embeds, instantiate, run.
//! - `shim runner: cgroup + spawn + start + exit`: the shim's warm path, for real: the
//!   `wasmedge-shim-runner` binary, started as the shim starts it and driven over its socket
//!   as the shim drives it. Per start: create the container's cgroup, ask for a container
//!   process, wait for its Ready report, start it, reap it. The runner holds the module
//!   loaded and instantiated (a template); the container process sets its WASI environment,
//!   joins the cgroup and runs. Needs root (cgroups); said so and skipped otherwise.
//! - `runner model: fork + WASI environment + run`: the same without the shim's protocol
//!   and cgroup, in this process: fork from a prepared instance, run `_start`, reap.
//! - `runner model: fork + instantiate + run`: as before templates were instantiated.
//! - `interpreter: load bytes + instantiate + run`: the interpreter's start of the module.
//! - `one process: load .so + instantiate + run`: WasmEdge's load each time: parse and
//!   validate the Wasm the `.so` embeds (dlopen itself returns the already-mapped object for
//!   the same file), then instantiate and run; what a start costs without a kept module.
//!
//! The module is generated (tests/fixtures/gen_large.py) and compiled once (minutes) into
//! a node cache under target/fixtures/large-node, with the options the runner uses.
//! `cargo criterion --bench large` (or `cargo bench --bench large`)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmedge_aot_cache::{Cache, CacheConfig};
use wasmedge_aot_engine::{fingerprint, Engine, Options, RunOutcome, WasiPlan};
use wasmedge_aot_protocol::spawn::{BlockingClient, PidNamespace};
use wasmedge_aot_shim::config::Config;

mod support;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures")
}

/// The generated module, and its artifact in the bench's node cache (compiled on the
/// first run, minutes).
fn large_module(engine: &Engine, node: &Path) -> (PathBuf, PathBuf) {
    let dir = fixtures();
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
    let cache = Cache::open(CacheConfig::new(node.join("cache"))).unwrap();
    let key = cache.key_for(&wasm, &fingerprint(engine)).unwrap();
    if cache.lookup(&key).unwrap().is_none() {
        // In a process of its own (the admin tool's precompile, with the engine options the
        // bench uses): a compile leaves gigabytes of LLVM heap behind in its process, and
        // every fork of the in-process benches below would copy its page tables (a 2 ms
        // fork took 20 ms after an in-process compile).
        let shimctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/wasmedge-shimctl");
        let config = node.join("precompile.toml");
        std::fs::write(&config, "").unwrap();
        eprintln!("compiling {} (minutes, once)...", wasm.display());
        let status = Command::new(&shimctl)
            .arg("precompile")
            .arg("--config")
            .arg(&config)
            .arg("--cache-dir")
            .arg(node.join("cache"))
            .arg(&wasm)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (cargo build --release --workspace --bins)",
                    shimctl.display()
                )
            });
        assert!(status.success(), "precompile {}", wasm.display());
    }
    let so = cache.lookup(&key).unwrap().expect("precompiled above").path;
    (wasm, so)
}

/// One warm start of the large module through the runner: cgroup (if `cgroup`), spawn,
/// Ready, start, exit.
fn runner_start(
    runner: &BlockingClient,
    module: &File,
    plan: &(wasmedge_aot_protocol::control::ContainerPlan, PidNamespace),
    n: usize,
    cgroup: bool,
) -> Duration {
    let path = cgroup.then(|| format!("/wasmedge-aot-bench/large-{}-{n}", std::process::id()));
    let (t, code) = support::run_container(runner, module, plan, &format!("large-{n}"), path);
    assert_eq!(code, 0);
    t
}

fn warm_start(c: &mut Criterion) {
    let node = fixtures().join("large-node");
    std::fs::create_dir_all(&node).unwrap();
    let engine = Engine::new(Options::for_node(Config::default().opt_level)).unwrap();
    let (wasm, so) = large_module(&engine, &node);
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

    if nix::unistd::geteuid().is_root() {
        let runner = support::start_runner(&node);
        let module = File::open(&wasm).unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        let plan = support::isolated_plan(rootfs.path(), &["/large.wasm"]);
        // The first start loads the module into the runner; every later one is warm.
        runner_start(&runner, &module, &plan, 0, true);
        let mut n = 1;
        for (name, cgroup) in [
            ("shim runner: cgroup + spawn + start + exit", true),
            ("shim runner: spawn + start + exit (no cgroup)", false),
        ] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            n += 1;
                            runner_start(&runner, &module, &plan, n, cgroup)
                        })
                        .sum()
                })
            });
        }
    } else {
        eprintln!("skipped the shim runner benchmark: needs root (cgroups)");
    }

    let loaded = engine.load_native(&so, links.path()).unwrap();
    let prepared = std::cell::RefCell::new(Some(engine.prepare(&loaded).unwrap()));
    let fork_run = |run: &dyn Fn() -> i32| {
        // SAFETY: criterion runs benchmarks on this one thread; the child only uses the
        // engine and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = run();
                // SAFETY: the child must not run the parent's atexit handlers.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    };
    let exit_code = |outcome: Result<RunOutcome, _>| match outcome {
        Ok(RunOutcome::Exited(0)) => 0,
        _ => 1,
    };
    g.bench_function("runner model: fork + WASI environment + run", |b| {
        b.iter(|| {
            fork_run(&|| {
                // Takes the child's copy of the prepared instance; the parent's stays.
                let mine = prepared.borrow_mut().take().unwrap();
                exit_code(mine.with_wasi(&plan).map(|mut i| i.run()))
            })
        })
    });
    g.bench_function("runner model: fork + instantiate + run", |b| {
        b.iter(|| fork_run(&|| exit_code(engine.instantiate(&loaded, &plan).map(|mut i| i.run()))))
    });
    g.bench_function("one process: instantiate + run (module kept loaded)", |b| {
        b.iter(|| {
            assert_eq!(
                engine.instantiate(&loaded, &plan).unwrap().run(),
                RunOutcome::Exited(0)
            );
        })
    });
    let bytes = std::fs::read(&wasm).unwrap();
    g.bench_function("interpreter: load bytes + instantiate + run", |b| {
        b.iter(|| {
            let l = engine.load_bytes(&wasm, &bytes).unwrap();
            assert_eq!(
                engine.instantiate(&l, &plan).unwrap().run(),
                RunOutcome::Exited(0)
            );
        })
    });
    g.bench_function("one process: load .so + instantiate + run", |b| {
        b.iter(|| {
            let fresh = tempfile::tempdir().unwrap();
            let l = engine.load_native(&so, fresh.path()).unwrap();
            assert_eq!(
                engine.instantiate(&l, &plan).unwrap().run(),
                RunOutcome::Exited(0)
            );
        })
    });
    g.finish();
}

criterion_group!(benches, warm_start);
criterion_main!(benches);
