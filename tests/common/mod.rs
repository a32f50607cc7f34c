//! Test harness: a real containerd that the tests start themselves, with a private config,
//! root, state, sockets and shim configuration under a temporary directory, and the shim
//! binaries of this build first on its PATH. It never touches the system's containerd.
//!
//! One containerd serves all the tests of a test binary ([`containerd`]); each test uses its
//! own container ids. Tests need root (mounts, cgroups); without it they say so and return,
//! unless `WASMEDGE_SHIM_REQUIRE_ROOT_TESTS=1` (set by CI), which turns the skip into a failure.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cgroup;
pub mod docker;
pub mod images;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const RUNTIME: &str = "io.containerd.wasmedge.v1";
/// The containerd namespace of this test process's containers. Unique per process: ctr puts
/// a container's cgroup at `/<namespace>/<id>`, and two test runs on one machine (or two
/// test binaries at once) must not share cgroups of the same container id.
pub fn namespace() -> &'static str {
    static NS: OnceLock<String> = OnceLock::new();
    NS.get_or_init(|| format!("wasmedge-tests-{}", std::process::id()))
}

/// The shim binaries under test; cargo builds them before any integration test.
pub fn shim_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_containerd-shim-wasmedge-v1"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The bridge CNI makes for this test process's pods (a name of at most 15 bytes).
pub fn cni_bridge() -> String {
    format!("wt{}", std::process::id() % 100_000_000)
}

/// The runner binary, which the shim finds next to itself. It belongs to another package
/// of the workspace (`runner/`), so cargo does not build it for these tests by itself:
/// `cargo build --workspace --bins` first (`scripts/test.sh` does).
pub fn runner_bin() -> PathBuf {
    workspace_bin("wasmedge-shim-runner")
}

/// The admin tool, `wasmedge-shimctl`, of another package (`admin/`): built as the runner is.
pub fn shimctl_bin() -> PathBuf {
    workspace_bin("wasmedge-shimctl")
}

/// A binary of another package of the workspace, next to the shim in the target directory.
fn workspace_bin(name: &str) -> PathBuf {
    let bin = shim_dir().join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        bin.display()
    );
    bin
}

fn target_dir() -> PathBuf {
    // <target>/<profile>/containerd-shim-wasmedge-v1 → <target>
    shim_dir().parent().unwrap().to_owned()
}

/// Whether this process may run the containerd tests. Prints why not, once per test.
pub fn can_run(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("WASMEDGE_SHIM_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: needs root (containerd, mounts, cgroups) and CI requires it");
    }
    eprintln!("skipped {test}: needs root (it starts a real containerd)");
    false
}

/// The test programs of tests/fixtures, built once per test binary (and cached on disk).
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = target_dir().join("fixtures");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{} failed", script.display());
        out
    })
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A directory to use as a container's rootfs (`ctr run --rootfs`), holding copies of files.
pub struct Rootfs {
    pub dir: tempfile::TempDir,
}

impl Rootfs {
    pub fn with(files: &[(&str, &Path)]) -> Rootfs {
        let dir = tempfile::Builder::new().prefix("rootfs").tempdir().unwrap();
        for (dst, src) in files {
            let to = dir.path().join(dst.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(src, &to).unwrap();
        }
        Rootfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, path: &str, contents: &str) {
        let to = self.dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, contents).unwrap();
    }
}

/// A private containerd.
pub struct Containerd {
    pub dir: PathBuf,
    pub address: PathBuf,
    pub cache_dir: PathBuf,
    child: Mutex<Child>,
}

