//! Reading an OCI runtime spec, once, into what the shim, the runner and the container
//! process need.
//!
//! A Wasm container gets the same boundary as a runc container: the spec's user, groups,
//! capabilities, no_new_privs, seccomp profile, rlimits, namespaces, root, mounts, masked
//! and read-only paths, sysctls and hostname all become part of the [`ContainerPlan`] its
//! process applies before the module's first instruction. A field this runtime cannot
//! honour is an error that names it, never a silent downgrade.
//!
//! Everything here is pure (no file is opened), so that every rule is unit-tested. Paths
//! inside the container stay container paths: the container process resolves them inside
//! its root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, LinuxSeccomp, Mount as OciMount,
    PosixRlimitType, Spec,
};
use wasmedge_aot_protocol::config::{Policy, POLICY_ANNOTATION};

use crate::cgroup::CgroupPath;
use wasmedge_aot_protocol::control::{
    mount_attr, Capabilities, ContainerPlan, Device, Mount, MountSource, Namespace,
    NamespaceAction, NamespaceKind, Propagation, PropagationKind, Rlimit, Root, User,
};

/// The annotation CRI puts on a pod's sandbox ("pause") container.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The annotation CRI puts on every container of a pod.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

pub use crate::error::SpecError;
use crate::error::{invalid, unsupported};

/// Security modules the host kernel runs; a spec's label for one that is off means
/// nothing to the kernel (runc ignores it too), a label for one that is on must be applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostSecurity {
    pub apparmor: bool,
    pub selinux: bool,
}

impl HostSecurity {
    pub fn detect() -> HostSecurity {
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .is_ok_and(|s| s.trim() == "Y");
        let selinux = Path::new("/sys/fs/selinux/enforce").exists();
        HostSecurity { apparmor, selinux }
    }
}

/// Where a namespace the spec asks for comes from, before the shim opens anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ns {
    /// Not in the spec: the host's (the runner's).
    Host,
    /// A new one.
    New,
    /// The one at this path.
    Join(PathBuf),
}

/// What the container's cgroup lets it do with device nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    pub policy: crate::cgroup::devices::Policy,
    /// `linux.devices`' paths: runc's default rule for such a path is left out.
    pub node_paths: Vec<String>,
}

impl Devices {
    /// An update's device rules (containerd's `Update`, which CRI sends with the
    /// container's whole resources on every resize): the same policy is no change, another
    /// is refused, never ignored as runc ignores it: swapping a running container's device
    /// filter is not built.
    pub fn check_update(
        &self,
        rules: &[oci_spec::runtime::LinuxDeviceCgroup],
    ) -> Result<(), SpecError> {
        let asked = crate::cgroup::devices::Policy::of_spec(rules, &self.node_paths)
            .map_err(|e| invalid(e.field, e.message))?;
        if asked != self.policy {
            return Err(unsupported(
                "linux.resources.devices",
                "the device rules of a running Wasm container cannot change",
            ));
        }
        Ok(())
    }
}

/// What a container's spec asks, translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// `process.args[0]`: the module, as the container names it.
    pub module: String,
    /// The plan the container process applies. `root.path` and `seccomp` are filled in by
    /// the caller (the rootfs it mounted, the filter it compiled).
    pub plan: ContainerPlan,
    /// `linux.cgroupsPath`, by its driver (`plan.cgroup` has a cgroupfs one).
    pub cgroup: Option<CgroupPath>,
    /// The devices the cgroup lets the container use, and the paths of the spec's
    /// `linux.devices` (an update's rules are reduced with them too).
    pub devices: Devices,
    /// The path of each [`NamespaceAction::Join`] in `plan.namespaces`, in order.
    pub joins: Vec<PathBuf>,
    pub pid: Ns,
    /// For a new user namespace, its `uid_map` and `gid_map`, which the shim writes when the
    /// process asks ([`Report::MapIds`](wasmedge_aot_protocol::control::Report)).
    pub id_maps: Option<IdMaps>,
    /// `linux.seccomp`, to compile.
    pub seccomp: Option<LinuxSeccomp>,
    /// The compile policy the pod's annotation asks for.
    pub policy: Option<Policy>,
    /// The spec's hooks, which the shim runs.
    pub hooks: crate::hooks::Hooks,
}

/// A new user namespace's mappings, from `linux.uidMappings` and `linux.gidMappings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    pub uid: Vec<IdRange>,
    pub gid: Vec<IdRange>,
}

