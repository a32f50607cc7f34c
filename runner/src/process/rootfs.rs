//! Step 6: the container's root.
//!
//! In the process's own mount namespace: the host's mounts become slaves (nothing we mount
//! propagates back), the rootfs becomes a mount of its own, the spec's mounts go to their
//! destinations inside it, device nodes are made in a fresh `/dev`, and `pivot_root` makes
//! it the process's `/` while the host's tree is detached: afterwards no host path exists
//! for the process. Then sysctls, masked and read-only paths, and a read-only root.
//!
//! Paths are never joined as text. A destination is resolved with
//! `openat2(RESOLVE_IN_ROOT)` against the rootfs's own descriptor, so `..` and symlinks
//! (absolute or relative) stay inside the root whatever an image or a volume holds, and
//! missing directories are made one component at a time, each relative to a descriptor of
//! its parent. Mounts are made with the kernel's descriptor-based mount API: a tree is
//! cloned (`open_tree`) or created (`fsopen`/`fsmount`), given its attributes
//! (`mount_setattr`), and attached on the destination's descriptor (`move_mount`).

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount,
    open_tree, FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};
use wasmedge_aot_protocol::control::{
    mount_attr, open_in_root, ContainerPlan, Device, Mount, MountSource, Propagation,
    PropagationKind,
};

use super::{at, StepError};
use crate::hierarchies::{mount_name, Hierarchies};
use crate::sys::setattr;

/// Symlinks every fresh `/dev` gets, as runc makes them.
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Sets up the root and enters it, calling `before_pivot` once the mounts are in place.
/// Returns the time of the mounts and of the pivot.
pub fn enter(
    plan: &ContainerPlan,
    cgroups: &Hierarchies,
    before_pivot: impl FnOnce() -> Result<(), StepError>,
) -> Result<(Duration, Duration), StepError> {
    let t = Instant::now();
    let root = prepare_root(plan, cgroups)?;
    let mounts = t.elapsed();
    before_pivot()?;
    let t = Instant::now();
    pivot(&root).map_err(at("pivot_root"))?;
    if let Some(p) = plan
        .root
        .propagation
        .filter(|p| p.kind == PropagationKind::Shared)
    {
        // As runc does: on the container's own "/", once it is one.
        propagate_root(p).map_err(|e| at("rootfsPropagation")(format!("set on the new /: {e}")))?;
    }
    let pivoted = t.elapsed();

    let t = Instant::now();
    let slash = open_root().map_err(at("root"))?;
    for (key, value) in &plan.sysctl {
        write_sysctl(&slash, key, value).map_err(|e| at("sysctl")(format!("{key}: {e}")))?;
    }
    for p in &plan.masked_paths {
        mask(&slash, p).map_err(|e| at("maskedPaths")(format!("{p}: {e}")))?;
    }
    // The process's own memory, which holds the engine and the module's native code: a
    // guest that could open it would write its way out of the Wasm sandbox with no engine
    // bug. Both names of it in this root's /proc (self and thread-self lead to them) hide
    // behind /dev/null; the process has one thread.
    let pid = std::process::id();
    for p in [
        format!("/proc/{pid}/mem"),
        format!("/proc/{pid}/task/{pid}/mem"),
    ] {
        mask_if_proc(&slash, &p).map_err(|e| at("own memory")(format!("{p}: {e}")))?;
    }
    for p in &plan.readonly_paths {
        read_only(&slash, p).map_err(|e| at("readonlyPaths")(format!("{p}: {e}")))?;
    }
    if plan.root.readonly {
        setattr(CWD, c"/", 0, mount_attr::RDONLY, 0, None)
            .map_err(|e| at("root.readonly")(format!("remount / read-only: {e}")))?;
    }
    rustix::process::chdir(plan.cwd.as_str())
        .map_err(|e| at("cwd")(format!("{}: {e}", plan.cwd)))?;
    Ok((mounts + t.elapsed(), pivoted))
}

