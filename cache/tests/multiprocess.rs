//! Cross-process behaviour, with real processes: this test binary re-executes itself with
//! `CACHE_TEST_ROLE` set, and the `child` test below then plays that role instead of testing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wasmedge_aot_cache::{Cache, CacheConfig, Error, Outcome};

const ROLE: &str = "CACHE_TEST_ROLE";

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| panic!("{name} not set")))
}

/// Child entry point; a no-op in a normal test run.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let root = env_path("CACHE_TEST_ROOT");
    let module = env_path("CACHE_TEST_MODULE");
    let log = env_path("CACHE_TEST_LOG");
    let results = env_path("CACHE_TEST_RESULTS");
    let mut cfg = CacheConfig::new(&root);
    if let Ok(n) = std::env::var("CACHE_TEST_SLOTS") {
        cfg.max_concurrent_compiles = n.parse().unwrap();
    }
    let pause = Duration::from_millis(
        std::env::var("CACHE_TEST_PAUSE_MS")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0),
    );
    let compiler = FakeCompiler {
        pause,
        halfway_marker: std::env::var_os("CACHE_TEST_MARKER").map(PathBuf::from),
        spin: std::env::var_os("CACHE_TEST_SPIN").is_some(),
        ..FakeCompiler::logging(&log)
    };
    // Start together to make the race real.
    if let Some(go) = std::env::var_os("CACHE_TEST_GO") {
        while !Path::new(&go).exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    if role == "fork" {
        fork_server(cfg, &module, &compiler);
    }
    assert_eq!(role, "get");
    let cache = Cache::open(cfg).unwrap();
    match cache.get_or_compile(&module, &fingerprint(), &compiler) {
        Ok(r) => append_line(
            &results,
            &format!("{:?} {}", r.outcome, hex(&r.artifact.digest)),
        ),
        Err(e) => append_line(&results, &format!("error {e}")),
    }
    drop(cache);
    std::process::exit(0);
}

