//! containerd's task API (shim v2, ttrpc): each request checked, handed to the task it names
//! ([`crate::task::Task`], which hides what kind of task it is) or to the process of it an
//! exec id names, and answered with the events containerd expects. What serves every task
//! apart from a request (exits, OOM kills, records, the idle exit) is [`crate::tasks`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim_async::Task as TaskApi;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC, TASK_DELETE_EVENT_TOPIC, TASK_EXEC_ADDED_EVENT_TOPIC,
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC,
    TASK_START_EVENT_TOPIC,
};
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::TtrpcResult;
use log::{debug, info, warn};
use time::OffsetDateTime;

use crate::error::ShimError;
use crate::status::Status;
use crate::task::{CreateContext, Process, Signalled, Task};
use crate::tasks::{timestamp, Tasks};

/// How long a create waits for the sweep of dead shims to be done with its id.
const SWEEP_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct TaskService {
    tasks: Arc<Tasks>,
}

impl TaskService {
    pub fn new(tasks: Arc<Tasks>) -> TaskService {
        TaskService { tasks }
    }

    /// Pause or Resume, then the event containerd expects.
    async fn set_paused(&self, id: &str, paused: bool) -> TtrpcResult<api::Empty> {
        let t = self.tasks.get(id)?;
        t.pause(paused).await?;
        let container_id = t.id.clone();
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
        self.tasks.publish(topic, ev).await;
        Ok(api::Empty::new())
    }
}

/// A stopped process's exit code and time; a process that never ran counts as killed now.
fn exit_of(status: Status) -> (i32, OffsetDateTime) {
    match status {
        Status::Stopped { code, at } => (code, at),
        _ => (128 + libc::SIGKILL, OffsetDateTime::now_utc()),
    }
}

