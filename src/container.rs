//! One container as the shim sees it: its bundle and rootfs mount, its stdio, its cgroup,
//! and its process, from create to delete. The entrypoint decides what runs it: a Wasm
//! module (by its magic) gets a process the runner forks; anything else is a Linux
//! container that runc runs ([`crate::linux`]). A pod's sandbox is a container too: it runs
//! nothing, and holds the pod's namespaces ([`crate::pod`]).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::asynchronous::util::mount_rootfs;
use log::{debug, warn};
use rustix::fs::{Mode, OFlags};
use time::OffsetDateTime;
use wasmedge_aot_protocol::container::{
    open_in_root, NamespaceAction, NamespaceKind, Report, Timings,
};
use wasmedge_aot_protocol::spawn::{PidNamespace, SpawnFds, SpawnReply, SpawnRequest};

use crate::cgroup::{CgroupPath, OomWatch};
use crate::error::ShimError;
use crate::image_layers::LayerError;
use crate::linux::Linux;
use crate::pod::{names_process_namespace, pod_join, PodJoin, PodNamespaces};
use crate::runner::{Control, Runner};
use crate::spec::{self, ContainerSpec, HostSecurity, IdMaps, Ns};
use crate::status::{ProcessState, Status};
use crate::stdio::{open_output, open_stdin, StdioPaths};

/// What a create needs from the shim beyond the request.
pub struct CreateContext<'a> {
    /// The containerd namespace (runc keeps a state directory per namespace).
    pub namespace: &'a str,
    pub runner: &'a Runner,
    pub seccomp: &'a crate::seccomp::Compiled,
    pub host: HostSecurity,
    /// The sandbox of the pod with this id, if this shim serves it.
    pub sandbox: &'a (dyn Fn(&str) -> Option<Arc<Container>> + Sync),
    /// Whether a pid is the process of a container of the pod with this sandbox id (the
    /// namespaces a pod's container may join, see [`pod_join`]).
    pub pod_process: &'a (dyn Fn(&str, u32) -> bool + Sync),
    /// Where a module that is not in the rootfs comes from: the image's Wasm layer.
    pub layers: &'a crate::image_layers::ImageLayers,
}

#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// A pod sandbox: it runs nothing. CRI only needs a task that lives as long as the pod;
    /// the pod's namespaces are held in [`Container::pod`] and joined by each of its
    /// containers, so no pause process is needed. Its pid is the shim's own.
    pub sandbox: bool,
    /// For a sandbox: the namespaces its pod's containers share.
    pub pod: Option<PodNamespaces>,
    /// For a pod's container: its sandbox's id (CRI's annotation).
    pub sandbox_id: Option<String>,
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    pub pid: i32,
    /// What the create cost, phase by phase.
    pub timings: Timings,
    /// A Linux container (runc's), or `None` for a Wasm container or a sandbox.
    pub linux: Option<Linux>,
    rootfs: Option<PathBuf>,
    cgroup: Option<CgroupPath>,
    /// What the cgroup lets the container do with devices, as created: an update whose
    /// rules reduce to the same is no change.
    devices: Option<spec::Devices>,
    control: tokio::sync::Mutex<Option<Control>>,
    state: ProcessState,
    cleaned: Mutex<bool>,
    /// A Wasm container's hooks still to run (`poststart`, `poststop`); runc runs a Linux
    /// container's.
    hooks: crate::hooks::Hooks,
    /// Whether the `poststop` hooks ran (a retried or concurrent delete runs them once).
    poststop_ran: std::sync::atomic::AtomicBool,
    /// A pidfd of the container's process, taken when its pid was known: whether that
    /// process is alive, whatever process has its pid later.
    process: Option<OwnedFd>,
}

/// What a container's teardown cost (the delete's phase line).
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

/// What runs a container's entrypoint.
enum Entrypoint {
    /// A file that starts with Wasm's magic: our path, with the module opened and its
    /// first bytes.
    Wasm(File, crate::wasm::Header),
    /// No such file in the rootfs: the module of an image whose layer is the module itself
    /// if its image has one ([`crate::image_layers`]), runc otherwise.
    Missing(String),
    /// Anything else: runc.
    Linux,
}

