//! In-process behaviour: hits and misses, the memo, corruption handling, trust, eviction and a
//! full disk. Cross-process behaviour is in `multiprocess.rs`.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use wasmedge_aot_cache::{
    ArtifactKind, Cache, CacheConfig, Clock, Error, FailureCause, Key, Lane, Outcome,
    MEMO_RACY_WINDOW,
};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    modules: PathBuf,
    log: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let modules = dir.path().join("modules");
    fs::create_dir(&modules).unwrap();
    let log = dir.path().join("compile.log");
    Fixture {
        root,
        modules,
        log,
        _dir: dir,
    }
}

impl Fixture {
    fn open(&self) -> Cache {
        Cache::open(CacheConfig::new(&self.root)).unwrap()
    }
    fn compiles(&self) -> usize {
        count_lines(&self.log, "end ")
    }
    fn module(&self, name: &str) -> PathBuf {
        write_module(&self.modules, name, format!("module {name}").as_bytes())
    }
}

fn entry_dir(root: &Path, key: &Key) -> PathBuf {
    let h = key.to_hex();
    root.join("v1/entries").join(&h[..2]).join(&h)
}

#[test]
fn miss_then_hit_then_new_process_hit() {
    let f = fixture();
    let m = f.module("a.wasm");
    let c = FakeCompiler::logging(&f.log);
    let cache = f.open();
    let first = cache.get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert_eq!(first.outcome, Outcome::Compiled);
    let bytes = fs::read(&first.artifact.path).unwrap();
    assert_eq!(bytes, fake_output(b"module a.wasm", 4096));
    assert_eq!(first.artifact.size, 4096);
    assert_eq!(first.artifact.hint, "a.wasm");
    let mode = fs::metadata(&first.artifact.path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o555);
    let second = cache.get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert_eq!(second.outcome, Outcome::Hit);
    assert_eq!(second.artifact.path, first.artifact.path);
    drop(cache);
    let again = f.open().get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert_eq!(again.outcome, Outcome::Hit);
    assert_eq!(f.compiles(), 1);

    // A different fingerprint is a different entry.
    let mut fp = fingerprint();
    fp.options.push(("bounds-checks".into(), "off".into()));
    let other = f.open().get_or_compile(&m, &fp, &c).unwrap();
    assert_eq!(other.outcome, Outcome::Compiled);
    assert_ne!(other.artifact.key, first.artifact.key);

    let s = f.open().stats().unwrap();
    assert_eq!((s.hits, s.misses, s.compiles), (2, 2, 2));
    assert_eq!(s.entries, 2);
    assert_eq!(s.bytes_stored, 8192);
    assert!(s.current_bytes > 8192, "{s:?}");
}

#[test]
fn memo_skips_rehash_and_a_corrupt_memo_only_costs_a_rehash() {
    let f = fixture();
    let m = f.module("a.wasm");
    std::thread::sleep(MEMO_RACY_WINDOW + Duration::from_millis(50));
    let c = FakeCompiler::logging(&f.log);
    let r = f.open().get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert!(!r.from_memo);
    let key = r.artifact.key;
    let r = f.open().get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert!(r.from_memo, "a new process must use the on-disk memo");
    assert_eq!(r.artifact.key, key);

    let memo_dir = f.root.join("v1/memo");
    let records: Vec<_> = fs::read_dir(&memo_dir).unwrap().flatten().collect();
    assert_eq!(records.len(), 1);
    fs::write(records[0].path(), b"WAOCMEMO garbage").unwrap();
    let r = f.open().get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert!(
        !r.from_memo,
        "a corrupt memo must be re-hashed, not trusted"
    );
    assert_eq!(r.artifact.key, key);
    assert_eq!(r.outcome, Outcome::Hit);

    // Changing the module changes its identity, so the memo cannot answer for it.
    fs::write(&m, b"module a.wasm, version 2").unwrap();
    let r = f.open().get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert!(!r.from_memo);
    assert_ne!(r.artifact.key, key);
    assert_eq!(r.outcome, Outcome::Compiled);
}

