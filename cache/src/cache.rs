//! The cache itself: hashing with the memo, lookup with integrity checks, single-flight
//! get-or-compile and atomic publish.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use memmap2::Mmap;

use crate::atomic::{write_atomic, Durability};
use crate::config::CacheConfig;
use crate::error::{BoxError, Error, IoContext, Result};
use crate::format::{self, FileId, MetaRecord, META_MAX};
use crate::fsutil::{self, open_nofollow, sync_dir, unix_ns};
use crate::key::{Fingerprint, HashThreads, Key, ModuleHash};
use crate::layout::Layout;
use crate::lock::{self, KeyLock};
use crate::stats::{self, Deltas};
use crate::trust;

/// Last-used stamps are refreshed at most this often, so a hit costs no write most of the time.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// A module whose ctime is younger than this when hashing starts is not memoized: file timestamps
/// are only as fine as the kernel's clock tick, and a rewrite within the same tick would keep the
/// same identity ("racy git" problem). 100 ms is ten ticks at HZ=100.
pub const MEMO_RACY_WINDOW: Duration = Duration::from_millis(100);

/// Hit counters are merged into the stats file at most this often.
const STATS_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Turns a module into an artifact. The real implementation wraps WasmEdge's AOT compiler; tests
/// use fakes.
pub trait Compiler {
    /// What the compiler produces; decides the artifact's file name and mode.
    fn kind(&self) -> ArtifactKind {
        ArtifactKind::SharedLibrary
    }

    /// Compiles the module at `module` into the new file `out` (its directory exists and is
    /// inside the cache, on the same file system). `out` need not be synced: the cache does that.
    fn compile(&self, module: &Path, out: &Path) -> Result<(), BoxError>;
}

/// The two artifact formats WasmEdge loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// A native shared library (`module.so`, mode 0555).
    SharedLibrary,
    /// A universal wasm file with the native code in a custom section (`module.wasm`, mode 0444).
    Universal,
}

impl ArtifactKind {
    /// File name of the artifact inside its entry directory.
    pub fn file_name(self) -> &'static str {
        match self {
            ArtifactKind::SharedLibrary => "module.so",
            ArtifactKind::Universal => "module.wasm",
        }
    }

    fn mode(self) -> u32 {
        match self {
            ArtifactKind::SharedLibrary => 0o555,
            ArtifactKind::Universal => 0o444,
        }
    }

    pub(crate) fn from_record(r: &MetaRecord) -> Self {
        if r.shared_library {
            ArtifactKind::SharedLibrary
        } else {
            ArtifactKind::Universal
        }
    }
}

/// The kind's stable name, as `wasmedge-shimctl ls --json` reports it: `sharedlibrary` or
/// `universal`.
impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::SharedLibrary => "sharedlibrary",
            ArtifactKind::Universal => "universal",
        })
    }
}

/// A verified artifact, ready to hand to the loader.
#[derive(Debug)]
pub struct Artifact {
    /// The entry's key.
    pub key: Key,
    /// The artifact file. Stable for the entry's life; after eviction the path is gone, but
    /// `file` (and any mapping the loader made) stays valid: Linux keeps an unlinked inode alive
    /// until its last open descriptor and mapping are gone.
    pub path: PathBuf,
    /// The artifact opened read-only, already verified. A loader that accepts a path can use
    /// `/proc/self/fd/<fd>` to be immune to a concurrent eviction.
    pub file: File,
    /// Size in bytes.
    pub size: u64,
    /// blake3 digest of the artifact.
    pub digest: [u8; 32],
    /// Format of the artifact.
    pub kind: ArtifactKind,
    /// Informational name, usually the module's file name.
    pub hint: String,
}

/// How [`Cache::get_or_compile`] obtained the artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The entry was there.
    Hit,
    /// Another process compiled it while this one waited for the key lock.
    WaitedHit,
    /// This call compiled and published it.
    Compiled,
}

/// Which compile slots a compile takes. The cache knows nothing of tiers or module sizes;
/// its caller decides which compiles a start waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lane {
    /// One of [`CacheConfig::max_concurrent_compiles`] slots: every compile no start waits
    /// for, however long it takes.
    #[default]
    Node,
    /// One of [`CacheConfig::quick_compile_slots`] slots, which no compile of the node lane
    /// ever holds: a compile a start waits for (a small module's first tier) waits at most
    /// for another such compile, never behind a big module's minutes-long one.
    Quick,
}

