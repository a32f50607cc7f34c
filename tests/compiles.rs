//! Compiles against a real containerd, as one tenant among others sees them (issue 26): a
//! small module's first start never waits behind another module's long compile; a compile
//! past its deadline is killed and its start runs the interpreter, leaving no lock held and
//! nothing staged; LLVM runs with no privilege, for `wasmedge-shimctl precompile` too.
//!
//! The long compile is `code-2mb.wasm` (2 MB of code, tens of seconds at O0 here); each test
//! has a containerd and a cache of its own, so it is new to the cache, and kills its
//! compiles when done instead of letting them run on.

mod common;

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::images::Owned;
use common::{create_outcome, fixture, unique_probe, Containerd, Rootfs, Run};

fn long_compile_module() -> Rootfs {
    Rootfs::with(&[("code.wasm", &fixture("code-2mb.wasm"))])
}

fn run_with_policy(ctd: &Containerd, id: &str, r: &Rootfs, arg: &str, policy: &str) -> String {
    let mut run = Run::rootfs(id, r.path(), &[arg]);
    run.annotations = vec![format!("wasmedge-aot-shim.io/compile-policy={policy}")];
    let out = ctd.run(&run);
    assert_eq!(out.code, Some(0), "{id}: {out:?}\n{}", ctd.log_tail());
    out.stdout
}

/// The shim's warning for container `id`, if it logged one.
fn warning(ctd: &Containerd, id: &str) -> String {
    ctd.log()
        .lines()
        .rev()
        .find(|l| l.contains(&format!("container {id}: ")) && l.contains("level=warn"))
        .unwrap_or_default()
        .to_string()
}

/// Waits until `f` holds, failing with `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill_compiles(ctd: &Containerd) {
    for pid in common::compiles_of(ctd) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The cache entries `wasmedge-shimctl ls` lists.
