//! One task of containerd's, whatever runs it: what every kind of task has (its id, bundle,
//! stdio, process and state, the rootfs the shim mounted), and the one interface, [`Kind`],
//! behind which each kind does its own work. The kind is decided once, in [`Task::create`],
//! where the spec and the entrypoint are looked at:
//!
//! - [`sandbox::Sandbox`]: a pod's sandbox. It runs nothing and holds the pod's namespaces;
//! - [`wasm::Wasm`]: a Wasm module, run by a process the runner forks, isolated by itself
//!   as the plan says, with the shim's cgroup and hooks;
//! - [`linux::Linux`]: anything else, run by runc from the same bundle (a pod's sidecars).
//!
//! The ttrpc layer (`service.rs`) calls [`Task`] and never asks which kind it holds; a
//! request that names an exec resolves to a [`Process`].

pub mod entrypoint;
pub mod linux;
pub mod rootfs;
pub mod sandbox;
pub mod wasm;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use containerd_shim::api::CreateTaskRequest;
use log::debug;
use nix::sys::signal::Signal;
use time::OffsetDateTime;
use wasmedge_aot_protocol::control::Timings;

use crate::cgroup::OomWatch;
use crate::error::ShimError;
use crate::pod::PodNamespaces;
use crate::runner::Runner;
use crate::spec::{self, HostSecurity};
use crate::status::{ProcessState, Status};
use crate::stdio::StdioPaths;

use self::entrypoint::Entrypoint;
use self::linux::Exec;

/// What a create needs from the shim beyond the request.
pub struct CreateContext<'a> {
    /// The containerd namespace (runc keeps a state directory per namespace).
    pub namespace: &'a str,
    pub runner: &'a Runner,
    pub seccomp: &'a crate::seccomp::Compiled,
    pub host: HostSecurity,
    /// The sandbox of the pod with this id, if this shim serves it.
    pub sandbox: &'a (dyn Fn(&str) -> Option<Arc<Task>> + Sync),
    /// Whether a pid is the process of a container of the pod with this sandbox id (the
    /// namespaces a pod's container may join, see [`crate::pod::pod_join`]).
    pub pod_process: &'a (dyn Fn(&str, u32) -> bool + Sync),
    /// Where a module that is not in the rootfs comes from: the image's Wasm layer.
    pub layers: &'a crate::image_layers::ImageLayers,
    /// Writes the records for after a crash, off the request path and in order.
    pub records: &'a crate::records::Writer,
}

/// What every kind of task is given at its create: the request's task, before it has a
/// process.
pub struct New<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub stdio: &'a StdioPaths,
    pub terminal: bool,
    /// For a pod's container: its sandbox's id (CRI's annotation).
    pub sandbox_id: Option<&'a str>,
}

impl New<'_> {
    /// The sandbox of the task's pod (which holds the pod's namespaces), if the task is a
    /// pod's container and this shim serves that sandbox.
    pub fn pod(&self, ctx: &CreateContext<'_>) -> Option<Arc<Task>> {
        self.sandbox_id.and_then(|s| (ctx.sandbox)(s))
    }

    /// Whether a pid is the process of a live container of this task's pod: the namespaces
    /// it may join besides its pod's own ([`crate::pod::pod_join`]).
    pub fn pod_member<'a>(
        &'a self,
        ctx: &'a CreateContext<'_>,
    ) -> impl Fn(u32) -> bool + Sync + 'a {
        move |pid| self.sandbox_id.is_some_and(|s| (ctx.pod_process)(s, pid))
    }
}

/// A kind of task, created: its process and what to watch.
pub struct Created<K> {
    pub kind: K,
    /// The task's process (a sandbox's is the shim's own).
    pub pid: i32,
    /// A pidfd of that process, taken while its pid was its own.
    pub process: Option<OwnedFd>,
    /// A watch on the task's cgroup for OOM kills, registered before its process ran.
    pub oom: Option<OomWatch>,
}

impl<K: Kind + 'static> Created<K> {
    fn boxed(self) -> Created<Box<dyn Kind>> {
        Created {
            kind: Box::new(self.kind),
            pid: self.pid,
            process: self.process,
            oom: self.oom,
        }
    }
}

