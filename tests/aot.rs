//! AOT on create, against a real containerd: compile once per node, then native code from
//! the cache; single flight; corrupt entries; an unusable cache; a changed fingerprint;
//! the tiered policy.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{containerd, create_outcome, fixture, unique_probe, Containerd, Rootfs, Run};

/// `wasmedge-shimctl precompile` of `module` into the test containerd's node cache.
fn precompile(ctd: &Containerd, module: &Path) {
    let out = std::process::Command::new(common::shimctl_bin())
        .args(["precompile", "--cache-dir"])
        .arg(&ctd.cache_dir)
        .arg(module)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn outcome(ctd: &Containerd, id: &str) -> (String, String) {
    let log = ctd.log();
    let o = create_outcome(&log, id)
        .unwrap_or_else(|| panic!("no create line for {id}\n{}", ctd.log_tail()));
    if o.0 == "fallback" {
        // Say why, next to the figures the assertion prints.
        let needle = format!("container {id}: ");
        for line in log
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("level=warn"))
        {
            eprintln!("{line}");
        }
    }
    o
}

#[test]
fn first_run_compiles_second_hits_and_runs_native_code_mapped_from_the_cache() {
    if !common::can_run("compile_then_hit") {
        return;
    }
    let ctd = containerd();
    let r = unique_probe("first-second");
    let out = ctd.run(&Run::rootfs("aot-first", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(
        outcome(ctd, "aot-first"),
        ("compiled".into(), "native".into())
    );
    let out = ctd.run(&Run::rootfs("aot-second", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(outcome(ctd, "aot-second"), ("hit".into(), "native".into()));

    // The running module's process maps the compiled artifact from the node cache.
    ctd.run_detached(&Run::rootfs(
        "aot-mapped",
        r.path(),
        &["/probe.wasm", "sleep", "100"],
    ));
    ctd.wait_status("aot-mapped", "RUNNING", Duration::from_secs(10));
    let pid = ctd.task_pid("aot-mapped").unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let cache = ctd.cache_dir.display().to_string();
    assert!(
        maps.lines()
            .any(|l| l.contains(&cache) && l.ends_with("module.so") && l.contains("r-xp")),
        "no executable mapping of a cached module.so in {pid}:\n{maps}"
    );
    ctd.remove("aot-mapped");
}

#[test]
fn ten_concurrent_first_runs_of_a_new_module_compile_once() {
    if !common::can_run("single_flight") {
        return;
    }
    let r = unique_probe("ten");
    let path = r.path().to_owned();
    let handles: Vec<_> = (0..10)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                containerd().run(&Run::rootfs(&format!("sf-{i}"), &path, &["/probe.wasm"]))
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    }
    let ctd = containerd();
    let outcomes: Vec<_> = (0..10).map(|i| outcome(ctd, &format!("sf-{i}"))).collect();
    let compiled = outcomes.iter().filter(|(c, _)| c == "compiled").count();
    assert_eq!(compiled, 1, "{outcomes:?}");
    assert!(
        outcomes.iter().all(|(_, tier)| tier == "native"),
        "{outcomes:?}"
    );
}

#[test]
fn a_tiered_first_start_returns_when_its_module_exits_while_the_compile_goes_on() {
    if !common::can_run("tiered_does_not_wait") {
        return;
    }
    // 2 MB of code: tens of seconds to compile, a fraction of one in the interpreter. The
    // compile holds nothing of the container (its stdio once kept `ctr run` waiting for it).
    let ctd = containerd();
    let r = Rootfs::with(&[("code.wasm", &fixture("code-2mb.wasm"))]);
    let mut run = Run::rootfs("tiered-long", r.path(), &["/code.wasm"]);
    run.annotations = vec!["wasmedge-aot-shim.io/compile-policy=tiered".into()];
    let out = ctd.run(&run);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        outcome(ctd, "tiered-long"),
        ("miss-tiered".into(), "interpreter".into())
    );
    let compiles = common::compiles_of(ctd);
    assert!(
        !compiles.is_empty(),
        "the run returned after {:?}, and no compile is left running: it waited for it",
        out.elapsed
    );
    // Not in the container's cgroup, and with none of its stdio.
    for pid in &compiles {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(!cgroups.contains("tiered-long"), "{pid}: {cgroups}");
        for fd in 0..3 {
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
            assert!(
                !target.to_string_lossy().contains("fifo"),
                "{pid} fd {fd}: {target:?}"
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn a_full_cache_disk_never_fails_a_pod_and_its_failed_compile_is_not_paid_again() {
    if !common::can_run("full_cache_disk") {
        return;
    }
    // A file system too small for any artifact: the compile runs out of space.
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("fs");
    std::fs::create_dir(&fs).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &fs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=96k,mode=0700"),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(fs.clone());
    let ctd = common::images::Owned(Containerd::start_with(
        false,
        &format!(
            "cache_dir = \"{}\"\ncompile_policy = \"sync\"\n",
            fs.join("cache").display()
        ),
    ));
    let r = unique_probe("full-disk");
    let attempts = |ctd: &Containerd| {
        ctd.log()
            .lines()
            .filter(|l| l.contains("aot compile of /probe.wasm") && l.contains("started as pid"))
            .count()
    };
    for (i, id) in ["full-1", "full-2", "full-3"].into_iter().enumerate() {
        let out = ctd.run(&Run::rootfs(id, r.path(), &["/probe.wasm"]));
        assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
        assert_eq!(
            out.stderr, "",
            "nothing of the compiler reaches the container"
        );
        assert_eq!(outcome(&ctd, id), ("fallback".into(), "interpreter".into()));
        let warning = ctd
            .log()
            .lines()
            .rev()
            .find(|l| l.contains(&format!("container {id}: ")) && l.contains("level=warn"))
            .unwrap_or_default()
            .to_string();
        assert!(
            warning.contains("no space left in the cache"),
            "{i}: {warning}"
        );
        if i > 0 {
            assert!(
                warning.contains("s ago"),
                "remembered, not tried again: {warning}"
            );
        }
    }
    assert_eq!(
        attempts(&ctd),
        1,
        "one compile for three starts:\n{}",
        ctd.log_tail()
    );
}

/// The optimisation level of the native code a container ran (`O0`, `O2`), from its create
/// line, if it ran native code.
fn level(ctd: &Containerd, id: &str) -> Option<String> {
    let needle = format!("container {id}: cgroup");
    let log = ctd.log();
    let line = log.lines().rev().find(|l| l.contains(&needle))?;
    let rest = line.split("tier native ").nth(1)?;
    Some(rest.split(['"', ' ']).next()?.to_string())
}

#[test]
fn a_module_runs_its_quick_tier_first_and_its_full_tier_once_compiled() {
    if !common::can_run("tiers") {
        return;
    }
    let ctd = containerd();
    let r = unique_probe("tiers");
    let out = ctd.run(&Run::rootfs("tier-1", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(outcome(ctd, "tier-1"), ("compiled".into(), "native".into()));
    assert_eq!(
        level(ctd, "tier-1").as_deref(),
        Some("O0"),
        "the quick tier first"
    );
    // The full tier compiles in the background; a later start takes it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 1;
    loop {
        n += 1;
        let id = format!("tier-{n}");
        let out = ctd.run(&Run::rootfs(&id, r.path(), &["/probe.wasm"]));
        assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
        assert_eq!(outcome(ctd, &id).0, "hit");
        if level(ctd, &id).as_deref() == Some("O2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no start ran the full tier:\n{}",
            ctd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Both tiers are entries of their own, which `ls` tells apart.
    let ls = std::process::Command::new(common::shimctl_bin())
        .args(["ls", "--cache-dir"])
        .arg(&ctd.cache_dir)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains("probe.wasm O0") && ls.contains("probe.wasm O2"),
        "{ls}"
    );
}

#[test]
fn a_corrupted_cache_entry_is_recompiled_and_the_app_still_runs() {
    if !common::can_run("corrupt_entry") {
        return;
    }
    let ctd = containerd();
    let r = unique_probe("corrupt");
    ctd.run(&Run::rootfs("cor-1", r.path(), &["/probe.wasm"]));
    ctd.run_detached(&Run::rootfs(
        "cor-find",
        r.path(),
        &["/probe.wasm", "sleep", "100"],
    ));
    ctd.wait_status("cor-find", "RUNNING", Duration::from_secs(10));
    let pid = ctd.task_pid("cor-find").unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    ctd.remove("cor-find");
    let so = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("module.so"))
        .expect("artifact mapped")
        .to_string();
    // Flip one byte in the middle of the artifact, keeping its size.
    let mut bytes = std::fs::read(&so).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::set_permissions(&so, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&so, &bytes).unwrap();

    let out = ctd.run(&Run::rootfs(
        "cor-2",
        r.path(),
        &["/probe.wasm", "args", "ok"],
    ));
    assert_eq!(out.stdout, "/probe.wasm\nargs\nok\n", "{out:?}");
    // Native code again: recompiled, or another tier of the module (its quick or full
    // compile), never the corrupted file, which is gone.
    let (cache, tier) = outcome(ctd, "cor-2");
    assert_eq!(tier, "native");
    assert!(
        matches!(cache.as_str(), "compiled" | "waited-hit" | "hit"),
        "{cache}"
    );
    assert_ne!(
        std::fs::read(&so).ok(),
        Some(bytes),
        "the corrupted artifact is still there"
    );
}

#[test]
fn tiered_starts_in_the_interpreter_at_once_and_later_starts_are_native() {
    if !common::can_run("tiered") {
        return;
    }
    let ctd = containerd();
    let r = unique_probe("tiered");
    let mut run = Run::rootfs("tier-1", r.path(), &["/probe.wasm"]);
    run.annotations = vec!["wasmedge-aot-shim.io/compile-policy=tiered".into()];
    let out = ctd.run(&run);
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(
        outcome(ctd, "tier-1"),
        ("miss-tiered".into(), "interpreter".into())
    );
    // The background compile finishes on its own; then starts are native.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 2.. {
        run.id = format!("tier-{i}");
        let out = ctd.run(&run);
        assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
        let (cache, tier) = outcome(ctd, &run.id);
        if tier == "native" {
            assert_eq!(cache, "hit");
            break;
        }
        assert!(Instant::now() < deadline, "background compile never landed");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn policy_off_never_compiles() {
    if !common::can_run("policy_off") {
        return;
    }
    let ctd = containerd();
    let r = unique_probe("off");
    let mut run = Run::rootfs("off-1", r.path(), &["/probe.wasm", "fib", "20"]);
    run.annotations = vec!["wasmedge-aot-shim.io/compile-policy=off".into()];
    let out = ctd.run(&run);
    assert_eq!(out.stdout, "6765\n", "{out:?}");
    assert_eq!(outcome(ctd, "off-1"), ("off".into(), "interpreter".into()));
    let mut bad = Run::rootfs("off-bad", r.path(), &["/probe.wasm"]);
    bad.annotations = vec!["wasmedge-aot-shim.io/compile-policy=fast".into()];
    let out = ctd.run(&bad);
    assert!(
        out.stderr.contains("unknown compile policy \"fast\""),
        "{out:?}"
    );
    let _ = ctd.ctr(&["container", "rm", "off-bad"]);
}

#[test]
fn an_unusable_cache_runs_the_interpreter_with_a_warning_and_a_new_fingerprint_recompiles() {
    if !common::can_run("unusable_cache") {
        return;
    }
    // A cache directory others may write to is not trusted.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        open.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let ctd = Containerd::start_with(
        false,
        &format!("cache_dir = \"{}\"\n", open.path().display()),
    );
    let r = unique_probe("unusable");
    let out = ctd.run(&Run::rootfs("unusable", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(
        outcome(&ctd, "unusable"),
        ("fallback".into(), "interpreter".into())
    );
    assert!(
        ctd.log().contains("aot cache unusable"),
        "no warning in\n{}",
        ctd.log_tail()
    );

    // The shared containerd compiled this module at opt level 2; opt level 1 is another
    // fingerprint, so the same cache must compile it again rather than load that code.
    let shared = containerd();
    shared.run(&Run::rootfs("fp-o2", r.path(), &["/probe.wasm"]));
    assert_eq!(
        outcome(shared, "fp-o2"),
        ("compiled".into(), "native".into())
    );
    // (Its quick tier off: O0 code is the same for both, and would rightly be a hit.)
    let o1 = Containerd::start_with(
        false,
        &format!(
            "cache_dir = \"{}\"\nopt_level = 1\nquick_opt_level = 1\n",
            shared.cache_dir.display()
        ),
    );
    o1.run(&Run::rootfs("fp-o1", r.path(), &["/probe.wasm"]));
    assert_eq!(outcome(&o1, "fp-o1"), ("compiled".into(), "native".into()));
    o1.run(&Run::rootfs("fp-o1b", r.path(), &["/probe.wasm"]));
    assert_eq!(outcome(&o1, "fp-o1b"), ("hit".into(), "native".into()));
}

#[test]
fn precompile_then_first_run_is_a_hit() {
    if !common::can_run("precompile_then_hit") {
        return;
    }
    let ctd = containerd();
    let r = unique_probe("precompile");
    precompile(ctd, &r.path().join("probe.wasm"));
    let out = ctd.run(&Run::rootfs("pre-first", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(outcome(ctd, "pre-first"), ("hit".into(), "native".into()));
}

#[test]
fn containers_started_from_a_kept_instance_each_see_their_own_argv_env_files_and_cgroup() {
    if !common::can_run("kept_instance_isolation") {
        return;
    }
    let ctd = containerd();
    let r = unique_probe("kept-instance");
    r.write("etc/who", "first rootfs\n");
    let out = ctd.run(&Run::rootfs("kept-0", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");

    // From here on the runner holds the module loaded and instantiated; each container
    // process gets a copy and only sets its own WASI environment.
    let out = ctd.run(&Run::rootfs(
        "kept-1",
        r.path(),
        &["/probe.wasm", "args", "x y"],
    ));
    assert_eq!(out.stdout, "/probe.wasm\nargs\nx y\n", "{out:?}");
    assert_eq!(outcome(ctd, "kept-1"), ("hit".into(), "native".into()));

    let mut env = Run::rootfs("kept-2", r.path(), &["/probe.wasm", "envall"]);
    env.env = vec!["ONLY_HERE=2".into()];
    let out = ctd.run(&env);
    assert!(out.stdout.contains("ONLY_HERE=2\n"), "{out:?}");

    // The same module in another rootfs: the files are that container's, not the first's.
    let other = common::Rootfs::with(&[("probe.wasm", &r.path().join("probe.wasm"))]);
    other.write("etc/who", "second rootfs\n");
    let out = ctd.run(&Run::rootfs(
        "kept-3",
        other.path(),
        &["/probe.wasm", "cat", "/etc/who"],
    ));
    assert_eq!(out.stdout, "second rootfs\n", "{out:?}");
    assert_eq!(outcome(ctd, "kept-3"), ("hit".into(), "native".into()));
    let out = ctd.run(&Run::rootfs(
        "kept-4",
        r.path(),
        &["/probe.wasm", "cat", "/etc/who"],
    ));
    assert_eq!(out.stdout, "first rootfs\n", "{out:?}");

    let trap = ctd.run(&Run::rootfs("kept-5", r.path(), &["/probe.wasm", "trap"]));
    assert_eq!(trap.code, Some(134), "{trap:?}");
    let out = ctd.run(&Run::rootfs(
        "kept-6",
        r.path(),
        &["/probe.wasm", "exit", "7"],
    ));
    assert_eq!(
        out.code,
        Some(7),
        "a trap in a sibling leaves the kept instance intact: {out:?}"
    );

    // The process is in the container's cgroup in every hierarchy, and has one thread.
    ctd.run_detached(&Run::rootfs(
        "kept-cg",
        r.path(),
        &["/probe.wasm", "sleep", "100"],
    ));
    ctd.wait_status("kept-cg", "RUNNING", Duration::from_secs(10));
    let pid = ctd.task_pid("kept-cg").unwrap();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines().filter(|l| !l.starts_with("0::")) {
        assert!(
            line.ends_with("/kept-cg"),
            "{pid} not in its cgroup: {line}\n{cgroups}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("\nThreads:\t1\n"), "{status}");
    ctd.remove("kept-cg");
}

#[test]
fn a_start_function_runs_in_its_container_process_never_in_the_runner() {
    if !common::can_run("start_function_not_in_runner") {
        return;
    }
    let ctd = containerd();
    let r = common::Rootfs::with(&[("spin.wasm", &common::fixture("start-spin.wasm"))]);
    precompile(ctd, &r.path().join("spin.wasm"));

    // A cache hit: the runner loads the module as a template. Instantiating it runs the
    // start function, which never returns; that must happen in the container's process.
    let mut spin = Run::rootfs("start-spin", r.path(), &["/spin.wasm"]);
    spin.timeout = Some(Duration::from_secs(120));
    let spinning = std::thread::spawn(move || containerd().run(&spin));
    let procs = Path::new("/sys/fs/cgroup/pids")
        .join(common::namespace())
        .join("start-spin/cgroup.procs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pids = loop {
        let pids = std::fs::read_to_string(&procs).unwrap_or_default();
        if !pids.trim().is_empty() {
            break pids;
        }
        assert!(
            Instant::now() < deadline,
            "no spinning container process\n{}",
            ctd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // The runner still serves other containers.
    let other = unique_probe("beside-spin");
    let mut hello = Run::rootfs("beside-spin", other.path(), &["/probe.wasm"]);
    hello.timeout = Some(Duration::from_secs(30));
    let out = ctd.run(&hello);
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");

    for pid in pids.split_whitespace() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let out = spinning.join().unwrap();
    assert_ne!(out.code, Some(0), "{out:?}");
}
