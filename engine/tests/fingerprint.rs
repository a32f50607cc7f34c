//! The engine fingerprint comes from the libwasmedge this process loaded (issue 13, finding 6):
//! its reported version and the build id of the mapped object, so that a library rebuilt
//! under the same version number is a new cache key.

use std::path::{Path, PathBuf};
use std::process::Command;

use wasmedge_aot_engine::{fingerprint, Engine, Library, Options};

const ROLE: &str = "ENGINE_TEST_PRINT_FINGERPRINT";

/// The build id `readelf -n` prints for `lib`: a second opinion, from the file.
fn readelf_build_id(lib: &Path) -> String {
    let out = Command::new("readelf").arg("-n").arg(lib).output().unwrap();
    assert!(out.status.success(), "readelf -n {}", lib.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Build ID:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no build id in {}", lib.display()))
}

/// Child entry point: prints this process's engine version; a no-op in a normal run.
#[test]
fn child_prints_its_fingerprint() {
    let Some(out) = std::env::var_os(ROLE) else {
        return;
    };
    let engine = Engine::new(Options::for_node(2)).unwrap();
    let lib = Library::loaded();
    std::fs::write(
        out,
        format!(
            "{}\n{}\n",
            fingerprint(&engine).engine_version,
            lib.path.display()
        ),
    )
    .unwrap();
}

#[test]
fn the_fingerprint_is_the_loaded_library_version_and_build_id() {
    let engine = Engine::new(Options::for_node(2)).unwrap();
    let lib = Library::loaded();
    assert!(
        lib.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("libwasmedge.so"),
        "{lib:?}"
    );
    assert_eq!(lib.version, "0.14.1");
    let id = readelf_build_id(&lib.path);
    assert_eq!(lib.build_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        fingerprint(&engine).engine_version,
        format!("0.14.1 build-id {id}")
    );
}

#[test]
fn a_rebuilt_library_of_the_same_version_is_another_fingerprint() {
    let engine = Engine::new(Options::for_node(2)).unwrap();
    let ours = fingerprint(&engine);
    let lib = Library::loaded();
    let id = lib.build_id.clone().expect("libwasmedge has a build id");

    // "Rebuild" it: the same library with another build id, found first by the loader.
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(&lib.path).unwrap();
    let raw: Vec<u8> = (0..id.len() / 2)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let at = bytes
        .windows(raw.len())
        .position(|w| w == raw.as_slice())
        .expect("build id bytes in the file");
    for b in &mut bytes[at..at + raw.len()] {
        *b ^= 0x5a;
    }
    let copy: PathBuf = dir.path().join("libwasmedge.so.0");
    std::fs::write(&copy, &bytes).unwrap();
    let rebuilt_id = readelf_build_id(&copy);
    assert_ne!(rebuilt_id, id);

    let out = dir.path().join("fingerprint");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_prints_its_fingerprint",
            "--test-threads=1",
        ])
        .env(ROLE, &out)
        .env("LD_LIBRARY_PATH", dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let (version, path) = text.trim_end().split_once('\n').unwrap();
    assert_eq!(Path::new(path), copy, "the child loaded the copy");
    assert_eq!(version, format!("0.14.1 build-id {rebuilt_id}"));
    assert_ne!(version, ours.engine_version);
    let other = wasmedge_aot_cache::Fingerprint {
        engine_version: version.to_string(),
        ..ours.clone()
    };
    let module = wasmedge_aot_cache::ModuleHash::of_bytes(b"\0asm\x01\0\0\0");
    assert_ne!(
        wasmedge_aot_cache::Key::derive(&module, &ours),
        wasmedge_aot_cache::Key::derive(&module, &other)
    );
}
