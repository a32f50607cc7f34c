//! The container's cgroup: created by the shim with the spec's limits, joined by the
//! container process itself before it loads anything (so every byte it allocates is
//! charged to the container), read for `stats`, and removed on delete.

use cgroups_rs::fs::{hierarchies, Cgroup};
use cgroups_rs::CgroupPid;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::Spec;

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Creates the cgroup at `path` (in every hierarchy on cgroup v1) with the spec's resources.
pub fn create(path: &str, spec: &Spec) -> Result<(), String> {
    let cg = Cgroup::new(hierarchies::auto(), relative(path)).map_err(|e| e.to_string())?;
    if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        containerd_shim::cgroup::update_resources(&cg, res).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Moves the calling process, which must be single-threaded, into the cgroup at `path`.
///
/// On cgroup v1 it moves its one thread through each hierarchy's `tasks` file, naming
/// itself as pid 0. Moving a whole process through `cgroup.procs` takes the kernel's global
/// threadgroup lock, whose writer waits for an RCU grace period: 10-20 ms per container
/// start measured here, most of a warm start. A thread moving itself cannot fork or exit
/// meanwhile, so the kernel skips that lock. A single-threaded process that moved its only
/// thread has moved, and its memory is charged to the new cgroup from then on.
///
/// A process with more threads, and cgroup v2 (where `cgroup.threads` is for threaded
/// cgroups only), move the whole process instead.
pub fn join_self(path: &str) -> Result<(), String> {
    let cg = Cgroup::load(hierarchies::auto(), relative(path));
    let result = if !cg.v2() && threads_of_self() == Some(1) {
        cg.add_task(CgroupPid::from(0))
    } else {
        cg.add_task_by_tgid(CgroupPid::from(u64::from(std::process::id())))
    };
    result.map_err(|e| e.to_string())
}

/// The calling process's thread count, from `/proc/self/stat`.
fn threads_of_self() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces;
    // num_threads is field 20 overall, the 18th after the name.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(17)?.parse().ok()
}

/// Removes the cgroup; the container's process must have exited.
pub fn remove(path: &str) {
    let cg = Cgroup::load(hierarchies::auto(), relative(path));
    if let Err(e) = cg.delete() {
        log::warn!("remove cgroup {path}: {e}");
    }
}

/// The cgroup metrics of process `pid`, as containerd's `Stats` returns them.
pub fn metrics(pid: u32) -> Result<Any, String> {
    let cg = containerd_shim::cgroup::get_cgroup(pid).map_err(|e| e.to_string())?;
    // containerd-shim fills the v1 metrics message from either hierarchy's controllers.
    let m = containerd_shim::cgroup::collect_metrics(&cg).map_err(|e| e.to_string())?;
    containerd_shim::util::convert_to_any(Box::new(m)).map_err(|e| e.to_string())
}