/// Sets the propagation of the process's "/" (and, recursively, of what is below it).
fn propagate_root(p: Propagation) -> std::io::Result<()> {
    let recursive = if p.recursive {
        libc::AT_RECURSIVE as u32
    } else {
        0
    };
    setattr(CWD, c"/", recursive, 0, 0, Some(p.kind))
}

/// Everything up to the pivot; returns the new root's descriptor.
fn prepare_root(plan: &ContainerPlan, cgroups: &Hierarchies) -> Result<OwnedFd, StepError> {
    // Nothing we mount may reach the host's tree, nor the host's later mounts ours. A
    // shared root is asked of the new root, after the pivot (see `enter`): pivot_root
    // refuses a shared parent, and a shared "/" here would carry our mounts to the host.
    let propagation = match plan.root.propagation {
        Some(p) if p.kind != PropagationKind::Shared => p,
        _ => Propagation {
            kind: PropagationKind::Slave,
            recursive: true,
        },
    };
    propagate_root(propagation).map_err(|e| at("rootfsPropagation")(format!("set on /: {e}")))?;

    // The rootfs as a mount of its own (pivot_root needs one), bound over itself.
    let rootfs = &plan.root.path;
    let root = open_tree(
        CWD,
        rootfs,
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| at("root")(format!("clone {}: {e}", rootfs.display())))?;
    move_mount(
        root.as_fd(),
        c"",
        CWD,
        rootfs,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| at("root")(format!("bind {} over itself: {e}", rootfs.display())))?;

    let own_cgroupns = plan
        .namespaces
        .iter()
        .any(|ns| ns.kind == wasmedge_aot_protocol::control::NamespaceKind::Cgroup);
    for m in &plan.mounts {
        mount(&root, m, cgroups, own_cgroupns)
            .map_err(|e| at("mounts")(format!("{}: {e}", m.destination)))?;
    }
    if !plan.devices.is_empty() {
        for d in &plan.devices {
            make_device(&root, d).map_err(|e| at("devices")(format!("{}: {e}", d.path)))?;
        }
        let dev = open_dir(&root, "/dev").map_err(|e| at("devices")(format!("/dev: {e}")))?;
        for (name, target) in DEV_SYMLINKS {
            match rustix::fs::symlinkat(*target, &dev, *name) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(at("devices")(format!("/dev/{name}: {e}"))),
            }
        }
        if open_in_root(&root, "/dev/pts/ptmx", OFlags::empty()).is_ok() {
            match rustix::fs::symlinkat("pts/ptmx", &dev, "ptmx") {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(at("devices")(format!("/dev/ptmx: {e}"))),
            }
        }
    }
    Ok(root)
}

/// One entry of the spec's mounts.
fn mount(
    root: &OwnedFd,
    m: &Mount,
    cgroups: &Hierarchies,
    own_cgroupns: bool,
) -> std::io::Result<()> {
    let tree = match &m.source {
        MountSource::Bind { source, recursive } => {
            let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            if *recursive {
                flags |= OpenTreeFlags::AT_RECURSIVE;
            }
            let tree = open_tree(CWD, source, flags)
                .map_err(|e| with_context(e, format!("source {}", source.display())))?;
            apply_attributes(&tree, m)?;
            tree
        }
        MountSource::Fresh {
            fstype,
            source,
            data,
        } => fresh(fstype, source, data, m.attributes | m.atime.unwrap_or(0))?,
        MountSource::Cgroup => return mount_cgroups(root, m, cgroups, own_cgroupns),
    };
    let is_dir = rustix::fs::fstat(&tree)?.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let dest = ensure(root, &m.destination, is_dir)?;
    move_mount(
        tree.as_fd(),
        c"",
        dest.as_fd(),
        c"",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?;
    if let Some(p) = m.propagation {
        setattr(
            tree.as_fd(),
            c"",
            empty_path(p.recursive),
            0,
            0,
            Some(p.kind),
        )?;
    }
    Ok(())
}

/// A fresh file system with its data options and [`mount_attr`] attributes.
fn fresh(fstype: &str, source: &str, data: &[String], attrs: u64) -> std::io::Result<OwnedFd> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| with_context(e, format!("file system type {fstype}")))?;
    if !source.is_empty() {
        fsconfig_set_string(&fs, "source", source)?;
    }
    for option in data {
        match option.split_once('=') {
            Some((k, v)) => fsconfig_set_string(&fs, k, v),
            None => fsconfig_set_flag(&fs, option.as_str()),
        }
        .map_err(|e| with_context(e, format!("option {option}")))?;
    }
    fsconfig_create(&fs).map_err(|e| with_context(e, format!("create {fstype}")))?;
    Ok(fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::from_bits_retain(attrs as u32),
    )?)
}

