//! The control stream between the shim and one container process (`SOCK_STREAM`, framed
//! messages, [`crate::wire`]):
//!
//! ```text
//! shim → container   ContainerPlan + fds: stdin, stdout, stderr, then one namespace
//!                    descriptor for each NamespaceAction::Join, in plan order
//! [container → shim  Report::Created (namespaces and mounts made, where the plan has hooks)
//!  shim → container  HooksRan (the spec's prestart and createRuntime hooks succeeded)]
//! [container → shim  Report::MapIds (in a new user namespace)
//!  shim → container  IdsMapped (its uid_map and gid_map written)]
//! container → shim   Report: Ready (loaded, instantiated, isolated; waiting) or Failed
//! shim → container   Start
//! ```
//!
//! The plan is everything the OCI spec asks of the process, already checked and translated
//! by the shim: the container process applies it step by step and never reads the spec.
//! Paths inside the container are container paths (resolved by the process inside the
//! container's root); host paths are the rootfs and bind-mount sources, which only the
//! kernel sees. End of stream before `Start` means the shim gave up on the container.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

/// Opens `path`, a container path, inside the container's root as the container would see
/// it: `..` and symlinks (absolute ones included) resolve inside `root` and never leave it,
/// and `/proc` magic links are refused. The shim (checking the module and the working
/// directory at create) and the container process (mounting, masking) both resolve a plan's
/// paths this one way. No `flags` opens an `O_PATH` descriptor.
pub fn open_in_root(root: impl AsFd, path: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = if flags.is_empty() {
        OFlags::PATH
    } else {
        flags
    };
    rustix::fs::openat2(
        root,
        path,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Upper bound of a plan (argv and env included) and of a report.
pub const MAX_MESSAGE: usize = 8 << 20;

/// Everything a container process applies between its birth and its first guest
/// instruction, in the order it applies them (see the runner's `container` module).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// WASI argv, `args[0]` as the spec gives it.
    pub args: Vec<String>,
    /// `NAME=VALUE` pairs.
    pub env: Vec<String>,
    /// `process.cwd`, a path inside the container.
    pub cwd: String,
    /// `linux.cgroupsPath`: joined by the process, unless it was born in it.
    pub cgroup: Option<String>,
    /// Namespaces other than pid (which is chosen at birth, [`crate::spawn::PidNamespace`]).
    pub namespaces: Vec<Namespace>,
    /// Set in the container's own UTS namespace.
    pub hostname: Option<String>,
    pub root: Root,
    /// `mounts`, in spec order, applied inside the root.
    pub mounts: Vec<Mount>,
    /// Device nodes to create in the container's `/dev` (the defaults every container gets,
    /// then `linux.devices`); empty when `/dev` is not a fresh file system.
    pub devices: Vec<Device>,
    /// `linux.maskedPaths`: hidden behind `/dev/null` or an empty read-only tmpfs.
    pub masked_paths: Vec<String>,
    /// `linux.readonlyPaths`: bound read-only over themselves.
    pub readonly_paths: Vec<String>,
    /// `linux.sysctl`, written under the container's `/proc/sys`.
    pub sysctl: Vec<(String, String)>,
    pub user: User,
    pub capabilities: Capabilities,
    pub no_new_privileges: bool,
    pub rlimits: Vec<Rlimit>,
    pub oom_score_adj: Option<i32>,
    /// The spec's seccomp profile, compiled to a BPF program by the shim.
    pub seccomp: Option<Seccomp>,
    /// `process.apparmorProfile`, on a host whose kernel has AppArmor enabled.
    pub apparmor_profile: Option<String>,
    /// The spec has hooks to run once the process's namespaces and mounts exist
    /// (`prestart`, `createRuntime`): it reports [`Report::Created`] then, and waits for
    /// [`HooksRan`] before its `pivot_root`, its credentials and any guest code.
    pub hooks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceKind {
    Mount,
    Network,
    Ipc,
    Uts,
    Cgroup,
    /// Always last in a plan (its descriptor, for a join, the last one): the process enters
    /// it after its root is set up and its module instantiated, just before it drops its
    /// credentials (see the runner's `process::namespaces::enter_user`).
    User,
}

impl std::fmt::Display for NamespaceKind {
    /// The OCI spec's name of the namespace type, as errors name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamespaceKind::Mount => "mount",
            NamespaceKind::Network => "network",
            NamespaceKind::Ipc => "ipc",
            NamespaceKind::Uts => "uts",
            NamespaceKind::Cgroup => "cgroup",
            NamespaceKind::User => "user",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceAction {
    /// A new namespace of the process's own.
    New,
    /// The namespace of the next descriptor that came with the plan (a pod's, or a path the
    /// spec named).
    Join,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub kind: NamespaceKind,
    pub action: NamespaceAction,
}

/// The container's root file system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// The rootfs directory on the host (mounted by the shim in the bundle).
    pub path: PathBuf,
    /// `root.readonly`.
    pub readonly: bool,
    /// `linux.rootfsPropagation`; the process keeps its mounts from the host's by making
    /// them `rslave` when the spec does not say.
    pub propagation: Option<Propagation>,
}

/// Mount propagation, and whether it applies to the whole tree below (`r` prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propagation {
    pub kind: PropagationKind,
    pub recursive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PropagationKind {
    Shared,
    Slave,
    Private,
    Unbindable,
}

/// One entry of the spec's `mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Where, inside the container (resolved in its root; missing directories are made).
    pub destination: String,
    pub source: MountSource,
    /// [`mount_attr`] flags to set, from the spec's options (read-only, nosuid, nodev,
    /// noexec, nodiratime, nosymfollow).
    pub attributes: u64,
    /// The access-time mode the options name, if any ([`mount_attr::RELATIME`],
    /// [`mount_attr::NOATIME`] or [`mount_attr::STRICTATIME`]).
    pub atime: Option<u64>,
    /// The attributes apply to every mount below the destination too (`rro`, `rnosuid`,
    /// ...); otherwise to the top one only, as runc does.
    pub recursive_attributes: bool,
    pub propagation: Option<Propagation>,
}

/// `MOUNT_ATTR_*` bits of `mount_setattr(2)` and `fsmount(2)` (the kernel's ABI).
pub mod mount_attr {
    pub const RDONLY: u64 = 0x0000_0001;
    pub const NOSUID: u64 = 0x0000_0002;
    pub const NODEV: u64 = 0x0000_0004;
    pub const NOEXEC: u64 = 0x0000_0008;
    /// The bits of the access-time mode.
    pub const ATIME_MASK: u64 = 0x0000_0070;
    pub const RELATIME: u64 = 0x0000_0000;
    pub const NOATIME: u64 = 0x0000_0010;
    pub const STRICTATIME: u64 = 0x0000_0020;
    pub const NODIRATIME: u64 = 0x0000_0080;
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A bind mount of a host path (`bind`/`rbind`).
    Bind { source: PathBuf, recursive: bool },
    /// A fresh file system (`proc`, `tmpfs`, `sysfs`, `mqueue`, `devpts`, ...) with its
    /// data options (`mode=755`, `size=65536k`, `newinstance`, ...).
    Fresh {
        fstype: String,
        source: String,
        data: Vec<String>,
    },
    /// `type: cgroup`: the container's own cgroups, as the kernel shows them (cgroup v2 with
    /// a cgroup namespace: a fresh `cgroup2`; otherwise each hierarchy's directory of the
    /// container bound read-only, as runc does).
    Cgroup,
}

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Path inside the container, under `/dev`.
    pub path: String,
    /// `c`, `b` or `p`.
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `process.user`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
}

