//! Typed errors of the cache: every variant names the path and, when one is involved, the key.
//!
//! Messages are lower-case without a trailing period and carry the underlying cause, so a log line
//! is enough to act on. A corrupt or mismatched entry is never an error: it is a miss (see
//! [`crate::Cache::lookup`]); errors are for conditions the caller has to know about.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::key::Key;

/// The error type a [`crate::Compiler`] returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders ` for key <hex>` when a key is known, so messages stay one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForKey(pub Option<Key>);

impl fmt::Display for ForKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(k) => write!(f, " for key {k}"),
            None => Ok(()),
        }
    }
}

/// Everything that can go wrong in the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A directory (the cache root, one of its fixed sub-directories, or another directory
    /// checked with [`crate::trust`]) or a component of the path leading to it fails the trust
    /// rule: `component` is the offending one, `path` the directory asked for.
    #[error("directory {} is not trusted: {} {reason}", path.display(), component.display())]
    Untrusted {
        path: PathBuf,
        component: PathBuf,
        reason: String,
    },

    /// An I/O operation failed.
    #[error("{op} {}{key}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        key: ForKey,
        #[source]
        source: io::Error,
    },

    /// The file system is full (`ENOSPC`) or the quota is exhausted (`EDQUOT`). Nothing partial
    /// was published; the staging directory has been removed.
    #[error("no space left on device (ENOSPC) while {op} {}{key}: {source}", path.display())]
    NoSpace {
        op: &'static str,
        path: PathBuf,
        key: ForKey,
        #[source]
        source: io::Error,
    },

    /// The compiler failed. `module` is the input, `key` the entry that was being built.
    #[error("compiling {} for key {key} failed: {source}", module.display())]
    Compile {
        module: PathBuf,
        key: Key,
        #[source]
        source: BoxError,
    },

    /// Waiting for a short-lived lock (stats, phase totals) took too long.
    #[error("timed out after {waited:?} waiting for {what} {}{key}", path.display())]
    LockTimeout {
        what: &'static str,
        path: PathBuf,
        key: ForKey,
        waited: Duration,
    },

    /// The holders of a lock this process waited for said they compiled, and used no CPU
    /// time for [`crate::CacheConfig::stall_timeout`].
    #[error("the compile holding {what} {}{key} (pid {holders:?}) made no progress for {stalled:?}", path.display())]
    Stalled {
        what: &'static str,
        path: PathBuf,
        key: ForKey,
        holders: Vec<u32>,
        stalled: Duration,
    },

    /// The module file changed between hashing and compiling; the result was discarded.
    #[error("module {} changed while it was compiled for key {key}", module.display())]
    ModuleChanged { module: PathBuf, key: Key },

    /// No entry matches the key prefix given to [`crate::Cache::remove`].
    #[error("no cache entry matches key prefix {prefix:?} in {}", root.display())]
    NotFound { prefix: String, root: PathBuf },

    /// More than one entry matches the key prefix given to [`crate::Cache::remove`].
    #[error("key prefix {prefix:?} matches {count} entries in {}", root.display())]
    AmbiguousKey {
        prefix: String,
        count: usize,
        root: PathBuf,
    },

    /// A key or key prefix is not lower/upper-case hex, or is too short or too long.
    #[error(transparent)]
    InvalidKey(#[from] crate::key::InvalidKey),
}

impl Error {
    /// Builds an [`Error::Io`], or [`Error::NoSpace`] when the cause is `ENOSPC`/`EDQUOT`.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        key: Option<Key>,
        source: io::Error,
    ) -> Self {
        let path = path.into();
        let key = ForKey(key);
        if is_no_space(&source) {
            Error::NoSpace {
                op,
                path,
                key,
                source,
            }
        } else {
            Error::Io {
                op,
                path,
                key,
                source,
            }
        }
    }

    /// True when the error (or the compiler error it wraps) is "no space left on device".
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::NoSpace { .. } => true,
            Error::Compile { source, .. } => {
                source.downcast_ref::<io::Error>().is_some_and(is_no_space)
            }
            _ => false,
        }
    }
}

pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Attaches operation, path and key to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path, key: Option<Key>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &std::path::Path, key: Option<Key>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, key, e))
    }
}
