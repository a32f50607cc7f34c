//! Linux containers: the containers of a pod that are not Wasm modules (service-mesh
//! proxies, log shippers, secret agents, init containers that prepare volumes), run by runc
//! from the same bundle and spec, with what containerd's own runc shim gives them.
//!
//! The shim decides per container ([`super::entrypoint`]): an entrypoint that starts with Wasm's
//! magic runs on our path, anything else is handed to runc, the runtime every containerd
//! node has, through containerd's client of it (the `runc` crate of rust-extensions). runc
//! draws the container's boundary; the shim keeps what a shim keeps:
//!
//! - **State.** runc keeps its containers under `/run/wasmedge-aot-shim/runc/<namespace>`
//!   ([`RUNC_ROOT`]), a directory of the shim's own, checked from `/` as its run directory
//!   is: `containerd-shim-wasmedge-v1 delete` and the sweep of dead shims find there what a
//!   dead shim left and force-delete it, and nothing here reads or writes another runtime's
//!   state (containerd's runc shim keeps `/run/containerd/runc/<namespace>`).
//! - **Reaping.** The shim is a child subreaper (the shim framework makes it one): a
//!   container's init and every exec'd process are re-parented to it when `runc create` and
//!   `runc exec --detach` exit, and the framework's reaper collects every exit. runc's own
//!   commands are waited for through that same reaper ([`crate::command`]): a second
//!   `waitpid` on a pid could, once the pid is reused, take another process's exit.
//! - **Stdio.** The container's FIFOs are opened as for a Wasm container and handed to runc,
//!   which passes them on to the process: no copy through the shim. With a terminal, runc
//!   sends the pty's master over a console socket and the shim copies between it and the
//!   FIFOs ([`Console`]); `ResizePty` sets the master's window size.
//! - **The pod's namespaces.** CRI names them `/proc/<sandbox pid>/ns/{net,ipc,uts,pid}`,
//!   the shim's own, which are the host's. Before runc reads `config.json`, each such path is
//!   rewritten to `/proc/<shim pid>/fd/<n>`, a descriptor of the namespace the pod's sandbox
//!   holds (`pod.rs`) that stays open until `runc create` has returned; the file is replaced
//!   atomically. A sidecar and a Wasm container of one pod therefore share its loopback, its
//!   IPC and its hostname.
//!
//! Files the shim writes for runc: `init.pid`, `exec-<exec id>.pid` (so that no exec id
//! names `init.pid`, or the Wasm path's `wasm.pid` that `shim delete` reads) and runc's log
//! in the bundle (containerd's directory for the task), exec process specs and console
//! sockets in [`SCRATCH_DIR`].

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use log::debug;
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use runc::options::{CreateOpts, DeleteOpts, ExecOpts, GlobalOpts, KillOpts};
use runc::Runc;
use tokio::io::Interest;
use tokio::net::unix::pipe;

use super::{CreateContext, Created, Execs, Kind, New, Signalled, Task};
use crate::cgroup::{CgroupPath, OomWatch};
use crate::error::ShimError;
use crate::is_plain_name;
use crate::pod::{names_process_namespace, pod_join, PodJoin, PodNamespaces};
use crate::status::{ProcessState, Status};
use crate::stdio::StdioPaths;

/// Where runc keeps the state of the shim's Linux containers, one directory per containerd
/// namespace (`runc --root`).
pub const RUNC_ROOT: &str = "/run/wasmedge-aot-shim/runc";
/// The shim's scratch directory: the process specs `runc exec` reads and the console
/// sockets runc sends a terminal's master through. Also the shim's `XDG_RUNTIME_DIR`, where
/// the runc client writes its temporary files (see the shim binary).
pub const SCRATCH_DIR: &str = "/run/wasmedge-aot-shim/tmp";
/// The runc binary, found on the shim's `PATH` (containerd's), as containerd's runc shim
/// finds it.
const RUNC_BINARY: &str = "runc";
/// runc's log (`--log`, JSON lines) in the bundle: where runc writes why a command failed.
const RUNC_LOG: &str = "runc-log.json";
/// The pid of the container's init, written by `runc create --pid-file` in the bundle.
const INIT_PID: &str = "init.pid";
/// How long the shim waits for runc to send a terminal's master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A Linux container as the shim keeps it: its runc client and what runc does not keep for
/// it (the terminal, the exec'd processes).
#[derive(Debug)]
pub struct Linux {
    id: String,
    runc: Runc,
    /// runc's state root of the container's namespace.
    root: PathBuf,
    bundle: PathBuf,
    /// Whether the container has a pid namespace of its own. If not, its processes outlive
    /// its init, and the shim kills them when the init exits (as containerd's runc shim does).
    own_pid_namespace: bool,
    console: Option<Console>,
    execs: Mutex<HashMap<String, Arc<Exec>>>,
}

/// A process exec'd into a Linux container (`kubectl exec`, exec probes, `ctr task exec`).
#[derive(Debug)]
pub struct Exec {
    pub id: String,
    pub stdio: StdioPaths,
    terminal: bool,
    process: oci_spec_runc::runtime::Process,
    pid: AtomicI32,
    pub state: ProcessState,
    console: Mutex<Option<Console>>,
}

impl Exec {
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::SeqCst)
    }
}

/// [`crate::ensure_own_dir`], its error a message.
fn ensure_dir(dir: &Path) -> Result<(), String> {
    crate::ensure_own_dir(dir).map_err(|e| e.to_string())
}

/// runc's state root for the containers of containerd namespace `namespace` (not created).
pub fn state_root(namespace: &str) -> Result<PathBuf, String> {
    if !is_plain_name(namespace) {
        return Err(format!(
            "containerd namespace {namespace:?} cannot name a directory"
        ));
    }
    Ok(Path::new(RUNC_ROOT).join(namespace))
}

