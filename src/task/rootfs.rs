//! A task's rootfs as the shim mounts it from containerd's request: mounted at create, in
//! the bundle; unmounted at delete, or by the create that failed after mounting it.

use std::path::{Path, PathBuf};

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::asynchronous::util::mount_rootfs;
use log::warn;

use crate::error::ShimError;

/// A rootfs this create mounted: unmounted when dropped, unless [`Mounted::keep`] handed it
/// to the task it was for. Every error of the create after the mount leaves nothing
/// mounted, whichever step it came from.
pub struct Mounted(Option<PathBuf>);

impl Mounted {
    /// Mounts the request's rootfs at `dir`; `None` when containerd gave no mounts (the
    /// spec's root is then ready as it is). On error nothing stays mounted.
    pub async fn mount(req: &CreateTaskRequest, dir: &Path) -> Result<Option<Mounted>, ShimError> {
        if req.rootfs.is_empty() {
            return Ok(None);
        }
        std::fs::create_dir_all(dir).map_err(ShimError::io(format!(
            "create rootfs dir {}",
            dir.display()
        )))?;
        let mounted = Mounted(Some(dir.to_owned()));
        for m in &req.rootfs {
            mount_rootfs(m, dir).await?;
        }
        Ok(Some(mounted))
    }

    /// The mount, now the task's to unmount at its delete.
    pub fn keep(mut self) -> PathBuf {
        self.0.take().expect("a mount is kept once")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            unmount(&dir);
        }
    }
}

/// Unmounts a task's rootfs and whatever is mounted below it.
pub fn unmount(rootfs: &Path) {
    // The last release of an overlay syncs its upper directory's whole file system
    // (`ovl_sync_fs`): most of a delete's unmount time.
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH) {
        warn!("unmount {}: {e}", rootfs.display());
    }
}