/// What a signal did to a task.
pub enum Signalled {
    /// It went to the task's process; its exit is the reaper's to report.
    Sent,
    /// It ended a task that has no process (a sandbox): the caller reports the exit.
    Ended,
}

/// What a kind of task does for containerd's requests. Each method is called by [`Task`]
/// once the request's common checks passed (the task exists, is not stopped where that
/// matters, the signal is one); a kind refuses what it cannot do with a clear error.
#[async_trait]
pub trait Kind: Send + Sync + std::fmt::Debug {
    /// `Start`: lets the task's process run.
    async fn start(&self, task: &Task) -> Result<(), ShimError>;

    /// `Kill` of a task that has not exited: `all` reaches every process of the task.
    async fn kill(&self, task: &Task, signal: Signal, all: bool) -> Result<Signalled, ShimError>;

    /// `Update` of a task that has not exited: its resources (the runtime spec's
    /// `LinuxResources` as JSON).
    async fn update(&self, task: &Task, resources: &[u8]) -> Result<(), ShimError>;

    /// Ends what is left of the task before its delete. Fails when it could not: the task
    /// is then kept, for a retry.
    async fn discard(&self, task: &Task) -> Result<(), ShimError>;

    /// `Pause` (`frozen`) or `Resume` of a running (paused) task.
    async fn freeze(&self, _task: &Task, _frozen: bool) -> Result<(), ShimError> {
        Err(ShimError::Unsupported(
            "pause and resume of a wasm container",
        ))
    }

    /// The pids of the task's processes.
    async fn pids(&self, task: &Task) -> Result<Vec<u32>, ShimError> {
        Ok(match task.status() {
            Status::Stopped { .. } => Vec::new(),
            _ => vec![task.pid as u32],
        })
    }

    /// After `start`, and after its `TaskStart` is out: the spec's `poststart` hooks.
    async fn poststart(&self, _task: &Task) {}

    /// Once the task is gone (at delete, or when its create failed): the spec's `poststop`
    /// hooks, once.
    async fn poststop(&self, _task: &Task) {}

    /// Removes the task's cgroup, if the shim made one: at delete, after the rootfs (a
    /// failed create removes its own before it returns, and the rootfs goes after, as
    /// containerd unmounts after runc's failed create).
    fn remove_cgroup(&self) -> crate::cgroup::Removal {
        Default::default()
    }

    /// The task's process exited: what else ends with it. Run on a task of its own, after
    /// the exit is recorded.
    async fn exited(&self, _task: &Task) {}

    /// The processes exec'd into the task, if its kind runs any.
    fn execs(&self) -> Option<&dyn Execs> {
        None
    }

    /// The namespaces a sandbox holds for its pod's containers.
    fn pod(&self) -> Option<&PodNamespaces> {
        None
    }

    /// What the create cost, phase by phase, for the node's phase totals (the Wasm start
    /// path's).
    fn timings(&self) -> Option<&Timings> {
        None
    }

    /// What a later shim needs to clean up after this one if it dies: filled into the
    /// sweep's record of the task.
    fn record(&self, _record: &mut crate::records::Record) {}

