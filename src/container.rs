//! One container as the shim sees it: its bundle and rootfs mount, its stdio, its cgroup,
//! and the process the runner forked for it, from create to delete.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use containerd_shim::api::CreateTaskRequest;
use containerd_shim::asynchronous::util::{mount_rootfs, read_spec};
use log::{debug, warn};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::cgroup::OomWatch;
use crate::config::{Policy, POLICY_ANNOTATION};
use crate::error::ShimError;
use crate::spec;
use crate::zygote::{Report, SpawnRequest, Timings, Zygote};

/// The lifecycle states containerd distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped { code: i32, at: OffsetDateTime },
}

/// Stdio as containerd passed it (FIFO paths, possibly empty).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// The annotation CRI puts on a pod's sandbox ("pause") container.
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The annotation CRI puts on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// A pod sandbox: it runs nothing. CRI only needs a task that lives as long as the pod;
    /// the pod's network namespace is made by CRI and joined by each Wasm container, so no
    /// pause process is needed. Its pid is the shim's own.
    pub sandbox: bool,
    /// For a sandbox: the network namespace its spec named (the pod's), which its
    /// containers join.
    pub netns: Option<PathBuf>,
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    pub pid: i32,
    /// What the create cost, phase by phase.
    pub timings: Timings,
    rootfs: Option<PathBuf>,
    cgroup: Option<String>,
    control: tokio::sync::Mutex<Option<tokio::net::UnixStream>>,
    status: watch::Sender<Status>,
    started_at: Mutex<Option<Instant>>,
    cleaned: Mutex<bool>,
}

impl Container {
    /// Everything containerd's Create asks: mount the rootfs, translate the spec, open
    /// stdio, and have the runner fork a process that loads and instantiates the module.
    /// On error nothing is left behind (mount, cgroup, process).
    /// `sandbox_netns` answers, for a pod's sandbox id, the network namespace its sandbox
    /// spec named (see [`spec::pod_network_namespace`]). Also returns the watch on the
    /// container's cgroup for OOM kills, registered before its process existed.
    pub async fn create(
        req: &CreateTaskRequest,
        zygote: &Zygote,
        sandbox_netns: impl Fn(&str) -> Option<Option<PathBuf>>,
    ) -> Result<(Container, Option<OomWatch>), ShimError> {
        let id = req.id.clone();
        if req.terminal {
            return Err(ShimError::Unsupported(
                "a terminal (tty) for a wasm container",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = read_spec(&bundle).await?;
        let rootfs = bundle.join(
            spec.root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_else(|| "rootfs".into()),
        );
        let sandbox = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
            .is_some_and(|t| t == "sandbox");
        let mut c = Container {
            id: id.clone(),
            sandbox,
            netns: None,
            bundle,
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            },
            pid: 0,
            timings: Timings::default(),
            rootfs: None,
            cgroup: None,
            control: tokio::sync::Mutex::new(None),
            status: watch::channel(Status::Created).0,
            started_at: Mutex::new(None),
            cleaned: Mutex::new(false),
        };
        if sandbox {
            c.pid = std::process::id() as i32;
            c.netns = spec::network_namespace(&spec);
            return Ok((c, None));
        }
        let pod_netns = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(SANDBOX_ID_ANNOTATION))
            .and_then(|sandbox_id| sandbox_netns(sandbox_id));
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
        match c.spawn(&spec, &rootfs, zygote, pod_netns).await {
            Ok((pid, oom)) => {
                c.pid = pid;
                Ok((c, oom))
            }
            Err(e) => {
                c.cleanup();
                Err(e)
            }
        }
    }

    async fn spawn(
        &mut self,
        spec: &oci_spec::runtime::Spec,
        rootfs: &Path,
        zygote: &Zygote,
        pod_netns: Option<Option<PathBuf>>,
    ) -> Result<(i32, Option<OomWatch>), ShimError> {
        let id = self.id.clone();
        let create_err = |context: &'static str| {
            let id = id.clone();
            move |e: &dyn std::fmt::Display| ShimError::Create {
                id,
                context,
                message: e.to_string(),
            }
        };
        let mut plan = spec::plan(spec, rootfs).map_err(|e| create_err("entrypoint")(&e))?;
        plan.network_ns =
            spec::pod_network_namespace(plan.network_ns, std::process::id(), pod_netns);
        let policy = match spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(POLICY_ANNOTATION))
        {
            Some(v) => Some(
                v.parse::<Policy>()
                    .map_err(|e| create_err("annotation")(&e))?,
            ),
            None => None,
        };
        check_wasm(&plan.module).map_err(|e| create_err("entrypoint")(&e))?;

