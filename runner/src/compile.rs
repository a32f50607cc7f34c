//! Compiles, each in a process of its own that the runner forks.
//!
//! A compile can take minutes and gigabytes, and it is the node's work, not a pod's: it
//! runs outside every container (in the runner's cgroup and namespaces, never a
//! container's), holds nothing of any container (its stdio goes to the shim's log, its
//! only lock is the cache's lock of its key), and runs at the configured niceness. One
//! compile per module at a time: a start that misses while the module's compile runs waits
//! for that compile (synchronous policy) or runs the interpreter (tiered), and never starts
//! a second one. The runner notices a compile's end through its pidfd and reaps it.
//!
//! LLVM itself runs in a worker of the compile process, one per tier, with no privilege
//! and a deadline (`sandbox`). A small module's first tier (the compile its first start
//! waits for) takes a slot of the cache's quick lane, which no other compile holds, so it
//! never waits behind a big module's compile.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;

use std::time::Duration;

use wasmedge_aot_cache::{Cache, Failure, FailureCause, Fetched, Key, Lane};

use crate::node::{CodeTier, Node};
use crate::sys::fd_path;

mod confine;
mod library;
mod sandbox;

/// How recent a failure the cache recorded must be to explain a compile that just ended
/// without an artifact: the compile's own record, written as it failed. Not the retry window
/// (`compile_retry_secs`, which may be zero): that says when to compile again.
pub(crate) const RECORD_EXPLAINS: Duration = Duration::from_secs(60);

/// A compile process.
#[derive(Debug)]
pub struct Job {
    pub pid: i32,
    /// Readable once the process has exited.
    pub pidfd: OwnedFd,
}

/// The compiles this runner has started and not yet reaped, and the ones that failed.
#[derive(Debug, Default)]
pub struct Compiles {
    jobs: RefCell<HashMap<Key, Rc<Job>>>,
    /// Failures seen when reaping, kept here too: on a full disk the cache's record of a
    /// failure may not get written.
    failed: RefCell<HashMap<Key, Failure>>,
}

/// Exit codes of a compile process, by the cause of its failure.
fn exit_code(cause: FailureCause) -> i32 {
    match cause {
        FailureCause::NoSpace => 2,
        FailureCause::Compiler => 3,
        FailureCause::Cache => 4,
        FailureCause::Killed => 5,
    }
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

    /// Waits up to `timeout` for the compile process to exit; whether it has.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let timeout =
            nix::poll::PollTimeout::try_from(timeout).unwrap_or(nix::poll::PollTimeout::MAX);
        loop {
            match nix::poll::poll(&mut fds, timeout) {
                Err(nix::errno::Errno::EINTR) => continue,
                Ok(n) => return n > 0,
                Err(_) => return true,
            }
        }
    }
}

impl Compiles {
    /// Why `key`'s last compile failed, if it did less than `within` ago: a start then runs
    /// the interpreter instead of paying for the same failure again.
    pub fn recent_failure(&self, node: &Node, key: &Key, within: Duration) -> Option<Failure> {
        let now = std::time::SystemTime::now();
        if let Some(f) = self
            .failed
            .borrow()
            .get(key)
            .filter(|f| f.age(now) < within)
        {
            return Some(f.clone());
        }
        node.cache.as_ref().ok()?.recent_failure(key, within)
    }

