//! What a compile's worker can reach besides its credentials: namespaces of its own, a
//! read-only view of the host with its work directory the one writable place, and a
//! system-call filter.
//!
//! The worker parses a tenant's module, so a crafted module that reached a bug in the
//! loader or in LLVM would run as the worker. Its uid and dropped capabilities
//! (`sandbox::drop_privileges`) stop what the kernel checks by identity; these stop the
//! rest:
//!
//! - **network, IPC and mount namespaces of its own**: no interface (not even loopback),
//!   so no metadata service, no node port, no abstract socket of the host; no System V
//!   object of the host's;
//! - **a root of its own** ([`isolate`]): an empty read-only tmpfs with the work directory
//!   (writable), its own `/proc` and four device nodes; none of the host's tree, so nothing
//!   of the host is readable or writable to it whatever its uid, and no mount the host
//!   makes later reaches it;
//! - **a system-call filter**: calls a compiler has no use for and that are the kernel's
//!   wider surfaces (sockets, other processes' memory, namespaces and mounts, BPF, io_uring,
//!   userfaultfd, keyrings, perf, modules, exec) fail with `EPERM`; `clone3`, whose flags a
//!   filter cannot read, fails with `ENOSYS` (the C library then uses `clone`, whose
//!   namespace flags are refused). The list is a deny list: LLVM's threads, memory and
//!   files work as they do outside.

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use rustix::fs::CWD;
use rustix::mount::{open_tree, OpenTreeFlags};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use wasmedge_aot_protocol::control::PropagationKind;

use crate::sys::setattr;

/// `MOUNT_ATTR_RDONLY`, `MOUNT_ATTR_NOSUID` and `MOUNT_ATTR_NODEV` (linux/mount.h).
const RDONLY: u64 = 0x1;

/// The device nodes a program may open (the C library's and LLVM's fallbacks for
/// randomness, and the sinks), bound from the host's.
const DEVICES: &[&str] = &["null", "zero", "random", "urandom"];