    /// Files the kind keeps in the bundle for a dead shim's clean-up, removed at delete.
    fn bundle_records(&self, _bundle: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// The processes exec'd into a task (`kubectl exec`, exec probes, `ctr task exec`).
#[async_trait]
pub trait Execs: Send + Sync {
    /// Registers a process to exec (`Exec`); it runs at `Start` with its exec id.
    fn add(
        &self,
        exec_id: &str,
        spec: &[u8],
        terminal: bool,
        stdio: StdioPaths,
    ) -> Result<(), ShimError>;
    fn get(&self, exec_id: &str) -> Result<Arc<Exec>, ShimError>;
    /// Runs a registered exec; returns its pid.
    async fn start(&self, exec: &Exec) -> Result<i32, ShimError>;
    /// Forgets an exec'd process that is not running.
    fn remove(&self, exec_id: &str) -> Result<Arc<Exec>, ShimError>;
    /// The exec'd process with pid `pid`, if one is.
    fn of_pid(&self, pid: i32) -> Option<Arc<Exec>>;
    /// Sets the window size of the terminal of the task's init (`exec_id` empty) or an
    /// exec's.
    fn resize(&self, exec_id: &str, width: u32, height: u32) -> Result<(), ShimError>;
    /// `CloseIO` of the init's or an exec's terminal input.
    fn close_stdin(&self, exec_id: &str) -> Result<(), ShimError>;
}

/// One process of a task, as a request that names it (by exec id, empty for the init)
/// finds it.
pub enum Process<'t> {
    Init(&'t Task),
    Exec(Arc<Exec>),
}

impl Process<'_> {
    pub fn pid(&self) -> i32 {
        match self {
            Process::Init(t) => t.pid,
            Process::Exec(e) => e.pid(),
        }
    }

    pub fn stdio(&self) -> &StdioPaths {
        match self {
            Process::Init(t) => &t.stdio,
            Process::Exec(e) => &e.stdio,
        }
    }

    pub fn status(&self) -> Status {
        match self {
            Process::Init(t) => t.status(),
            Process::Exec(e) => e.state.status(),
        }
    }

    /// Waits until the process has exited; returns its code and time.
    pub async fn wait(&self) -> (i32, OffsetDateTime) {
        match self {
            Process::Init(t) => t.state.wait().await,
            Process::Exec(e) => e.state.wait().await,
        }
    }
}

/// A task as the shim keeps it, from create to delete.
#[derive(Debug)]
pub struct Task {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    /// Its process (a sandbox's is the shim's own).
    pub pid: i32,
    /// For a pod's container: its sandbox's id (CRI's annotation).
    pub sandbox_id: Option<String>,
    state: ProcessState,
    /// A pidfd of the task's process, taken when its pid was known: whether that process
    /// is alive, whatever process has its pid later.
    process: Option<OwnedFd>,
    /// The rootfs the shim mounted for it, if it did.
    rootfs: Option<PathBuf>,
    cleaned: Mutex<bool>,
    kind: Box<dyn Kind>,
}

/// What a task's teardown cost (the delete's phase line).
#[derive(Debug, Default, Clone, Copy)]
pub struct Teardown {
    /// The rootfs's unmount.
    pub unmount_us: u128,
    /// The cgroup's drain and removal.
    pub cgroup: crate::cgroup::Removal,
}

/// The bundle's `config.json`, read and parsed on a blocking thread in one go: containerd's
/// `read_spec` reads through tokio's file, a trip to the blocking pool for the open and for
/// each read of a spec that holds a seccomp profile (~1 ms of a create here, against ~0.3).
async fn read_bundle_spec(bundle: &Path) -> Result<oci_spec::runtime::Spec, ShimError> {
    let path = bundle.join("config.json");
    let context = format!("read spec {}", path.display());
    tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    .map_err(ShimError::io(context))
}

impl Task {
    /// Everything containerd's Create asks: read the spec, decide the task's kind, mount the
    /// rootfs and have the kind create the task. On error nothing is left behind (mount,
    /// cgroup, process). Also returns the watch on the task's cgroup for OOM kills,
    /// registered before its process existed.
    pub async fn create(
        req: &CreateTaskRequest,
        ctx: &CreateContext<'_>,
    ) -> Result<(Task, Option<OomWatch>), ShimError> {
        let id = req.id.as_str();
        let bundle = PathBuf::from(&req.bundle);
        let reading = Instant::now();
        let spec = read_bundle_spec(&bundle).await?;
        let read = spec::task(&spec);
        let spec_us = reading.elapsed().as_micros();
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        let new = New {
            id,
            bundle: &bundle,
            stdio: &stdio,
            terminal: req.terminal,
            sandbox_id: read.sandbox_id,
        };
        let (created, rootfs) = if let Some(pod) = read.sandbox {
            (sandbox::Sandbox::create(&new, pod)?.boxed(), None)
        } else {
            let mounting = Instant::now();
            let rootfs_dir = bundle.join(&read.root);
            let mounted = rootfs::Mounted::mount(req, &rootfs_dir).await?;
            let mount_us = mounting.elapsed().as_micros();
            let probing = Instant::now();
            let created = async {
                // Before either kind: a Linux container's cgroup is runc's to make, from
                // the same field, and must not land outside the pod's either; and the
                // runtime's options may name the driver too: they must agree with the path.
                let cgroup = read.cgroup.map_err(ShimError::create(id, "spec"))?;
                crate::options::check_cgroup_driver(req.options.as_ref(), cgroup.as_ref())
                    .map_err(ShimError::create(id, "runtime options"))?;
                let entry = entrypoint::probe(&new, &spec, &rootfs_dir, ctx).await?;
                debug!(
                    "container {id}: spec {spec_us} µs, rootfs mount {mount_us} µs, entrypoint {} µs",
                    probing.elapsed().as_micros()
                );
                // The kind, decided: one line per kind.
                Ok::<_, ShimError>(match entry {
                    Entrypoint::Wasm(module) => {
                        wasm::Wasm::create(&new, &spec, cgroup, module, &rootfs_dir, ctx)
                            .await?
                            .boxed()
                    }
                    Entrypoint::Linux => linux::Linux::create(&new, &spec, cgroup, ctx)
                        .await?
                        .boxed(),
                })
            };
            // On error, `mounted` goes with it (see `rootfs::Mounted`).
            (created.await?, mounted.map(rootfs::Mounted::keep))
        };
        let task = Task {
            id: id.to_owned(),
            sandbox_id: new.sandbox_id.map(str::to_owned),
            bundle,
            stdio,
            pid: created.pid,
            state: ProcessState::new(),
            process: created.process,
            rootfs,
            cleaned: Mutex::new(false),
            kind: created.kind,
        };
        Ok((task, created.oom))
    }