/// Corrupts the entry of `a.wasm` with `damage` and checks that it is a miss (never handed out),
/// that it is removed and recompiled, and that the result is correct: once in the process that
/// published it (identity-based check) and once in a new process (first-use check).
fn corruption_case(name: &str, verify_on_first_use: bool, damage: impl Fn(&Path, &Path)) {
    for new_process in [false, true] {
        let f = fixture();
        let m = f.module("a.wasm");
        let c = FakeCompiler::logging(&f.log);
        let mut cfg = CacheConfig::new(&f.root);
        cfg.verify_on_first_use = verify_on_first_use;
        let mut cache = Cache::open(cfg.clone()).unwrap();
        let a = cache
            .get_or_compile(&m, &fingerprint(), &c)
            .unwrap()
            .artifact;
        let dir = entry_dir(&f.root, &a.key);
        damage(&dir, &a.path);
        if new_process {
            cache = Cache::open(cfg).unwrap();
        }
        let ctx =
            format!("{name} (new process: {new_process}, first-use check: {verify_on_first_use})");
        if let Some(bad) = cache.lookup(&a.key).unwrap() {
            panic!("{ctx}: handed out a damaged entry {bad:?}");
        }
        assert!(
            fs::symlink_metadata(&dir).is_err(),
            "{ctx}: damaged entry not removed"
        );
        let r = cache.get_or_compile(&m, &fingerprint(), &c).unwrap();
        assert_eq!(r.outcome, Outcome::Compiled, "{ctx}");
        assert_eq!(f.compiles(), 2, "{ctx}");
        assert_eq!(
            fs::read(&r.artifact.path).unwrap(),
            fake_output(b"module a.wasm", 4096),
            "{ctx}"
        );
        assert!(fs::symlink_metadata(&dir).unwrap().is_dir(), "{ctx}");
        let v = cache.verify().unwrap();
        assert_eq!((v.ok.len(), v.removed.len()), (1, 0), "{ctx}");
        assert_eq!(cache.stats().unwrap().invalid_entries, 1, "{ctx}");
    }
}

fn writable(p: &Path) {
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x01;
    // Keep the original mode and mtime: only ctime (and the content) betrays the change.
    let m = fs::metadata(path).unwrap();
    writable(path);
    fs::write(path, &bytes).unwrap();
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(m.modified().unwrap()).unwrap();
    fs::set_permissions(path, m.permissions()).unwrap();
}

#[test]
fn truncated_artifact_is_a_miss() {
    corruption_case("truncated", true, |_, art| {
        writable(art);
        fs::File::options()
            .write(true)
            .open(art)
            .unwrap()
            .set_len(100)
            .unwrap();
    });
}

#[test]
fn flipped_byte_is_a_miss_with_and_without_first_use_check() {
    for first_use in [true, false] {
        corruption_case("flipped byte", first_use, |_, art| flip_byte(art, 2000));
    }
}

#[test]
fn flipped_byte_in_fresh_process_is_caught_by_first_use_check() {
    let f = fixture();
    let m = f.module("a.wasm");
    let c = FakeCompiler::logging(&f.log);
    let a = f
        .open()
        .get_or_compile(&m, &fingerprint(), &c)
        .unwrap()
        .artifact;
    // Overwrite in place through the existing inode with the same size, then re-seal: a
    // different process that never verified it must hash it before handing it out.
    flip_byte(&a.path, 10);
    let cache = f.open();
    assert!(cache.lookup(&a.key).unwrap().is_none());
    assert_eq!(cache.stats().unwrap().invalid_entries, 1);
}

#[test]
fn artifact_replaced_by_symlink_is_a_miss_and_target_untouched() {
    let keep = tempfile::tempdir().unwrap();
    let decoy = keep.path().join("decoy.so");
    corruption_case("artifact symlink", true, |_, art| {
        let _ = fs::remove_file(&decoy);
        fs::copy(art, &decoy).unwrap();
        writable(art);
        fs::remove_file(art).unwrap();
        symlink(&decoy, art).unwrap();
    });
    assert!(decoy.exists(), "the symlink target must not be touched");
}

#[test]
fn entry_replaced_by_symlink_is_a_miss_and_target_untouched() {
    let keep = tempfile::tempdir().unwrap();
    let decoy = keep.path().join("entry");
    corruption_case("entry symlink", true, |dir, _| {
        let _ = fs::remove_dir_all(&decoy);
        let _ = fs::remove_dir_all(keep.path().join("moved"));
        Command::new("cp")
            .arg("-a")
            .arg(dir)
            .arg(&decoy)
            .status()
            .unwrap();
        fs::rename(dir, keep.path().join("moved")).unwrap();
        symlink(&decoy, dir).unwrap();
    });
    assert!(
        decoy.join("meta").exists(),
        "the symlink target must not be touched"
    );
}