/// `process.capabilities`, each set as a bit mask of capability numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub bounding: u64,
    pub effective: u64,
    pub inheritable: u64,
    pub permitted: u64,
    pub ambient: u64,
}

/// One of `process.rlimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_*` number.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// A seccomp filter ready to install with `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seccomp {
    /// The BPF program, one `struct sock_filter` per element, packed as
    /// `code | jt << 16 | jf << 24 | k << 32`.
    pub program: Vec<u64>,
    /// `SECCOMP_FILTER_FLAG_*`.
    pub flags: u32,
}

/// The container process's report: [`Report::Ready`] or [`Report::Failed`], after
/// [`Report::Created`] if the plan has hooks and [`Report::MapIds`] if it made a user
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// Its namespaces and its root's mounts are made, nothing else (no `pivot_root` yet, no
    /// user namespace, its credentials the runner's, no guest code has run): the shim runs
    /// the spec's hooks on it. It waits for [`HooksRan`].
    Created,
    /// In a new user namespace of its own: its uid and gid maps must be written by a process
    /// privileged outside it (the shim, its parent, which has the spec's mappings) before it
    /// can change its credentials. It waits for [`IdsMapped`].
    MapIds,
    /// Isolated, loaded and instantiated; waiting for [`Start`].
    Ready {
        timings: Timings,
        /// Something the operator should know (e.g. why native code is not used).
        warning: Option<String>,
    },
    /// Could not be made ready; the process exits after sending this.
    Failed { error: String },
}

