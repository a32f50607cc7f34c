//! Cross-process locks: one `flock` lock file per key (single flight) and N slot files that bound
//! how many compiles run at once across all processes sharing the cache.
//!
//! `flock` locks belong to the open file description and the kernel drops them when the holder
//! dies, so a compiler killed with SIGKILL never blocks the next caller. Waiting is a poll with
//! `LOCK_NB` and a short back-off, because `flock` itself has no timeout; the wake-up delay after
//! a release is at most [`MAX_BACKOFF`].
//!
//! Lock files may be deleted by `gc` (while it holds them), so after locking we check that the
//! path still names the inode we locked; if not, someone deleted it in between and we retry on
//! the new file. Without that check two processes could lock two different inodes of one path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, ForKey, Result};
use crate::key::Key;

/// Upper bound of the polling interval while waiting for a lock.
pub const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// A held exclusive lock; released on drop (or by the kernel if the process dies).
#[derive(Debug)]
pub struct KeyLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl KeyLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One non-blocking attempt. `Ok(None)` means someone else holds the lock.
pub(crate) fn try_lock(path: &Path) -> io::Result<Option<KeyLock>> {
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(io::Error::from(e)),
        };
        let held = lock.metadata()?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok(Some(KeyLock {
                    _lock: lock,
                    path: path.to_owned(),
                }))
            }
            // Deleted or replaced after we opened it: lock the current file instead.
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Polls [`try_lock`] until it succeeds or `timeout` passes.
pub(crate) fn lock_with_timeout(
    path: &Path,
    timeout: Duration,
    what: &'static str,
    key: Option<Key>,
) -> Result<KeyLock> {
    lock_any_with_timeout(
        std::slice::from_ref(&path.to_path_buf()),
        timeout,
        what,
        key,
    )
}

/// Takes the first free lock among `paths` (compile slots), waiting up to `timeout`.
pub(crate) fn lock_any_with_timeout(
    paths: &[PathBuf],
    timeout: Duration,
    what: &'static str,
    key: Option<Key>,
) -> Result<KeyLock> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(1);
    // Start at a pid-dependent slot so waiters do not all hammer slot 0 first.
    let offset = std::process::id() as usize % paths.len().max(1);
    loop {
        for i in 0..paths.len() {
            let p = &paths[(i + offset) % paths.len()];
            if let Some(l) = try_lock(p).map_err(|e| Error::io("lock", p, key, e))? {
                return Ok(l);
            }
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Error::LockTimeout {
                what,
                path: paths.first().cloned().unwrap_or_default(),
                key: ForKey(key),
                waited,
            });
        }
        std::thread::sleep(backoff.min(timeout - waited));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