#[test]
fn corrupt_record_is_a_miss() {
    corruption_case("record byte flipped", true, |dir, _| {
        flip_byte(&dir.join("meta"), 40)
    });
    corruption_case("record truncated", true, |dir, _| {
        let p = dir.join("meta");
        writable(&p);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(20)
            .unwrap();
    });
    corruption_case("record oversized", true, |dir, _| {
        let p = dir.join("meta");
        writable(&p);
        fs::write(&p, vec![b'W'; 1 << 20]).unwrap();
    });
    corruption_case("record missing", true, |dir, _| {
        fs::remove_file(dir.join("meta")).unwrap();
    });
}

#[test]
fn record_of_another_key_is_a_miss() {
    let f = fixture();
    let c = FakeCompiler::logging(&f.log);
    let cache = f.open();
    let a = cache
        .get_or_compile(&f.module("a.wasm"), &fingerprint(), &c)
        .unwrap()
        .artifact;
    let b = cache
        .get_or_compile(&f.module("b.wasm"), &fingerprint(), &c)
        .unwrap()
        .artifact;
    let (da, db) = (entry_dir(&f.root, &a.key), entry_dir(&f.root, &b.key));
    // Swap in a's record and artifact under b's key: self-consistent, but for the wrong key.
    writable(&db.join("meta"));
    fs::copy(da.join("meta"), db.join("meta")).unwrap();
    writable(&db.join("module.so"));
    fs::copy(da.join("module.so"), db.join("module.so")).unwrap();
    assert!(f.open().lookup(&b.key).unwrap().is_none());
    assert!(f.open().lookup(&a.key).unwrap().is_some());
}

#[test]
fn untrusted_roots_are_clear_errors() {
    let f = fixture();
    drop(f.open());
    fs::set_permissions(&f.root, fs::Permissions::from_mode(0o775)).unwrap();
    let e = Cache::open(CacheConfig::new(&f.root)).unwrap_err();
    assert!(matches!(e, Error::Untrusted { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "directory {0} is not trusted: {0} has mode 0775: writable by group or others",
            f.root.display()
        )
    );
    fs::set_permissions(&f.root, fs::Permissions::from_mode(0o700)).unwrap();

    let entries = f.root.join("v1/entries");
    fs::set_permissions(&entries, fs::Permissions::from_mode(0o703)).unwrap();
    let e = Cache::open(CacheConfig::new(&f.root))
        .unwrap_err()
        .to_string();
    assert!(e.contains("v1/entries has mode 0703"), "{e}");
    fs::set_permissions(&entries, fs::Permissions::from_mode(0o700)).unwrap();

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&f.root, Some(4242), None).unwrap();
        let e = Cache::open(CacheConfig::new(&f.root))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "directory {0} is not trusted: {0} is owned by uid 4242, not by root: its owner could replace what is in it",
                f.root.display()
            )
        );
        std::os::unix::fs::chown(&f.root, Some(0), None).unwrap();
    } else {
        eprintln!("skipping the wrong-owner case: needs root to chown");
    }

    let link = f.root.with_file_name("link");
    symlink(&f.root, &link).unwrap();
    let e = Cache::open(CacheConfig::new(&link))
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("is a symlink: name the real directory"), "{e}");
    assert!(Cache::open(CacheConfig::new(&f.root)).is_ok());
}

fn fake_clock() -> (Clock, Arc<AtomicU64>) {
    let secs = Arc::new(AtomicU64::new(1_000_000));
    let s = secs.clone();
    (
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(s.load(Ordering::SeqCst))),
        secs,
    )
}

