//! The shim core against a real containerd: output, exit codes, argv/env/cwd, the
//! filesystem a module sees, kill, clean delete, concurrency, and bad modules.

mod common;

use std::time::{Duration, Instant};

use common::{containerd, fixture, Rootfs, Run};

/// A rootfs with the probe module at /probe.wasm and a few files to read.
fn probe_rootfs() -> Rootfs {
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    r.write("etc/greeting", "hello from the image\n");
    r.write("app/data/x", "relative file\n");
    std::os::unix::fs::symlink("/etc/greeting", r.path().join("etc/link-inside")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../../etc/hostname",
        r.path().join("etc/link-out"),
    )
    .unwrap();
    r
}

fn run(id: &str, rootfs: &Rootfs, args: &[&str]) -> common::RunResult {
    let mut full = vec!["/probe.wasm"];
    full.extend_from_slice(args);
    containerd().run(&Run::rootfs(id, rootfs.path(), &full))
}

#[test]
fn hello_prints_and_exits_zero() {
    if !common::can_run("hello_prints_and_exits_zero") {
        return;
    }
    let r = probe_rootfs();
    let out = run("hello", &r, &[]);
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(out.code, Some(0));
}

#[test]
fn exit_codes_come_from_proc_exit_and_a_trap_is_non_zero_with_its_message() {
    if !common::can_run("exit_codes") {
        return;
    }
    let r = probe_rootfs();
    assert_eq!(run("exit0", &r, &["exit", "0"]).code, Some(0));
    assert_eq!(run("exit3", &r, &["exit", "3"]).code, Some(3));
    let trap = run("trap", &r, &["trap"]);
    assert_eq!(trap.code, Some(134), "{trap:?}");
    assert!(
        trap.stderr
            .contains("wasm trap in /probe.wasm: unreachable"),
        "{trap:?}"
    );
}

#[test]
fn argv_env_and_cwd_come_from_the_spec() {
    if !common::can_run("argv_env_and_cwd") {
        return;
    }
    let r = probe_rootfs();
    let out = run("argv", &r, &["args", "one", "two words"]);
    assert_eq!(out.stdout, "/probe.wasm\nargs\none\ntwo words\n", "{out:?}");

    let ctd = containerd();
    let mut env = Run::rootfs("env", r.path(), &["/probe.wasm", "env", "GREETING"]);
    env.env = vec!["GREETING=hi there".into()];
    let out = ctd.run(&env);
    assert_eq!(out.stdout, "hi there\n", "{out:?}");

    // A relative entrypoint and relative paths resolve against process.cwd.
    let r2 = Rootfs::with(&[("app/probe.wasm", &fixture("probe.wasm"))]);
    r2.write("app/data/x", "relative file\n");
    let mut cwd = Run::rootfs("cwd", r2.path(), &["probe.wasm", "cat", "data/x"]);
    cwd.cwd = Some("/app".into());
    let out = ctd.run(&cwd);
    assert_eq!(out.stdout, "relative file\n", "{out:?}");
}

#[test]
fn files_in_the_image_and_in_bind_mounts_are_readable_and_ro_mounts_refuse_writes() {
    if !common::can_run("files_and_mounts") {
        return;
    }
    let r = probe_rootfs();
    let out = run("cat-image", &r, &["cat", "/etc/greeting"]);
    assert_eq!(out.stdout, "hello from the image\n", "{out:?}");
    let out = run("cat-link", &r, &["cat", "/etc/greeting"]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("x"), "from the host\n").unwrap();
    let ctd = containerd();
    let mount = |opts: &str| {
        format!(
            "type=bind,src={},dst=/data,options=rbind:{opts}",
            data.path().display()
        )
    };

    let mut ro = Run::rootfs("mount-ro", r.path(), &["/probe.wasm", "cat", "/data/x"]);
    ro.mounts = vec![mount("ro")];
    let out = ctd.run(&ro);
    assert_eq!(out.stdout, "from the host\n", "{out:?}");

    let mut ro_write = Run::rootfs(
        "mount-ro-w",
        r.path(),
        &["/probe.wasm", "write", "/data/new", "x"],
    );
    ro_write.mounts = vec![mount("ro")];
    let out = ctd.run(&ro_write);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("open /data/new"), "{out:?}");
    assert!(!data.path().join("new").exists());

    let mut rw_write = Run::rootfs(
        "mount-rw-w",
        r.path(),
        &["/probe.wasm", "write", "/data/new", "x"],
    );
    rw_write.mounts = vec![mount("rw")];
    let out = ctd.run(&rw_write);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(data.path().join("new")).unwrap(),
        "x"
    );
}