        let cgroup_started = Instant::now();
        let mut oom = None;
        if let Some(path) = &plan.cgroups_path {
            match crate::cgroup::create(path, spec) {
                Ok(cg) => {
                    self.cgroup = Some(path.clone());
                    match OomWatch::new(&cg) {
                        Ok(watch) => oom = watch,
                        Err(e) => warn!(
                            "container {}: cgroup {path}: {e}; its OOM kills go unreported",
                            self.id
                        ),
                    }
                }
                Err(e) => warn!(
                    "container {}: cgroup {path}: {e}; running without one",
                    self.id
                ),
            }
        }

        let stdin = open_stdin(&self.stdio.stdin).map_err(|e| create_err("open stdin")(&e))?;
        let stdout = open_output(&self.stdio.stdout).map_err(|e| create_err("open stdout")(&e))?;
        let stderr = open_output(&self.stdio.stderr).map_err(|e| create_err("open stderr")(&e))?;
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(ShimError::io("control socketpair"))?;

        let cgroup_us = cgroup_started.elapsed().as_micros();
        let started = Instant::now();
        let req = SpawnRequest {
            id: self.id.clone(),
            plan,
            policy,
        };
        zygote
            .spawn(
                &req,
                [
                    stdin.as_fd(),
                    stdout.as_fd(),
                    stderr.as_fd(),
                    theirs.as_fd(),
                ],
            )
            .map_err(|e| create_err("start container process")(&e))?;
        drop((stdin, stdout, stderr, theirs));

        ours.set_nonblocking(true)
            .map_err(ShimError::io("control socket"))?;
        let mut control =
            tokio::net::UnixStream::from_std(ours).map_err(ShimError::io("control socket"))?;
        let mut line = String::new();
        BufReader::new(&mut control)
            .read_line(&mut line)
            .await
            .map_err(ShimError::io("read container report"))?;
        let report: Report = serde_json::from_str(line.trim()).map_err(|_| ShimError::Create {
            id: self.id.clone(),
            context: "start container process",
            message: "the container process died before reporting".into(),
        })?;
        match report {
            Report::Ready {
                pid,
                timings: t,
                warning,
            } => {
                if let Some(w) = warning {
                    warn!("container {}: {w}", self.id);
                }
                debug!(
                    "container {}: cgroup {cgroup_us} µs, stdio+spawn {} µs: hash {} µs, lookup {} µs, compile {} µs, \
                     enter {} µs, load {} µs, instantiate {} µs; cache {}, tier {}",
                    self.id,
                    started.elapsed().as_micros(),
                    t.hash_us,
                    t.lookup_us,
                    t.compile_us,
                    t.enter_us,
                    t.load_us,
                    t.instantiate_us,
                    t.cache,
                    t.tier
                );
                self.timings = t;
                *self.control.get_mut() = Some(control);
                Ok((pid, oom))
            }
            Report::Failed { error, .. } => Err(ShimError::Create {
                id: self.id.clone(),
                context: "load module",
                message: error,
            }),
        }
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Lets the module run.
    pub async fn start(&self) -> Result<(), ShimError> {
        if self.sandbox {
            return self.set_running();
        }
        let mut control = self.control.lock().await;
        let Some(stream) = control.as_mut() else {
            return Err(self.precondition("already started"));
        };
        if self.status() != Status::Created {
            return Err(self.precondition("not in created state"));
        }
        stream
            .write_all(b"start\n")
            .await
            .map_err(ShimError::io(format!("start container {}", self.id)))?;
        *control = None;
        self.set_running()
    }

