//! A Wasm container: a process the runner forks, which isolates itself as the shim's plan
//! of the spec says (namespaces, root, credentials, seccomp), loads and instantiates the
//! module, and waits for `start`. The shim makes its cgroup (a directory, or a systemd
//! scope), runs its hooks and writes its user namespace's id maps, each at the step of the
//! control stream's handshake where the process waits for it ([`Wasm::handshake`]).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{debug, warn};
use nix::sys::signal::Signal;
use rustix::fs::{Mode, OFlags};
use wasmedge_aot_protocol::control::{
    open_in_root, NamespaceAction, NamespaceKind, Report, Timings,
};
use wasmedge_aot_protocol::spawn::{PidNamespace, SpawnFds, SpawnReply, SpawnRequest};

use super::entrypoint::Module;
use super::{pidfd_of, signal_pid, CreateContext, Created, Kind, New, Signalled, Task};
use crate::cgroup::{CgroupPath, OomWatch};
use crate::error::ShimError;
use crate::pod::{names_process_namespace, pod_join, PodJoin, PodNamespaces};
use crate::runner::Control;
use crate::spec::{self, ContainerSpec, IdMaps, Ns};
use crate::status::Status;
use crate::stdio::{open_output, open_stdin};

/// A Wasm container's process, kept in its bundle for a dead shim's clean-up
/// (`containerd-shim-wasmedge-v1 delete`): its pid and its start time (`<pid> <start
/// time>`, the start time in clock ticks since boot, field 22 of `/proc/<pid>/stat`).
const PID_FILE: &str = "wasm.pid";

#[derive(Debug, Default)]
pub struct Wasm {
    /// The cgroup the shim made for it, if its spec named one.
    cgroup: Option<CgroupPath>,
    /// What the cgroup lets the container do with devices, as created: an update whose
    /// rules reduce to the same is no change.
    devices: Option<spec::Devices>,
    /// The control stream to the process, until `start`.
    control: tokio::sync::Mutex<Option<Control>>,
    /// The hooks still to run (`poststart`, `poststop`).
    hooks: crate::hooks::Hooks,
    /// Whether the `poststop` hooks ran (a retried or concurrent delete runs them once).
    poststop_ran: AtomicBool,
    /// What the create cost, phase by phase.
    timings: Timings,
}

impl Wasm {
    /// The spec read into the container's plan, the module checked, and a process the
    /// runner forks, which isolates itself and loads the module. On error nothing is left
    /// (cgroup, process) and the `poststop` hooks ran, as after runc's failed create.
    pub async fn create(
        new: &New<'_>,
        spec: &oci_spec::runtime::Spec,
        cgroup: Option<CgroupPath>,
        module: Module,
        rootfs: &Path,
        ctx: &CreateContext<'_>,
    ) -> Result<Created<Wasm>, ShimError> {
        if new.terminal {
            return Err(ShimError::Unsupported(
                "a terminal (tty) for a wasm container",
            ));
        }
        let mut cs =
            spec::container(spec, cgroup, ctx.host).map_err(ShimError::create(new.id, "spec"))?;
        let mut wasm = Wasm {
            hooks: std::mem::take(&mut cs.hooks),
            ..Default::default()
        };
        match wasm.spawn(new, spec, cs, module, rootfs, ctx).await {
            Ok((pid, process, oom)) => {
                wasm.record_process(new, pid, ctx);
                Ok(Created {
                    kind: wasm,
                    pid,
                    process,
                    oom,
                })
            }
            Err(e) => {
                wasm.remove_cgroup();
                wasm.run_poststop(new.id, new.bundle).await;
                Err(e)
            }
        }
    }