/// The namespaces and the worker's root. Runs as root in the worker, its working directory
/// the work directory; leaves it in `/work` of a root of its own.
///
/// The root is an empty tmpfs, read-only once made, holding only the work directory (a
/// clone of its mount, writable), a `/proc` of the worker's own pid namespace (the host's
/// would show the environment and maps of any process of the worker's uid), and the few
/// device nodes in [`DEVICES`]. The host's tree is detached after the pivot: nothing of it
/// is readable, and nothing the host mounts later (a container's root, a volume) reaches
/// the worker, as it would through a copy of the host's tree.
pub fn isolate() -> std::io::Result<()> {
    use rustix::fs::{mkdirat, openat, Mode, OFlags};
    use rustix::mount::{
        fsconfig_create, fsmount, fsopen, move_mount, FsMountFlags, FsOpenFlags, MountAttrFlags,
        MoveMountFlags,
    };
    nix::sched::unshare(
        nix::sched::CloneFlags::CLONE_NEWNS
            | nix::sched::CloneFlags::CLONE_NEWNET
            | nix::sched::CloneFlags::CLONE_NEWIPC,
    )?;
    // Nothing of ours reaches the host's tree.
    setattr(
        CWD,
        c"/",
        libc::AT_RECURSIVE as u32,
        0,
        0,
        Some(PropagationKind::Slave),
    )?;
    // The working directory moved into the new namespace with it.
    let work = open_tree(
        CWD,
        c".",
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)?;
    fsconfig_create(&fs)?;
    let root = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )?;
    let dir = Mode::from_raw_mode(0o755);
    for d in ["work", "proc", "dev"] {
        mkdirat(&root, d, dir)?;
    }
    for d in DEVICES {
        drop(openat(
            &root,
            format!("dev/{d}"),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?);
    }
    // Attached over the work directory's path, to be built on with paths, then entered.
    move_mount(
        root.as_fd(),
        c"",
        CWD,
        c".",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    nix::unistd::fchdir(root.as_fd())?;
    move_mount(
        work.as_fd(),
        c"",
        CWD,
        c"work",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    for d in DEVICES {
        let node = open_tree(
            CWD,
            format!("/dev/{d}").as_str(),
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )?;
        move_mount(
            node.as_fd(),
            c"",
            CWD,
            format!("dev/{d}").as_str(),
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
    }
    nix::mount::mount(
        Some("proc"),
        "proc",
        Some("proc"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )?;
    // Into it, and the host's tree gone (pivot_root(".", ".") stacks the old root on the
    // new one; detaching it leaves the new).
    rustix::process::pivot_root(".", ".")?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)?;
    rustix::process::chdir("/")?;
    setattr(CWD, c"/", 0, RDONLY, 0, None)?;
    rustix::process::chdir("/work")?;
    Ok(())
}

/// The calls the worker may not make.
const DENIED: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_personality,
    libc::SYS_execve,
    libc::SYS_execveat,
];

/// x86-64's x32 calls carry this bit in their number (and some have numbers of their own,
/// `execve` 520 among them): a filter that names only the 64-bit numbers would let them
/// through where the kernel enables x32. The worker makes none, so all of them are refused.
#[cfg(target_arch = "x86_64")]
const X32_BIT: u32 = 0x4000_0000;

/// The filter that refuses every x32 call: load the number, test the bit.
#[cfg(target_arch = "x86_64")]
fn no_x32() -> BpfProgram {
    use seccompiler::sock_filter;
    let insn = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![
        // seccomp_data.nr, at offset 0.
        insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        insn(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 1, X32_BIT),
        insn(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        insn(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The filters, built before the worker's credentials change (nothing is installed): the
/// deny list, `clone3`'s `ENOSYS`, and on x86-64 the x32 calls.
pub fn filters() -> Result<Vec<BpfProgram>, seccompiler::BackendError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let always = Vec::new;
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &nr in DENIED {
        denied.insert(nr, always());
    }
    // clone with a namespace flag (the new-namespace flags share one mask with
    // CLONE_NEWUSER's and CLONE_NEWCGROUP's bits).
    let namespaces = (libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP) as u64;
    let mut clone_rules = Vec::new();
    for bit in (0..64).map(|b| 1u64 << b).filter(|b| namespaces & b != 0) {
        clone_rules.push(SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(bit),
            bit,
        )?])?);
    }
    denied.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, always())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    #[allow(unused_mut)]
    let mut all = vec![deny.try_into()?, clone3.try_into()?];
    #[cfg(target_arch = "x86_64")]
    all.push(no_x32());
    Ok(all)
}

/// Installs the filters; the process has `no_new_privs`.
pub fn install(filters: &[BpfProgram]) -> seccompiler::Result<()> {
    for f in filters {
        seccompiler::apply_filter(f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Installs the filters in a forked child (with `no_new_privs`, as the worker has),
    /// makes each call (a number and its arguments) and returns its errno, 0 where it
    /// succeeded.
    fn errnos_under_filters(calls: &[(i64, [i64; 3])]) -> Vec<i32> {
        let filters = filters().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child makes raw system calls only, writes to a pipe and _exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut out = [0i32; 16];
                // SAFETY: prctl with integer arguments only.
                let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
                let ok = nnp == 0 && install(&filters).is_ok();
                for (i, (nr, [a, b, c])) in calls.iter().enumerate() {
                    // SAFETY: integer arguments only (no pointer the kernel would follow);
                    // whatever succeeds affects this forked child only.
                    let r = unsafe { libc::syscall(*nr, *a, *b, *c, 0, 0, 0) };
                    out[i] = match (ok, r) {
                        (false, _) => -1,
                        (true, r) if r < 0 => {
                            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
                        }
                        _ => 0,
                    };
                }
                let bytes: Vec<u8> = out.iter().flat_map(|e| e.to_ne_bytes()).collect();
                // SAFETY: writes our buffer to our pipe, then leaves without the parent's
                // exit work.
                unsafe {
                    libc::write(w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                    libc::_exit(0)
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut bytes).unwrap();
                nix::sys::wait::waitpid(child, None).unwrap();
                bytes
                    .chunks(4)
                    .take(calls.len())
                    .map(|c| i32::from_ne_bytes(c.try_into().unwrap()))
                    .collect()
            }
        }
    }

    #[test]
    fn the_worker_filter_refuses_the_kernels_wider_surfaces_and_keeps_the_rest() {
        let inet = [libc::AF_INET as i64, libc::SOCK_STREAM as i64, 0];
        let new_user = (libc::CLONE_NEWUSER | libc::SIGCHLD) as i64;
        let calls = [
            (libc::SYS_socket, inet),
            (libc::SYS_unshare, [libc::CLONE_NEWUSER as i64, 0, 0]),
            (libc::SYS_clone3, [0, 0, 0]),
            (libc::SYS_clone, [new_user, 0, 0]),
            (libc::SYS_getpid, [0, 0, 0]),
            (libc::SYS_getuid, [0, 0, 0]),
            #[cfg(target_arch = "x86_64")]
            (libc::SYS_socket | X32_BIT as i64, inet),
            // x32's own execve.
            #[cfg(target_arch = "x86_64")]
            (520 | X32_BIT as i64, [0, 0, 0]),
        ];
        let got = errnos_under_filters(&calls);
        let mut want = vec![libc::EPERM, libc::EPERM, libc::ENOSYS, libc::EPERM, 0, 0];
        #[cfg(target_arch = "x86_64")]
        want.extend([libc::EPERM, libc::EPERM]);
        assert_eq!(got, want);
    }
}
