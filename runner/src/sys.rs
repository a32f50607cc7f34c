//! The system calls the runner makes itself, where std, nix and rustix have none or do
//! more than it may (each with its SAFETY): how it forks a container process (`clone`, or
//! `clone3` into a cgroup, as a sibling in a pid namespace), how a forked process ends
//! (`_exit`) and sheds what it inherited (`close_range`), a descriptor's own path, and
//! `mount_setattr`. Below every other module of the runner, and importing none.

use std::ffi::CStr;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use wasmedge_aot_protocol::control::PropagationKind;
use wasmedge_aot_protocol::spawn::PidNamespace;

/// `clone3`'s flag to be born in the cgroup `clone_args.cgroup` names (libc's constant is an
/// `i32` that cannot hold it).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks the container process, born in its pid namespace (and on cgroup v2 in its
/// cgroup); the runner's own pid namespace is `own_pid_ns`, which it goes back to after
/// forking into a pod's. Returns `None` in the child and the child's pid in the parent.
///
/// # Safety
/// As for `fork`: the caller must be single-threaded.
pub(crate) unsafe fn fork_container(
    own_pid_ns: &OwnedFd,
    pid_namespace: PidNamespace,
    pid_ns: Option<&OwnedFd>,
    cgroup: Option<&OwnedFd>,
) -> std::io::Result<Option<i32>> {
    let mut flags = libc::CLONE_PARENT as u64;
    match (pid_namespace, pid_ns) {
        (PidNamespace::New, _) => flags |= libc::CLONE_NEWPID as u64,
        // `setns` on a pid namespace sets where our next child is born; we go back to our
        // own right after the fork.
        (PidNamespace::Join, Some(ns)) => nix::sched::setns(ns, CloneFlags::CLONE_NEWPID)?,
        (PidNamespace::Join, None) => {
            return Err(std::io::Error::other("no pid namespace to join"));
        }
        (PidNamespace::Inherit, _) => {}
    }
    // SAFETY: the caller guarantees we are single-threaded.
    let forked = unsafe { fork_sibling(flags, cgroup.map(|c| c.as_fd())) };
    if pid_namespace == PidNamespace::Join && !matches!(forked, Ok(None)) {
        nix::sched::setns(own_pid_ns, CloneFlags::CLONE_NEWPID)?;
    }
    forked
}

/// `fork`, except that the child is our parent's child, not ours (`CLONE_PARENT`) and may
/// be born in a new pid namespace or a cgroup. Returns `None` in the child and the child's
/// pid in the parent.
///
/// # Safety
/// As for `fork`: the caller must be single-threaded. Unlike glibc's `fork`, this skips
/// glibc's fork bookkeeping, so the child's thread descriptor keeps the runner's thread
/// id. glibc consults it only for pthread calls that name the calling thread by handle
/// (scheduling, affinity, priority-inheritance mutexes under contention), which neither the
/// runner nor WasmEdge makes; `raise` and `abort` ask the kernel. runc starts its
/// container init the same way.
pub(crate) unsafe fn fork_sibling(
    flags: u64,
    cgroup: Option<BorrowedFd<'_>>,
) -> std::io::Result<Option<i32>> {
    let ret = match cgroup {
        Some(cg) => {
            // SAFETY: clone_args is plain data; all-zero is its "nothing asked" value.
            let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
            args.flags = flags | CLONE_INTO_CGROUP;
            // A sibling's exit is signalled to our parent as ours would be: the kernel
            // takes the signal from us and refuses (EINVAL) any other with CLONE_PARENT in
            // clone3, where the old clone ignores it.
            args.exit_signal = if flags & libc::CLONE_PARENT as u64 != 0 {
                0
            } else {
                libc::SIGCHLD as u64
            };
            args.cgroup = cg.as_raw_fd() as u64;
            // SAFETY: clone3 without CLONE_VM and without a stack behaves as fork: the child
            // returns here on its copy of our stack. `args` lives across the call.
            unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &args as *const libc::clone_args,
                    std::mem::size_of::<libc::clone_args>(),
                )
            }
        }
        // SAFETY: clone without CLONE_VM and without a new stack behaves as fork: the child
        // returns here on its copy of our stack. The null pointers are the unused tid/tls.
        None => unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags | libc::SIGCHLD as u64,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_int>(),
                std::ptr::null_mut::<libc::c_int>(),
                0 as libc::c_ulong,
            )
        },
    };
    match ret {
        -1 => Err(std::io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as i32)),
    }
}