    async fn spawn(
        &mut self,
        new: &New<'_>,
        spec: &oci_spec::runtime::Spec,
        mut cs: ContainerSpec,
        module: Module,
        rootfs: &Path,
        ctx: &CreateContext<'_>,
    ) -> Result<(i32, Option<OwnedFd>, Option<OomWatch>), ShimError> {
        let id = new.id;
        check_cwd(&module.root, &cs.plan.cwd).map_err(ShimError::create(id, "cwd"))?;
        module
            .header
            .check(&cs.module)
            .map_err(ShimError::create(id, "entrypoint"))?;
        cs.plan.root.path = rootfs.to_owned();
        if let Some(profile) = &cs.seccomp {
            let program = ctx
                .seccomp
                .program(profile)
                .map_err(ShimError::create(id, "seccomp"))?;
            cs.plan.seccomp = Some((*program).clone());
        }
        let pod = new.pod(ctx);
        let in_pod = new.pod_member(ctx);
        let (ns_fds, pid_ns) = namespaces(
            &mut cs,
            new.sandbox_id,
            pod.as_deref().and_then(Task::pod),
            &in_pod,
        )
        .map_err(ShimError::create(id, "namespaces"))?;
        drop(in_pod);

        let cgroup_started = Instant::now();
        let mut oom = None;
        let mut cgroup_dir = None;
        self.devices = Some(cs.devices.clone());
        // A scope is systemd's to make, with the process in it (below); a cgroupfs
        // directory is the shim's, made before the process.
        let scope = match cs.cgroup.take() {
            Some(CgroupPath::Fs(path)) => {
                let (cg, dir) = crate::cgroup::create(&path, spec, &cs.devices.policy)
                    .map_err(|e| ShimError::create(id, "cgroup")(format!("{path}: {e}")))?;
                oom = watch_oom(id, &cg);
                self.cgroup = Some(CgroupPath::Fs(path.clone()));
                // On cgroup v2 the process is born in its cgroup and never moves.
                cgroup_dir = dir;
                None
            }
            Some(CgroupPath::Systemd(scope)) => Some(scope),
            None => None,
        };

        let stdin = open_stdin(&new.stdio.stdin).map_err(ShimError::create(id, "open stdin"))?;
        let stdout =
            open_output(&new.stdio.stdout).map_err(ShimError::create(id, "open stdout"))?;
        let stderr =
            open_output(&new.stdio.stderr).map_err(ShimError::create(id, "open stderr"))?;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(ShimError::io("control socketpair"))?;
        let control = Control::new(ours).map_err(ShimError::io("control socket"))?;
        let cgroup_us = cgroup_started.elapsed().as_micros();

        let started = Instant::now();
        let req = SpawnRequest {
            id: id.to_owned(),
            module_name: cs.module.clone(),
            module_hash: module.hash,
            policy: cs.policy,
            pid_namespace: match &pid_ns {
                PidNs::Inherit => PidNamespace::Inherit,
                PidNs::New => PidNamespace::New,
                PidNs::Join(_) => PidNamespace::Join,
            },
            into_cgroup: cgroup_dir.is_some(),
        };
        let plan_fds: Vec<BorrowedFd<'_>> = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()]
            .into_iter()
            .chain(ns_fds.iter().map(|f| f.as_fd()))
            .collect();
        let spawned = async {
            let reply = ctx
                .runner
                .spawn(
                    &req,
                    SpawnFds {
                        control: theirs.as_fd(),
                        module: module.file.as_fd(),
                        pid_ns: match &pid_ns {
                            PidNs::Join(fd) => Some(fd.as_fd()),
                            _ => None,
                        },
                        cgroup: cgroup_dir.as_ref().map(|d| d.as_fd()),
                    },
                )
                .await;
            // Our copy of the process's end goes now: if there is no process, the plan's
            // write fails instead of waiting for a reader.
            drop(theirs);
            reply
        };
        let spawned_pid = |reply: Result<SpawnReply, _>| match reply
            .map_err(ShimError::create(id, "start container process"))?
        {
            SpawnReply::Spawned { pid } => Ok(pid),
            SpawnReply::Failed { error } => {
                Err(ShimError::create(id, "start container process")(error))
            }
        };
        let mut scope_us = 0;
        let (pid, sent) = match scope {
            // The plan goes as the process is forked: it reads it at once.
            None => {
                let (reply, sent) = tokio::join!(spawned, control.send_plan(&cs.plan, &plan_fds));
                (spawned_pid(reply)?, sent)
            }
            // The process waits for its plan, reading nothing of the tenant, until systemd
            // has moved it into its scope.
            Some(scope) => {
                let pid = spawned_pid(spawned.await)?;
                let entering = Instant::now();
                // Blocking (D-Bus, the move), on a thread of its own; bounded, so that a
                // stuck systemd fails this create instead of holding it.
                let task = {
                    let (spec, scope) = (spec.clone(), scope.clone());
                    let devices = cs.devices.policy.clone();
                    tokio::task::spawn_blocking(move || {
                        crate::cgroup::enter_scope(&scope, pid as u32, &spec, &devices)
                    })
                };
                let limit = crate::cgroup::systemd::MOVE_TIMEOUT + Duration::from_secs(10);
                let entered = match tokio::time::timeout(limit, task).await {
                    Ok(Ok(entered)) => entered,
                    Ok(Err(e)) => Err(crate::cgroup::ScopeError {
                        started: false,
                        message: format!("the scope's task failed: {e}"),
                    }),
                    Err(_) => Err(crate::cgroup::ScopeError {
                        started: false,
                        message: format!("systemd did not answer within {limit:?}"),
                    }),
                };
                // Only a scope this create made is the container's, to remove on failure
                // or delete: a unit of that name that existed is someone else's.
                if entered.as_ref().map_or_else(|e| e.started, |_| true) {
                    self.cgroup = Some(CgroupPath::Systemd(scope.clone()));
                }
                let cg = entered.map_err(|e| ShimError::create(id, "cgroup")(e.message))?;
                oom = watch_oom(id, &cg);
                scope_us = entering.elapsed().as_micros();
                (pid, control.send_plan(&cs.plan, &plan_fds).await)
            }
        };
        let cgroup_us = cgroup_us + scope_us;
        // A handle on this very process for the id maps (see `map_ids`), taken before any
        // await in which the shim's reaper could collect it.
        let pidfd = pidfd_of(pid);
        let id_maps_process = cs.id_maps.as_ref().map(|_| {
            pidfd
                .as_ref()
                .map_err(|e| std::io::Error::from(e.kind()))
                .and_then(|fd| fd.try_clone())
        });
        let process = pidfd.ok();
        drop((stdin, stdout, stderr, ns_fds, module.file, module.root));
        if sent.is_err() {
            return Err(ShimError::create(id, "start container process")(
                "the container process died before reporting",
            ));
        }
        self.handshake(
            new,
            pid,
            control,
            &cs,
            id_maps_process,
            (started, cgroup_us),
        )
        .await?;
        Ok((pid, process, oom))
    }

