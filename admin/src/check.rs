//! `wasmedge-shimctl check`: whether a node has what the shim needs, with the evidence.
//!
//! Each condition is one [`Check`] that passes, fails or is skipped (with the reason), and says
//! whether it is required. [`CheckReport::ok`] is false when a required check failed; a
//! skipped check never fails the report. Every external command runs with a timeout, so a
//! hung containerd or API server cannot hang the check.
//!
//! About the shim's version: containerd-shim 0.11 parses `-v`/`-version` into
//! `Flags::version`, but its asynchronous `bootstrap` never acts on that flag (it reads
//! `TTRPC_ADDRESS` first and fails without it). So `containerd-shim-wasmedge-v1 -v` prints no
//! version; the check runs it without `TTRPC_ADDRESS` to prove the binary executes (the
//! dynamic loader and the program start) and parses a version only if one is printed.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::Serialize;
use wait_timeout::ChildExt;
use wasmedge_aot_cache::trust;
use wasmedge_aot_protocol::config::Config;
use wasmedge_aot_protocol::identity::{self, Identity, STATE_ROOT};

use crate::install::{
    registered_runtimes, runtime_systemd_cgroup, BINARIES, DEFAULT_CONTAINERD_CONFIG,
    DEFAULT_RUNTIME_NAME, NODE_LABEL_KEY, NODE_LABEL_VALUE, RUNTIME_TYPE, SYSTEMD_CGROUP,
};

pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
const SHIM_BINARY: &str = BINARIES[0];
const RUNNER_BINARY: &str = BINARIES[1];
/// The soname the runner links.
const LIBWASMEDGE: &str = "libwasmedge.so.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skipped,
}

/// One condition of the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id: `containerd`, `shim`, `runner`, `libwasmedge`, `runtime-registered`,
    /// `cache-dir`, `compile-failures`, `node-shims`, `cgroup-driver`, `runtimeclass`,
    /// `node-label`.
    pub name: &'static str,
    pub status: Status,
    /// Whether a failure makes the node unusable (and `check` exit non-zero).
    pub required: bool,
    /// What was seen: a version, a path, a command's error, or why it was skipped.
    pub evidence: String,
}

impl Check {
    fn new(name: &'static str, status: Status, evidence: impl Into<String>) -> Check {
        Check {
            name,
            status,
            required: true,
            evidence: evidence.into(),
        }
    }
    fn pass(name: &'static str, evidence: impl Into<String>) -> Check {
        Check::new(name, Status::Pass, evidence)
    }
    fn fail(name: &'static str, evidence: impl Into<String>) -> Check {
        Check::new(name, Status::Fail, evidence)
    }
    fn skipped(name: &'static str, evidence: impl Into<String>) -> Check {
        Check::new(name, Status::Skipped, evidence)
    }
}

/// All the checks of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub checks: Vec<Check>,
}

impl CheckReport {
    /// True unless a required check failed.
    pub fn ok(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| c.required && c.status == Status::Fail)
    }

    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// `{"ok": bool, "checks": [{"name", "status", "required", "evidence"}]}`
impl Serialize for CheckReport {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CheckReport", 2)?;
        st.serialize_field("ok", &self.ok())?;
        st.serialize_field("checks", &self.checks)?;
        st.end()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let status = match c.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skipped => "SKIP",
            };
            let optional = if c.required { "" } else { " (optional)" };
            writeln!(
                f,
                "{status}  {:<width$}  {}{optional}",
                c.name,
                c.evidence.replace('\n', "\n        ")
            )?;
        }
        let failed: Vec<_> = self
            .checks
            .iter()
            .filter(|c| c.required && c.status == Status::Fail)
            .map(|c| c.name)
            .collect();
        if failed.is_empty() {
            writeln!(f, "node is ready for the wasmedge runtime")
        } else {
            writeln!(f, "node is not ready: {} failed", failed.join(", "))
        }
    }
}

/// Options of [`check`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// containerd's GRPC socket.
    pub socket: PathBuf,
    /// containerd's config file (as `containerd --config`).
    pub containerd_config: PathBuf,
    /// Where the shim is; `None` = search `PATH`.
    pub shim_dir: Option<PathBuf>,
    /// The runtime name registered in containerd (the RuntimeClass's handler).
    pub runtime_name: String,
    /// The RuntimeClass to look for in the cluster.
    pub runtime_class: String,
    /// The shim's own config, for `cache_dir`.
    pub shim_config: PathBuf,
    /// This node's name in the cluster; `None` = the hostname.
    pub node_name: Option<String>,
    /// kubeconfig for kubectl; `None` = kubectl's default (`KUBECONFIG`, `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// The kubelet's configuration file, for its cgroup driver.
    pub kubelet_config: PathBuf,
    /// Limit of each external command.
    pub timeout: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            containerd_config: PathBuf::from(DEFAULT_CONTAINERD_CONFIG),
            shim_dir: None,
            runtime_name: DEFAULT_RUNTIME_NAME.to_string(),
            runtime_class: DEFAULT_RUNTIME_NAME.to_string(),
            shim_config: Config::path(),
            node_name: None,
            kubeconfig: None,
            kubelet_config: PathBuf::from(DEFAULT_KUBELET_CONFIG),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Runs every check.
