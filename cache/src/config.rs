//! Configuration of a [`crate::Cache`], and the clock it reads (injectable for tests).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::key::HashThreads;
use crate::lock::WaitHook;

/// Where "now" comes from for created/last-used stamps and age-based clean-up. Tests inject a fake
/// one to check LRU order without sleeping.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(Arc::new(SystemTime::now))
    }

    /// A clock backed by any function.
    pub fn from_fn(f: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    /// Reads the clock.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Settings of a cache. Build with [`CacheConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Cache root; created (mode 0700) if missing. Must be owned by the effective user and not
    /// writable by group or others.
    pub root: PathBuf,
    /// Size cap in bytes; after each publish, least-recently-used entries are evicted down to it.
    /// `None` (the default) means unbounded; [`crate::Cache::gc`] can still be called explicitly.
    pub max_size: Option<u64>,
    /// A caller waits for the per-key lock (another process compiling the same module) and
    /// for a compile slot for as long as their holders live and make progress; this is how
    /// long holders that compile may use no CPU time before the wait fails
    /// ([`crate::Error::Stalled`]). Default 10 minutes: no compile is that idle.
    pub stall_timeout: Duration,
    /// Sees every wait for a lock, every `wait_report_interval`.
    pub on_wait: Option<WaitHook>,
    /// How often `on_wait` sees a wait; default [`crate::lock::WAIT_REPORT_INTERVAL`].
    pub wait_report_interval: Duration,
    /// Most compiles running at once across all processes sharing `root`. Default: number of CPUs.
    /// It is the number of slot lock files a process tries, so processes sharing a root should
    /// agree on it; if they do not, the largest value is the effective bound.
    pub max_concurrent_compiles: usize,
    /// Slots of the quick lane ([`crate::Lane::Quick`]), apart from the
    /// `max_concurrent_compiles` ones: compiles that a start waits for take them, so that
    /// such a compile never waits behind a long one that no start waits for. Default 1;
    /// processes sharing a root should agree on it, as on `max_concurrent_compiles`.
    pub quick_compile_slots: usize,
    /// Check the full blake3 digest of an artifact the first time this process hands it out
    /// (default `true`). When `false`, the digest is only checked when the artifact's identity
    /// (dev, inode, size, mtime, ctime) differs from the one recorded at publish.
    pub verify_on_first_use: bool,
    /// Source of "now" for created/last-used stamps and age-based clean-up.
    pub clock: Clock,
    /// Threads module hashing may use. The default, one, is the only safe choice in a process
    /// that forks (see [`HashThreads`]).
    pub hash_threads: HashThreads,
}

impl CacheConfig {
    /// Defaults for a cache at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        CacheConfig {
            root: root.into(),
            max_size: None,
            stall_timeout: Duration::from_secs(600),
            on_wait: None,
            wait_report_interval: crate::lock::WAIT_REPORT_INTERVAL,
            max_concurrent_compiles: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            quick_compile_slots: 1,
            verify_on_first_use: true,
            clock: Clock::system(),
            hash_threads: HashThreads::One,
        }
    }
}