/// The module a Wasm container runs, and its hash if the shim already knows it.
struct Module {
    file: File,
    /// Its first bytes, read once, when its kind was decided.
    header: crate::wasm::Header,
    /// blake3 of a module read from an image's Wasm layer (the runner then does not hash).
    hash: Option<String>,
}

impl Container {
    /// Everything containerd's Create asks: read the spec, mount the rootfs, open the
    /// module and stdio, and have the runner fork a process that isolates itself as the
    /// spec asks, loads and instantiates the module. On error nothing is left behind
    /// (mount, cgroup, process). Also returns the watch on the container's cgroup for OOM
    /// kills, registered before its process existed.
    pub async fn create(
        req: &CreateTaskRequest,
        ctx: &CreateContext<'_>,
    ) -> Result<(Container, Option<OomWatch>), ShimError> {
        let id = req.id.clone();
        let bundle = PathBuf::from(&req.bundle);
        let reading = Instant::now();
        let spec = read_bundle_spec(&bundle).await?;
        let spec_us = reading.elapsed().as_micros();
        let rootfs = bundle.join(
            spec.root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_else(|| "rootfs".into()),
        );
        let sandbox = spec::is_sandbox(&spec);
        let mut c = Container {
            id: id.clone(),
            sandbox,
            pod: None,
            sandbox_id: spec::annotation(&spec, spec::SANDBOX_ID_ANNOTATION).map(str::to_string),
            bundle,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            },
            pid: 0,
            timings: Timings::default(),
            linux: None,
            rootfs: None,
            cgroup: None,
            devices: None,
            control: tokio::sync::Mutex::new(None),
            state: ProcessState::new(),
            cleaned: Mutex::new(false),
            hooks: Default::default(),
            poststop_ran: Default::default(),
            process: None,
        };
        if sandbox {
            let s = spec::sandbox(&spec).map_err(ShimError::create(&id, "spec"))?;
            c.pod =
                Some(PodNamespaces::create(&s).map_err(ShimError::create(&id, "pod namespaces"))?);
            c.pid = std::process::id() as i32;
            return Ok((c, None));
        }
        let mounting = Instant::now();
        if !req.rootfs.is_empty() {
            std::fs::create_dir_all(&rootfs).map_err(ShimError::io(format!(
                "create rootfs dir {}",
                rootfs.display()
            )))?;
            c.rootfs = Some(rootfs.clone());
            for m in &req.rootfs {
                if let Err(e) = mount_rootfs(m, &rootfs).await {
                    c.cleanup();
                    return Err(e.into());
                }
            }
        }
        // Before either path: a Linux container's cgroup is runc's to make, from the same
        // field, and must not land outside the pod's either.
        let cgroup = match spec::cgroups_path(&spec) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                c.cleanup();
                return Err(ShimError::create(&id, "spec")(e));
            }
        };
        // The runtime's options may name the driver too: they must agree with the path.
        if let Err(e) = crate::options::check_cgroup_driver(req.options.as_ref(), cgroup.as_ref()) {
            c.cleanup();
            return Err(ShimError::create(&id, "runtime options")(e));
        }
        let mount_us = mounting.elapsed().as_micros();
        let probing = Instant::now();
        let module = match probe_entrypoint(&spec, &rootfs).await {
            Entrypoint::Wasm(file, header) => Ok(Some(Module {
                file,
                header,
                hash: None,
            })),
            Entrypoint::Missing(argv0) => c.layer_module(&argv0, ctx).await,
            Entrypoint::Linux => Ok(None),
        };
        debug!(
            "container {id}: spec {spec_us} µs, rootfs mount {mount_us} µs, entrypoint {} µs",
            probing.elapsed().as_micros()
        );
        let created = match module {
            Ok(Some(module)) => {
                c.create_wasm(&spec, module, &rootfs, req.terminal, ctx)
                    .await
            }
            Ok(None) => c.create_linux(&spec, cgroup, req.terminal, ctx).await,
            Err(e) => Err(e),
        };
        match created {
            Ok((pid, oom)) => {
                c.pid = pid;
                Ok((c, oom))
            }
            Err(e) => {
                c.cleanup();
                // As runc's failed create: what prestart hooks set up is undone.
                c.poststop().await;
                Err(e)
            }
        }
    }

    /// Whether a pid is the process of a live container of this container's pod: the
    /// namespaces it may join besides its pod's own ([`pod_join`]).
    fn pod_member<'a>(&'a self, ctx: &'a CreateContext<'_>) -> impl Fn(u32) -> bool + Sync + 'a {
        move |pid| {
            self.sandbox_id
                .as_deref()
                .is_some_and(|s| (ctx.pod_process)(s, pid))
        }
    }

    /// The module of a container whose entrypoint `argv0` is no file in its rootfs: its
    /// image's Wasm layer. `None` when the image has no Wasm layer (or the container no
    /// image): the container is then a Linux one, and runc's error names what is missing.
    async fn layer_module(
        &self,
        argv0: &str,
        ctx: &CreateContext<'_>,
    ) -> Result<Option<Module>, ShimError> {
        let entry_err = ShimError::create(&self.id, "entrypoint");
        match ctx.layers.module(&self.id, argv0).await {
            Ok(m) => {
                let file = m
                    .open()
                    .map_err(|e| entry_err(format!("open the module of {}: {e}", m.digest)))?;
                Ok(Some(Module {
                    file,
                    header: m.header,
                    hash: Some(m.hash.to_hex()),
                }))
            }
            Err(LayerError::NoImage | LayerError::NoWasmLayer { .. } | LayerError::Off) => Ok(None),
            Err(e) => Err(entry_err(format!(
                "entrypoint {argv0:?} not found in the container root, and {e}"
            ))),
        }
    }

    /// A Linux container: runc creates it from the bundle, its cgroup included, which the
    /// shim then only watches for OOM kills (see [`crate::linux`]).
    async fn create_linux(
        &mut self,
        spec: &oci_spec::runtime::Spec,
        cgroup: Option<CgroupPath>,
        terminal: bool,
        ctx: &CreateContext<'_>,
    ) -> Result<(i32, Option<OomWatch>), ShimError> {
        let sandbox = self.sandbox_id.as_deref().and_then(|s| (ctx.sandbox)(s));
        let in_pod = self.pod_member(ctx);
        let (linux, pid) = Linux::create(crate::linux::CreateArgs {
            id: &self.id,
            namespace: ctx.namespace,
            bundle: &self.bundle,
            spec,
            stdio: &self.stdio,
            terminal,
            pod: sandbox.as_deref().and_then(|s| s.pod.as_ref()),
            in_pod: &in_pod,
            systemd_cgroup: cgroup.as_ref().is_some_and(CgroupPath::is_systemd),
        })
        .await
        .map_err(ShimError::create(&self.id, "linux container"))?;
        drop(in_pod);
        self.linux = Some(linux);
        // runc's init waits for `start`: alive, its pid its own.
        self.process = pidfd_of(pid).ok();
        let mut oom = None;
        if let Some(path) = cgroup {
            match OomWatch::new(&crate::cgroup::load(&path)) {
                Ok(watch) => oom = watch,
                Err(e) => warn!(
                    "container {}: cgroup {}: {e}; its OOM kills go unreported",
                    self.id,
                    path.as_spec()
                ),
            }
        }
        debug!("container {}: a Linux container, pid {pid}", self.id);
        Ok((pid, oom))
    }

    /// A Wasm container: the spec read into the container's plan, the module checked, and a
    /// process the runner forks, which isolates itself and loads the module.
    async fn create_wasm(
        &mut self,
        spec: &oci_spec::runtime::Spec,
        module: Module,
        rootfs: &Path,
        terminal: bool,
        ctx: &CreateContext<'_>,
    ) -> Result<(i32, Option<OomWatch>), ShimError> {
        if terminal {
            return Err(ShimError::Unsupported(
                "a terminal (tty) for a wasm container",
            ));
        }
        let mut cs =
            spec::container(spec, ctx.host).map_err(ShimError::create(&self.id, "spec"))?;
        self.hooks = std::mem::take(&mut cs.hooks);
        self.spawn(spec, cs, module, rootfs, ctx).await
    }

    async fn spawn(
        &mut self,
        spec: &oci_spec::runtime::Spec,
        mut cs: ContainerSpec,
        module: Module,
        rootfs: &Path,
        ctx: &CreateContext<'_>,
    ) -> Result<(i32, Option<OomWatch>), ShimError> {
        let id = self.id.clone();
        let root = open_dir(rootfs)
            .map_err(|e| ShimError::create(&id, "rootfs")(format!("{}: {e}", rootfs.display())))?;
        check_cwd(&root, &cs.plan.cwd).map_err(ShimError::create(&id, "cwd"))?;
        (module.header.check(&cs.module)).map_err(ShimError::create(&id, "entrypoint"))?;
        drop(root);
        cs.plan.root.path = rootfs.to_owned();
        if let Some(profile) = &cs.seccomp {
            let program = ctx
                .seccomp
                .program(profile)
                .map_err(ShimError::create(&id, "seccomp"))?;
            cs.plan.seccomp = Some((*program).clone());
        }
        let pod = self.sandbox_id.as_deref().and_then(|s| (ctx.sandbox)(s));
        let in_pod = self.pod_member(ctx);
        let (ns_fds, pid_ns) = namespaces(
            &mut cs,
            self.sandbox_id.as_deref(),
            pod.as_deref().and_then(|p| p.pod.as_ref()),
            &in_pod,
        )
        .map_err(ShimError::create(&id, "namespaces"))?;
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
                    .map_err(|e| ShimError::create(&id, "cgroup")(format!("{path}: {e}")))?;
                oom = self.watch_oom(&cg);
                self.cgroup = Some(CgroupPath::Fs(path.clone()));
                // On cgroup v2 the process is born in its cgroup and never moves.
                cgroup_dir = dir;
                None
            }
            Some(CgroupPath::Systemd(scope)) => Some(scope),
            None => None,
        };

        let stdin = open_stdin(&self.stdio.stdin).map_err(ShimError::create(&id, "open stdin"))?;
        let stdout =
            open_output(&self.stdio.stdout).map_err(ShimError::create(&id, "open stdout"))?;
        let stderr =
            open_output(&self.stdio.stderr).map_err(ShimError::create(&id, "open stderr"))?;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(ShimError::io("control socketpair"))?;
        let mut control = Control::new(ours).map_err(ShimError::io("control socket"))?;
        let cgroup_us = cgroup_started.elapsed().as_micros();

        let started = Instant::now();
        let req = SpawnRequest {
            id: self.id.clone(),
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
            .map_err(ShimError::create(&id, "start container process"))?
        {
            SpawnReply::Spawned { pid } => Ok(pid),
            SpawnReply::Failed { error } => {
                Err(ShimError::create(&id, "start container process")(error))
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
                let cg = entered.map_err(|e| ShimError::create(&id, "cgroup")(e.message))?;
                oom = self.watch_oom(&cg);
                scope_us = entering.elapsed().as_micros();
                (pid, control.send_plan(&cs.plan, &plan_fds).await)
            }
        };
        let cgroup_us = cgroup_us + scope_us;
        self.pid = pid;
        // A handle on this very process for the id maps (see `map_ids`), taken before any
        // await in which the shim's reaper could collect it.
        let pidfd = pidfd_of(pid);
        let process = cs.id_maps.as_ref().map(|_| {
            pidfd
                .as_ref()
                .map_err(|e| std::io::Error::from(e.kind()))
                .and_then(|fd| fd.try_clone())
        });
        self.process = pidfd.ok();
        drop((stdin, stdout, stderr, ns_fds, module.file));
        let mut report = match sent {
            Ok(()) => control.report().await,
            Err(e) => Err(e),
        };
        let mut hooks_ran = false;
        if let Ok(Report::Created) = report {
            // The process has its namespaces and its root's mounts, and waits, as the
            // runner's, before its pivot_root and any guest code: the spec's prestart and
            // createRuntime hooks run now.
            let hooking = Instant::now();
            self.hooks
                .create_runtime(&id, &self.bundle, pid)
                .await
                .map_err(ShimError::create(&id, "hooks"))?;
            debug!("container {id}: hooks {} µs", hooking.elapsed().as_micros());
            hooks_ran = true;
            report = match control.hooks_ran().await {
                Ok(()) => control.report().await,
                Err(e) => Err(e),
            };
        }
        let mut mapped = false;
        if let Ok(Report::MapIds) = report {
            // The process is in its new user namespace and waits for its maps; only a
            // process privileged outside the namespace (its parent, us) can write them.
            map_ids(pid, process, cs.id_maps.as_ref())
                .map_err(ShimError::create(&id, "user namespace"))?;
            mapped = true;
            report = match control.ids_mapped().await {
                Ok(()) => control.report().await,
                Err(e) => Err(e),
            };
        }
        match report {
            // A process that skipped its user namespace would run in the host's.
            Ok(Report::Ready { .. }) if cs.id_maps.is_some() && !mapped => {
                Err(ShimError::create(&id, "user namespace")(
                    "the container process reported ready without making its user namespace",
                ))
            }
            // And one that skipped the hooks would run without what they set up.
            Ok(Report::Ready { .. }) if cs.plan.hooks && !hooks_ran => {
                Err(ShimError::create(&id, "hooks")(
                    "the container process reported ready without waiting for its hooks",
                ))
            }
            Ok(Report::Ready {
                timings: t,
                warning,
            }) => {
                if let Some(w) = warning {
                    warn!("container {}: {w}", self.id);
                }
                debug!(
                    "container {}: cgroup {cgroup_us} µs, spawn to ready {} µs: hash {} µs, lookup {} µs, \
                     compile {} µs, cgroup entry {} µs, namespaces {} µs, mounts {} µs, pivot {} µs, \
                     load {} µs, instantiate {} µs, credentials {} µs, seccomp {} µs; cache {}, tier {}",
                    self.id,
                    started.elapsed().as_micros(),
                    t.hash_us,
                    t.lookup_us,
                    t.compile_us,
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
                Ok((pid, oom))
            }
            Ok(Report::Failed { error }) => Err(ShimError::create(
                &id,
                "set up the container process",
            )(error)),
            Ok(Report::MapIds) => Err(ShimError::create(&id, "user namespace")(
                "the container process asked for its id maps out of turn",
            )),
            Ok(Report::Created) => Err(ShimError::create(&id, "hooks")(
                "the container process reported its namespaces out of turn",
            )),
            Err(_) => Err(ShimError::create(&id, "start container process")(
                "the container process died before reporting",
            )),
        }
    }

    /// The container's cgroup path as its spec gave it, if the shim made one.
    pub fn cgroup_path(&self) -> Option<&str> {
        self.cgroup.as_ref().map(CgroupPath::as_spec)
    }

    /// The container's cgroup, if the shim made one (a Linux container's is runc's).
    pub fn cgroup(&self) -> Option<&CgroupPath> {
        self.cgroup.as_ref()
    }

    /// A watch on the container's cgroup for OOM kills; `None`, said in the log, where the
    /// cgroup has no memory controller or cannot be watched.
    fn watch_oom(&self, cg: &cgroups_rs::fs::Cgroup) -> Option<OomWatch> {
        OomWatch::new(cg).unwrap_or_else(|e| {
            warn!(
                "container {}: cgroup {}: {e}; its OOM kills go unreported",
                self.id,
                cg.path()
            );
            None
        })
    }

    /// The rootfs the shim mounted for it, if it did.
    pub fn rootfs_path(&self) -> Option<&Path> {
        self.rootfs.as_deref()
    }

    pub fn status(&self) -> Status {
        self.state.status()
    }

    /// Whether the container's process is alive: not reported exited, and its pidfd (taken
    /// while its pid was its own) not readable. A container without one counts as gone.
    pub fn is_alive(&self) -> bool {
        if matches!(self.status(), Status::Stopped { .. }) {
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

    /// Lets the module (or the Linux container's process) run.
    pub async fn start(&self) -> Result<(), ShimError> {
        if self.sandbox {
            self.state.set_running();
            return Ok(());
        }
        if self.status() != Status::Created {
            return Err(self.precondition("not in created state"));
        }
        if let Some(linux) = &self.linux {
            linux.start(&self.id).await?;
            self.state.set_running();
            return Ok(());
        }
        let mut control = self.control.lock().await;
        let Some(stream) = control.as_mut() else {
            return Err(self.precondition("already started"));
        };
        stream.start().await.map_err(|e| ShimError::Io {
            context: format!("start container {}", self.id),
            source: std::io::Error::other(e),
        })?;
        *control = None;
        self.state.set_running();
        Ok(())
    }

    /// Runs the spec's `poststart` hooks; after `start`, and after its `TaskStart` is out
    /// (a module may exit before they end).
    pub async fn poststart(&self) {
        self.hooks.poststart(&self.id, &self.bundle, self.pid).await;
    }

    /// Runs the spec's `poststop` hooks once the container is gone (at delete, or when its
    /// create failed): once, whatever deletes are retried or run at the same time.
    pub async fn poststop(&self) {
        if !self
            .poststop_ran
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.hooks.poststop(&self.id, &self.bundle).await;
        }
    }

    /// How long the module has run (until now, or until it exited if called on exit).
    pub fn run_time(&self) -> std::time::Duration {
        self.state.run_time()
    }

    /// Records the exit the reaper saw; returns false if the container had already exited.
    pub fn set_exited(&self, code: i32) -> bool {
        self.state.set_exited(code)
    }

    /// Waits until the container has exited; returns its code and time.
    pub async fn wait(&self) -> (i32, OffsetDateTime) {
        self.state.wait().await
    }

    /// Freezes (`paused`) or thaws every process of a Linux container.
    pub async fn pause(&self, paused: bool) -> Result<(), ShimError> {
        let Some(linux) = &self.linux else {
            return Err(ShimError::Unsupported(
                "pause and resume of a wasm container",
            ));
        };
        let (from, verb) = if paused {
            (Status::Running, "pause")
        } else {
            (Status::Paused, "resume")
        };
        if self.status() != from {
            return Err(self.precondition(&format!("cannot {verb} it: {:?}", self.status())));
        }
        linux.freeze(&self.id, paused).await?;
        self.state.set_paused(paused);
        Ok(())
    }

    /// Changes the limits of a running container (containerd's `Update`, the kubelet's
    /// in-place resize): runc's for a Linux container, the shim's cgroup or scope for a Wasm
    /// one. A sandbox runs nothing and has no cgroup of its own: nothing to change.
    pub async fn update(&self, resources: &[u8]) -> Result<(), ShimError> {
        if matches!(self.status(), Status::Stopped { .. }) {
            return Err(ShimError::NotFound(format!(
                "{}: process already finished",
                self.id
            )));
        }
        if let Some(linux) = &self.linux {
            return linux.update(&self.id, resources).await;
        }
        if self.sandbox {
            return Ok(());
        }
        let Some(path) = self.cgroup.clone() else {
            return Err(self
                .precondition("it has no cgroup (its spec named no linux.cgroupsPath) to update"));
        };
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources).map_err(|e| {
                ShimError::InvalidArgument(format!("update {}: resources: {e}", self.id))
            })?;
        // CRI sends the container's whole resources, devices included, on every resize:
        // the same rules are no change. Other rules are refused rather than ignored (runc
        // ignores them): swapping a running container's device program is not built.
        if let (Some(rules), Some(devices)) = (res.devices(), &self.devices) {
            devices
                .check_update(rules)
                .map_err(|e| ShimError::InvalidArgument(format!("update {}: {e}", self.id)))?;
        }
        // Blocking: cgroup files, and systemd's D-Bus for a scope.
        tokio::task::spawn_blocking(move || crate::cgroup::update(&path, &res))
            .await
            .unwrap_or_else(|e| Err(format!("the update's task failed: {e}")))
            .map_err(|e| ShimError::Io {
                context: format!("update container {}", self.id),
                source: std::io::Error::other(e),
            })
    }

    pub async fn kill(&self, signal: u32, all: bool) -> Result<(), ShimError> {
        if matches!(self.status(), Status::Stopped { .. }) {
            return Err(ShimError::NotFound(format!(
                "{}: process already finished",
                self.id
            )));
        }
        let sig = signal_of(signal)?;
        if self.sandbox {
            // Nothing runs; any terminating signal ends the sandbox as it would end a pause
            // process. The caller publishes the exit.
            if !matches!(
                sig,
                nix::sys::signal::Signal::SIGCHLD | nix::sys::signal::Signal::SIGWINCH
            ) {
                self.set_exited(128 + signal as i32);
            }
            return Ok(());
        }
        if let Some(linux) = &self.linux {
            return linux.kill(&self.id, signal, all).await;
        }
        // The container process leads its own session, so `all` reaches anything it forked.
        let target = if all { -self.pid } else { self.pid };
        signal_pid(target, sig, &format!("container {}", self.id))
    }

    /// Ends what is left of the container before its delete: a Wasm container that never
    /// ran (containerd deletes created tasks without start) is killed; a Linux container is
    /// deleted from runc (`delete --force`: what still runs, its state and its cgroup). Fails
    /// with runc's reason when runc could not: the container is then kept, for a retry.
    pub async fn discard(&self) -> Result<(), ShimError> {
        if self.sandbox {
            self.set_exited(128 + libc::SIGKILL);
        } else if let Some(linux) = &self.linux {
            let running = !matches!(self.status(), Status::Stopped { .. });
            linux
                .delete(&self.id)
                .await
                .map_err(|message| ShimError::Io {
                    context: format!("delete container {}", self.id),
                    source: std::io::Error::other(message),
                })?;
            if running {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.wait()).await;
            }
        } else if self.status() == Status::Created {
            *self.control.lock().await = None;
            let _ = self.kill(libc::SIGKILL as u32, false).await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.wait()).await;
        }
        Ok(())
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
            // The last release of an overlay syncs its upper directory's whole file system
            // (`ovl_sync_fs`): most of this step's time.
            if let Err(e) =
                containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH)
            {
                warn!("container {}: unmount {}: {e}", self.id, rootfs.display());
            }
            timed.unmount_us = unmounting.elapsed().as_micros();
        }
        if let Some(path) = &self.cgroup {
            timed.cgroup = crate::cgroup::remove(path);
        }
        timed
    }

    pub(crate) fn precondition(&self, message: &str) -> ShimError {
        ShimError::FailedPrecondition {
            id: self.id.clone(),
            message: message.into(),
        }
    }
}