#[test]
fn eviction_is_lru_and_skips_locked_entries() {
    let f = fixture();
    let (clock, secs) = fake_clock();
    let mut cfg = CacheConfig::new(&f.root);
    cfg.clock = clock;
    let cache = Cache::open(cfg).unwrap();
    let c = FakeCompiler::logging(&f.log);
    let mut keys = Vec::new();
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        secs.store(1_000_000 + 1000 * i as u64, Ordering::SeqCst);
        let r = cache
            .get_or_compile(&f.module(name), &fingerprint(), &c)
            .unwrap();
        keys.push(r.artifact.key);
    }
    let [a, b, c_key, d] = keys[..] else {
        unreachable!()
    };
    // Use a and c later: LRU order is now b, d, a, c.
    secs.store(1_010_000, Ordering::SeqCst);
    assert!(cache.lookup(&a).unwrap().is_some());
    // A second use within the touch interval writes nothing.
    secs.store(1_010_030, Ordering::SeqCst);
    assert!(cache.lookup(&a).unwrap().is_some());
    secs.store(1_010_100, Ordering::SeqCst);
    assert!(cache.lookup(&c_key).unwrap().is_some());

    let list = cache.list().unwrap();
    assert_eq!(list.len(), 4);
    let used = |k: Key| list.iter().find(|e| e.key == k).unwrap().last_used;
    assert_eq!(used(a), UNIX_EPOCH + Duration::from_secs(1_010_000));
    assert_eq!(used(b), UNIX_EPOCH + Duration::from_secs(1_001_000));
    let entry_size = list[0].disk_size;
    assert!(list.iter().all(|e| e.disk_size == entry_size), "{list:#?}");

    let report = cache.gc(3 * entry_size).unwrap();
    assert_eq!(report.evicted, vec![b]);
    // d is next in LRU order, but its lock is held (as during a publish or check): skipped.
    let held = cache.lock_key(&d).unwrap();
    let report = cache.gc(2 * entry_size).unwrap();
    assert_eq!(report.evicted, vec![a]);
    assert_eq!(report.remaining_entries, 2);
    // Using d makes it the most recent, so c goes next.
    secs.store(1_020_000, Ordering::SeqCst);
    assert!(cache.lookup(&d).unwrap().is_some());
    drop(held);
    let report = cache.gc(entry_size).unwrap();
    assert_eq!(report.evicted, vec![c_key]);
    assert!(cache.lookup(&d).unwrap().is_some());
    let s = cache.stats().unwrap();
    assert_eq!(
        (s.evictions, s.evicted_bytes, s.entries),
        (3, 3 * entry_size, 1)
    );
}

#[test]
fn size_cap_evicts_after_publish_but_never_the_new_entry() {
    let f = fixture();
    let (clock, secs) = fake_clock();
    let mut cfg = CacheConfig::new(&f.root);
    cfg.clock = clock;
    cfg.max_size = Some(10_000);
    let cache = Cache::open(cfg).unwrap();
    let c = FakeCompiler::logging(&f.log);
    let a = cache
        .get_or_compile(&f.module("a"), &fingerprint(), &c)
        .unwrap()
        .artifact;
    secs.fetch_add(100, Ordering::SeqCst);
    let b = cache
        .get_or_compile(&f.module("b"), &fingerprint(), &c)
        .unwrap()
        .artifact;
    secs.fetch_add(100, Ordering::SeqCst);
    let big = FakeCompiler {
        size: 20_000,
        ..c.clone()
    };
    let z = cache
        .get_or_compile(&f.module("z"), &fingerprint(), &big)
        .unwrap()
        .artifact;
    let left: Vec<Key> = cache.list().unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(
        left,
        vec![z.key],
        "a and b evicted, the entry just published kept"
    );
    // The evicted artifact stays usable through its open descriptor (the inode lives on).
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut &a.file, &mut buf).unwrap();
    assert_eq!(buf, fake_output(b"module a", 4096));
    assert!(!a.path.exists() && !b.path.exists());
}

#[test]
fn list_remove_and_insert_from_file() {
    let f = fixture();
    let cache = f.open();
    let c = FakeCompiler::logging(&f.log);
    let a = cache
        .get_or_compile(&f.module("a.wasm"), &fingerprint(), &c)
        .unwrap()
        .artifact;
    let precompiled = f.modules.join("pre.wasm");
    fs::write(&precompiled, b"universal wasm with aot section").unwrap();
    let key = cache.key_for(&f.module("b.wasm"), &fingerprint()).unwrap();
    let b = cache
        .insert_from_file(&key, &precompiled, ArtifactKind::Universal, "b.wasm")
        .unwrap();
    assert!(b.path.ends_with("module.wasm"));
    assert_eq!(
        fs::metadata(&b.path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    let r = cache
        .get_or_compile(&f.module("b.wasm"), &fingerprint(), &c)
        .unwrap();
    assert_eq!(r.outcome, Outcome::Hit);
    assert_eq!(r.artifact.kind, ArtifactKind::Universal);

    let list = cache.list().unwrap();
    let hints: Vec<_> = list.iter().map(|e| e.hint.as_str()).collect();
    assert_eq!(list.len(), 2);
    assert!(hints.contains(&"a.wasm") && hints.contains(&"b.wasm"));

    let e = cache.remove("zz").unwrap_err().to_string();
    assert_eq!(e, "invalid key \"zz\": a key prefix is 1 to 64 hex digits");
    let h = a.key.to_hex();
    let unused = (0..16u8)
        .map(|d| format!("{d:x}"))
        .find(|d| !h.starts_with(d.as_str()) && !key.to_hex().starts_with(d.as_str()))
        .unwrap();
    let e = cache.remove(&unused).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("no cache entry matches key prefix \"{unused}\"")),
        "{e}"
    );
    assert_eq!(cache.remove(&h[..8]).unwrap(), a.key);
    assert!(cache.lookup(&a.key).unwrap().is_none());
    assert_eq!(cache.list().unwrap().len(), 1);
    assert!(tree(&f.root.join("v1/tmp")).is_empty());
}

