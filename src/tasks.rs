//! The shim's tasks and the jobs that serve all of them, apart from any one request: the
//! table of tasks, the runner, exit routing (the reaper's exits to the task or exec they
//! end, and their events), OOM events, the records for after a crash, the node shim's
//! published state, and its idle exit (on `Shutdown`'s grace or a signal).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC};
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::convert_to_timestamp;
use log::{debug, info, warn};
use time::OffsetDateTime;
use wasmedge_aot_protocol::config::{Config, Grouping};

use crate::error::ShimError;
use crate::identity::ShimState;
use crate::image_layers::ImageLayers;
use crate::runner::Runner;
use crate::spec::HostSecurity;
use crate::status::{ProcessState, Status};
use crate::task::Task;

/// How long an idle node-wide shim waits for new containers before it exits. Exiting at the
/// instant the last task goes would race with a `start` that just found our socket alive.
const NODE_IDLE_GRACE: Duration = Duration::from_secs(30);

/// What the shim serves: its tasks, and what every task's requests share.
pub struct Tasks {
    pub namespace: String,
    table: Mutex<HashMap<String, Arc<Task>>>,
    runner: tokio::sync::Mutex<Option<Arc<Runner>>>,
    /// Each distinct seccomp profile's program, compiled once.
    pub seccomp: crate::seccomp::Compiled,
    /// Modules read from images' Wasm layers, for containers whose rootfs has none.
    pub layers: ImageLayers,
    pub host: HostSecurity,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    /// Exits reaped before their task knew its pid (a process that dies during create).
    unclaimed_exits: Mutex<UnclaimedExits>,
    /// The node config the shim loaded (its digest is in the shim's identity): every runner
    /// it starts gets this one.
    config: Config,
    /// Bumped by every create; an idle node shim exits only if none came during its grace.
    generation: AtomicU64,
    /// Creates in flight: a shim with one is not idle, though its table may still be empty
    /// (a create that reads a Wasm layer or waits for the sweep takes a while).
    creating: AtomicU64,
    /// The container ids the sweep of dead shims has yet to go through: a create of one
    /// waits (see `sweep.rs`).
    pub swept: crate::sweep::Pending,
    /// A node shim's run directory and what it publishes there for `wasmedge-shimctl check`.
    state: Option<(PathBuf, Mutex<ShimState>)>,
    /// Writes the records and the state, and the phase totals, off the request path.
    pub records: crate::records::Writer,
}

/// What [`Tasks::new`] is given: the shim's settings and the framework's handles.
pub struct Settings {
    pub namespace: String,
    pub layers: ImageLayers,
    pub publisher: RemotePublisher,
    pub exit: Arc<ExitSignal>,
    pub config: Config,
    pub swept: crate::sweep::Pending,
    /// A node shim's run directory and its first state.
    pub state: Option<(PathBuf, ShimState)>,
}

impl Tasks {
    /// No task yet; the exits of the shim's children routed from now on, and, for a shim
    /// that serves (`serving`), the runner started (its dynamic linking overlaps
    /// containerd's work before the first Create) and the signals watched.
    pub async fn new(s: Settings, serving: bool) -> Arc<Tasks> {
        let tasks = Arc::new(Tasks {
            namespace: s.namespace,
            table: Mutex::new(HashMap::new()),
            runner: tokio::sync::Mutex::new(None),
            seccomp: crate::seccomp::Compiled::default(),
            layers: s.layers,
            host: HostSecurity::detect(),
            publisher: s.publisher,
            exit: s.exit,
            unclaimed_exits: Mutex::new(UnclaimedExits::default()),
            config: s.config,
            generation: AtomicU64::new(0),
            creating: AtomicU64::new(0),
            swept: s.swept,
            state: s.state.map(|(dir, state)| (dir, Mutex::new(state))),
            records: crate::records::Writer::new(),
        });
        tasks.publish_state();
        tasks.route_exits().await;
        if serving {
            let t = tasks.clone();
            tokio::spawn(async move {
                if let Err(e) = t.runner().await {
                    warn!("{e}");
                }
            });
            tokio::spawn(exit_on_termination(tasks.clone()));
        }
        tasks
    }

    /// The runner, started on first use and again if it has died.
    pub async fn runner(&self) -> Result<Arc<Runner>, ShimError> {
        let mut slot = self.runner.lock().await;
        if let Some(r) = slot.as_ref().filter(|r| r.is_alive()) {
            return Ok(r.clone());
        }
        let binary = crate::runner::installed_path();
        let (reader, writer) = std::io::pipe().map_err(ShimError::io("runner stderr pipe"))?;
        let r = Runner::start(&binary, writer, &self.config).map_err(|e| ShimError::Io {
            context: "start the runner".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        forward_lines(reader);
        debug!("runner {} started as pid {}", binary.display(), r.pid());
        let r = Arc::new(r);
        *slot = Some(r.clone());
        Ok(r)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Task>>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Task>, ShimError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.to_string()))
    }