/// A signal number of a Kill request, checked.
pub(crate) fn signal_of(signal: u32) -> Result<nix::sys::signal::Signal, ShimError> {
    nix::sys::signal::Signal::try_from(signal as i32)
        .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))
}

/// Sends `sig` to `pid` (a process group if negative), one of the shim's own children: a
/// process already gone (`ESRCH`) is no error, its exit is the reaper's to report.
pub(crate) fn signal_pid(
    pid: i32,
    sig: nix::sys::signal::Signal,
    what: &str,
) -> Result<(), ShimError> {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(ShimError::Io {
            context: format!("kill {what} with {sig}"),
            source: e.into(),
        }),
    }
}

fn pidfd_of(pid: i32) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::other(format!("{pid} is no pid")))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
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

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn check_cwd(root: &OwnedFd, cwd: &str) -> Result<(), String> {
    open_in_root(root, cwd, OFlags::PATH | OFlags::DIRECTORY)
        .map(drop)
        .map_err(|e| format!("process.cwd {cwd:?} is not a directory in the container root: {e}"))
}

/// The module `entry` (`process.args[0]`, absolute or relative to `cwd`), opened read-only
/// inside the container's root; `None` if there is no such file.
fn open_module(root: &OwnedFd, cwd: &str, entry: &str) -> Result<Option<File>, String> {
    let path = if entry.starts_with('/') {
        entry.to_string()
    } else {
        format!("{}/{entry}", cwd.trim_end_matches('/'))
    };
    // O_PATH first: opening a FIFO for reading would block this (single-threaded) shim until
    // a writer came, and opening a device node runs its driver's open as the host's root.
    // Only a regular file is opened for reading, through the descriptor just checked.
    let found = match open_in_root(root, &path, OFlags::PATH) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("entrypoint {entry:?}: {e}")),
    };
    let st = rustix::fs::fstat(&found).map_err(|e| format!("entrypoint {entry:?}: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(format!("entrypoint {entry:?} is not a regular file"));
    }
    let reopened = rustix::fs::open(
        format!("/proc/self/fd/{}", found.as_raw_fd()),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("entrypoint {entry:?}: {e}"))?;
    Ok(Some(File::from(reopened)))
}