/// Wall time spent per phase of [`Cache::get_or_compile`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryTimings {
    /// Hashing the module (near zero on a memo hit).
    pub hash: Duration,
    /// Looking the entry up and checking it.
    pub lookup: Duration,
    /// Waiting for the key lock and a compile slot.
    pub wait: Duration,
    /// Running the compiler.
    pub compile: Duration,
    /// Syncing, digesting and renaming the new entry into place.
    pub publish: Duration,
}

/// Result of [`Cache::get_or_compile`].
#[derive(Debug)]
pub struct Fetched {
    pub artifact: Artifact,
    pub outcome: Outcome,
    pub timings: EntryTimings,
    /// The module's hash came from the hash memo (the module was not read).
    pub from_memo: bool,
}

/// Result of checking one entry.
pub(crate) enum Check {
    Missing,
    Invalid(String),
    /// The entry, and its record's file, opened once: a hit's [`Cache::touch`] stamps it.
    Valid(Box<Artifact>, File),
}

/// A node-wide, content-addressed cache of compiled artifacts. Cheap to share between threads.
#[derive(Debug)]
pub struct Cache {
    pub(crate) cfg: CacheConfig,
    pub(crate) layout: Layout,
    /// Identity of each artifact at its last full digest check by this process.
    verified: Mutex<HashMap<Key, FileId>>,
    /// In-process hash memo, in front of the on-disk one.
    memo: Mutex<HashMap<FileId, ModuleHash>>,
    pub(crate) deltas: Deltas,
    last_flush: Mutex<Instant>,
}

/// Removes a staging directory unless the publish succeeded.
struct StagingGuard(Option<PathBuf>);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = fsutil::remove_any(&p) {
                log::warn!("cannot remove staging directory {}: {e}", p.display());
            }
        }
    }
}

impl Cache {
    /// Opens (creating if needed) the cache at `cfg.root`, checks that it is trusted and removes
    /// leftovers of dead processes.
    pub fn open(mut cfg: CacheConfig) -> Result<Cache> {
        cfg.max_concurrent_compiles = cfg.max_concurrent_compiles.max(1);
        let layout = Layout::new(&cfg.root);
        // The root from `/` down (see `trust`); below it, each fixed directory by the same rule.
        let owner = trust::effective_uid();
        trust::ensure_dir(&cfg.root, owner, 0o700)?;
        for d in layout.dirs() {
            fsutil::mkdir(&d).ctx("create directory", &d, None)?;
            trust::check_inside(&d, owner)?;
        }
        let cache = Cache {
            cfg,
            layout,
            verified: Mutex::default(),
            memo: Mutex::default(),
            deltas: Deltas::default(),
            last_flush: Mutex::new(Instant::now()),
        };
        cache.cleanup_temps()?;
        Ok(cache)
    }

    /// Where the engine makes the names it loads artifacts by (see the layout): inside the
    /// cache, checked with it.
    pub fn link_dir(&self) -> PathBuf {
        self.layout.links()
    }

    /// The configuration in use.
    pub fn config(&self) -> &CacheConfig {
        &self.cfg
    }

    /// Hashes the module at `module` (through the memo) and derives its key.
    pub fn key_for(&self, module: &Path, fp: &Fingerprint) -> Result<Key> {
        Ok(Key::derive(&self.hash_module(module)?, fp))
    }

    /// blake3 of the module's bytes. A file whose identity (dev, inode, size, mtime, ctime) is in
    /// the memo is not read at all.
    pub fn hash_module(&self, module: &Path) -> Result<ModuleHash> {
        Ok(self.hash_module_memo(module)?.0)
    }

