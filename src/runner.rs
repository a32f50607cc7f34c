//! The shim's side of both protocols ([`wasmedge_aot_protocol`]): its runner, asked for
//! container processes over the runner socket, and each container process's control stream.
//!
//! Loading libwasmedge costs every process ~10 ms of dynamic linking and ~7.7 MB of private
//! memory (libLLVM's relocations). So the shim itself never links WasmEdge: it starts one
//! runner process, which links and warms WasmEdge once and forks a process for every
//! container. Everything here is async on the shim's runtime thread: a request waits for
//! the runner (which may be loading a module for the first time) without holding up the
//! shim.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;
use wasmedge_aot_protocol::control::{
    ContainerPlan, HooksRan, IdsMapped, Report, Start, MAX_MESSAGE,
};
use wasmedge_aot_protocol::spawn::{self, SpawnFds, SpawnReply, SpawnRequest};
use wasmedge_aot_protocol::wire::{self, WireError};

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("start runner {path}: {source}")]
    Start {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runner socket: {0}")]
    Wire(#[from] WireError),
    #[error("runner socket: {0}")]
    Io(#[from] std::io::Error),
}

/// The runner binary: `WASMEDGE_SHIM_RUNNER`, else the one installed beside the shim.
pub fn installed_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMEDGE_SHIM_RUNNER") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(crate::RUNNER_BINARY)))
        .unwrap_or_else(|| PathBuf::from(crate::RUNNER_BINARY))
}

/// A handle on the runner process.
#[derive(Debug)]
pub struct Runner {
    sock: AsyncFd<OwnedFd>,
    /// One request at a time: the runner answers in order, and a reply belongs to the
    /// request sent just before it.
    turn: tokio::sync::Mutex<()>,
    pid: u32,
}

impl Runner {
    /// Starts `binary` with the runner socket on its fd 0, `stderr` (the shim's log) as its
    /// stderr, and `config` (the shim's, as it loaded it).
    pub fn start(
        binary: &Path,
        stderr: impl Into<std::process::Stdio>,
        config: &wasmedge_aot_protocol::config::Config,
    ) -> Result<Runner, RunnerError> {
        let (sock, child) =
            spawn::start_runner(binary, stderr, config).map_err(|source| RunnerError::Start {
                path: binary.to_owned(),
                source,
            })?;
        rustix::io::ioctl_fionbio(&sock, true).map_err(std::io::Error::from)?;
        // SAFETY: the AsyncFd owns the descriptor, which stays open and the same until it
        // (and the OwnedFd in it) is dropped.
        let sock = unsafe { AsyncFd::register(sock) }.map_err(std::io::Error::from)?;
        Ok(Runner {
            sock,
            turn: tokio::sync::Mutex::new(()),
            pid: child.id(),
        })
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

    /// Asks for a container process; returns its pid.
    pub async fn spawn(
        &self,
        req: &SpawnRequest,
        fds: SpawnFds<BorrowedFd<'_>>,
    ) -> Result<SpawnReply, RunnerError> {
        let (bytes, fds) = req.encode(fds)?;
        let _turn = self.turn.lock().await;
        self.sock
            .async_io(Interest::WRITABLE, |s| {
                wire::send_datagram(s.as_fd(), &bytes, &fds).map_err(into_io)
            })
            .await?;
        let mut buf = vec![0u8; spawn::MAX_MESSAGE];
        let reply = self
            .sock
            .async_io(Interest::READABLE, |s| {
                match wire::recv_datagram(s.as_fd(), &mut buf) {
                    Ok(Some((bytes, _))) => Ok(wire::decode::<SpawnReply>("spawn reply", bytes)),
                    Ok(None) => Ok(Err(WireError::Closed)),
                    Err(e) => Err(into_io(e)),
                }
            })
            .await??;
        Ok(reply)
    }
}

/// `WouldBlock` must stay `WouldBlock` for tokio's readiness loop.
fn into_io(e: WireError) -> std::io::Error {
    match e {
        WireError::Io { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock => source,
        other => std::io::Error::other(other),
    }
}

/// The shim's end of one container process's control stream.
#[derive(Debug)]
pub struct Control {
    stream: UnixStream,
}

impl Control {
    pub fn new(stream: std::os::unix::net::UnixStream) -> std::io::Result<Control> {
        stream.set_nonblocking(true)?;
        Ok(Control {
            stream: UnixStream::from_std(stream)?,
        })
    }

    /// Sends the plan with its descriptors (stdio, then the namespaces to join).
    pub async fn send_plan(
        &self,
        plan: &ContainerPlan,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), RunnerError> {
        let bytes = wire::frame(&wire::encode("container plan", plan)?);
        // The descriptors ride on the first bytes; the rest follows as the process reads.
        let mut sent = self
            .stream
            .async_io(Interest::WRITABLE, || {
                wire::send_with_fds(self.stream.as_fd(), &bytes, fds).map_err(into_io)
            })
            .await?;
        while sent < bytes.len() {
            let n = self
                .stream
                .async_io(Interest::WRITABLE, || {
                    wire::send_with_fds(self.stream.as_fd(), &bytes[sent..], &[]).map_err(into_io)
                })
                .await?;
            if n == 0 {
                return Err(WireError::Closed.into());
            }
            sent += n;
        }
        Ok(())
    }

    /// The process's report; an error if it went away before sending one.
    pub async fn report(&mut self) -> Result<Report, RunnerError> {
        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .await
            .map_err(|_| WireError::Closed)?;
        let mut body = vec![0u8; wire::frame_len(len, MAX_MESSAGE)?];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|_| WireError::Closed)?;
        Ok(wire::decode("report", &body)?)
    }

    /// Tells the process its uid and gid maps are written.
    pub async fn ids_mapped(&mut self) -> Result<(), RunnerError> {
        let body = wire::frame(&wire::encode("ids mapped", &IdsMapped)?);
        self.stream.write_all(&body).await?;
        Ok(())
    }

    /// Tells the process the spec's hooks ran.
    pub async fn hooks_ran(&mut self) -> Result<(), RunnerError> {
        let body = wire::frame(&wire::encode("hooks ran", &HooksRan)?);
        self.stream.write_all(&body).await?;
        Ok(())
    }

    /// Tells the process to run its module.
    pub async fn start(&mut self) -> Result<(), RunnerError> {
        let body = wire::frame(&wire::encode("start", &Start)?);
        self.stream.write_all(&body).await?;
        Ok(())
    }
}