/// How long the shim waits for a look at a container's entrypoint.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Looks at entrypoints at once, each on a blocking thread.
const PROBE_THREADS: usize = 4;
static PROBES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PROBE_THREADS);

/// [`entrypoint`], on a thread of its own: the rootfs may be a lazily pulled snapshot (a
/// FUSE file system that fetches a file's bytes from a registry when it is first read), and
/// the shim's one thread serves every container of the node. An entrypoint that cannot be
/// looked at in [`PROBE_TIMEOUT`] is runc's to run (runc's error then says why).
async fn probe_entrypoint(spec: &oci_spec::runtime::Spec, rootfs: &Path) -> Entrypoint {
    let Some(process) = spec.process() else {
        return Entrypoint::Linux;
    };
    let Some(entry) = process.args().as_ref().and_then(|a| a.first()).cloned() else {
        return Entrypoint::Linux;
    };
    let cwd = process.cwd().to_string_lossy().into_owned();
    let rootfs = rootfs.to_owned();
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    // A probe stuck in a read holds its thread (and its permit) until the read returns: at
    // most PROBE_THREADS of them, so stuck probes never take the blocking pool that the
    // shim's other file work (specs, mounts, state) runs on.
    let permit = match tokio::time::timeout_at(deadline, PROBES.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            warn!(
                "no look at the entrypoint in {} s ({PROBE_THREADS} looks are stuck): the \
                 container is runc's",
                PROBE_TIMEOUT.as_secs()
            );
            return Entrypoint::Linux;
        }
    };
    let probe = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        entrypoint(&rootfs, &cwd, entry)
    });
    match tokio::time::timeout_at(deadline, probe).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            warn!("the look at an entrypoint failed: {e}");
            Entrypoint::Linux
        }
        Err(_) => {
            warn!(
                "no look at the entrypoint in {} s: the container is runc's",
                PROBE_TIMEOUT.as_secs()
            );
            Entrypoint::Linux
        }
    }
}

/// What runs the container's entrypoint (`process.args[0]`, resolved as the Wasm path
/// resolves it: absolute, or relative to the working directory, inside the root): the Wasm
/// path for a regular file that starts with Wasm's magic, runc for anything else (a Linux
/// executable, a script, a name runc looks up on `PATH`, or nothing at all: runc's error
/// then says what is missing).
fn entrypoint(rootfs: &Path, cwd: &str, entry: String) -> Entrypoint {
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    let Ok(root) = open_dir(rootfs) else {
        return Entrypoint::Linux;
    };
    match open_module(&root, cwd, &entry) {
        Ok(Some(module)) => match crate::wasm::Header::of(&module) {
            header if header.is_wasm() => Entrypoint::Wasm(module, header),
            _ => Entrypoint::Linux,
        },
        Ok(None) => Entrypoint::Missing(entry),
        Err(_) => Entrypoint::Linux,
    }
}
