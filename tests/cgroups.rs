//! A container's cgroup as each of the node's drivers makes it, against a real containerd:
//! its limits in the kernel's files (and systemd's unit properties), `Stats`, OOM kills, and
//! nothing left after its delete. `Update` (the kubelet's in-place resize), which `ctr` does
//! not send, is tested through CRI (`tests/cri.rs`).
//!
//! The cgroupfs tests run on any node (this machine's cgroup v1 and the node VM's v2); the
//! systemd driver's need systemd as PID 1, and so run in the node VM (`scripts/node-vm.sh`,
//! which `scripts/test.sh` runs them in). There `WASMEDGE_SHIM_NODE_TESTS=1` turns a skip
//! into a failure: a node test that skips on the node proves nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cgroup::{memory_cgroup, memory_limit, systemd_node, unit_property};
use common::{containerd, fixture, Rootfs, Run};

/// (memory usage, memory limit) from `ctr task metrics`' table: v1's names or v2's.
fn memory_metrics(table: &str) -> (u64, u64) {
    let value = |names: [&str; 2]| {
        table
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let name = f.next()?;
                names
                    .contains(&name)
                    .then(|| f.next()?.parse::<u64>().ok())?
            })
            .unwrap_or_else(|| panic!("no {names:?} in\n{table}"))
    };
    (
        value(["memory.usage_in_bytes", "memory.usage"]),
        value(["memory.limit_in_bytes", "memory.usage_limit"]),
    )
}

/// Puts `run`'s container in a systemd scope of this test process (`--cgroup
/// system.slice:wasmtest-<pid>:<id>`); returns the scope's unit name.
fn in_scope(run: &mut Run) -> String {
    let prefix = format!("wasmtest-{}", std::process::id());
    run.flags = vec![
        "--cgroup".into(),
        format!("system.slice:{prefix}:{}", run.id),
    ];
    format!("{prefix}-{}.scope", run.id)
}

fn probe() -> Rootfs {
    Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))])
}

#[test]
fn a_container_gets_its_memory_limit_and_reports_it_in_its_stats() {
    if !common::can_run("cgroupfs_limit_stats") {
        return;
    }
    let ctd = containerd();
    let r = probe();
    let mut run = Run::rootfs("cg-fs", r.path(), &["/probe.wasm", "sleep", "120"]);
    run.memory_limit = Some(64 << 20);
    ctd.run_detached(&run);
    ctd.wait_status("cg-fs", "RUNNING", Duration::from_secs(30));
    let pid = ctd.task_pid("cg-fs").unwrap();
    let dir = memory_cgroup(pid);
    // ctr's cgroupfs path: /<namespace>/<id>.
    assert!(
        dir.ends_with(format!("{}/cg-fs", common::namespace())),
        "{}",
        dir.display()
    );
    assert_eq!(memory_limit(&dir), Some(64 << 20));

    // Stats: the metrics of the cgroup's kind (ctr prints v2's under other names), with the
    // process's memory and its limit.
    let metrics = ctd.ctr_ok(&["task", "metrics", "cg-fs"]);
    assert_eq!(memory_metrics(&metrics).1, 64 << 20, "{metrics}");
    assert!(memory_metrics(&metrics).0 > 0, "{metrics}");

    ctd.remove("cg-fs");
    assert!(!dir.exists(), "{} outlived its container", dir.display());
}

#[test]
fn a_systemd_cgroup_path_is_a_scope_with_the_limits_as_unit_properties_and_goes_with_the_container()
{
    if !common::can_run("systemd_scope") || !systemd_node("systemd_scope") {
        return;
    }
    let ctd = containerd();
    let r = probe();
    let id = "cg-sd";
    let mut run = Run::rootfs(id, r.path(), &["/probe.wasm", "sleep", "120"]);
    run.memory_limit = Some(64 << 20);
    let unit = in_scope(&mut run);
    ctd.run_detached(&run);
    ctd.wait_status(id, "RUNNING", Duration::from_secs(60));
    let pid = ctd.task_pid(id).unwrap();
    let dir = memory_cgroup(pid);
    assert_eq!(dir, Path::new("/sys/fs/cgroup/system.slice").join(&unit));
    // systemd knows the limit (it would otherwise write its own back on a reload), and the
    // kernel has it.
    assert_eq!(unit_property(&unit, "MemoryMax"), (64u64 << 20).to_string());
    assert_eq!(memory_limit(&dir), Some(64 << 20));
    assert_eq!(unit_property(&unit, "ActiveState"), "active");

    let metrics = ctd.ctr_ok(&["task", "metrics", id]);
    assert_eq!(memory_metrics(&metrics).1, 64 << 20, "{metrics}");

    ctd.remove(id);
    assert!(!dir.exists(), "{} outlived its container", dir.display());
    assert_ne!(unit_property(&unit, "ActiveState"), "active");
}