/// `size` ids from `container_id` in the namespace are `host_id` and up outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl IdMaps {
    /// The contents of `/proc/<pid>/uid_map` (`uid`) or `gid_map`: one line a range.
    pub fn map_file(ranges: &[IdRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.container_id, r.host_id, r.size))
            .collect()
    }
}

/// The kernel's limits on a uid or gid map: lines, and bytes in its one write (a page).
const MAX_ID_RANGES: usize = 340;
const MAP_FILE_MAX: usize = 4096;

fn id_ranges(field: &str, m: &Option<Vec<LinuxIdMapping>>) -> Result<Vec<IdRange>, SpecError> {
    let ranges: Vec<IdRange> = m
        .iter()
        .flatten()
        .map(|m| IdRange {
            container_id: m.container_id(),
            host_id: m.host_id(),
            size: m.size(),
        })
        .collect();
    if ranges.is_empty() {
        return Err(invalid(
            field,
            "a new user namespace needs its mappings (none given)",
        ));
    }
    if ranges.len() > MAX_ID_RANGES {
        return Err(invalid(
            field,
            format!(
                "{} ranges, more than the kernel's {MAX_ID_RANGES}",
                ranges.len()
            ),
        ));
    }
    if IdMaps::map_file(&ranges).len() >= MAP_FILE_MAX {
        return Err(invalid(
            field,
            format!("the map must be written in one write of under {MAP_FILE_MAX} bytes"),
        ));
    }
    for r in &ranges {
        let fits = |start: u32| start.checked_add(r.size).is_some();
        if r.size == 0 || !fits(r.container_id) || !fits(r.host_id) {
            return Err(invalid(
                field,
                format!(
                    "range {} {} {} is empty or runs past the largest id",
                    r.container_id, r.host_id, r.size
                ),
            ));
        }
    }
    Ok(ranges)
}

fn is_mapped(ranges: &[IdRange], id: u32) -> bool {
    ranges
        .iter()
        .any(|r| id >= r.container_id && id - r.container_id < r.size)
}

/// What a pod sandbox's spec asks the shim to hold for the pod's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    pub network: Ns,
    pub ipc: Ns,
    pub uts: Ns,
    pub pid: Ns,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// `linux.sysctl`: the pod's sysctls, written in its namespaces.
    pub sysctl: Vec<(String, String)>,
}

/// `linux.cgroupsPath`, if any, with the driver its form names: systemd's
/// `slice:prefix:name` (which CRI writes when the kubelet's `cgroupDriver` is systemd) or a
/// cgroupfs directory (see [`CgroupPath::parse`]). A path that could land outside the
/// hierarchy or the slice is refused, naming the field.
pub fn cgroups_path(spec: &Spec) -> Result<Option<CgroupPath>, SpecError> {
    let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    CgroupPath::parse(&path)
        .map(Some)
        .map_err(|e| invalid("linux.cgroupsPath", format!("{path:?}: {e}")))
}

/// What a create reads of any task's spec before the task's kind is decided, read once.
pub struct TaskSpec<'a> {
    /// For a CRI pod sandbox (which runs no process here): what it asks of the pod's
    /// namespaces ([`sandbox`]), or why that is refused.
    pub sandbox: Option<Result<SandboxSpec, SpecError>>,
    /// For a pod's container: its sandbox's id (CRI's annotation).
    pub sandbox_id: Option<&'a str>,
    /// `root.path` (default `rootfs`), relative to the bundle unless absolute.
    pub root: PathBuf,
    /// `linux.cgroupsPath` ([`cgroups_path`]), or why it is refused.
    pub cgroup: Result<Option<CgroupPath>, SpecError>,
}

/// Reads [`TaskSpec`] of `spec`.
pub fn task(spec: &Spec) -> TaskSpec<'_> {
    TaskSpec {
        sandbox: is_sandbox(spec).then(|| sandbox(spec)),
        sandbox_id: annotation(spec, SANDBOX_ID_ANNOTATION),
        root: spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_else(|| "rootfs".into()),
        cgroup: cgroups_path(spec),
    }
}

/// Whether `spec` is a CRI pod sandbox (which runs no process here).
pub fn is_sandbox(spec: &Spec) -> bool {
    annotation(spec, CONTAINER_TYPE_ANNOTATION) == Some("sandbox")
}

