//! End to end through a real containerd (started privately, as the tests do): `ctr run --rm`
//! of a hello Wasm module through this shim (warm cache) against runc running a static
//! native hello, in the same run, and the same native hello as a Linux container of this
//! shim (which runs it with runc: issue 15's target is within 1.1x of runc's own shim); the
//! module from a plain image beside the same module as an image's Wasm layer (issue 16: no
//! slower); the task alone (create to exit: `ctr task start` of a created container); then
//! density: PSS and processes per idle container with
//! N = 1, 10, 50 sleeping Wasm containers.
//!
//! Needs root (containerd, mounts, cgroups); says so and exits when not root.
//! `cargo criterion --bench e2e` (or `cargo bench --bench e2e`)

// A benchmark reports its figures on stdout, as criterion does.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{fixture, Containerd, Rootfs, Run};
use criterion::{criterion_group, Criterion};

fn hello_runs(c: &mut Criterion) {
    let ctd = common::containerd();
    let wasm = Rootfs::with(&[("hello.wasm", &fixture("probe.wasm"))]);
    let native = Rootfs::with(&[("hello", &fixture("native-hello"))]);
    // Warm the cache (and the node shim) once.
    let out = ctd.run(&Run::rootfs("warm", wasm.path(), &["/hello.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");

    let mut g = c.benchmark_group("ctr run --rm hello");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    let mut n = 0u64;
    g.bench_function("wasmedge shim (warm cache)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let run = Run::rootfs(&format!("w{n}"), wasm.path(), &["/hello.wasm"]);
                let out = ctd.run(&run);
                assert_eq!(out.code, Some(0), "{out:?}");
                total += out.elapsed;
            }
            total
        })
    });
    g.bench_function("runc (static native hello)", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let mut run = Run::rootfs(&format!("r{n}"), native.path(), &["/hello"]);
                run.runtime = Some("io.containerd.runc.v2".into());
                let out = ctd.run(&run);
                assert_eq!(out.code, Some(0), "{out:?}");
                total += out.elapsed;
            }
            total
        })
    });
    g.bench_function(
        "wasmedge shim, Linux container (static native hello, runc)",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let run = Run::rootfs(&format!("l{n}"), native.path(), &["/hello"]);
                    let out = ctd.run(&run);
                    assert_eq!(out.stdout, "hello from native\n", "{out:?}");
                    total += out.elapsed;
                }
                total
            })
        },
    );
    g.finish();

    // Issue 16: the same module from an image, once as a file of a plain image's tar layer
    // and once as the image's Wasm layer (runwasi's layout: an empty rootfs, the module read
    // from containerd's content store once per shim and kept).
    let plain = common::images::probe_image();
    let layer = common::images::archive(
        "probe-wasm-layer.tar",
        wasmedge_shimctl::image::ImageBuilder::wasm_layer(
            "localhost/wasmedge-bench/probe:wasm-layer",
            std::fs::read(fixture("probe.wasm")).unwrap(),
        ),
    );
    for image in [&plain, &layer] {
        ctd.import_image(image);
        let out = ctd.run(&Run::image("warm-image", &image.reference, &[]));
        assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    }
    let mut g = c.benchmark_group("ctr run --rm hello, from an image (warm cache)");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    for (name, image) in [("plain image", &plain), ("Wasm-layer image", &layer)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let out = ctd.run(&Run::image(&format!("i{n}"), &image.reference, &[]));
                    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
                    total += out.elapsed;
                }
                total
            })
        });
    }
    g.finish();

    // The task alone: the container record and its snapshot exist beforehand, and removing
    // the stopped task afterwards is not timed. runc keeps its state under the system's
    // /run/containerd/runc for tasks started this way, hence ids unique to this process.
    let mut g = c.benchmark_group("create to exit (ctr task start, attached)");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    let pid = std::process::id();
    for (name, rootfs, argv, runtime) in [
        ("wasmedge shim (warm cache)", &wasm, "/hello.wasm", None),
        (
            "runc (static native hello)",
            &native,
            "/hello",
            Some("io.containerd.runc.v2"),
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let mut run = Run::rootfs(&format!("t{pid}-{n}"), rootfs.path(), &[argv]);
                    run.runtime = runtime.map(String::from);
                    ctd.create_container(&run);
                    let out = ctd.start_attached(&run.id);
                    assert_eq!(out.code, Some(0), "{out:?}");
                    total += out.elapsed;
                    ctd.remove(&run.id);
                }
                total
            })
        });
    }
    g.finish();
}

/// PSS (KiB) of every process of this containerd's shim: shims, the runner and its
/// container processes (found by the shim configuration in their environment, so that other
/// shims on the machine, another test's or an orphaned compile, are not counted).
fn shim_pss(ctd: &Containerd) -> (u64, usize) {
    let ours = |pid: &i32| {
        std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| {
            e.file_name()
                .is_some_and(|n| n == "containerd-shim-wasmedge-v1" || n == "wasmedge-shim-runner")
        })
    };
    let procs: Vec<i32> = common::processes_of(ctd).into_iter().filter(ours).collect();
    let mut total = 0;
    for pid in &procs {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        total += rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (total, procs.len())
}

fn density(ctd: &Containerd) {
    let wasm = Rootfs::with(&[("app.wasm", &fixture("probe.wasm"))]);
    for n in [1usize, 10, 50] {
        let ids: Vec<String> = (0..n).map(|i| format!("idle-{n}-{i}")).collect();
        let started = Instant::now();
        for id in &ids {
            ctd.run_detached(&Run::rootfs(
                id,
                wasm.path(),
                &["/app.wasm", "sleep", "1000"],
            ));
        }
        let start_each = started.elapsed() / n as u32;
        std::thread::sleep(Duration::from_secs(1));
        // Five samples 200 ms apart, reported as criterion reports a time: [low median high].
        let mut samples: Vec<(u64, usize)> = (0..5)
            .map(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(200));
                }
                shim_pss(ctd)
            })
            .collect();
        samples.sort();
        let per = |(pss, _): (u64, usize)| pss as f64 / n as f64;
        let (median_pss, procs) = samples[2];
        println!("density/idle-wasm-containers/{n}");
        println!(
            "                        pss/container: [{:.1} KiB {:.1} KiB {:.1} KiB]",
            per(samples[0]),
            per(samples[2]),
            per(samples[4])
        );
        println!(
            "                        processes/container: {:.2}   (total {median_pss} KiB in {procs} processes; {start_each:?} per ctr run -d)",
            procs as f64 / n as f64,
        );
        for id in &ids {
            ctd.remove(id);
        }
    }
}

criterion_group!(benches, hello_runs);

fn main() {
    if !common::can_run("e2e benchmarks") {
        return;
    }
    benches();
    density(common::containerd());
    Criterion::default().configure_from_args().final_summary();
}