/// A runc client for one bundle: its state under `root`, its log in the bundle, its
/// commands waited for through the shim's reaper.
fn client(root: &Path, log: &Path, systemd_cgroup: bool) -> Result<Runc, String> {
    let mut opts = GlobalOpts::new()
        .command(RUNC_BINARY)
        .root(root)
        .log(log)
        .log_json()
        .systemd_cgroup(systemd_cgroup);
    opts.custom_spawner(Arc::new(Reaped));
    opts.build()
        .map_err(|e| format!("{RUNC_BINARY} (looked up on PATH): {e}"))
}

/// runc's log of one bundle, read for the reason of a failed command.
struct RuncLog<'a> {
    path: &'a Path,
    /// Its length before the command: older errors are another command's.
    from: u64,
}

impl<'a> RuncLog<'a> {
    /// Most bytes of the log read back after a failure.
    const TAIL: u64 = 64 * 1024;

    fn mark(path: &'a Path) -> RuncLog<'a> {
        let from = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        RuncLog { path, from }
    }

    /// `runc <op>: <why>`: the last error runc logged since the mark, else what it printed.
    fn explain(&self, op: &str, e: runc::error::Error) -> String {
        if let Some(msg) = self.last_error() {
            // runc 1.1 begins its own with `runc create failed: ...`.
            return if msg.starts_with("runc ") {
                msg
            } else {
                format!("runc {op}: {msg}")
            };
        }
        match e {
            runc::error::Error::CommandFailed {
                status,
                stdout,
                stderr,
            } => {
                let said = [stderr.trim(), stdout.trim()]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or("(no message)")
                    .to_string();
                format!("runc {op} failed ({status}): {said}")
            }
            other => format!("runc {op}: {other}"),
        }
    }

    fn last_error(&self) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(self.path).ok()?;
        let len = f.metadata().ok()?.len();
        let from = self.from.max(len.saturating_sub(Self::TAIL));
        f.seek(SeekFrom::Start(from)).ok()?;
        let mut text = String::new();
        f.take(Self::TAIL).read_to_string(&mut text).ok()?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["level"] == "error")
            .filter_map(|v| v["msg"].as_str().map(|m| m.trim().to_string()))
            .next_back()
    }
}

/// The error runc ended with: runc's `fatal` (its `utils.go`) prints it as the last line of
/// stderr, and logs it. `None` for a failure that is not runc's own (a spawn, an I/O error).
/// Only this line is compared, and whole: a path or another error quoted in runc's message
/// (`.../cgroup.procs does not exist`) must never read as one of the answers below.
fn runc_error(e: &runc::error::Error) -> Option<&str> {
    match e {
        runc::error::Error::CommandFailed { stderr, .. } => {
            stderr.lines().map(str::trim).rfind(|l| !l.is_empty())
        }
        _ => None,
    }
}

/// Whether runc failed because it has no container `id`: libcontainer's `ErrNotExist`
/// (`container does not exist`, runc 1.1 and later), or runc 1.0's `container "<id>" does
/// not exist`.
fn is_not_exist(e: &runc::error::Error, id: &str) -> bool {
    runc_error(e).is_some_and(|m| {
        m == "container does not exist" || m == format!("container \"{id}\" does not exist")
    })
}

/// Whether runc failed to signal the container because its init has exited: libcontainer's
/// `ErrNotRunning` (`container not running`), or the init's exit between runc's look at it
/// and its signal (`unable to signal init: ` and Go's `os.ErrProcessDone`, runc 1.1 and
/// later).
fn is_not_running(e: &runc::error::Error) -> bool {
    runc_error(e).is_some_and(|m| {
        m == "container not running" || m == "unable to signal init: os: process already finished"
    })
}

impl Linux {
    /// `runc create`: the container's init, set up and waiting for `start`, and its
    /// cgroup, which the shim then only watches for OOM kills. Rewrites the pod's namespace
    /// paths first (see the module docs). On error nothing of runc's is left.
    pub async fn create(
        new: &New<'_>,
        spec: &Spec,
        cgroup: Option<CgroupPath>,
        ctx: &CreateContext<'_>,
    ) -> Result<Created<Linux>, ShimError> {
        let id = new.id;
        let pod = new.pod(ctx);
        let in_pod = new.pod_member(ctx);
        let (linux, pid) = Linux::run_create(
            new,
            ctx.namespace,
            spec,
            pod.as_deref().and_then(Task::pod),
            &in_pod,
            cgroup.as_ref().is_some_and(CgroupPath::is_systemd),
        )
        .await?;
        // runc's init waits for `start`: alive, its pid its own.
        let process = super::pidfd_of(pid).ok();
        let mut oom = None;
        if let Some(path) = cgroup {
            match OomWatch::new(&crate::cgroup::load(&path)) {
                Ok(watch) => oom = watch,
                Err(e) => log::warn!(
                    "container {id}: cgroup {}: {e}; its OOM kills go unreported",
                    path.as_spec()
                ),
            }
        }
        debug!("container {id}: a Linux container, pid {pid}");
        Ok(Created {
            kind: linux,
            pid,
            process,
            oom,
        })
    }