#[test]
fn compile_failure_leaves_nothing() {
    struct Failing;
    impl wasmedge_aot_cache::Compiler for Failing {
        fn compile(&self, _: &Path, out: &Path) -> Result<(), wasmedge_aot_cache::BoxError> {
            fs::write(out, b"partial")?;
            Err("invalid module: bad magic".into())
        }
    }
    let f = fixture();
    let cache = f.open();
    let m = f.module("bad.wasm");
    let e = cache
        .get_or_compile(&m, &fingerprint(), &Failing)
        .unwrap_err();
    let key = cache.key_for(&m, &fingerprint()).unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "compiling {} for key {key} failed: invalid module: bad magic",
            m.display()
        )
    );
    assert!(tree(&f.root.join("v1/tmp")).is_empty());
    assert!(tree(&f.root.join("v1/entries")).is_empty());
}

/// Unmounts on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_a_clear_error_and_leaves_a_consistent_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping full-disk test: cannot mount a tmpfs (needs root or CAP_SYS_ADMIN)");
        return;
    }
    let _mount = Mount(mnt.clone());
    let root = mnt.join("cache");
    let modules = tempfile::tempdir().unwrap();
    let log = modules.path().join("log");
    let cache = Cache::open(CacheConfig::new(&root)).unwrap();
    let small = FakeCompiler {
        size: 100_000,
        ..FakeCompiler::logging(&log)
    };
    let a = cache
        .get_or_compile(
            &write_module(modules.path(), "a", b"a"),
            &fingerprint(),
            &small,
        )
        .unwrap()
        .artifact;

    // 1. The compiler itself runs out of space.
    let huge = FakeCompiler {
        size: 2 << 20,
        ..small.clone()
    };
    let m = write_module(modules.path(), "b", b"b");
    let e = cache.get_or_compile(&m, &fingerprint(), &huge).unwrap_err();
    assert!(e.is_no_space(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("no space left on device (ENOSPC) while compiling into "),
        "{msg}"
    );
    assert!(
        msg.ends_with("No space left on device (os error 28)"),
        "{msg}"
    );

    // 2. The compiler succeeds, then the disk fills before the record is written.
    let filler = mnt.join("filler");
    let filling = FakeCompiler {
        fill_disk: Some(filler.clone()),
        ..small.clone()
    };
    let e = cache
        .get_or_compile(&m, &fingerprint(), &filling)
        .unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("no space left on device (ENOSPC) while "),
        "{msg}"
    );
    assert!(
        msg.contains(&cache.key_for(&m, &fingerprint()).unwrap().to_hex()),
        "{msg}"
    );
    fs::remove_file(&filler).unwrap();

    // Consistent afterwards: nothing staged, the old entry intact, the new one compiles.
    assert!(
        tree(&root.join("v1/tmp")).is_empty(),
        "{:?}",
        tree(&root.join("v1/tmp"))
    );
    let v = cache.verify().unwrap();
    assert_eq!(v.ok, vec![a.key]);
    assert!(v.removed.is_empty());
    let r = cache.get_or_compile(&m, &fingerprint(), &small).unwrap();
    assert_eq!(r.outcome, Outcome::Compiled);
    drop(cache);
}

