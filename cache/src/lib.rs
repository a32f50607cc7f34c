#![doc = include_str!("../README.md")]

pub mod atomic;
mod cache;
mod config;
mod error;
mod failures;
pub mod format;
mod fsutil;
mod key;
mod layout;
pub mod lock;
mod maintenance;
mod side;
mod stats;
pub mod trust;

pub use cache::{
    Artifact, ArtifactKind, Cache, Compiler, EntryTimings, Fetched, Lane, Outcome,
    MEMO_RACY_WINDOW, TOUCH_INTERVAL,
};
pub use config::{CacheConfig, Clock};
pub use error::{BoxError, Error, ForKey, Result};
pub use failures::{recent_failures, Failure, FailureCause, FAILURE_MAX};
pub use key::{
    Fingerprint, HashThreads, InvalidKey, Key, ModuleHash, ModuleHasher, KEY_CONTEXT,
    KEY_FORMAT_VERSION, RAYON_THRESHOLD,
};
pub use lock::KeyLock;
pub use lock::WaitHook;
pub use maintenance::{EntryInfo, GcReport, VerifyReport, MEMO_MAX_AGE};
pub use side::{read_phase_totals, update_phase_totals, SIDE_RECORD_MAX};
pub use stats::Stats;