    /// `runc create` itself, with the pod's namespaces held until runc has joined them; on
    /// error nothing of runc's is left. A namespace path the pod may not join is the
    /// request's fault (the create's `namespaces` step); anything else is runc's or the
    /// node's.
    async fn run_create(
        new: &New<'_>,
        namespace: &str,
        spec: &Spec,
        pod: Option<&PodNamespaces>,
        in_pod: &(dyn Fn(u32) -> bool + Sync),
        systemd_cgroup: bool,
    ) -> Result<(Linux, i32), ShimError> {
        let failed = ShimError::create(new.id, "linux container");
        let root = state_root(namespace).map_err(ShimError::create(new.id, "linux container"))?;
        ensure_dir(&root).map_err(ShimError::create(new.id, "linux container"))?;
        // Held until runc has joined them.
        // The spec's namespaces, read once.
        let namespaces: Vec<&LinuxNamespace> = crate::spec::linux_namespaces(spec).collect();
        let own_pid_namespace = has_own_pid_namespace(&namespaces);
        let held = join_pod_namespaces(
            new.bundle,
            new.sandbox_id.is_some(),
            &namespaces,
            pod,
            in_pod,
        )
        .map_err(|e| match e {
            JoinError::Refused(m) => ShimError::create(new.id, "namespaces")(m),
            JoinError::Failed(m) => ShimError::create(new.id, "linux container")(m),
        })?;
        let runc_create = async {
            let log = new.bundle.join(RUNC_LOG);
            // runc keeps the driver in its state, so only `create` is told.
            let runc = client(&root, &log, systemd_cgroup)?;
            let pid_file = new.bundle.join(INIT_PID);
            let mut opts = CreateOpts::new().pid_file(&pid_file);
            let socket = if new.terminal {
                let s = ConsoleSocket::new()?;
                opts = opts.console_socket(&s.path);
                Some(s)
            } else {
                opts = opts.io(Arc::new(Fifos::open(new.stdio)?));
                None
            };
            let mark = RuncLog::mark(&log);
            runc.create(new.id, new.bundle, Some(&opts))
                .await
                .map_err(|e| mark.explain("create", e))?;
            drop(held);
            let mut linux = Linux {
                id: new.id.to_owned(),
                runc,
                root,
                bundle: new.bundle.to_owned(),
                own_pid_namespace,
                console: None,
                execs: Mutex::new(HashMap::new()),
            };
            let set_up = async {
                if let Some(socket) = socket {
                    let master = socket.receive().await?;
                    linux.console = Some(Console::start(master, new.stdio)?);
                }
                read_pid(&pid_file)
            };
            let set_up = set_up.await;
            match set_up {
                Ok(pid) => Ok((linux, pid)),
                Err(e) => match linux.delete().await {
                    Ok(()) => Err(e),
                    Err(d) => Err(format!("{e}; and then {d}")),
                },
            }
        };
        runc_create.await.map_err(failed)
    }

    /// `runc delete --force`: kills what is left of the container and removes its state and
    /// cgroup. A container runc no longer knows is already deleted. When runc fails, its
    /// processes may still run: the error (runc's own) goes to the caller, who keeps the
    /// container and its record, so that a retry or a later sweep finds them.
    async fn delete(&self) -> Result<(), String> {
        force_delete_with(&self.runc, &self.bundle.join(RUNC_LOG), &self.id).await?;
        let _ = std::fs::remove_file(self.bundle.join(INIT_PID));
        Ok(())
    }

    /// `runc kill --all` of a container whose init has exited: not `Kind::kill`, which is for
    /// a task that has not (and is refused for one that has).
    async fn kill_what_outlives_its_init(&self) {
        let signal = Signal::SIGKILL as u32;
        if let Err(e) = self
            .runc
            .kill(&self.id, signal, Some(&KillOpts { all: true }))
            .await
        {
            debug!("container {}: kill what outlived its init: {e}", self.id);
        }
    }

    /// Runs runc command `op` (`runc <op> <id>`), with runc's logged reason when it fails.
    async fn command<T>(
        &self,
        op: &str,
        command: impl std::future::Future<Output = runc::Result<T>>,
    ) -> Result<T, ShimError> {
        let log = self.bundle.join(RUNC_LOG);
        let mark = RuncLog::mark(&log);
        command
            .await
            .map_err(|e| runtime_error(&self.id, mark.explain(op, e)))
    }

    fn exec(&self, exec_id: &str) -> Result<Arc<Exec>, ShimError> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("{} exec {exec_id}", self.id)))
    }
}

#[async_trait]
impl Kind for Linux {
    /// `runc start`: the init execs the container's process.
    async fn start(&self, task: &Task) -> Result<(), ShimError> {
        task.expect_created()?;
        self.command("start", self.runc.start(&self.id))
            .await
            .map(drop)
    }

    /// `runc kill [--all]`: `all` reaches every process of the container, not just its init.
    async fn kill(&self, _task: &Task, signal: Signal, all: bool) -> Result<Signalled, ShimError> {
        let id = &self.id;
        let log = self.bundle.join(RUNC_LOG);
        let mark = RuncLog::mark(&log);
        match self
            .runc
            .kill(id, signal as u32, Some(&KillOpts { all }))
            .await
        {
            Ok(()) => Ok(Signalled::Sent),
            Err(e) if is_not_running(&e) || is_not_exist(&e, id) => Err(ShimError::NotFound(
                format!("{id}: process already finished"),
            )),
            Err(e) => Err(runtime_error(id, mark.explain("kill", e))),
        }
    }

    /// `runc pause` (`resume`): freezes (thaws) every process of the container.
    async fn freeze(&self, task: &Task, frozen: bool) -> Result<(), ShimError> {
        let (from, verb) = if frozen {
            (Status::Running, "pause")
        } else {
            (Status::Paused, "resume")
        };
        if task.status() != from {
            return Err(task.precondition(&format!("cannot {verb} it: {:?}", task.status())));
        }
        if frozen {
            self.command("pause", self.runc.pause(&self.id)).await
        } else {
            self.command("resume", self.runc.resume(&self.id)).await
        }
    }

    /// `runc update`: the container's resources (`UpdateTaskRequest.resources`, the
    /// runtime spec's `LinuxResources` as JSON), through the driver runc made its cgroup
    /// with.
    async fn update(&self, _task: &Task, resources: &[u8]) -> Result<(), ShimError> {
        let id = &self.id;
        let resources: oci_spec_runc::runtime::LinuxResources =
            serde_json::from_slice(resources)
                .map_err(|e| ShimError::InvalidArgument(format!("update {id}: resources: {e}")))?;
        // runc's client writes the resources to a temporary file in XDG_RUNTIME_DIR.
        ensure_dir(Path::new(SCRATCH_DIR)).map_err(|e| ShimError::Io {
            context: format!("update container {id}"),
            source: std::io::Error::other(e),
        })?;
        self.command("update", self.runc.update(id, &resources))
            .await
    }

