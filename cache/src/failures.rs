//! Compiles that failed, remembered per key, so that a start does not pay again for a
//! compile that just failed (a full disk, a module the compiler refuses, a compile the
//! kernel killed for memory), and so that `stats` and `check` can say why a module runs in
//! the interpreter.
//!
//! File: `v1/failed/<key>`, a JSON object `{"version": 1, "at_unix": secs, "cause":
//! "no-space" | "compiler" | "killed" | "cache", "message": ".."}` of at most
//! [`FAILURE_MAX`] bytes, replaced atomically. Best effort both ways: a record that cannot be
//! written (the disk is full) only means the runner's own memory of the failure is all
//! there is; an unreadable one reads as no failure. A successful publish removes the key's
//! record.

use std::fs;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::atomic::{write_atomic, Durability};
use crate::cache::Cache;
use crate::error::Error;
use crate::format::read_bounded;
use crate::fsutil::open_nofollow;
use crate::key::Key;

/// Largest record read back.
pub const FAILURE_MAX: usize = 8 * 1024;
const VERSION: u32 = 1;

/// Why a compile failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCause {
    /// The cache's file system is full (or over quota).
    NoSpace,
    /// The compiler refused or failed on the module.
    Compiler,
    /// The compile process was killed (e.g. by the OOM killer) or died.
    Killed,
    /// The cache itself failed (an I/O error, a lock).
    Cache,
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureCause::NoSpace => "no space left in the cache",
            FailureCause::Compiler => "the compiler failed",
            FailureCause::Killed => "the compile was killed",
            FailureCause::Cache => "the cache failed",
        })
    }
}

/// A remembered failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    version: u32,
    pub at_unix: u64,
    pub cause: FailureCause,
    pub message: String,
}

impl Failure {
    pub fn new(cause: FailureCause, message: impl Into<String>, at: SystemTime) -> Failure {
        let mut message: String = message.into();
        if message.len() > FAILURE_MAX / 2 {
            let mut end = FAILURE_MAX / 2;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Failure {
            version: VERSION,
            at_unix: at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            cause,
            message,
        }
    }

    /// How long ago it happened, by `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.saturating_sub(Duration::from_secs(self.at_unix)))
            .unwrap_or_default()
    }
}

impl Error {
    /// What kind of failure this error of a compile is.
    pub fn failure_cause(&self) -> FailureCause {
        if self.is_no_space() {
            return FailureCause::NoSpace;
        }
        match self {
            Error::Compile { .. } => FailureCause::Compiler,
            _ => FailureCause::Cache,
        }
    }
}

impl Cache {
    /// Remembers that compiling `key` failed. Best effort (see the module docs).
    pub fn record_failure(&self, key: &Key, cause: FailureCause, message: &str) {
        let f = Failure::new(cause, message, self.cfg.clock.now());
        let path = self.layout.failure_file(key);
        let bytes = serde_json::to_vec(&f).unwrap_or_default();
        if let Err(e) = write_atomic(&path, &bytes, 0o644, Durability::BestEffort) {
            log::debug!(
                "cannot record the failed compile in {}: {e}",
                path.display()
            );
        }
    }

    /// The failure of `key`'s last compile, if one is recorded and younger than `within`.
    pub fn recent_failure(&self, key: &Key, within: Duration) -> Option<Failure> {
        let f = self.read_failure(key)?;
        (f.age(self.cfg.clock.now()) < within).then_some(f)
    }

    fn read_failure(&self, key: &Key) -> Option<Failure> {
        failures_in_one(&self.layout, key)
    }

    /// Forgets `key`'s failure (its compile has now succeeded).
    pub(crate) fn clear_failure(&self, key: &Key) {
        let _ = fs::remove_file(self.layout.failure_file(key));
    }

    /// Every recorded failure younger than `within`, newest first.
    pub fn failures(&self, within: Duration) -> Vec<(Key, Failure)> {
        failures_in(&self.layout, within, self.cfg.clock.now())
    }
}

fn failures_in_one(layout: &crate::layout::Layout, key: &Key) -> Option<Failure> {
    let mut file = open_nofollow(&layout.failure_file(key)).ok()?;
    let bytes = read_bounded(&mut file, FAILURE_MAX).ok()?;
    serde_json::from_slice::<Failure>(&bytes)
        .ok()
        .filter(|f| f.version == VERSION)
}

/// The recorded failures of the cache at `root` younger than `within`, newest first,
/// without opening (and so without creating anything in) the cache: for `check`.
pub fn recent_failures(root: &std::path::Path, within: Duration) -> Vec<(Key, Failure)> {
    failures_in(&crate::layout::Layout::new(root), within, SystemTime::now())
}

fn failures_in(
    layout: &crate::layout::Layout,
    within: Duration,
    now: SystemTime,
) -> Vec<(Key, Failure)> {
    let mut out: Vec<(Key, Failure)> = fs::read_dir(layout.failures())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<Key>().ok())
        .filter_map(|k| Some((k, failures_in_one(layout, &k)?)))
        .filter(|(_, f)| f.age(now) < within)
        .collect();
    out.sort_by_key(|(_, f)| std::cmp::Reverse(f.at_unix));
    out
}