    /// Like [`Cache::hash_module`]; the flag says whether the memo answered.
    fn hash_module_memo(&self, module: &Path) -> Result<(ModuleHash, bool)> {
        let file = File::open(module).ctx("open module", module, None)?;
        let m = file.metadata().ctx("inspect module", module, None)?;
        if !m.is_file() {
            return Err(Error::io(
                "hash module",
                module,
                None,
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        let id = FileId::of(&m);
        if let Some(h) = self.memo.lock().expect("memo lock").get(&id) {
            return Ok((*h, true));
        }
        if let Some(h) = self.memo_read(&id) {
            self.memo.lock().expect("memo lock").insert(id, h);
            return Ok((h, true));
        }
        let start = SystemTime::now();
        let h = hash_open_file(&file, m.len(), self.cfg.hash_threads).ctx(
            "hash module",
            module,
            None,
        )?;
        let after = FileId::of(&file.metadata().ctx("inspect module", module, None)?);
        if after != id {
            return Err(Error::io(
                "hash module",
                module,
                None,
                io::Error::other("the file changed while it was hashed"),
            ));
        }
        let ctime = fsutil::from_unix_ns(id.ctime_ns.max(0) as u64);
        let settled = start
            .duration_since(ctime)
            .is_ok_and(|age| age >= MEMO_RACY_WINDOW);
        if settled {
            self.memo.lock().expect("memo lock").insert(id, h);
            self.memo_write(&id, &h);
        }
        Ok((h, false))
    }

    fn memo_read(&self, id: &FileId) -> Option<ModuleHash> {
        let path = self.layout.memo_file(id);
        let mut f = open_nofollow(&path).ok()?;
        match format::read_bounded(&mut f, format::MEMO_MAX).and_then(|b| format::decode_memo(&b)) {
            Ok((rid, h)) if rid == *id => Some(h),
            Ok(_) => None,
            Err(e) => {
                // Only an optimization: drop it and re-hash.
                log::debug!("discarding bad memo record {}: {e}", path.display());
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn memo_write(&self, id: &FileId, h: &ModuleHash) {
        let path = self.layout.memo_file(id);
        // No fsync: a lost or torn record is a re-hash, which is all the memo is worth.
        let r = write_atomic(
            &path,
            &format::encode_memo(id, h),
            0o600,
            Durability::BestEffort,
        );
        if let Err(e) = r {
            log::debug!("cannot write memo record {}: {e}", path.display());
        }
    }

    /// Finds a valid entry without compiling. A corrupt, truncated, mismatched or symlinked entry
    /// is a miss (`Ok(None)`) and is removed unless another process holds its lock.
    pub fn lookup(&self, key: &Key) -> Result<Option<Artifact>> {
        let r = self.lookup_inner(key)?;
        if r.is_some() {
            self.deltas.add(stats::HITS, 1);
            self.maybe_flush();
        }
        Ok(r)
    }

    fn lookup_inner(&self, key: &Key) -> Result<Option<Artifact>> {
        match self.check_entry(key, false) {
            Check::Valid(a, meta) => {
                self.touch(&meta);
                Ok(Some(*a))
            }
            Check::Missing => Ok(None),
            Check::Invalid(reason) => {
                let lock_path = self.layout.key_lock(key);
                if let Some(_l) = lock::try_lock(&lock_path)
                    .map_err(|e| Error::io("lock", &lock_path, Some(*key), e))?
                {
                    self.remove_if_invalid_locked(key)?;
                } else {
                    log::info!("entry {key} is invalid ({reason}) and locked by another process");
                }
                Ok(None)
            }
        }
    }

    /// With the key lock held: re-checks and removes the entry if it is still invalid.
    pub(crate) fn remove_if_invalid_locked(&self, key: &Key) -> Result<Option<String>> {
        match self.check_entry(key, false) {
            Check::Invalid(reason) => {
                log::warn!("removing invalid cache entry {key}: {reason}");
                self.remove_entry_locked(key)?;
                self.deltas.add(stats::INVALID, 1);
                Ok(Some(reason))
            }
            _ => Ok(None),
        }
    }

    /// Moves the entry out of `entries/` in one rename, then deletes it. The key lock is held.
    pub(crate) fn remove_entry_locked(&self, key: &Key) -> Result<()> {
        let dir = self.layout.entry_dir(key);
        let trash = self.layout.trash_dir(key);
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Ok(m) if m.is_dir() => {
                fs::rename(&dir, &trash).ctx("move entry to trash", &dir, Some(*key))?;
                if let Some(shard) = dir.parent() {
                    let _ = sync_dir(shard);
                }
                // The entry is already gone from `entries/`; if deleting the trash fails (or races
                // with another process's clean-up), `cleanup_temps` finishes it later.
                if let Err(e) = fsutil::remove_any(&trash) {
                    log::warn!("cannot remove {} of key {key}: {e}", trash.display());
                }
            }
            // A symlink or stray file where an entry should be: unlink it, never follow it.
            _ => fs::remove_file(&dir).ctx("remove entry", &dir, Some(*key))?,
        }
        self.verified.lock().expect("verified lock").remove(key);
        Ok(())
    }

    /// Checks one entry. `full` forces the digest check regardless of the policy.
    pub(crate) fn check_entry(&self, key: &Key, full: bool) -> Check {
        let dir = self.layout.entry_dir(key);
        let shard = dir.parent().expect("entry has a shard");
        match fs::symlink_metadata(shard) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Check::Missing,
            Ok(m) if m.is_dir() => {}
            // Never followed; publish replaces it with a real directory.
            _ => return Check::Missing,
        }
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Check::Missing,
            Err(e) => return Check::Invalid(format!("cannot inspect {}: {e}", dir.display())),
            Ok(m) if m.file_type().is_symlink() => {
                return Check::Invalid(format!("{} is a symlink", dir.display()))
            }
            Ok(m) if !m.is_dir() => {
                return Check::Invalid(format!("{} is not a directory", dir.display()))
            }
            Ok(_) => {}
        }
        let meta_path = dir.join(crate::layout::META_FILE);
        let mut meta_file = match open_nofollow(&meta_path) {
            Ok(f) => f,
            Err(e) => return Check::Invalid(format!("cannot open {}: {e}", meta_path.display())),
        };
        let rec = match format::read_bounded(&mut meta_file, META_MAX)
            .and_then(|b| MetaRecord::decode(&b))
        {
            Ok(r) => r,
            Err(e) => return Check::Invalid(format!("bad record {}: {e}", meta_path.display())),
        };
        if rec.key != *key {
            return Check::Invalid(format!(
                "record {} is for key {}",
                meta_path.display(),
                rec.key
            ));
        }
        let kind = ArtifactKind::from_record(&rec);
        let path = dir.join(kind.file_name());
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) => return Check::Invalid(format!("cannot open {}: {e}", path.display())),
        };
        let m = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Check::Invalid(format!("cannot inspect {}: {e}", path.display())),
        };
        if !m.is_file() {
            return Check::Invalid(format!("{} is not a regular file", path.display()));
        }
        if m.len() != rec.size {
            return Check::Invalid(format!(
                "{} is {} bytes, record says {}",
                path.display(),
                m.len(),
                rec.size
            ));
        }
        if m.permissions().mode() & 0o222 != 0 {
            return Check::Invalid(format!("{} is writable", path.display()));
        }
        let id = FileId::of(&m);
        let known = self
            .verified
            .lock()
            .expect("verified lock")
            .get(key)
            .copied();
        let need_full = full
            || match known {
                Some(v) => v != id,
                None => self.cfg.verify_on_first_use || id != rec.identity,
            };
        if need_full {
            match hash_open_file(&file, m.len(), self.cfg.hash_threads) {
                Ok(h) if h.0 == rec.digest => {}
                Ok(_) => return Check::Invalid(format!("{} digest mismatch", path.display())),
                Err(e) => return Check::Invalid(format!("cannot hash {}: {e}", path.display())),
            }
            self.verified
                .lock()
                .expect("verified lock")
                .insert(*key, id);
        }
        Check::Valid(
            Box::new(Artifact {
                key: *key,
                path,
                file,
                size: rec.size,
                digest: rec.digest,
                kind,
                hint: rec.hint,
            }),
            meta_file,
        )
    }