pub fn check(opts: &CheckOptions) -> CheckReport {
    let mut checks = vec![check_containerd(opts)];
    let shim = find_binary(SHIM_BINARY, opts.shim_dir.as_deref());
    checks.push(check_shim(shim.as_deref(), opts));
    let runner = shim
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.join(RUNNER_BINARY));
    checks.push(check_runner(runner.as_deref()));
    checks.push(check_libwasmedge(runner.as_deref(), opts.timeout));
    let containerd_config = read_containerd_config(opts);
    checks.push(check_registered(&containerd_config, &opts.runtime_name));
    let config = Config::load_from(&opts.shim_config);
    checks.push(match &config {
        Ok(c) => check_cache_dir(&c.cache_dir, nix::unistd::geteuid().as_raw()),
        Err(e) => Check::fail("cache-dir", e.to_string()),
    });
    if let Ok(c) = &config {
        checks.push(check_compile_failures(c));
    }
    let installed = shim.as_deref().map(|shim| {
        let runner = shim.with_file_name(RUNNER_BINARY);
        Identity::of(shim, &runner, identity::config_digest(&opts.shim_config))
    });
    checks.push(check_node_shims(Path::new(STATE_ROOT), installed.as_ref()));
    let option = systemd_cgroup_option(&containerd_config, &opts.runtime_name);
    checks.push(check_cgroup_driver(&opts.kubelet_config, &option));
    checks.extend(check_kubernetes(opts));
    CheckReport { checks }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// The first non-empty line of stderr, else of stdout.
    fn first_error_line(&self) -> String {
        let pick = |s: &str| {
            s.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_string)
        };
        pick(&self.stderr)
            .or_else(|| pick(&self.stdout))
            .unwrap_or_else(|| "no output".to_string())
    }
}

/// Runs `cmd` with no stdin, killing it after `timeout`. Err when it could not start or timed
/// out, with a message that names the program.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<CmdOutput, String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    // Output goes to unlinked temporary files rather than pipes, so the wait needs no thread
    // to drain them: a child that writes more than a pipe holds cannot block, and a
    // grandchild that keeps the descriptors open cannot hold the wait past the child's exit.
    let capture =
        || tempfile::tempfile().map_err(|e| format!("run {program}: temporary file: {e}"));
    let (mut stdout, mut stderr) = (capture()?, capture()?);
    let into_stdio = |f: &std::fs::File| {
        f.try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("run {program}: {e}"))
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(into_stdio(&stdout)?)
        .stderr(into_stdio(&stderr)?)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("{program} not found"),
            _ => format!("run {program}: {e}"),
        })?;
    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{program} timed out after {}s", timeout.as_secs()));
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("wait for {program}: {e}"));
        }
    };
    Ok(CmdOutput {
        success: status.success(),
        stdout: read_captured(&mut stdout),
        stderr: read_captured(&mut stderr),
    })
}

/// What a child wrote into `file` (the child's writes moved the shared offset to the end).
fn read_captured(file: &mut std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    if file.rewind().is_ok() {
        let _ = file.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The server version in `ctr version` output (`Server:` then `  Version:  v1.7.24`).
pub fn parse_ctr_server_version(stdout: &str) -> Option<String> {
    let mut in_server = false;
    for line in stdout.lines() {
        let t = line.trim();
        if t == "Server:" {
            in_server = true;
        } else if t == "Client:" {
            in_server = false;
        } else if in_server {
            if let Some(v) = t.strip_prefix("Version:") {
                return Some(v.trim().to_string());
            }
        }
    }
    None
}

fn check_containerd(opts: &CheckOptions) -> Check {
    const NAME: &str = "containerd";
    let sock = &opts.socket;
    if !sock.exists() {
        return Check::fail(
            NAME,
            format!(
                "socket {} does not exist: is containerd running?",
                sock.display()
            ),
        );
    }
    let mut cmd = Command::new("ctr");
    cmd.arg("--address").arg(sock).arg("version");
    match run_with_timeout(&mut cmd, opts.timeout) {
        Err(e) => Check::fail(NAME, e),
        Ok(out) if !out.success => Check::fail(
            NAME,
            format!(
                "ctr --address {} version: {}",
                sock.display(),
                out.first_error_line()
            ),
        ),
        Ok(out) => match parse_ctr_server_version(&out.stdout) {
            Some(v) => Check::pass(
                NAME,
                format!("containerd {v} answers on {}", sock.display()),
            ),
            None => Check::fail(
                NAME,
                format!(
                    "ctr version printed no server version: {:?}",
                    out.stdout.trim()
                ),
            ),
        },
    }
}

/// `name` in `dir`, or else the first on `PATH`.
pub fn find_binary(name: &str, dir: Option<&Path>) -> Option<PathBuf> {
    match dir {
        Some(d) => Some(d.join(name)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| is_executable(p))
        }),
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// A version in what the shim printed for `-v` (e.g. `containerd-shim-wasmedge-v1 0.1.0`,
/// or `Version: v0.1.0`); None when nothing looks like one.
pub fn parse_shim_version(stdout: &str) -> Option<String> {
    stdout.split_whitespace().find_map(|w| {
        let v = w.trim_start_matches('v');
        let mut parts = v.split('.');
        let ok = parts.clone().count() >= 2
            && parts.all(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit()));
        ok.then(|| w.to_string())
    })
}

fn check_shim(shim: Option<&Path>, opts: &CheckOptions) -> Check {
    const NAME: &str = "shim";
    let Some(shim) = shim else {
        return Check::fail(
            NAME,
            match &opts.shim_dir {
                Some(d) => format!("{SHIM_BINARY} not found in {}", d.display()),
                None => format!("{SHIM_BINARY} not found on PATH (containerd finds it there)"),
            },
        );
    };
    if !is_executable(shim) {
        return Check::fail(NAME, format!("{} is not executable", shim.display()));
    }
    let mut cmd = Command::new(shim);
    // Without TTRPC_ADDRESS the shim's bootstrap stops before doing anything.
    cmd.arg("-v").env_remove("TTRPC_ADDRESS");
    match run_with_timeout(&mut cmd, opts.timeout) {
        Err(e) => Check::fail(NAME, format!("{}: {e}", shim.display())),
        Ok(out) if out.stderr.contains("error while loading shared libraries") => {
            Check::fail(NAME, format!("{}: {}", shim.display(), out.first_error_line()))
        }
        Ok(out) => match parse_shim_version(&out.stdout) {
            Some(v) => Check::pass(NAME, format!("{} version {v}", shim.display())),
            None => Check::pass(
                NAME,
                format!(
                    "{} runs (`-v` prints no version: containerd-shim 0.11 parses the flag but does not act on it)",
                    shim.display()
                ),
            ),
        },
    }
}

fn check_runner(runner: Option<&Path>) -> Check {
    const NAME: &str = "runner";
    match runner {
        None => Check::skipped(NAME, "no shim found to look next to"),
        Some(r) if is_executable(r) => Check::pass(NAME, format!("{} is executable", r.display())),
        Some(r) if r.exists() => Check::fail(NAME, format!("{} is not executable", r.display())),
        Some(r) => Check::fail(
            NAME,
            format!(
                "{} missing: the shim runs it from its own directory",
                r.display()
            ),
        ),
    }
}

/// How `ldd` output resolves libwasmedge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LddWasmedge {
    Resolved(String),
    NotFound,
    NotLinked,
}