    /// The running compile of the module whose full tier is `key` (`false`), or a new one
    /// (`true`) that compiles `module` at the tiers from `from` on, quickest first.
    pub fn start(
        &self,
        node: &Node,
        key: &Key,
        module: &File,
        name: &str,
        from: usize,
    ) -> std::io::Result<(Rc<Job>, bool)> {
        if let Some(job) = self.jobs.borrow().get(key) {
            return Ok((job.clone(), false));
        }
        // SAFETY: the runner is single-threaded, so the child may run arbitrary code.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                let code = compile_main(node, key, module, name, from);
                crate::sys::exit_now(code)
            }
            nix::unistd::ForkResult::Parent { child } => {
                let pidfd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_raw(child.as_raw())
                        .expect("a child's pid is positive"),
                    rustix::process::PidfdFlags::empty(),
                )?;
                eprintln!("aot compile of {name} ({key}) started as pid {child}");
                let job = Rc::new(Job {
                    pid: child.as_raw(),
                    pidfd,
                });
                self.jobs.borrow_mut().insert(*key, job.clone());
                Ok((job, true))
            }
        }
    }

    /// Reaps the compile processes that have ended, remembering the failures: once per
    /// request, when it has arrived and before its code is looked for (`serve.rs`), so that
    /// what a start finds of its module's compiles (a failure, a running job) is as of its
    /// request.
    pub fn reap_all(&self, node: &Node) {
        let mut ended = Vec::new();
        self.jobs.borrow_mut().retain(|key, job| {
            if !job.has_ended() {
                return true;
            }
            let status = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(job.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            ended.push((*key, status));
            false
        });
        for (key, status) in ended {
            use nix::sys::wait::WaitStatus;
            let (cause, message) = match status {
                Ok(WaitStatus::Exited(_, 0)) => continue,
                Ok(WaitStatus::Exited(_, code)) => match code {
                    2 => (
                        FailureCause::NoSpace,
                        "no space left in the cache".to_string(),
                    ),
                    3 => (
                        FailureCause::Compiler,
                        "the compiler failed (the shim log says why)".into(),
                    ),
                    4 => (
                        FailureCause::Cache,
                        "the cache failed (the shim log says why)".into(),
                    ),
                    code => unexplained(node, &format!("the compile exited with status {code}")),
                },
                Ok(WaitStatus::Signaled(_, sig, _)) => (
                    FailureCause::Killed,
                    format!("the compile was killed by {sig}"),
                ),
                _ => continue,
            };
            // The compile process's own record says more than its exit status (a deadline,
            // the compiler's error); one that died without writing one gets this.
            let recorded = node
                .cache
                .as_ref()
                .ok()
                .and_then(|c| c.recent_failure(&key, RECORD_EXPLAINS));
            let failure = match recorded {
                Some(f) => f,
                None => {
                    if let Ok(cache) = &node.cache {
                        cache.record_failure(&key, cause, &message);
                    }
                    Failure::new(cause, message, std::time::SystemTime::now())
                }
            };
            eprintln!(
                "aot compile of {key}: {}: {}",
                failure.cause, failure.message
            );
            self.failed.borrow_mut().insert(key, failure);
        }
    }
}

/// The cause of a compile that ended without an artifact and without saying why (the
/// compiler's linker leaves the process on errors such as a truncated object): on a cache
/// whose file system is full (less than 16 MiB left), that is what it was.
pub fn unexplained(node: &Node, what: &str) -> (FailureCause, String) {
    let full = nix::sys::statvfs::statvfs(&node.config.cache_dir)
        .is_ok_and(|s| s.blocks_available() * s.fragment_size() < 16 << 20);
    if full {
        (
            FailureCause::NoSpace,
            format!("{what}, on a full cache file system"),
        )
    } else {
        (FailureCause::Killed, what.to_string())
    }
}

/// The compile process: compiles `module` into the cache at each tier from `from` on,
/// publishing each as it is done, and exits. A failure is recorded under the full tier's
/// `key` (what a start checks before compiling again).
fn compile_main(node: &Node, key: &Key, module: &File, name: &str, from: usize) -> i32 {
    // Its own session: a signal to a container's process group never reaches it.
    let _ = nix::unistd::setsid();
    // SAFETY: setpriority on ourselves; no memory is involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, node.config.compile_nice);
    }
    // Nothing of any container: stdin and stdout are /dev/null, stderr stays the runner's
    // (the shim's log), and every other descriptor but the module is closed.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in [0, 1] {
            // SAFETY: dup2 onto stdin/stdout, which this process does not otherwise use.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    crate::sys::close_fds_except(&[module.as_raw_fd(), node.own_pid_ns.as_raw_fd()]);
    let Ok(cache) = &node.cache else { return 1 };
    let small = module
        .metadata()
        .is_ok_and(|m| m.len() <= node.config.sync_max_module_bytes);
    let mut code = 0;
    for (i, tier) in node.tiers.iter().enumerate().skip(from) {
        // The compile a small module's first start waits for: in the quick lane.
        let lane = if i == 0 && small {
            Lane::Quick
        } else {
            Lane::Node
        };
        if let Err((cause, message)) = compile_tier(node, cache, tier, module, name, lane) {
            eprintln!("aot compile of {message}");
            cache.record_failure(key, cause, &message);
            code = exit_code(cause);
            break;
        }
    }
    let _ = cache.flush_stats();
    code
}

