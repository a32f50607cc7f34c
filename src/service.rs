//! The shim v2 glue: containerd's `start`/`delete` commands and the ttrpc task service.
//! Thin on purpose: the work is in [`crate::container`], [`crate::runner`] and, for Linux
//! containers and the processes exec'd into them, [`crate::linux`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::api::{self, DeleteResponse};
use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::asynchronous::util::{read_spec, write_str_to_file};
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC,
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC,
    TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC, TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::convert_to_timestamp;
use containerd_shim::{Flags, StartOpts, TtrpcResult};
use log::{debug, info, warn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;

use wasmedge_aot_protocol::config::{Config, Grouping};

use crate::identity::{Identity, ShimState};

use crate::container::{Container, CreateContext};
use crate::error::ShimError;
use crate::image_layers::ImageLayers;
use crate::runner::Runner;
use crate::spec::{HostSecurity, SANDBOX_ID_ANNOTATION};
use crate::status::{ProcessState, Status};
use crate::sweep::socket_in_use;

use crate::RUNNER_BINARY;

/// Grouping key of the node-wide shim, followed by the key of its [`Identity`] (binaries and
/// configuration); the socket address also hashes containerd's address and the namespace,
/// so each namespace, binary and configuration gets its own shim.
const NODE_GROUP: &str = "wasmedge-node";
/// How long an idle node-wide shim waits for new containers before it exits. Exiting at the
/// instant the last task goes would race with a `start` that just found our socket alive.
const NODE_IDLE_GRACE: Duration = Duration::from_secs(30);
/// How long a create waits for the sweep of dead shims to be done with its id.
const SWEEP_WAIT: Duration = Duration::from_secs(30);
/// How long a starting node shim waits for the lock of its run directory that another
/// process holds (a sweep of a dead shim's directory of the same name cleaning up after it).
const RUN_DIR_WAIT: Duration = Duration::from_secs(10);
/// Where a node-wide shim keeps its working directory (it outlives the bundle it starts in)
/// and its [`ShimState`].
pub use wasmedge_aot_protocol::identity::STATE_ROOT;

/// The shim process: what containerd's `start` and `delete` commands and the daemon share.
pub struct WasmEdgeShim {
    namespace: String,
    id: String,
    socket: String,
    /// containerd's GRPC socket, where the Wasm layers of images are read.
    address: String,
    debug: bool,
    config: Config,
    /// The binaries this process runs and the digest of the config it loaded.
    identity: Identity,
    exit: Arc<ExitSignal>,
    /// The node shim's run directory and its lock, held from before the shim writes there
    /// until it exits (see `leave_bundle`).
    run_dir: std::sync::OnceLock<crate::sweep::RunDir>,
}

#[async_trait]
impl Shim for WasmEdgeShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        let (config, config_digest) = crate::identity::load_config(&Config::path());
        WasmEdgeShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            address: args.address.clone(),
            debug: args.debug,
            config,
            identity: Identity::of(Path::new("/proc/self/exe"), &runner_path(), config_digest),
            exit: Arc::new(ExitSignal::default()),
            run_dir: std::sync::OnceLock::new(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // Before `spawn` reads them as runc's (see `options::take_start_options`).
        crate::options::take_start_options(std::io::stdin().lock())
            .map_err(|e| containerd_shim::Error::InvalidArgument(e.to_string()))?;
        // `start` runs in the bundle.
        let grouping = match self.config.grouping {
            Grouping::Node => {
                // A pod's containers join the network namespace of its sandbox, which only
                // the shim serving the sandbox knows: they follow it, even to an older shim.
                if let Some(address) = sandbox_shim_address(&opts.id).await {
                    write_str_to_file("address", &address).await?;
                    return Ok(address);
                }
                format!("{NODE_GROUP}-{}", self.identity.key())
            }
            Grouping::Pod => read_spec(".")
                .await
                .ok()
                .and_then(|spec| spec.annotations().clone())
                .and_then(|a| a.get(SANDBOX_ID_ANNOTATION).cloned())
                .unwrap_or_else(|| opts.id.clone()),
        };
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // Clean-up after a shim that died: kill what it left and unmount the rootfs.
        let bundle = std::env::current_dir().unwrap_or_default();
        if let Some(pid) = recorded_process(&bundle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // A Linux container: runc's state of it, its processes and its cgroup. When runc
        // fails, the rest is cleaned up all the same and containerd is told why; the dead
        // shim's record of the container stays for the sweep to retry.
        let runc_failed = match crate::linux::state_root(&self.namespace) {
            Ok(root) => crate::linux::force_delete(&root, &self.id).await.err(),
            Err(_) => None,
        };
        let rootfs = bundle.join("rootfs");
        let _ = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH);
        // Its cgroup too (and whatever is still in it): the shim that made it is gone.
        if let Ok(spec) = read_spec(&bundle).await {
            // A path the shim would not have made (a climbing one) is left alone.
            if let Ok(Some(path)) = crate::spec::cgroups_path(&spec) {
                crate::cgroup::remove(&path);
            }
        }
        if let Some(e) = runc_failed {
            return Err(containerd_shim::Error::Other(format!(
                "container {}: {e}",
                self.id
            )));
        }
        info!(
            "cleaned up after dead shim of {} in {}",
            self.id, self.namespace
        );
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(convert_to_timestamp(Some(OffsetDateTime::now_utc()))).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        if let Some(dir) = self.run_dir.take() {
            self.remove_run_dir(dir);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        // The framework builds the task service before it binds the socket, and a daemon
        // spawned for a group whose shim already runs exits right after. Such a daemon must
        // not start a runner or move out of the bundle.
        let serving = !socket_in_use(&self.socket);
        let mut state_dir = None;
        let mut swept = crate::sweep::Pending::default();
        if serving {
            if let Err(e) = crate::logger::init(&self.id, Path::new("log"), self.debug) {
                eprintln!("open shim log: {e}");
            }
            if self.config.grouping == Grouping::Node {
                // The bundle we started in is deleted with its task; move out of it.
                match self.leave_bundle().await {
                    Ok(Some(dir)) => {
                        state_dir = Some(dir.path().to_path_buf());
                        let _ = self.run_dir.set(dir);
                    }
                    Ok(None) => info!("node shim: another shim of {} serves", self.socket),
                    Err(e) => warn!("node shim: {e}"),
                }
                // What dead node shims left: their containers' cgroups and mounts, and their
                // run directories. Off the path of the first create, but planned before it:
                // a create of an id the sweep will go through waits for it (`sweep.rs`).
                let sweep =
                    crate::sweep::plan(Path::new(STATE_ROOT), state_dir.as_deref(), &self.address);
                swept = sweep.pending();
                tokio::task::spawn_blocking(move || sweep.run());
            }
        }
        let service = TaskService {
            inner: Arc::new(Inner {
                namespace: self.namespace.clone(),
                containers: Mutex::new(HashMap::new()),
                runner: tokio::sync::Mutex::new(None),
                seccomp: crate::seccomp::Compiled::default(),
                layers: ImageLayers::new(&self.address, &self.namespace, self.config.wasm_layers),
                host: HostSecurity::detect(),
                publisher,
                exit: self.exit.clone(),
                unclaimed_exits: Mutex::new(UnclaimedExits::default()),
                phases: self.config.cache_dir.clone(),
                grouping: self.config.grouping,
                generation: AtomicU64::new(0),
                creating: AtomicU64::new(0),
                swept,
                state: state_dir.map(|dir| {
                    let state = ShimState {
                        pid: std::process::id(),
                        namespace: self.namespace.clone(),
                        group: format!("{NODE_GROUP}-{}", self.identity.key()),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        identity: self.identity.clone(),
                        tasks: 0,
                        containerd: self.address.clone(),
                    };
                    (dir, Mutex::new(state))
                }),
                records: crate::records::Writer::new(),
            }),
        };
        service.inner.publish_state();
        service.watch_exits().await;
        if serving {
            // Start the runner now: its dynamic linking overlaps containerd's work before
            // the first Create.
            let inner = service.inner.clone();
            tokio::spawn(async move {
                if let Err(e) = inner.runner().await {
                    warn!("{e}");
                }
            });
            tokio::spawn(exit_on_termination(service.inner.clone()));
        }
        service
    }
}

impl WasmEdgeShim {
    /// Moves the daemon's working directory to a directory of its own, with the `address`
    /// file the shim framework reads at exit to remove the socket, and returns it with its
    /// lock, which no sweep or idle exit removes it under (`sweep.rs`). `None` when another
    /// daemon of the socket holds it, and serves (two were started at once).
    async fn leave_bundle(&self) -> Result<Option<crate::sweep::RunDir>, ShimError> {
        let name: String = self
            .socket
            .rsplit('/')
            .next()
            .unwrap_or("shim")
            .chars()
            .take(16)
            .collect();
        let dir = Path::new(STATE_ROOT).join(format!("{}-{name}", self.namespace));
        // Checked from `/` down like the cache: we write here as root.
        let euid = wasmedge_aot_cache::trust::effective_uid();
        let make = move |dir: &Path| {
            wasmedge_aot_cache::trust::ensure_dir(dir, euid, 0o700)
                .map(drop)
                .map_err(std::io::Error::other)
        };
        // Held by another process: a sweep removing a dead shim's directory of this name
        // (for as long as it cleans up after it), or a daemon of this socket started at the
        // same time, which serves once it answers on it.
        let (path, socket) = (dir.clone(), self.socket.clone());
        let taken = tokio::task::spawn_blocking(move || {
            crate::sweep::RunDir::take(&path, make, || socket_in_use(&socket), RUN_DIR_WAIT)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(ShimError::io(format!("create and lock {}", dir.display())))?;
        let Some(taken) = taken else {
            if socket_in_use(&self.socket) {
                return Ok(None);
            }
            return Err(ShimError::Io {
                context: format!("lock {}", dir.display()),
                source: std::io::Error::other(format!(
                    "still held by another process after {} s",
                    RUN_DIR_WAIT.as_secs()
                )),
            });
        };
        std::fs::write(dir.join("address"), &self.socket)
            .map_err(ShimError::io(format!("write {}/address", dir.display())))?;
        std::env::set_current_dir(&dir)
            .map_err(ShimError::io(format!("chdir {}", dir.display())))?;
        Ok(Some(taken))
    }

    /// A node shim that exits (idle, so it records no container) removes its run directory,
    /// which would otherwise stay until the host reboots, one per namespace, binary and
    /// config it ever ran with. First the directory, under the lock the shim has held all
    /// along, while the socket still answers: a `start` meanwhile finds this shim alive, so
    /// no new shim of the socket is in the directory. Then the socket, which the framework
    /// would remove after us through the `address` file of the directory, gone now.
    fn remove_run_dir(&self, dir: crate::sweep::RunDir) {
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.remove() {
            warn!("remove {}: {e}", path.display());
        }
        let socket = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if let Err(e) = std::fs::remove_file(socket) {
            debug!("remove {socket}: {e}");
        }
    }
}

/// A Wasm container's process, kept in its bundle for [`Shim::delete_shim`]: its pid and
/// its start time (`<pid> <start time>`, the start time in clock ticks since boot, field 22
/// of `/proc/<pid>/stat`).
const PID_FILE: &str = "wasm.pid";

/// Records the container process `pid`, started at `start` (see [`start_time`]), in
/// `bundle`.
fn record_process(bundle: &Path, pid: i32, start: u64) -> std::io::Result<()> {
    std::fs::write(bundle.join(PID_FILE), format!("{pid} {start}\n"))
}

/// The pid of the process recorded in `bundle` if it still is that process. The file
/// outlives the process when the shim died, and its pid can name another process since:
/// every Wasm container's process runs the runner binary, so the binary proves nothing (a
/// tenant who cycles pids could have another namespace's container killed). As runc checks
/// its init's start time before it signals a container, the start time must be the
/// recorded one; a file without one (an older shim's) names no process.
fn recorded_process(bundle: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(bundle.join(PID_FILE)).ok()?;
    let (pid, start) = text.trim().split_once(' ')?;
    let (pid, start) = (pid.parse::<i32>().ok()?, start.parse::<u64>().ok()?);
    (pid > 0 && start_time(pid) == Some(start)).then_some(pid)
}

/// The start time of process `pid`, in clock ticks after boot.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')',
    // from the third (state) on.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    runner: tokio::sync::Mutex<Option<Arc<Runner>>>,
    /// Each distinct seccomp profile's program, compiled once.
    seccomp: crate::seccomp::Compiled,
    /// Modules read from images' Wasm layers, for containers whose rootfs has none.
    layers: ImageLayers,
    host: HostSecurity,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    /// Exits reaped before their container knew its pid (a process that dies during create).
    unclaimed_exits: Mutex<UnclaimedExits>,
    /// The cache whose layout holds the node-wide per-phase totals, see [`crate::phases`].
    phases: PathBuf,
    grouping: Grouping,
    /// Bumped by every create; an idle node shim exits only if none came during its grace.
    generation: AtomicU64,
    /// Creates in flight: a shim with one is not idle, though its table may still be empty
    /// (a create that reads a Wasm layer or waits for the sweep takes a while).
    creating: AtomicU64,
    /// The container ids the sweep of dead shims has yet to go through: a create of one
    /// waits (see `sweep.rs`).
    swept: crate::sweep::Pending,
    /// A node shim's run directory and what it publishes there for `wasmedge-shimctl check`.
    state: Option<(PathBuf, Mutex<ShimState>)>,
    /// Writes the records and the state, and the phase totals, off the request path.
    records: crate::records::Writer,
}

impl Inner {
    /// The runner, started on first use and again if it has died.
    async fn runner(&self) -> Result<Arc<Runner>, ShimError> {
        let mut slot = self.runner.lock().await;
        if let Some(r) = slot.as_ref().filter(|r| r.is_alive()) {
            return Ok(r.clone());
        }
        let binary = runner_path();
        let (reader, writer) = std::io::pipe().map_err(ShimError::io("runner stderr pipe"))?;
        let r = Runner::start(&binary, writer).map_err(|e| ShimError::Io {
            context: "start the runner".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        forward_lines(reader);
        debug!("runner {} started as pid {}", binary.display(), r.pid());
        let r = Arc::new(r);
        *slot = Some(r.clone());
        Ok(r)
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_idle(&self) -> bool {
        self.creating.load(Ordering::SeqCst) == 0 && self.containers().is_empty()
    }

    /// Ends the shim, which serves no container: its state file goes first, so that
    /// `wasmedge-shimctl check` no longer lists it; the run directory and the socket go in
    /// [`Shim::wait`] once the framework sees the signal. Both in turn with the records:
    /// a write asked before (the state and the record of the last delete) done after the
    /// directory was emptied would leave the directory, with a state file, behind.
    fn exit_idle(self: &Arc<Self>) {
        let inner = self.clone();
        self.records.write(move || {
            if let Some((dir, _)) = &inner.state {
                let _ = std::fs::remove_file(dir.join(crate::identity::STATE_FILE));
            }
            inner.exit.signal();
        });
    }

    /// Writes the node shim's state with the number of tasks it serves now. Off the request
    /// path, in turn with the records; each write counts the tasks at its own turn.
    fn publish_state(self: &Arc<Self>) {
        if self.state.is_none() {
            return;
        }
        let inner = self.clone();
        self.records.write(move || {
            let Some((dir, state)) = &inner.state else {
                return;
            };
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.tasks = inner.containers().len();
            if let Err(e) = state.write(dir) {
                debug!(
                    "write {}: {e}",
                    dir.join(crate::identity::STATE_FILE).display()
                );
            }
        });
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.to_string()))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            warn!("publish {topic}: {e}");
        }
    }

    fn unclaimed_mark(&self) -> u64 {
        self.unclaimed_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark()
    }

    fn take_unclaimed(&self, pid: i32, since: u64) -> Option<i32> {
        self.unclaimed_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(pid, since)
    }

    async fn on_exit(&self, pid: i32, code: i32) {
        // A stopped container's pid may be a new process's now (an exec's, or another
        // container's being created).
        let container = self
            .containers()
            .values()
            .find(|c| c.pid == pid && !matches!(c.status(), Status::Stopped { .. }))
            .cloned();
        if container.is_none() && self.on_exec_exit(pid, code).await {
            return;
        }
        let Some(c) = container else {
            self.unclaimed_exits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(pid, code);
            return;
        };
        if c.set_exited(code) {
            let run = c.run_time();
            debug!(
                "container {} (pid {pid}) exited with {code} after running {} µs",
                c.id,
                run.as_micros()
            );
            if let Some(linux) = &c.linux {
                if !linux.own_pid_namespace {
                    // Without a pid namespace of its own nothing ends the container's other
                    // processes with its init: the shim does, as containerd's runc shim.
                    let c = c.clone();
                    tokio::spawn(async move {
                        if let Some(linux) = &c.linux {
                            let _ = linux.kill(&c.id, libc::SIGKILL as u32, true).await;
                        }
                    });
                }
                self.publish_exit(&c).await;
                // The phase totals are the Wasm start path's.
                return;
            }
            self.publish_exit(&c).await;
            let (path, timings) = (self.phases.clone(), c.timings.clone());
            self.records.write(move || {
                if let Err(e) = crate::phases::record(&path, &timings, run.as_micros() as u64) {
                    debug!("record phase timings in {}: {e}", path.display());
                }
            });
        }
    }

    /// The exit of a process exec'd into a Linux container, if `pid` is one: published as
    /// the exec's `TaskExit`.
    async fn on_exec_exit(&self, pid: i32, code: i32) -> bool {
        let found = self.containers().values().find_map(|c| {
            let exec = c.linux.as_ref()?.exec_of_pid(pid)?;
            Some((c.id.clone(), exec))
        });
        let Some((id, exec)) = found else {
            return false;
        };
        if exec.state.set_exited(code) {
            debug!("exec {} in {id} (pid {pid}) exited with {code}", exec.id);
            self.publish_exec_exit(&id, &exec.id, pid, &exec.state)
                .await;
        }
        true
    }

    async fn publish_exec_exit(&self, id: &str, exec_id: &str, pid: i32, state: &ProcessState) {
        if let Status::Stopped { code, at } = state.status() {
            let ev = TaskExit {
                container_id: id.to_string(),
                id: exec_id.to_string(),
                pid: pid as u32,
                exit_status: code as u32,
                exited_at: timestamp(at),
                ..Default::default()
            };
            self.publish(TASK_EXIT_EVENT_TOPIC, Box::new(ev)).await;
        }
    }

    /// A Linux container's, for a request that names an exec: containerd asks a Wasm
    /// container for none but `Exec` itself, which fails.
    fn linux_of<'c>(&self, c: &'c Container) -> Result<&'c crate::linux::Linux, ShimError> {
        c.linux
            .as_ref()
            .ok_or(ShimError::Unsupported("exec into a wasm container"))
    }

    async fn publish_exit(&self, c: &Container) {
        if let Status::Stopped { code, at } = c.status() {
            let ev = TaskExit {
                container_id: c.id.clone(),
                id: c.id.clone(),
                pid: c.pid as u32,
                exit_status: code as u32,
                exited_at: timestamp(at),
                ..Default::default()
            };
            self.publish(TASK_EXIT_EVENT_TOPIC, Box::new(ev)).await;
        }
    }
}

