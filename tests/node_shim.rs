//! The node shim over a long life: what it holds per container, and which shim new
//! containers go to (issue 13, findings 7 and 8). Each test has a containerd of its own, so
//! that its node shim serves only its containers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::images::Owned;
use common::{fixture, Containerd, Rootfs, Run};
use wasmedge_aot_protocol::identity::{config_digest, Identity, STATE_ROOT};
use wasmedge_shimctl::check::check_node_shims;

const SHIM: &str = "containerd-shim-wasmedge-v1";
const RUNNER: &str = "wasmedge-shim-runner";

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn fd_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn the_node_shim_holds_no_descriptor_of_a_deleted_task() {
    if !common::can_run("node_shim_fds") {
        return;
    }
    let ctd = Owned(Containerd::start(false));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    // A rolling replacement, as a Deployment's update does: the new container starts before
    // the old one goes, so the node shim always has a task, and each deleted task's log pipe
    // lies below a live one's.
    let start = |id: &str| {
        ctd.run_detached(&Run::rootfs(id, r.path(), &["/probe.wasm", "sleep", "300"]));
        ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
    };
    let mut live = "fd-0".to_string();
    start(&live);
    let shim = common::ppid(ctd.task_pid(&live).unwrap()).unwrap();
    let mut roll = |i: usize| {
        let next = format!("fd-{i}");
        start(&next);
        ctd.remove(&live);
        // And one that runs to its end in between.
        let out = ctd.run(&Run::rootfs(
            &format!("fd-run-{i}"),
            r.path(),
            &["/probe.wasm"],
        ));
        assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
        live = next;
    };
    for i in 1..=3 {
        roll(i);
    }
    let before = open_fds(shim);
    for i in 4..=33 {
        roll(i);
    }
    let after = open_fds(shim);
    assert_eq!(
        common::ppid(ctd.task_pid(&live).unwrap()),
        Some(shim),
        "one node shim served them all"
    );
    assert!(
        after <= before + 2,
        "the node shim went from {before} to {after} open descriptors over 60 containers:\n{:#?}",
        fd_targets(shim)
    );
    ctd.remove(&live);
}

/// Whether process `pid` runs: an exited daemon stays a zombie until the machine's init
/// reaps it, which here can take a second.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

