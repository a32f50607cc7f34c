//! The process LLVM runs in: the one step of a compile that parses a tenant's module.
//!
//! A crafted module that reaches a bug in WasmEdge's loader or in LLVM must find nothing
//! worth having, so the compile process (which holds the cache's locks and writes the
//! cache as root) forks a worker for each tier that gives up everything before it looks at
//! the module: it is pid 1 of a pid namespace of its own (it can name no other process, and
//! whatever it forks dies with it), dies with the compile process, keeps only the module's
//! bytes (read before it drops the right to open them), a pipe for its error (its stderr
//! is `/dev/null`) and a work
//! directory of its own inside the entry's staging directory (entered before the drop; the
//! staging directory above it stays root's), sets `RLIMIT_DATA` and no core dumps, drops
//! every capability from all five sets, takes the unprivileged `compile_uid`/`compile_gid`
//! with no supplementary groups, and sets `no_new_privs`. The compiler writes
//! `module.so` and its temporaries relative to that directory. The compile process then
//! copies the library into a file of its own (never publishing an inode the worker's uid
//! owns and could have kept open), and the cache seals, digests and publishes that.
//!
//! It also has namespaces of its own, a read-only view of the host with the work directory
//! its one writable place, and a system-call filter (`confine`).
//!
//! The worker has `compile_deadline_secs`: past it, it is killed and the compile fails as
//! killed, as it does when the worker dies of a signal (an allocation over its limit
//! aborts LLVM). The compile process is not killed, so it releases the key's lock and
//! slot and removes the staging directory as after any failed compile: no stale lock, no
//! half-written entry.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use wasmedge_aot_cache::{BoxError, FailureCause};
use wasmedge_aot_engine::Engine;

use super::confine;

/// The worker's directory inside the staging directory, and its output there.
const WORK_DIR: &str = "work";
const OUTPUT: &str = "module.so";
/// Most bytes of the worker's error read back.
const REPORT_MAX: u64 = 4096;
/// The worker's exit status when the compiler refused the module (its error is on the pipe).
const COMPILER_FAILED: i32 = 3;
/// The least `RLIMIT_FSIZE` a worker gets, whatever its module's size.
const FILE_MIN: u64 = 1 << 30;
/// Less free space than this in the cache after a failed worker: the disk was full.
const FULL_BELOW: u64 = 16 << 20;

/// What the worker may use: set once per runner from the node's config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub uid: u32,
    pub gid: u32,
    pub deadline: Option<Duration>,
    /// `RLIMIT_DATA` in bytes.
    pub memory_max: Option<u64>,
}

/// The cache's compiler seam for one tier: compiles `module` with `engine` in a worker.
pub struct Sandboxed<'a> {
    pub engine: &'a Engine,
    pub limits: Limits,
    /// The runner's own pid namespace: where the next worker's namespace is made from.
    pub own_pid_ns: std::os::fd::BorrowedFd<'a>,
}

/// Why a worker produced no library.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("prepare the compile's work directory {}: {source}", path.display())]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start the compile's worker: {0}")]
    Spawn(std::io::Error),
    #[error("the compile passed its deadline of {0:?} (compile_deadline_secs) and was killed")]
    Deadline(Duration),
    #[error(
        "the compile's worker was killed by {0} (an allocation over compile_memory_max_bytes \
         aborts it)"
    )]
    Signalled(Signal),
    #[error("{0}")]
    Compiler(String),
    #[error("the compile's worker exited with status {0}")]
    Exited(i32),
    #[error("the compile's output {}: {source}", path.display())]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SandboxError {
    /// How the runner records it.
    pub fn cause(&self) -> FailureCause {
        match self {
            SandboxError::Deadline(_) | SandboxError::Signalled(_) | SandboxError::Exited(_) => {
                FailureCause::Killed
            }
            SandboxError::Compiler(_) => FailureCause::Compiler,
            SandboxError::Prepare { .. } | SandboxError::Spawn(_) | SandboxError::Output { .. } => {
                FailureCause::Cache
            }
        }
    }
}