/// `type: cgroup`: a tmpfs with the container's directory of each hierarchy bound inside
/// it, as runc does on cgroup v1 (and on v2 without a cgroup namespace); a fresh `cgroup2`
/// when the node runs v2 alone and the container has a cgroup namespace of its own.
fn mount_cgroups(
    root: &OwnedFd,
    m: &Mount,
    cgroups: &Hierarchies,
    own_cgroupns: bool,
) -> std::io::Result<()> {
    let dest = ensure(root, &m.destination, true)?;
    if cgroups.unified_only() && own_cgroupns {
        let tree = fresh("cgroup2", "cgroup", &[], m.attributes)?;
        return attach(&tree, &dest);
    }
    let tmpfs = fresh(
        "tmpfs",
        "tmpfs",
        &["mode=755".to_string()],
        mount_attr::NOSUID | mount_attr::NODEV | mount_attr::NOEXEC,
    )?;
    attach(&tmpfs, &dest)?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    for h in cgroups.iter() {
        let Some(dir) = Hierarchies::own_dir(h, &own) else {
            continue;
        };
        let tree = open_tree(
            CWD,
            &dir,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(|e| with_context(e, format!("source {}", dir.display())))?;
        apply_attributes(&tree, m)?;
        let sub = ensure(&tmpfs, mount_name(h), true)?;
        attach(&tree, &sub)?;
    }
    if m.attributes & mount_attr::RDONLY != 0 {
        setattr(
            tmpfs.as_fd(),
            c"",
            libc::AT_EMPTY_PATH as u32,
            mount_attr::RDONLY,
            0,
            None,
        )?;
    }
    Ok(())
}

fn attach(tree: &OwnedFd, dest: &OwnedFd) -> std::io::Result<()> {
    Ok(move_mount(
        tree.as_fd(),
        c"",
        dest.as_fd(),
        c"",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )?)
}

/// Sets a bind mount's attributes on its detached tree.
fn apply_attributes(tree: &OwnedFd, m: &Mount) -> std::io::Result<()> {
    if m.attributes == 0 && m.atime.is_none() {
        return Ok(());
    }
    let (set, clear) = match m.atime {
        Some(mode) => (m.attributes | mode, mount_attr::ATIME_MASK),
        None => (m.attributes, 0),
    };
    setattr(
        tree.as_fd(),
        c"",
        empty_path(m.recursive_attributes),
        set,
        clear,
        None,
    )
}

fn empty_path(recursive: bool) -> u32 {
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    flags
}

/// The process's own `/` (which [`in_root`] with the working directory would not be).
fn open_root() -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn open_dir<Fd: AsFd>(root: Fd, path: &str) -> std::io::Result<OwnedFd> {
    Ok(open_in_root(root, path, OFlags::PATH | OFlags::DIRECTORY)?)
}

/// Most symlinks followed while making a destination, as the kernel's own limit.
const MAX_LINKS: usize = 40;

/// The destination `path` inside `root`, made if missing: directories one component at a
/// time, each in its parent's descriptor, and the last one a directory or an empty file. A
/// dangling symlink on the way is followed, and its target made inside the root, as the
/// container would see it (runc's `MkdirAll` in the root does the same).
fn ensure(root: &OwnedFd, path: &str, dir: bool) -> std::io::Result<OwnedFd> {
    let mut path = path.to_string();
    'restart: for _ in 0..=MAX_LINKS {
        match open_in_root(root, &path, OFlags::empty()) {
            Err(Errno::NOENT) => {}
            other => return Ok(other?),
        }
        let parts: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_string)
            .collect();
        let mut prefix = String::new();
        for (i, part) in parts.iter().enumerate() {
            let parent_path = if prefix.is_empty() {
                "/".to_string()
            } else {
                prefix.clone()
            };
            let parent = open_dir(root, &parent_path)?;
            prefix.push('/');
            prefix.push_str(part);
            match open_in_root(root, &prefix, OFlags::empty()) {
                Err(Errno::NOENT) => {}
                Ok(_) => continue,
                Err(e) => return Err(e.into()),
            }
            let last = i + 1 == parts.len();
            let made = if last && !dir {
                rustix::fs::openat(
                    &parent,
                    part.as_str(),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::WRONLY
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .map(drop)
            } else {
                rustix::fs::mkdirat(&parent, part.as_str(), Mode::from_raw_mode(0o755))
            };
            match made {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    // Something is there and does not resolve: a dangling symlink. Go on
                    // from its target, inside the root.
                    let Ok(target) = rustix::fs::readlinkat(&parent, part.as_str(), Vec::new())
                    else {
                        continue;
                    };
                    let target = target.to_string_lossy().into_owned();
                    let base = if target.starts_with('/') {
                        String::new()
                    } else {
                        parent_path
                    };
                    path = std::iter::once(base)
                        .chain(std::iter::once(target))
                        .chain(parts[i + 1..].iter().cloned())
                        .collect::<Vec<_>>()
                        .join("/");
                    continue 'restart;
                }
                Err(e) => return Err(with_context(e, format!("create {prefix}"))),
            }
        }
        return Ok(open_in_root(root, &path, OFlags::empty())?);
    }
    Err(Errno::LOOP.into())
}

