//! What a node shim that died leaves behind, and its clean-up by the next one.
//!
//! containerd deletes the tasks of a shim it saw die (`containerd-shim-wasmedge-v1 delete`
//! in each bundle, which removes the container's mount and cgroup). What containerd no
//! longer knows (its state lost, or a bundle already gone) only the shims can find: so each
//! node shim keeps a record of every container it serves in its run directory
//! (`<run dir>/containers/<id>`: the cgroup, the rootfs, and for a Linux container runc's
//! state root), and a node shim that starts removes, for every run directory whose shim is
//! dead, the recorded Linux containers from runc (`runc delete --force`: their processes,
//! state and cgroups), the recorded cgroups (killing what is still in them) and mounts, then
//! the directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{live_shim, STATE_FILE};

/// The directory of container records in a run directory.
pub const CONTAINERS_DIR: &str = "containers";
/// Most bytes of a record read back.
const RECORD_MAX: usize = 16 * 1024;

/// What a node shim records of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub cgroup: Option<String>,
    pub rootfs: Option<PathBuf>,
    /// runc's state root, for a Linux container (records written before there were any
    /// have none).
    #[serde(default)]
    pub runc_root: Option<PathBuf>,
}

fn record_path(run_dir: &Path, id: &str) -> Option<PathBuf> {
    // containerd ids are `[A-Za-z0-9_.-]+`; anything else is never a file name of ours.
    crate::linux::is_plain_name(id).then(|| run_dir.join(CONTAINERS_DIR).join(id))
}

/// Records a container the shim of `run_dir` serves.
pub fn record(run_dir: &Path, r: &Record) -> std::io::Result<()> {
    let Some(path) = record_path(run_dir, &r.id) else {
        return Ok(());
    };
    let dir = run_dir.join(CONTAINERS_DIR);
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    wasmedge_aot_cache::atomic::write_atomic(
        &path,
        &serde_json::to_vec(r)?,
        0o600,
        wasmedge_aot_cache::atomic::Durability::BestEffort,
    )
}

/// Forgets a container (deleted).
pub fn forget(run_dir: &Path, id: &str) {
    if let Some(path) = record_path(run_dir, id) {
        let _ = std::fs::remove_file(path);
    }
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_slice(&wasmedge_aot_cache::atomic::read_small(path, RECORD_MAX)?).ok()
}

/// Cleans up after every dead node shim under `state_root` (never `own`, nor a live one).
/// Returns the run directories removed.
pub fn dead_shims(state_root: &Path, own: Option<&Path>) -> Vec<PathBuf> {
    let shim = crate::service::SHIM_BINARY;
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(state_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path();
        // Only a run directory with a state file is one a shim finished setting up; one
        // without may belong to a shim that is starting now. Whether its shim lives is read
        // now, from its state file: a shim that wrote its state after this sweep started is
        // alive, and its directory stays (a list of live shims taken before the loop once
        // had another shim's new directory removed under it).
        if Some(dir.as_path()) == own
            || !dir.join(STATE_FILE).exists()
            || live_shim(&dir, shim).is_some()
        {
            continue;
        }
        for r in std::fs::read_dir(dir.join(CONTAINERS_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read_record(&e.path()))
        {
            if let Some(root) = &r.runc_root {
                // runc is driven through the shim's async client: from this blocking
                // thread, on the shim's runtime (whose own thread drives its I/O).
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => rt.block_on(crate::linux::force_delete(root, &r.id)),
                    Err(_) => log::warn!(
                        "container {} of {}: no runtime to run runc delete on",
                        r.id,
                        dir.display()
                    ),
                }
            }
            if let Some(cgroup) = &r.cgroup {
                crate::cgroup::remove(cgroup);
            }
            if let Some(rootfs) = &r.rootfs {
                let _ = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH);
            }
            log::info!(
                "cleaned up container {} of the dead shim of {}",
                r.id,
                dir.display()
            );
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) => log::warn!("remove {}: {e}", dir.display()),
        }
    }
    removed
}
