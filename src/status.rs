//! A task's process as containerd sees it: created, running, paused or stopped with its
//! exit code, which `Wait` watches. A container's, whatever its kind, and each exec's.

use std::sync::Mutex;
use std::time::Instant;

use time::OffsetDateTime;
use tokio::sync::watch;

/// The lifecycle states containerd distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    /// Frozen (`runc pause`); Linux containers only.
    Paused,
    Stopped {
        code: i32,
        at: OffsetDateTime,
    },
}

/// A process's life as containerd sees it: its status (which `Wait` watches) and when it
/// started. A container's, and each exec'd process's.
#[derive(Debug)]
pub struct ProcessState {
    status: watch::Sender<Status>,
    started_at: Mutex<Option<Instant>>,
}

impl Default for ProcessState {
    fn default() -> Self {
        ProcessState::new()
    }
}

impl ProcessState {
    pub fn new() -> ProcessState {
        ProcessState {
            status: watch::channel(Status::Created).0,
            started_at: Mutex::new(None),
        }
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Created → running, from now.
    pub fn set_running(&self) {
        *self.started_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.status.send_if_modified(|s| {
            if *s == Status::Created {
                *s = Status::Running;
                true
            } else {
                false
            }
        });
    }

    /// Running → paused, or paused → running.
    pub fn set_paused(&self, paused: bool) {
        let (from, to) = if paused {
            (Status::Running, Status::Paused)
        } else {
            (Status::Paused, Status::Running)
        };
        self.status.send_if_modified(|s| {
            let change = *s == from;
            if change {
                *s = to;
            }
            change
        });
    }

    /// Records the exit the reaper saw; returns false if the process had already exited.
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

    /// Waits until the process has exited; returns its code and time.
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

    /// How long the process has run (until now, or until it exited if called on exit).
    pub fn run_time(&self) -> std::time::Duration {
        self.started_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}