#[test]
fn paths_that_climb_out_of_the_root_stay_inside_it() {
    if !common::can_run("climbing_paths") {
        return;
    }
    // Two walls: WASI refuses a path that climbs above its preopen (`..`, a symlink out),
    // and below it the kernel's: the process's root is the rootfs (pivot_root), where `..`
    // stops and symlinks land inside. The host's /etc/hostname is never what they reach.
    let r = probe_rootfs();
    r.write("etc/hostname", "the image's hostname\n");
    for (id, path) in [
        ("esc-dotdot", "/../../../../etc/hostname"),
        ("esc-rel", "../../etc/hostname"),
        ("esc-link", "/etc/link-out"),
    ] {
        let out = run(id, &r, &["cat", path]);
        assert_eq!(out.code, Some(2), "{path}: {out:?}");
        assert!(out.stdout.is_empty(), "{path} leaked {:?}", out.stdout);
        assert!(
            out.stderr
                .contains(&format!("open {path}: Operation not permitted")),
            "{out:?}"
        );
    }
    // The entrypoint is resolved inside the root as the container would.
    std::os::unix::fs::symlink(
        "../../../../../../probe.wasm",
        r.path().join("app/climb.wasm"),
    )
    .unwrap();
    let out = containerd().run(&Run::rootfs("esc-entry", r.path(), &["/app/climb.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
}

#[test]
fn output_written_just_before_exit_is_not_lost() {
    if !common::can_run("no_lost_output") {
        return;
    }
    let r = probe_rootfs();
    let out = run("bigout", &r, &["bigout", "20000"]);
    assert_eq!(out.code, Some(0));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert_eq!(lines[19999], "line 19999");
}

#[test]
fn sigterm_and_sigkill_end_a_spinning_module_within_a_second() {
    if !common::can_run("kill_spinning") {
        return;
    }
    let ctd = containerd();
    let r = probe_rootfs();
    for (id, signal, code) in [
        ("spin-term", "SIGTERM", "143"),
        ("spin-kill", "SIGKILL", "137"),
    ] {
        ctd.run_detached(&Run::rootfs(id, r.path(), &["/probe.wasm", "spin"]));
        ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
        let start = Instant::now();
        ctd.ctr_ok(&["task", "kill", "-s", signal, id]);
        ctd.wait_status(id, "STOPPED", Duration::from_secs(1));
        assert!(start.elapsed() < Duration::from_secs(1));
        let out = ctd.ctr_ok(&["task", "rm", id]);
        assert!(out.contains(code) || out.is_empty(), "{out}");
        ctd.ctr_ok(&["container", "rm", id]);
    }
}

#[test]
fn delete_leaves_no_process_mount_or_state_behind() {
    if !common::can_run("clean_delete") {
        return;
    }
    let ctd = containerd();
    let r = probe_rootfs();
    ctd.run_detached(&Run::rootfs(
        "clean",
        r.path(),
        &["/probe.wasm", "sleep", "100"],
    ));
    ctd.wait_status("clean", "RUNNING", Duration::from_secs(10));
    let pid = ctd.task_pid("clean").unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let bundle = ctd.bundle("clean");
    assert!(bundle.exists());
    ctd.remove("clean");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() || {
            // a zombie not yet reaped would still show; give the reaper a moment
            std::thread::sleep(Duration::from_millis(200));
            !std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
        }
    );
    assert!(!bundle.exists(), "bundle {} left behind", bundle.display());
    assert!(common::mounts_under(&bundle).is_empty());
    assert_eq!(ctd.task_status("clean"), None);
}

#[test]
fn ten_containers_at_once() {
    if !common::can_run("ten_at_once") {
        return;
    }
    let r = probe_rootfs();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let path = r.path().to_owned();
            std::thread::spawn(move || {
                let id = format!("many-{i}");
                containerd().run(&Run::rootfs(&id, &path, &["/probe.wasm", "args", &id]))
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert_eq!(out.code, Some(0), "{out:?}");
        assert_eq!(out.stdout, format!("/probe.wasm\nargs\nmany-{i}\n"));
    }
}

#[test]
fn bad_modules_fail_their_container_clearly_while_others_carry_on() {
    if !common::can_run("bad_modules") {
        return;
    }
    let ctd = containerd();
    let good = probe_rootfs();
    ctd.run_detached(&Run::rootfs(
        "bystander",
        good.path(),
        &["/probe.wasm", "sleep", "100"],
    ));
    ctd.wait_status("bystander", "RUNNING", Duration::from_secs(10));

    let bad = Rootfs::with(&[
        ("corrupt.wasm", &fixture("corrupt.wasm")),
        ("script.sh", &fixture("not-wasm.txt")),
    ]);
    // A FIFO nobody writes (opening it to read would block the shim for every container of
    // the node) and a device node (opening it runs its driver as the host's root).
    nix::unistd::mkfifo(
        &bad.path().join("fifo.wasm"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &bad.path().join("null.wasm"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let cases = [
        // Not regular files: never opened for reading by the shim (a FIFO would hang it, a
        // device would run its driver's open as root), so no Wasm: runc refuses their exec.
        (
            "bad-fifo",
            "/fifo.wasm",
            "exec: \"/fifo.wasm\": permission denied",
        ),
        (
            "bad-device",
            "/null.wasm",
            "exec: \"/null.wasm\": permission denied",
        ),
        ("bad-corrupt", "/corrupt.wasm", "load module"),
        // No Wasm magic: a Linux container, which runc refuses, saying why.
        (
            "bad-notwasm",
            "/script.sh",
            "runc create failed: unable to start container process: exec: \"/script.sh\": permission denied",
        ),
        (
            "bad-missing",
            "/missing.wasm",
            "exec: \"/missing.wasm\": stat /missing.wasm: no such file or directory",
        ),
    ];
    for (id, entry, message) in cases {
        let out = ctd.run(&Run::rootfs(id, bad.path(), &[entry]));
        assert_ne!(out.code, Some(0), "{id}: {out:?}");
        assert!(
            out.stderr.contains(message),
            "{id}: expected {message:?} in {out:?}"
        );
        let _ = ctd.ctr(&["container", "rm", id]);
    }
    assert_eq!(ctd.task_status("bystander").as_deref(), Some("RUNNING"));
    let out = run("after-bad", &good, &[]);
    assert_eq!(out.stdout, "hello from wasm\n");
    ctd.remove("bystander");
}

#[test]
fn a_module_that_traps_runs_out_of_memory_or_is_killed_takes_down_only_its_own_container() {
    if !common::can_run("fault_isolation") {
        return;
    }
    let ctd = containerd();
    // Every container here runs the same module, so all are forked from the runner's one
    // template of it: what happens to one copy must not reach the others or the runner.
    let r = probe_rootfs();
    let events = ctd.events();
    ctd.run_detached(&Run::rootfs(
        "iso-bystander",
        r.path(),
        &["/probe.wasm", "sleep", "100"],
    ));
    ctd.wait_status("iso-bystander", "RUNNING", Duration::from_secs(10));
    // Its start event shows `ctr events` is subscribed.
    events.wait_for(&["/tasks/start", "iso-bystander"], Duration::from_secs(10));
    let shim = common::ppid(ctd.task_pid("iso-bystander").unwrap()).unwrap();
    let runner = common::runner_of(shim).expect("the shim's runner");

    let out = run("iso-trap", &r, &["trap"]);
    assert_eq!(out.code, Some(134), "{out:?}");
    assert!(out.stderr.contains("wasm trap"), "{out:?}");

    // Linear memory can grow no further than wasm32's 4 GiB: malloc fails, the module
    // sees it and exits.
    let out = run("iso-oom-guest", &r, &["grow", "4200"]);
    assert_eq!(out.code, Some(12), "{out:?}");
    assert!(out.stderr.contains("out of memory after"), "{out:?}");

    // The container's memory limit: the kernel's OOM killer ends the container process,
    // and the shim tells containerd (what makes Kubernetes say OOMKilled).
    let mut oom = Run::rootfs("iso-oom-cgroup", r.path(), &["/probe.wasm", "alloc", "512"]);
    oom.memory_limit = Some(64 << 20);
    let out = ctd.run(&oom);
    assert_eq!(out.code, Some(137), "{out:?}");
    assert!(!out.stdout.contains("allocated"), "{out:?}");
    events.wait_for(&["/tasks/oom", "iso-oom-cgroup"], Duration::from_secs(5));

    ctd.run_detached(&Run::rootfs("iso-kill", r.path(), &["/probe.wasm", "spin"]));
    ctd.wait_status("iso-kill", "RUNNING", Duration::from_secs(10));
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "iso-kill"]);
    ctd.wait_status("iso-kill", "STOPPED", Duration::from_secs(5));
    ctd.remove("iso-kill");

    assert_eq!(ctd.task_status("iso-bystander").as_deref(), Some("RUNNING"));
    assert_eq!(common::runner_of(shim), Some(runner));
    assert_eq!(run("iso-after", &r, &[]).stdout, "hello from wasm\n");
    ctd.remove("iso-bystander");
    // Only the container the kernel killed for memory is reported so (other tests sharing
    // this containerd set no memory limit).
    let oom_events = events.matching("/tasks/oom");
    assert!(
        oom_events.iter().all(|e| e.contains("iso-oom-cgroup")),
        "{oom_events:?}"
    );
}

#[test]
fn exec_and_terminal_are_refused_clearly() {
    if !common::can_run("exec_and_tty") {
        return;
    }
    let ctd = containerd();
    let r = probe_rootfs();
    ctd.run_detached(&Run::rootfs(
        "noexec",
        r.path(),
        &["/probe.wasm", "sleep", "100"],
    ));
    ctd.wait_status("noexec", "RUNNING", Duration::from_secs(10));
    let out = ctd.ctr(&["task", "exec", "--exec-id", "e1", "noexec", "/probe.wasm"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctd.ctr_ok(&["task", "metrics", "noexec"]);
    assert!(out.contains("memory") || out.contains("ID"), "{out}");
    ctd.remove("noexec");
}

/// Issue 13, finding 9: the error named the cache's `.so` and said only `unknown import`.
#[test]
fn a_module_with_an_unknown_import_fails_naming_the_module_and_the_import() {
    if !common::can_run("unknown_import") {
        return;
    }
    let ctd = containerd();
    // (module (import "env" "not_provided" (func)) (func (export "_start")))
    let mut wasm = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0".to_vec();
    wasm.extend_from_slice(b"\x02\x14\x01\x03env\x0cnot_provided\x00\x00");
    wasm.extend_from_slice(
        b"\x03\x02\x01\x00\x07\x0a\x01\x06_start\x00\x01\x0a\x04\x01\x02\x00\x0b",
    );
    let r = Rootfs::with(&[]);
    std::fs::create_dir_all(r.path().join("app")).unwrap();
    std::fs::write(r.path().join("app/imports.wasm"), wasm).unwrap();
    for (id, policy) in [("import-native", "sync"), ("import-interp", "off")] {
        let mut run = Run::rootfs(id, r.path(), &["/app/imports.wasm"]);
        run.annotations = vec![format!("wasmedge-aot-shim.io/compile-policy={policy}")];
        let out = ctd.run(&run);
        assert_ne!(out.code, Some(0), "{id}: {out:?}");
        assert!(
            out.stderr.contains("/app/imports.wasm")
                && out.stderr.contains("unknown import env/not_provided"),
            "{id}: {out:?}"
        );
        assert!(!out.stderr.contains(".so"), "{id}: {out:?}");
        let _ = ctd.ctr(&["container", "rm", id]);
    }
}

#[test]
fn containerd_2_reads_the_runtime_s_info_and_features() {
    if !common::can_run("runtime_info") {
        return;
    }
    if common::containerd_binary().major < 2 {
        eprintln!("skipped runtime_info: containerd 1.x does not ask a runtime for its info");
        return;
    }
    let ctd = containerd();
    // containerd runs the shim binary with -info (from the PATH the harness gave it) and
    // prints the RuntimeInfo it read, features decoded.
    let out = ctd.ctr_ok(&["plugins", "inspect-runtime", "--runtime", common::RUNTIME]);
    let info: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(info["Name"], common::RUNTIME, "{out}");
    let features = &info["Features"];
    assert_eq!(features["linux"]["cgroup"]["systemd"], true, "{out}");
    assert_eq!(features["linux"]["cgroup"]["v2"], true, "{out}");
    assert!(
        features["linux"]["namespaces"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n == "user")),
        "{out}"
    );
}
