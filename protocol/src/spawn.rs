//! The runner socket: `SOCK_SEQPACKET`, the runner's fd 0, one datagram per message.
//!
//! ```text
//! shim → runner   SpawnRequest (JSON) + fds: control stream, module file,
//!                 [pid namespace to join], [cgroup directory to be born in]
//! runner → shim   SpawnReply (JSON): the new process's pid, or why there is none
//! ```
//!
//! The runner answers requests in the order it gets them. The request carries nothing of
//! the container beyond what the process's birth needs and, for the runner's messages, its
//! id and `process.args[0]`: the runner never sees env, any argument after `args[0]`, or
//! anything else a container is configured with (those go on the control stream,
//! [`crate::control`]), so no container's secrets are in the memory every later
//! container process is forked from.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Policy};
use crate::wire::{self, WireError};

/// Upper bound of one request or reply datagram.
pub const MAX_MESSAGE: usize = 64 << 10;

/// What the runner needs to fork one container process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// The container's id, for the runner's messages.
    pub id: String,
    /// The module as the container names it (`process.args[0]`), for messages. The module
    /// itself is the descriptor [`SpawnFds::module`], opened by the shim inside the rootfs.
    pub module_name: String,
    /// The module's blake3 hash (64 hex digits, the cache's `ModuleHash`) when the shim
    /// already knows it: a module read from an image's Wasm layer, which the shim hashed
    /// while copying it into the sealed memory file it sends (`src/image_layers.rs`). The
    /// runner then does not hash it. `None`: the runner hashes the file (memoised by its
    /// identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_hash: Option<String>,
    /// The compile policy a pod's annotation asked for, overriding the node's.
    pub policy: Option<Policy>,
    /// The pid namespace the process is born in.
    pub pid_namespace: PidNamespace,
    /// Born in the cgroup whose directory is [`SpawnFds::cgroup`] (cgroup v2,
    /// `clone3(CLONE_INTO_CGROUP)`), rather than joining it later.
    pub into_cgroup: bool,
}

/// A pid namespace can only be entered at birth: `unshare` and `setns` change the
/// namespace of a process's children, not its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PidNamespace {
    /// The runner's (the host's).
    Inherit,
    /// A new one, of which the process is pid 1.
    New,
    /// The one [`SpawnFds::pid_ns`] names (a pod's).
    Join,
}

/// The descriptors of a [`SpawnRequest`], in the order they travel: borrowed by the sender
/// ([`SpawnRequest::encode`]), owned by the receiver ([`SpawnRequest::decode`]).
#[derive(Debug)]
pub struct SpawnFds<Fd = OwnedFd> {
    /// The container's control stream ([`crate::control`]).
    pub control: Fd,
    /// The module file, read-only.
    pub module: Fd,
    /// With [`PidNamespace::Join`].
    pub pid_ns: Option<Fd>,
    /// With [`SpawnRequest::into_cgroup`]: the cgroup's directory.
    pub cgroup: Option<Fd>,
}

/// The runner's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnReply {
    /// The process exists, with this pid in the runner's (and the shim's) pid namespace. It
    /// is the shim's child. It reports on its control stream next.
    Spawned { pid: i32 },
    /// No process was made.
    Failed { error: String },
}

impl SpawnRequest {
    /// The datagram and its descriptors, in wire order.
    pub fn encode<'a>(
        &self,
        fds: SpawnFds<BorrowedFd<'a>>,
    ) -> Result<(Vec<u8>, Vec<BorrowedFd<'a>>), WireError> {
        let SpawnFds {
            control,
            module,
            pid_ns,
            cgroup,
        } = fds;
        if (self.pid_namespace == PidNamespace::Join) != pid_ns.is_some()
            || self.into_cgroup != cgroup.is_some()
        {
            return Err(WireError::Fds {
                what: "spawn request",
                expected: self.fd_count(),
                got: 2 + usize::from(pid_ns.is_some()) + usize::from(cgroup.is_some()),
            });
        }
        let fds = [Some(control), Some(module), pid_ns, cgroup]
            .into_iter()
            .flatten()
            .collect();
        Ok((wire::encode("spawn request", self)?, fds))
    }

    fn fd_count(&self) -> usize {
        2 + usize::from(self.pid_namespace == PidNamespace::Join) + usize::from(self.into_cgroup)
    }

    /// Decodes a datagram and pairs its descriptors with their roles.
    pub fn decode(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<(SpawnRequest, SpawnFds), WireError> {
        let req: SpawnRequest = wire::decode("spawn request", bytes)?;
        if fds.len() != req.fd_count() {
            return Err(WireError::Fds {
                what: "spawn request",
                expected: req.fd_count(),
                got: fds.len(),
            });
        }
        let mut fds = fds.into_iter();
        let mut next = || fds.next().expect("counted above");
        let control = next();
        let module = next();
        let pid_ns = (req.pid_namespace == PidNamespace::Join).then(&mut next);
        let cgroup = req.into_cgroup.then(&mut next);
        Ok((
            req,
            SpawnFds {
                control,
                module,
                pid_ns,
                cgroup,
            },
        ))
    }
}