    /// The pids of the container's processes (`runc ps`).
    async fn pids(&self, _task: &Task) -> Result<Vec<u32>, ShimError> {
        let pids = self.command("ps", self.runc.ps(&self.id)).await?;
        Ok(pids.into_iter().map(|p| p as u32).collect())
    }

    /// Deletes the container from runc (`delete --force`: what still runs, its state and
    /// its cgroup). Fails with runc's reason when runc could not.
    async fn discard(&self, task: &Task) -> Result<(), ShimError> {
        let running = !task.is_stopped();
        self.delete().await.map_err(|message| ShimError::Io {
            context: format!("delete container {}", self.id),
            source: std::io::Error::other(message),
        })?;
        if running {
            let _ = tokio::time::timeout(Duration::from_secs(5), task.wait()).await;
        }
        Ok(())
    }

    /// Without a pid namespace of its own nothing ends the container's other processes
    /// with its init: the shim does, as containerd's runc shim.
    async fn exited(&self, _task: &Task) {
        if !self.own_pid_namespace {
            self.kill_what_outlives_its_init().await;
        }
    }

    fn execs(&self) -> Option<&dyn Execs> {
        Some(self)
    }

    fn record(&self, record: &mut crate::records::Record) {
        record.runc_root = Some(self.root.clone());
    }
}

#[async_trait]
impl Execs for Linux {
    fn add(
        &self,
        exec_id: &str,
        spec: &[u8],
        terminal: bool,
        stdio: StdioPaths,
    ) -> Result<(), ShimError> {
        let id = &self.id;
        if !is_plain_name(exec_id) {
            return Err(ShimError::InvalidArgument(format!(
                "exec id {exec_id:?}: only letters, digits, '_', '.' and '-'"
            )));
        }
        let mut process: oci_spec_runc::runtime::Process =
            serde_json::from_slice(spec).map_err(|e| {
                ShimError::InvalidArgument(format!("exec {exec_id} in {id}: process spec: {e}"))
            })?;
        process.set_terminal(Some(terminal));
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if execs.contains_key(exec_id) {
            return Err(ShimError::AlreadyExists(format!("{id} exec {exec_id}")));
        }
        execs.insert(
            exec_id.to_string(),
            Arc::new(Exec {
                id: exec_id.to_string(),
                stdio,
                terminal,
                process,
                pid: AtomicI32::new(0),
                state: ProcessState::new(),
                console: Mutex::new(None),
            }),
        );
        Ok(())
    }

    fn get(&self, exec_id: &str) -> Result<Arc<Exec>, ShimError> {
        self.exec(exec_id)
    }

    /// `runc exec --detach`: runs the exec in the container; returns its pid.
    async fn start(&self, exec: &Exec) -> Result<i32, ShimError> {
        let (id, exec_id) = (&self.id, exec.id.as_str());
        if exec.state.status() != Status::Created {
            return Err(ShimError::FailedPrecondition {
                id: id.to_string(),
                message: format!("exec {exec_id} has already started"),
            });
        }
        let failed = |message: String| ShimError::Io {
            context: format!("exec {exec_id} in container {id}"),
            source: std::io::Error::other(message),
        };
        // runc's client writes the process spec to a temporary file in XDG_RUNTIME_DIR.
        ensure_dir(Path::new(SCRATCH_DIR)).map_err(failed)?;
        let pid_file = self.bundle.join(format!("exec-{exec_id}.pid"));
        let mut opts = ExecOpts::new().pid_file(&pid_file).detach(true);
        let socket = if exec.terminal {
            let s = ConsoleSocket::new().map_err(failed)?;
            opts = opts.console_socket(&s.path);
            Some(s)
        } else {
            opts = opts.io(Arc::new(Fifos::open(&exec.stdio).map_err(failed)?));
            None
        };
        let log = self.bundle.join(RUNC_LOG);
        let mark = RuncLog::mark(&log);
        self.runc
            .exec(id, &exec.process, Some(&opts))
            .await
            .map_err(|e| failed(mark.explain("exec", e)))?;
        if let Some(socket) = socket {
            let master = socket.receive().await.map_err(failed)?;
            let console = Console::start(master, &exec.stdio).map_err(failed)?;
            *exec.console.lock().unwrap_or_else(|p| p.into_inner()) = Some(console);
        }
        let pid = read_pid(&pid_file).map_err(failed)?;
        exec.pid.store(pid, Ordering::SeqCst);
        exec.state.set_running();
        Ok(pid)
    }

    fn remove(&self, exec_id: &str) -> Result<Arc<Exec>, ShimError> {
        let exec = self.exec(exec_id)?;
        if exec.state.status() == Status::Running {
            return Err(ShimError::FailedPrecondition {
                id: self.id.clone(),
                message: format!("exec {exec_id} is running: kill it first"),
            });
        }
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exec_id);
        let _ = std::fs::remove_file(self.bundle.join(format!("exec-{exec_id}.pid")));
        Ok(exec)
    }

    fn of_pid(&self, pid: i32) -> Option<Arc<Exec>> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|e| e.pid() == pid)
            .cloned()
    }

    fn resize(&self, exec_id: &str, width: u32, height: u32) -> Result<(), ShimError> {
        let id = &self.id;
        let resize = |console: Option<&Console>| {
            console
                .ok_or_else(|| ShimError::FailedPrecondition {
                    id: id.to_string(),
                    message: "the process has no terminal".into(),
                })?
                .resize(width, height)
                .map_err(ShimError::io(format!("resize the terminal of {id}")))
        };
        if exec_id.is_empty() {
            return resize(self.console.as_ref());
        }
        let exec = self.exec(exec_id)?;
        let console = exec.console.lock().unwrap_or_else(|p| p.into_inner());
        resize(console.as_ref())
    }

    /// The terminal's input ends once containerd has closed its end of the FIFO too.
    /// Without a terminal the process holds its stdin FIFO itself, and containerd's close
    /// reaches it as EOF: nothing to do.
    fn close_stdin(&self, exec_id: &str) -> Result<(), ShimError> {
        if exec_id.is_empty() {
            if let Some(console) = &self.console {
                console.close_stdin();
            }
            return Ok(());
        }
        let exec = self.exec(exec_id)?;
        if let Some(console) = exec
            .console
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            console.close_stdin();
        }
        Ok(())
    }
}