/// A running `ctr events` (see [`Containerd::events`]): a line per event, with its
/// namespace, topic and the event as JSON.
pub struct Events {
    child: Child,
    lines: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Events {
    /// Waits until an event line contains every one of `needles`, and returns it; panics
    /// with the lines seen after `timeout`.
    pub fn wait_for(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if let Some(l) = lines.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no event with {needles:?} in {timeout:?}; saw:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The event lines seen so far that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a container is run.
#[derive(Default, Clone)]
pub struct Run {
    pub id: String,
    /// An image reference, or `None` with `rootfs` set.
    pub image: Option<String>,
    pub rootfs: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// `type=bind,src=..,dst=..,options=rbind:ro` strings for `ctr run --mount`.
    pub mounts: Vec<String>,
    pub annotations: Vec<String>,
    pub runtime: Option<String>,
    /// The container's memory limit in bytes (its cgroup's).
    pub memory_limit: Option<u64>,
    /// More `ctr run` flags (`--user`, `--seccomp`, `--cap-drop`, ...).
    pub flags: Vec<String>,
    pub timeout: Option<Duration>,
}

impl Run {
    pub fn rootfs(id: &str, rootfs: &Path, args: &[&str]) -> Run {
        Run {
            id: id.into(),
            rootfs: Some(rootfs.to_owned()),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Run::default()
        }
    }

    pub fn image(id: &str, image: &str, args: &[&str]) -> Run {
        Run {
            id: id.into(),
            image: Some(image.into()),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Run::default()
        }
    }
}

#[derive(Debug)]
pub struct RunResult {
    pub stdout: String,
    pub stderr: String,
    pub code: Option<i32>,
    pub elapsed: Duration,
}

impl RunResult {
    /// What a finished client command (`ctr`, `docker`) printed and returned, started at
    /// `started`.
    pub fn of(out: &Output, started: Instant) -> RunResult {
        RunResult {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code(),
            elapsed: started.elapsed(),
        }
    }
}

/// The containerd under test. `WASMEDGE_SHIM_CONTAINERD` names its binary (`scripts/test.sh`
/// runs the tests that talk to containerd a second time with containerd 2.x); otherwise it
/// is `containerd` on PATH. `ctr` is the one beside that binary, else the one on PATH: each
/// containerd is driven by its own client, as a user of that version would.
#[derive(Debug)]
pub struct ContainerdBinary {
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    /// The major version `containerd --version` reports: 1 reads config `version = 2`, 2
    /// reads `version = 3`.
    pub major: u64,
}

impl ContainerdBinary {
    /// The directory of the containerd binary, where its runc shim is too.
    pub fn bin_dir(&self) -> PathBuf {
        self.containerd
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }
}

/// The environment variable that names the containerd binary under test.
pub const CONTAINERD_ENV: &str = "WASMEDGE_SHIM_CONTAINERD";

pub fn containerd_binary() -> &'static ContainerdBinary {
    static BINARY: OnceLock<ContainerdBinary> = OnceLock::new();
    BINARY.get_or_init(|| {
        let containerd = std::env::var_os(CONTAINERD_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("containerd"));
        let beside = containerd.parent().map(|d| d.join("ctr"));
        let ctr = beside
            .filter(|c| c.is_file())
            .unwrap_or_else(|| PathBuf::from("ctr"));
        let out = Command::new(&containerd)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{} --version: {e}", containerd.display()));
        let text = String::from_utf8_lossy(&out.stdout);
        let major = wasmedge_shimctl::install::parse_containerd_major(&text).unwrap_or_else(|| {
            panic!(
                "no version in `{} --version`: {text:?}",
                containerd.display()
            )
        });
        eprintln!(
            "containerd under test: {} ({})",
            containerd.display(),
            text.trim()
        );
        ContainerdBinary {
            containerd,
            ctr,
            major,
        }
    })
}

/// The runtime handlers the harness registers besides `wasmedge` (which has no options), whose
/// options name a cgroup driver as `wasmedge-shimctl install` writes it: `SystemdCgroup =
/// true` and `false`.
pub const SYSTEMD_CGROUP_HANDLERS: [(&str, bool); 2] =
    [("wasmedge-systemd", true), ("wasmedge-cgroupfs", false)];

/// The config of a private containerd in `dir`: its own root, state and sockets, debug logs,
/// a minute (not 5 s) for the clean-up of a dead shim's task (the node VM is emulated in
/// software: there `containerd-shim-wasmedge-v1 delete` of a killed shim's two tasks, each a
/// fresh process that asks systemd or runc, took over 5 s and containerd killed it), the
/// runtime registered (also as [`SYSTEMD_CGROUP_HANDLERS`]), and with `cri` the CRI plugin
/// with CNI in `dir/cni`. Layout
/// `version = 2` for containerd 1.x, `version = 3` for 2.x (whose CRI plugin is split into
/// `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`).
fn containerd_config(dir: &Path, address: &Path, cri: bool) -> String {
    let d = dir.display();
    let common = format!(
        r#"root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{a}"
[ttrpc]
  address = "{a}.ttrpc"
[debug]
  level = "debug"
"#,
        a = address.display(),
    );
    // runc's pods with the node's driver, as a node's containerd is configured (CRI gives
    // pods in slices systemd paths, which runc reads only with its systemd driver).
    let systemd = cgroup::on_systemd();
    let option_runtimes = |plugin: &str, indent: &str| {
        SYSTEMD_CGROUP_HANDLERS
            .iter()
            .map(|(name, on)| {
                format!(
                    "{indent}[plugins.\"{plugin}\".containerd.runtimes.{name}]\n\
                     {indent}  runtime_type = \"{RUNTIME}\"\n\
                     {indent}  [plugins.\"{plugin}\".containerd.runtimes.{name}.options]\n\
                     {indent}    SystemdCgroup = {on}\n"
                )
            })
            .collect::<String>()
    };
    if containerd_binary().major < 2 {
        let cri_config = if cri {
            format!(
                r#"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "registry.k8s.io/pause:3.8"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = {systemd}
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmedge]
      runtime_type = "{RUNTIME}"
{options}  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/net.d"
"#,
                options = option_runtimes("io.containerd.grpc.v1.cri", "    "),
            )
        } else {
            format!(
                r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmedge]
  runtime_type = "{RUNTIME}"
"#
            )
        };
        return format!("version = 2\n{common}{cri_config}{TIMEOUTS}");
    }
    // 2.x: NRI is on by default and listens on one system-wide socket; every test containerd
    // would fight for it, and none uses it. The `opt` plugin's directory is ours too.
    let disabled = if cri {
        r#"["io.containerd.nri.v1.nri"]"#
    } else {
        r#"["io.containerd.nri.v1.nri", "io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]"#
    };
    let cri_config = if cri {
        format!(
            r#"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.8"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      SystemdCgroup = {systemd}
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.wasmedge]
    runtime_type = "{RUNTIME}"
{options}  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{d}/cni/bin"]
    conf_dir = "{d}/cni/net.d"
"#,
            options = option_runtimes("io.containerd.cri.v1.runtime", "  "),
        )
    } else {
        String::new()
    };
    format!(
        r#"version = 3
disabled_plugins = {disabled}
{common}[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{cri_config}{TIMEOUTS}"#
    )
}

