//! Step 5: the container's namespaces.
//!
//! Joins come first (the pod's network, IPC and UTS namespaces the shim holds, or a path
//! the spec named), then the process creates the namespaces of its own in one `unshare`.
//! The pid namespace is not here: a process cannot enter one itself, so the runner forks it
//! there. A new network namespace gets its loopback up, as runc gives it; a new UTS
//! namespace gets the spec's hostname.

use std::os::fd::{AsFd, OwnedFd};

use nix::sched::CloneFlags;
use wasmedge_aot_protocol::control::{ContainerPlan, NamespaceAction, NamespaceKind};

use super::{at, StepError};

fn flag(kind: NamespaceKind) -> CloneFlags {
    match kind {
        NamespaceKind::Mount => CloneFlags::CLONE_NEWNS,
        NamespaceKind::Network => CloneFlags::CLONE_NEWNET,
        NamespaceKind::Ipc => CloneFlags::CLONE_NEWIPC,
        NamespaceKind::Uts => CloneFlags::CLONE_NEWUTS,
        NamespaceKind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        NamespaceKind::User => CloneFlags::CLONE_NEWUSER,
    }
}

/// The order joins happen in: the mount namespace last, since entering it changes the
/// process's root and working directory.
const JOIN_ORDER: [NamespaceKind; 5] = [
    NamespaceKind::Ipc,
    NamespaceKind::Uts,
    NamespaceKind::Network,
    NamespaceKind::Cgroup,
    NamespaceKind::Mount,
];

/// Joins and creates the plan's namespaces. `fds` yields the descriptor of each join, in
/// plan order.
pub fn enter(
    plan: &ContainerPlan,
    fds: &mut impl Iterator<Item = OwnedFd>,
) -> Result<(), StepError> {
    let mut joins: Vec<(NamespaceKind, OwnedFd)> = Vec::new();
    let mut new = CloneFlags::empty();
    // The user namespace, last in the plan, is entered later ([`enter_user`]); its
    // descriptor stays next in `fds`.
    for ns in plan
        .namespaces
        .iter()
        .filter(|n| n.kind != NamespaceKind::User)
    {
        match ns.action {
            NamespaceAction::Join => {
                let fd = fds.next().ok_or_else(|| {
                    at("namespaces")(format!("no descriptor to join the {} namespace", ns.kind))
                })?;
                joins.push((ns.kind, fd));
            }
            NamespaceAction::New => new |= flag(ns.kind),
        }
    }
    for kind in JOIN_ORDER {
        for (_, fd) in joins.iter().filter(|(k, _)| *k == kind) {
            nix::sched::setns(fd.as_fd(), flag(kind))
                .map_err(|e| at("namespaces")(format!("join the {kind} namespace: {e}")))?;
        }
    }
    if !new.is_empty() {
        nix::sched::unshare(new).map_err(|e| at("namespaces")(format!("create {new:?}: {e}")))?;
    }
    if new.contains(CloneFlags::CLONE_NEWNET) {
        loopback_up().map_err(|e| at("namespaces")(format!("bring loopback up: {e}")))?;
    }
    if let Some(name) = &plan.hostname {
        rustix::system::sethostname(name.as_bytes())
            .map_err(|e| at("hostname")(format!("set {name:?}: {e}")))?;
    }
    Ok(())
}

/// Enters the plan's user namespace, if it has one: joins the next descriptor of `fds`, or
/// creates one and has its maps written (`map_ids`: the shim, privileged outside the
/// namespace, writes them, and only then can the process take a mapped uid).
///
/// This comes after the root and the mounts, just before the credentials (and the module's
/// instantiation, which runs guest code, after those), unlike runc, which enters it first: the container's other namespaces (made
/// earlier, by the host's root) are then owned by the host's user namespace, so the
/// container's root holds its capabilities over its user namespace alone, never over its
/// mounts, network or hostname. That is less than runc grants, and it is all a Wasm module
/// can use (WASI has no mount, network configuration or hostname call). The set-up itself
/// keeps the host's root: the cgroup entry (v1 files belong to the host's root), the mounts
/// and `/proc` (whose pid namespace the runner made) need it.
pub fn enter_user(
    plan: &ContainerPlan,
    fds: &mut impl Iterator<Item = OwnedFd>,
    map_ids: impl FnOnce() -> Result<(), StepError>,
) -> Result<(), StepError> {
    let Some(ns) = plan
        .namespaces
        .iter()
        .find(|n| n.kind == NamespaceKind::User)
    else {
        return Ok(());
    };
    match ns.action {
        NamespaceAction::Join => {
            let fd = fds
                .next()
                .ok_or_else(|| at("namespaces")("no descriptor to join the user namespace"))?;
            nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER)
                .map_err(|e| at("namespaces")(format!("join the user namespace: {e}")))
        }
        NamespaceAction::New => {
            nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
                .map_err(|e| at("namespaces")(format!("create a user namespace: {e}")))?;
            map_ids()
        }
    }
}

/// Sets `IFF_UP` on `lo` in the process's network namespace.
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into it; `req`
    // is a valid ifreq for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union member for SIOCGIFFLAGS/SIOCSIFFLAGS is ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, SIOCSIFFLAGS writes the flags from `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