fn ls(ctd: &Containerd) -> String {
    let out = std::process::Command::new(common::shimctl_bin())
        .args(["ls", "--cache-dir"])
        .arg(&ctd.cache_dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_small_modules_first_start_never_waits_behind_another_modules_long_compile() {
    if !common::can_run("compile_lanes") {
        return;
    }
    // One compile slot on the node, as by default.
    let ctd = Owned(Containerd::start_with(
        false,
        "max_concurrent_compiles = 1\n",
    ));
    let big = long_compile_module();
    run_with_policy(&ctd, "long-compile", &big, "/code.wasm", "tiered");
    let slot = ctd.cache_dir.join("v1/locks/slot.0.lock");
    let compiling = || std::fs::read_to_string(&slot).is_ok_and(|s| s.contains("compiling"));
    wait_until(
        Duration::from_secs(60),
        "the big module's compile holds the node's slot",
        compiling,
    );
    // A small module (auto: its first start waits for its quick tier).
    let small = unique_probe("lanes");
    let t = Instant::now();
    let out = ctd.run(&Run::rootfs("small-first", small.path(), &["/probe.wasm"]));
    let took = t.elapsed();
    assert_eq!(out.stdout, "hello from wasm\n", "{out:?}");
    assert_eq!(
        create_outcome(&ctd.log(), "small-first"),
        Some(("compiled".into(), "native".into())),
        "{}",
        ctd.log_tail()
    );
    let entries = ls(&ctd);
    kill_compiles(&ctd);
    eprintln!("the small module's first start took {took:?} beside the big module's compile");
    assert!(
        !entries.contains("code.wasm O0"),
        "the small module's first start ({took:?}) waited for the big module's quick tier:\n\
         {entries}"
    );
}

#[test]
fn a_compile_past_its_deadline_is_killed_and_its_start_runs_the_interpreter() {
    if !common::can_run("compile_deadline") {
        return;
    }
    let ctd = Owned(Containerd::start_with(false, "compile_deadline_secs = 1\n"));
    let big = long_compile_module();
    let t = Instant::now();
    run_with_policy(&ctd, "deadline-1", &big, "/code.wasm", "sync");
    let took = t.elapsed();
    assert_eq!(
        create_outcome(&ctd.log(), "deadline-1"),
        Some(("fallback".into(), "interpreter".into()))
    );
    let w = warning(&ctd, "deadline-1");
    assert!(w.contains("passed its deadline"), "{w}");
    assert!(
        took < Duration::from_secs(30),
        "a 1 s deadline, and the start took {took:?}"
    );
    // The compile process cleaned up after its killed worker: nothing staged, no lock held.
    wait_until(Duration::from_secs(10), "the compile ends", || {
        common::compiles_of(&ctd).is_empty()
    });
    let tmp: Vec<_> = std::fs::read_dir(ctd.cache_dir.join("v1/tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(tmp.is_empty(), "left staged: {tmp:?}");
    for lock in std::fs::read_dir(ctd.cache_dir.join("v1/locks"))
        .unwrap()
        .flatten()
    {
        let f = std::fs::File::open(lock.path()).unwrap();
        assert!(
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
            "{} is still held",
            lock.path().display()
        );
    }
    // Remembered: the next start runs the interpreter without compiling again.
    run_with_policy(&ctd, "deadline-2", &big, "/code.wasm", "sync");
    let w = warning(&ctd, "deadline-2");
    assert!(
        w.contains("s ago") && w.contains("passed its deadline"),
        "{w}"
    );
    let attempts = ctd
        .log()
        .lines()
        .filter(|l| l.contains("aot compile of /code.wasm") && l.contains("started as pid"))
        .count();
    assert_eq!(attempts, 1, "{}", ctd.log_tail());
}

/// `Name:\tvalue` of `/proc/<pid>/status`.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
        .trim()
        .to_string()
}

#[test]
fn llvm_runs_unprivileged_in_a_pid_namespace_of_its_own_with_a_memory_limit() {
    if !common::can_run("compile_sandbox") {
        return;
    }
    let ctd = Owned(Containerd::start_with(
        false,
        "compile_uid = 64999\ncompile_gid = 64998\ncompile_memory_max_bytes = 3221225472\n",
    ));
    let big = long_compile_module();
    run_with_policy(&ctd, "sandboxed", &big, "/code.wasm", "tiered");
    // The process that compiles: the compile's process tree's leaf (the runner's compile
    // process, or a worker of it).
    let mut leaf = None;
    wait_until(Duration::from_secs(60), "a compile runs", || {
        let compiles = common::compiles_of(&ctd);
        leaf = compiles
            .iter()
            .copied()
            .find(|&p| !compiles.iter().any(|&c| common::ppid(c) == Some(p)));
        leaf.is_some()
    });
    let pid = leaf.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    // The work directory, through the worker's working directory (a detached clone of it,
    // which names itself "/").
    let work = {
        use std::os::unix::fs::MetadataExt;
        let cwd = std::fs::metadata(format!("/proc/{pid}/cwd")).unwrap();
        std::fs::read_dir(ctd.cache_dir.join("v1/tmp"))
            .unwrap()
            .map(|e| e.unwrap().path().join("work"))
            .find(|w| {
                std::fs::metadata(w).is_ok_and(|m| (m.dev(), m.ino()) == (cwd.dev(), cwd.ino()))
            })
    };
    let own_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let parent = common::ppid(pid).unwrap();
    let parent_ns = std::fs::read_link(format!("/proc/{parent}/ns/pid"));
    let ns = |p: i32, t: &str| std::fs::read_link(format!("/proc/{p}/ns/{t}")).ok();
    let own_other_ns: Vec<_> = ["net", "ipc", "mnt"]
        .iter()
        .map(|t| {
            (
                t.to_string(),
                ns(pid, t).is_some() && ns(pid, t) != ns(parent, t),
            )
        })
        .collect();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // The processes its /proc shows.
    let visible: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root/proc"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<u32>().is_ok())
        .collect();
    kill_compiles(&ctd);
    assert_eq!(status_field(&status, "Uid"), "64999\t64999\t64999\t64999");
    assert_eq!(status_field(&status, "Gid"), "64998\t64998\t64998\t64998");
    assert_eq!(status_field(&status, "Groups"), "");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // pid 1 of its namespace: it can name no process outside, and takes its own with it.
    assert!(status_field(&status, "NSpid").ends_with("\t1"), "{status}");
    assert_ne!(Some(own_ns), parent_ns.ok());
    // No network, no host IPC, its own mounts; and its system-call filters.
    for (t, own) in own_other_ns {
        assert!(own, "the worker shares its parent's {t} namespace");
    }
    // A root of its own: an empty read-only tmpfs with the work directory, its /proc and
    // four device nodes; nothing of the host's tree.
    let mut points: Vec<&str> = mountinfo
        .lines()
        .map(|l| l.split_whitespace().nth(4).unwrap())
        .collect();
    points.sort_unstable();
    assert_eq!(
        points,
        [
            "/",
            "/dev/null",
            "/dev/random",
            "/dev/urandom",
            "/dev/zero",
            "/proc",
            "/work"
        ],
        "{mountinfo}"
    );
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    assert!(
        root.split_whitespace()
            .nth(5)
            .unwrap()
            .split(',')
            .any(|o| o == "ro"),
        "{root}"
    );
    // Its own /proc: no other process's environment or maps.
    assert_eq!(visible, ["1"], "the worker's /proc shows other processes");
    assert_eq!(status_field(&status, "Seccomp"), "2");
    // The deny list, clone3's ENOSYS and, on x86-64, the x32 calls.
    let filters = if cfg!(target_arch = "x86_64") {
        "3"
    } else {
        "2"
    };
    assert_eq!(status_field(&status, "Seccomp_filters"), filters);
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max file size"))
        .unwrap();
    assert!(!files.contains("unlimited"), "{files}");
    let data = limits
        .lines()
        .find(|l| l.starts_with("Max data size"))
        .unwrap();
    assert!(
        data.split_whitespace()
            .filter(|w| *w == "3221225472")
            .count()
            == 2,
        "{data}"
    );
    assert!(
        work.is_some(),
        "the worker works elsewhere than its entry's work directory"
    );
}

/// The processes whose parent is `pid`, and theirs.
fn descendants(pid: i32) -> Vec<i32> {
    let all: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|&&p| common::ppid(p) == Some(parent)));
        i += 1;
    }
    found.remove(0);
    found
}