    /// The shim's half of the control stream, step by step as the container process
    /// takes them (`runner/src/process/mod.rs`): after the plan, the process reports
    /// `Created` where the spec has hooks (its namespaces and its root's mounts made,
    /// before its pivot_root and any guest code: the shim runs `prestart` and
    /// `createRuntime`), `MapIds` where it made a user namespace (the shim, privileged
    /// outside it, writes its maps), then `Ready` (isolated, loaded, instantiated) or
    /// `Failed`. A step skipped or taken out of turn fails the create.
    async fn handshake(
        &mut self,
        new: &New<'_>,
        pid: i32,
        mut control: Control,
        cs: &ContainerSpec,
        process: Option<std::io::Result<OwnedFd>>,
        (started, cgroup_us): (Instant, u128),
    ) -> Result<(), ShimError> {
        let id = new.id;
        let mut report = control.report().await;
        let mut hooks_ran = false;
        if let Ok(Report::Created) = report {
            let hooking = Instant::now();
            self.hooks
                .create_runtime(id, new.bundle, pid)
                .await
                .map_err(ShimError::create(id, "hooks"))?;
            debug!("container {id}: hooks {} µs", hooking.elapsed().as_micros());
            hooks_ran = true;
            report = match control.hooks_ran().await {
                Ok(()) => control.report().await,
                Err(e) => Err(e),
            };
        }
        let mut mapped = false;
        if let Ok(Report::MapIds) = report {
            map_ids(pid, process, cs.id_maps.as_ref())
                .map_err(ShimError::create(id, "user namespace"))?;
            mapped = true;
            report = match control.ids_mapped().await {
                Ok(()) => control.report().await,
                Err(e) => Err(e),
            };
        }
        match report {
            // A process that skipped its user namespace would run in the host's.
            Ok(Report::Ready { .. }) if cs.id_maps.is_some() && !mapped => {
                Err(ShimError::create(id, "user namespace")(
                    "the container process reported ready without making its user namespace",
                ))
            }
            // And one that skipped the hooks would run without what they set up.
            Ok(Report::Ready { .. }) if cs.plan.hooks && !hooks_ran => {
                Err(ShimError::create(id, "hooks")(
                    "the container process reported ready without waiting for its hooks",
                ))
            }
            Ok(Report::Ready {
                timings: t,
                warning,
            }) => {
                if let Some(w) = warning {
                    warn!("container {id}: {w}");
                }
                debug!(
                    "container {id}: cgroup {cgroup_us} µs, spawn to ready {} µs: hash {} µs, lookup {} µs, \
                     compile {} µs, fork {} µs, plan {} µs, cgroup entry {} µs, namespaces {} µs, mounts {} µs, pivot {} µs, \
                     load {} µs, instantiate {} µs, credentials {} µs, seccomp {} µs; cache {}, tier {}",
                    started.elapsed().as_micros(),
                    t.hash_us,
                    t.lookup_us,
                    t.compile_us,
                    t.fork_us,
                    t.plan_us,
                    t.cgroup_us,
                    t.namespaces_us,
                    t.mounts_us,
                    t.pivot_us,
                    t.load_us,
                    t.instantiate_us,
                    t.credentials_us,
                    t.seccomp_us,
                    t.cache,
                    match t.opt_level {
                        Some(level) => format!("{} O{level}", t.tier),
                        None => t.tier.to_string(),
                    }
                );
                self.timings = t;
                *self.control.get_mut() = Some(control);
                Ok(())
            }
            Ok(Report::Failed { error }) => {
                Err(ShimError::create(id, "set up the container process")(error))
            }
            Ok(Report::MapIds) => Err(ShimError::create(id, "user namespace")(
                "the container process asked for its id maps out of turn",
            )),
            Ok(Report::Created) => Err(ShimError::create(id, "hooks")(
                "the container process reported its namespaces out of turn",
            )),
            Err(_) => Err(ShimError::create(id, "start container process")(
                "the container process died before reporting",
            )),
        }
    }