fn runtime_error(id: &str, message: String) -> ShimError {
    ShimError::Io {
        context: format!("container {id}"),
        source: std::io::Error::other(message),
    }
}

/// `runc delete --force <id>`; runc's reason when it fails (`runc delete --force <id>: ...`).
async fn force_delete_with(runc: &Runc, log: &Path, id: &str) -> Result<(), String> {
    let mark = RuncLog::mark(log);
    match runc.delete(id, Some(&DeleteOpts { force: true })).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_exist(&e, id) => {
            debug!("runc delete {id}: already gone");
            Ok(())
        }
        Err(e) => Err(mark.explain(&format!("delete --force {id}"), e)),
    }
}

/// Force-deletes container `id` from runc's state under `root`, if runc has it: what a
/// dead shim left. Its log goes to the shim's scratch directory (the bundle may be gone).
/// Fails, saying why, when runc could not delete it.
pub async fn force_delete(root: &Path, id: &str) -> Result<(), String> {
    if !is_plain_name(id) || !root.join(id).exists() {
        return Ok(());
    }
    let fail = |e: String| format!("runc delete --force {id}: {e}");
    ensure_dir(Path::new(SCRATCH_DIR)).map_err(fail)?;
    // A log of its own: `shim delete` processes and the sweep run this at the same time,
    // and the error read back must be this container's.
    let ns = root.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let log = Path::new(SCRATCH_DIR).join(format!("runc-log-{ns}-{id}.json"));
    let runc = client(root, &log, false).map_err(fail)?;
    let r = force_delete_with(&runc, &log, id).await;
    if r.is_ok() {
        let _ = std::fs::remove_file(&log);
    }
    r
}

fn read_pid(path: &Path) -> Result<i32, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: {text:?} is not a pid", path.display()))
}

/// Whether the spec's namespaces give the container a pid namespace of its own (not the
/// host's, nor the pod's).
fn has_own_pid_namespace(namespaces: &[&LinuxNamespace]) -> bool {
    namespaces.iter().any(|ns| {
        ns.typ() == LinuxNamespaceType::Pid
            && ns.path().as_ref().is_none_or(|p| p.as_os_str().is_empty())
    })
}

/// Why a Linux container's namespaces could not be set up for runc.
#[derive(Debug)]
enum JoinError {
    /// A path the container may not join: the request's fault.
    Refused(String),
    /// The bundle's `config.json` could not be read or written.
    Failed(String),
}

/// Rewrites each namespace path of the bundle's `config.json` that names the shim's own
/// namespaces (CRI naming the pod's, see the module docs) to a descriptor of the pod's
/// namespace, or drops it where the pod shares the host's; for a pod's container
/// (`of_a_pod`, by CRI's annotation), a path naming another container of the pod is checked
/// ([`pod_join`]) and rewritten to the descriptor opened then, and any other is refused.
/// Returns the descriptors, which must stay open until runc has joined them. Nothing is
/// written for a spec whose namespaces (`listed`) have no such path.
fn join_pod_namespaces(
    bundle: &Path,
    of_a_pod: bool,
    listed: &[&LinuxNamespace],
    pod: Option<&PodNamespaces>,
    in_pod: &(dyn Fn(u32) -> bool + Sync),
) -> Result<Vec<OwnedFd>, JoinError> {
    use JoinError::{Failed, Refused};
    let shim = std::process::id();
    // What a path becomes: `None` stays as written; `Some(None)` is the host's namespace
    // (the entry is dropped and runc leaves the container in it); `Some(Some(fd))` a
    // descriptor held until runc has joined it, which no pid reuse can change.
    let resolve = |p: &Path| -> Result<Option<Option<OwnedFd>>, String> {
        let what = if of_a_pod {
            match pod_join(p, shim, in_pod)? {
                PodJoin::Pod(what) => what,
                PodJoin::Member(fd) => return Ok(Some(Some(fd))),
            }
        } else {
            match names_process_namespace(p, shim) {
                Some(what) => what,
                None => return Ok(None),
            }
        };
        let pod = pod.ok_or_else(|| {
            format!(
                "{} names the pod sandbox's namespace, and this shim holds no sandbox of the \
                 container's pod",
                p.display()
            )
        })?;
        pod.get(what)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display()))
    };
    let named = |p: &Path| of_a_pod || names_process_namespace(p, shim).is_some();
    if !listed
        .iter()
        .any(|ns| ns.path().as_deref().is_some_and(named))
    {
        return Ok(Vec::new());
    }
    let path = bundle.join("config.json");
    let bytes =
        std::fs::read(&path).map_err(|e| Failed(format!("read {}: {e}", path.display())))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| Failed(format!("{}: {e}", path.display())))?;
    let Some(namespaces) = config
        .pointer_mut("/linux/namespaces")
        .and_then(|n| n.as_array_mut())
    else {
        return Ok(Vec::new());
    };
    let mut held = Vec::new();
    let mut kept = Vec::new();
    for mut ns in std::mem::take(namespaces) {
        let resolved = match ns["path"].as_str() {
            Some(p) => resolve(Path::new(p)).map_err(Refused)?,
            None => None,
        };
        match resolved {
            None => kept.push(ns),
            Some(None) => {}
            Some(Some(fd)) => {
                ns["path"] = format!("/proc/{shim}/fd/{}", fd.as_raw_fd()).into();
                held.push(fd);
                kept.push(ns);
            }
        }
    }
    *namespaces = kept;
    let mode = std::fs::metadata(&path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o644);
    let bytes =
        serde_json::to_vec(&config).map_err(|e| Failed(format!("{}: {e}", path.display())))?;
    wasmedge_aot_cache::atomic::write_atomic(
        &path,
        &bytes,
        mode,
        wasmedge_aot_cache::atomic::Durability::BestEffort,
    )
    .map_err(|e| Failed(format!("write {}: {e}", path.display())))?;
    Ok(held)
}