#[test]
fn precompile_hands_the_module_to_the_runners_sandbox_and_runs_no_compiler_itself() {
    if !common::can_run("precompile_sandbox") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shim config.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\ncompile_uid = 64997\ncompile_gid = 64996\n",
            dir.path().join("cache é")
        ),
    )
    .unwrap();
    let mut precompile = std::process::Command::new(common::shimctl_bin())
        .arg("precompile")
        .arg("--config")
        .arg(&config)
        .arg(fixture("code-2mb.wasm"))
        .env("OPERATOR_TOKEN", "s3cret-of-the-operator")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let tool = precompile.id() as i32;
    let uid = |p: i32| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .map(|s| status_field(&s, "Uid"))
    };
    let mut worker = None;
    wait_until(Duration::from_secs(60), "a compile worker runs", || {
        worker = descendants(tool)
            .into_iter()
            .find(|&p| uid(p).as_deref() == Some("64997\t64997\t64997\t64997"));
        worker.is_some()
    });
    let tool_maps = std::fs::read_to_string(format!("/proc/{tool}/maps")).unwrap();
    let tree = descendants(tool);
    let worker = worker.unwrap();
    let runner = common::ppid(worker).unwrap();
    let exe = std::fs::read_link(format!("/proc/{runner}/exe"));
    // What the worker holds of the operator's: no environment, neither the module's file
    // nor the pipe the tool reads the report from.
    let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
    let fds: Vec<String> = [0, 1]
        .iter()
        .map(|fd| {
            std::fs::read_link(format!("/proc/{worker}/fd/{fd}"))
                .map(|l| l.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(tool),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = precompile.wait();
    // LLVM runs in the runner's worker, unprivileged; the tool itself links no WasmEdge.
    assert!(
        !tool_maps.contains("libwasmedge") && !tool_maps.contains("libLLVM"),
        "{tool_maps}"
    );
    assert!(tree.contains(&runner));
    assert!(
        !String::from_utf8_lossy(&environ).contains("s3cret-of-the-operator"),
        "the worker has the operator's environment"
    );
    for (fd, link) in fds.iter().enumerate() {
        assert!(
            !link.starts_with("pipe:") && !link.contains("code-2mb"),
            "the worker's fd {fd} is {link}"
        );
    }
    assert!(
        exe.as_ref()
            .is_ok_and(|e| e.ends_with("wasmedge-shim-runner")),
        "{exe:?}"
    );
}
