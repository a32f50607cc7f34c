//! Framing: one JSON message plus the file descriptors that travel with it.
//!
//! On the runner socket (`SOCK_SEQPACKET`) a message is one datagram. On a control stream
//! (`SOCK_STREAM`) it is a `u32` little-endian length, then that many bytes of JSON; its
//! descriptors ride on the first `sendmsg` of the message, so the reader receives them with
//! the first bytes it reads. Every read is bounded by the caller's limit.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("message or its file descriptors truncated")]
    Truncated,
    #[error("decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{what}: expected {expected} file descriptors, got {got}")]
    Fds {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("the peer closed the connection")]
    Closed,
}

impl WireError {
    fn io(op: &'static str) -> impl FnOnce(nix::Error) -> WireError {
        move |e| WireError::Io {
            op,
            source: e.into(),
        }
    }

    /// Whether the socket would block (a non-blocking caller waits and retries).
    pub fn would_block(&self) -> bool {
        matches!(self, WireError::Io { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock)
    }
}

pub fn encode<T: serde::Serialize>(what: &'static str, msg: &T) -> Result<Vec<u8>, WireError> {
    serde_json::to_vec(msg).map_err(|source| WireError::Encode { what, source })
}

/// What [`decode`] decodes into (serde's bound, re-exported so that users of the wire need
/// no serde of their own).
pub use serde::de::DeserializeOwned;

pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, WireError> {
    serde_json::from_slice(bytes).map_err(|source| WireError::Decode { what, source })
}

/// One `sendmsg` of `bytes` with `fds` attached; returns how many bytes went (a stream
/// socket may take fewer). Retries on `EINTR`.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<usize, WireError> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(WireError::io("sendmsg")),
        }
    }
}

/// One `recvmsg` into `buf`; returns the byte count (0 at end of stream), the descriptors
/// that came with them (close-on-exec), and whether the datagram or its descriptors were
/// truncated. Retries on `EINTR`.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>, bool), WireError> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = loop {
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.map_err(WireError::io("recvmsg"))?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(WireError::io("recvmsg control data"))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in our table, for us alone.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let truncated =
        msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC);
    Ok((msg.bytes, fds, truncated))
}

/// Sends one datagram (a whole message) with its descriptors.
pub fn send_datagram(
    sock: BorrowedFd<'_>,
    body: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    let sent = send_with_fds(sock, body, fds)?;
    if sent != body.len() {
        return Err(WireError::Truncated);
    }
    Ok(())
}

/// A received message: its bytes and the descriptors that came with them.
pub type Received<'b> = (&'b [u8], Vec<OwnedFd>);

/// Receives one datagram into `buf` (its size is the limit). `None` when the peer has
/// closed the socket.
pub fn recv_datagram<'b>(
    sock: BorrowedFd<'_>,
    buf: &'b mut [u8],
) -> Result<Option<Received<'b>>, WireError> {
    let (n, fds, truncated) = recv_with_fds(sock, buf)?;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(WireError::Truncated);
    }
    Ok(Some((&buf[..n], fds)))
}

/// The bytes of one framed message on a stream: length, then body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The length a frame's header gives, if it is at most `max`: every reader of framed
/// messages (this module's, the shim's async one, the container process's) checks it so.
pub fn frame_len(header: [u8; 4], max: usize) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

/// Reads one framed message of at most `max` bytes from a blocking stream without
/// descriptors (the container process's end of its control stream).
pub fn read_framed(mut from: impl std::io::Read, max: usize) -> Result<Vec<u8>, WireError> {
    let mut header = [0u8; 4];
    from.read_exact(&mut header)
        .map_err(|_| WireError::Closed)?;
    let mut body = vec![0u8; frame_len(header, max)?];
    from.read_exact(&mut body).map_err(|_| WireError::Closed)?;
    Ok(body)
}

/// Writes one framed message on a blocking stream socket, `fds` on its first bytes.
pub fn send_framed(
    sock: BorrowedFd<'_>,
    body: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), WireError> {
    let bytes = frame(body);
    let mut sent = send_with_fds(sock, &bytes, fds)?;
    while sent < bytes.len() {
        match send_with_fds(sock, &bytes[sent..], &[])? {
            0 => return Err(WireError::Closed),
            n => sent += n,
        }
    }
    Ok(())
}

/// Reads one framed message of at most `max` bytes from a blocking stream socket, with the
/// descriptors that came with it.
pub fn recv_framed(sock: BorrowedFd<'_>, max: usize) -> Result<(Vec<u8>, Vec<OwnedFd>), WireError> {
    let mut header = [0u8; 4];
    let mut fds = Vec::new();
    recv_exact(sock, &mut header, &mut fds)?;
    let mut body = vec![0u8; frame_len(header, max)?];
    recv_exact(sock, &mut body, &mut fds)?;
    Ok((body, fds))
}

/// Fills `buf` from a blocking stream socket, adding the descriptors that come with it to
/// `fds`.
fn recv_exact(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        let (n, more, truncated) = recv_with_fds(sock, &mut buf[got..])?;
        if truncated {
            return Err(WireError::Truncated);
        }
        fds.extend(more);
        if n == 0 {
            return Err(WireError::Closed);
        }
        got += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_framed_message_arrives_whole_with_its_descriptors_even_when_larger_than_the_buffer() {
        let (a, b) = UnixStream::pair().unwrap();
        let body: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let (pr, mut pw) = std::io::pipe().unwrap();
        let sender = {
            let body = body.clone();
            let pr_fd: OwnedFd = pr.try_clone().unwrap().into();
            std::thread::spawn(move || send_framed(a.as_fd(), &body, &[pr_fd.as_fd()]).unwrap())
        };
        let (got, fds) = recv_framed(b.as_fd(), 4 << 20).unwrap();
        sender.join().unwrap();
        assert_eq!(got, body);
        assert_eq!(fds.len(), 1);
        // The descriptor is the pipe's read end: what we write comes out of it.
        pw.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        std::fs::File::from(fds.into_iter().next().unwrap())
            .read_exact(&mut one)
            .unwrap();
        assert_eq!(&one, b"x");
        drop(pr);
    }

    #[test]
    fn over_the_limit_and_closed_streams_are_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        send_framed(a.as_fd(), &[b'x'; 100], &[]).unwrap();
        assert!(matches!(
            recv_framed(b.as_fd(), 10),
            Err(WireError::TooLarge { len: 100, max: 10 })
        ));
        drop(a);
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(matches!(recv_framed(b.as_fd(), 10), Err(WireError::Closed)));
    }
}