    /// Records a use: the mtime of `meta` is the entry's last-used time, refreshed at most once
    /// per [`TOUCH_INTERVAL`] so most hits write nothing. Best effort: a lost touch only makes
    /// the entry look older to eviction.
    fn touch(&self, meta: &File) {
        let now = self.cfg.clock.now();
        let Ok(m) = meta.metadata() else { return };
        let Ok(last) = m.modified() else { return };
        let stale = match now.duration_since(last) {
            Ok(age) => age >= TOUCH_INTERVAL,
            Err(_) => false,
        };
        if stale {
            if let Err(e) = meta.set_modified(now) {
                log::debug!("cannot record last use: {e}");
            }
        }
    }

    /// Returns the artifact for `module` under engine `fp`, compiling it with `compiler` on a miss.
    ///
    /// Any number of threads or processes asking for the same missing key cause one compile: the
    /// first takes the key lock, the others wait for as long as it lives and makes progress
    /// (see [`crate::lock`]) and then hit; if it dies, one of them compiles.
    /// Compiles of different keys wait for one of [`CacheConfig::max_concurrent_compiles`] slots
    /// (the node [`Lane`]).
    pub fn get_or_compile(
        &self,
        module: &Path,
        fp: &Fingerprint,
        compiler: &dyn Compiler,
    ) -> Result<Fetched> {
        let hint = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.get_or_compile_as(module, &hint, fp, compiler)
    }

