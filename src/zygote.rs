//! The fork server ("zygote") that runs container processes.
//!
//! Loading libwasmedge costs every process ~10 ms of dynamic linking and ~7.7 MB of private
//! memory (libLLVM's relocations). So the shim itself never links WasmEdge: it starts one
//! runner process per shim, which links and warms WasmEdge once, and asks it to fork a
//! child for every container. Children share the runner's relocated pages copy-on-write,
//! so a container costs only what its module touches.
//!
//! The runner forks each container process as a child of the shim (`CLONE_PARENT`), so the
//! shim reaps it and learns its exit status like any child of its own. The runner keeps no
//! per-container state, and if it dies, running containers carry on. A container process
//! ends with `_exit`: the runner's exit-time work (C++ static destructors) is not its own.
//!
//! Wire protocol (shim → runner), over a `SOCK_SEQPACKET` socket on the runner's fd 0: one
//! datagram per container, a JSON [`SpawnRequest`] carrying four fds as `SCM_RIGHTS`:
//! stdin, stdout, stderr, and the container's control stream. The control stream
//! (`SOCK_STREAM`, one JSON line per message) then belongs to shim and container alone: the
//! container reports a [`Report`] once it is ready to run (or why it cannot), then waits for
//! the line `start`; end of stream before that means "never mind" and it exits.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use serde::{Deserialize, Serialize};

use crate::config::Policy;
use crate::spec::Plan;

/// Upper bound of one request; a plan is argv, env and a few paths.
const MAX_REQUEST: usize = 1 << 20;

/// What the runner needs to start one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub id: String,
    pub plan: Plan,
    /// The compile policy a pod's annotation asked for, overriding the node's.
    pub policy: Option<Policy>,
}

/// Where a container's code comes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum CodeSource {
    /// The interpreter, from the module's Wasm bytes (`plan.module`).
    Interpreter,
    /// A native shared library compiled from the module.
    Native(PathBuf),
}

/// A container's first and only message to the shim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum Report {
    /// Loaded and instantiated; waiting for `start`.
    Ready {
        pid: i32,
        timings: Timings,
        /// Something the operator should know (e.g. why native code is not used).
        warning: Option<String>,
    },
    /// Could not be made ready; the process exits after sending this.
    Failed { pid: i32, error: String },
}

/// Microseconds spent in each phase of a container's create, as measured in the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timings {
    pub hash_us: u64,
    pub lookup_us: u64,
    pub compile_us: u64,
    /// Joining the container's cgroup and network namespace.
    pub enter_us: u64,
    pub load_us: u64,
    pub instantiate_us: u64,
    /// `native` or `interpreter`.
    pub tier: String,
    /// What the cache did; see [`crate::aot::Resolved::outcome`].
    pub cache: String,
}

/// The fds a container process inherits.
#[derive(Debug)]
pub struct ContainerFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub control: UnixStream,
}

/// Shim side: a handle on the runner process.
#[derive(Debug)]
pub struct Zygote {
    sock: Mutex<OwnedFd>,
    pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("start runner {path}: {source}")]
    Start {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("send spawn request for container {id} to the runner: {source}")]
    Send { id: String, source: nix::Error },
    #[error("encode spawn request for container {id}: {source}")]
    Encode {
        id: String,
        source: serde_json::Error,
    },
}

impl Zygote {
    /// Starts the runner binary at `runner`, its fd 0 being our end of the request socket.
    /// `stderr` receives whatever the runner itself prints (not the containers' output).
    pub fn start(runner: &Path, stderr: Stdio) -> Result<Zygote, ZygoteError> {
        let err = |source| ZygoteError::Start {
            path: runner.to_owned(),
            source,
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| err(e.into()))?;
        let child = Command::new(runner)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(err)?;
        Ok(Zygote {
            sock: Mutex::new(ours),
            pid: child.id(),
        })
        // The Child handle is dropped without waiting: the shim's reaper collects it.
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the runner still runs (it may have crashed; the next create starts another).
    pub fn is_alive(&self) -> bool {
        // Signal 0 checks existence; a zombie counts as dead once the shim reaped it.
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    }

    /// Asks the runner to fork a container process with these fds. Returns once the
    /// request is sent; the container reports on `fds[3]`, the control stream.
    pub fn spawn(&self, req: &SpawnRequest, fds: [BorrowedFd<'_>; 4]) -> Result<(), ZygoteError> {
        let body = serde_json::to_vec(req).map_err(|source| ZygoteError::Encode {
            id: req.id.clone(),
            source,
        })?;
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&body)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|source| ZygoteError::Send {
            id: req.id.clone(),
            source,
        })?;
        Ok(())
    }
}