pub fn parse_ldd_wasmedge(ldd_stdout: &str) -> LddWasmedge {
    for line in ldd_stdout.lines() {
        let t = line.trim();
        if !t.starts_with("libwasmedge") {
            continue;
        }
        let Some((_, target)) = t.split_once("=>") else {
            continue;
        };
        let target = target.trim();
        if target.starts_with("not found") {
            return LddWasmedge::NotFound;
        }
        let path = target.split(" (").next().unwrap_or(target).trim();
        return LddWasmedge::Resolved(path.to_string());
    }
    LddWasmedge::NotLinked
}

/// Whether the dynamic loader can load `soname` (in this process, which it then unloads).
fn dlopen_ok(soname: &str) -> Result<(), String> {
    let c = std::ffi::CString::new(soname).map_err(|e| e.to_string())?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; dlopen has no
    // other preconditions.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns NULL or a pointer to a NUL-terminated thread-local string,
        // which is copied at once.
        let err = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Err(err);
    }
    // SAFETY: `handle` came from a successful dlopen and is closed once.
    unsafe { libc::dlclose(handle) };
    Ok(())
}

fn check_libwasmedge(runner: Option<&Path>, timeout: Duration) -> Check {
    const NAME: &str = "libwasmedge";
    let dlopen = |why: String| match dlopen_ok(LIBWASMEDGE) {
        Ok(()) => Check::pass(NAME, format!("{why}; dlopen({LIBWASMEDGE}) succeeds")),
        Err(e) => Check::fail(NAME, format!("{why}; dlopen({LIBWASMEDGE}): {e}")),
    };
    let Some(runner) = runner.filter(|r| r.exists()) else {
        return dlopen("no runner to inspect".into());
    };
    let mut cmd = Command::new("ldd");
    cmd.arg(runner);
    match run_with_timeout(&mut cmd, timeout) {
        Err(e) => dlopen(format!("ldd not usable ({e})")),
        Ok(out) => match parse_ldd_wasmedge(&out.stdout) {
            LddWasmedge::Resolved(p) => {
                Check::pass(NAME, format!("{} links {p}", runner.display()))
            }
            LddWasmedge::NotFound => Check::fail(
                NAME,
                format!(
                    "{}: libwasmedge not found by the dynamic loader (install WasmEdge or fix ld.so.conf)",
                    runner.display()
                ),
            ),
            LddWasmedge::NotLinked => {
                dlopen(format!("ldd shows no libwasmedge in {}", runner.display()))
            }
        },
    }
}

/// The registration check on a containerd config text (a file or `config dump` output).
pub fn registration_from_config(text: &str, name: &str, source: &str) -> Check {
    const NAME: &str = "runtime-registered";
    let runtimes = match registered_runtimes(text) {
        Ok(r) => r,
        Err(e) => return Check::fail(NAME, format!("{source}: {e}")),
    };
    match runtimes.iter().find(|(n, _)| n == name) {
        Some((_, rt)) if rt == RUNTIME_TYPE => Check::pass(
            NAME,
            format!("{source}: runtime {name:?} has runtime_type {RUNTIME_TYPE:?}"),
        ),
        Some((_, rt)) => Check::fail(
            NAME,
            format!("{source}: runtime {name:?} has runtime_type {rt:?}, not {RUNTIME_TYPE:?}"),
        ),
        None => Check::fail(
            NAME,
            format!(
                "{source}: no runtime {name:?} (registered: {}); run `wasmedge-shimctl install`",
                if runtimes.is_empty() {
                    "none".to_string()
                } else {
                    runtimes
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ),
    }
}

/// containerd's config as containerd reads it: `containerd config dump` (the file merged
/// with containerd's defaults), else the file itself; with where it came from. Err: why
/// neither could be read.
struct ContainerdConfig {
    text: String,
    source: String,
    dumped: bool,
}

fn read_containerd_config(opts: &CheckOptions) -> Result<ContainerdConfig, String> {
    let file = &opts.containerd_config;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(file).args(["config", "dump"]);
    let why = match run_with_timeout(&mut cmd, opts.timeout) {
        Ok(out) if out.success => {
            return Ok(ContainerdConfig {
                text: out.stdout,
                source: format!("containerd --config {} config dump", file.display()),
                dumped: true,
            })
        }
        Ok(out) => out.first_error_line(),
        Err(e) => e,
    };
    let source = format!(
        "containerd config dump not possible ({why}); read {} instead",
        file.display()
    );
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(ContainerdConfig {
            text,
            source,
            dumped: false,
        }),
        Err(e) => Err(format!("{source}: {e}")),
    }
}

fn check_registered(config: &Result<ContainerdConfig, String>, name: &str) -> Check {
    match config {
        Ok(c) => {
            let mut check = registration_from_config(&c.text, name, &c.source);
            if c.dumped && check.status == Status::Pass {
                check
                    .evidence
                    .push_str(" (a running containerd reads it only when it starts)");
            }
            check
        }
        Err(why) => Check::fail("runtime-registered", why.clone()),
    }
}

/// Our runtime's `options.SystemdCgroup` in containerd's config, which CRI passes to the
/// shim: the shim refuses a container whose cgroup path has the other driver's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemdCgroupOption {
    /// Set to `value` in `source`.
    Set { value: bool, source: String },
    /// Not set (or no such runtime): each container's cgroup path picks the driver.
    Unset,
    /// The config could not be read, or the value is not a boolean: why.
    Unreadable(String),
}

