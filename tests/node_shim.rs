//! The node shim over a long life: what it holds per container, and which shim new
//! containers go to (issue 13, findings 7 and 8). Each test has a containerd of its own, so
//! that its node shim serves only its containers.

mod common;

use std::time::Duration;

use common::images::Owned;
use common::{fixture, Containerd, Rootfs, Run};

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn fd_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn the_node_shim_holds_no_descriptor_of_a_deleted_task() {
    if !common::can_run("node_shim_fds") {
        return;
    }
    let ctd = Owned(Containerd::start(false));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    // A rolling replacement, as a Deployment's update does: the new container starts before
    // the old one goes, so the node shim always has a task, and each deleted task's log pipe
    // lies below a live one's.
    let start = |id: &str| {
        ctd.run_detached(&Run::rootfs(id, r.path(), &["/probe.wasm", "sleep", "300"]));
        ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
    };
    let mut live = "fd-0".to_string();
    start(&live);
    let shim = common::ppid(ctd.task_pid(&live).unwrap()).unwrap();
    let mut roll = |i: usize| {
        let next = format!("fd-{i}");
        start(&next);
        ctd.remove(&live);
        // And one that runs to its end in between.
        let out = ctd.run(&Run::rootfs(
            &format!("fd-run-{i}"),
            r.path(),
            &["/probe.wasm"],
        ));
        assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
        live = next;
    };
    for i in 1..=3 {
        roll(i);
    }
    let before = open_fds(shim);
    for i in 4..=33 {
        roll(i);
    }
    let after = open_fds(shim);
    assert_eq!(
        common::ppid(ctd.task_pid(&live).unwrap()),
        Some(shim),
        "one node shim served them all"
    );
    assert!(
        after <= before + 2,
        "the node shim went from {before} to {after} open descriptors over 60 containers:\n{:#?}",
        fd_targets(shim)
    );
    ctd.remove(&live);
}