/// Runner side: serves requests on `sock` until the shim closes it. For each, calls
/// `before_fork` in the runner (to prepare state every container of a module can share),
/// then forks a container process and calls `container` in it with what `before_fork`
/// returned; the process ends with the exit code `container` returns.
///
/// Must be called while the process is single-threaded (fork is only safe then).
pub fn serve<P>(
    sock: OwnedFd,
    mut before_fork: impl FnMut(&SpawnRequest) -> P,
    mut container: impl FnMut(SpawnRequest, P, ContainerFds) -> i32,
) -> ! {
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (req, fds) = match receive(sock.as_fd(), &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("wasmedge-shim-runner: bad request: {e}");
                continue;
            }
        };
        let pre = before_fork(&req);
        // SAFETY: the runner is single-threaded (documented precondition), so the child
        // may run arbitrary code after the fork.
        match unsafe { fork_sibling() } {
            Ok(None) => {
                drop(sock);
                let code = container(req, pre, fds);
                exit_now(code)
            }
            Ok(Some(_)) => drop((fds, pre)),
            Err(e) => {
                let _ = report(
                    &fds.control,
                    &Report::Failed {
                        pid: 0,
                        error: format!("fork container process: {e}"),
                    },
                );
            }
        }
    }
}

/// `fork`, except that the child is our parent's child, not ours (`CLONE_PARENT`): the
/// shim reaps its container processes and learns their exit status directly. A double fork
/// would do the same at the cost of a second copy of the runner's page tables and the
/// middle process's exit, ~1 ms per container for a runner holding a large module.
/// Returns `None` in the child and the child's pid in the parent.
///
/// # Safety
/// As for `fork`: the caller must be single-threaded. Unlike glibc's `fork`, this skips
/// glibc's fork bookkeeping, so the child's thread descriptor keeps the runner's thread
/// id. glibc consults it only for pthread calls that name the calling thread by handle
/// (scheduling, affinity, priority-inheritance mutexes under contention), which neither the
/// runner nor WasmEdge makes; `raise` and `abort` ask the kernel. runc starts its
/// container init the same way.
unsafe fn fork_sibling() -> std::io::Result<Option<u32>> {
    // SAFETY: clone without CLONE_VM and without a new stack behaves as fork: the child
    // returns here on its copy of our stack. The null pointers are the unused tid/tls.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match ret {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Ends a container process with `code`, skipping exit-time work that belongs to the
/// runner: `exit` would run the atexit handlers, i.e. the C++ static destructors of
/// libwasmedge and libLLVM (1.7 ms per container measured, for nothing). What the process
/// wrote through Rust's stdio is flushed first; WASI writes are unbuffered syscalls.
fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process; nothing in it is left half-written (flushed above).
    unsafe { libc::_exit(code) }
}

fn receive(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<Option<(SpawnRequest, ContainerFds)>, String> {
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(|e| format!("recvmsg: {e}"))?,
        }
    };
    let len = msg.bytes;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(|e| format!("cmsgs: {e}"))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds in our table for us alone.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err("request truncated".into());
    }
    let req: SpawnRequest =
        serde_json::from_slice(&buf[..len]).map_err(|e| format!("decode request: {e}"))?;
    let [stdin, stdout, stderr, control]: [OwnedFd; 4] = fds
        .try_into()
        .map_err(|v: Vec<OwnedFd>| format!("expected 4 fds, got {}", v.len()))?;
    Ok(Some((
        req,
        ContainerFds {
            stdin,
            stdout,
            stderr,
            control: UnixStream::from(control),
        },
    )))
}

/// Sends the container's one report on its control stream.
pub fn report(control: &UnixStream, report: &Report) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(report)?;
    line.push(b'\n');
    (&*control).write_all(&line)
}

/// Waits on the control stream for the shim's `start`. `false` means the shim went away or
/// gave up on the container.
pub fn wait_for_start(control: &UnixStream) -> bool {
    let mut line = String::new();
    matches!(BufReader::new(control).read_line(&mut line), Ok(n) if n > 0 && line.trim() == "start")
}