/// Runs runc's commands through the shim framework's reaper ([`crate::command`]).
#[derive(Debug)]
struct Reaped;

#[async_trait]
impl runc::Spawner for Reaped {
    async fn execute(&self, cmd: runc::Command) -> runc::Result<(ExitStatus, u32, String, String)> {
        let mut cmd = cmd.into_std();
        // Ours only: runc as root has no use for it.
        cmd.env_remove("XDG_RUNTIME_DIR");
        let f = crate::command::run(cmd, None, None)
            .await
            .map_err(|e| match e {
                crate::command::RunError::Spawn(e) => runc::error::Error::ProcessSpawnFailed(e),
                e => runc::error::Error::Other(Box::new(e)),
            })?;
        // The reaper reports an exit code, or 128 + the signal that ended the process.
        Ok((
            ExitStatus::from_raw((f.code & 0xff) << 8),
            f.pid,
            f.stdout,
            f.stderr,
        ))
    }
}

/// The container's FIFOs, opened as for a Wasm container, for runc to hand to the process.
#[derive(Debug)]
struct Fifos {
    fds: Mutex<Option<[OwnedFd; 3]>>,
}

impl Fifos {
    fn open(stdio: &StdioPaths) -> Result<Fifos, String> {
        let stdin = crate::stdio::open_stdin(&stdio.stdin)
            .map_err(|e| format!("open stdin {}: {e}", stdio.stdin))?;
        let stdout = crate::stdio::open_output(&stdio.stdout)
            .map_err(|e| format!("open stdout {}: {e}", stdio.stdout))?;
        let stderr = crate::stdio::open_output(&stdio.stderr)
            .map_err(|e| format!("open stderr {}: {e}", stdio.stderr))?;
        Ok(Fifos {
            fds: Mutex::new(Some([stdin, stdout, stderr])),
        })
    }
}

#[async_trait]
impl runc::Io for Fifos {
    async fn set(&self, cmd: &mut runc::Command) -> std::io::Result<()> {
        let fds = self.fds.lock().unwrap_or_else(|p| p.into_inner());
        let [stdin, stdout, stderr] = fds
            .as_ref()
            .ok_or_else(|| std::io::Error::other("stdio already handed over"))?;
        cmd.stdin(stdin.try_clone()?)
            .stdout(stdout.try_clone()?)
            .stderr(stderr.try_clone()?);
        Ok(())
    }

    async fn close_after_start(&self) {
        self.fds.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// The socket runc sends a terminal's master through (`--console-socket`), in the shim's
/// scratch directory; removed on drop.
struct ConsoleSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    fn new() -> Result<ConsoleSocket, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        ensure_dir(Path::new(SCRATCH_DIR))?;
        // Short: a socket's path has at most 107 bytes, and container ids alone take 64.
        let path = Path::new(SCRATCH_DIR).join(format!(
            "pty-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // Left by an earlier shim that had our pid and died.
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| format!("console socket {}: {e}", path.display()))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// The master runc sends.
    async fn receive(&self) -> Result<OwnedFd, String> {
        let received = async {
            let (stream, _) = self.listener.accept().await?;
            let mut name = [0u8; 4096];
            let (_, mut fds, _) = stream
                .async_io(Interest::READABLE, || {
                    wasmedge_aot_protocol::wire::recv_with_fds(stream.as_fd(), &mut name).map_err(
                        |e| match e {
                            wasmedge_aot_protocol::wire::WireError::Io { source, .. } => source,
                            other => std::io::Error::other(other),
                        },
                    )
                })
                .await?;
            fds.pop()
                .ok_or_else(|| std::io::Error::other("no descriptor in runc's message"))
        };
        match tokio::time::timeout(CONSOLE_TIMEOUT, received).await {
            Ok(Ok(fd)) => Ok(fd),
            Ok(Err(e)) => Err(format!("receive the terminal from runc: {e}")),
            Err(_) => Err(format!(
                "runc sent no terminal in {CONSOLE_TIMEOUT:?} on {}",
                self.path.display()
            )),
        }
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's terminal: the pty's master, copied to the stdout FIFO and fed from the stdin
/// FIFO by two tasks of the shim, which end with the terminal (EIO once every process that
/// held it has exited) or with the FIFO.
#[derive(Debug)]
pub struct Console {
    master: OwnedFd,
    /// A writer of the stdin FIFO, the shim's own, held until `CloseIO` or until the process
    /// is deleted, so that the copy reads no EOF before then: a FIFO whose writers are all
    /// gone reads as EOF, and the copy would end for good between two of containerd's
    /// writers (a containerd that restarts, an attach that ends) or before its first. As
    /// containerd's runc shim holds one (`openStdin`, `pkg/process/init.go`).
    stdin: Mutex<Option<OwnedFd>>,
}

impl Console {
    fn start(master: OwnedFd, stdio: &StdioPaths) -> Result<Console, String> {
        let fail = |what: &str, e: std::io::Error| format!("terminal: {what}: {e}");
        rustix::io::ioctl_fionbio(&master, true)
            .map_err(|e| fail("non-blocking master", e.into()))?;
        if !stdio.stdout.is_empty() {
            let from = pipe::Receiver::from_owned_fd_unchecked(
                master.try_clone().map_err(|e| fail("master", e))?,
            )
            .map_err(|e| fail("master", e))?;
            let to = open_sender(&stdio.stdout).map_err(|e| fail(&stdio.stdout, e))?;
            tokio::spawn(copy(from, to, "terminal output"));
        }
        let mut held = None;
        if !stdio.stdin.is_empty() {
            let path = crate::stdio::fifo_path(&stdio.stdin).map_err(|e| fail(&stdio.stdin, e))?;
            let from = pipe::OpenOptions::new()
                .open_receiver(path)
                .map_err(|e| fail(path, e))?;
            // Opened before the copy's first read, and after the reader: a non-blocking open
            // for writing succeeds once the FIFO has one.
            held = Some(open_stdin_writer(path).map_err(|e| fail(path, e))?);
            let to = pipe::Sender::from_owned_fd_unchecked(
                master.try_clone().map_err(|e| fail("master", e))?,
            )
            .map_err(|e| fail("master", e))?;
            tokio::spawn(copy(from, to, "terminal input"));
        }
        Ok(Console {
            master,
            stdin: Mutex::new(held),
        })
    }

    /// Lets the terminal's input end (`CloseIO`): the copy reads EOF once containerd's
    /// writer is closed too.
    fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let size = rustix::termios::Winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, size).map_err(Into::into)
    }
}

/// The shim's own writer of a stdin FIFO that has a reader (see [`Console::stdin`]).
fn open_stdin_writer(path: &str) -> std::io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map(OwnedFd::from)
}

/// The stdout FIFO for writing; with no reader yet, opened read-write so the open does not
/// fail and the reader finds the output later (as [`crate::stdio::open_output`]).
fn open_sender(uri: &str) -> std::io::Result<pipe::Sender> {
    let path = crate::stdio::fifo_path(uri)?;
    match pipe::OpenOptions::new().open_sender(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            pipe::OpenOptions::new().read_write(true).open_sender(path)
        }
        other => other,
    }
}