    /// The namespaces this task holds for its pod, if it is a pod's sandbox.
    pub fn pod(&self) -> Option<&PodNamespaces> {
        self.kind.pod()
    }

    /// Whether `pid` is the live process of a container (not the sandbox) of pod
    /// `sandbox_id`.
    pub fn is_pod_process(&self, sandbox_id: &str, pid: u32) -> bool {
        self.pod().is_none()
            && self.pid as u32 == pid
            && self.sandbox_id.as_deref() == Some(sandbox_id)
            && self.is_alive()
    }

    /// The process a request names: the init for an empty exec id, else that exec.
    pub fn process(&self, exec_id: &str) -> Result<Process<'_>, ShimError> {
        if exec_id.is_empty() {
            return Ok(Process::Init(self));
        }
        Ok(Process::Exec(self.execs()?.get(exec_id)?))
    }

    /// The task's execs; a kind that runs none refuses, naming why.
    pub fn execs(&self) -> Result<&dyn Execs, ShimError> {
        self.kind
            .execs()
            .ok_or(ShimError::Unsupported("exec into a wasm container"))
    }

    /// What the create cost, phase by phase, if the kind keeps it.
    pub fn timings(&self) -> Option<&Timings> {
        self.kind.timings()
    }

    /// What a later shim needs to clean up after this one.
    pub fn record(&self) -> crate::records::Record {
        let mut r = crate::records::Record {
            id: self.id.clone(),
            cgroup: None,
            rootfs: self.rootfs.clone(),
            runc_root: None,
        };
        self.kind.record(&mut r);
        r
    }

    /// Files kept in the bundle for a dead shim's clean-up, to remove at delete.
    pub fn bundle_records(&self) -> Vec<PathBuf> {
        self.kind.bundle_records(&self.bundle)
    }