    /// How long the module has run (until now, or until it exited if called on exit).
    pub fn run_time(&self) -> std::time::Duration {
        self.started_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    fn set_running(&self) -> Result<(), ShimError> {
        *self.started_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.status.send_if_modified(|s| {
            if *s == Status::Created {
                *s = Status::Running;
                true
            } else {
                false
            }
        });
        Ok(())
    }

    /// Records the exit the reaper saw; returns false if the container had already exited.
    pub fn set_exited(&self, code: i32) -> bool {
        self.status.send_if_modified(|s| {
            if matches!(s, Status::Stopped { .. }) {
                return false;
            }
            *s = Status::Stopped {
                code,
                at: OffsetDateTime::now_utc(),
            };
            true
        })
    }

    /// Waits until the container has exited; returns its code and time.
    pub async fn wait(&self) -> (i32, OffsetDateTime) {
        let mut rx = self.status.subscribe();
        let status = rx
            .wait_for(|s| matches!(s, Status::Stopped { .. }))
            .await
            .map(|s| *s)
            .unwrap_or(Status::Stopped {
                code: 255,
                at: OffsetDateTime::now_utc(),
            });
        match status {
            Status::Stopped { code, at } => (code, at),
            _ => unreachable!("wait_for returned a non-stopped status"),
        }
    }

    pub fn kill(&self, signal: u32, all: bool) -> Result<(), ShimError> {
        if matches!(self.status(), Status::Stopped { .. }) {
            return Err(ShimError::NotFound(format!(
                "{}: process already finished",
                self.id
            )));
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
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
        // The container process leads its own session, so `all` reaches anything it forked.
        let target = if all { -self.pid } else { self.pid };
        match nix::sys::signal::kill(nix::unistd::Pid::from_raw(target), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(ShimError::Io {
                context: format!("kill container {} with {sig}", self.id),
                source: e.into(),
            }),
        }
    }

    /// Kills a container that never ran (containerd deletes created tasks without start).
    pub async fn discard(&self) {
        if self.sandbox {
            self.set_exited(128 + libc::SIGKILL);
        } else if self.status() == Status::Created {
            *self.control.lock().await = None;
            let _ = self.kill(libc::SIGKILL as u32, false);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.wait()).await;
        }
    }

    /// Unmounts the rootfs and removes the cgroup; safe to call twice.
    pub fn cleanup(&self) {
        let mut cleaned = self.cleaned.lock().unwrap_or_else(|p| p.into_inner());
        if *cleaned {
            return;
        }
        *cleaned = true;
        if let Some(rootfs) = &self.rootfs {
            if let Err(e) =
                containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH)
            {
                warn!("container {}: unmount {}: {e}", self.id, rootfs.display());
            }
        }
        if let Some(path) = &self.cgroup {
            crate::cgroup::remove(path);
        }
    }

    fn precondition(&self, message: &str) -> ShimError {
        ShimError::FailedPrecondition {
            id: self.id.clone(),
            message: message.into(),
        }
    }
}

/// Refuses anything that is not a core Wasm module before a process is forked for it.
fn check_wasm(path: &Path) -> Result<(), String> {
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if n < 8 || head[..4] != *b"\0asm" {
        return Err(format!(
            "{} is not a wasm module (no \\0asm magic)",
            path.display()
        ));
    }
    if head[4..8] != [1, 0, 0, 0] {
        return Err(format!(
            "{} is a wasm component or unknown version ({:02x?}); only core modules run",
            path.display(),
            &head[4..8]
        ));
    }
    Ok(())
}

fn dev_null(write: bool) -> std::io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?
        .into())
}

fn fifo_path(uri: &str) -> Result<&str, std::io::Error> {
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(p);
    }
    if uri.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("stdio uri {uri:?} is not supported (only fifo and file paths)"),
        ));
    }
    Ok(uri)
}

/// Opens an output FIFO without blocking when containerd's reader is not there yet.
fn open_output(uri: &str) -> std::io::Result<OwnedFd> {
    if uri.is_empty() {
        return dev_null(true);
    }
    let path = fifo_path(uri)?;
    let is_fifo = std::fs::metadata(path).map(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    });
    if !matches!(is_fifo, Ok(true)) {
        return Ok(OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?
            .into());
    }
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // No reader yet: read-write never blocks and the reader finds the data later.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            OpenOptions::new().read(true).write(true).open(path)?
        }
        Err(e) => return Err(e),
    };
    set_blocking(&file)?;
    Ok(file.into())
}

fn open_stdin(uri: &str) -> std::io::Result<OwnedFd> {
    if uri.is_empty() {
        return dev_null(false);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo_path(uri)?)?;
    set_blocking(&file)?;
    Ok(file.into())
}

fn set_blocking(f: &std::fs::File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}