fn systemd_cgroup_option(
    config: &Result<ContainerdConfig, String>,
    name: &str,
) -> SystemdCgroupOption {
    match config {
        Ok(c) => match runtime_systemd_cgroup(&c.text, name) {
            Ok(Some(value)) => SystemdCgroupOption::Set {
                value,
                source: c.source.clone(),
            },
            Ok(None) => SystemdCgroupOption::Unset,
            Err(e) => SystemdCgroupOption::Unreadable(format!("{}: {e}", c.source)),
        },
        Err(why) => SystemdCgroupOption::Unreadable(why.clone()),
    }
}

/// Where kubeadm and most distributions keep the kubelet's configuration.
pub const DEFAULT_KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";

/// The kubelet's cgroup driver, from its configuration file, against the node's init and
/// our runtime's `SystemdCgroup` (`option`). With `systemd`, CRI gives every container a
/// `slice:prefix:name` cgroup path, a transient scope the shim has systemd make over the
/// system bus: systemd must be PID 1. With `cgroupfs` the shim makes the directories itself,
/// under any init. A `SystemdCgroup` of the other driver fails every container's create
/// (the shim refuses a path of the form the option does not name), so the two must agree;
/// a runtime without it takes the driver from each path. No file: not a Kubernetes node, or
/// a kubelet configured elsewhere (skipped, not required).
pub fn check_cgroup_driver(kubelet_config: &Path, option: &SystemdCgroupOption) -> Check {
    let init = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    cgroup_driver_on(kubelet_config, init.trim(), option)
}

/// [`check_cgroup_driver`] on a node whose PID 1 is `init`.
fn cgroup_driver_on(kubelet_config: &Path, init: &str, option: &SystemdCgroupOption) -> Check {
    const NAME: &str = "cgroup-driver";
    let text = match std::fs::read_to_string(kubelet_config) {
        Ok(t) => t,
        Err(e) => {
            let mut c = Check::skipped(
                NAME,
                format!(
                    "{}: {e} (the kubelet's cgroup driver is not known)",
                    kubelet_config.display()
                ),
            );
            c.required = false;
            return c;
        }
    };
    // A top-level `cgroupDriver: VALUE`. Without one the kubelet uses cgroupfs, or, where it
    // takes the driver from the runtime (KubeletCgroupDriverFromCRI), containerd's default
    // runtime's, which `install` gave ours: nothing to hold the option against.
    let driver = text
        .lines()
        .find_map(|l| l.strip_prefix("cgroupDriver:"))
        .map(|v| {
            v.split('#')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(['"', '\''])
        });
    let at = kubelet_config.display();
    let ours = match option {
        SystemdCgroupOption::Set { value, source } => {
            format!("the runtime's options say {SYSTEMD_CGROUP} = {value} ({source})")
        }
        SystemdCgroupOption::Unset => format!(
            "the runtime's options set no {SYSTEMD_CGROUP}: each container's cgroup path picks \
             the driver"
        ),
        SystemdCgroupOption::Unreadable(why) => {
            return Check::fail(
                NAME,
                format!("the runtime's {SYSTEMD_CGROUP} cannot be read: {why}"),
            )
        }
    };
    match (driver, option) {
        (Some("systemd"), _) if init != "systemd" => Check::fail(
            NAME,
            format!(
                "{at}: cgroupDriver: systemd, but PID 1 is {init:?}, not systemd: no container's \
                 scope could be made, so no pod would start; run the kubelet (and containerd's \
                 CRI) with the cgroupfs driver on this node"
            ),
        ),
        (_, SystemdCgroupOption::Set { value: true, .. }) if init != "systemd" => Check::fail(
            NAME,
            format!(
                "{ours}, but PID 1 is {init:?}, not systemd: no container's scope could be made; \
                 set it to false, with runc's and the kubelet's cgroup driver cgroupfs"
            ),
        ),
        (Some(driver @ ("systemd" | "cgroupfs")), SystemdCgroupOption::Set { value, .. })
            if (driver == "systemd") != *value =>
        {
            Check::fail(
                NAME,
                format!(
                    "{at}: cgroupDriver: {driver}, but {ours}: the shim would refuse every \
                     container's cgroup path; make them agree (`wasmedge-shimctl install` gives \
                     the runtime runc's {SYSTEMD_CGROUP}, which must match the kubelet's too)"
                ),
            )
        }
        (Some("systemd"), _) => Check::pass(
            NAME,
            format!(
                "{at}: cgroupDriver: systemd; each container is a systemd scope in its pod's \
                 slice; {ours}"
            ),
        ),
        (Some(driver), _) => Check::pass(NAME, format!("{at}: cgroupDriver: {driver}; {ours}")),
        (None, _) => Check::pass(
            NAME,
            format!(
                "{at}: no cgroupDriver (the kubelet's default, cgroupfs, or containerd's where \
                 the kubelet takes it from the runtime); {ours}"
            ),
        ),
    }
}