    /// Like [`Cache::get_or_compile`], recording `hint` (what `ls` shows: the module's name
    /// as its user knows it, the tier) instead of the file's name.
    pub fn get_or_compile_as(
        &self,
        module: &Path,
        hint: &str,
        fp: &Fingerprint,
        compiler: &dyn Compiler,
    ) -> Result<Fetched> {
        self.get_or_compile_in(module, hint, fp, compiler, Lane::Node)
    }

    /// Like [`Cache::get_or_compile_as`], compiling (on a miss) in a slot of `lane`.
    pub fn get_or_compile_in(
        &self,
        module: &Path,
        hint: &str,
        fp: &Fingerprint,
        compiler: &dyn Compiler,
        lane: Lane,
    ) -> Result<Fetched> {
        let mut t = EntryTimings::default();
        let start = Instant::now();
        let (mh, from_memo) = self.hash_module_memo(module)?;
        let key = Key::derive(&mh, fp);
        t.hash = start.elapsed();

        let start = Instant::now();
        let found = self.lookup_inner(&key)?;
        t.lookup = start.elapsed();
        if let Some(artifact) = found {
            self.deltas.add(stats::HITS, 1);
            self.maybe_flush();
            return Ok(Fetched {
                artifact,
                outcome: Outcome::Hit,
                timings: t,
                from_memo,
            });
        }

        let start = Instant::now();
        let key_lock = self.lock_key(&key)?;
        t.wait = start.elapsed();
        // Someone may have published while we waited; an invalid leftover is removed here.
        let start = Instant::now();
        self.remove_if_invalid_locked(&key)?;
        if let Check::Valid(a, meta) = self.check_entry(&key, false) {
            self.touch(&meta);
            t.lookup += start.elapsed();
            self.deltas.add(stats::HITS, 1);
            self.maybe_flush();
            return Ok(Fetched {
                artifact: *a,
                outcome: Outcome::WaitedHit,
                timings: t,
                from_memo,
            });
        }
        t.lookup += start.elapsed();

        let start = Instant::now();
        key_lock.announce("waiting-slot");
        let slots = match lane {
            Lane::Node => self.layout.slots(self.cfg.max_concurrent_compiles),
            Lane::Quick => self.layout.quick_slots(self.cfg.quick_compile_slots),
        };
        let slot = lock::lock_following(
            &slots,
            "compile slot",
            Some(key),
            self.cfg.stall_timeout,
            self.cfg
                .on_wait
                .as_ref()
                .map(|h| (h, self.cfg.wait_report_interval)),
        )?;
        key_lock.announce("compiling");
        slot.announce("compiling");
        t.wait += start.elapsed();

        let kind = compiler.kind();
        let (stage, guard) = self.new_staging(&key)?;
        let out = stage.join(kind.file_name());
        let start = Instant::now();
        compiler.compile(module, &out).map_err(|source| {
            match source.downcast::<io::Error>() {
                // Out of space in the cache: say so plainly, naming the file being written.
                Ok(e) if crate::error::is_no_space(&e) => {
                    Error::io("compiling into", &out, Some(key), *e)
                }
                Ok(e) => Error::Compile {
                    module: module.to_owned(),
                    key,
                    source: e,
                },
                Err(source) => Error::Compile {
                    module: module.to_owned(),
                    key,
                    source,
                },
            }
        })?;
        t.compile = start.elapsed();
        drop(slot);
        // The compiler read the file by path after we hashed it: make sure it compiled what the
        // key says. Costs one hash on a path that just spent far longer compiling.
        let file = File::open(module).ctx("open module", module, None)?;
        let len = file.metadata().ctx("inspect module", module, None)?.len();
        if hash_open_file(&file, len, self.cfg.hash_threads).ctx("hash module", module, None)? != mh
        {
            return Err(Error::ModuleChanged {
                module: module.to_owned(),
                key,
            });
        }

        let start = Instant::now();
        let artifact = self.publish_staged(&key, &stage, guard, kind, hint)?;
        t.publish = start.elapsed();
        self.clear_failure(&key);
        self.deltas.add(stats::MISSES, 1);
        self.deltas.add(stats::COMPILES, 1);
        self.deltas
            .add(stats::COMPILE_NS, t.compile.as_nanos() as u64);
        self.after_publish(key_lock);
        Ok(Fetched {
            artifact,
            outcome: Outcome::Compiled,
            timings: t,
            from_memo,
        })
    }