pub(crate) fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The spec's `linux.namespaces`, in their order.
pub fn linux_namespaces(spec: &Spec) -> impl Iterator<Item = &oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
}

fn namespaces(spec: &Spec) -> Result<HashMap<LinuxNamespaceType, Ns>, SpecError> {
    let mut out = HashMap::new();
    for ns in linux_namespaces(spec) {
        let how = match ns.path() {
            Some(p) if !p.as_os_str().is_empty() => Ns::Join(p.clone()),
            _ => Ns::New,
        };
        if out.insert(ns.typ(), how).is_some() {
            return Err(invalid(
                "linux.namespaces",
                format!("{} is listed twice", ns.typ()),
            ));
        }
    }
    Ok(out)
}

fn ns_of(all: &HashMap<LinuxNamespaceType, Ns>, t: LinuxNamespaceType) -> Ns {
    all.get(&t).cloned().unwrap_or(Ns::Host)
}

/// Translates a pod sandbox's spec.
pub fn sandbox(spec: &Spec) -> Result<SandboxSpec, SpecError> {
    // A hook is given the sandbox's pid to act on (its network namespace, its root), and
    // this runtime's sandbox runs no process: the pid would be the shim's, the host's.
    #[allow(deprecated)] // `prestart`, which Docker still writes
    let any_hook = spec.hooks().as_ref().is_some_and(|h| {
        [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.start_container(),
            h.poststart(),
            h.poststop(),
        ]
        .iter()
        .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
    });
    if any_hook {
        return Err(unsupported(
            "hooks",
            "a pod sandbox of this runtime runs no process for hooks to act on",
        ));
    }
    let all = namespaces(spec)?;
    let s = SandboxSpec {
        network: ns_of(&all, LinuxNamespaceType::Network),
        ipc: ns_of(&all, LinuxNamespaceType::Ipc),
        uts: ns_of(&all, LinuxNamespaceType::Uts),
        pid: ns_of(&all, LinuxNamespaceType::Pid),
        hostname: spec.hostname().clone().filter(|h| !h.is_empty()),
        domainname: spec.domainname().clone().filter(|h| !h.is_empty()),
        sysctl: sorted_sysctl(spec),
    };
    if all.contains_key(&LinuxNamespaceType::User) {
        // Kubernetes' `hostUsers: false`. A container of its own gets one; a pod's would have
        // to be made and held by the shim, as its network namespace is.
        return Err(unsupported(
            "linux.namespaces",
            "a pod sandbox's user namespace is not supported by this runtime",
        ));
    }
    for (name, ns) in [("ipc", &s.ipc), ("uts", &s.uts)] {
        if let Ns::Join(p) = ns {
            return Err(unsupported(
                "linux.namespaces",
                format!(
                    "a pod sandbox joining the {name} namespace {} (the shim makes the pod's own)",
                    p.display()
                ),
            ));
        }
    }
    if (s.hostname.is_some() || s.domainname.is_some()) && s.uts != Ns::New {
        return Err(invalid(
            "hostname",
            "a pod's hostname needs its own UTS namespace",
        ));
    }
    check_sysctls(&s.sysctl, &s.network, &s.ipc, &s.uts)?;
    Ok(s)
}

fn sorted_sysctl(spec: &Spec) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    v.sort();
    v
}

/// Only sysctls of a namespace the container has its own of (or shares with its pod) may
/// be written: anything else would change the host (runc's rule).
fn check_sysctls(
    sysctl: &[(String, String)],
    net: &Ns,
    ipc: &Ns,
    uts: &Ns,
) -> Result<(), SpecError> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    for (key, _) in sysctl {
        let field = format!("linux.sysctl {key:?}");
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
            || key
                .split(['.', '/'])
                .any(|part| part.is_empty() || part == "..")
        {
            return Err(invalid(field, "not a sysctl name"));
        }
        let own = |ns: &Ns| *ns != Ns::Host;
        let allowed = if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
            own(ipc)
        } else if key.starts_with("net.") {
            own(net)
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            own(uts)
        } else {
            false
        };
        if !allowed {
            return Err(invalid(
                field,
                "not in a kernel namespace of the container's own: it would change the host",
            ));
        }
    }
    Ok(())
}

