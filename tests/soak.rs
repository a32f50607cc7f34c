//! Soak: 2,000 containers one after another and 200 more, 8 at a time, through one node
//! shim; the shim's and the runner's memory and descriptors stay flat, and no container is
//! lost or left behind. A measurement, ignored by default:
//! `cargo test --release --test soak -- --ignored --nocapture` prints the figures.

mod common;

use std::time::{Duration, Instant};

use common::images::Owned;
use common::{fixture, Containerd, Rootfs, Run};

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
#[ignore = "soak: thousands of containers; run with --ignored"]
fn thousands_of_containers_through_one_node_shim_leave_it_as_it_was() {
    if !common::can_run("soak") {
        return;
    }
    let ctd = Owned(Containerd::start(false));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    // A container that stays up the whole time: the shim and runner under observation.
    ctd.run_detached(&Run::rootfs(
        "soak-anchor",
        r.path(),
        &["/probe.wasm", "sleep", "3600"],
    ));
    ctd.wait_status("soak-anchor", "RUNNING", Duration::from_secs(60));
    let shim = common::ppid(ctd.task_pid("soak-anchor").unwrap()).unwrap();
    let runner = common::runner_of(shim).unwrap();
    // Warm: the module's first start compiles its quick tier, and its full tier compiles in
    // the background; once that is done (and reaped at the next start), the runner holds
    // the full tier's template and nothing transient.
    let deadline = Instant::now() + Duration::from_secs(120);
    for w in 0.. {
        let out = ctd.run(&Run::rootfs(
            &format!("soak-warm-{w}"),
            r.path(),
            &["/probe.wasm"],
        ));
        assert_eq!(out.code, Some(0), "{out:?}");
        if w > 0 && common::compiles_of(&ctd).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the full tier's compile did not end"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let warm = Run::rootfs("soak-warm", r.path(), &["/probe.wasm"]);
    assert_eq!(ctd.run(&warm).code, Some(0));
    let before = (rss_kb(shim), fds(shim), rss_kb(runner), fds(runner));

    let t = Instant::now();
    let mut failed = Vec::new();
    for i in 0..2000 {
        let out = ctd.run(&Run::rootfs(
            &format!("soak-{i}"),
            r.path(),
            &["/probe.wasm"],
        ));
        if out.stdout != "hello from wasm\n" || out.code != Some(0) {
            failed.push((i, out));
        }
        if (i + 1) % 500 == 0 {
            eprintln!(
                "soak: after {} containers: shim RSS {} KB, fds {}; runner RSS {} KB, fds {}",
                i + 1,
                rss_kb(shim),
                fds(shim),
                rss_kb(runner),
                fds(runner)
            );
        }
    }
    let sequential = t.elapsed();
    let t = Instant::now();
    let rootfs = r.path();
    for batch in 0..25 {
        let ctd: &Containerd = &ctd;
        let outs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|j| {
                    s.spawn(move || {
                        let id = format!("soak-par-{batch}-{j}");
                        ctd.run(&Run::rootfs(&id, rootfs, &["/probe.wasm"]))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (j, out) in outs.into_iter().enumerate() {
            if out.stdout != "hello from wasm\n" || out.code != Some(0) {
                failed.push((2000 + batch * 8 + j, out));
            }
        }
    }
    let parallel = t.elapsed();
    let after = (rss_kb(shim), fds(shim), rss_kb(runner), fds(runner));
    let tasks = ctd.ctr_ok(&["task", "ls", "-q"]);
    let containers = ctd.ctr_ok(&["container", "ls", "-q"]);
    eprintln!(
        "soak: 2000 sequential in {sequential:?} ({:?} each), 200 at 8 at a time in {parallel:?}",
        sequential / 2000
    );
    eprintln!(
        "soak: shim   RSS {} KB -> {} KB, fds {} -> {}",
        before.0, after.0, before.1, after.1
    );
    eprintln!(
        "soak: runner RSS {} KB -> {} KB, fds {} -> {}",
        before.2, after.2, before.3, after.3
    );
    ctd.remove("soak-anchor");
    assert!(
        failed.is_empty(),
        "{} containers failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(tasks.trim(), "soak-anchor", "tasks left behind");
    assert_eq!(containers.trim(), "soak-anchor", "containers left behind");
    // Flat, give or take the one descriptor a request in flight holds (containerd's
    // connection of the moment, a log pipe being closed).
    assert!(
        after.1.abs_diff(before.1) <= 1,
        "the shim's descriptors: {before:?} {after:?}"
    );
    assert!(
        after.3.abs_diff(before.3) <= 1,
        "the runner's descriptors: {before:?} {after:?}"
    );
    assert!(
        after.0 < before.0 + 4096,
        "the shim's RSS grew by more than 4 MB"
    );
    assert!(
        after.2 < before.2 + 4096,
        "the runner's RSS grew by more than 4 MB"
    );
}
