//! Compiles, each in a process of its own that the runner forks.
//!
//! A compile can take minutes and gigabytes, and it is the node's work, not a pod's: it
//! runs outside every container (in the runner's cgroup and namespaces, never a
//! container's), holds nothing of any container (its stdio goes to the shim's log, its
//! only lock is the cache's lock of its key), and runs at the configured niceness. One
//! compile per module at a time: a start that misses while the module's compile runs waits
//! for that compile (synchronous policy) or runs the interpreter (tiered), and never starts
//! a second one. The runner notices a compile's end through its pidfd and reaps it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;

use wasmedge_aot_cache::Key;

use crate::code::{fd_path, Runner};

/// A compile process.
#[derive(Debug)]
pub struct Job {
    pub pid: i32,
    /// Readable once the process has exited.
    pub pidfd: OwnedFd,
}

/// The compiles this runner has started and not yet reaped.
#[derive(Debug, Default)]
pub struct Compiles {
    jobs: RefCell<HashMap<Key, Rc<Job>>>,
}

impl Job {
    /// Whether the compile process has exited (it may not be reaped yet).
    pub fn has_ended(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
    }

    /// Waits until the compile process has exited (its pidfd becomes readable).
    pub fn wait(&self) {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        while let Err(nix::errno::Errno::EINTR) =
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE)
        {}
    }
}

impl Compiles {
    /// The running compile of `key` (`false`), or a new one of `module` (`true`).
    pub fn start(
        &self,
        runner: &Runner,
        key: &Key,
        module: &File,
        name: &str,
    ) -> std::io::Result<(Rc<Job>, bool)> {
        self.reap();
        if let Some(job) = self.jobs.borrow().get(key) {
            return Ok((job.clone(), false));
        }
        // SAFETY: the runner is single-threaded, so the child may run arbitrary code.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                let code = compile_main(runner, module, name);
                crate::serve::exit_now(code)
            }
            nix::unistd::ForkResult::Parent { child } => {
                let pidfd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(child.as_raw())
                        .expect("a child's pid is positive"),
                    rustix::process::PidfdFlags::empty(),
                )?;
                let job = Rc::new(Job {
                    pid: child.as_raw(),
                    pidfd,
                });
                self.jobs.borrow_mut().insert(*key, job.clone());
                Ok((job, true))
            }
        }
    }

    /// Reaps the compile processes that have ended.
    pub fn reap(&self) {
        self.jobs.borrow_mut().retain(|_, job| {
            if !job.has_ended() {
                return true;
            }
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(job.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            false
        });
    }
}

/// The compile process: compiles `module` into the cache and exits.
fn compile_main(runner: &Runner, module: &File, name: &str) -> i32 {
    // Its own session: a signal to a container's process group never reaches it.
    let _ = nix::unistd::setsid();
    // SAFETY: setpriority on ourselves; no memory is involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, runner.config.compile_nice);
    }
    // Nothing of any container: stdin and stdout are /dev/null, stderr stays the runner's
    // (the shim's log), and every other descriptor but the module is closed.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in [0, 1] {
            // SAFETY: dup2 onto stdin/stdout, which this process does not otherwise use.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    crate::process::close_fds_except(&[module.as_raw_fd()]);
    let Ok(cache) = &runner.cache else { return 1 };
    let code = match cache.get_or_compile(&fd_path(module), &runner.fingerprint, &runner.engine) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("aot compile of {name}: {e}");
            1
        }
    };
    let _ = cache.flush_stats();
    code
}