    /// Records the container's process in its bundle for a dead shim's clean-up. Its start
    /// time is read here, as the create left it; only the write waits, off the request
    /// path, in turn with the other records (`records.rs`).
    fn record_process(&self, new: &New<'_>, pid: i32, ctx: &CreateContext<'_>) {
        let Some(start) = start_time(pid) else {
            warn!(
                "record the process of {} in its bundle: no start time in /proc/{pid}/stat",
                new.id
            );
            return;
        };
        let (path, id) = (new.bundle.join(PID_FILE), new.id.to_owned());
        ctx.records.write(move || {
            if let Err(e) = std::fs::write(&path, process_record(pid, start)) {
                warn!("record the process of {id} in its bundle: {e}");
            }
        });
    }

    async fn run_poststop(&self, id: &str, bundle: &Path) {
        if !self.poststop_ran.swap(true, Ordering::SeqCst) {
            self.hooks.poststop(id, bundle).await;
        }
    }
}

#[async_trait]
impl Kind for Wasm {
    async fn start(&self, task: &Task) -> Result<(), ShimError> {
        task.expect_created()?;
        let mut control = self.control.lock().await;
        let Some(stream) = control.as_mut() else {
            return Err(task.precondition("already started"));
        };
        stream.start().await.map_err(|e| ShimError::Io {
            context: format!("start container {}", task.id),
            source: std::io::Error::other(e),
        })?;
        *control = None;
        Ok(())
    }

