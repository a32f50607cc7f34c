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
//!
//! Waiting for a compile follows the compile, not a clock: a holder writes its pid and what it
//! is doing into the lock file (`pid 1234 compiling`), and a waiter waits for as long as the
//! holder lives and makes progress, that is uses CPU time while it says it compiles
//! ([`lock_following`]). A waiter whose holder died gets the lock at once (the kernel dropped
//! it) and compiles itself; one whose holder stopped making progress for
//! [`crate::CacheConfig::stall_timeout`] gets [`crate::Error::Stalled`], naming the holder.
//! A hook sees each wait every [`WAIT_REPORT_INTERVAL`] (the admin tool prints it).

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

/// How often a wait is reported to [`crate::CacheConfig::on_wait`].
pub const WAIT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Most bytes of a lock file read to learn its holder.
const HOLDER_MAX: u64 = 128;

/// A held exclusive lock; released on drop (or by the kernel if the process dies).
#[derive(Debug)]
pub struct KeyLock {
    lock: Flock<File>,
    path: PathBuf,
}

impl KeyLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells waiters what the holder does (`compiling`, `waiting-slot`, ...). Best effort: a
    /// lock file that cannot be written only makes waiters see an unknown holder.
    pub(crate) fn announce(&self, state: &str) {
        use std::os::unix::fs::FileExt;
        let line = format!("pid {} {state}\n", std::process::id());
        let _ = self.lock.set_len(0);
        let _ = self.lock.write_all_at(line.as_bytes(), 0);
    }
}

/// A lock's holder, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// What it said it does: `locked`, `waiting-slot`, `compiling`.
    pub state: String,
}

/// One wait for a lock, as the hook sees it.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub what: &'static str,
    pub key: Option<Key>,
    /// Who holds it, if its lock file says.
    pub holders: Vec<Holder>,
    pub waited: Duration,
    /// CPU time the holders have used (user + system), where /proc says.
    pub holders_cpu: Duration,
}

/// Reads who holds the lock at `path`.
fn holder(path: &Path) -> Option<Holder> {
    use std::io::Read;
    let mut text = String::new();
    crate::fsutil::open_nofollow(path)
        .ok()?
        .take(HOLDER_MAX)
        .read_to_string(&mut text)
        .ok()?;
    let mut words = text.split_whitespace();
    (words.next()? == "pid").then_some(())?;
    let pid = words.next()?.parse().ok()?;
    Some(Holder {
        pid,
        state: words.next().unwrap_or("locked").to_string(),
    })
}

/// User plus system CPU time of process `pid`, if it exists.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, possibly with spaces): utime is the
    // 12th, stime the 13th.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
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
                let l = KeyLock {
                    lock,
                    path: path.to_owned(),
                };
                l.announce("locked");
                return Ok(Some(l));
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

/// Takes the first free lock among `paths`, waiting for as long as its holders live and
/// make progress (see the module docs). `stall` is how long holders that say they compile
/// may go without using CPU time; `on_wait` sees the wait every `report` interval.
pub(crate) fn lock_following(
    paths: &[PathBuf],
    what: &'static str,
    key: Option<Key>,
    stall: Duration,
    on_wait: Option<(&WaitHook, Duration)>,
) -> Result<KeyLock> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(1);
    let offset = std::process::id() as usize % paths.len().max(1);
    let mut last_progress = Instant::now();
    let mut last_cpu = None;
    let mut last_report = Instant::now();
    loop {
        for i in 0..paths.len() {
            let p = &paths[(i + offset) % paths.len()];
            if let Some(l) = try_lock(p).map_err(|e| Error::io("lock", p, key, e))? {
                return Ok(l);
            }
        }
        let holders: Vec<Holder> = paths.iter().filter_map(|p| holder(p)).collect();
        let cpu: Duration = holders.iter().filter_map(|h| cpu_time(h.pid)).sum();
        // Progress: CPU time used, a holder that says it is not compiling (it waits for a
        // slot, which has its own holders), or one we cannot see yet.
        let compiling = !holders.is_empty() && holders.iter().all(|h| h.state == "compiling");
        if !compiling || last_cpu != Some(cpu) {
            last_progress = Instant::now();
            last_cpu = Some(cpu);
        }
        let waited = start.elapsed();
        if last_progress.elapsed() >= stall {
            return Err(Error::Stalled {
                what,
                path: paths.first().cloned().unwrap_or_default(),
                key: ForKey(key),
                holders: holders.iter().map(|h| h.pid).collect(),
                stalled: last_progress.elapsed(),
            });
        }
        if let Some((hook, report)) = on_wait {
            if last_report.elapsed() >= report {
                last_report = Instant::now();
                hook.call(&Waiting {
                    what,
                    key,
                    holders,
                    waited,
                    holders_cpu: cpu,
                });
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A callback that sees each wait for a lock (who holds it, for how long).
#[derive(Clone)]
pub struct WaitHook(std::sync::Arc<dyn Fn(&Waiting) + Send + Sync>);

impl WaitHook {
    pub fn new(f: impl Fn(&Waiting) + Send + Sync + 'static) -> Self {
        WaitHook(std::sync::Arc::new(f))
    }

    pub(crate) fn call(&self, w: &Waiting) {
        (self.0)(w)
    }
}

impl std::fmt::Debug for WaitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaitHook")
    }
}
