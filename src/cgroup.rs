//! The container's cgroup: created by the shim with the spec's limits, joined by the
//! container process itself before it loads anything (so every byte it allocates is
//! charged to the container), read for `stats`, and removed on delete.

use cgroups_rs::fs::{hierarchies, Cgroup};
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

/// Moves process `pid` into the cgroup at `path`.
pub fn join(path: &str, pid: u32) -> Result<(), String> {
    containerd_shim::cgroup::add_task_to_cgroup(path, pid).map_err(|e| e.to_string())
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