/// containerd's timeouts in a private containerd's config (a table, so last).
const TIMEOUTS: &str = r#"[timeouts]
  "io.containerd.timeout.shim.cleanup" = "60s"
"#;

/// A directory to give [`Containerd::start_with_bin`]: the shim binaries of this build
/// (links) and a `runc` of the test's own, a shell script whose `$RUNC` is the real runc and
/// `$@` runc's arguments (`--root <dir> --log <file> --log-format json <command> ...`, as
/// the shim passes them). The shim runs the first `runc` on containerd's PATH, so this is
/// how a test makes runc slow or fail.
pub fn bin_with_runc(script: &str) -> tempfile::TempDir {
    runner_bin();
    let bin = tempfile::Builder::new().prefix("bin").tempdir().unwrap();
    for name in ["containerd-shim-wasmedge-v1", "wasmedge-shim-runner"] {
        std::os::unix::fs::symlink(shim_dir().join(name), bin.path().join(name)).unwrap();
    }
    let real = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .expect("runc on PATH");
    let path = bin.path().join("runc");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nRUNC='{}'\n{script}\n", real.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

static SHARED: OnceLock<Containerd> = OnceLock::new();

/// The containerd shared by the tests of this binary, started on first use and shut down
/// (shims killed, mounts and temp dir removed) when the test process exits.
pub fn containerd() -> &'static Containerd {
    let ctd = SHARED.get_or_init(|| Containerd::start(false));
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| images::shutdown_at_exit(ctd));
    ctd
}

impl Containerd {
    /// Starts a containerd of our own. `cri` enables the CRI plugin (Kubernetes tests).
    pub fn start(cri: bool) -> Containerd {
        Self::start_with(cri, "")
    }

    /// Like [`Containerd::start`], with extra lines for the shim's config file (a
    /// `cache_dir` line there overrides the private default).
    pub fn start_with(cri: bool, shim_config_extra: &str) -> Containerd {
        Self::start_with_bin(cri, shim_config_extra, &shim_dir())
    }