/// The shim's go-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start;

/// The shim's answer to [`Report::Created`]: the hooks ran and succeeded (where one failed,
/// the shim ends the process instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HooksRan;

/// The shim's answer to [`Report::MapIds`]: the maps are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdsMapped;

/// Microseconds each step of a container's create took, measured in its process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From the fork (the runner's or the zygote's) to the container process's first step:
    /// the kernel's copy of the parent and the scheduler.
    #[serde(default)]
    pub fork_us: u64,
    /// Waiting for the shim's plan, which it sends once the runner has answered.
    #[serde(default)]
    pub plan_us: u64,
    pub hash_us: u64,
    pub lookup_us: u64,
    /// Compiling, or waiting for another process's compile.
    pub compile_us: u64,
    /// Joining the container's cgroup.
    pub cgroup_us: u64,
    /// Joining and creating namespaces.
    pub namespaces_us: u64,
    /// The root and the spec's mounts, devices, masked and read-only paths.
    pub mounts_us: u64,
    /// `pivot_root` into the container's root and detaching the host's.
    pub pivot_us: u64,
    /// Rlimits, groups, uid/gid, capabilities, no_new_privs.
    pub credentials_us: u64,
    pub seccomp_us: u64,
    pub load_us: u64,
    pub instantiate_us: u64,
    pub tier: Tier,
    /// The optimisation level of the native code that ran (its tier in the cache).
    pub opt_level: Option<u8>,
    pub cache: CacheOutcome,
}

/// How the module's code ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// WasmEdge's interpreter.
    #[default]
    Interpreter,
    /// Native code from the node cache.
    Native,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Interpreter => "interpreter",
            Tier::Native => "native",
        })
    }
}

/// What the node cache did for a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheOutcome {
    /// Native code was in the cache.
    Hit,
    /// Compiled for this start.
    Compiled,
    /// Another process compiled it while this start waited.
    WaitedHit,
    /// Not in the cache; a background compile was asked for and the interpreter runs now.
    MissTiered,
    /// The policy is `off`.
    #[default]
    Off,
    /// The cache or the compiler failed; the interpreter runs (the warning says why).
    Fallback,
}

impl std::fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Compiled => "compiled",
            CacheOutcome::WaitedHit => "waited-hit",
            CacheOutcome::MissTiered => "miss-tiered",
            CacheOutcome::Off => "off",
            CacheOutcome::Fallback => "fallback",
        })
    }
}

impl Seccomp {
    /// Packs one `struct sock_filter`.
    pub fn pack(code: u16, jt: u8, jf: u8, k: u32) -> u64 {
        u64::from(code) | u64::from(jt) << 16 | u64::from(jf) << 24 | u64::from(k) << 32
    }

    /// Unpacks [`Seccomp::program`] into `(code, jt, jf, k)`.
    pub fn instructions(&self) -> impl Iterator<Item = (u16, u8, u8, u32)> + '_ {
        self.program
            .iter()
            .map(|&i| (i as u16, (i >> 16) as u8, (i >> 24) as u8, (i >> 32) as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sock_filter_packing_round_trips() {
        let s = Seccomp {
            program: vec![
                Seccomp::pack(0x20, 1, 2, 0xdead_beef),
                Seccomp::pack(6, 0, 0, 0x7fff_0000),
            ],
            flags: 0,
        };
        let got: Vec<_> = s.instructions().collect();
        assert_eq!(got, vec![(0x20, 1, 2, 0xdead_beef), (6, 0, 0, 0x7fff_0000)]);
    }

    #[test]
    fn names_in_data_are_display_names_not_debug_strings() {
        assert_eq!(serde_json::to_string(&Tier::Native).unwrap(), "\"native\"");
        assert_eq!(
            serde_json::to_string(&CacheOutcome::WaitedHit).unwrap(),
            "\"waited-hit\""
        );
        assert_eq!(CacheOutcome::MissTiered.to_string(), "miss-tiered");
    }
}