/// Translates a container's spec; `cgroup` is its `linux.cgroupsPath` as [`cgroups_path`]
/// read it (once per create, before the container's kind was decided).
pub fn container(
    spec: &Spec,
    cgroup: Option<CgroupPath>,
    host: HostSecurity,
) -> Result<ContainerSpec, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    if process.terminal() == Some(true) {
        return Err(unsupported(
            "process.terminal",
            "a terminal for a wasm container",
        ));
    }
    let args = process.args().clone().unwrap_or_default();
    let module = args.first().ok_or(SpecError::NoArgs)?.clone();
    let cwd = process.cwd().to_string_lossy().into_owned();
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    if !cwd.starts_with('/') {
        return Err(invalid("process.cwd", format!("{cwd:?} is not absolute")));
    }
    refuse_unsupported(spec, host)?;
    let hooks = crate::hooks::Hooks::of(spec)?;

    let linux = spec.linux().clone().unwrap_or_default();
    let all = namespaces(spec)?;
    let mut plan_ns = Vec::new();
    let mut joins = Vec::new();
    for (t, kind) in [
        (LinuxNamespaceType::Mount, NamespaceKind::Mount),
        (LinuxNamespaceType::Network, NamespaceKind::Network),
        (LinuxNamespaceType::Ipc, NamespaceKind::Ipc),
        (LinuxNamespaceType::Uts, NamespaceKind::Uts),
        (LinuxNamespaceType::Cgroup, NamespaceKind::Cgroup),
    ] {
        match ns_of(&all, t) {
            Ns::Host => {}
            Ns::New => plan_ns.push(Namespace {
                kind,
                action: NamespaceAction::New,
            }),
            Ns::Join(p) => {
                plan_ns.push(Namespace {
                    kind,
                    action: NamespaceAction::Join,
                });
                joins.push(p);
            }
        }
    }
    if ns_of(&all, LinuxNamespaceType::Mount) == Ns::Host {
        return Err(invalid(
            "linux.namespaces",
            "a container needs a mount namespace of its own (its root is set up there)",
        ));
    }
    if all.contains_key(&LinuxNamespaceType::Time) {
        return Err(unsupported(
            "linux.namespaces",
            "a time namespace is not supported by this runtime",
        ));
    }
    let id_maps = user_namespace(spec, &all, &mut plan_ns, &mut joins)?;
    let uts = ns_of(&all, LinuxNamespaceType::Uts);
    let hostname = spec.hostname().clone().filter(|h| !h.is_empty());
    if hostname.is_some() && uts == Ns::Host {
        return Err(invalid(
            "hostname",
            "setting it needs a UTS namespace of the container's own or its pod's",
        ));
    }
    if spec.domainname().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(unsupported("domainname", "not supported by this runtime"));
    }

    let sysctl = sorted_sysctl(spec);
    check_sysctls(
        &sysctl,
        &ns_of(&all, LinuxNamespaceType::Network),
        &ns_of(&all, LinuxNamespaceType::Ipc),
        &uts,
    )?;

    let mut mounts = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mounts.push(mount(m).map_err(|e| match e {
            SpecError::Invalid { field, message } => {
                invalid(format!("mounts[{i}] {field}"), message)
            }
            SpecError::Unsupported { field, message } => {
                unsupported(format!("mounts[{i}] {field}"), message)
            }
            other => other,
        })?);
    }
    let fresh_dev = mounts.iter().any(|m| {
        m.destination.trim_end_matches('/') == "/dev"
            && matches!(&m.source, MountSource::Fresh { fstype, .. } if fstype == "tmpfs")
    });
    let devices = devices(&linux, fresh_dev)?;

    let node_paths: Vec<String> = linux
        .devices()
        .iter()
        .flatten()
        .map(|d| d.path().to_string_lossy().into_owned())
        .collect();
    let device_rules = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().as_deref())
        .unwrap_or_default();
    let device_policy = crate::cgroup::devices::Policy::of_spec(device_rules, &node_paths)
        .map_err(|e| invalid(e.field, e.message))?;
    // runc makes a cgroup for a spec that names none; a container without one would have
    // no device filter at all.
    if cgroup.is_none() && !device_policy.is_allow_all() {
        return Err(unsupported(
            "linux.cgroupsPath",
            "the spec names no cgroup, and this runtime enforces linux.resources.devices \
             (and runc's default device rules) in the container's cgroup",
        ));
    }
    let user = process.user();
    let plan = ContainerPlan {
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd,
        // A process systemd moves into its scope is in it before it reads the plan.
        cgroup: match &cgroup {
            Some(CgroupPath::Fs(path)) => Some(path.clone()),
            Some(CgroupPath::Systemd(_)) | None => None,
        },
        namespaces: plan_ns,
        hostname,
        root: Root {
            path: PathBuf::new(),
            readonly: spec
                .root()
                .as_ref()
                .is_some_and(|r| r.readonly() == Some(true)),
            propagation: match linux.rootfs_propagation().as_deref() {
                None | Some("") => None,
                Some(p) => Some(propagation(p).ok_or_else(|| {
                    invalid("linux.rootfsPropagation", format!("unknown value {p:?}"))
                })?),
            },
        },
        mounts,
        devices,
        masked_paths: container_paths("linux.maskedPaths", linux.masked_paths())?,
        readonly_paths: container_paths("linux.readonlyPaths", linux.readonly_paths())?,
        sysctl,
        user: User {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            umask: user.umask(),
        },
        capabilities: capabilities(process.capabilities().as_ref())?,
        no_new_privileges: process.no_new_privileges() == Some(true),
        rlimits: process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                resource: rlimit_number(r.typ()),
                soft: r.soft(),
                hard: r.hard(),
            })
            .collect(),
        oom_score_adj: process.oom_score_adj(),
        seccomp: None,
        apparmor_profile: if host.apparmor {
            process.apparmor_profile().clone().filter(|p| !p.is_empty())
        } else {
            None
        },
        hooks: hooks.at_create(),
    };
    let policy = match annotation(spec, POLICY_ANNOTATION) {
        Some(v) => Some(
            v.parse::<Policy>()
                .map_err(|e| invalid(format!("annotation {POLICY_ANNOTATION}"), e))?,
        ),
        None => None,
    };
    let seccomp = linux.seccomp().clone();
    if let Some(s) = &seccomp {
        if s.listener_path().is_some() {
            return Err(unsupported(
                "linux.seccomp.listenerPath",
                "seccomp notification is not supported by this runtime",
            ));
        }
    }
    Ok(ContainerSpec {
        module,
        plan,
        cgroup,
        devices: Devices {
            policy: device_policy,
            node_paths,
        },
        joins,
        pid: ns_of(&all, LinuxNamespaceType::Pid),
        id_maps,
        seccomp,
        policy,
        hooks,
    })
}