    pub fn status(&self) -> Status {
        self.state.status()
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self.status(), Status::Stopped { .. })
    }

    /// Whether the task's process is alive: not reported exited, and its pidfd (taken
    /// while its pid was its own) not readable. A task without one counts as gone.
    pub fn is_alive(&self) -> bool {
        if self.is_stopped() {
            return false;
        }
        let Some(fd) = &self.process else {
            return false;
        };
        let mut fds = [nix::poll::PollFd::new(
            fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(0)
        )
    }

    /// Lets the task's process run.
    pub async fn start(&self) -> Result<(), ShimError> {
        self.kind.start(self).await?;
        self.state.set_running();
        Ok(())
    }

    /// Fails unless the task is created and not started: what `Start` needs.
    pub(crate) fn expect_created(&self) -> Result<(), ShimError> {
        if self.status() != Status::Created {
            return Err(self.precondition("not in created state"));
        }
        Ok(())
    }

    /// Runs the spec's `poststart` hooks, where the kind has them to run.
    pub async fn poststart(&self) {
        self.kind.poststart(self).await;
    }

    /// Runs the spec's `poststop` hooks once the task is gone, once.
    pub async fn poststop(&self) {
        self.kind.poststop(self).await;
    }

    /// How long the task has run (until now, or until it exited if called on exit).
    pub fn run_time(&self) -> std::time::Duration {
        self.state.run_time()
    }

    /// Records the exit the reaper saw; returns false if the task had already exited.
    pub fn set_exited(&self, code: i32) -> bool {
        self.state.set_exited(code)
    }

    /// The task's process exited: what else ends with it (see [`Kind::exited`]).
    pub async fn exited(&self) {
        self.kind.exited(self).await;
    }

    /// Waits until the task has exited; returns its code and time.
    pub async fn wait(&self) -> (i32, OffsetDateTime) {
        self.state.wait().await
    }

    /// Freezes (`paused`) or thaws every process of the task.
    pub async fn pause(&self, paused: bool) -> Result<(), ShimError> {
        self.kind.freeze(self, paused).await?;
        self.state.set_paused(paused);
        Ok(())
    }

    /// Changes the limits of a running task (containerd's `Update`, the kubelet's in-place
    /// resize).
    pub async fn update(&self, resources: &[u8]) -> Result<(), ShimError> {
        self.expect_not_stopped()?;
        self.kind.update(self, resources).await
    }

    /// Signals the task; `Ended` when that ended a task without a process (whose exit the
    /// caller then publishes).
    pub async fn kill(&self, signal: u32, all: bool) -> Result<Signalled, ShimError> {
        self.expect_not_stopped()?;
        let sig = signal_of(signal)?;
        self.kind.kill(self, sig, all).await
    }

    /// The pids of the task's processes.
    pub async fn pids(&self) -> Result<Vec<u32>, ShimError> {
        self.kind.pids(self).await
    }

    /// Ends what is left of the task before its delete (see [`Kind::discard`]).
    pub async fn discard(&self) -> Result<(), ShimError> {
        self.kind.discard(self).await
    }

    /// Unmounts the rootfs and removes the cgroup; safe to call twice. Returns what each
    /// step cost, for the delete's phase line.
    pub fn cleanup(&self) -> Teardown {
        let mut timed = Teardown::default();
        let mut cleaned = self.cleaned.lock().unwrap_or_else(|p| p.into_inner());
        if *cleaned {
            return timed;
        }
        *cleaned = true;
        if let Some(rootfs) = &self.rootfs {
            let unmounting = Instant::now();
            rootfs::unmount(rootfs);
            timed.unmount_us = unmounting.elapsed().as_micros();
        }
        timed.cgroup = self.kind.remove_cgroup();
        timed
    }

    fn expect_not_stopped(&self) -> Result<(), ShimError> {
        if self.is_stopped() {
            return Err(ShimError::NotFound(format!(
                "{}: process already finished",
                self.id
            )));
        }
        Ok(())
    }

    pub(crate) fn precondition(&self, message: &str) -> ShimError {
        ShimError::FailedPrecondition {
            id: self.id.clone(),
            message: message.into(),
        }
    }
}

/// A signal number of a Kill request, checked.
pub(crate) fn signal_of(signal: u32) -> Result<Signal, ShimError> {
    Signal::try_from(signal as i32)
        .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))
}

/// Sends `sig` to `pid` (a process group if negative), one of the shim's own children: a
/// process already gone (`ESRCH`) is no error, its exit is the reaper's to report.
pub(crate) fn signal_pid(pid: i32, sig: Signal, what: &str) -> Result<(), ShimError> {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(ShimError::Io {
            context: format!("kill {what} with {sig}"),
            source: e.into(),
        }),
    }
}

/// A pidfd of process `pid`.
pub(crate) fn pidfd_of(pid: i32) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::other(format!("{pid} is no pid")))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}
