//! CPU-bound code through the real runner against the WasmEdge CLI running what
//! `wasmedge compile --optimize 2` made of the same module (issue 12): the runner must run
//! native code as fast as WasmEdge's own AOT, start-up subtracted.
//!
//! Two programs: the sieve (a tight loop, `profiling/levels/sieve.c`) and Boolector (an SMT
//! solver, 1.2 MB of code, from the YoWASP wheel) proving `profiling/levels/prime28.smt2`
//! unsat. `profiling/real-programs.sh --cpu` fetches and builds them into
//! target/real-programs (`scripts/bench.sh` runs it); the bench says so and skips without
//! them. For each program and path: the median of 5 runs of the workload and of 5 runs of a
//! trivial one (its start-up), interleaved; the ratio is (runner work - runner start-up) /
//! (CLI work - CLI start-up), printed with the figures. Needs root (the runner isolates).
//! `cargo bench --bench cpu`

// A benchmark reports its figures on stdout, as criterion does.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use wasmedge_aot_cache::{Cache, CacheConfig};
use wasmedge_aot_engine::{fingerprint, Engine, Options};

mod support;

struct Program {
    name: &'static str,
    work: &'static [&'static str],
    idle: &'static [&'static str],
    /// Files the workload reads, copied into the container's root (its cwd).
    files: &'static [&'static str],
    /// Exit codes of the workload and of the start-up run.
    exit: (i32, i32),
}

const PROGRAMS: &[Program] = &[
    Program {
        name: "sieve",
        work: &["200"],
        idle: &["0"],
        files: &[],
        exit: (0, 0),
    },
    Program {
        name: "boolector",
        work: &["prime28.smt2"],
        idle: &["--version"],
        files: &["prime28.smt2"],
        // unsat; the version prints and exits 0
        exit: (20, 0),
    },
];

fn programs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/real-programs")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn cpu_bound(c: &mut Criterion) {
    let dir = programs_dir();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped the CPU-bound benchmark: needs root (the runner isolates)");
        return;
    }
    if !PROGRAMS
        .iter()
        .all(|p| dir.join(format!("{}.wasm", p.name)).exists())
    {
        eprintln!(
            "skipped the CPU-bound benchmark: run profiling/real-programs.sh --cpu first ({} is incomplete)",
            dir.display()
        );
        return;
    }
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fixtures/cpu-node");
    std::fs::create_dir_all(&node).unwrap();
    // The runner's full tier, put in its cache as the runner would compile it.
    let engine = Engine::new(Options::for_node(2)).unwrap();
    let cache = Cache::open(CacheConfig::new(node.join("cache"))).unwrap();
    let runner = support::start_runner(&node);
    let mut g = c.benchmark_group("cpu-bound");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for p in PROGRAMS {
        let wasm = dir.join(format!("{}.wasm", p.name));
        let so = dir.join(format!("{}.O2.so", p.name));
        if !so.exists() {
            eprintln!("compiling {} with the CLI at O2 (once)", wasm.display());
            let tmp = dir.join(format!("{}.O2.tmp.so", p.name));
            assert!(Command::new("wasmedge")
                .args(["compile", "--optimize", "2"])
                .arg(&wasm)
                .arg(&tmp)
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success());
            std::fs::rename(&tmp, &so).unwrap();
        }
        cache
            .get_or_compile(&wasm, &fingerprint(&engine), &engine)
            .unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        for f in p.files {
            std::fs::copy(dir.join(f), rootfs.path().join(f)).unwrap();
        }
        let module = File::open(&wasm).unwrap();
        let argv = |args: &[&str]| -> Vec<String> {
            std::iter::once(format!("/{}.wasm", p.name))
                .chain(args.iter().map(|a| a.to_string()))
                .collect()
        };
        let mut n = 0;
        let expected = |args: &[&str]| if args == p.work { p.exit.0 } else { p.exit.1 };
        let mut through_runner = |args: &[&str]| -> Duration {
            n += 1;
            let argv = argv(args);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let plan = support::isolated_plan(rootfs.path(), &argv);
            let (t, code) =
                support::run_container(&runner, &module, &plan, &format!("{}-{n}", p.name), None);
            assert_eq!(
                code,
                expected(args),
                "{} {args:?} through the runner",
                p.name
            );
            t
        };
        let through_cli = |args: &[&str]| -> Duration {
            let t = Instant::now();
            let status = Command::new("wasmedge")
                .arg("--dir")
                .arg(format!("/:{}", rootfs.path().display()))
                .arg(&so)
                .args(args)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            let t = t.elapsed();
            assert_eq!(
                status.code(),
                Some(expected(args)),
                "{} {args:?} through the CLI",
                p.name
            );
            t
        };
        // The first start through the runner loads its template.
        through_runner(p.idle);
        let (mut rw, mut ri, mut cw, mut ci) = (vec![], vec![], vec![], vec![]);
        for _ in 0..5 {
            rw.push(through_runner(p.work));
            cw.push(through_cli(p.work));
            ri.push(through_runner(p.idle));
            ci.push(through_cli(p.idle));
        }
        let (rw, ri, cw, ci) = (median(rw), median(ri), median(cw), median(ci));
        let runner_work = rw.saturating_sub(ri);
        let cli_work = cw.saturating_sub(ci);
        println!(
            "cpu-bound {}: runner {:.3} s (start-up {:.1} ms), CLI {:.3} s (start-up {:.1} ms); \
             work: runner {:.3} s, CLI {:.3} s, ratio {:.3}",
            p.name,
            rw.as_secs_f64(),
            ri.as_secs_f64() * 1e3,
            cw.as_secs_f64(),
            ci.as_secs_f64() * 1e3,
            runner_work.as_secs_f64(),
            cli_work.as_secs_f64(),
            runner_work.as_secs_f64() / cli_work.as_secs_f64()
        );
        g.bench_function(format!("{}: runner", p.name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| through_runner(p.work)).sum())
        });
        g.bench_function(format!("{}: wasmedge CLI (O2 .so)", p.name), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| through_cli(p.work)).sum())
        });
    }
    g.finish();
}

criterion_group!(benches, cpu_bound);
criterion_main!(benches);
