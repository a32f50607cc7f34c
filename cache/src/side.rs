//! A record the cache keeps for its user: the shim's node-wide sums of each container's start
//! phases (`v1/phases.json`). The cache owns where it lives, how it is updated and read (its
//! lock, an atomic replace, a bounded read that follows no symlink); the user owns its
//! contents, which the cache treats as opaque bytes of at most [`SIDE_RECORD_MAX`].
//!
//! It used to live beside the cache directory, in its parent, which the cache does not own:
//! with `cache_dir = /tmp/x` the shim wrote `/tmp/phases.json` through a predictable temporary
//! name that a planted symlink could redirect.

use std::path::Path;
use std::time::Duration;

use crate::atomic::{write_atomic, Durability};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::lock;
use crate::trust;

/// Largest record read back; a larger file reads as absent.
pub const SIDE_RECORD_MAX: usize = 64 * 1024;

/// Reads the phase totals record of the cache at `root`; `None` when it is missing,
/// unreadable, not a regular file or too large.
pub fn read_phase_totals(root: &Path) -> Option<Vec<u8>> {
    crate::atomic::read_small(&Layout::new(root).phases_file(), SIDE_RECORD_MAX)
}

/// Replaces the phase totals record of the cache at `root` with `update(old)`, under its lock.
/// The cache must exist and pass the trust check from `/` down: nothing is created, and
/// nothing is written outside it.
pub fn update_phase_totals(
    root: &Path,
    update: impl FnOnce(Option<Vec<u8>>) -> Vec<u8>,
) -> Result<()> {
    let owner = trust::effective_uid();
    if let trust::Found::Missing { .. } = trust::check_dir(root, owner)? {
        return Err(Error::io(
            "record phase totals in",
            root,
            None,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    let layout = Layout::new(root);
    for d in [layout.base(), layout.locks()] {
        trust::check_inside(&d, owner)?;
    }
    let _lock = lock::lock_with_timeout(
        &layout.phases_lock(),
        Duration::from_secs(5),
        "phase totals lock",
        None,
    )?;
    let path = layout.phases_file();
    let new = update(read_phase_totals(root));
    write_atomic(&path, &new, 0o644, Durability::BestEffort)
        .map_err(|e| Error::io("write", &path, None, e))
}