    /// Like [`Containerd::start_with`], finding the shim binaries in `bin_dir` (a test that
    /// upgrades them works on copies).
    pub fn start_with_bin(cri: bool, shim_config_extra: &str, bin_dir: &Path) -> Containerd {
        if bin_dir == shim_dir() {
            runner_bin();
        }
        let dir = tempfile::Builder::new()
            .prefix("wasmedge-ctd")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        let address = dir.join("containerd.sock");
        let cache_dir = dir.join("var/cache");
        let shim_config = dir.join("shim.toml");
        let shim_config_text = if shim_config_extra.contains("cache_dir") {
            shim_config_extra.to_string()
        } else {
            format!(
                "cache_dir = \"{}\"\n{shim_config_extra}",
                cache_dir.display()
            )
        };
        std::fs::write(&shim_config, shim_config_text).unwrap();
        if cri {
            // CNI from Debian's containernetworking-plugins: pods that are not on the host's
            // network get a namespace of their own, as on a real node. A bridge of this
            // containerd's own (removed at shutdown) on a private subnet, no gateway, no
            // masquerading: the host's routes and firewall are untouched.
            let bin = dir.join("cni/bin");
            let conf = dir.join("cni/net.d");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::create_dir_all(&conf).unwrap();
            for plugin in ["loopback", "bridge", "host-local"] {
                std::os::unix::fs::symlink(format!("/usr/lib/cni/{plugin}"), bin.join(plugin))
                    .unwrap();
            }
            std::fs::write(
                conf.join("10-wasmedge-tests.conflist"),
                format!(
                    r#"{{"cniVersion": "1.0.0", "name": "wasmedge-tests", "plugins": [
                        {{"type": "bridge", "bridge": "{bridge}", "isGateway": false, "ipMasq": false,
                          "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.249.0.0/16"}}]],
                                   "dataDir": "{d}/cni/ipam"}}}}]}}"#,
                    bridge = cni_bridge(),
                    d = dir.display()
                ),
            )
            .unwrap();
        }
        let config = containerd_config(&dir, &address, cri);
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        // The containerd under test finds its own runc shim first (2.x ships one of its own).
        let binary = containerd_binary();
        let path = format!(
            "{}:{}:{}",
            bin_dir.display(),
            binary.bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new(&binary.containerd);
        cmd.arg("--config")
            .arg(dir.join("config.toml"))
            .env("PATH", path)
            .env("WASMEDGE_AOT_SHIM_CONFIG", &shim_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // containerd dies with the test process (the parent thread below never exits).
        let child = spawn_with_parent_death_signal(cmd);
        let ctd = Containerd {
            dir,
            address,
            cache_dir,
            child: Mutex::new(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer:\n{}",
                ctd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ctd
    }

    /// Runs `ctr -a SOCK -n <namespace> args...`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(&containerd_binary().ctr)
            .arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(namespace())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctr` that must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}\n--- containerd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn import(&self, archive: &Path) {
        self.ctr_ok(&["images", "import", archive.to_str().unwrap()]);
    }

    fn run_args(&self, r: &Run, detach: bool) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        a.push(if detach { "-d" } else { "--rm" }.into());
        a.push("--fifo-dir".into());
        a.push(self.dir.join("fifo").display().to_string());
        if r.runtime.as_deref() == Some(images::RUNC) {
            // runc's state root defaults to the system's /run/containerd/runc, shared by every
            // containerd: two test binaries with the same namespace and id would collide.
            a.push("--runc-root".into());
            a.push(self.dir.join("runc").display().to_string());
        }
        a.extend(Self::container_args(r));
        a
    }

    /// What `ctr run` and `ctr container create` share: runtime, process, root, id, argv.
    fn container_args(r: &Run) -> Vec<String> {
        let mut a: Vec<String> = vec!["--runtime".into()];
        a.push(r.runtime.clone().unwrap_or_else(|| RUNTIME.into()));
        for e in &r.env {
            a.push("--env".into());
            a.push(e.clone());
        }
        if let Some(cwd) = &r.cwd {
            a.push("--cwd".into());
            a.push(cwd.clone());
        }
        for m in &r.mounts {
            a.push("--mount".into());
            a.push(m.clone());
        }
        for an in &r.annotations {
            a.push("--annotation".into());
            a.push(an.clone());
        }
        if let Some(bytes) = r.memory_limit {
            a.push("--memory-limit".into());
            a.push(bytes.to_string());
        }
        a.extend(r.flags.iter().cloned());
        match (&r.image, &r.rootfs) {
            (Some(image), _) => a.push(image.clone()),
            (None, Some(rootfs)) => {
                a.push("--rootfs".into());
                a.push(rootfs.display().to_string());
            }
            (None, None) => panic!("run {} needs an image or a rootfs", r.id),
        }
        a.push(r.id.clone());
        a.extend(r.args.iter().cloned());
        a
    }

    /// `ctr run --rm`: runs the container to its end and removes it.
    pub fn run(&self, r: &Run) -> RunResult {
        self.ctr_timed(&self.run_args(r, false), r.timeout, &r.id)
    }

    /// `ctr container create`: the container record and its snapshot, no task yet.
    /// (runc's state then lives under the system's /run/containerd/runc: use unique ids.)
    pub fn create_container(&self, r: &Run) {
        let mut args: Vec<String> = vec!["container".into(), "create".into()];
        args.extend(Self::container_args(r));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_ok(&args);
    }

    /// `ctr task start` of a created container, attached: creates the task, starts it
    /// and returns at its exit (the task is left stopped, for `remove`).
    pub fn start_attached(&self, id: &str) -> RunResult {
        let fifo = self.dir.join("fifo").display().to_string();
        let args = ["task", "start", "--fifo-dir", &fifo, id].map(String::from);
        self.ctr_timed(&args, None, id)
    }

    /// Runs `ctr -a SOCK -n <namespace> args...` to its end, timing it.
    fn ctr_timed(&self, args: &[String], timeout: Option<Duration>, id: &str) -> RunResult {
        let started = Instant::now();
        let mut child = Command::new(&containerd_binary().ctr)
            .arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(namespace())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let timeout = timeout.unwrap_or(Duration::from_secs(60));
        let out = wait_with_timeout(&mut child, timeout).unwrap_or_else(|| {
            panic!(
                "ctr {} {id} did not finish in {timeout:?}\n{}",
                args[0],
                self.log_tail()
            )
        });
        RunResult::of(&out, started)
    }

    /// `ctr run -d`: starts the container and returns at once.
    pub fn run_detached(&self, r: &Run) {
        let args = self.run_args(r, true);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ctr_ok(&args);
    }

    /// The task's status column in `ctr task ls` (`RUNNING`, `STOPPED`, ...), if listed.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[0] == id).then(|| f[2].to_string())
            })
            .next()
    }

    pub fn task_pid(&self, id: &str) -> Option<i32> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 3 && f[0] == id).then(|| f[1].parse().ok())
            })
            .next()
            .flatten()
    }

    /// Waits until the task reaches `status`, or panics after `timeout`.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.task_status(id).as_deref() == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} did not reach {status} in {timeout:?} (now {:?})\n{}",
                self.task_status(id),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes task and container, whatever state they are in.
    pub fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.task_status(id).is_some_and(|s| s != "STOPPED") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.ctr(&["task", "rm", id]);
        let _ = self.ctr(&["container", "rm", id]);
    }

    /// `ctr events`: what containerd publishes from now on, until the returned value is
    /// dropped.
    pub fn events(&self) -> Events {
        let mut child = Command::new(&containerd_binary().ctr)
            .arg("-a")
            .arg(&self.address)
            .arg("events")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        Events { child, lines }
    }

    /// The last lines of containerd's log (with the shim's), for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The bundle directory containerd gives a task of ours.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(namespace())
            .join(id)
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }
}

/// Spawns `cmd` from a thread that lives as long as the process, with `PR_SET_PDEATHSIG`,
/// so that the child is killed when the test process ends (statics are never dropped).
pub fn spawn_with_parent_death_signal(mut cmd: Command) -> Child {
    use std::os::unix::process::CommandExt;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        tx.send(cmd.spawn().unwrap()).unwrap();
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap()
}

/// Waits for `child` up to `timeout`, killing it after; `None` on timeout.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<Output> {
    let deadline = Instant::now() + timeout;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            std::io::Read::read_to_end(s, &mut buf).ok();
        }
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            std::io::Read::read_to_end(s, &mut buf).ok();
        }
        buf
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(Output {
                status,
                stdout: out_thread.join().unwrap(),
                stderr: err_thread.join().unwrap(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A copy of the probe module made unique by a custom section, so that it has a cache key
/// no other test shares. Returns a rootfs holding it at `/probe.wasm`.
pub fn unique_probe(tag: &str) -> Rootfs {
    let mut bytes = std::fs::read(fixture("probe.wasm")).unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = b"test-unique";
    let payload = format!("{tag}-{nanos}-{}", std::process::id());
    let body_len = 1 + name.len() + payload.len();
    assert!(body_len < 128 && name.len() < 128);
    bytes.push(0); // custom section
    bytes.push(body_len as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload.as_bytes());
    let r = Rootfs::with(&[]);
    std::fs::write(r.path().join("probe.wasm"), bytes).unwrap();
    r
}

/// The shim's create line for container `id` in containerd's log: `(cache outcome, tier)`.
pub fn create_outcome(log: &str, id: &str) -> Option<(String, String)> {
    let needle = format!("container {id}: cgroup");
    let line = log.lines().rev().find(|l| l.contains(&needle))?;
    let cache = line.split("cache ").nth(1)?.split(',').next()?.to_string();
    // `tier native O2` or `tier interpreter`: the tier's name, without its level.
    let tier = line
        .split("tier ")
        .nth(1)?
        .split(['"', ' '])
        .next()?
        .to_string();
    Some((cache, tier))
}

/// A field of `/proc/PID/stat` counted from the state (0), which follows the command name:
/// ppid is 1, starttime 19.
fn stat_field<T: std::str::FromStr>(pid: i32, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(n)?
        .parse()
        .ok()
}

pub fn ppid(pid: i32) -> Option<i32> {
    stat_field(pid, 1)
}

/// The runner process of the shim `shim`. Container processes run the runner binary as
/// the shim's children too, but the runner started before any of them: it is the oldest.
pub fn runner_of(shim: i32) -> Option<i32> {
    processes_matching("wasmedge-shim-runner")
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|&pid| ppid(pid) == Some(shim))
        .filter_map(|pid| Some((stat_field::<u64>(pid, 19)?, pid)))
        .min()
        .map(|(_, pid)| pid)
}

/// Processes that run with this containerd's shim configuration: its shims (by the config
/// path containerd gives them), their runners, container processes and compiles (by the
/// config the shim hands its runner, which names this containerd's cache: the private
/// default, or the one its config names now, which a test may have changed).
pub fn processes_of(ctd: &Containerd) -> Vec<i32> {
    let config = ctd.dir.join("shim.toml");
    let configured = std::fs::read_to_string(&config)
        .ok()
        .and_then(|t| wasmedge_aot_protocol::config::Config::parse(&t).ok())
        .map(|c| c.cache_dir);
    let mut needles = vec![format!("WASMEDGE_AOT_SHIM_CONFIG={}\0", config.display())];
    for dir in [Some(ctd.cache_dir.clone()), configured]
        .into_iter()
        .flatten()
    {
        needles.push(format!(
            "\"cache_dir\":{}",
            serde_json::to_string(&dir).unwrap()
        ));
    }
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                needles
                    .iter()
                    .any(|n| env.windows(n.len()).any(|w| w == n.as_bytes()))
            })
        })
        .collect()
}

/// The compile processes of this containerd's runners: runner processes whose parent is
/// a runner (container processes are the shim's children).
pub fn compiles_of(ctd: &Containerd) -> Vec<i32> {
    let mine = processes_of(ctd);
    let is_runner = |pid: i32| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .is_ok_and(|e| e.file_name().is_some_and(|n| n == "wasmedge-shim-runner"))
    };
    mine.iter()
        .copied()
        .filter(|&pid| {
            is_runner(pid) && ppid(pid).is_some_and(|p| is_runner(p) && mine.contains(&p))
        })
        .collect()
}

/// Processes whose command line mentions `needle` (for leak checks).
pub fn processes_matching(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Mount points at or below `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.display().to_string();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&p))
        .collect()
}

/// Detaches every mount at or below `dir`, deepest first (nested mounts come off before
/// their parents), then removes `dir`, unless `WASMEDGE_TESTS_KEEP=1` keeps it to look at.
pub fn unmount_and_remove(dir: &Path) {
    let mut mounts = mounts_under(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    if std::env::var_os("WASMEDGE_TESTS_KEEP").is_some_and(|v| v == "1") {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Writes `text` to a new file in a fresh temp dir and returns both.
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    (dir, path)
}

impl Containerd {
    /// Runs `ctr -a SOCK -n NS args...` in a namespace of our choice (CRI uses `k8s.io`).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new(&containerd_binary().ctr)
            .arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `ctr -n NS` that must succeed; returns its stdout.
    pub fn ctr_in_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr_in(namespace, args);
        assert!(
            out.status.success(),
            "ctr -n {namespace} {args:?} failed: {}\n--- containerd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