/// `linux.namespaces`' user namespace, last in the plan (see [`NamespaceKind::User`]): for a
/// new one, the mappings the shim writes; a path is joined as the others are. Mappings
/// without a new user namespace mean nothing and are refused, as are a user and groups the
/// mappings leave out (the kernel would refuse the process's `setresuid` later, less
/// clearly).
fn user_namespace(
    spec: &Spec,
    all: &HashMap<LinuxNamespaceType, Ns>,
    plan_ns: &mut Vec<Namespace>,
    joins: &mut Vec<PathBuf>,
) -> Result<Option<IdMaps>, SpecError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let has_maps = |m: &Option<Vec<LinuxIdMapping>>| m.as_ref().is_some_and(|m| !m.is_empty());
    let given = has_maps(linux.uid_mappings()) || has_maps(linux.gid_mappings());
    match ns_of(all, LinuxNamespaceType::User) {
        Ns::Host if given => Err(invalid(
            "linux.uidMappings",
            "mappings without a user namespace of the container's own",
        )),
        Ns::Host => Ok(None),
        Ns::Join(path) if given => Err(invalid(
            "linux.uidMappings",
            format!(
                "mappings for the user namespace {} it joins, whose maps are already written",
                path.display()
            ),
        )),
        Ns::Join(path) => {
            plan_ns.push(Namespace {
                kind: NamespaceKind::User,
                action: NamespaceAction::Join,
            });
            joins.push(path);
            Ok(None)
        }
        Ns::New => {
            let maps = IdMaps {
                uid: id_ranges("linux.uidMappings", linux.uid_mappings())?,
                gid: id_ranges("linux.gidMappings", linux.gid_mappings())?,
            };
            let user = spec.process().as_ref().ok_or(SpecError::NoProcess)?.user();
            if !is_mapped(&maps.uid, user.uid()) {
                return Err(invalid(
                    "process.user.uid",
                    format!("{} is not mapped by linux.uidMappings", user.uid()),
                ));
            }
            let gids =
                std::iter::once(user.gid()).chain(user.additional_gids().iter().flatten().copied());
            for gid in gids {
                if !is_mapped(&maps.gid, gid) {
                    return Err(invalid(
                        "process.user",
                        format!("gid {gid} is not mapped by linux.gidMappings"),
                    ));
                }
            }
            plan_ns.push(Namespace {
                kind: NamespaceKind::User,
                action: NamespaceAction::New,
            });
            Ok(Some(maps))
        }
    }
}