fn make_device(root: &OwnedFd, d: &Device) -> std::io::Result<()> {
    let p = Path::new(&d.path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(std::io::Error::other("not a file path"));
    };
    let parent = ensure(root, &parent.to_string_lossy(), true)?;
    let kind = match d.kind {
        'c' | 'u' => FileType::CharacterDevice,
        'b' => FileType::BlockDevice,
        'p' => FileType::Fifo,
        other => {
            return Err(std::io::Error::other(format!(
                "unknown device type {other:?}"
            )))
        }
    };
    let dev = rustix::fs::makedev(d.major, d.minor);
    match rustix::fs::mknodat(
        &parent,
        name,
        kind,
        Mode::from_raw_mode(d.mode & 0o7777),
        dev,
    ) {
        Ok(()) => {}
        Err(Errno::EXIST) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    rustix::fs::chownat(
        &parent,
        name,
        Some(rustix::fs::Uid::from_raw(d.uid)),
        Some(rustix::fs::Gid::from_raw(d.gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    // mknod applied the umask; the spec's mode is what the node must have.
    rustix::fs::chmodat(
        &parent,
        name,
        Mode::from_raw_mode(d.mode & 0o7777),
        rustix::fs::AtFlags::empty(),
    )?;
    Ok(())
}

/// `pivot_root` into `root` and detach the host's tree.
fn pivot(root: &OwnedFd) -> std::io::Result<()> {
    let old = open_root()?;
    rustix::process::fchdir(root).map_err(|e| with_context(e, "fchdir new root".into()))?;
    rustix::process::pivot_root(".", ".").map_err(|e| with_context(e, "pivot".into()))?;
    // The old root is now mounted over the new one, and "." is it: make sure detaching it
    // propagates nowhere, then detach it.
    rustix::process::fchdir(&old).map_err(|e| with_context(e, "fchdir old root".into()))?;
    setattr(
        CWD,
        c".",
        libc::AT_RECURSIVE as u32,
        0,
        0,
        Some(PropagationKind::Slave),
    )
    .map_err(|e| with_context(e, "old root rslave".into()))?;
    rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| with_context(e, "detach old root".into()))?;
    rustix::process::chdir("/")?;
    Ok(())
}

fn write_sysctl(slash: &OwnedFd, key: &str, value: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let f = open_in_root(slash, &path, OFlags::WRONLY | OFlags::NOFOLLOW)?;
    std::fs::File::from(f).write_all(value.as_bytes())
}

/// Hides `path` behind `/dev/null` (a file) or an empty read-only tmpfs (a directory).
fn mask(slash: &OwnedFd, path: &str) -> std::io::Result<()> {
    let target = match open_in_root(slash, path, OFlags::empty()) {
        Err(Errno::NOENT) => return Ok(()),
        other => other?,
    };
    let tree = if rustix::fs::fstat(&target)?.st_mode & libc::S_IFMT == libc::S_IFDIR {
        fresh("tmpfs", "tmpfs", &[], mount_attr::RDONLY)?
    } else {
        let null = open_in_root(slash, "/dev/null", OFlags::empty())
            .map_err(|e| with_context(e, "/dev/null".into()))?;
        open_tree(
            null.as_fd(),
            c"",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )?
    };
    attach(&tree, &target)
}

/// [`mask`] for a path under a `/proc` this root has: nothing to hide without one.
fn mask_if_proc(slash: &OwnedFd, path: &str) -> std::io::Result<()> {
    match open_in_root(slash, "/proc/self", OFlags::PATH) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(_) => mask(slash, path),
    }
}

/// Binds `path` read-only over itself (and everything mounted below it).
fn read_only(slash: &OwnedFd, path: &str) -> std::io::Result<()> {
    let target = match open_in_root(slash, path, OFlags::empty()) {
        Err(Errno::NOENT) => return Ok(()),
        other => other?,
    };
    let tree = open_tree(
        target.as_fd(),
        c"",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH
            | OpenTreeFlags::AT_RECURSIVE,
    )?;
    setattr(
        tree.as_fd(),
        c"",
        empty_path(true),
        mount_attr::RDONLY | mount_attr::NOSUID | mount_attr::NODEV | mount_attr::NOEXEC,
        0,
        None,
    )?;
    attach(&tree, &target)
}

fn with_context(e: impl Into<std::io::Error>, what: String) -> std::io::Error {
    let e: std::io::Error = e.into();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use wasmedge_aot_protocol::control::Root;

    /// Runs `f` in a forked child in a mount namespace of its own; returns what it wrote
    /// to the pipe, or its error.
    fn in_child(f: impl FnOnce() -> Result<String, String>) -> Result<String, String> {
        let (mut r, w) = std::io::pipe().unwrap();
        // SAFETY: the test only forks; the child runs `f` and exits with _exit.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let out = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(|e| e.to_string())
                    .and_then(|()| f());
                let text = match out {
                    Ok(s) => format!("ok:{s}"),
                    Err(e) => format!("err:{e}"),
                };
                let mut w = std::fs::File::from(OwnedFd::from(w));
                let _ = w.write_all(text.as_bytes());
                // SAFETY: a forked test child leaves without running the parent's exit work.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut s = String::new();
                r.read_to_string(&mut s).unwrap();
                nix::sys::wait::waitpid(child, None).unwrap();
                match s.split_once(':') {
                    Some(("ok", rest)) => Ok(rest.to_string()),
                    Some((_, rest)) => Err(rest.to_string()),
                    None => Err(format!("child said {s:?}")),
                }
            }
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn the_root_becomes_the_rootfs_and_the_host_is_gone() {
        if !is_root() {
            eprintln!("skipped: needs root (mount namespaces)");
            return;
        }
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::write(rootfs.path().join("inside"), "yes").unwrap();
        let plan = ContainerPlan {
            cwd: "/".into(),
            root: Root {
                path: rootfs.path().to_owned(),
                readonly: false,
                propagation: None,
            },
            ..ContainerPlan::default()
        };
        let got = in_child(|| {
            enter(&plan, &Hierarchies::default(), || Ok(())).map_err(|e| e.to_string())?;
            let inside = std::fs::read_to_string("/inside").map_err(|e| e.to_string())?;
            let host = std::path::Path::new("/etc/hostname").exists();
            Ok(format!("{inside} host={host}"))
        });
        assert_eq!(got, Ok("yes host=false".into()));
    }
}
