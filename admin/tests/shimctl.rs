//! `wasmedge-shimctl` as an operator runs it: the built binary on a private cache (mode 0700)
//! named by a shim config file. Needs no containerd; `precompile` needs root, as on a node
//! (the runner's compile worker drops to the compile user), and its tests are skipped
//! without it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use wasmedge_aot_engine::EMPTY_COMMAND;
use wasmedge_shimctl::image::{Archive, Form, Platform};

struct Node {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let config = dir.path().join("shim.toml");
        std::fs::write(
            &config,
            format!(
                "cache_dir = \"{}\"\nopt_level = 1\n",
                dir.path().join("cache").display()
            ),
        )
        .unwrap();
        Node { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs the tool with the shim config in the environment, as containerd's shims see it.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_wasmedge-shimctl"))
            .args(args)
            .env("WASMEDGE_AOT_SHIM_CONFIG", &self.config)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "wasmedge-shimctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

/// Whether this test may precompile (root, which CI requires: `WASMEDGE_SHIM_REQUIRE_ROOT_TESTS`).
fn can_precompile(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("WASMEDGE_SHIM_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: precompile needs root and CI requires it");
    }
    eprintln!("{test}: skipped, precompile needs root");
    false
}

fn read_archive(path: &Path) -> Archive {
    Archive::read(std::fs::File::open(path).unwrap()).unwrap()
}

#[test]
fn image_build_writes_both_forms() {
    let node = Node::new();
    let module = node.path("app.wasm");
    std::fs::write(&module, EMPTY_COMMAND).unwrap();
    let module = module.to_str().unwrap();

    let plain = node.path("plain.tar");
    let out = node.json(&[
        "image",
        "build",
        "--ref",
        "example.com/app:v1",
        "--out",
        plain.to_str().unwrap(),
        "--module",
        module,
    ]);
    assert_eq!(out["form"], "image");
    let archive = read_archive(&plain);
    let image = archive.image(Some("example.com/app:v1")).unwrap();
    assert_eq!(image.form, Form::Image);
    assert_eq!(image.platform, Some(Platform::wasip1()));
    assert_eq!(out["manifest_digest"], image.manifest_digest.as_str());
    let found = archive.module(&image).unwrap();
    assert_eq!(found.source, "/app.wasm");
    assert_eq!(found.bytes, EMPTY_COMMAND);

    let art = node.path("art.tar");
    node.ok(&[
        "image",
        "build",
        "--artifact",
        "--ref",
        "example.com/app:art",
        "--out",
        art.to_str().unwrap(),
        "--module",
        module,
    ]);
    let archive = read_archive(&art);
    let image = archive.image(Some("example.com/app:art")).unwrap();
    assert_eq!(image.form, Form::Artifact);
    let config: Value = serde_json::from_slice(&image.config).unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip1");
    let layer = image.manifest.layers()[0].digest().to_string();
    assert_eq!(config["layerDigests"][0], layer.as_str());
    assert_eq!(archive.module(&image).unwrap().bytes, EMPTY_COMMAND);

    // A native baseline image: the file at the entrypoint, platform linux/amd64.
    let native = node.path("native.tar");
    node.ok(&[
        "image",
        "build",
        "--ref",
        "example.com/native:v1",
        "--out",
        native.to_str().unwrap(),
        "--platform",
        "linux/amd64",
        "--entrypoint",
        "/hello",
        "--file",
        &format!("{module}:/hello"),
    ]);
    let archive = read_archive(&native);
    let image = archive.image(None).unwrap();
    assert_eq!(image.platform, Some(Platform::linux_amd64()));
    assert_eq!(archive.module(&image).unwrap().source, "/hello");

    let out = node.run(&[
        "image",
        "build",
        "--artifact",
        "--ref",
        "x:1",
        "--out",
        "/dev/null",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--artifact needs --module"));
}

#[test]
fn cache_admin_round_trip() {
    if !can_precompile("cache_admin_round_trip") {
        return;
    }
    let node = Node::new();
    let module = node.path("empty.wasm");
    std::fs::write(&module, EMPTY_COMMAND).unwrap();
    let module = module.to_str().unwrap();

    let first = node.json(&["precompile", module]);
    assert_eq!(first["outcome"], "compiled", "{first}");
    let key = first["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64);
    assert!(first["size"].as_u64().unwrap() > 0);

    let ls = node.json(&["ls"]);
    let entries = ls.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{ls}");
    assert_eq!(entries[0]["key"], key.as_str());
    assert_eq!(entries[0]["size"], first["size"]);
    assert!(entries[0]["created"].as_str().unwrap().ends_with('Z'));

    let stats = node.json(&["stats"]);
    assert_eq!(stats["cache"]["compiles"], 1, "{stats}");
    assert_eq!(stats["cache"]["entries"], 1, "{stats}");
    assert_eq!(stats["containers"]["total"], 0, "{stats}");

    let again = node.json(&["precompile", module]);
    assert_eq!(again["outcome"], "hit", "{again}");
    assert_eq!(again["key"], key.as_str());
    // The same cache through --config and --cache-dir instead of the environment.
    let explicit = node.json(&[
        "precompile",
        module,
        "--config",
        node.config.to_str().unwrap(),
        "--cache-dir",
        node.path("cache").to_str().unwrap(),
    ]);
    assert_eq!(explicit["outcome"], "hit", "{explicit}");
    assert_eq!(node.json(&["stats"])["cache"]["hits"], 2);

    let verify = node.json(&["verify"]);
    assert_eq!(verify["ok"].as_array().unwrap().len(), 1, "{verify}");
    assert!(verify["removed"].as_array().unwrap().is_empty());

    // Bit rot: a flipped byte in the artifact must fail verify and remove the entry.
    let artifact = PathBuf::from(first["path"].as_str().unwrap());
    std::fs::set_permissions(&artifact, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let out = node.run(&["verify", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "verify of a corrupt entry must fail"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"][0]["key"], key.as_str(), "{report}");
    assert!(node.json(&["ls"]).as_array().unwrap().is_empty());
    assert_eq!(node.json(&["stats"])["cache"]["invalid_entries"], 1);

    // Compiled again, then evicted by a size cap of zero.
    assert_eq!(node.json(&["precompile", module])["outcome"], "compiled");
    let gc = node.json(&["gc", "--max-size", "0"]);
    assert_eq!(gc["evicted"][0], key.as_str(), "{gc}");
    assert_eq!(gc["remaining_entries"], 0);
    assert!(node.json(&["ls"]).as_array().unwrap().is_empty());

    let out = node.run(&["rm", "abcdef"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no cache entry matches key prefix \"abcdef\""),
        "{stderr}"
    );
    let out = node.run(&["gc", "--max-size", "lots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size \"lots\""));
}

#[test]
fn rm_removes_by_prefix_and_precompile_names_a_bad_module() {
    if !can_precompile("rm_removes_by_prefix") {
        return;
    }
    let node = Node::new();
    let module = node.path("empty.wasm");
    std::fs::write(&module, EMPTY_COMMAND).unwrap();
    let key = node.json(&["precompile", module.to_str().unwrap()])["key"]
        .as_str()
        .unwrap()
        .to_string();
    let out = node.ok(&["rm", &key[..8]]);
    assert_eq!(out.trim(), format!("removed {key}"));
    assert!(node.json(&["ls"]).as_array().unwrap().is_empty());

    let bad = node.path("bad.wasm");
    std::fs::write(&bad, b"not wasm").unwrap();
    let out = node.run(&["precompile", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.wasm"), "{stderr}");
}
