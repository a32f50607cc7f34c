//! The cgroups of the tests' containers as the kernel and systemd show them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether the node runs cgroup v2 alone.
pub fn v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Whether systemd is PID 1 with its API up, on cgroup v2: the node's cgroup driver is
/// systemd's.
pub fn on_systemd() -> bool {
    let comm = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    comm.trim() == "systemd" && Path::new("/run/systemd/system").exists() && v2()
}

/// [`on_systemd`], or says why the test skips; fails instead in the node VM
/// (`WASMEDGE_SHIM_NODE_TESTS=1`), where a skip would prove nothing.
pub fn systemd_node(test: &str) -> bool {
    if on_systemd() {
        return true;
    }
    let comm = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if std::env::var_os("WASMEDGE_SHIM_NODE_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: needs systemd as PID 1 and cgroup v2 (PID 1 is {comm:?}), and this is the node VM");
    }
    eprintln!("skipped {test}: needs systemd as PID 1 and cgroup v2 (scripts/node-vm.sh runs it)");
    false
}

/// The directory of the memory controller's cgroup of `pid`.
pub fn memory_cgroup(pid: i32) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap(), f.next().unwrap());
        if v2() && controllers.is_empty() {
            return PathBuf::from(format!("/sys/fs/cgroup{path}"));
        }
        if controllers.split(',').any(|c| c == "memory") {
            return PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
        }
    }
    panic!("no memory cgroup for {pid} in\n{text}");
}

/// The cgroup's memory limit, in bytes (`None`: no limit).
pub fn memory_limit(dir: &Path) -> Option<u64> {
    let file = if v2() {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    let text = std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
    text.trim().parse().ok().filter(|l| *l < (1 << 62))
}

/// `systemctl show -p PROPERTY --value UNIT`.
pub fn unit_property(unit: &str, property: &str) -> String {
    let out = Command::new("systemctl")
        .args(["show", "-p", property, "--value", unit])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