#[test]
fn shard_replaced_by_symlink_is_never_followed() {
    let f = fixture();
    let c = FakeCompiler::logging(&f.log);
    let m = f.module("a.wasm");
    let a = f
        .open()
        .get_or_compile(&m, &fingerprint(), &c)
        .unwrap()
        .artifact;
    let shard = entry_dir(&f.root, &a.key).parent().unwrap().to_owned();
    let keep = tempfile::tempdir().unwrap();
    let decoy = keep.path().join("shard");
    Command::new("cp")
        .arg("-a")
        .arg(&shard)
        .arg(&decoy)
        .status()
        .unwrap();
    fs::rename(&shard, keep.path().join("moved")).unwrap();
    symlink(&decoy, &shard).unwrap();
    let cache = f.open();
    assert!(cache.lookup(&a.key).unwrap().is_none());
    let r = cache.get_or_compile(&m, &fingerprint(), &c).unwrap();
    assert_eq!(r.outcome, Outcome::Compiled);
    assert!(
        fs::symlink_metadata(&shard).unwrap().is_dir(),
        "symlink replaced by a directory"
    );
    let decoy_entry = decoy.join(a.key.to_hex());
    assert!(
        decoy_entry.join("meta").exists(),
        "the symlink target must not be touched"
    );
}

#[test]
fn a_failed_compile_is_remembered_with_its_cause_until_a_compile_succeeds() {
    let f = fixture();
    let now = Arc::new(AtomicU64::new(1_000_000));
    let clock_now = now.clone();
    let mut cfg = CacheConfig::new(&f.root);
    cfg.clock =
        Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(clock_now.load(Ordering::SeqCst)));
    let cache = Cache::open(cfg).unwrap();
    let m = f.module("fails.wasm");
    let key = cache.key_for(&m, &fingerprint()).unwrap();
    assert!(cache
        .recent_failure(&key, Duration::from_secs(600))
        .is_none());

    cache.record_failure(&key, FailureCause::NoSpace, "no space left on device");
    let got = cache
        .recent_failure(&key, Duration::from_secs(600))
        .unwrap();
    assert_eq!(
        (got.cause, got.message.as_str()),
        (FailureCause::NoSpace, "no space left on device")
    );
    assert_eq!(cache.failures(Duration::from_secs(600)).len(), 1);
    // Older than the window: forgotten for the decision, still a record.
    now.fetch_add(601, Ordering::SeqCst);
    assert!(cache
        .recent_failure(&key, Duration::from_secs(600))
        .is_none());
    assert!(cache.failures(Duration::from_secs(600)).is_empty());

    cache.record_failure(&key, FailureCause::Compiler, "unknown opcode");
    cache
        .get_or_compile(&m, &fingerprint(), &FakeCompiler::logging(&f.log))
        .unwrap();
    assert!(
        cache
            .recent_failure(&key, Duration::from_secs(600))
            .is_none(),
        "a compile that succeeded clears its key's failure"
    );
}

#[test]
fn a_quick_lane_compile_never_waits_for_the_node_lanes_slot() {
    let f = fixture();
    let mut cfg = CacheConfig::new(&f.root);
    cfg.max_concurrent_compiles = 1;
    cfg.quick_compile_slots = 1;
    let cache = Arc::new(Cache::open(cfg).unwrap());
    let marker = f.modules.join("long-started");
    // Each compiler logs when it starts and ends, to a file of its own.
    let log = |name: &str| f.modules.join(format!("{name}.log"));
    let run = |name: &'static str, lane, compiler| {
        let cache = cache.clone();
        let module = f.module(&format!("{name}.wasm"));
        std::thread::spawn(move || {
            cache
                .get_or_compile_in(&module, name, &fingerprint(), &compiler, lane)
                .unwrap();
        })
    };
    // A long compile holds the node lane's one slot.
    let long_compiler = FakeCompiler {
        pause: Duration::from_millis(1500),
        halfway_marker: Some(marker.clone()),
        ..FakeCompiler::logging(&log("long"))
    };
    let a = run("long", Lane::Node, long_compiler);
    while !marker.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Another node-lane compile waits for it; a quick-lane one does not.
    let c = run("other", Lane::Node, FakeCompiler::logging(&log("other")));
    let b = run("small", Lane::Quick, FakeCompiler::logging(&log("small")));
    for t in [a, b, c] {
        t.join().unwrap();
    }
    let at = |name: &str, what: &str| -> u128 {
        let text = fs::read_to_string(log(name)).unwrap();
        let line = text.lines().find(|l| l.starts_with(what)).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(
        at("small", "end ") < at("long", "end "),
        "the quick-lane compile waited for the node lane's slot"
    );
    assert!(
        at("other", "start ") > at("long", "end "),
        "two compiles ran at once in the node lane's one slot"
    );
    assert!(f.root.join("v1/locks/quick.0.lock").exists());
}