/// Fields this runtime has no way to apply: refused, never ignored.
fn refuse_unsupported(spec: &Spec, host: HostSecurity) -> Result<(), SpecError> {
    const UNSUPPORTED: &str = "not supported by this runtime";
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let set = |l: &Option<String>| l.as_ref().is_some_and(|l| !l.is_empty());
    let mut present = vec![
        (
            "process.ioPriority",
            process.io_priority().is_some(),
            UNSUPPORTED,
        ),
        (
            "process.scheduler",
            process.scheduler().is_some(),
            UNSUPPORTED,
        ),
        (
            "process.selinuxLabel",
            host.selinux && set(process.selinux_label()),
            "SELinux labels are not supported by this runtime",
        ),
    ];
    if let Some(linux) = spec.linux() {
        let non_empty = |v: Option<usize>| v.is_some_and(|n| n > 0);
        present.extend([
            ("linux.intelRdt", linux.intel_rdt().is_some(), UNSUPPORTED),
            (
                "linux.personality",
                linux.personality().is_some(),
                UNSUPPORTED,
            ),
            (
                "linux.memoryPolicy",
                linux.memory_policy().is_some(),
                UNSUPPORTED,
            ),
            (
                "linux.timeOffsets",
                linux.time_offsets().is_some(),
                UNSUPPORTED,
            ),
            (
                "linux.netDevices",
                non_empty(linux.net_devices().as_ref().map(|d| d.len())),
                UNSUPPORTED,
            ),
            (
                "linux.mountLabel",
                host.selinux && set(linux.mount_label()),
                UNSUPPORTED,
            ),
        ]);
    }
    match present.into_iter().find(|(_, p, _)| *p) {
        Some((field, _, why)) => Err(unsupported(field, why)),
        None => Ok(()),
    }
}

/// Container paths must be absolute; they are resolved inside the container's root.
fn container_paths(field: &str, paths: &Option<Vec<String>>) -> Result<Vec<String>, SpecError> {
    let paths = paths.clone().unwrap_or_default();
    if let Some(p) = paths.iter().find(|p| !p.starts_with('/')) {
        return Err(invalid(field, format!("{p:?} is not absolute")));
    }
    Ok(paths)
}

fn propagation(option: &str) -> Option<Propagation> {
    let (recursive, kind) = match option.strip_prefix('r') {
        Some(rest) if rest != "o" && rest != "w" => (true, rest),
        _ => (false, option),
    };
    let kind = match kind {
        "shared" => PropagationKind::Shared,
        "slave" => PropagationKind::Slave,
        "private" => PropagationKind::Private,
        "unbindable" => PropagationKind::Unbindable,
        _ => return None,
    };
    Some(Propagation { kind, recursive })
}

