//! Counters persisted across processes.
//!
//! The hot path only bumps in-process atomics. They are merged into the `stats` file (format in
//! [`crate::format`]) under `locks/stats.lock` after every compile, eviction or explicit call, at
//! most once a second on hits, and when the [`crate::Cache`] is dropped. A process killed
//! between merges loses at most a second of hit counts; a corrupt stats file restarts from zero.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::atomic::{write_atomic, Durability};
use crate::format::{decode_stats, encode_stats, read_bounded, STATS_MAX};
use crate::fsutil::open_nofollow;

/// Cache statistics, summed over every process that used the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Artifacts handed out without compiling (including after waiting for another process).
    pub hits: u64,
    /// Requests that had to compile.
    pub misses: u64,
    /// Successful compiles.
    pub compiles: u64,
    /// Total wall time of successful compiles.
    pub compile_time: Duration,
    /// Bytes of artifacts published, cumulative.
    pub bytes_stored: u64,
    /// Entries removed by the size cap or `gc`.
    pub evictions: u64,
    /// Bytes removed by eviction, cumulative.
    pub evicted_bytes: u64,
    /// Entries found corrupt, truncated, mismatched or replaced by a symlink, and removed.
    pub invalid_entries: u64,
    /// Entries present now.
    pub entries: u64,
    /// Bytes on disk of the entries present now.
    pub current_bytes: u64,
}

pub(crate) const HITS: usize = 0;
pub(crate) const MISSES: usize = 1;
pub(crate) const COMPILES: usize = 2;
pub(crate) const COMPILE_NS: usize = 3;
pub(crate) const BYTES_STORED: usize = 4;
pub(crate) const EVICTIONS: usize = 5;
pub(crate) const EVICTED_BYTES: usize = 6;
pub(crate) const INVALID: usize = 7;
pub(crate) const N: usize = 8;

/// Counts of this process not yet merged into the stats file.
///
/// They belong to the process that counted them. A forked child (the shim's runner forks a
/// process per container from one `Cache`) starts with a copy of its parent's pending counts;
/// if it merged them, every event its parent had not merged yet would be counted once more
/// per child that merges (seven tampered entries showed as 35 invalid ones). So each counter
/// set records its owner's pid, and a process that finds another pid there drops the copy
/// before it counts or merges: the parent still holds the originals and merges them itself.
#[derive(Debug)]
pub(crate) struct Deltas {
    owner: AtomicU32,
    counts: [AtomicU64; N],
}

impl Default for Deltas {
    fn default() -> Self {
        Deltas {
            owner: AtomicU32::new(std::process::id()),
            counts: Default::default(),
        }
    }
}

impl Deltas {
    /// Drops counts inherited through `fork`.
    fn own(&self) {
        let me = std::process::id();
        if self.owner.load(Ordering::Relaxed) != me {
            for c in &self.counts {
                c.store(0, Ordering::Relaxed);
            }
            self.owner.store(me, Ordering::Relaxed);
        }
    }

    pub fn add(&self, i: usize, v: u64) {
        self.own();
        self.counts[i].fetch_add(v, Ordering::Relaxed);
    }

    fn take(&self) -> [u64; N] {
        self.own();
        std::array::from_fn(|i| self.counts[i].swap(0, Ordering::Relaxed))
    }

    fn give_back(&self, d: &[u64; N]) {
        for (i, v) in d.iter().enumerate() {
            self.add(i, *v);
        }
    }

    /// Adds the pending deltas to the file at `path`. The caller holds the stats lock.
    pub fn merge_into(&self, path: &Path) -> std::io::Result<()> {
        let d = self.take();
        if d.iter().all(|v| *v == 0) {
            return Ok(());
        }
        let mut total = read_counters(path);
        for (t, v) in total.iter_mut().zip(d) {
            *t = t.wrapping_add(v);
        }
        // Statistics are not worth an fsync per merge: a crash loses at most the last merge.
        let r = write_atomic(path, &encode_stats(&total), 0o600, Durability::BestEffort);
        if r.is_err() {
            self.give_back(&d);
        }
        r
    }
}

/// Reads the persisted counters; missing or corrupt means zero (stats are not worth failing for).
pub(crate) fn read_counters(path: &Path) -> Vec<u64> {
    let mut v = match open_nofollow(path) {
        Ok(mut f) => match read_bounded(&mut f, STATS_MAX).and_then(|b| decode_stats(&b)) {
            Ok(v) => v,
            Err(e) => {
                log::warn!("ignoring corrupt stats file {}: {e}", path.display());
                Vec::new()
            }
        },
        Err(_) => Vec::new(),
    };
    v.resize(v.len().max(N), 0);
    v
}

pub(crate) fn to_stats(c: &[u64]) -> Stats {
    Stats {
        hits: c[HITS],
        misses: c[MISSES],
        compiles: c[COMPILES],
        compile_time: Duration::from_nanos(c[COMPILE_NS]),
        bytes_stored: c[BYTES_STORED],
        evictions: c[EVICTIONS],
        evicted_bytes: c[EVICTED_BYTES],
        invalid_entries: c[INVALID],
        entries: 0,
        current_bytes: 0,
    }
}
