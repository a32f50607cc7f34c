//! A pod's sandbox: it runs nothing. CRI only needs a task that lives as long as the pod;
//! the pod's namespaces are made and held here ([`crate::pod`]) and joined by each of its
//! containers, so no pause process is needed. Its pid is the shim's own.

use async_trait::async_trait;
use nix::sys::signal::Signal;

use super::{Created, Kind, New, Signalled, Task};
use crate::error::{ShimError, SpecError};
use crate::pod::PodNamespaces;
use crate::spec::SandboxSpec;

#[derive(Debug)]
pub struct Sandbox {
    pod: PodNamespaces,
}

impl Sandbox {
    /// Makes (or enters) the namespaces the sandbox's spec asks for (`pod`, as
    /// [`crate::spec::task`] read it).
    pub fn create(
        new: &New<'_>,
        pod: Result<SandboxSpec, SpecError>,
    ) -> Result<Created<Sandbox>, ShimError> {
        let s = pod.map_err(ShimError::create(new.id, "spec"))?;
        let pod = PodNamespaces::create(&s).map_err(ShimError::create(new.id, "pod namespaces"))?;
        Ok(Created {
            kind: Sandbox { pod },
            pid: std::process::id() as i32,
            process: None,
            oom: None,
        })
    }
}

#[async_trait]
impl Kind for Sandbox {
    async fn start(&self, _task: &Task) -> Result<(), ShimError> {
        Ok(())
    }

    /// Nothing runs; any terminating signal ends the sandbox as it would end a pause
    /// process.
    async fn kill(&self, task: &Task, signal: Signal, _all: bool) -> Result<Signalled, ShimError> {
        if matches!(signal, Signal::SIGCHLD | Signal::SIGWINCH) {
            return Ok(Signalled::Sent);
        }
        task.set_exited(128 + signal as i32);
        Ok(Signalled::Ended)
    }

    /// A sandbox has no cgroup of its own: nothing to change.
    async fn update(&self, _task: &Task, _resources: &[u8]) -> Result<(), ShimError> {
        Ok(())
    }

    async fn discard(&self, task: &Task) -> Result<(), ShimError> {
        task.set_exited(128 + libc::SIGKILL);
        Ok(())
    }

    fn pod(&self) -> Option<&PodNamespaces> {
        Some(&self.pod)
    }
}