/// One of the spec's mounts.
fn mount(m: &OciMount) -> Result<Mount, SpecError> {
    let destination = m.destination().to_string_lossy().into_owned();
    if !destination.starts_with('/') {
        return Err(invalid(
            "destination",
            format!("{destination:?} is not absolute"),
        ));
    }
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return Err(unsupported(
            "uidMappings",
            "id-mapped mounts are not supported",
        ));
    }
    let typ = m.typ().clone().unwrap_or_default();
    let mut bind = typ == "bind";
    let mut recursive = false;
    let mut attributes = 0;
    let mut atime = None;
    let mut recursive_attributes = false;
    let mut propagation_option = None;
    let mut data = Vec::new();
    for option in m.options().iter().flatten() {
        let o = option.as_str();
        let (r, base) = match o.strip_prefix('r') {
            Some(rest)
                if [
                    "ro",
                    "nosuid",
                    "nodev",
                    "noexec",
                    "noatime",
                    "strictatime",
                    "relatime",
                    "nodiratime",
                    "nosymfollow",
                ]
                .contains(&rest) =>
            {
                (true, rest)
            }
            _ => (false, o),
        };
        match base {
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                recursive = true;
            }
            "ro" => attributes |= mount_attr::RDONLY,
            "nosuid" => attributes |= mount_attr::NOSUID,
            "nodev" => attributes |= mount_attr::NODEV,
            "noexec" => attributes |= mount_attr::NOEXEC,
            "nodiratime" => attributes |= mount_attr::NODIRATIME,
            "nosymfollow" => attributes |= mount_attr::NOSYMFOLLOW,
            "noatime" => atime = Some(mount_attr::NOATIME),
            "strictatime" => atime = Some(mount_attr::STRICTATIME),
            "relatime" => atime = Some(mount_attr::RELATIME),
            // The defaults, and flags with nothing to clear on a new mount.
            "rw" | "suid" | "dev" | "exec" | "defaults" | "diratime" | "atime" | "async"
            | "auto" | "noauto" | "nouser" | "nomand" => {}
            _ if propagation(o).is_some() => propagation_option = propagation(o),
            "sync" | "dirsync" | "mand" | "lazytime" | "remount" => {
                return Err(unsupported(
                    "options",
                    format!("mount option {o:?} is not supported"),
                ))
            }
            _ => data.push(o.to_string()),
        }
        recursive_attributes |= r;
    }
    let source = if bind {
        if !data.is_empty() {
            return Err(invalid(
                "options",
                format!("{data:?} mean nothing to a bind mount"),
            ));
        }
        let source = m
            .source()
            .clone()
            .ok_or_else(|| invalid("source", "a bind mount needs a source"))?;
        if !source.is_absolute() {
            return Err(invalid(
                "source",
                format!("{} is not absolute", source.display()),
            ));
        }
        MountSource::Bind { source, recursive }
    } else if typ == "cgroup" {
        MountSource::Cgroup
    } else if typ.is_empty() {
        return Err(invalid(
            "type",
            "a mount that is not a bind mount needs a type",
        ));
    } else {
        MountSource::Fresh {
            fstype: typ,
            source: m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            data,
        }
    };
    Ok(Mount {
        destination,
        source,
        attributes,
        atime,
        recursive_attributes,
        propagation: propagation_option,
    })
}

/// Device nodes every container with a fresh `/dev` gets (as runc makes them), then the
/// spec's.
fn devices(linux: &oci_spec::runtime::Linux, fresh_dev: bool) -> Result<Vec<Device>, SpecError> {
    let mut out: Vec<Device> = Vec::new();
    if fresh_dev {
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            out.push(Device {
                path: format!("/dev/{name}"),
                kind: 'c',
                major,
                minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            });
        }
    }
    for d in linux.devices().iter().flatten() {
        let path = d.path().to_string_lossy().into_owned();
        let field = || format!("linux.devices {path:?}");
        if !path.starts_with("/dev/") || path.split('/').any(|p| p == "..") {
            return Err(invalid(field(), "a device node must be under /dev"));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::P => 'p',
            LinuxDeviceType::A => return Err(invalid(field(), "type \"a\" is not a node type")),
        };
        let number =
            |n: i64| u32::try_from(n).map_err(|_| invalid(field(), format!("device number {n}")));
        let device = Device {
            path: path.clone(),
            kind,
            major: number(d.major())?,
            minor: number(d.minor())?,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        };
        out.retain(|o| o.path != path);
        out.push(device);
    }
    Ok(out)
}

/// Each capability set as a bit mask. Names come from the spec as `CAP_*`; the kernel's
/// numbers come from rustix's table.
fn capabilities(
    caps: Option<&oci_spec::runtime::LinuxCapabilities>,
) -> Result<Capabilities, SpecError> {
    let Some(caps) = caps else {
        return Ok(Capabilities::default());
    };
    let mask =
        |field: &str, set: &Option<oci_spec::runtime::Capabilities>| -> Result<u64, SpecError> {
            let mut m = 0u64;
            for cap in set.iter().flatten() {
                let name = cap.to_string();
                let bit = rustix::thread::CapabilitySet::from_name(&name).ok_or_else(|| {
                    unsupported(
                        format!("process.capabilities.{field}"),
                        format!("unknown capability CAP_{name}"),
                    )
                })?;
                m |= bit.bits();
            }
            Ok(m)
        };
    Ok(Capabilities {
        bounding: mask("bounding", caps.bounding())?,
        effective: mask("effective", caps.effective())?,
        inheritable: mask("inheritable", caps.inheritable())?,
        permitted: mask("permitted", caps.permitted())?,
        ambient: mask("ambient", caps.ambient())?,
    })
}

fn rlimit_number(t: PosixRlimitType) -> u32 {
    match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

#[cfg(test)]
mod tests;