async fn copy(mut from: pipe::Receiver, mut to: pipe::Sender, what: &'static str) {
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(n) => debug!("{what}: {n} bytes, ended"),
        // The master reads EIO once the terminal's last holder has exited.
        Err(e) if e.raw_os_error() == Some(libc::EIO) => debug!("{what}: terminal closed"),
        Err(e) => debug!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_name_files() {
        for ok in ["k8s.io", "default", "a-b_c.1", "0123abcdef"] {
            assert!(is_plain_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        assert_eq!(
            state_root("k8s.io").unwrap(),
            Path::new("/run/wasmedge-aot-shim/runc/k8s.io")
        );
        assert!(state_root("../etc").is_err());
    }

    #[test]
    fn runcs_last_logged_error_since_the_mark_explains_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(RUNC_LOG);
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"an older command's\",\"time\":\"t\"}\n",
        )
        .unwrap();
        let mark = RuncLog::mark(&log);
        let failed = || runc::error::Error::CommandFailed {
            status: ExitStatus::from_raw(1 << 8),
            stdout: String::new(),
            stderr: "stderr text\n".into(),
        };
        assert_eq!(
            mark.explain("start", failed()),
            "runc start failed (exit status: 1): stderr text"
        );
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        writeln!(f, "{{\"level\":\"info\",\"msg\":\"noise\"}}").unwrap();
        writeln!(
            f,
            "{{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": not found \"}}"
        )
        .unwrap();
        writeln!(f, "not json").unwrap();
        assert_eq!(
            mark.explain("create", failed()),
            "runc create: exec: \"nope\": not found"
        );
    }

    fn runc_failed(stderr: &str) -> runc::error::Error {
        runc::error::Error::CommandFailed {
            status: ExitStatus::from_raw(1 << 8),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn only_runcs_own_words_say_a_container_is_gone() {
        // runc 1.1 and later (libcontainer's ErrNotExist), and 1.0.
        assert!(is_not_exist(
            &runc_failed("container does not exist\n"),
            "c1"
        ));
        assert!(is_not_exist(
            &runc_failed("remove /run/x/c1: busy\ncontainer \"c1\" does not exist\n"),
            "c1"
        ));
        for (stderr, id) in [
            // Another container's.
            ("container \"c2\" does not exist", "c1"),
            // Errors that quote a path or an object that does not exist.
            ("unable to freeze: /sys/fs/cgroup/k8s/c1/cgroup.freeze does not exist", "c1"),
            ("open /run/x/c1/state.json: no such file or directory: container does not exist, or a path", "c1"),
            // A message that is not runc's last line.
            ("container does not exist\nunable to destroy container: device or resource busy", "c1"),
            ("", "c1"),
        ] {
            assert!(!is_not_exist(&runc_failed(stderr), id), "{stderr:?}");
        }
        let spawn = runc::error::Error::ProcessSpawnFailed(std::io::Error::other(
            "container does not exist",
        ));
        assert!(!is_not_exist(&spawn, "c1"));

        assert!(is_not_running(&runc_failed("container not running\n")));
        assert!(is_not_running(&runc_failed(
            "unable to signal init: os: process already finished\n"
        )));
        for stderr in [
            "unable to signal init: operation not permitted",
            "unable to kill all processes: cgroup.kill: no such process in the cgroup, not running",
            "process already finished, says someone else",
        ] {
            assert!(!is_not_running(&runc_failed(stderr)), "{stderr:?}");
        }
    }

    /// What this test binary logs (nothing else in it installs a logger).
    struct Captured(Mutex<Vec<String>>);

    impl log::Log for Captured {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
            lines.push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    static CAPTURED: Captured = Captured(Mutex::new(Vec::new()));

    #[tokio::test]
    async fn a_runc_command_dropped_before_its_exit_leaves_no_subscriber_behind() {
        use runc::Spawner as _;
        log::set_logger(&CAPTURED).expect("no other logger in the lib tests");
        log::set_max_level(log::LevelFilter::Trace);
        // No reaper runs in this test, so the command's exit never arrives: its future waits
        // until it is dropped, as a cancelled request's is.
        let command = Reaped.execute(runc::Command::new("true"));
        let waited = tokio::time::timeout(Duration::from_millis(200), command).await;
        assert!(waited.is_err(), "{waited:?}");
        // The next exit of the node goes to every subscriber.
        containerd_shim::asynchronous::monitor::monitor_notify_by_pid(i32::MAX, 0)
            .await
            .unwrap();
        let lines = CAPTURED.0.lock().unwrap().clone();
        assert!(
            !lines.iter().any(|l| l.contains("failed to send exit code")),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn a_terminals_input_outlives_containerds_writer_and_ends_at_close_io() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdin");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        let stdio = StdioPaths {
            stdin: fifo.display().to_string(),
            ..Default::default()
        };
        let console = Console::start(pty.master, &stdio).unwrap();
        // containerd's writer, opened without blocking: with no reader left, the open fails
        // instead of hanging the test.
        let open_writer = || {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
        };
        // The terminal's line discipline hands each line to the process that reads it.
        rustix::io::ioctl_fionbio(&pty.slave, true).unwrap();
        let typed = |text: &'static [u8]| {
            let slave = &pty.slave;
            let open_writer = &open_writer;
            async move {
                let mut writer = open_writer().expect("the terminal's copy reads the FIFO");
                std::io::Write::write_all(&mut writer, text).unwrap();
                let mut line = Vec::new();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while !line.ends_with(b"\n") && std::time::Instant::now() < deadline {
                    let mut buf = [0u8; 64];
                    match rustix::io::read(slave, &mut buf) {
                        Ok(n) => line.extend_from_slice(&buf[..n]),
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                assert_eq!(line, text);
                writer
            }
        };
        // A writer that comes and goes (a containerd that restarts, an attach that ends)
        // does not end the input: the next one's reaches the terminal too.
        drop(typed(b"first\n").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let writer = typed(b"second\n").await;

        // CloseIO, and containerd's writer closed: the copy reads EOF and lets the FIFO go.
        console.close_stdin();
        drop(writer);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while open_writer().is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the terminal's copy still reads its FIFO"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_container_has_its_own_pid_namespace_only_without_a_path() {
        let spec = |ns: &str| -> Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"linux":{{"namespaces":[{ns}]}}}}"#
            ))
            .unwrap()
        };
        let own = |ns: &str| {
            let spec = spec(ns);
            has_own_pid_namespace(&crate::spec::linux_namespaces(&spec).collect::<Vec<_>>())
        };
        assert!(own(r#"{"type":"pid"}"#));
        assert!(!own(r#"{"type":"pid","path":"/proc/1/ns/pid"}"#));
        assert!(!own(r#"{"type":"mount"}"#));
    }

    #[test]
    fn pod_namespace_paths_become_the_pods_descriptors_and_the_rest_stays() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (namespaces)");
            return;
        }
        let pod = PodNamespaces::create(&crate::spec::SandboxSpec {
            network: crate::spec::Ns::New,
            ipc: crate::spec::Ns::New,
            uts: crate::spec::Ns::Host,
            pid: crate::spec::Ns::Host,
            hostname: None,
            domainname: None,
            sysctl: Vec::new(),
        })
        .unwrap();
        let shim = std::process::id();
        let bundle = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"unknownField":{{"kept":true}},
               "linux":{{"namespaces":[{{"type":"mount"}},
                 {{"type":"network","path":"/proc/{shim}/ns/net"}},
                 {{"type":"ipc","path":"/proc/{shim}/ns/ipc"}},
                 {{"type":"uts","path":"/proc/{shim}/ns/uts"}},
                 {{"type":"cgroup","path":"/proc/1/ns/cgroup"}}]}}}}"#
        );
        std::fs::write(bundle.path().join("config.json"), &config).unwrap();
        let spec: Spec = serde_json::from_str(&config).unwrap();
        let listed: Vec<_> = crate::spec::linux_namespaces(&spec).collect();
        let held =
            join_pod_namespaces(bundle.path(), false, &listed, Some(&pod), &|_| false).unwrap();
        assert_eq!(
            held.len(),
            2,
            "network and IPC: the pod's UTS is the host's"
        );
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(written["unknownField"]["kept"], true);
        let namespaces = written["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = namespaces
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["mount", "network", "ipc", "cgroup"]);
        let ino = |path: &str| nix::sys::stat::stat(path).unwrap().st_ino;
        let fd_ino = |f: &OwnedFd| nix::sys::stat::fstat(f).unwrap().st_ino;
        assert_eq!(
            ino(namespaces[1]["path"].as_str().unwrap()),
            fd_ino(pod.network.as_ref().unwrap())
        );
        assert_eq!(
            ino(namespaces[2]["path"].as_str().unwrap()),
            fd_ino(pod.ipc.as_ref().unwrap())
        );
        assert_eq!(namespaces[4 - 1]["path"], "/proc/1/ns/cgroup");

        // Without the pod's sandbox, the path is refused, naming it.
        std::fs::write(bundle.path().join("config.json"), &config).unwrap();
        let err = join_pod_namespaces(bundle.path(), false, &listed, None, &|_| false).unwrap_err();
        let JoinError::Refused(err) = err else {
            panic!("not a refusal: {err:?}");
        };
        assert!(err.contains(&format!("/proc/{shim}/ns/net")), "{err}");
    }
}
