//! Everything that walks the whole cache: listing, full verification, removal by key prefix,
//! garbage collection (LRU eviction under a size cap) and clean-up of leftovers.
//!
//! Eviction takes each victim's key lock without blocking and skips entries whose lock is held,
//! so an entry being published, re-checked or removed by someone else is never evicted from under
//! them. Entries being published are not in `entries/` yet at all. Evicting an entry that a
//! running instance has open or mapped is safe: the entry is renamed away and unlinked, and
//! Linux keeps an unlinked inode (and every mapping of it) alive until the last user is gone.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::atomic;
use crate::cache::{ArtifactKind, Cache, Check};
use crate::error::{Error, IoContext, Result};
use crate::format::{self, MetaRecord, META_MAX};
use crate::fsutil::{self, from_unix_ns, open_nofollow};
use crate::key::Key;
use crate::layout::{self, parse_entry_name, parse_staging_name, TRASH_PREFIX};
use crate::lock;
use crate::stats::{self, Stats};

/// Memo records older than this are dropped by `gc` (they are cheap to recreate).
pub const MEMO_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Unrecognised files in `tmp/` older than this are removed.
const STRAY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// One entry as listed by [`Cache::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub key: Key,
    /// Artifact size in bytes.
    pub size: u64,
    /// Artifact plus record, as counted against the size cap.
    pub disk_size: u64,
    pub kind: ArtifactKind,
    /// Module name hint recorded at publish.
    pub hint: String,
    pub created: SystemTime,
    pub last_used: SystemTime,
    pub path: PathBuf,
}

/// Result of [`Cache::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries whose digest matched.
    pub ok: Vec<Key>,
    /// Entries found invalid and removed, with the reason.
    pub removed: Vec<(Key, String)>,
    /// Entries skipped because another process held their lock.
    pub busy: Vec<Key>,
}

/// Result of [`Cache::gc`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Entries evicted, least recently used first.
    pub evicted: Vec<Key>,
    pub evicted_bytes: u64,
    /// Invalid entries removed.
    pub invalid_removed: usize,
    /// Entries and bytes left.
    pub remaining_entries: usize,
    pub remaining_bytes: u64,
}

/// An entry directory found on disk, with its record if readable.
struct Scanned {
    key: Key,
    record: std::result::Result<(MetaRecord, SystemTime), String>,
    disk_size: u64,
}