impl TaskService {
    /// Pause or Resume (runc's freezer; a Wasm container refuses, naming why), then the
    /// event containerd expects.
    async fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<api::Empty> {
        let c = self.inner.get(id)?;
        c.pause(paused).await?;
        let container_id = c.id.clone();
        let (topic, ev): (&str, Box<dyn MessageDyn>) = if paused {
            let ev = TaskPaused {
                container_id,
                ..Default::default()
            };
            (TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
        } else {
            let ev = TaskResumed {
                container_id,
                ..Default::default()
            };
            (TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
        };
        self.inner.publish(topic, ev).await;
        Ok(api::Empty::new())
    }

    async fn watch_exits(&self) {
        let mut sub = match monitor_subscribe(Topic::Pid).await {
            Ok(s) => s,
            Err(e) => {
                warn!("subscribe to exits: {e}");
                return;
            }
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            while let Some(ev) = sub.rx.recv().await {
                if let Subject::Pid(pid) = ev.subject {
                    inner.on_exit(pid, ev.exit_code).await;
                }
            }
        });
    }
}

/// SIGTERM and SIGINT end a shim that serves no container, at once: an operator or a
/// service manager stopping an idle node shim should not wait out its idle grace (the
/// framework only logs both signals). A shim with containers, or a create in flight, goes on
/// serving them and logs the signal, as rust-extensions' runc shim (on the same framework)
/// does: its containers' processes are its children, and a shim that left them would have
/// containerd's clean-up of a dead shim kill them all (containerd's Go runc shim exits on
/// the signal all the same; containerd itself never signals a shim, it sends `Shutdown`
/// after the last delete). Such a shim exits when it is idle, as every node shim does.
async fn exit_on_termination(inner: Arc<Inner>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            warn!("listen for SIGTERM and SIGINT: {e}");
            return;
        }
    };
    loop {
        let name = tokio::select! {
            Some(()) = term.recv() => "SIGTERM",
            Some(()) = int.recv() => "SIGINT",
            else => return,
        };
        if inner.is_idle() {
            info!("{name}: no container to serve, exiting");
            inner.exit_idle();
            return;
        }
        info!(
            "{name}: ignored while serving {} container(s) or a create; the shim exits when idle",
            inner.containers().len()
        );
    }
}

