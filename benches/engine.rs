//! Engine-level start latency: load a module, instantiate it with WASI and run it to its exit,
//! from a cached native artifact and through the interpreter, side by side; and a CPU-bound
//! run (fib) in both tiers. No containerd here: this is the floor under a container start.
//!
//! `cargo criterion --bench engine` (or `cargo bench --bench engine`)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wasmedge_aot_engine::{Engine, Options, RunOutcome, WasiPlan};

fn fixtures() -> PathBuf {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures");
    let status = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build.sh"))
        .arg(&out)
        .status()
        .expect("run tests/fixtures/build.sh");
    assert!(status.success());
    out
}

fn plan(args: &[&str]) -> WasiPlan {
    WasiPlan {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..WasiPlan::default()
    }
}

fn start(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(Options::default()).unwrap();
    let wasm = fixtures().join("probe.wasm");
    let so = dir.path().join("probe.so");
    engine.compile(&wasm, &so).unwrap();
    let bytes = std::fs::read(&wasm).unwrap();
    // `probe exit 0`: runs wasi-libc's start-up and exits, printing nothing.
    let exit0 = plan(&["probe.wasm", "exit", "0"]);

    let mut g = c.benchmark_group("start");
    g.bench_function("native: load .so + instantiate + run", |b| {
        b.iter(|| {
            let loaded = engine.load_native(&so, dir.path()).unwrap();
            let mut inst = engine.instantiate(&loaded, &exit0).unwrap();
            assert_eq!(inst.run(), RunOutcome::Exited(0));
        })
    });
    g.bench_function("interpreter: load bytes + instantiate + run", |b| {
        b.iter(|| {
            let loaded = engine.load_bytes(&wasm, &bytes).unwrap();
            let mut inst = engine.instantiate(&loaded, &exit0).unwrap();
            assert_eq!(inst.run(), RunOutcome::Exited(0));
        })
    });
    let loaded = engine.load_native(&so, dir.path()).unwrap();
    g.bench_function("native: instantiate + run (module kept loaded)", |b| {
        b.iter(|| {
            let mut inst = engine.instantiate(&loaded, &exit0).unwrap();
            assert_eq!(inst.run(), RunOutcome::Exited(0));
        })
    });
    g.finish();

    let mut g = c.benchmark_group("cpu-bound fib(25)");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    // Output goes to fd 1; fib prints one short line per run.
    let fib = plan(&["probe.wasm", "fib", "25"]);
    let native = engine.load_native(&so, dir.path()).unwrap();
    let interp = engine.load_bytes(&wasm, &bytes).unwrap();
    g.bench_function("native", |b| {
        b.iter(|| engine.instantiate(&native, &fib).unwrap().run())
    });
    g.bench_function("interpreter", |b| {
        b.iter(|| engine.instantiate(&interp, &fib).unwrap().run())
    });
    g.finish();
}

criterion_group!(benches, start);
criterion_main!(benches);