/// Compiles `module` at `tier` into `cache` (or finds it there) in a sandboxed worker; on
/// failure, its cause and what failed (`<name> O<level>: <error>`).
fn compile_tier(
    node: &Node,
    cache: &Cache,
    tier: &CodeTier,
    module: &File,
    name: &str,
    lane: Lane,
) -> Result<Fetched, (FailureCause, String)> {
    let config = &node.config;
    let compiler = sandbox::Sandboxed {
        engine: &tier.engine,
        limits: sandbox::Limits {
            uid: config.compile_uid,
            gid: config.compile_gid,
            deadline: (config.compile_deadline_secs > 0)
                .then(|| Duration::from_secs(config.compile_deadline_secs)),
            memory_max: (config.compile_memory_max_bytes > 0)
                .then_some(config.compile_memory_max_bytes),
        },
        own_pid_ns: node.own_pid_ns.as_fd(),
    };
    let hint = format!("{name} O{}", tier.level);
    cache
        .get_or_compile_in(&fd_path(module), &hint, &tier.fingerprint, &compiler, lane)
        .map_err(|e| {
            let cause = match &e {
                wasmedge_aot_cache::Error::Compile { source, .. } => source
                    .downcast_ref::<sandbox::SandboxError>()
                    .map_or(FailureCause::Compiler, sandbox::SandboxError::cause),
                other => other.failure_cause(),
            };
            (cause, format!("{hint}: {e}"))
        })
}

/// `wasmedge-shim-runner --precompile NAME` (`wasmedge_aot_protocol::precompile`): compiles
/// the module on stdin at the node's full tier, as a start's compile process does but in
/// this process, which `wasmedge-shimctl precompile` started and waits for; `name` is what
/// the cache's listing shows for it. Its exit status.
///
/// What a start's compile process has, this has too before the worker is forked: the
/// module as bytes that cannot change (a start's are a sealed memory file or a read-only
/// snapshot; here a sealed copy of stdin, so that the key and the worker see the same
/// bytes), stdin and stdout on `/dev/null` (the worker keeps fds 0 to 2: it must hold
/// neither the operator's file nor the admin tool's pipe, where it could write a report of
/// its own), `compile_nice`, and no life beyond the admin tool's. A hit is checked in full.
pub fn precompile_main(name: &str) -> i32 {
    use std::io::Write;
    use wasmedge_aot_protocol::precompile::{self, Report};
    let parent = nix::unistd::getppid();
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != parent {
        return 1;
    }
    let config = match wasmedge_aot_protocol::config::Config::from_env(precompile::CONFIG_ENV) {
        Some(config) => config,
        None => wasmedge_aot_protocol::config::Config::load().map_err(|e| e.to_string()),
    };
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wasmedge-shim-runner: {e}");
            return 1;
        }
    };
    // SAFETY: setpriority on ourselves; no memory is involved.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, config.compile_nice);
    }
    let module = match sealed_copy(std::io::stdin().lock()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("wasmedge-shim-runner: copy the module on stdin: {e}");
            return 1;
        }
    };
    let mut report_out = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("wasmedge-shim-runner: stdout: {e}");
            return 1;
        }
    };
    match File::options().read(true).write(true).open("/dev/null") {
        Ok(null) => {
            for fd in [0, 1] {
                // SAFETY: dup2 onto stdin and stdout, which this process no longer reads or
                // writes (the report goes out on `report_out`).
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        Err(e) => {
            eprintln!("wasmedge-shim-runner: open /dev/null: {e}");
            return 1;
        }
    }
    let node = match Node::new(config, true) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("wasmedge-shim-runner: {e}");
            return 1;
        }
    };
    let cache = match &node.cache {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wasmedge-shim-runner: the aot cache: {e}");
            return exit_code(FailureCause::Cache);
        }
    };
    let tier = node.tiers.last().expect("at least the full tier");
    let result = compile_tier(&node, cache, tier, &module, name, Lane::Node);
    let _ = cache.flush_stats();
    match result {
        Ok(fetched) => {
            let a = &fetched.artifact;
            let report = Report {
                key: a.key.to_hex(),
                outcome: fetched.outcome,
                size: a.size,
                path: a.path.clone(),
            };
            let written = report
                .to_line()
                .and_then(|line| writeln!(report_out, "{line}").map_err(|e| e.to_string()));
            match written {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("wasmedge-shim-runner: the report: {e}");
                    1
                }
            }
        }
        Err((cause, message)) => {
            // The compiler's error quotes the module's bytes, for an operator's terminal.
            eprintln!("{}", printable(&message));
            exit_code(cause)
        }
    }
}

/// The bytes `from` gives, in a memory file sealed against every change.
fn sealed_copy(mut from: impl std::io::Read) -> std::io::Result<File> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let mut file = File::from(memfd_create(
        "precompile-module",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?);
    std::io::copy(&mut from, &mut file)?;
    fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(file)
}

/// `text` with its control characters but newlines escaped.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
