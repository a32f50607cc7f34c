//! Docker Engine in the tests: a dockerd of the harness's own on a private containerd of the
//! harness's (started as [`Containerd::start`] starts every test containerd, with this
//! build's shim first on its PATH), so that `docker run --runtime io.containerd.wasmedge.v1`
//! reaches the shim under test as a Docker user's would.
//!
//! The dockerd has its own data root, exec root, pid file and socket under a temporary
//! directory, the containerd image store (`"features": {"containerd-snapshotter": true}`,
//! which Wasm images need: Docker's own store keeps only the host's platform), and touches
//! no firewall or bridge of the host (`--iptables=false`, `--ip6tables=false`,
//! `--bridge=none`: there is no default bridge network, so a container needs `--network`
//! `host`, `none` or a network a test creates). Docker's containers live in containerd's
//! `moby` namespace.
//!
//! The binaries are Debian's (`scripts/setup.sh`), by path: a `docker` of another origin may
//! come first on PATH. The CLI reads a configuration directory of the harness's own
//! (`DOCKER_CONFIG`), never the user's contexts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::images::Archive;
use super::{Containerd, RunResult};

/// Debian's Docker client (`docker-cli`).
pub const DOCKER: &str = "/usr/bin/docker";
/// Debian's Docker daemon (`docker.io`).
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// What `docker run` needs to run a Wasm image with the shim: its runtime, and the image's
/// platform (without it Docker looks for a `linux/amd64` image and finds none).
pub const WASM: [&str; 4] = ["--runtime", super::RUNTIME, "--platform", "wasip1/wasm"];

/// Whether this process may run the Docker tests: those of the containerd tests
/// ([`super::can_run`]), and Debian's dockerd and docker installed. Prints why not; in CI
/// (`WASMEDGE_SHIM_REQUIRE_ROOT_TESTS=1`) a missing Docker is a failure, not a skip.
pub fn can_run(test: &str) -> bool {
    if !super::can_run(test) {
        return false;
    }
    let missing: Vec<&str> = [DOCKERD, DOCKER]
        .into_iter()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("WASMEDGE_SHIM_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: {missing:?} missing (scripts/setup.sh test installs Docker) and CI requires it");
    }
    eprintln!("skipped {test}: {missing:?} missing (scripts/setup.sh test installs Docker)");
    false
}

/// A dockerd of the harness's own and the containerd it runs on.
pub struct Dockerd {
    pub ctd: Containerd,
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Mutex<Child>,
    /// The archives `docker load`ed so far (see [`Dockerd::load`]).
    loaded: Mutex<Vec<PathBuf>>,
}

static SHARED: OnceLock<Dockerd> = OnceLock::new();

/// The dockerd shared by the tests of this binary, started on first use and stopped, with
/// its containerd, when the test process exits (statics are never dropped; libtest exits
/// normally after a panicking test too).
pub fn dockerd() -> &'static Dockerd {
    let d = SHARED.get_or_init(Dockerd::start);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        extern "C" fn at_exit() {
            if let Some(d) = SHARED.get() {
                d.shutdown();
            }
        }
        // SAFETY: `at_exit` is a plain `extern "C" fn()` that lives as long as the process;
        // it runs after the tests, when libtest calls exit().
        let rc = unsafe { libc::atexit(at_exit) };
        assert_eq!(rc, 0, "atexit failed");
    });
    d
}

impl Dockerd {
    /// Starts a containerd and a dockerd on it; returns once `docker version` answers.
    pub fn start() -> Dockerd {
        let ctd = Containerd::start(false);
        // A short path: dockerd puts sockets and FIFOs under its exec root (108-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("wdk")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let socket = dir.join("docker.sock");
        std::fs::create_dir_all(dir.join("cli")).unwrap();
        std::fs::write(
            dir.join("daemon.json"),
            r#"{"features": {"containerd-snapshotter": true}}"#,
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let mut cmd = Command::new(DOCKERD);
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--containerd")
            .arg(&ctd.address)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // dockerd dies with the test process even if the exit handler never runs.
        let child = super::spawn_with_parent_death_signal(cmd);
        let d = Dockerd {
            ctd,
            dir,
            socket,
            child: Mutex::new(child),
            loaded: Mutex::new(Vec::new()),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if d.docker(&["version"]).code == Some(0) {
                break;
            }
            let exited = d.child.lock().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dockerd did not answer (exited: {exited:?}):\n{}",
                d.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    /// `docker -H <our socket> ARGS`, run to its end (at most 60 s), timed.
    pub fn docker(&self, args: &[&str]) -> RunResult {
        self.docker_in(args, None)
    }

    /// As [`Dockerd::docker`], with `input` on the client's stdin.
    pub fn docker_in(&self, args: &[&str], input: Option<&str>) -> RunResult {
        let started = Instant::now();
        let mut child = self
            .command(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{DOCKER}: {e}"));
        if let Some(text) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(text.as_bytes()).unwrap();
        }
        let timeout = Duration::from_secs(60);
        let out = super::wait_with_timeout(&mut child, timeout).unwrap_or_else(|| {
            panic!(
                "docker {args:?} did not finish in {timeout:?}\n{}",
                self.log_tail()
            )
        });
        RunResult::of(&out, started)
    }

    /// The client's command line against our dockerd, for tests that time or drive it
    /// themselves.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DOCKER);
        cmd.env("DOCKER_CONFIG", self.dir.join("cli"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        cmd
    }

    /// `docker ARGS` that must exit 0; returns its stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert_eq!(
            out.code,
            Some(0),
            "docker {args:?}: {out:?}\n--- dockerd ---\n{}\n--- containerd ---\n{}",
            self.log_tail(),
            self.ctd.log_tail()
        );
        out.stdout
    }

    /// `docker load -i ARCHIVE` (an OCI archive of the harness's, Wasm or native), once per
    /// archive; checks that the image is then listed.
    pub fn load(&self, archive: &Archive) {
        let mut loaded = self.loaded.lock().unwrap();
        if loaded.contains(&archive.path) {
            return;
        }
        let out = self.docker_ok(&["load", "-i", archive.path.to_str().unwrap()]);
        assert!(
            out.contains(&archive.reference),
            "docker load of {} said: {out}",
            archive.path.display()
        );
        loaded.push(archive.path.clone());
    }

    /// The last lines of dockerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops dockerd and its containerd and removes what they left: containers first
    /// (through dockerd, so that runtimes clean up), then the networks the tests made (a
    /// bridge network's Linux bridge outlives dockerd), then dockerd (SIGTERM, SIGKILL after
    /// 15 s), its mounts and directory (kept with `WASMEDGE_TESTS_KEEP=1`), then containerd
    /// ([`Containerd::shutdown`]).
    pub fn shutdown(&self) {
        let ids = self.docker(&["ps", "-aq"]).stdout;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.docker(&args);
        }
        let _ = self.docker(&["network", "prune", "-f"]);
        let pid = self.child.lock().unwrap().id() as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut child = self.child.lock().unwrap();
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                }
                Ok(None) => {
                    drop(child);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        super::unmount_and_remove(&self.dir);
        // Docker's cgroup parent of its containers (cgroupfs driver), once empty.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join("docker"));
        }
        self.ctd.shutdown();
    }
}