#[test]
fn sigterm_leaves_a_node_shim_serving_its_containers_and_ends_an_idle_one_at_once() {
    if !common::can_run("node_shim_sigterm") {
        return;
    }
    let ctd = Owned(Containerd::start(false));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    ctd.run_detached(&Run::rootfs(
        "term-live",
        r.path(),
        &["/probe.wasm", "sleep", "300"],
    ));
    ctd.wait_status("term-live", "RUNNING", Duration::from_secs(10));
    let shim = common::ppid(ctd.task_pid("term-live").unwrap()).unwrap();
    let runner = common::runner_of(shim).expect("the shim's runner");
    let run_dir = wasmedge_aot_protocol::identity::live_shims(Path::new(STATE_ROOT), SHIM)
        .into_iter()
        .find(|(_, state)| state.pid == shim as u32)
        .map(|(dir, _)| dir)
        .expect("the shim's run directory");
    let term = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap()
    };

    // With a container: the shim goes on serving it, and takes new ones.
    term();
    wait_until("the shim logs the SIGTERM", Duration::from_secs(5), || {
        ctd.log()
            .contains("SIGTERM: ignored while serving 1 container")
    });
    assert!(alive(shim), "the shim left its container");
    assert_eq!(ctd.task_status("term-live").as_deref(), Some("RUNNING"));
    let out = ctd.run(&Run::rootfs("term-run", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");

    // Idle (its last task deleted, so its 30 s idle grace runs): it exits at once, with its
    // runner, its run directory and its socket.
    ctd.remove("term-live");
    let socket = std::fs::read_to_string(run_dir.join("address")).unwrap();
    let socket = socket.trim().trim_start_matches("unix://").to_string();
    let signalled = Instant::now();
    term();
    wait_until("the idle shim exits", Duration::from_secs(5), || {
        !alive(shim)
    });
    let took = signalled.elapsed();
    wait_until("its runner exits", Duration::from_secs(5), || {
        !alive(runner)
    });
    // (Its log line is lost: an idle node shim has no task whose log pipe it could write.)
    assert!(!run_dir.exists(), "the shim left {}", run_dir.display());
    assert!(
        !Path::new(&socket).exists(),
        "the shim left its socket {socket}"
    );
    eprintln!("idle shim gone {took:?} after SIGTERM");

    // The next container gets a new shim.
    let out = ctd.run(&Run::rootfs("term-after", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
}

/// The `node-shims` line of `wasmedge-shimctl check` about shim `pid`.
fn check_line(pid: i32, installed: &Identity) -> String {
    let c = check_node_shims(Path::new(STATE_ROOT), Some(installed));
    c.evidence
        .lines()
        .find(|l| l.starts_with(&format!("pid {pid} ")))
        .unwrap_or_default()
        .to_string()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The state file of a dead node shim of the containerd at `containerd`: its pid is 1,
/// which is no shim.
fn dead_state(containerd: &str) -> String {
    serde_json::json!({
        "pid": 1, "namespace": "x", "group": "g", "version": "0",
        "identity": {"shim": null, "runner": null, "config": "none"},
        "tasks": 1, "containerd": containerd,
    })
    .to_string()
}

/// Copies `from` to `to` as an installer does: a new file beside it, renamed over it.
fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn an_upgrade_and_a_config_change_reach_new_containers_while_running_ones_stay() {
    if !common::can_run("node_shim_upgrade") {
        return;
    }
    let bin = tempfile::tempdir().unwrap();
    let shim_bin = bin.path().join(SHIM);
    let runner_bin = bin.path().join(RUNNER);
    install(&common::shim_dir().join(SHIM), &shim_bin);
    install(&common::runner_bin(), &runner_bin);
    let ctd = Owned(Containerd::start_with_bin(false, "", bin.path()));
    let config = ctd.dir.join("shim.toml");
    let installed = || Identity::of(&shim_bin, &runner_bin, config_digest(&config));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let start = |id: &str| {
        ctd.run_detached(&Run::rootfs(id, r.path(), &["/probe.wasm", "sleep", "300"]));
        ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
        common::ppid(ctd.task_pid(id).unwrap()).unwrap()
    };

    let old = start("up-old");
    wait_until(
        "check reports the shim serving 1 task",
        Duration::from_secs(5),
        || {
            let l = check_line(old, &installed());
            l.contains("installed binaries, current config") && l.contains("serves 1 task")
        },
    );

    // Under the running container: a new cache directory in the config, and a new build
    // of both binaries (here a copy: another inode and mtime, as any install gives).
    let new_cache = ctd.dir.join("var/cache-after-upgrade");
    std::fs::write(
        &config,
        format!("cache_dir = \"{}\"\n", new_cache.display()),
    )
    .unwrap();
    install(&common::shim_dir().join(SHIM), &shim_bin);
    install(&common::runner_bin(), &runner_bin);

    // The old shim's runner dies, and a container that follows the old shim (as a pod's
    // containers follow their sandbox's) makes it start another: that runner runs the
    // config the old shim loaded, whose digest its identity holds, not the file as it is
    // now (it once read the file again, and opened the new cache under the old identity).
    let runner = common::runner_of(old).expect("the old shim's runner");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "the old shim's runner is gone",
        Duration::from_secs(5),
        || !alive(runner),
    );
    let follow = ctd.run(&Run {
        annotations: vec![format!(
            "{}=up-old",
            wasmedge_aot_shim::spec::SANDBOX_ID_ANNOTATION
        )],
        ..Run::rootfs("up-follow", r.path(), &["/probe.wasm"])
    });
    assert_eq!(follow.stdout, "hello from wasm\n", "{follow:?}");
    assert!(
        !new_cache.exists(),
        "the old shim's restarted runner opened the new config's cache"
    );

    let new = start("up-new");
    assert_ne!(
        new, old,
        "the new container went to the shim of the old build and config"
    );
    assert!(
        new_cache.join("v1").is_dir(),
        "the new shim's runner did not open the new cache directory"
    );
    assert_eq!(ctd.task_status("up-old").as_deref(), Some("RUNNING"));
    assert_eq!(common::ppid(ctd.task_pid("up-old").unwrap()), Some(old));
    // A container run to its end goes to the new shim, and compiles into the new cache.
    let out = ctd.run(&Run::rootfs("up-run", r.path(), &["/probe.wasm"]));
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    let log = ctd.log();
    assert!(
        common::create_outcome(&log, "up-run").is_some_and(|(_, tier)| tier == "native"),
        "{}",
        ctd.log_tail()
    );
    assert!(
        std::fs::read_dir(new_cache.join("v1/entries"))
            .unwrap()
            .count()
            > 0,
        "nothing compiled into the new cache"
    );
    wait_until("check reports both shims", Duration::from_secs(5), || {
        let (o, n) = (check_line(old, &installed()), check_line(new, &installed()));
        o.contains("older binaries, older config")
            && o.contains("serves 1 task;")
            && o.contains("exits when idle")
            && n.contains("installed binaries, current config")
            && n.contains("serves 1 task")
    });

    // The old shim's last container ends: it exits after its idle grace (30 s), and its
    // run directory goes with it (idle shims once left theirs until the host rebooted).
    let old_dir = wasmedge_aot_protocol::identity::live_shims(Path::new(STATE_ROOT), SHIM)
        .into_iter()
        .find(|(_, state)| state.pid == old as u32)
        .map(|(dir, _)| dir)
        .expect("the old shim's run directory");
    ctd.remove("up-old");
    wait_until("the old shim exits", Duration::from_secs(50), || {
        !Path::new(&format!("/proc/{old}")).exists()
    });
    assert!(
        !old_dir.exists(),
        "the idle shim left {}",
        old_dir.display()
    );
    assert!(Path::new(&format!("/proc/{new}")).exists());
    assert_eq!(ctd.task_status("up-new").as_deref(), Some("RUNNING"));
    ctd.remove("up-new");
}

/// The directories of cgroup `path` that exist, in every hierarchy.
fn cgroup_dirs(path: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(path.trim_start_matches('/')))
        .filter(|d| d.is_dir())
        .collect()
}

#[test]
fn a_shim_killed_with_running_containers_leaves_no_cgroup_and_no_process() {
    if !common::can_run("killed_shim_cleanup") {
        return;
    }
    let ctd = Owned(Containerd::start(false));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    ctd.run_detached(&Run::rootfs(
        "orphan",
        r.path(),
        &["/probe.wasm", "sleep", "60"],
    ));
    // And a Linux container, which runc runs for the shim.
    let native = Rootfs::with(&[("native-tool", &fixture("native-tool"))]);
    ctd.run_detached(&Run::rootfs(
        "orphan-linux",
        native.path(),
        &["/native-tool", "sleep", "60"],
    ));
    ctd.wait_status("orphan", "RUNNING", Duration::from_secs(30));
    ctd.wait_status("orphan-linux", "RUNNING", Duration::from_secs(30));
    let linux_pid = ctd.task_pid("orphan-linux").unwrap();
    let runc_state = Path::new("/run/wasmedge-aot-shim/runc")
        .join(common::namespace())
        .join("orphan-linux");
    assert!(runc_state.exists());
    let pid = ctd.task_pid("orphan").unwrap();
    let shim = common::ppid(pid).unwrap();
    let cgroup = format!("/{}/orphan", common::namespace());
    assert!(
        !cgroup_dirs(&cgroup).is_empty(),
        "the container has a cgroup"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd sees its shim die and deletes its tasks through the shim binary, which
    // has runc force-delete the Linux container.
    let linux_cgroup = format!("/{}/orphan-linux", common::namespace());
    wait_until(
        "the cgroups, the processes and runc's state are gone",
        Duration::from_secs(30),
        || {
            cgroup_dirs(&cgroup).is_empty()
                && cgroup_dirs(&linux_cgroup).is_empty()
                && !Path::new(&format!("/proc/{pid}")).exists()
                && !Path::new(&format!("/proc/{linux_pid}")).exists()
                && !runc_state.exists()
        },
    );
}

/// A dead shim's clean-up (`shim delete` in the bundle) kills the process its bundle
/// records. The pid in that record can name another process by then (pids are reused, and a
/// tenant can cycle them), and every Wasm container's process runs the runner binary: the
/// clean-up once killed another namespace's container whose pid the record named. It kills
/// only the recorded process itself (its start time too), as runc checks its init's.
#[test]
fn a_dead_shims_clean_up_kills_no_other_container_whose_pid_its_record_names() {
    if !common::can_run("dead_shim_pid_reuse") {
        return;
    }
    let ctd = Owned(Containerd::start(false));
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    // The victim: another namespace's container, so another shim's.
    let other = format!("{}-other", common::namespace());
    let root = r.path().display().to_string();
    let run = [
        "run",
        "-d",
        "--runtime",
        common::RUNTIME,
        "--rootfs",
        &root,
        "victim",
        "/probe.wasm",
        "sleep",
        "60",
    ];
    ctd.ctr_in_ok(&other, &run);
    let victim_pid = || -> Option<i32> {
        let out = ctd.ctr_in_ok(&other, &["task", "ls"]);
        out.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == "victim" && f[2] == "RUNNING")
            .and_then(|f| f[1].parse().ok())
    };
    wait_until("the victim runs", Duration::from_secs(20), || {
        victim_pid().is_some()
    });
    let victim = victim_pid().unwrap();

    ctd.run_detached(&Run::rootfs(
        "steered",
        r.path(),
        &["/probe.wasm", "sleep", "60"],
    ));
    ctd.wait_status("steered", "RUNNING", Duration::from_secs(20));
    let pid = ctd.task_pid("steered").unwrap();
    let shim = common::ppid(pid).unwrap();
    // The record now names the victim's pid, as after the steered process ended and the
    // victim got its pid; whatever else the shim recorded of its process stays.
    let record = ctd.bundle("steered").join("wasm.pid");
    let text = std::fs::read_to_string(&record).unwrap();
    let rest = text.trim().split_once(' ').map(|(_, r)| r).unwrap_or("");
    std::fs::write(&record, format!("{victim} {rest}").trim()).unwrap();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let cgroup = format!("/{}/steered", common::namespace());
    wait_until(
        "containerd has the dead shim's task deleted",
        Duration::from_secs(30),
        || cgroup_dirs(&cgroup).is_empty() && !Path::new(&format!("/proc/{pid}")).exists(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let alive = victim_pid() == Some(victim);
    let _ = ctd.ctr_in(&other, &["task", "kill", "-s", "SIGKILL", "victim"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = ctd.ctr_in(&other, &["task", "rm", "-f", "victim"]);
    let _ = ctd.ctr_in(&other, &["container", "rm", "victim"]);
    assert!(alive, "the other namespace's container was killed");
}

#[test]
fn a_new_node_shim_sweeps_what_a_dead_one_left() {
    if !common::can_run("sweep_dead_shim") {
        return;
    }
    let ctd = Owned(Containerd::start(false));
    // A dead shim's run directory: its state names a pid that is not a shim, and it records
    // a container whose cgroup still holds a process.
    let dead = Path::new(STATE_ROOT).join(format!("sweep-test-{}", std::process::id()));
    std::fs::create_dir_all(dead.join("containers")).unwrap();
    std::fs::write(
        dead.join("shim.json"),
        dead_state(&ctd.address.display().to_string()),
    )
    .unwrap();
    let cgroup = format!("/wasmedge-sweep-test-{}", std::process::id());
    std::fs::write(
        dead.join("containers/left"),
        format!(r#"{{"id": "left", "cgroup": "{cgroup}", "rootfs": null}}"#),
    )
    .unwrap();
    let mut spec = oci_spec::runtime::Spec::default();
    spec.set_linux(None);
    let devices = wasmedge_aot_shim::cgroup::devices::Policy::of_spec(&[], &[]).unwrap();
    wasmedge_aot_shim::cgroup::create(&cgroup, &spec, &devices).unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    for d in cgroup_dirs(&cgroup) {
        let procs = d.join("cgroup.procs");
        if procs.exists() {
            std::fs::write(procs, sleeper.id().to_string()).unwrap();
        }
    }

    // Another containerd's dead shim, which that containerd has yet to clean up after: not
    // this containerd's shims' to sweep (it once was).
    let theirs = Path::new(STATE_ROOT).join(format!("sweep-test-theirs-{}", std::process::id()));
    std::fs::create_dir_all(theirs.join("containers")).unwrap();
    std::fs::write(
        theirs.join("shim.json"),
        dead_state("/nowhere/containerd.sock"),
    )
    .unwrap();
    // The directory of a shim that exited idle: no state, no records, no one on its socket.
    let idle = Path::new(STATE_ROOT).join(format!("sweep-test-idle-{}", std::process::id()));
    std::fs::create_dir_all(idle.join("containers")).unwrap();
    std::fs::write(idle.join("address"), "unix:///nowhere/shim.sock").unwrap();

    // The next node shim to start cleans it up.
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let out = ctd.run(&Run::rootfs("sweeper", r.path(), &["/probe.wasm"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    wait_until(
        "the dead shim's leftovers are gone",
        Duration::from_secs(10),
        || !dead.exists() && !idle.exists() && cgroup_dirs(&cgroup).is_empty(),
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
    let kept = theirs.exists();
    let _ = std::fs::remove_dir_all(&theirs);
    assert!(kept, "another containerd's dead shim was swept");
}

/// A Linux container (runc's) that a dead shim recorded: the sweep has runc force-delete it.
#[test]
fn a_new_node_shim_has_runc_delete_a_linux_container_a_dead_one_left() {
    if !common::can_run("sweep_dead_shim_runc") {
        return;
    }
    let tag = format!("sweep-runc-{}", std::process::id());
    // A container runc runs under a state root of the shim's, as a shim would have left it.
    let root = Path::new("/run/wasmedge-aot-shim/runc").join(&tag);
    let bundle = tempfile::tempdir().unwrap();
    std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
    std::fs::copy(
        fixture("native-tool"),
        bundle.path().join("rootfs/native-tool"),
    )
    .unwrap();
    let spec = std::process::Command::new("runc")
        .arg("spec")
        .current_dir(bundle.path())
        .status()
        .unwrap();
    assert!(spec.success());
    let config = bundle.path().join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    json["process"]["args"] = serde_json::json!(["/native-tool", "sleep", "60"]);
    json["process"]["terminal"] = false.into();
    std::fs::write(&config, serde_json::to_vec(&json).unwrap()).unwrap();
    let run = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["run", "--detach", "--bundle"])
        .arg(bundle.path())
        .arg("left-linux")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(run.success());
    let state = std::process::Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["state", "left-linux"])
        .output()
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    let pid = state["pid"].as_i64().unwrap();

    let ctd = Owned(Containerd::start(false));
    let dead = Path::new(STATE_ROOT).join(format!("sweep-test-{tag}"));
    std::fs::create_dir_all(dead.join("containers")).unwrap();
    std::fs::write(
        dead.join("shim.json"),
        dead_state(&ctd.address.display().to_string()),
    )
    .unwrap();
    std::fs::write(
        dead.join("containers/left-linux"),
        format!(
            r#"{{"id": "left-linux", "cgroup": null, "rootfs": null, "runc_root": "{}"}}"#,
            root.display()
        ),
    )
    .unwrap();

    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let out = ctd.run(&Run::rootfs("sweeper-runc", r.path(), &["/probe.wasm"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    wait_until(
        "the dead shim's Linux container is gone",
        Duration::from_secs(20),
        || {
            !dead.exists()
                && !root.join("left-linux").exists()
                // Gone, or a zombie of whoever adopted it.
                && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map_or(true, |s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
        },
    );
    let _ = std::fs::remove_dir(&root);
}

/// A dead shim recorded a container, and a user runs a container of the same id again: the
/// new shim's sweep of the old record runs while it creates the new container, and the
/// record names the new container's cgroup and rootfs too. The sweep must be done with the
/// old record before the create begins, and never act on the new container.
#[test]
fn the_sweep_of_a_dead_shims_container_spares_a_new_container_of_its_id() {
    if !common::can_run("sweep_spares_reused_id") {
        return;
    }
    let tag = format!("sweep-reuse-{}", std::process::id());
    // A runc root of the dead shim's with the container still in it, whose `runc delete`
    // takes 3 s (the test's runc): the sweep is at this record while the new container is
    // being created. The real runc fails on its state, so that the shim of another test
    // that starts meanwhile (whose runc is the real one) keeps the record for this one.
    let slow_root = Path::new("/run/wasmedge-aot-shim/runc").join(&tag);
    let id = "reused";
    std::fs::create_dir_all(slow_root.join(id)).unwrap();
    std::fs::write(slow_root.join(id).join("state.json"), "not runc's").unwrap();
    let bin = common::bin_with_runc(&format!(
        r#"case " $* " in *" --root {} "*) sleep 3; exit 0 ;; esac
exec "$RUNC" "$@""#,
        slow_root.display()
    ));
    let ctd = Owned(Containerd::start_with_bin(false, "", bin.path()));
    let dead = Path::new(STATE_ROOT).join(format!("sweep-test-{tag}"));
    std::fs::create_dir_all(dead.join("containers")).unwrap();
    std::fs::write(
        dead.join("shim.json"),
        dead_state(&ctd.address.display().to_string()),
    )
    .unwrap();
    // The old container's cgroup and rootfs had the names the new one's have (`ctr` puts a
    // container's cgroup at /<namespace>/<id>).
    std::fs::write(
        dead.join("containers").join(id),
        serde_json::json!({
            "id": id,
            "cgroup": format!("/{}/{id}", common::namespace()),
            "rootfs": ctd.bundle(id).join("rootfs"),
            "runc_root": slow_root,
        })
        .to_string(),
    )
    .unwrap();

    // The first container of this containerd starts its node shim, which sweeps.
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    ctd.run_detached(&Run::rootfs(id, r.path(), &["/probe.wasm", "sleep", "60"]));
    wait_until(
        "the dead shim's directory is swept",
        Duration::from_secs(20),
        || !dead.exists(),
    );
    ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        ctd.task_status(id).as_deref(),
        Some("RUNNING"),
        "the sweep ended the new container\n{}",
        ctd.log_tail()
    );
    assert!(
        ctd.log().contains(&format!(
            "cleaned up container {id} of the dead shim of {}",
            dead.display()
        )),
        "this shim's sweep did it\n{}",
        ctd.log_tail()
    );
    ctd.remove(id);
    let _ = std::fs::remove_dir_all(&slow_root);
    let _ = std::fs::remove_dir_all(&dead);
}
