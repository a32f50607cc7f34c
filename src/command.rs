//! Commands the shim runs and waits for: runc's, and a container's OCI hooks.
//!
//! The shim is a child subreaper, and the shim framework's reaper takes every exit of its
//! children (`waitpid(-1)`): a `waitpid` of our own would race it, and one on a pid the
//! reaper already took could take a new process's exit. So a command is spawned as a plain
//! `std` child, which nothing else waits for, and its exit comes from the reaper's stream,
//! subscribed to before the spawn so that it cannot come first. A command that must end by a
//! deadline, or whose wait is dropped (a cancelled request), is killed through a pidfd
//! taken at its spawn, which no reused pid can redirect.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use containerd_shim::asynchronous::monitor::{
    monitor_subscribe, monitor_unsubscribe, Subscription, MONITOR,
};
use containerd_shim::monitor::{Subject, Topic};
use log::debug;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// What is kept of a command's stdout and of its stderr: enough for any message, and a
/// command that writes more cannot grow the shim (the rest is read and dropped, so that the
/// command never blocks on a full pipe).
const OUTPUT_KEPT: usize = 256 * 1024;

/// How long the output is read after the command's exit: a process it left behind may hold
/// the pipes open, and the command's result must not wait for that process.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// How a command ended.
#[derive(Debug)]
pub struct Finished {
    pub pid: u32,
    /// The exit code, or 128 + the signal that ended it (as the reaper reports it).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("subscribe to the reaper's exits: {0}")]
    Subscribe(containerd_shim::Error),
    #[error("spawn: {0}")]
    Spawn(std::io::Error),
    #[error(
        "ran past its timeout of {after:?} and was killed{}",
        output(stdout, stderr)
    )]
    TimedOut {
        after: Duration,
        stdout: String,
        stderr: String,
    },
}

/// `, stdout: ..., stderr: ...` for what a command wrote, nothing where it wrote nothing.
pub fn output(stdout: &str, stderr: &str) -> String {
    let mut s = String::new();
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        let text = text.trim_end();
        if !text.is_empty() {
            s.push_str(&format!(", {name}: {text}"));
        }
    }
    s
}

/// Runs `cmd` to its end: `input` written to its stdin (then closed), its stdout and stderr
/// read (unless `cmd` sends them elsewhere). With a `timeout`, the command is killed when it
/// has not exited by then.
pub async fn run(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    timeout: Option<Duration>,
) -> Result<Finished, RunError> {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut exits = Exits(
        monitor_subscribe(Topic::Pid)
            .await
            .map_err(RunError::Subscribe)?,
    );
    let spawned = cmd.spawn();
    // The command holds our copies of the stdio given to the child.
    drop(cmd);
    let mut child = spawned.map_err(RunError::Spawn)?;
    let pid = child.id();
    // The reaper takes exits only while this task awaits, and nothing has awaited since the
    // spawn (the shim's runtime is single-threaded): the pid is still the child's.
    let guard = KillOnDrop {
        pidfd: pidfd(pid).ok(),
        pid,
        armed: true,
    };
    let stdin = child.stdin.take().map(OwnedFd::from);
    let stdout = Output::read(child.stdout.take().map(OwnedFd::from));
    let stderr = Output::read(child.stderr.take().map(OwnedFd::from));
    let writer = match (stdin, input) {
        // A command that does not read its stdin may exit first: EPIPE is no error of ours.
        (Some(fd), Some(input)) => Some(AbortOnDrop(tokio::spawn(async move {
            if let Ok(mut w) = pipe::Sender::from_owned_fd(fd) {
                let _ = w.write_all(&input).await;
            }
        }))),
        _ => None,
    };
    let mut exited = Box::pin(async move {
        while let Some(ev) = exits.0.rx.recv().await {
            if matches!(ev.subject, Subject::Pid(p) if p == pid as i32) {
                return ev.exit_code;
            }
        }
        255
    });
    let (code, timed_out) = match timeout {
        None => (exited.await, None),
        Some(after) => match tokio::time::timeout(after, &mut exited).await {
            Ok(code) => (code, None),
            Err(_) => {
                guard.kill();
                (exited.await, Some(after))
            }
        },
    };
    // Exited: nothing left to kill, and its pid may be another's from now on.
    let mut guard = guard;
    guard.armed = false;
    drop(writer);
    let (stdout, stderr) = tokio::join!(stdout.collect(), stderr.collect());
    match timed_out {
        Some(after) => Err(RunError::TimedOut {
            after,
            stdout,
            stderr,
        }),
        None => Ok(Finished {
            pid,
            code,
            stdout,
            stderr,
        }),
    }
}

/// Kills the command when its wait is dropped before its exit (a cancelled request): it
/// must not run on unseen, holding what it was given.
struct KillOnDrop {
    pidfd: Option<OwnedFd>,
    pid: u32,
    armed: bool,
}

impl KillOnDrop {
    fn kill(&self) {
        match &self.pidfd {
            Some(fd) => {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
            // Without a pidfd (a kernel without them): the exit has not reached us, so the
            // pid is not reaped, and still the child's.
            None => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// A task aborted when its owner is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A command's stdout or stderr, read as it comes: what was read is kept even where a
/// process the command left behind holds the pipe open past its exit.
struct Output {
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<AbortOnDrop<()>>,
}

impl Output {
    fn read(fd: Option<OwnedFd>) -> Output {
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = fd.map(|fd| {
            let kept = kept.clone();
            AbortOnDrop(tokio::spawn(read_kept(fd, kept)))
        });
        Output { kept, reader }
    }

    /// What was read, once the pipe closed or [`OUTPUT_GRACE`] passed.
    async fn collect(mut self) -> String {
        if let Some(mut reader) = self.reader.take() {
            let _ = tokio::time::timeout(OUTPUT_GRACE, &mut reader.0).await;
        }
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }
}

fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| std::io::Error::other(format!("{pid} is no pid")))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// The reaper's exits, for as long as this lives. The subscription is removed on drop, so
/// that a command whose future is dropped before its exit (a cancelled request) leaves no
/// subscriber behind: the monitor would otherwise fail to send it every later exit of the
/// node, and log an error each time.
struct Exits(Subscription);

impl Drop for Exits {
    fn drop(&mut self) {
        let id = self.0.id;
        // The monitor's lock is async but held only for an instant (the monitor holds it
        // across no wait): taken at once unless an exit is being sent out right now, in
        // which case a task removes the subscription right after.
        match MONITOR.try_lock() {
            Ok(mut monitor) => {
                let _ = monitor.unsubscribe(id);
            }
            Err(_) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let _ = monitor_unsubscribe(id).await;
                    });
                }
            }
        }
    }
}

/// Reads `fd` to its end into `kept`, keeping the first [`OUTPUT_KEPT`] bytes.
async fn read_kept(fd: OwnedFd, kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    match pipe::Receiver::from_owned_fd(fd) {
        Ok(mut r) => {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        Err(e) => debug!("read a command's output: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_only_what_was_written() {
        assert_eq!(output("", ""), "");
        assert_eq!(output("a\n", ""), ", stdout: a");
        assert_eq!(output("", "b"), ", stderr: b");
    }
}