    async fn kill(&self, task: &Task, signal: Signal, all: bool) -> Result<Signalled, ShimError> {
        // The container process leads its own session, so `all` reaches anything it forked.
        let target = if all { -task.pid } else { task.pid };
        signal_pid(target, signal, &format!("container {}", task.id))?;
        Ok(Signalled::Sent)
    }

    /// The shim's cgroup or scope.
    async fn update(&self, task: &Task, resources: &[u8]) -> Result<(), ShimError> {
        let Some(path) = self.cgroup.clone() else {
            return Err(task
                .precondition("it has no cgroup (its spec named no linux.cgroupsPath) to update"));
        };
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources).map_err(|e| {
                ShimError::InvalidArgument(format!("update {}: resources: {e}", task.id))
            })?;
        // CRI sends the container's whole resources, devices included, on every resize:
        // the same rules are no change. Other rules are refused rather than ignored (runc
        // ignores them): swapping a running container's device program is not built.
        if let (Some(rules), Some(devices)) = (res.devices(), &self.devices) {
            devices
                .check_update(rules)
                .map_err(|e| ShimError::InvalidArgument(format!("update {}: {e}", task.id)))?;
        }
        // Blocking: cgroup files, and systemd's D-Bus for a scope.
        tokio::task::spawn_blocking(move || crate::cgroup::update(&path, &res))
            .await
            .unwrap_or_else(|e| Err(format!("the update's task failed: {e}")))
            .map_err(|e| ShimError::Io {
                context: format!("update container {}", task.id),
                source: std::io::Error::other(e),
            })
    }

    /// A container that never ran (containerd deletes created tasks without start) is
    /// killed.
    async fn discard(&self, task: &Task) -> Result<(), ShimError> {
        if task.status() == Status::Created {
            *self.control.lock().await = None;
            let _ = signal_pid(task.pid, Signal::SIGKILL, &format!("container {}", task.id));
            let _ = tokio::time::timeout(Duration::from_secs(5), task.wait()).await;
        }
        Ok(())
    }

    async fn poststart(&self, task: &Task) {
        self.hooks.poststart(&task.id, &task.bundle, task.pid).await;
    }

    async fn poststop(&self, task: &Task) {
        self.run_poststop(&task.id, &task.bundle).await;
    }

    fn remove_cgroup(&self) -> crate::cgroup::Removal {
        match &self.cgroup {
            Some(path) => crate::cgroup::remove(path),
            None => Default::default(),
        }
    }

    fn timings(&self) -> Option<&Timings> {
        Some(&self.timings)
    }

    fn record(&self, record: &mut crate::records::Record) {
        record.cgroup = self.cgroup.as_ref().map(|c| c.as_spec().to_owned());
    }

    fn bundle_records(&self, bundle: &Path) -> Vec<PathBuf> {
        vec![bundle.join(PID_FILE)]
    }
}

/// The pid of the Wasm container's process recorded in `bundle` if it still is that
/// process. The file outlives the process when the shim died, and its pid can name another
/// process since: every Wasm container's process runs the runner binary, so the binary
/// proves nothing (a tenant who cycles pids could have another namespace's container
/// killed). As runc checks its init's start time before it signals a container, the start
/// time must be the recorded one; a file without one (an older shim's) names no process.
pub fn recorded_process(bundle: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(bundle.join(PID_FILE)).ok()?;
    let (pid, start) = text.trim().split_once(' ')?;
    let (pid, start) = (pid.parse::<i32>().ok()?, start.parse::<u64>().ok()?);
    (pid > 0 && start_time(pid) == Some(start)).then_some(pid)
}