/// Publishes `TaskOOM` for each OOM kill in the container's cgroup, until the cgroup is
/// removed with the container.
async fn publish_oom_kills(inner: Arc<Inner>, id: String, mut watch: crate::cgroup::OomWatch) {
    debug!("container {id}: watching for OOM kills ({watch})");
    while watch.next_kill().await {
        warn!("container {id}: the kernel's OOM killer ended a process in its cgroup");
        let ev = TaskOOM {
            container_id: id.clone(),
            ..Default::default()
        };
        inner.publish(TASK_OOM_EVENT_TOPIC, Box::new(ev)).await;
    }
    debug!("container {id}: OOM watch ends");
}

/// The address of the shim that serves the pod sandbox of the container whose bundle is the
/// current directory, if it is a pod's container (not the sandbox) and that shim is alive.
/// Sibling bundles are containerd's (`<state>/<namespace>/<id>`), and `start` wrote the
/// sandbox's `address` there.
async fn sandbox_shim_address(id: &str) -> Option<String> {
    let spec = read_spec(".").await.ok()?;
    let sandbox = spec
        .annotations()
        .as_ref()?
        .get(SANDBOX_ID_ANNOTATION)?
        .clone();
    let plain = !sandbox.is_empty() && !sandbox.contains('/') && sandbox != "." && sandbox != "..";
    if sandbox == id || !plain {
        return None;
    }
    let address = std::fs::read_to_string(Path::new("..").join(&sandbox).join("address")).ok()?;
    let address = address.trim().to_string();
    socket_in_use(&address).then_some(address)
}