#[test]
fn a_scope_s_memory_limit_ends_its_container_as_oom_killed() {
    if !common::can_run("systemd_oom") || !systemd_node("systemd_oom") {
        return;
    }
    let ctd = containerd();
    let r = probe();
    let events = ctd.events();
    let id = "cg-sd-oom";
    let mut run = Run::rootfs(id, r.path(), &["/probe.wasm", "alloc", "512"]);
    run.memory_limit = Some(64 << 20);
    in_scope(&mut run);
    run.timeout = Some(Duration::from_secs(120));
    let out = ctd.run(&run);
    assert_eq!(out.code, Some(137), "{out:?}");
    events.wait_for(&["/tasks/oom", id], Duration::from_secs(20));
}

#[test]
fn a_linux_container_under_a_systemd_path_is_runc_s_scope() {
    if !common::can_run("systemd_linux") || !systemd_node("systemd_linux") {
        return;
    }
    let ctd = containerd();
    let r = Rootfs::with(&[("native-sleep", &fixture("native-sleep"))]);
    let id = "cg-sd-linux";
    let mut run = Run::rootfs(id, r.path(), &["/native-sleep", "120"]);
    run.memory_limit = Some(48 << 20);
    let unit = in_scope(&mut run);
    ctd.run_detached(&run);
    ctd.wait_status(id, "RUNNING", Duration::from_secs(60));
    let pid = ctd.task_pid(id).unwrap();
    let dir = memory_cgroup(pid);
    assert_eq!(dir, Path::new("/sys/fs/cgroup/system.slice").join(&unit));
    assert_eq!(unit_property(&unit, "MemoryMax"), (48u64 << 20).to_string());
    ctd.remove(id);
    assert!(!dir.exists(), "{} outlived its container", dir.display());
}

#[test]
fn a_killed_shim_s_scopes_are_stopped_with_its_containers() {
    if !common::can_run("systemd_killed_shim") || !systemd_node("systemd_killed_shim") {
        return;
    }
    // A containerd of its own: its node shim is killed here.
    let ctd = common::images::Owned::start(false);
    let wasm = probe();
    let native = Rootfs::with(&[("native-sleep", &fixture("native-sleep"))]);
    let runs = [
        Run::rootfs("sd-orphan", wasm.path(), &["/probe.wasm", "sleep", "120"]),
        Run::rootfs("sd-orphan-linux", native.path(), &["/native-sleep", "120"]),
    ];
    let mut units = Vec::new();
    let mut pids = Vec::new();
    for mut run in runs {
        let unit = in_scope(&mut run);
        ctd.run_detached(&run);
        ctd.wait_status(&run.id, "RUNNING", Duration::from_secs(60));
        assert_eq!(unit_property(&unit, "ActiveState"), "active", "{unit}");
        pids.push(ctd.task_pid(&run.id).unwrap());
        units.push(unit);
    }
    let shim = common::ppid(pids[0]).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd sees its shim die and deletes its tasks through the shim binary, which
    // stops the Wasm container's scope and has runc delete the Linux one's.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let active: Vec<&String> = units
            .iter()
            .filter(|u| unit_property(u, "ActiveState") == "active")
            .collect();
        let alive: Vec<&i32> = pids
            .iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if active.is_empty() && alive.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the shim's death: scopes {active:?} active, processes {alive:?} alive\n{}",
            ctd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