/// The cache directory exists (or can be created) and passes the cache's trust rule from `/`
/// down (`wasmedge_aot_cache::trust::check_dir`, which creates nothing; the runner's
/// `Cache::open` applies the same rule through `trust::ensure_dir`): every pod on the node
/// executes the native code it holds.
pub fn check_cache_dir(dir: &Path, euid: u32) -> Check {
    const NAME: &str = "cache-dir";
    match trust::check_dir(dir, euid) {
        Ok(trust::Found::Exists { path, uid, mode }) => Check::pass(
            NAME,
            format!(
                "{} owned by uid {uid}, mode {mode:04o}; every directory above it is root's{}",
                dir.display(),
                if path == dir {
                    String::new()
                } else {
                    format!(" (resolves to {})", path.display())
                }
            ),
        ),
        Ok(trust::Found::Missing { existing }) => {
            let writable = nix::unistd::access(
                &existing,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_ok();
            if writable {
                Check::pass(
                    NAME,
                    format!(
                        "{} does not exist yet; it can be created in {}",
                        dir.display(),
                        existing.display()
                    ),
                )
            } else {
                Check::fail(
                    NAME,
                    format!(
                        "{} does not exist and {} is not writable",
                        dir.display(),
                        existing.display()
                    ),
                )
            }
        }
        Err(e @ wasmedge_aot_cache::Error::Untrusted { .. }) => Check::fail(
            NAME,
            format!("{e}; the shim runs every module in the interpreter until it is fixed"),
        ),
        Err(e) => Check::fail(NAME, e.to_string()),
    }
}

/// Compiles that failed within the retry window: their modules run in the interpreter until
/// then. Informational: a module the compiler refuses still runs.
pub fn check_compile_failures(config: &Config) -> Check {
    const NAME: &str = "compile-failures";
    let within = std::time::Duration::from_secs(config.compile_retry_secs);
    let failures = wasmedge_aot_cache::recent_failures(&config.cache_dir, within);
    let mut c = if failures.is_empty() {
        Check::pass(
            NAME,
            format!("none in the last {} s", config.compile_retry_secs),
        )
    } else {
        let list: Vec<String> = failures
            .iter()
            .map(|(k, f)| format!("{}: {}: {}", &k.to_hex()[..12], f.cause, f.message))
            .collect();
        Check::fail(
            NAME,
            format!(
                "{} module(s) run in the interpreter until their compile is retried: {}",
                failures.len(),
                list.join("; ")
            ),
        )
    };
    c.required = false;
    c
}

/// Which node shims run, of which binaries and configuration, and how many tasks each
/// serves (from the state each publishes under `state_root`), against the `installed`
/// identity: the shim and runner binaries found and the config file as it is now. A shim of
/// another identity gets no new containers and exits when its last task is gone.
/// Informational: never fails the node.
pub fn check_node_shims(state_root: &Path, installed: Option<&Identity>) -> Check {
    const NAME: &str = "node-shims";
    let shims = identity::live_shims(state_root, SHIM_BINARY);
    if shims.is_empty() {
        return Check {
            required: false,
            ..Check::skipped(
                NAME,
                format!("no node shim is running ({})", state_root.display()),
            )
        };
    }
    let lines: Vec<String> = shims
        .iter()
        .map(|(_, s)| {
            let id = &s.identity;
            let (binary, config) = match installed {
                Some(now) => (
                    if id.shim == now.shim && id.runner == now.runner {
                        "installed binaries"
                    } else {
                        "older binaries"
                    },
                    if id.config == now.config {
                        "current config"
                    } else {
                        "older config"
                    },
                ),
                None => ("binaries unknown", "config unknown"),
            };
            let current = installed.is_some_and(|now| now.key() == id.key());
            format!(
                "pid {} (namespace {}, version {}, {binary}, {config}, key {}) serves {} task{}{}",
                s.pid,
                s.namespace,
                s.version,
                id.key(),
                s.tasks,
                if s.tasks == 1 { "" } else { "s" },
                if current {
                    ""
                } else {
                    "; new containers go to a shim of the installed binaries and config, this one exits when idle"
                }
            )
        })
        .collect();
    Check {
        required: false,
        ..Check::pass(NAME, lines.join("\n"))
    }
}

/// The RuntimeClass check on `kubectl get runtimeclass NAME -o json` output.
pub fn check_runtimeclass_json(json: &str, handler: &str) -> Check {
    const NAME: &str = "runtimeclass";
    let v: serde_json::Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return Check::fail(NAME, format!("kubectl output is not JSON: {e}")),
    };
    let name = v["metadata"]["name"].as_str().unwrap_or("?");
    let got = v["handler"].as_str().unwrap_or("");
    if got != handler {
        return Check::fail(
            NAME,
            format!("RuntimeClass {name} has handler {got:?}, not {handler:?}"),
        );
    }
    match v["scheduling"]["nodeSelector"][NODE_LABEL_KEY].as_str() {
        Some(NODE_LABEL_VALUE) => Check::pass(
            NAME,
            format!(
                "RuntimeClass {name}: handler {handler:?}, nodeSelector {NODE_LABEL_KEY}={NODE_LABEL_VALUE}"
            ),
        ),
        other => Check::fail(
            NAME,
            format!(
                "RuntimeClass {name} has nodeSelector {NODE_LABEL_KEY}={other:?}, not {NODE_LABEL_VALUE:?}: its pods may land on nodes without the shim"
            ),
        ),
    }
}