fn runner_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMEDGE_SHIM_RUNNER") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(RUNNER_BINARY)))
        .unwrap_or_else(|| PathBuf::from(RUNNER_BINARY))
}

/// Copies what the runner prints into the shim log, a line at a time.
fn forward_lines(reader: std::io::PipeReader) {
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
        {
            warn!("runner: {line}");
        }
    });
}

fn timestamp(
    at: OffsetDateTime,
) -> containerd_shim::protos::protobuf::MessageField<
    containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp,
> {
    Some(convert_to_timestamp(Some(at))).into()
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.inner;
        if inner.get(&req.id).is_ok() {
            return Err(ShimError::AlreadyExists(req.id).into());
        }
        // In flight from here, the wait for the sweep included: the shim does not idle out.
        inner.generation.fetch_add(1, Ordering::SeqCst);
        let _creating = Creating::new(&inner.creating);
        // A dead shim's record of a container of this id names this container's runc state,
        // cgroup and rootfs too: the sweep must be done with it before the create begins.
        if !inner.swept.wait(&req.id, SWEEP_WAIT).await {
            return Err(ShimError::FailedPrecondition {
                id: req.id.clone(),
                message: format!(
                    "a dead shim's container of this id is still being cleaned up after {} s",
                    SWEEP_WAIT.as_secs()
                ),
            }
            .into());
        }
        crate::logger::attach_task(&req.id, Path::new(&req.bundle));
        let runner = inner.runner().await?;
        let sandbox = |sandbox_id: &str| {
            inner
                .containers()
                .get(sandbox_id)
                .filter(|c| c.sandbox)
                .cloned()
        };
        let pod_process = |sandbox_id: &str, pid: u32| {
            inner.containers().values().any(|c| {
                !c.sandbox
                    && c.pid as u32 == pid
                    && c.sandbox_id.as_deref() == Some(sandbox_id)
                    && c.is_alive()
            })
        };
        let ctx = CreateContext {
            namespace: &inner.namespace,
            runner: &runner,
            seccomp: &inner.seccomp,
            host: inner.host,
            sandbox: &sandbox,
            pod_process: &pod_process,
            layers: &inner.layers,
        };
        let since = inner.unclaimed_mark();
        let creating = std::time::Instant::now();
        let (container, oom) = match Container::create(&req, &ctx).await {
            Ok((c, oom)) => (Arc::new(c), oom),
            Err(e) => {
                warn!("create {}: {e}", req.id);
                crate::logger::detach_task(&req.id);
                return Err(e.into());
            }
        };
        let pid = container.pid;
        let create_us = creating.elapsed().as_micros();
        let recording = std::time::Instant::now();
        // The records are for after a crash: written off the request path, in order
        // (`records.rs`).
        if !container.sandbox && container.linux.is_none() {
            // Its start time is read here, as the create left it; only the write waits.
            match start_time(pid) {
                Some(start) => {
                    let (bundle, id) = (PathBuf::from(&req.bundle), req.id.clone());
                    inner.records.write(move || {
                        if let Err(e) = record_process(&bundle, pid, start) {
                            warn!("record the process of {id} in its bundle: {e}");
                        }
                    });
                }
                None => warn!(
                    "record the process of {} in its bundle: no start time in /proc/{pid}/stat",
                    req.id
                ),
            }
        }
        inner.containers().insert(req.id.clone(), container.clone());
        if let Some((dir, _)) = &inner.state {
            let r = crate::sweep::Record {
                id: req.id.clone(),
                cgroup: container.cgroup_path().map(str::to_string),
                rootfs: container.rootfs_path().map(Path::to_path_buf),
                runc_root: container.linux.as_ref().map(|l| l.root.clone()),
            };
            let dir = dir.clone();
            inner.records.write(move || {
                if let Err(e) = crate::sweep::record(&dir, &r) {
                    warn!("record container {}: {e}", r.id);
                }
            });
        }
        inner.publish_state();
        if let Some(watch) = oom {
            tokio::spawn(publish_oom_kills(inner.clone(), req.id.clone(), watch));
        }
        if let Some(code) = inner.take_unclaimed(pid, since) {
            container.set_exited(code);
        }
        let ev = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid: pid as u32,
            ..Default::default()
        };
        inner.publish(TASK_CREATE_EVENT_TOPIC, Box::new(ev)).await;
        debug!(
            "container {}: create {create_us} µs, create records {} µs",
            req.id,
            recording.elapsed().as_micros()
        );
        info!("created {} as pid {pid}", req.id);
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let c = self.inner.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let linux = self.inner.linux_of(&c)?;
            let exec = linux.exec(&c.id, &req.exec_id)?;
            let since = self.inner.unclaimed_mark();
            let pid = linux.start_exec(&c.id, &exec).await?;
            // An exec that ended before its pid was known.
            let early = self.inner.take_unclaimed(pid, since);
            let ev = TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            };
            self.inner
                .publish(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
                .await;
            if let Some(code) = early {
                if exec.state.set_exited(code) {
                    self.inner
                        .publish_exec_exit(&c.id, &exec.id, pid, &exec.state)
                        .await;
                }
            }
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        c.start().await?;
        let ev = TaskStart {
            container_id: c.id.clone(),
            pid: c.pid as u32,
            ..Default::default()
        };
        self.inner
            .publish(TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
        c.poststart().await;
        Ok(api::StartResponse {
            pid: c.pid as u32,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = self.inner.get(&req.id)?;
        let mut resp = api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: c.pid as u32,
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            ..Default::default()
        };
        let mut status = c.status();
        if !req.exec_id.is_empty() {
            let exec = self.inner.linux_of(&c)?.exec(&c.id, &req.exec_id)?;
            resp.exec_id = exec.id.clone();
            resp.pid = exec.pid() as u32;
            resp.stdin = exec.stdio.stdin.clone();
            resp.stdout = exec.stdio.stdout.clone();
            resp.stderr = exec.stdio.stderr.clone();
            status = exec.state.status();
        }
        resp.status = match status {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped { code, at } => {
                resp.exit_status = code as u32;
                resp.exited_at = timestamp(at);
                api::Status::STOPPED
            }
        }
        .into();
        Ok(resp)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let c = self.inner.get(&req.id)?;
        let (code, at) = if req.exec_id.is_empty() {
            c.wait().await
        } else {
            let exec = self.inner.linux_of(&c)?.exec(&c.id, &req.exec_id)?;
            exec.state.wait().await
        };
        Ok(api::WaitResponse {
            exit_status: code as u32,
            exited_at: timestamp(at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let c = self.inner.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let exec = self.inner.linux_of(&c)?.exec(&c.id, &req.exec_id)?;
            if exec.state.status() != Status::Running {
                return Err(
                    ShimError::NotFound(format!("{} exec {}: not running", c.id, exec.id)).into(),
                );
            }
            let sig = crate::container::signal_of(req.signal)?;
            // Signalled by pid, as a Wasm container's process is: the pid is the exec's until
            // the reaper takes its exit, and the exec is stopped as soon as the exit is seen.
            let what = format!("exec {} in {}", exec.id, c.id);
            crate::container::signal_pid(exec.pid(), sig, &what)?;
            return Ok(api::Empty::new());
        }
        let was_stopped = matches!(c.status(), Status::Stopped { .. });
        c.kill(req.signal, req.all).await?;
        if c.sandbox && !was_stopped && matches!(c.status(), Status::Stopped { .. }) {
            self.inner.publish_exit(&c).await;
        }
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let c = self.inner.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let exec = self.inner.linux_of(&c)?.remove_exec(&c.id, &req.exec_id)?;
            let (code, at) = match exec.state.status() {
                Status::Stopped { code, at } => (code, at),
                _ => (0, OffsetDateTime::now_utc()),
            };
            return Ok(api::DeleteResponse {
                pid: exec.pid() as u32,
                exit_status: code as u32,
                exited_at: timestamp(at),
                ..Default::default()
            });
        }
        if matches!(c.status(), Status::Running | Status::Paused) {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                message: "cannot delete a running container: kill it first".into(),
            }
            .into());
        }
        // A container runc could not delete stays, with its record: containerd sees the
        // delete fail (with runc's reason) and may retry it, and if this shim dies the next
        // one's sweep retries it.
        let deleting = std::time::Instant::now();
        c.discard().await?;
        let discard_us = deleting.elapsed().as_micros();
        let teardown = c.cleanup();
        let recording = std::time::Instant::now();
        let (code, at) = match c.status() {
            Status::Stopped { code, at } => (code, at),
            _ => (128 + libc::SIGKILL, OffsetDateTime::now_utc()),
        };
        self.inner.containers().remove(&req.id);
        // Out of the table first: a delete cancelled while they run leaves nothing behind.
        c.poststop().await;
        // After the writes of its create, in turn (`records.rs`).
        let (pid_file, dir, id) = (
            c.bundle.join(PID_FILE),
            self.inner.state.as_ref().map(|(dir, _)| dir.clone()),
            req.id.clone(),
        );
        self.inner.records.write(move || {
            let _ = std::fs::remove_file(pid_file);
            if let Some(dir) = dir {
                crate::sweep::forget(&dir, &id);
            }
        });
        self.inner.publish_state();
        let records_us = recording.elapsed().as_micros();
        let publishing = std::time::Instant::now();
        let ev = TaskDelete {
            container_id: c.id.clone(),
            id: c.id.clone(),
            pid: c.pid as u32,
            exit_status: code as u32,
            exited_at: timestamp(at),
            ..Default::default()
        };
        self.inner
            .publish(TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        debug!(
            "container {}: delete {} µs: discard {discard_us} µs, unmount {} µs, \
             cgroup drain {} µs, cgroup removal {} µs, records {records_us} µs, \
             delete event {} µs",
            c.id,
            deleting.elapsed().as_micros(),
            teardown.unmount_us,
            teardown.cgroup.drain_us,
            teardown.cgroup.remove_us,
            publishing.elapsed().as_micros(),
        );
        // After the last line of this task: its pipe closes with it.
        crate::logger::detach_task(&req.id);
        Ok(api::DeleteResponse {
            pid: c.pid as u32,
            exit_status: code as u32,
            exited_at: timestamp(at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let c = self.inner.get(&req.id)?;
        let mut resp = api::PidsResponse::default();
        if let Some(linux) = &c.linux {
            for pid in linux.pids(&c.id).await? {
                resp.processes
                    .push(containerd_shim::protos::types::task::ProcessInfo {
                        pid,
                        ..Default::default()
                    });
            }
        } else if !matches!(c.status(), Status::Stopped { .. }) {
            resp.processes
                .push(containerd_shim::protos::types::task::ProcessInfo {
                    pid: c.pid as u32,
                    ..Default::default()
                });
        }
        Ok(resp)
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let c = self.inner.get(&req.id)?;
        if matches!(c.status(), Status::Stopped { .. }) {
            return Err(ShimError::NotFound(format!("{}: process already finished", c.id)).into());
        }
        let stats = crate::cgroup::metrics::of_pid(c.pid as u32).map_err(|e| ShimError::Io {
            context: format!("stats of container {}", c.id),
            source: std::io::Error::other(e),
        })?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.inner.get(&req.id)?;
        let linux = self.inner.linux_of(&c)?;
        if matches!(c.status(), Status::Stopped { .. }) {
            return Err(c.precondition("the container is not running").into());
        }
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.as_slice())
            .ok_or_else(|| {
                ShimError::InvalidArgument(format!("exec {}: no process spec", req.exec_id))
            })?;
        linux.add_exec(
            &c.id,
            &req.exec_id,
            spec,
            req.terminal,
            crate::stdio::StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            },
        )?;
        let ev = TaskExecAdded {
            container_id: c.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.inner
            .publish(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.inner.get(&req.id)?;
        let Some(linux) = &c.linux else {
            return Err(ShimError::Unsupported("a terminal (tty) for a wasm container").into());
        };
        linux.resize(&c.id, &req.exec_id, req.width, req.height)?;
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.inner.get(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.as_slice())
            .ok_or_else(|| {
                ShimError::InvalidArgument(format!("update {}: no resources", req.id))
            })?;
        c.update(resources).await?;
        Ok(api::Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, true).await
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        self.set_paused(&req.id, false).await
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        // The container's process (or exec'd one) holds its stdin FIFO itself: containerd's
        // close of its end reaches it as EOF. A terminal's copy reads a FIFO that the shim
        // also holds a writer of, until now.
        let c = self.inner.get(&req.id)?;
        if let (Some(linux), true) = (&c.linux, req.stdin) {
            // An exec that is gone has nothing to close (containerd closes its end anyway).
            match linux.close_stdin(&c.id, &req.exec_id) {
                Ok(()) | Err(ShimError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(api::Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.inner.get(&req.id).map(|c| c.pid as u32).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let inner = self.inner.clone();
        if !inner.is_idle() {
            return Ok(api::Empty::new());
        }
        match inner.grouping {
            Grouping::Pod => inner.exit.signal(),
            Grouping::Node => {
                let generation = inner.generation.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    tokio::time::sleep(NODE_IDLE_GRACE).await;
                    if inner.is_idle() && inner.generation.load(Ordering::SeqCst) == generation {
                        info!("node shim idle for {NODE_IDLE_GRACE:?}, exiting");
                        inner.exit_idle();
                    }
                });
            }
        }
        Ok(api::Empty::new())
    }
}

/// One create in flight, counted while it lives (see `Inner::creating`).
struct Creating<'a>(&'a AtomicU64);

impl<'a> Creating<'a> {
    fn new(count: &'a AtomicU64) -> Creating<'a> {
        count.fetch_add(1, Ordering::SeqCst);
        Creating(count)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Exits the reaper saw for no known process: a container's or an exec's process that
/// ended before its pid was known, and the shim's own children (runc's commands, background
/// compiles). Each is numbered, and a create or an exec takes only an exit numbered after it
/// began: an older exit of the same pid was another process's, before the pid was reused.
#[derive(Debug, Default)]
struct UnclaimedExits {
    next: u64,
    /// pid → (exit code, number).
    exits: HashMap<i32, (i32, u64)>,
}

impl UnclaimedExits {
    /// Most exits kept; the oldest half goes beyond it (a process that ended during its
    /// create is claimed within that create).
    const MAX: usize = 256;

    /// The number the next exit gets.
    fn mark(&self) -> u64 {
        self.next
    }

    fn insert(&mut self, pid: i32, code: i32) {
        if self.exits.len() >= Self::MAX {
            let keep_from = self.next.saturating_sub(Self::MAX as u64 / 2);
            self.exits.retain(|_, (_, n)| *n >= keep_from);
        }
        self.exits.insert(pid, (code, self.next));
        self.next += 1;
    }

    /// The exit code of `pid` if it exited at or after `since`.
    fn take(&mut self, pid: i32, since: u64) -> Option<i32> {
        match self.exits.remove(&pid) {
            Some((code, n)) if n >= since => Some(code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod unclaimed_tests {
    use super::UnclaimedExits;

    #[test]
    fn an_exit_before_the_mark_is_another_process_of_the_same_pid() {
        let mut u = UnclaimedExits::default();
        u.insert(42, 0); // a runc command's exit
        let since = u.mark();
        assert_eq!(u.take(42, since), None, "older than the create");
        u.insert(42, 7); // the new process of pid 42
        assert_eq!(u.take(42, since), Some(7));
        assert_eq!(u.take(42, since), None, "taken once");
    }

    #[test]
    fn the_map_stays_bounded_and_keeps_the_newest() {
        let mut u = UnclaimedExits::default();
        for pid in 0..10_000 {
            u.insert(pid, 1);
        }
        assert!(u.exits.len() <= UnclaimedExits::MAX);
        let since = u.mark();
        u.insert(5, 3);
        assert_eq!(u.take(9_999, 0), Some(1), "the newest are kept");
        assert_eq!(u.take(5, since), Some(3));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_process_is_named_only_while_it_is_the_same_process() {
        let bundle = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        record_process(bundle.path(), pid, start_time(pid).unwrap()).unwrap();
        assert_eq!(recorded_process(bundle.path()), Some(pid));

        // The pid now names another process (what a reused pid looks like).
        let start = start_time(pid).unwrap();
        std::fs::write(bundle.path().join(PID_FILE), format!("{pid} {}", start + 1)).unwrap();
        assert_eq!(recorded_process(bundle.path()), None);
        // An older shim's file: a pid alone proves nothing.
        std::fs::write(bundle.path().join(PID_FILE), pid.to_string()).unwrap();
        assert_eq!(recorded_process(bundle.path()), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