impl wasmedge_aot_cache::Compiler for Sandboxed<'_> {
    fn compile(&self, module: &Path, out: &Path) -> Result<(), BoxError> {
        let stage = out.parent().unwrap_or(Path::new("/"));
        let work = stage.join(WORK_DIR);
        let prepare = |source| SandboxError::Prepare {
            path: work.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .map_err(prepare)?;
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&work)
            .map_err(prepare)?;
        std::os::unix::fs::fchown(&dir, Some(self.limits.uid), Some(self.limits.gid))
            .map_err(prepare)?;
        let bytes = std::fs::read(module).map_err(prepare)?;
        let result = self.run_worker(module, &bytes, &dir, stage);
        // Published only in the shape WasmEdge writes, embedding this very module: what
        // `dlopen` would run as root is refused, and so are other Wasm bytes for the loader
        // to parse (`library`).
        let copied = result
            .and_then(|()| copy_output(&work, out))
            .and_then(|()| {
                super::library::check(out, &bytes)
                    .map_err(|e| SandboxError::Compiler(e.to_string()).into())
            });
        drop(bytes);
        // Whatever the worker left: the entry holds nothing its uid owns.
        let removed = std::fs::remove_dir_all(&work);
        copied?;
        removed.map_err(|source| SandboxError::Output { path: work, source })?;
        Ok(())
    }
}

impl Sandboxed<'_> {
    /// Forks the worker in a new pid namespace and waits for it, up to the deadline.
    fn run_worker(
        &self,
        module: &Path,
        bytes: &[u8],
        dir: &File,
        stage: &Path,
    ) -> Result<(), BoxError> {
        let (report_r, report_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| SandboxError::Spawn(e.into()))?;
        // The worker cannot name this process from its namespace; it watches this instead.
        let parent = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| SandboxError::Spawn(e.into()))?;
        // The next child is born in a new pid namespace; this process stays in its own and
        // goes back to making children there right after.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
            .map_err(|e| SandboxError::Spawn(e.into()))?;
        // SAFETY: the compile process is single-threaded (forked from the runner, which
        // starts no thread), so the child may run arbitrary code.
        let forked = unsafe { nix::unistd::fork() };
        let back = nix::sched::setns(self.own_pid_ns, nix::sched::CloneFlags::CLONE_NEWPID);
        let child = match forked.map_err(|e| SandboxError::Spawn(e.into()))? {
            nix::unistd::ForkResult::Child => {
                drop(report_r);
                let code = worker(self, module, bytes, dir, report_w, &parent);
                crate::sys::exit_now(code)
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop(report_w);
        drop(parent);
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(child.as_raw()).expect("a child's pid is positive"),
            rustix::process::PidfdFlags::empty(),
        );
        let t = Instant::now();
        let ended = match (&pidfd, self.limits.deadline) {
            (Ok(fd), Some(deadline)) => wait_readable(fd.as_fd(), deadline),
            _ => true,
        };
        if !ended {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
        }
        let status = loop {
            match waitpid(child, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        back.map_err(|e| SandboxError::Spawn(e.into()))?;
        if !ended {
            return Err(SandboxError::Deadline(t.elapsed()).into());
        }
        let full = || {
            nix::sys::statvfs::statvfs(stage)
                .is_ok_and(|s| s.blocks_available() * s.fragment_size() < FULL_BELOW)
        };
        match status {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, COMPILER_FAILED)) => {
                let mut text = String::new();
                let _ = File::from(report_r)
                    .take(REPORT_MAX)
                    .read_to_string(&mut text);
                // The compiler's error on a full disk names a file it could not write; the
                // cache says it plainly.
                if full() {
                    return Err(Box::new(std::io::Error::from_raw_os_error(libc::ENOSPC)));
                }
                Err(SandboxError::Compiler(text).into())
            }
            // The linker leaves the process on errors such as a truncated object.
            Ok(WaitStatus::Exited(_, _)) if full() => {
                Err(Box::new(std::io::Error::from_raw_os_error(libc::ENOSPC)))
            }
            Ok(WaitStatus::Exited(_, code)) => Err(SandboxError::Exited(code).into()),
            Ok(WaitStatus::Signaled(_, sig, _)) => Err(SandboxError::Signalled(sig).into()),
            other => Err(SandboxError::Spawn(std::io::Error::other(format!(
                "wait for the worker: {other:?}"
            )))
            .into()),
        }
    }
}

/// Waits up to `timeout` for `fd` (a pidfd) to be readable; whether it is.
fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let t = nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, t) {
            Ok(0) if left.is_zero() => return false,
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => return true,
            Err(_) => return true,
        }
    }
}