/// Plays the shim's runner: one process that looks entries up (a hit, a tampered entry it
/// removes) and then forks a process per container, each of which gets `module` through the
/// cache (one compiles, the others wait for it) and merges its counters, as container
/// processes do before they `_exit`.
fn fork_server(cfg: CacheConfig, module: &Path, compiler: &FakeCompiler) -> ! {
    let hit = env_path("CACHE_TEST_HIT_MODULE");
    let tampered = env_path("CACHE_TEST_TAMPERED_MODULE");
    let n: usize = std::env::var("CACHE_TEST_FORKS").unwrap().parse().unwrap();
    let cache = Cache::open(cfg).unwrap();
    let key = cache.key_for(&hit, &fingerprint()).unwrap();
    assert!(cache.lookup(&key).unwrap().is_some());
    let key = cache.key_for(&tampered, &fingerprint()).unwrap();
    assert!(
        cache.lookup(&key).unwrap().is_none(),
        "tampered entry handed out"
    );
    // Both events are still pending in this process (merged at most once a second).
    let mut children = Vec::new();
    for _ in 0..n {
        // SAFETY: the child runs cache code and leaves with _exit, as the runner's container
        // processes do; nothing else runs in this process while it forks.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match cache.get_or_compile(module, &fingerprint(), compiler) {
                    Ok(_) => cache.flush_stats().map_or(2, |_| 0),
                    Err(_) => 1,
                };
                // SAFETY: _exit skips the destructors the parent still owns.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => children.push(child),
        }
    }
    for c in children {
        let status = nix::sys::wait::waitpid(c, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(c, 0));
    }
    drop(cache);
    std::process::exit(0);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Env {
    dir: tempfile::TempDir,
    root: PathBuf,
    log: PathBuf,
    results: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        Env {
            root: dir.path().join("cache"),
            log: dir.path().join("compile.log"),
            results: dir.path().join("results"),
            dir,
        }
    }

    fn module(&self, name: &str) -> PathBuf {
        write_module(self.dir.path(), name, format!("module {name}").as_bytes())
    }

    fn spawn(&self, module: &Path, extra: &[(&str, String)]) -> Child {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(ROLE, "get")
            .env("CACHE_TEST_ROOT", &self.root)
            .env("CACHE_TEST_MODULE", module)
            .env("CACHE_TEST_LOG", &self.log)
            .env("CACHE_TEST_RESULTS", &self.results)
            .stdout(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    fn results(&self) -> Vec<String> {
        fs::read_to_string(&self.results)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn wait_for(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < timeout,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn racing_processes_compile_once() {
    let env = Env::new();
    let m = env.module("shared.wasm");
    let go = env.dir.path().join("go");
    let children: Vec<Child> = (0..6)
        .map(|_| {
            env.spawn(
                &m,
                &[
                    ("CACHE_TEST_GO", go.display().to_string()),
                    ("CACHE_TEST_PAUSE_MS", "300".into()),
                ],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    fs::write(&go, b"").unwrap();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(count_lines(&env.log, "start "), 1, "exactly one compile");
    let results = env.results();
    assert_eq!(results.len(), 6, "{results:?}");
    let compiled = results
        .iter()
        .filter(|r| r.starts_with("Compiled "))
        .count();
    let waited = results
        .iter()
        .filter(|r| r.starts_with("WaitedHit "))
        .count();
    assert_eq!(compiled, 1, "{results:?}");
    assert!(waited >= 1, "some callers must have waited: {results:?}");
    let digests: std::collections::HashSet<_> = results
        .iter()
        .map(|r| r.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(digests.len(), 1, "{results:?}");
    let s = Cache::open(CacheConfig::new(&env.root))
        .unwrap()
        .stats()
        .unwrap();
    assert_eq!((s.compiles, s.misses, s.hits), (1, 1, 5), "{s:?}");
}

#[test]
fn compile_slots_bound_concurrency_across_processes() {
    let env = Env::new();
    let go = env.dir.path().join("go");
    let children: Vec<Child> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            env.spawn(
                &env.module(n),
                &[
                    ("CACHE_TEST_GO", go.display().to_string()),
                    ("CACHE_TEST_PAUSE_MS", "150".into()),
                    ("CACHE_TEST_SLOTS", "1".into()),
                ],
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    fs::write(&go, b"").unwrap();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let log = fs::read_to_string(&env.log).unwrap();
    let events: Vec<(&str, u128)> = log
        .lines()
        .map(|l| {
            let v: Vec<&str> = l.split(' ').collect();
            (v[0], v[2].parse().unwrap())
        })
        .collect();
    assert_eq!(events.len(), 6, "{log}");
    let mut sorted = events.clone();
    sorted.sort_by_key(|e| e.1);
    let mut running = 0;
    for (kind, _) in sorted {
        running += if kind == "start" { 1 } else { -1 };
        assert!(
            running <= 1,
            "two compiles overlapped with one slot:\n{log}"
        );
    }
}

#[test]
fn compiler_killed_midway_leaves_no_entry_and_next_caller_recompiles() {
    let env = Env::new();
    let m = env.module("victim.wasm");
    let marker = env.dir.path().join("halfway");
    let mut child = env.spawn(
        &m,
        &[
            ("CACHE_TEST_MARKER", marker.display().to_string()),
            ("CACHE_TEST_PAUSE_MS", "60000".into()),
        ],
    );
    wait_for(&marker, Duration::from_secs(30));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(count_lines(&env.log, "start "), 1);
    assert_eq!(count_lines(&env.log, "end "), 0);

    let staging = tree(&env.root.join("v1/tmp"));
    assert!(
        !staging.is_empty(),
        "the killed compile should have left a staging directory"
    );
    // Opening cleans the leftover (its key lock died with its owner) and shows no entry.
    let cache = Cache::open(CacheConfig::new(&env.root)).unwrap();
    assert!(tree(&env.root.join("v1/tmp")).is_empty());
    assert!(cache.list().unwrap().is_empty());
    let key = cache.key_for(&m, &fingerprint()).unwrap();
    assert!(cache.lookup(&key).unwrap().is_none());

    let started = Instant::now();
    let r = cache
        .get_or_compile(&m, &fingerprint(), &FakeCompiler::logging(&env.log))
        .unwrap();
    assert_eq!(r.outcome, Outcome::Compiled);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the dead compiler's lock must be free"
    );
    assert_eq!(count_lines(&env.log, "start "), 2);
    assert_eq!(cache.verify().unwrap().ok, vec![key]);
}

#[test]
fn a_waiter_gives_up_on_a_compile_that_makes_no_progress_naming_it() {
    let env = Env::new();
    let m = env.module("stuck.wasm");
    let marker = env.dir.path().join("halfway");
    // Says it compiles, and sleeps: no CPU time used.
    let mut child = env.spawn(
        &m,
        &[
            ("CACHE_TEST_MARKER", marker.display().to_string()),
            ("CACHE_TEST_PAUSE_MS", "60000".into()),
        ],
    );
    wait_for(&marker, Duration::from_secs(30));
    let mut cfg = CacheConfig::new(&env.root);
    cfg.stall_timeout = Duration::from_millis(500);
    let cache = Cache::open(cfg).unwrap();
    let started = Instant::now();
    let e = cache
        .get_or_compile(&m, &fingerprint(), &FakeCompiler::logging(&env.log))
        .unwrap_err();
    let waited = started.elapsed();
    let holder = child.id();
    let _ = child.kill();
    let _ = child.wait();
    let key = cache.key_for(&m, &fingerprint()).unwrap();
    let lock = env.root.join(format!("v1/locks/{key}.lock"));
    assert!(matches!(e, Error::Stalled { .. }), "{e:?}");
    assert_eq!(
        e.to_string().split(" made no progress").next().unwrap(),
        format!(
            "the compile holding key lock {} for key {key} (pid [{holder}])",
            lock.display()
        )
    );
    assert!(waited >= Duration::from_millis(500) && waited < Duration::from_secs(10));
}

#[test]
fn a_waiter_follows_a_compile_that_makes_progress_however_long_it_takes() {
    let env = Env::new();
    let m = env.module("busy.wasm");
    let marker = env.dir.path().join("halfway");
    // Uses the CPU for 4 s, four times the stall limit of the waiter below. The limit is
    // 1 s, not less: on a loaded machine (CI runs two test binaries at once) a spinning
    // process can go half a second without a turn on a CPU, which is no stall.
    let mut child = env.spawn(
        &m,
        &[
            ("CACHE_TEST_MARKER", marker.display().to_string()),
            ("CACHE_TEST_PAUSE_MS", "4000".into()),
            ("CACHE_TEST_SPIN", "1".into()),
        ],
    );
    wait_for(&marker, Duration::from_secs(30));
    let mut cfg = CacheConfig::new(&env.root);
    cfg.stall_timeout = Duration::from_secs(1);
    // Whoever waits can say whose compile it waits for (the admin tool prints it).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook_seen = seen.clone();
    cfg.on_wait = Some(wasmedge_aot_cache::WaitHook::new(move |w| {
        hook_seen.lock().unwrap().push(w.holders.clone());
    }));
    cfg.wait_report_interval = Duration::from_millis(200);
    let cache = Cache::open(cfg).unwrap();
    let r = cache
        .get_or_compile(&m, &fingerprint(), &FakeCompiler::logging(&env.log))
        .unwrap();
    assert_eq!(r.outcome, Outcome::WaitedHit);
    let holder = child.id();
    assert!(child.wait().unwrap().success());
    assert_eq!(count_lines(&env.log, "start "), 1, "compiled once");
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty(), "the wait was reported");
    assert!(
        seen.iter()
            .all(|h| h.len() == 1 && h[0].pid == holder && h[0].state == "compiling"),
        "{seen:?}"
    );
}

/// Issue 13, finding 5: a process's pending counters were copied into every process it forked,
/// and each merged them again (7 tampers showed as 35 invalid entries; 49 waiting starts
/// added 99 hits).
#[test]
fn counters_of_a_forking_process_count_each_event_once() {
    let env = Env::new();
    let (hit, tampered, shared) = (
        env.module("hit"),
        env.module("tampered"),
        env.module("shared"),
    );
    {
        let cache = Cache::open(CacheConfig::new(&env.root)).unwrap();
        let c = FakeCompiler::logging(&env.log);
        cache.get_or_compile(&hit, &fingerprint(), &c).unwrap();
        let t = cache.get_or_compile(&tampered, &fingerprint(), &c).unwrap();
        let so = &t.artifact.path;
        fs::set_permissions(so, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        let mut bytes = fs::read(so).unwrap();
        bytes[0] ^= 0xff;
        fs::write(so, bytes).unwrap();
        fs::set_permissions(so, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    }
    let forks = 5;
    let mut server = env.spawn(
        &shared,
        &[
            ("CACHE_TEST_HIT_MODULE", hit.display().to_string()),
            ("CACHE_TEST_TAMPERED_MODULE", tampered.display().to_string()),
            ("CACHE_TEST_FORKS", forks.to_string()),
            ("CACHE_TEST_PAUSE_MS", "300".into()),
            (ROLE, "fork".into()),
        ],
    );
    assert!(server.wait().unwrap().success());
    assert_eq!(count_lines(&env.log, "start "), 3, "hit, tampered, shared");
    let s = Cache::open(CacheConfig::new(&env.root))
        .unwrap()
        .stats()
        .unwrap();
    // One hit in the server, forks - 1 children that waited for the one that compiled.
    assert_eq!(s.hits, forks as u64, "{s:?}");
    assert_eq!(s.invalid_entries, 1, "{s:?}");
    assert_eq!((s.misses, s.compiles), (3, 3), "{s:?}");
}