/// Ends a container process with `code`, skipping exit-time work that belongs to the
/// runner: `exit` would run the atexit handlers, i.e. the C++ static destructors of
/// libwasmedge and libLLVM (1.7 ms per container measured, for nothing). What the process
/// wrote through Rust's stdio is flushed first; WASI writes are unbuffered syscalls.
pub fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process; nothing in it is left half-written (flushed above).
    unsafe { libc::_exit(code) }
}

/// Closes every descriptor from 3 up except `keep`.
pub fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&fd| fd > 2)
        .map(|&fd| fd as u32)
        .collect();
    keep.sort_unstable();
    let mut first = 3u32;
    for fd in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > first {
            // SAFETY: closes descriptors nothing in this process uses any more; the ones it
            // keeps are outside the range.
            unsafe { libc::close_range(first, fd - 1, 0) };
        }
        first = fd.saturating_add(1);
    }
}

/// A path for the open file `f` that the kernel resolves to that very file.
pub fn fd_path(f: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// `mount_setattr(2)`, which rustix does not wrap.
pub(crate) fn setattr(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: u32,
    set: u64,
    clear: u64,
    propagation: Option<PropagationKind>,
) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: match propagation {
            None => 0,
            Some(PropagationKind::Shared) => libc::MS_SHARED,
            Some(PropagationKind::Slave) => libc::MS_SLAVE,
            Some(PropagationKind::Private) => libc::MS_PRIVATE,
            Some(PropagationKind::Unbindable) => libc::MS_UNBINDABLE,
        },
        userns_fd: 0,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a mount_attr (MOUNT_ATTR_SIZE_VER0
    // bytes), both alive for the call; the kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dir.as_raw_fd(),
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchies::Hierarchies;
    use std::fs::File;

    /// The cgroup v2 hierarchy: the host's if it runs v2 alone, else the hybrid one.
    fn v2_root() -> Option<std::path::PathBuf> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists())
    }

    fn cgroup_of(pid: i32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or("")
            .to_string()
    }

    #[test]
    fn a_process_is_born_in_its_v2_cgroup_or_joins_it_and_cgroup_kill_ends_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (cgroups)");
            return;
        }
        let Some(root) = v2_root() else {
            eprintln!("skipped: no cgroup v2 hierarchy mounted");
            return;
        };
        let name = format!("wasmedge-aot-unit-clone3-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let fd: OwnedFd = File::open(&dir).unwrap().into();

        // Born there as the runner forks: clone3(CLONE_PARENT | CLONE_INTO_CGROUP) from a
        // child of ours, so the container process is our child, as it is the shim's.
        let (rx, tx) = nix::unistd::pipe().unwrap();
        // SAFETY: the test thread forks; the child only forks again, writes a pid and leaves
        // with _exit.
        let middle = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: single-threaded child of a fork.
                let code =
                    match unsafe { fork_sibling(libc::CLONE_PARENT as u64, Some(fd.as_fd())) } {
                        Ok(None) => {
                            std::thread::sleep(std::time::Duration::from_secs(60));
                            0
                        }
                        Ok(Some(pid)) => {
                            let _ = nix::unistd::write(&tx, &pid.to_ne_bytes());
                            0
                        }
                        Err(e) => {
                            let _ = nix::unistd::write(&tx, format!("{e}").as_bytes());
                            1
                        }
                    };
                // SAFETY: a forked test child leaves without the parent's exit work.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => child,
        };
        drop(tx);
        let mut buf = [0u8; 256];
        let n = nix::unistd::read(&rx, &mut buf).unwrap();
        nix::sys::wait::waitpid(middle, None).unwrap();
        assert_eq!(
            n,
            4,
            "clone3 failed: {}",
            String::from_utf8_lossy(&buf[..n])
        );
        let born = i32::from_ne_bytes(buf[..4].try_into().unwrap());
        assert_eq!(cgroup_of(born), format!("0::/{name}"));

        // Joined: a single-threaded child writes itself into cgroup.procs.
        let v2_only = Hierarchies(
            Hierarchies::of_self()
                .0
                .into_iter()
                .filter(|h| h.v2)
                .collect(),
        );
        let sub = format!("/{name}");
        // SAFETY: as above.
        let joined = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = i32::from(v2_only.join_self(&sub).is_err());
                std::thread::sleep(std::time::Duration::from_secs(60));
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => child.as_raw(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while cgroup_of(joined) != format!("0::/{name}") && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(cgroup_of(joined), format!("0::/{name}"));

        std::fs::write(dir.join("cgroup.kill"), "1").unwrap();
        for pid in [born, joined] {
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
            assert!(
                matches!(
                    status,
                    nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
                ),
                "{status:?}"
            );
        }
        std::fs::remove_dir(&dir).unwrap();
    }
}