/// Copies the worker's library into `out`, a new file of the compile process's. The
/// worker's is opened without following a link and must be a regular file.
fn copy_output(work: &Path, out: &Path) -> Result<(), BoxError> {
    let from = work.join(OUTPUT);
    let output = |source| SandboxError::Output {
        path: from.clone(),
        source,
    };
    let mut src = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&from)
        .map_err(output)?;
    let meta = src.metadata().map_err(output)?;
    if !meta.is_file() {
        return Err(output(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a regular file (mode {:o})", meta.mode()),
        ))
        .into());
    }
    let mut dst = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(out)?;
    // An io::Error, so that the cache tells a full disk from other failures.
    std::io::copy(&mut src, &mut dst)?;
    Ok(())
}

/// The worker: gives up everything, then compiles. Returns its exit status.
fn worker(
    s: &Sandboxed<'_>,
    module: &Path,
    bytes: &[u8],
    dir: &File,
    report: OwnedFd,
    parent: &OwnedFd,
) -> i32 {
    let fail = |report: &OwnedFd, what: &str, e: &dyn std::fmt::Display| {
        let text = format!("compile worker: {what}: {e}");
        // SAFETY: `report` is this process's open pipe; `text` outlives the call.
        unsafe { libc::write(report.as_raw_fd(), text.as_ptr().cast(), text.len()) };
        COMPILER_FAILED
    };
    // Never outlive the compile process, which holds the compile's locks: its death (the
    // runner's shutdown, a kill) ends the worker, and with it its whole pid namespace.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // It may have died before that took effect (its pidfd is then readable).
    if wait_readable(parent.as_fd(), Duration::ZERO) {
        return 1;
    }
    // Nothing to write to but the pipe and its directory: not even the shim's log (the
    // compile process logs the error it reads from the pipe).
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        // SAFETY: dup2 onto stderr, which nothing else in this process writes.
        unsafe { libc::dup2(null.as_raw_fd(), 2) };
    }
    crate::sys::close_fds_except(&[dir.as_raw_fd(), report.as_raw_fd()]);
    if let Err(e) = nix::unistd::fchdir(dir) {
        return fail(&report, "enter the work directory", &e);
    }
    // Its own namespaces and root, the work directory its one writable place.
    if let Err(e) = confine::isolate() {
        return fail(&report, "confine the worker", &e);
    }
    // The work directory's descriptor on the host's mount is of no more use.
    // SAFETY: closes this forked process's copy of `dir`, which it never uses again and
    // never drops (it leaves through `exit_now`).
    unsafe { libc::close(dir.as_raw_fd()) };
    let filters = match confine::filters() {
        Ok(f) => f,
        Err(e) => return fail(&report, "build the worker's system-call filter", &e),
    };
    // The files it writes: a library is about 1.5 times its module; a worker that writes
    // far more (a sparse file the compile process would then read whole) is killed.
    let file_max = (bytes.len() as u64).saturating_mul(16).max(FILE_MIN);
    let limits = [
        (libc::RLIMIT_CORE, Some(0)),
        (libc::RLIMIT_DATA, s.limits.memory_max),
        (libc::RLIMIT_FSIZE, Some(file_max)),
    ];
    for (resource, limit) in limits {
        let Some(limit) = limit else { continue };
        let rl = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit reads `rl`, a valid rlimit.
        if unsafe { libc::setrlimit(resource, &rl) } != 0 {
            return fail(&report, "set a limit", &std::io::Error::last_os_error());
        }
    }
    if let Err(e) = drop_privileges(s.limits.uid, s.limits.gid) {
        return fail(&report, "drop privileges", &e);
    }
    if let Err(e) = confine::install(&filters) {
        return fail(&report, "install the worker's system-call filter", &e);
    }
    // WasmEdge refuses a relative path; this one resolves through the work directory the
    // process is in, whose parents it cannot reach by name.
    let out = Path::new("/proc/self/cwd").join(OUTPUT);
    match s.engine.compile_bytes(module, bytes, &out) {
        Ok(()) => 0,
        Err(e) => fail(&report, "compile", &e),
    }
}

/// Empties the bounding set, takes `uid` and `gid` with no supplementary groups, empties
/// the other four capability sets and sets `no_new_privs`. The process is single-threaded,
/// so the per-thread calls are the whole process's.
fn drop_privileges(uid: u32, gid: u32) -> rustix::io::Result<()> {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    for n in 0..64u32 {
        match rustix::thread::remove_capability_from_bounding_set(CapabilitySet::from_bits_retain(
            1 << n,
        )) {
            Ok(()) => {}
            // Past the kernel's last capability.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e),
        }
    }
    rustix::thread::set_thread_groups(&[])?;
    let gid = rustix::process::Gid::from_raw(gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid)?;
    let uid = rustix::process::Uid::from_raw(uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid)?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_no_new_privs(true)
}