/// The node-label check on `kubectl get node NAME -o json` output.
pub fn check_node_json(json: &str) -> Check {
    const NAME: &str = "node-label";
    let v: serde_json::Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => return Check::fail(NAME, format!("kubectl output is not JSON: {e}")),
    };
    let node = v["metadata"]["name"].as_str().unwrap_or("?");
    match v["metadata"]["labels"][NODE_LABEL_KEY].as_str() {
        Some(NODE_LABEL_VALUE) => Check::pass(
            NAME,
            format!("node {node} has label {NODE_LABEL_KEY}={NODE_LABEL_VALUE}"),
        ),
        other => Check::fail(
            NAME,
            format!(
                "node {node} has label {NODE_LABEL_KEY}={other:?}; run `kubectl label node {node} {NODE_LABEL_KEY}={NODE_LABEL_VALUE}`"
            ),
        ),
    }
}

fn kubectl(opts: &CheckOptions, args: &[&str]) -> Command {
    let mut c = Command::new("kubectl");
    if let Some(k) = &opts.kubeconfig {
        c.arg("--kubeconfig").arg(k);
    }
    let t = format!("--request-timeout={}s", opts.timeout.as_secs().max(1));
    c.arg(t).args(args);
    c
}

fn check_kubernetes(opts: &CheckOptions) -> Vec<Check> {
    let skip_both = |why: String| {
        vec![
            Check::skipped("runtimeclass", why.clone()),
            Check::skipped("node-label", why),
        ]
    };
    if find_binary("kubectl", None).is_none() {
        return skip_both("kubectl not on PATH: no cluster to ask".into());
    }
    let wait = opts.timeout + Duration::from_secs(2);
    match run_with_timeout(&mut kubectl(opts, &["get", "--raw", "/version"]), wait) {
        Err(e) => return skip_both(format!("no reachable cluster: {e}")),
        Ok(out) if !out.success => {
            return skip_both(format!("no reachable cluster: {}", out.first_error_line()))
        }
        Ok(_) => {}
    }
    let get = |kind: &str, name: &str, name_id: &'static str, parse: &dyn Fn(&str) -> Check| {
        match run_with_timeout(&mut kubectl(opts, &["get", kind, name, "-o", "json"]), wait) {
            Err(e) => Check::fail(name_id, e),
            Ok(out) if out.success => parse(&out.stdout),
            Ok(out) => Check::fail(
                name_id,
                format!("kubectl get {kind} {name}: {}", out.first_error_line()),
            ),
        }
    };
    let handler = opts.runtime_name.as_str();
    let rc = get(
        "runtimeclass",
        &opts.runtime_class,
        "runtimeclass",
        &|json| check_runtimeclass_json(json, handler),
    );
    let node = opts.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    let label = get("node", &node, "node-label", &check_node_json);
    vec![rc, label]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctr_version_output_gives_the_server_version() {
        let out = "Client:\n  Version:  1.7.24~ds1\n  Revision: 1.7.24~ds1-6\n  Go version: go1.24.4\n\nServer:\n  Version:  v1.7.24\n  Revision: 88bf19b2\n  UUID: 3f0c\n";
        assert_eq!(parse_ctr_server_version(out), Some("v1.7.24".to_string()));
        assert_eq!(
            parse_ctr_server_version("Client:\n  Version:  1.7.24\n"),
            None
        );
    }

    #[test]
    fn shim_version_is_parsed_only_when_printed() {
        assert_eq!(
            parse_shim_version("containerd-shim-wasmedge-v1 0.1.0\n"),
            Some("0.1.0".to_string())
        );
        assert_eq!(
            parse_shim_version("Version: v0.1.0 rev abc"),
            Some("v0.1.0".to_string())
        );
        assert_eq!(parse_shim_version(""), None);
        assert_eq!(
            parse_shim_version("io.containerd.wasmedge.v1: Env(NotPresent)"),
            None
        );
    }

    #[test]
    fn ldd_output_says_whether_libwasmedge_resolves() {
        let ok = "\tlinux-vdso.so.1 (0x00007f30fe504000)\n\tlibwasmedge.so.0 => /lib/x86_64-linux-gnu/libwasmedge.so.0 (0x00007f30fd600000)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n";
        assert_eq!(
            parse_ldd_wasmedge(ok),
            LddWasmedge::Resolved("/lib/x86_64-linux-gnu/libwasmedge.so.0".into())
        );
        assert_eq!(
            parse_ldd_wasmedge("\tlibwasmedge.so.0 => not found\n"),
            LddWasmedge::NotFound
        );
        assert_eq!(
            parse_ldd_wasmedge("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n"),
            LddWasmedge::NotLinked
        );
    }

    /// Shaped like `containerd config dump` of containerd 1.7 (abridged).
    const DUMP_V2: &str = r#"disabled_plugins = []
imports = ["/etc/containerd/config.toml"]
oom_score = 0
root = "/var/lib/containerd"
version = 2

[plugins]

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.8"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          base_runtime_spec = ""
          runtime_type = "io.containerd.runc.v2"

          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = false

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmedge]
          base_runtime_spec = ""
          privileged_without_host_devices = false
          runtime_type = "io.containerd.wasmedge.v1"