    /// Publishes an artifact compiled elsewhere (e.g. by a precompile step) under `key`. The file
    /// is copied; an existing valid entry is kept and returned.
    pub fn insert_from_file(
        &self,
        key: &Key,
        artifact: &Path,
        kind: ArtifactKind,
        hint: &str,
    ) -> Result<Artifact> {
        let key_lock = self.lock_key(key)?;
        self.remove_if_invalid_locked(key)?;
        if let Check::Valid(a, _) = self.check_entry(key, false) {
            return Ok(*a);
        }
        let (stage, guard) = self.new_staging(key)?;
        let out = stage.join(kind.file_name());
        fs::copy(artifact, &out).ctx("copy artifact", artifact, Some(*key))?;
        let a = self.publish_staged(key, &stage, guard, kind, hint)?;
        self.after_publish(key_lock);
        Ok(a)
    }

    /// Takes the per-key lock that serializes compiles and removals of `key`, waiting for as
    /// long as its holder lives and makes progress. Exposed for tools and benchmarks.
    pub fn lock_key(&self, key: &Key) -> Result<KeyLock> {
        lock::lock_following(
            std::slice::from_ref(&self.layout.key_lock(key)),
            "key lock",
            Some(*key),
            self.cfg.stall_timeout,
            self.cfg
                .on_wait
                .as_ref()
                .map(|h| (h, self.cfg.wait_report_interval)),
        )
    }

    fn new_staging(&self, key: &Key) -> Result<(PathBuf, StagingGuard)> {
        let stage = self.layout.staging_dir(key);
        fsutil::mkdir(&stage).ctx("create staging directory", &stage, Some(*key))?;
        let guard = StagingGuard(Some(stage.clone()));
        Ok((stage, guard))
    }

