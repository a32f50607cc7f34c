//! The node shim over a long life: what it holds per container, and which shim new
//! containers go to (issue 13, findings 7 and 8). Each test has a containerd of its own, so
//! that its node shim serves only its containers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::images::Owned;
use common::{fixture, Containerd, Rootfs, Run};
use wasmedge_aot_protocol::identity::{config_digest, Identity, STATE_ROOT};
use wasmedge_shimctl::check::check_node_shims;

const SHIM: &str = "containerd-shim-wasmedge-v1";
const RUNNER: &str = "wasmedge-shim-runner";

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

/// The `node-shims` line of `wasmedge-shimctl check` about shim `pid`.
fn check_line(pid: i32, installed: &Identity) -> String {
    let c = check_node_shims(Path::new(STATE_ROOT), Some(installed));
    c.evidence
        .lines()
        .find(|l| l.starts_with(&format!("pid {pid} ")))
        .unwrap_or_default()
        .to_string()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies `from` to `to` as an installer does: a new file beside it, renamed over it.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn an_upgrade_and_a_config_change_reach_new_containers_while_running_ones_stay() {
    if !common::can_run("node_shim_upgrade") {
        return;
    }
    let bin = tempfile::tempdir().unwrap();
    let shim_bin = bin.path().join(SHIM);
    let runner_bin = bin.path().join(RUNNER);
    install(&common::shim_dir().join(SHIM), &shim_bin);
    install(&common::runner_bin(), &runner_bin);
    let ctd = Owned(Containerd::start_with_bin(false, "", bin.path()));
    let config = ctd.dir.join("shim.toml");
    let installed = || Identity::of(&shim_bin, &runner_bin, config_digest(&config));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let start = |id: &str| {
        ctd.run_detached(&Run::rootfs(id, r.path(), &["/probe.wasm", "sleep", "300"]));
        ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
        common::ppid(ctd.task_pid(id).unwrap()).unwrap()
    };

    let old = start("up-old");
    wait_until(
        "check reports the shim serving 1 task",
        Duration::from_secs(5),
        || {
            let l = check_line(old, &installed());
            l.contains("installed binaries, current config") && l.contains("serves 1 task")
        },
    );

    // Under the running container: a new cache directory in the config, and a new build
    // of both binaries (here a copy: another inode and mtime, as any install gives).
    let new_cache = ctd.dir.join("var/cache-after-upgrade");
    std::fs::write(
        &config,
        format!("cache_dir = \"{}\"\n", new_cache.display()),
    )
    .unwrap();
    install(&common::shim_dir().join(SHIM), &shim_bin);
    install(&common::runner_bin(), &runner_bin);

    let new = start("up-new");
    assert_ne!(
        new, old,
        "the new container went to the shim of the old build and config"
    );
    assert!(
        new_cache.join("v1").is_dir(),
        "the new shim's runner did not open the new cache directory"
    );
    assert_eq!(ctd.task_status("up-old").as_deref(), Some("RUNNING"));
    assert_eq!(common::ppid(ctd.task_pid("up-old").unwrap()), Some(old));
    // A container run to its end goes to the new shim, and compiles into the new cache.
    let out = ctd.run(&Run::rootfs("up-run", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    let log = ctd.log();
    assert!(
        common::create_outcome(&log, "up-run").is_some_and(|(_, tier)| tier == "native"),
        "{}",
        ctd.log_tail()
    );
    assert!(
        std::fs::read_dir(new_cache.join("v1/entries"))
            .unwrap()
            .count()
            > 0,
        "nothing compiled into the new cache"
    );
    wait_until("check reports both shims", Duration::from_secs(5), || {
        let (o, n) = (check_line(old, &installed()), check_line(new, &installed()));
        o.contains("older binaries, older config")
            && o.contains("serves 1 task;")
            && o.contains("exits when idle")
            && n.contains("installed binaries, current config")
            && n.contains("serves 1 task")
    });

    // The old shim's last container ends: it exits after its idle grace (30 s).
    ctd.remove("up-old");
    wait_until("the old shim exits", Duration::from_secs(50), || {
        !Path::new(&format!("/proc/{old}")).exists()
    });
    assert!(Path::new(&format!("/proc/{new}")).exists());
    assert_eq!(ctd.task_status("up-new").as_deref(), Some("RUNNING"));
    ctd.remove("up-new");
}