"#;

    #[test]
    fn config_dump_registration() {
        let c = registration_from_config(DUMP_V2, "wasmedge", "dump");
        assert_eq!(c.status, Status::Pass, "{c:?}");
        let c = registration_from_config(DUMP_V2, "other", "dump");
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("registered: runc, wasmedge"), "{c:?}");
        let v3 = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmedge]\nruntime_type = 'io.containerd.runc.v2'\n";
        let c = registration_from_config(v3, "wasmedge", "file");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.evidence.contains("not \"io.containerd.wasmedge.v1\""),
            "{c:?}"
        );
        let c = registration_from_config("version = [", "wasmedge", "file");
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.starts_with("file: parse"), "{c:?}");
    }

    #[test]
    fn cache_dir_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let dir = tmp.path().join("cache");
        // Missing but creatable.
        let c = check_cache_dir(&dir, me);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.evidence.contains("does not exist yet"), "{c:?}");

        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = check_cache_dir(&dir, me);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.evidence.contains("mode 0755"), "{c:?}");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        let c = check_cache_dir(&dir, me);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.evidence
                .contains("has mode 0775: writable by group or others"),
            "{c:?}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o757)).unwrap();
        assert_eq!(check_cache_dir(&dir, me).status, Status::Fail);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let c = check_cache_dir(&dir, me + 1);
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains(&format!("owned by uid {me}")), "{c:?}");

        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(check_cache_dir(&file, me)
            .evidence
            .contains("not a directory"));
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(check_cache_dir(&link, me).evidence.contains("symlink"));
    }

    #[test]
    fn cache_dir_below_a_directory_of_another_user_is_reported() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to give a directory to another user");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let dir = home.join("cache");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
        let c = check_cache_dir(&dir, 0);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(
            c.evidence.contains(&format!(
                "{} is owned by uid 65534, not by root",
                home.display()
            )),
            "{c:?}"
        );
        // Not yet created below it: reported the same way, before anything is created.
        let c = check_cache_dir(&home.join("new/cache"), 0);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(!home.join("new").exists());
    }

    #[test]
    fn kubernetes_json_checks() {
        let rc = r#"{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"wasmedge"},"handler":"wasmedge","scheduling":{"nodeSelector":{"wasmedge-aot-shim.io/enabled":"true"}}}"#;
        assert_eq!(check_runtimeclass_json(rc, "wasmedge").status, Status::Pass);
        let c = check_runtimeclass_json(rc, "other");
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("handler \"wasmedge\""), "{c:?}");
        let no_sel = r#"{"metadata":{"name":"wasmedge"},"handler":"wasmedge"}"#;
        assert!(check_runtimeclass_json(no_sel, "wasmedge")
            .evidence
            .contains("may land on nodes without the shim"));

        let node = r#"{"kind":"Node","metadata":{"name":"n1","labels":{"wasmedge-aot-shim.io/enabled":"true"}}}"#;
        assert_eq!(check_node_json(node).status, Status::Pass);
        let c = check_node_json(r#"{"metadata":{"name":"n1","labels":{}}}"#);
        assert_eq!(c.status, Status::Fail);
        assert!(c.evidence.contains("kubectl label node n1"), "{c:?}");
        assert_eq!(check_node_json("not json").status, Status::Fail);
    }

    fn report() -> CheckReport {
        CheckReport {
            checks: vec![
                Check::pass("containerd", "containerd v1.7.24 answers on /run/c.sock"),
                Check::skipped("runtimeclass", "kubectl not on PATH: no cluster to ask"),
                Check {
                    required: false,
                    ..Check::fail("optional", "x")
                },
            ],
        }
    }

    #[test]
    fn report_renders_for_people_and_json() {
        let r = report();
        assert!(r.ok());
        assert_eq!(
            r.to_string(),
            "PASS  containerd    containerd v1.7.24 answers on /run/c.sock\n\
             SKIP  runtimeclass  kubectl not on PATH: no cluster to ask\n\
             FAIL  optional      x (optional)\n\
             node is ready for the wasmedge runtime\n"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["checks"][0]["name"], "containerd");
        assert_eq!(json["checks"][0]["status"], "pass");
        assert_eq!(json["checks"][1]["status"], "skipped");
        assert_eq!(json["checks"][2]["required"], false);

        let mut bad = report();
        bad.checks.push(Check::fail("shim", "not found"));
        assert!(!bad.ok());
        assert!(bad
            .to_string()
            .ends_with("node is not ready: shim failed\n"));
        assert_eq!(serde_json::to_value(&bad).unwrap()["ok"], false);
    }

    #[test]
    fn commands_time_out_and_missing_programs_say_so() {
        let e = run_with_timeout(Command::new("sleep").arg("5"), Duration::from_millis(200))
            .unwrap_err();
        assert!(e.contains("sleep timed out"), "{e}");
        let e = run_with_timeout(
            &mut Command::new("no-such-program-x"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(e, "no-such-program-x not found");
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo hi; echo oops >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!out.success);
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.first_error_line(), "oops");
    }

    fn set(value: bool) -> SystemdCgroupOption {
        SystemdCgroupOption::Set {
            value,
            source: "config.toml".into(),
        }
    }

    #[test]
    fn the_kubelets_systemd_cgroup_driver_needs_systemd_as_pid_1() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("config.yaml");
        let unset = SystemdCgroupOption::Unset;
        let c = cgroup_driver_on(&file, "systemd", &unset);
        assert_eq!((c.status, c.required), (Status::Skipped, false));
        std::fs::write(&file, "kind: KubeletConfiguration\ncgroupDriver: systemd\n").unwrap();
        let c = cgroup_driver_on(&file, "systemd", &unset);
        assert_eq!(c.status, Status::Pass, "{}", c.evidence);
        assert!(c.evidence.contains("systemd scope"), "{}", c.evidence);
        for option in [unset.clone(), set(true)] {
            let c = cgroup_driver_on(&file, "tini", &option);
            assert_eq!((c.status, c.required), (Status::Fail, true));
            assert!(
                c.evidence.contains("but PID 1 is \"tini\""),
                "{}",
                c.evidence
            );
        }
        std::fs::write(&file, "cgroupDriver: \"cgroupfs\" # set by us\n").unwrap();
        let c = cgroup_driver_on(&file, "tini", &unset);
        assert_eq!(c.status, Status::Pass);
        assert!(
            c.evidence.ends_with(
                "cgroupDriver: cgroupfs; the runtime's options set no SystemdCgroup: each \
                 container's cgroup path picks the driver"
            ),
            "{}",
            c.evidence
        );
        std::fs::write(&file, "kind: KubeletConfiguration\n").unwrap();
        assert_eq!(
            cgroup_driver_on(&file, "systemd", &unset).status,
            Status::Pass
        );
    }

    #[test]
    fn the_runtimes_systemd_cgroup_must_agree_with_the_kubelets_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("config.yaml");
        std::fs::write(&file, "cgroupDriver: systemd\n").unwrap();
        let c = cgroup_driver_on(&file, "systemd", &set(true));
        assert_eq!(c.status, Status::Pass, "{}", c.evidence);
        assert!(
            c.evidence
                .ends_with("the runtime's options say SystemdCgroup = true (config.toml)"),
            "{}",
            c.evidence
        );
        let c = cgroup_driver_on(&file, "systemd", &set(false));
        assert_eq!((c.status, c.required), (Status::Fail, true));
        assert!(
            c.evidence.starts_with(&format!(
                "{}: cgroupDriver: systemd, but the runtime's options say SystemdCgroup = false \
                 (config.toml): the shim would refuse every container's cgroup path",
                file.display()
            )),
            "{}",
            c.evidence
        );

        std::fs::write(&file, "cgroupDriver: cgroupfs\n").unwrap();
        assert_eq!(
            cgroup_driver_on(&file, "tini", &set(false)).status,
            Status::Pass
        );
        let c = cgroup_driver_on(&file, "systemd", &set(true));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.evidence.contains(
                "cgroupDriver: cgroupfs, but the runtime's options say SystemdCgroup = true"
            ),
            "{}",
            c.evidence
        );
        // Where systemd is not PID 1, SystemdCgroup = true cannot work whatever the kubelet.
        std::fs::write(&file, "kind: KubeletConfiguration\n").unwrap();
        let c = cgroup_driver_on(&file, "tini", &set(true));
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.evidence.contains("but PID 1 is \"tini\", not systemd"),
            "{}",
            c.evidence
        );
        // No cgroupDriver in the file: the kubelet may take containerd's; nothing to compare.
        let c = cgroup_driver_on(&file, "systemd", &set(true));
        assert_eq!(c.status, Status::Pass, "{}", c.evidence);
        assert!(c.evidence.contains("no cgroupDriver"), "{}", c.evidence);

        let c = cgroup_driver_on(
            &file,
            "systemd",
            &SystemdCgroupOption::Unreadable("config.toml: x is not a boolean".into()),
        );
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.evidence,
            "the runtime's SystemdCgroup cannot be read: config.toml: x is not a boolean"
        );
    }

    #[test]
    fn the_runtimes_systemd_cgroup_is_read_from_what_containerd_reads() {
        let config = |text: &str| {
            Ok(ContainerdConfig {
                text: text.into(),
                source: "dump".into(),
                dumped: true,
            })
        };
        assert_eq!(
            systemd_cgroup_option(&config(DUMP_V2), "wasmedge"),
            SystemdCgroupOption::Unset
        );
        let with = format!(
            "{DUMP_V2}\n          [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmedge.options]\n            SystemdCgroup = true\n"
        );
        assert_eq!(
            systemd_cgroup_option(&config(&with), "wasmedge"),
            set_in("dump")
        );
        let bad = with.replace("SystemdCgroup = true", "SystemdCgroup = 1");
        assert!(matches!(
            systemd_cgroup_option(&config(&bad), "wasmedge"),
            SystemdCgroupOption::Unreadable(why) if why.starts_with("dump: ") && why.ends_with("SystemdCgroup is not a boolean")
        ));
        assert_eq!(
            systemd_cgroup_option(&Err("no file".into()), "wasmedge"),
            SystemdCgroupOption::Unreadable("no file".into())
        );
    }

    fn set_in(source: &str) -> SystemdCgroupOption {
        SystemdCgroupOption::Set {
            value: true,
            source: source.into(),
        }
    }

    #[test]
    fn a_node_without_anything_fails_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = CheckOptions {
            socket: tmp.path().join("none.sock"),
            containerd_config: tmp.path().join("config.toml"),
            shim_dir: Some(tmp.path().to_path_buf()),
            shim_config: tmp.path().join("shim.toml"),
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        let r = check(&opts);
        assert!(!r.ok());
        assert!(r
            .get("containerd")
            .unwrap()
            .evidence
            .contains("does not exist"));
        assert!(r.get("shim").unwrap().evidence.contains("not found in"));
        assert_eq!(r.get("runner").unwrap().status, Status::Skipped);
        assert_eq!(r.get("runtime-registered").unwrap().status, Status::Fail);
        assert!(r.get("cache-dir").is_some());
        assert!(r.get("runtimeclass").is_some() && r.get("node-label").is_some());
    }
}