/// The record of process `pid` started at `start` (see [`PID_FILE`]).
fn process_record(pid: i32, start: u64) -> String {
    format!("{pid} {start}\n")
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

/// A watch on a container's cgroup for OOM kills; `None`, said in the log, where the
/// cgroup has no memory controller or cannot be watched.
fn watch_oom(id: &str, cg: &cgroups_rs::fs::Cgroup) -> Option<OomWatch> {
    OomWatch::new(cg).unwrap_or_else(|e| {
        warn!(
            "container {id}: cgroup {}: {e}; its OOM kills go unreported",
            cg.path()
        );
        None
    })
}

/// Writes the uid and gid maps of process `pid`'s new user namespace (each in one `write`,
/// as the kernel requires). `process` is a pidfd of it, taken when it was born: its
/// `/proc/<pid>` is opened first and used only if the process is still alive afterwards, so
/// that a pid the reaper freed and the kernel handed to another process never gets the maps.
fn map_ids(
    pid: i32,
    process: Option<std::io::Result<OwnedFd>>,
    maps: Option<&IdMaps>,
) -> Result<(), String> {
    let (Some(maps), Some(process)) = (maps, process) else {
        return Err("the container process made a user namespace the spec did not ask for".into());
    };
    let process = process.map_err(|e| format!("pidfd of process {pid}: {e}"))?;
    let dir = format!("/proc/{pid}");
    let proc_dir = rustix::fs::open(
        &dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {dir}: {e}"))?;
    // A pidfd polls readable once its process has exited.
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&process, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let exited = poll(&mut fds, Some(&now)).map_err(|e| format!("poll the pidfd of {pid}: {e}"))?;
    if exited != 0 {
        return Err(format!(
            "process {pid} ended before its id maps were written"
        ));
    }
    for (file, ranges) in [("uid_map", &maps.uid), ("gid_map", &maps.gid)] {
        let f = rustix::fs::openat(
            &proc_dir,
            file,
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {dir}/{file}: {e}"))?;
        let text = IdMaps::map_file(ranges);
        let n = rustix::io::write(&f, text.as_bytes())
            .map_err(|e| format!("write {dir}/{file}: {e}"))?;
        if n != text.len() {
            return Err(format!("write {dir}/{file}: {n} of {} bytes", text.len()));
        }
    }
    Ok(())
}

/// A pid namespace to be born in, with the descriptor of one to join.
enum PidNs {
    Inherit,
    New,
    Join(OwnedFd),
}

/// Opens the namespaces `cs` joins: a path that names the shim's own namespaces is CRI
/// naming the pod's, which the pod's sandbox holds; a pod's container joins nothing else
/// but another live container of its pod's ([`pod_join`]); a container of no pod (`ctr`'s)
/// opens what it names. Returns the descriptors in plan order and the pid namespace.
fn namespaces(
    cs: &mut ContainerSpec,
    sandbox_id: Option<&str>,
    pod: Option<&PodNamespaces>,
    in_pod: &(dyn Fn(u32) -> bool + Sync),
) -> Result<(Vec<OwnedFd>, PidNs), String> {
    let shim = std::process::id();
    // `Ok(None)`: the pod shares the host's namespace, nothing to join (the runner's is
    // the host's).
    let join = |path: &Path| -> Result<Option<OwnedFd>, String> {
        let what = if sandbox_id.is_some() {
            match pod_join(path, shim, in_pod)? {
                PodJoin::Pod(what) => what,
                PodJoin::Member(fd) => return Ok(Some(fd)),
            }
        } else {
            match names_process_namespace(path, shim) {
                Some(what) => what,
                None => {
                    return File::open(path)
                        .map(|f| Some(OwnedFd::from(f)))
                        .map_err(|e| format!("open namespace {}: {e}", path.display()))
                }
            }
        };
        let pod = pod.ok_or_else(|| {
            format!(
                "{} names the pod sandbox's namespace, and this shim holds no sandbox {}",
                path.display(),
                sandbox_id.unwrap_or("(no sandbox-id annotation)")
            )
        })?;
        pod.get(what)
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut fds = Vec::new();
    let mut joins = std::mem::take(&mut cs.joins).into_iter();
    let mut kept = Vec::new();
    for ns in std::mem::take(&mut cs.plan.namespaces) {
        if ns.action == NamespaceAction::New {
            kept.push(ns);
            continue;
        }
        let path = joins.next().ok_or("a namespace to join without its path")?;
        if ns.kind == NamespaceKind::User && path.starts_with(format!("/proc/{shim}")) {
            // CRI naming the pod's user namespace: the sandbox holds none (see spec::sandbox).
            return Err(format!(
                "{} names the pod's user namespace, which this runtime does not make",
                path.display()
            ));
        }
        match join(&path)? {
            Some(fd) => fds.push(fd),
            None => continue,
        }
        kept.push(ns);
    }
    cs.plan.namespaces = kept;
    let pid = match &cs.pid {
        Ns::Host => PidNs::Inherit,
        Ns::New => PidNs::New,
        Ns::Join(path) => match join(path)? {
            Some(fd) => PidNs::Join(fd),
            None => PidNs::Inherit,
        },
    };
    Ok((fds, pid))
}

fn check_cwd(root: &OwnedFd, cwd: &str) -> Result<(), String> {
    open_in_root(root, cwd, OFlags::PATH | OFlags::DIRECTORY)
        .map(drop)
        .map_err(|e| format!("process.cwd {cwd:?} is not a directory in the container root: {e}"))
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
        let start = start_time(pid).unwrap();
        std::fs::write(bundle.path().join(PID_FILE), process_record(pid, start)).unwrap();
        assert_eq!(recorded_process(bundle.path()), Some(pid));

        // The pid now names another process (what a reused pid looks like).
        std::fs::write(bundle.path().join(PID_FILE), process_record(pid, start + 1)).unwrap();
        assert_eq!(recorded_process(bundle.path()), None);
        // An older shim's file: a pid alone proves nothing.
        std::fs::write(bundle.path().join(PID_FILE), pid.to_string()).unwrap();
        assert_eq!(recorded_process(bundle.path()), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[cfg(test)]
mod handshake_tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use wasmedge_aot_protocol::control::{HooksRan, IdsMapped, Start};
    use wasmedge_aot_protocol::wire;

    use super::*;
    use crate::stdio::StdioPaths;

    /// The spec of a container running `/m.wasm`; with a user namespace of its own and
    /// its maps if `user_ns`.
    fn container_spec(user_ns: bool) -> ContainerSpec {
        let user = if user_ns {
            r#",{"type":"user"}],
               "uidMappings":[{"containerID":0,"hostID":100000,"size":65536}],
               "gidMappings":[{"containerID":0,"hostID":100000,"size":65536}]"#
        } else {
            "]"
        };
        let json = format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},
                "process":{{"args":["/m.wasm"],"cwd":"/","user":{{"uid":0,"gid":0}}}},
                "linux":{{"namespaces":[{{"type":"mount"}},{{"type":"pid"}}{user}}}}}"#
        );
        let spec: oci_spec::runtime::Spec = serde_json::from_str(&json).unwrap();
        let cgroup = CgroupPath::parse("/handshake-test/c1").unwrap();
        spec::container(&spec, Some(cgroup), Default::default()).unwrap()
    }

    /// A container process that sends `reports` in turn, each after reading the shim's
    /// answer to the one before (`HooksRan`, `IdsMapped`), and returns what it read.
    fn process(
        mut theirs: UnixStream,
        reports: Vec<Report>,
    ) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut read = Vec::new();
            for (i, r) in reports.iter().enumerate() {
                if i > 0 {
                    let Ok(body) = wire::read_framed(&theirs, 64) else {
                        break;
                    };
                    if wire::decode::<HooksRan>("hooks ran", &body).is_ok() {
                        read.push("hooks ran".to_string());
                    } else if wire::decode::<IdsMapped>("ids mapped", &body).is_ok() {
                        read.push("ids mapped".to_string());
                    }
                }
                let body = wire::frame(&wire::encode("report", r).unwrap());
                if theirs.write_all(&body).is_err() {
                    break;
                }
            }
            // A process with nothing to report dies (its end closes) instead of waiting.
            if reports.is_empty() {
                return read;
            }
            if let Ok(body) = wire::read_framed(&theirs, 64) {
                if wire::decode::<Start>("start", &body).is_ok() {
                    read.push("start".to_string());
                }
            }
            read
        })
    }

    async fn handshake(user_ns: bool, reports: Vec<Report>) -> (Result<(), String>, Vec<String>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fake = process(theirs, reports);
        let cs = container_spec(user_ns);
        let stdio = StdioPaths::default();
        let bundle = tempfile::tempdir().unwrap();
        let new = New {
            id: "c1",
            bundle: bundle.path(),
            stdio: &stdio,
            terminal: false,
            sandbox_id: None,
        };
        let mut wasm = Wasm::default();
        // No process to write maps for: a handle that failed, so that no test writes a
        // `uid_map` (pid 1's, which the handshake is told is its process's).
        let pidfd = Some(Err(std::io::Error::other("no process in this test")));
        let control = Control::new(ours).unwrap();
        let done = wasm
            .handshake(&new, 1, control, &cs, pidfd, (Instant::now(), 0))
            .await
            .map_err(|e| e.to_string());
        if done.is_ok() {
            // The control stream is kept for `start`.
            let mut control = wasm.control.lock().await;
            control.as_mut().unwrap().start().await.unwrap();
        }
        drop(wasm);
        (done, fake.join().unwrap())
    }

    fn ready() -> Report {
        Report::Ready {
            timings: Timings::default(),
            warning: None,
        }
    }

    #[tokio::test]
    async fn the_handshake_takes_each_step_in_turn_and_nothing_else() {
        // Straight to ready: the stream is kept and `start` reaches the process.
        let (done, read) = handshake(false, vec![ready()]).await;
        assert_eq!(done, Ok(()));
        assert_eq!(read, ["start"]);

        // The spec's hooks: Created, the shim's HooksRan (no hook to run), then Ready.
        let (done, read) = handshake(false, vec![Report::Created, ready()]).await;
        assert_eq!(done, Ok(()));
        assert_eq!(read, ["hooks ran", "start"]);

        // A failure is the container process's, with its words.
        let (done, _) = handshake(
            false,
            vec![Report::Failed {
                error: "pivot_root: EINVAL".into(),
            }],
        )
        .await;
        let e = done.unwrap_err();
        assert!(
            e.contains("set up the container process") && e.contains("EINVAL"),
            "{e}"
        );

        // A process that dies before reporting.
        let (done, _) = handshake(false, vec![]).await;
        assert!(done.unwrap_err().contains("died before reporting"));
    }

    #[tokio::test]
    async fn a_step_skipped_or_out_of_turn_fails_the_create() {
        // Ready without the user namespace the spec asks for: it would run in the host's.
        let (done, _) = handshake(true, vec![ready()]).await;
        let e = done.unwrap_err();
        assert!(e.contains("without making its user namespace"), "{e}");

        // A user namespace the spec did not ask for gets no maps.
        let (done, read) = handshake(false, vec![Report::MapIds, ready()]).await;
        let e = done.unwrap_err();
        assert!(e.contains("did not ask for"), "{e}");
        assert!(!read.contains(&"ids mapped".to_string()), "{read:?}");

        // The maps asked for, but no handle on the process to write them through: refused,
        // never written to whatever has its pid.
        let (done, read) = handshake(true, vec![Report::MapIds, ready()]).await;
        let e = done.unwrap_err();
        assert!(e.contains("pidfd"), "{e}");
        assert!(!read.contains(&"ids mapped".to_string()), "{read:?}");

        // Namespaces reported after the maps: out of turn.
        let (done, _) = handshake(false, vec![Report::Created, Report::Created]).await;
        let e = done.unwrap_err();
        assert!(e.contains("out of turn"), "{e}");
    }
}
