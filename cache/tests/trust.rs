//! A hostile neighbour: another user owns a directory on the way to the cache (issue 13,
//! finding 1). The attack steps run as that user (uid 65534, `nobody`) through `setpriv`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use wasmedge_aot_cache::{BoxError, Cache, CacheConfig, Compiler, Error};

const ATTACKER: u32 = 65534;

/// What the attacker's own "cache" holds for the victim's key.
struct Evil;

impl Compiler for Evil {
    fn compile(&self, _module: &Path, out: &Path) -> Result<(), BoxError> {
        fs::write(out, b"EVIL: code of the attacker's choosing")?;
        Ok(())
    }
}

fn as_attacker(script: &str, args: &[&Path]) {
    let status = Command::new("setpriv")
        .args([
            format!("--reuid={ATTACKER}"),
            format!("--regid={ATTACKER}"),
            "--clear-groups".into(),
            "sh".into(),
            "-c".into(),
            script.into(),
            "attacker".into(),
        ])
        .args(args)
        .status()
        .expect("run setpriv");
    assert!(status.success(), "the attacker's step {script:?} failed");
}

fn chown_tree(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}

#[test]
fn a_cache_below_a_directory_another_user_owns_is_refused_and_a_swapped_in_symlink_loads_nothing() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("WASMEDGE_SHIM_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
            panic!("needs root (another user must own a directory) and CI requires it");
        }
        eprintln!("skipped: needs root to give a directory to another user");
        return;
    }
    let base = tempfile::tempdir_in("/tmp").unwrap();
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let module = write_module(
        base.path(),
        "m.wasm",
        b"\0asm\x01\0\0\0 the victim's module",
    );

    // The attacker's home, and in it the cache directory root made (root-owned, 0700).
    let home = base.path().join("home");
    fs::create_dir(&home).unwrap();
    let root = home.join("cache");
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    chown_tree(&home, ATTACKER);
    std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();

    // A tree shaped like a cache that holds the attacker's artifact under the victim's key.
    let evil = base.path().join("evil");
    {
        let forged = Cache::open(CacheConfig::new(&evil)).unwrap();
        forged
            .get_or_compile(&module, &fingerprint(), &Evil)
            .unwrap();
    }
    chown_tree(&evil, ATTACKER);

    // The attack of the issue: the cache renamed away, a symlink to the attacker's tree in its
    // place. The old check looked at the cache directory alone, at open, and every later use
    // of the path followed the link.
    let swap = || as_attacker(r#"mv "$1" "$1.old" && ln -s "$2" "$1""#, &[&root, &evil]);
    let loaded = |cache: Cache| {
        let f = cache
            .get_or_compile(&module, &fingerprint(), &FakeCompiler::default())
            .unwrap();
        String::from_utf8_lossy(&fs::read(&f.artifact.path).unwrap()).into_owned()
    };

    let e = match Cache::open(CacheConfig::new(&root)) {
        Ok(cache) => {
            swap();
            panic!(
                "the cache below {} was accepted; after the swap it handed out {:?}",
                home.display(),
                loaded(cache)
            );
        }
        Err(e) => e,
    };
    assert!(matches!(e, Error::Untrusted { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "directory {} is not trusted: {} is owned by uid {ATTACKER}, not by root: its owner could replace what is in it",
            root.display(),
            home.display()
        )
    );

    swap();
    match Cache::open(CacheConfig::new(&root)) {
        Ok(cache) => panic!("after the swap the cache handed out {:?}", loaded(cache)),
        Err(e) => assert!(
            e.to_string()
                .contains(&format!("{} is owned by uid {ATTACKER}", home.display())),
            "{e}"
        ),
    }

    // The same cache below a directory only root can write is fine.
    let safe = base.path().join("safe/cache");
    let cache = Cache::open(CacheConfig::new(&safe)).unwrap();
    let f = cache
        .get_or_compile(&module, &fingerprint(), &FakeCompiler::default())
        .unwrap();
    assert!(fs::read(&f.artifact.path).unwrap().starts_with(b"AOT"));
}