impl Cache {
    fn scan(&self) -> Result<Vec<Scanned>> {
        let entries = self.layout.entries();
        let mut out = Vec::new();
        for shard in fs::read_dir(&entries).ctx("list", &entries, None)? {
            let shard = shard.ctx("list", &entries, None)?;
            let shard_name = shard.file_name().to_string_lossy().into_owned();
            let shard_path = shard.path();
            // file_type() of a DirEntry does not follow symlinks.
            if !shard.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(rd) = fs::read_dir(&shard_path) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(key) = parse_entry_name(&shard_name, &name) else {
                    continue;
                };
                out.push(self.scan_one(key, e.path()));
            }
        }
        out.sort_by_key(|s| s.key);
        Ok(out)
    }

    fn scan_one(&self, key: Key, dir: PathBuf) -> Scanned {
        let mut disk_size = 0;
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    disk_size += m.len();
                }
            }
        }
        let meta_path = dir.join(layout::META_FILE);
        let record = (|| {
            let mut f = open_nofollow(&meta_path).map_err(|e| e.to_string())?;
            let used = f
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| e.to_string())?;
            let bytes = format::read_bounded(&mut f, META_MAX).map_err(|e| e.to_string())?;
            let rec = MetaRecord::decode(&bytes).map_err(|e| e.to_string())?;
            if rec.key != key {
                return Err(format!("record is for key {}", rec.key));
            }
            Ok((rec, used))
        })();
        Scanned {
            key,
            record,
            disk_size,
        }
    }

    /// Lists entries with a readable record (cheap: no digest is computed).
    pub fn list(&self) -> Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for s in self.scan()? {
            let Ok((rec, used)) = s.record else { continue };
            let kind = ArtifactKind::from_record(&rec);
            out.push(EntryInfo {
                key: s.key,
                size: rec.size,
                disk_size: s.disk_size,
                kind,
                hint: rec.hint,
                created: from_unix_ns(rec.created_unix_ns),
                last_used: used,
                path: self.layout.entry_dir(&s.key).join(kind.file_name()),
            });
        }
        Ok(out)
    }

    /// Checks the full digest of every entry and removes those that fail.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for s in self.scan()? {
            let lock_path = self.layout.key_lock(&s.key);
            let Some(_l) = lock::try_lock(&lock_path)
                .map_err(|e| Error::io("lock", &lock_path, Some(s.key), e))?
            else {
                report.busy.push(s.key);
                continue;
            };
            match self.check_entry(&s.key, true) {
                Check::Valid(..) => report.ok.push(s.key),
                Check::Missing => {}
                Check::Invalid(reason) => {
                    log::warn!("removing invalid cache entry {}: {reason}", s.key);
                    self.remove_entry_locked(&s.key)?;
                    self.deltas.add(stats::INVALID, 1);
                    report.removed.push((s.key, reason));
                }
            }
        }
        self.flush_stats_logged();
        Ok(report)
    }

    /// Removes the one entry whose hex key starts with `prefix` and returns its key.
    pub fn remove(&self, prefix: &str) -> Result<Key> {
        if prefix.is_empty() || prefix.len() > 64 || !prefix.bytes().all(|c| c.is_ascii_hexdigit())
        {
            return Err(
                crate::key::InvalidKey::new(prefix, "a key prefix is 1 to 64 hex digits").into(),
            );
        }
        let p = prefix.to_ascii_lowercase();
        let matches: Vec<Key> = self
            .scan()?
            .into_iter()
            .map(|s| s.key)
            .filter(|k| k.to_hex().starts_with(&p))
            .collect();
        match matches.as_slice() {
            [] => Err(Error::NotFound {
                prefix: prefix.to_owned(),
                root: self.cfg.root.clone(),
            }),
            [key] => {
                let _l = self.lock_key(key)?;
                self.remove_entry_locked(key)?;
                Ok(*key)
            }
            _ => Err(Error::AmbiguousKey {
                prefix: prefix.to_owned(),
                count: matches.len(),
                root: self.cfg.root.clone(),
            }),
        }
    }

    /// Removes invalid entries and leftovers, then evicts least-recently-used entries until the
    /// entries take at most `max_size` bytes. Locked entries are skipped.
    pub fn gc(&self, max_size: u64) -> Result<GcReport> {
        self.cleanup_temps()?;
        let mut report = GcReport::default();
        let mut live = Vec::new();
        for s in self.scan()? {
            match s.record {
                Ok((rec, used)) => live.push((used, rec.created_unix_ns, s.key, s.disk_size)),
                Err(_) => {
                    let lp = self.layout.key_lock(&s.key);
                    if let Some(_l) =
                        lock::try_lock(&lp).map_err(|e| Error::io("lock", &lp, Some(s.key), e))?
                    {
                        if self.remove_if_invalid_locked(&s.key)?.is_some() {
                            report.invalid_removed += 1;
                        }
                    }
                }
            }
        }
        // Least recently used first; ties broken by age, then key, so the order is total.
        live.sort();
        let mut total: u64 = live.iter().map(|e| e.3).sum();
        let mut kept = live.len();
        for (_, _, key, size) in &live {
            if total <= max_size {
                break;
            }
            let lp = self.layout.key_lock(key);
            let Some(_l) =
                lock::try_lock(&lp).map_err(|e| Error::io("lock", &lp, Some(*key), e))?
            else {
                continue;
            };
            self.remove_entry_locked(key)?;
            total -= size;
            kept -= 1;
            report.evicted.push(*key);
            report.evicted_bytes += size;
        }
        self.deltas
            .add(stats::EVICTIONS, report.evicted.len() as u64);
        self.deltas.add(stats::EVICTED_BYTES, report.evicted_bytes);
        report.remaining_entries = kept;
        report.remaining_bytes = total;
        self.prune_memo();
        self.prune_locks()?;
        self.flush_stats_logged();
        Ok(report)
    }

    /// Deletes trash, staging directories whose key lock is free (their owner died: a live owner
    /// holds the lock for as long as the directory exists), and stray files. Lock-based liveness
    /// is immune to pid reuse and pid namespaces, unlike checking whether a pid is alive.
    pub(crate) fn cleanup_temps(&self) -> Result<()> {
        let tmp = self.layout.tmp();
        let now = self.cfg.clock.now();
        for e in fs::read_dir(&tmp).ctx("list", &tmp, None)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let remove = if name.starts_with(TRASH_PREFIX) {
                true
            } else if let Some(key) = parse_staging_name(&name) {
                let lp = self.layout.key_lock(&key);
                match lock::try_lock(&lp) {
                    Ok(Some(_l)) => {
                        // Still holding the lock while deleting, so no new owner can appear.
                        if let Err(err) = fsutil::remove_any(&path) {
                            log::warn!("cannot remove leftover {}: {err}", path.display());
                        }
                        false
                    }
                    _ => false,
                }
            } else {
                older_than(&path, now, STRAY_MAX_AGE)
            };
            if remove {
                if let Err(err) = fsutil::remove_any(&path) {
                    log::warn!("cannot remove leftover {}: {err}", path.display());
                }
            }
        }
        self.prune_links();
        // Torn updates of files under a lock leave their temporaries behind; only while their
        // lock is ours are they dead.
        for (file, lock_path) in [
            (self.layout.stats_file(), self.layout.stats_lock()),
            (self.layout.phases_file(), self.layout.phases_lock()),
        ] {
            if let Ok(Some(_l)) = lock::try_lock(&lock_path) {
                if let (Some(dir), Some(name)) = (file.parent(), file.file_name()) {
                    let name = name.to_string_lossy();
                    for e in fs::read_dir(dir).ctx("list", dir, None)?.flatten() {
                        if atomic::is_temp_of(&e.file_name().to_string_lossy(), &name) {
                            let _ = fs::remove_file(e.path());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the links whose artifact is gone (evicted, replaced or removed as invalid): they
    /// would never be loaded again. A link still in use by a loaded library does not need its
    /// name any more (`dlopen` keeps the object).
    fn prune_links(&self) {
        // Links lived at `<root>/links` before the layout owned them: that directory holds
        // nothing any release reads any more.
        let legacy = self.cfg.root.join("links");
        if fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_dir()) {
            let _ = fs::remove_dir_all(&legacy);
        }
        let Ok(rd) = fs::read_dir(self.layout.links()) else {
            return;
        };
        for e in rd.flatten() {
            if fs::metadata(e.path()).is_err() {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn prune_memo(&self) {
        let now = self.cfg.clock.now();
        let Ok(rd) = fs::read_dir(self.layout.memo()) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let max_age = if e.file_name().to_string_lossy().starts_with('.') {
                STRAY_MAX_AGE
            } else {
                MEMO_MAX_AGE
            };
            if older_than(&p, now, max_age) {
                let _ = fs::remove_file(&p);
            }
        }
    }

    /// Deletes per-key lock files of keys that have no entry, while holding them; see
    /// [`crate::lock`] for why that is race-free.
    fn prune_locks(&self) -> Result<()> {
        let locks = self.layout.locks();
        for e in fs::read_dir(&locks).ctx("list", &locks, None)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".lock") else {
                continue;
            };
            let Ok(key) = hex.parse::<Key>() else {
                continue;
            };
            if self.layout.entry_dir(&key).symlink_metadata().is_ok() {
                continue;
            }
            if let Ok(Some(_l)) = lock::try_lock(&e.path()) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Counters summed over all processes, plus the current number and size of entries.
    pub fn stats(&self) -> Result<Stats> {
        self.flush_stats()?;
        let mut s = stats::to_stats(&stats::read_counters(&self.layout.stats_file()));
        for e in self.scan()? {
            s.entries += 1;
            s.current_bytes += e.disk_size;
        }
        Ok(s)
    }
}

fn older_than(path: &std::path::Path, now: SystemTime, age: Duration) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) => {
            let mtime = from_unix_ns(
                (m.mtime().max(0) as u64)
                    .saturating_mul(1_000_000_000)
                    .saturating_add(m.mtime_nsec().max(0) as u64),
            );
            now.duration_since(mtime).is_ok_and(|a| a >= age)
        }
        Err(_) => false,
    }
}