    /// The sandbox of pod `sandbox_id`, if this shim serves it.
    pub fn sandbox(&self, sandbox_id: &str) -> Option<Arc<Task>> {
        self.table()
            .get(sandbox_id)
            .filter(|t| t.pod().is_some())
            .cloned()
    }

    /// Whether `pid` is the live process of a container of pod `sandbox_id`.
    pub fn is_pod_process(&self, sandbox_id: &str, pid: u32) -> bool {
        self.table()
            .values()
            .any(|t| t.is_pod_process(sandbox_id, pid))
    }

    /// A create in flight, counted while the guard lives: the shim does not idle out.
    pub fn creating(&self) -> Creating<'_> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.creating.fetch_add(1, Ordering::SeqCst);
        Creating(&self.creating)
    }

    /// The number the next unclaimed exit gets: a create or an exec takes only those
    /// numbered after it began.
    pub fn unclaimed_mark(&self) -> u64 {
        self.unclaimed().mark()
    }

    /// The exit of `pid`, reaped at or after `since` before anyone knew the pid.
    pub fn take_unclaimed(&self, pid: i32, since: u64) -> Option<i32> {
        self.unclaimed().take(pid, since)
    }

    fn unclaimed(&self) -> std::sync::MutexGuard<'_, UnclaimedExits> {
        self.unclaimed_exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a created task in: its records for after a crash, its OOM watch, and an exit
    /// its process had before its pid was known (reaped after `since`).
    pub fn add(
        self: &Arc<Self>,
        task: Arc<Task>,
        oom: Option<crate::cgroup::OomWatch>,
        since: u64,
    ) {
        self.table().insert(task.id.clone(), task.clone());
        if let Some((dir, _)) = &self.state {
            // After the kind's own records (queued by its create), in turn.
            let (r, dir) = (task.record(), dir.clone());
            self.records.write(move || {
                if let Err(e) = crate::sweep::record(&dir, &r) {
                    warn!("record container {}: {e}", r.id);
                }
            });
        }
        self.publish_state();
        if let Some(watch) = oom {
            tokio::spawn(publish_oom_kills(self.clone(), task.id.clone(), watch));
        }
        if let Some(code) = self.take_unclaimed(task.pid, since) {
            task.set_exited(code);
        }
    }

    /// Forgets a deleted task, and, after the writes of its create and in turn, its records.
    pub fn remove(self: &Arc<Self>, task: &Task) {
        self.table().remove(&task.id);
        let (files, dir, id) = (
            task.bundle_records(),
            self.state.as_ref().map(|(dir, _)| dir.clone()),
            task.id.clone(),
        );
        self.records.write(move || {
            for f in files {
                let _ = std::fs::remove_file(f);
            }
            if let Some(dir) = dir {
                crate::sweep::forget(&dir, &id);
            }
        });
        self.publish_state();
    }

    pub fn is_idle(&self) -> bool {
        self.creating.load(Ordering::SeqCst) == 0 && self.table().is_empty()
    }

    /// `Shutdown`, containerd's after a task's delete: a shim with no task left exits: a
    /// pod's at once, a node shim after its grace, if no create came meanwhile.
    pub fn shutdown(self: &Arc<Self>) {
        if !self.is_idle() {
            return;
        }
        match self.config.grouping {
            Grouping::Pod => self.exit.signal(),
            Grouping::Node => {
                let generation = self.generation.load(Ordering::SeqCst);
                let tasks = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(NODE_IDLE_GRACE).await;
                    if tasks.is_idle() && tasks.generation.load(Ordering::SeqCst) == generation {
                        info!("node shim idle for {NODE_IDLE_GRACE:?}, exiting");
                        tasks.exit_idle();
                    }
                });
            }
        }
    }

    /// Ends the shim, which serves no container: its state file goes first, so that
    /// `wasmedge-shimctl check` no longer lists it; the run directory and the socket go in
    /// `Shim::wait` once the framework sees the signal. Both in turn with the records:
    /// a write asked before (the state and the record of the last delete) done after the
    /// directory was emptied would leave the directory, with a state file, behind.
    fn exit_idle(self: &Arc<Self>) {
        let tasks = self.clone();
        self.records.write(move || {
            if let Some((dir, _)) = &tasks.state {
                let _ = std::fs::remove_file(dir.join(crate::identity::STATE_FILE));
            }
            tasks.exit.signal();
        });
    }

    /// Writes the node shim's state with the number of tasks it serves now. Off the request
    /// path, in turn with the records; each write counts the tasks at its own turn.
    fn publish_state(self: &Arc<Self>) {
        if self.state.is_none() {
            return;
        }
        let tasks = self.clone();
        self.records.write(move || {
            let Some((dir, state)) = &tasks.state else {
                return;
            };
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            state.tasks = tasks.table().len();
            if let Err(e) = state.write(dir) {
                debug!(
                    "write {}: {e}",
                    dir.join(crate::identity::STATE_FILE).display()
                );
            }
        });
    }

    pub async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            warn!("publish {topic}: {e}");
        }
    }

    /// Publishes the `TaskExit` of process `pid` (a task's init, or exec `exec_id`) of task
    /// `id`, if it has exited.
    pub async fn publish_exit(&self, id: &str, exec_id: &str, pid: i32, status: Status) {
        if let Status::Stopped { code, at } = status {
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

    /// Routes each exit the framework's reaper sees to the task or exec it ends.
    async fn route_exits(self: &Arc<Self>) {
        let mut sub = match monitor_subscribe(Topic::Pid).await {
            Ok(s) => s,
            Err(e) => {
                warn!("subscribe to exits: {e}");
                return;
            }
        };
        let tasks = self.clone();
        tokio::spawn(async move {
            while let Some(ev) = sub.rx.recv().await {
                if let Subject::Pid(pid) = ev.subject {
                    tasks.on_exit(pid, ev.exit_code).await;
                }
            }
        });
    }

    async fn on_exit(&self, pid: i32, code: i32) {
        // A stopped task's pid may be a new process's now (an exec's, or another task's
        // being created).
        let task = self
            .table()
            .values()
            .find(|t| t.pid == pid && !t.is_stopped())
            .cloned();
        if task.is_none() && self.on_exec_exit(pid, code).await {
            return;
        }
        let Some(t) = task else {
            self.unclaimed().insert(pid, code);
            return;
        };
        if !t.set_exited(code) {
            return;
        }
        let run = t.run_time();
        debug!(
            "container {} (pid {pid}) exited with {code} after running {} µs",
            t.id,
            run.as_micros()
        );
        let ended = t.clone();
        tokio::spawn(async move { ended.exited().await });
        self.publish_exit(&t.id, &t.id, t.pid, t.status()).await;
        if let Some(timings) = t.timings() {
            let (path, timings) = (self.config.cache_dir.clone(), timings.clone());
            self.records.write(move || {
                if let Err(e) = crate::phases::record(&path, &timings, run.as_micros() as u64) {
                    debug!("record phase timings in {}: {e}", path.display());
                }
            });
        }
    }

    /// The exit of a process exec'd into a task, if `pid` is one: published as the exec's
    /// `TaskExit`.
    async fn on_exec_exit(&self, pid: i32, code: i32) -> bool {
        let found = self.table().values().find_map(|t| {
            let exec = t.execs().ok()?.of_pid(pid)?;
            Some((t.id.clone(), exec))
        });
        let Some((id, exec)) = found else {
            return false;
        };
        if exec.state.set_exited(code) {
            debug!("exec {} in {id} (pid {pid}) exited with {code}", exec.id);
            self.publish_exit(&id, &exec.id, pid, exec.state.status())
                .await;
        }
        true
    }

    /// An exec's exit reaped before its pid was known (since `since`): recorded and
    /// published now.
    pub async fn claim_exec_exit(
        &self,
        id: &str,
        exec_id: &str,
        pid: i32,
        state: &ProcessState,
        since: u64,
    ) {
        if let Some(code) = self.take_unclaimed(pid, since) {
            if state.set_exited(code) {
                self.publish_exit(id, exec_id, pid, state.status()).await;
            }
        }
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
async fn exit_on_termination(tasks: Arc<Tasks>) {
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
        if tasks.is_idle() {
            info!("{name}: no container to serve, exiting");
            tasks.exit_idle();
            return;
        }
        info!(
            "{name}: ignored while serving {} container(s) or a create; the shim exits when idle",
            tasks.table().len()
        );
    }
}

/// Publishes `TaskOOM` for each OOM kill in the task's cgroup, until the cgroup is removed
/// with the task.
async fn publish_oom_kills(tasks: Arc<Tasks>, id: String, mut watch: crate::cgroup::OomWatch) {
    debug!("container {id}: watching for OOM kills ({watch})");
    while watch.next_kill().await {
        warn!("container {id}: the kernel's OOM killer ended a process in its cgroup");
        let ev = TaskOOM {
            container_id: id.clone(),
            ..Default::default()
        };
        tasks.publish(TASK_OOM_EVENT_TOPIC, Box::new(ev)).await;
    }
    debug!("container {id}: OOM watch ends");
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

/// A time as containerd's events and replies carry it.
pub fn timestamp(
    at: OffsetDateTime,
) -> containerd_shim::protos::protobuf::MessageField<
    containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp,
> {
    Some(convert_to_timestamp(Some(at))).into()
}

/// One create in flight, counted while it lives (see [`Tasks::creating`]).
pub struct Creating<'a>(&'a AtomicU64);

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
