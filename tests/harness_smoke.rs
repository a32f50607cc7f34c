//! The test harness itself, with runc only: a private containerd starts, takes our image
//! archives and runs the native baseline image. Nothing here needs the WasmEdge shim.

mod common;

use common::images::{self, ctr_raw, Owned};
use common::{containerd, Run};

use common::images::RUNC;

#[test]
fn runc_runs_the_native_hello_image() {
    if !common::can_run("runc_runs_the_native_hello_image") {
        return;
    }
    let ctd = containerd();
    let native = images::native_hello();
    ctd.import_image(&native);
    let out = ctd.run(&Run {
        runtime: Some(RUNC.into()),
        ..Run::image("smoke-native", &native.reference, &[])
    });
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (Some(0), "hello from native\n", ""),
        "{}",
        ctd.log_tail()
    );
    assert_eq!(ctd.task_status("smoke-native"), None, "--rm left the task");
}

#[test]
fn plain_wasm_image_unpacks_to_a_rootfs() {
    if !common::can_run("plain_wasm_image_unpacks_to_a_rootfs") {
        return;
    }
    let ctd = containerd();
    let probe = images::probe_image();
    ctd.import_image(&probe);
    assert!(ctd.content().contains(&probe.layer_digest));
    // runc sees the unpacked rootfs: the module is there, at the entrypoint's path. A static
    // native program bind-mounted in stands in for `ls`, which the image does not have.
    let hello_dir = common::fixtures().to_str().unwrap().to_string();
    let out = ctd.run(&Run {
        runtime: Some(RUNC.into()),
        mounts: vec![format!(
            "type=bind,src={hello_dir},dst=/fixtures,options=rbind:ro"
        )],
        ..Run::image("smoke-plain", &probe.reference, &["/fixtures/native-hello"])
    });
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, ctd.log_tail());
    assert_eq!(out.stdout, "hello from native\n");
    let info = ctd.ctr_ok(&["images", "ls"]);
    let line = info
        .lines()
        .find(|l| l.starts_with(&probe.reference))
        .unwrap();
    assert!(line.contains("wasip1/wasm"), "{line}");
}

#[test]
fn wasm_artifact_is_imported_but_ctr_cannot_create_from_it() {
    if !common::can_run("wasm_artifact_is_imported_but_ctr_cannot_create_from_it") {
        return;
    }
    let ctd = containerd();
    let art = images::probe_artifact();
    ctd.import_image(&art);
    assert!(ctd.images().contains(&art.reference));
    // The module is a blob of the content store, byte for byte.
    assert!(ctd.content().contains(&art.layer_digest));
    let module = std::fs::read(common::fixture("probe.wasm")).unwrap();
    assert_eq!(
        std::fs::read(ctd.blob_path(&art.layer_digest)).unwrap(),
        module
    );
    // containerd 1.7's client (ctr) reads the image config to build the spec and knows only
    // OCI/Docker config types: no container can be created from the artifact by name.
    let (code, _, stderr) = ctr_raw(ctd, &["container", "create", &art.reference, "smoke-art"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("unknown image config media type application/vnd.wasm.config.v0+json"),
        "{stderr}"
    );
}

#[test]
fn owned_containerd_cleans_up_after_itself() {
    if !common::can_run("owned_containerd_cleans_up_after_itself") {
        return;
    }
    let ctd = Owned::start(false);
    let dir = ctd.dir.clone();
    let native = images::native_hello();
    ctd.import_image(&native);
    // Detached: the hello exits at once and its task stays, STOPPED, until deleted.
    ctd.run_detached(&Run {
        runtime: Some(RUNC.into()),
        ..Run::image("smoke-owned", &native.reference, &[])
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ctd.task_status("smoke-owned").as_deref() != Some("STOPPED") {
        assert!(std::time::Instant::now() < deadline, "{:?}", ctd.tasks());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let tasks = ctd.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert_eq!(
        (tasks[0].0.as_str(), tasks[0].2.as_str()),
        ("smoke-owned", "STOPPED")
    );
    ctd.delete("smoke-owned");
    assert!(ctd.tasks().is_empty());
    // And one left behind (task, container, runc state) for the shutdown to clean.
    ctd.run_detached(&Run {
        runtime: Some(RUNC.into()),
        ..Run::image("smoke-owned-2", &native.reference, &[])
    });
    assert!(ctd.log_path().exists());
    let address = ctd.address.display().to_string();
    drop(ctd);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(common::mounts_under(&dir).is_empty());
    let left: Vec<_> = common::processes_matching(&address)
        .into_iter()
        .filter(|(pid, _)| *pid != std::process::id() as i32)
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
}

/// The fixtures do what the tests expect of them, checked with the `wasmedge` CLI (no
/// containerd, no root). Skipped when the CLI is not installed.
#[test]
fn probe_fixture_behaves_under_the_wasmedge_cli() {
    if std::process::Command::new("wasmedge")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped probe_fixture_behaves_under_the_wasmedge_cli: needs the wasmedge CLI");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "file text\n").unwrap();
    let probe = common::fixture("probe.wasm");
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new("wasmedge")
            .arg("--dir")
            .arg(format!("/d:{}", dir.path().display()))
            .args(["--env", "GREETING=hi"])
            .arg(&probe)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |s: &str| (Some(0), s.to_string());
    let (code, out, _) = run(&[], "");
    assert_eq!((code, out), ok("hello from wasm\n"));
    assert_eq!(run(&["exit", "7"], "").0, Some(7));
    assert_ne!(run(&["trap"], "").0, Some(0));
    // argv[0] is the CLI's choice (the file name); the rest is ours, one per line.
    let args = run(&["args", "a b", "c"], "").1;
    assert_eq!(
        args.lines().skip(1).collect::<Vec<_>>(),
        ["args", "a b", "c"]
    );
    assert_eq!(run(&["env", "GREETING"], "").1, "hi\n");
    assert!(run(&["envall"], "").1.contains("GREETING=hi\n"));
    assert_eq!(run(&["cwd"], "").1, "/\n");
    assert_eq!(run(&["cat", "/d/in.txt"], "").1, "file text\n");
    let (code, _, err) = run(&["cat", "/d/missing"], "");
    assert_eq!(
        (code, err.as_str()),
        (Some(2), "open /d/missing: No such file or directory\n")
    );
    assert_eq!(run(&["write", "/d/out.txt", "written text"], "").0, Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "written text"
    );
    let (code, _, err) = run(&["write", "/nowhere/x", "t"], "");
    assert_eq!(code, Some(2), "{err}");
    assert!(run(&["ls", "/d"], "").1.lines().any(|l| l == "in.txt"));
    assert_eq!(run(&["sleep", "0"], "").0, Some(0));
    assert_eq!(run(&["echo-stdin"], "from stdin\n").1, "from stdin\n");
    let (code, out, _) = run(&["bigout", "20000"], "");
    assert_eq!((code, out.lines().count()), (Some(0), 20000));
    assert_eq!(out.lines().last(), Some("line 19999"));
    assert_eq!(run(&["fib", "20"], "").1, "6765\n");
    assert_eq!(run(&["no-such-command"], "").0, Some(64));
}