    /// Seals the staged artifact (mode, fsync, digest), writes its record, and renames the whole
    /// staging directory to `entries/<kk>/<key>` in one atomic step. Until that rename nothing is
    /// visible; after it, the entry is complete and durable.
    fn publish_staged(
        &self,
        key: &Key,
        stage: &Path,
        mut guard: StagingGuard,
        kind: ArtifactKind,
        hint: &str,
    ) -> Result<Artifact> {
        let k = Some(*key);
        let out = stage.join(kind.file_name());
        // O_NOFOLLOW: a compiler that left a symlink as output must not make us seal its target.
        let file = open_nofollow(&out).ctx("open compiler output", &out, k)?;
        let m = file.metadata().ctx("inspect compiler output", &out, k)?;
        if !m.is_file() {
            return Err(Error::io(
                "inspect compiler output",
                &out,
                k,
                io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
            ));
        }
        file.set_permissions(fs::Permissions::from_mode(kind.mode()))
            .ctx("seal artifact", &out, k)?;
        file.sync_all().ctx("sync artifact", &out, k)?;
        // Identity after chmod and fsync: nothing changes the inode from here on, and renaming
        // the parent directory does not touch it.
        let m = file.metadata().ctx("inspect artifact", &out, k)?;
        let identity = FileId::of(&m);
        let digest =
            hash_open_file(&file, m.len(), self.cfg.hash_threads).ctx("hash artifact", &out, k)?;
        let now = self.cfg.clock.now();
        let rec = MetaRecord {
            key: *key,
            digest: digest.0,
            size: m.len(),
            created_unix_ns: unix_ns(now),
            identity,
            shared_library: kind == ArtifactKind::SharedLibrary,
            hint: format::truncate_hint(hint).to_owned(),
        };
        let meta_path = stage.join(crate::layout::META_FILE);
        let mut mf = fsutil::create_new(&meta_path, 0o444).ctx("create record", &meta_path, k)?;
        mf.write_all(&rec.encode())
            .ctx("write record", &meta_path, k)?;
        mf.set_modified(now).ctx("stamp record", &meta_path, k)?;
        mf.sync_all().ctx("sync record", &meta_path, k)?;
        drop(mf);
        sync_dir(stage).ctx("sync staging directory", stage, k)?;

        let dir = self.layout.entry_dir(key);
        let shard = dir.parent().expect("entry has a shard").to_owned();
        match fs::symlink_metadata(&shard) {
            Ok(m) if m.is_dir() => {}
            other => {
                if other.is_ok() {
                    // A symlink or file where a shard should be: never publish through it.
                    fs::remove_file(&shard).ctx("remove bad shard", &shard, k)?;
                }
                fsutil::mkdir(&shard).ctx("create shard", &shard, k)?;
                let entries = self.layout.entries();
                sync_dir(&entries).ctx("sync directory", &entries, k)?;
            }
        }
        if let Err(e) = fs::rename(stage, &dir) {
            // We hold the key lock and found no valid entry, so whatever is there is debris
            // (e.g. an empty directory): clear it and retry once.
            if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) {
                fsutil::remove_any(&dir).ctx("remove stale entry", &dir, k)?;
                fs::rename(stage, &dir).ctx("publish entry", &dir, k)?;
            } else {
                return Err(Error::io("publish entry", &dir, k, e));
            }
        }
        guard.0 = None;
        sync_dir(&shard).ctx("sync shard", &shard, k)?;
        self.verified
            .lock()
            .expect("verified lock")
            .insert(*key, identity);
        self.deltas.add(stats::BYTES_STORED, rec.size);
        Ok(Artifact {
            key: *key,
            path: dir.join(kind.file_name()),
            file,
            size: rec.size,
            digest: rec.digest,
            kind,
            hint: rec.hint,
        })
    }

    /// Enforces the size cap while still holding the new entry's lock (so it cannot be evicted by
    /// its own publish), then records stats.
    fn after_publish(&self, key_lock: KeyLock) {
        if let Some(max) = self.cfg.max_size {
            if let Err(e) = self.gc(max) {
                log::warn!("size-cap eviction failed: {e}");
            }
        }
        drop(key_lock);
        self.flush_stats_logged();
    }

    pub(crate) fn maybe_flush(&self) {
        let due = {
            let mut last = self.last_flush.lock().expect("flush lock");
            if last.elapsed() >= STATS_FLUSH_INTERVAL {
                *last = Instant::now();
                true
            } else {
                false
            }
        };
        if due {
            self.flush_stats_logged();
        }
    }

    pub(crate) fn flush_stats_logged(&self) {
        if let Err(e) = self.flush_stats() {
            log::warn!("cannot update cache stats: {e}");
        }
    }

    /// Merges this process's pending counters into the shared stats file.
    pub fn flush_stats(&self) -> Result<()> {
        let lp = self.layout.stats_lock();
        let _l = lock::lock_with_timeout(&lp, Duration::from_secs(5), "stats lock", None)?;
        let path = self.layout.stats_file();
        self.deltas
            .merge_into(&path)
            .ctx("update stats", &path, None)
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.flush_stats_logged();
    }
}

/// blake3 of an open file through a read-only mapping, with the threads `threads` allows.
pub(crate) fn hash_open_file(
    file: &File,
    len: u64,
    threads: HashThreads,
) -> io::Result<ModuleHash> {
    if len == 0 {
        return Ok(ModuleHash::of_bytes(&[]));
    }
    // SAFETY: the mapping is read-only and private to this function. Cache entries are sealed
    // 0444/0555 inside a directory only we can write, and are never modified in place; modules
    // come from read-only image snapshots. If a file were truncated underneath us anyway, the
    // worst case is SIGBUS, not a wrong hash being trusted: identity is re-checked after hashing.
    let map = unsafe { Mmap::map(file)? };
    Ok(ModuleHash::of_bytes_with(&map, threads))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cache_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Cache>();
        assert_send_sync::<super::Artifact>();
    }

    #[test]
    fn artifact_kinds_have_stable_names() {
        use super::ArtifactKind;
        assert_eq!(ArtifactKind::SharedLibrary.to_string(), "sharedlibrary");
        assert_eq!(ArtifactKind::Universal.to_string(), "universal");
    }
}