#[async_trait]
impl TaskApi for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let tasks = &self.tasks;
        if tasks.get(&req.id).is_ok() {
            return Err(ShimError::AlreadyExists(req.id).into());
        }
        // In flight from here, the wait for the sweep included: the shim does not idle out.
        let _creating = tasks.creating();
        // A dead shim's record of a container of this id names this container's runc state,
        // cgroup and rootfs too: the sweep must be done with it before the create begins.
        if !tasks.swept.wait(&req.id, SWEEP_WAIT).await {
            return Err(ShimError::FailedPrecondition {
                id: req.id.clone(),
                message: format!(
                    "a dead shim's container of this id is still being cleaned up after {} s",
                    SWEEP_WAIT.as_secs()
                ),
            }
            .into());
        }
        // Detached if the create fails, after its last line.
        let log = crate::logger::attach_task(&req.id, Path::new(&req.bundle));
        let runner = tasks.runner().await?;
        let sandbox = |sandbox_id: &str| tasks.sandbox(sandbox_id);
        let pod_process = |sandbox_id: &str, pid: u32| tasks.is_pod_process(sandbox_id, pid);
        let ctx = CreateContext {
            namespace: &tasks.namespace,
            runner: &runner,
            seccomp: &tasks.seccomp,
            host: tasks.host,
            sandbox: &sandbox,
            pod_process: &pod_process,
            layers: &tasks.layers,
            records: &tasks.records,
        };
        let since = tasks.unclaimed_mark();
        let creating = Instant::now();
        let (task, oom) = match Task::create(&req, &ctx).await {
            Ok((t, oom)) => (Arc::new(t), oom),
            Err(e) => {
                warn!("create {}: {e}", req.id);
                return Err(e.into());
            }
        };
        log.keep();
        let pid = task.pid;
        let create_us = creating.elapsed().as_micros();
        let recording = Instant::now();
        tasks.add(task, oom, since);
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
        tasks.publish(TASK_CREATE_EVENT_TOPIC, Box::new(ev)).await;
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
        let t = self.tasks.get(&req.id)?;
        let Process::Exec(exec) = t.process(&req.exec_id)? else {
            t.start().await?;
            let ev = TaskStart {
                container_id: t.id.clone(),
                pid: t.pid as u32,
                ..Default::default()
            };
            self.tasks
                .publish(TASK_START_EVENT_TOPIC, Box::new(ev))
                .await;
            t.poststart().await;
            return Ok(api::StartResponse {
                pid: t.pid as u32,
                ..Default::default()
            });
        };
        let since = self.tasks.unclaimed_mark();
        let pid = t.execs()?.start(&exec).await?;
        let ev = TaskExecStarted {
            container_id: t.id.clone(),
            exec_id: exec.id.clone(),
            pid: pid as u32,
            ..Default::default()
        };
        self.tasks
            .publish(TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
        // An exec that ended before its pid was known.
        self.tasks
            .claim_exec_exit(&t.id, &exec.id, pid, &exec.state, since)
            .await;
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let t = self.tasks.get(&req.id)?;
        let p = t.process(&req.exec_id)?;
        let stdio = p.stdio();
        let mut resp = api::StateResponse {
            id: t.id.clone(),
            bundle: t.bundle.to_string_lossy().into_owned(),
            pid: p.pid() as u32,
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        resp.status = match p.status() {
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
        let t = self.tasks.get(&req.id)?;
        let (code, at) = t.process(&req.exec_id)?.wait().await;
        Ok(api::WaitResponse {
            exit_status: code as u32,
            exited_at: timestamp(at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let t = self.tasks.get(&req.id)?;
        let Process::Exec(exec) = t.process(&req.exec_id)? else {
            if let Signalled::Ended = t.kill(req.signal, req.all).await? {
                self.tasks
                    .publish_exit(&t.id, &t.id, t.pid, t.status())
                    .await;
            }
            return Ok(api::Empty::new());
        };
        if exec.state.status() != Status::Running {
            return Err(
                ShimError::NotFound(format!("{} exec {}: not running", t.id, exec.id)).into(),
            );
        }
        let sig = crate::task::signal_of(req.signal)?;
        // Signalled by pid, as a Wasm container's process is: the pid is the exec's until
        // the reaper takes its exit, and the exec is stopped as soon as the exit is seen.
        let what = format!("exec {} in {}", exec.id, t.id);
        crate::task::signal_pid(exec.pid(), sig, &what)?;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let t = self.tasks.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let exec = t.execs()?.remove(&req.exec_id)?;
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
        if matches!(t.status(), Status::Running | Status::Paused) {
            return Err(t
                .precondition("cannot delete a running container: kill it first")
                .into());
        }
        // A container runc could not delete stays, with its record: containerd sees the
        // delete fail (with runc's reason) and may retry it, and if this shim dies the next
        // one's sweep retries it.
        let deleting = Instant::now();
        t.discard().await?;
        let discard_us = deleting.elapsed().as_micros();
        let teardown = t.cleanup();
        let recording = Instant::now();
        let (code, at) = exit_of(t.status());
        // Out of the table first: a delete cancelled while the hooks run leaves nothing
        // behind.
        self.tasks.remove(&t);
        t.poststop().await;
        let records_us = recording.elapsed().as_micros();
        let publishing = Instant::now();
        let ev = TaskDelete {
            container_id: t.id.clone(),
            id: t.id.clone(),
            pid: t.pid as u32,
            exit_status: code as u32,
            exited_at: timestamp(at),
            ..Default::default()
        };
        self.tasks
            .publish(TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
        debug!(
            "container {}: delete {} µs: discard {discard_us} µs, unmount {} µs, \
             cgroup drain {} µs, cgroup removal {} µs, records {records_us} µs, \
             delete event {} µs",
            t.id,
            deleting.elapsed().as_micros(),
            teardown.unmount_us,
            teardown.cgroup.drain_us,
            teardown.cgroup.remove_us,
            publishing.elapsed().as_micros(),
        );
        // After the last line of this task: its pipe closes with it.
        crate::logger::detach_task(&req.id);
        Ok(api::DeleteResponse {
            pid: t.pid as u32,
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
        let t = self.tasks.get(&req.id)?;
        let processes = t
            .pids()
            .await?
            .into_iter()
            .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let t = self.tasks.get(&req.id)?;
        if t.is_stopped() {
            return Err(ShimError::NotFound(format!("{}: process already finished", t.id)).into());
        }
        let stats = crate::cgroup::metrics::of_pid(t.pid as u32).map_err(|e| ShimError::Io {
            context: format!("stats of container {}", t.id),
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
        let t = self.tasks.get(&req.id)?;
        let execs = t.execs()?;
        if t.is_stopped() {
            return Err(t.precondition("the container is not running").into());
        }
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.as_slice())
            .ok_or_else(|| {
                ShimError::InvalidArgument(format!("exec {}: no process spec", req.exec_id))
            })?;
        execs.add(
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
            container_id: t.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.tasks
            .publish(TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let t = self.tasks.get(&req.id)?;
        let execs = t
            .execs()
            .map_err(|_| ShimError::Unsupported("a terminal (tty) for a wasm container"))?;
        execs.resize(&req.exec_id, req.width, req.height)?;
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let t = self.tasks.get(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.as_slice())
            .ok_or_else(|| {
                ShimError::InvalidArgument(format!("update {}: no resources", req.id))
            })?;
        t.update(resources).await?;
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
        // A process holds its stdin FIFO itself: containerd's close of its end reaches it
        // as EOF. A terminal's copy reads a FIFO that the shim also holds a writer of,
        // until now.
        let t = self.tasks.get(&req.id)?;
        if let (Ok(execs), true) = (t.execs(), req.stdin) {
            // An exec that is gone has nothing to close (containerd closes its end anyway).
            match execs.close_stdin(&req.exec_id) {
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
        let task_pid = self.tasks.get(&req.id).map(|t| t.pid as u32).unwrap_or(0);
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
        self.tasks.shutdown();
        Ok(api::Empty::new())
    }
}