/// Runner side: the next request; `None` once the shim has closed the socket.
pub fn recv_request(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<Option<(SpawnRequest, SpawnFds)>, WireError> {
    match wire::recv_datagram(sock, buf)? {
        None => Ok(None),
        Some((bytes, fds)) => SpawnRequest::decode(bytes, fds).map(Some),
    }
}

/// Runner side: answers the request just served.
pub fn send_reply(sock: BorrowedFd<'_>, reply: &SpawnReply) -> Result<(), WireError> {
    wire::send_datagram(sock, &wire::encode("spawn reply", reply)?, &[])
}

/// The variables of the shim's environment the runner is started with; it gets no other.
///
/// Every container process is a fork of the runner, and its memory (the stack's environment
/// strings included) is the runner's: an environment inherited from containerd and the
/// shim (`GRPC_ADDRESS`, `TTRPC_ADDRESS`, proxy credentials, whatever containerd's unit
/// sets) would be in every container. `TMPDIR` is where LLVM writes the temporary files of
/// a compile.
pub const RUNNER_ENV: &[&str] = &["TMPDIR"];

/// The variable that carries the node config to the runner, as JSON ([`Config::to_env`]):
/// the config the shim loaded, whose digest is in the shim's identity. A runner the shim
/// starts again (after its runner died) gets the same, not the file as it is by then.
pub const CONFIG_ENV: &str = "WASMEDGE_SHIM_RUNNER_CONFIG";

/// Starts the runner binary with its end of a new runner socket as fd 0, `stderr` as its
/// stderr, `config` in [`CONFIG_ENV`], and of this process's environment only
/// [`RUNNER_ENV`]. Returns the shim's end of the socket (close-on-exec) and the child.
pub fn start_runner(
    binary: &Path,
    stderr: impl Into<Stdio>,
    config: &Config,
) -> std::io::Result<(OwnedFd, Child)> {
    let config = config.to_env().map_err(std::io::Error::other)?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let mut command = Command::new(binary);
    command.env_clear();
    for name in RUNNER_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.env(CONFIG_ENV, config);
    // `Stdio::from(OwnedFd)` dup2s it onto fd 0 in the child; the dup has no close-on-exec.
    let child = command
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    Ok((ours, child))
}

/// A blocking client of the runner socket, for callers without an async runtime (the
/// benchmarks). The shim drives the same messages through its own async socket.
#[derive(Debug)]
pub struct BlockingClient {
    sock: OwnedFd,
}

impl BlockingClient {
    pub fn new(sock: OwnedFd) -> BlockingClient {
        BlockingClient { sock }
    }

    /// Sends a request and waits for its reply.
    pub fn spawn(
        &self,
        req: &SpawnRequest,
        fds: SpawnFds<BorrowedFd<'_>>,
    ) -> Result<SpawnReply, WireError> {
        let (bytes, fds) = req.encode(fds)?;
        wire::send_datagram(self.sock.as_fd(), &bytes, &fds)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        match wire::recv_datagram(self.sock.as_fd(), &mut buf)? {
            None => Err(WireError::Closed),
            Some((bytes, _)) => wire::decode("spawn reply", bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pid_namespace: PidNamespace, into_cgroup: bool) -> SpawnRequest {
        SpawnRequest {
            id: "c1".into(),
            module_name: "/app.wasm".into(),
            module_hash: Some("ab".repeat(32)),
            policy: None,
            pid_namespace,
            into_cgroup,
        }
    }

    fn file() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn descriptors_keep_their_roles_through_the_socket() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let (control, module, pid_ns) = (file(), file(), file());
        let r = req(PidNamespace::Join, false);
        let (bytes, fds) = r
            .encode(SpawnFds {
                control: control.as_fd(),
                module: module.as_fd(),
                pid_ns: Some(pid_ns.as_fd()),
                cgroup: None,
            })
            .unwrap();
        wire::send_datagram(a.as_fd(), &bytes, &fds).unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let (got, got_fds) = recv_request(b.as_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(got, r);
        assert!(got_fds.pid_ns.is_some() && got_fds.cgroup.is_none());
        drop(a);
        assert!(recv_request(b.as_fd(), &mut buf).unwrap().is_none());
    }

    #[test]
    fn a_request_whose_descriptors_do_not_match_its_fields_is_refused() {
        let (control, module) = (file(), file());
        let err = req(PidNamespace::Join, false)
            .encode(SpawnFds {
                control: control.as_fd(),
                module: module.as_fd(),
                pid_ns: None,
                cgroup: None,
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Fds {
                    expected: 3,
                    got: 2,
                    ..
                }
            ),
            "{err}"
        );
        let bytes = wire::encode("spawn request", &req(PidNamespace::New, true)).unwrap();
        let err = SpawnRequest::decode(&bytes, vec![file(), file()]).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::Fds {
                    expected: 3,
                    got: 2,
                    ..
                }
            ),
            "{err}"
        );
    }
}
