//! The systemd cgroup driver: a container's cgroup is a transient scope that systemd makes
//! and owns, as runc's `--systemd-cgroup` makes it.
//!
//! With `cgroupDriver: systemd` the kubelet puts each pod in a slice
//! (`kubepods-burstable-pod<uid>.slice`) and containerd's CRI gives the runtime a
//! `linux.cgroupsPath` of the form `slice:prefix:name`. systemd is the single writer of the
//! cgroup tree on such a node: a directory made behind its back lies outside the pod's slice,
//! its limits, its QoS class, the kubelet's eviction accounting and `kubectl top`. So the
//! container's process is handed to systemd, which creates `<prefix>-<name>.scope` in the
//! slice (`StartTransientUnit`, `Delegate=yes`, the spec's limits as unit properties, the
//! process in `PIDs`) and moves the process into it. The shim waits until the process is
//! there before it sends the process its plan, so no byte of the tenant is read before: the
//! process sits in its `receive_plan` until then. The limits are also written to the
//! scope's cgroup files (delegated to us), as runc does, for what systemd has no property for.
//!
//! systemd is reached on the system bus through cgroups-rs's client (zbus), one connection
//! per call: a create makes one call, a delete two or three.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::systemd::props::PropertiesBuilder;
use cgroups_rs::systemd::{self as sd, Property, SystemdClient};
use oci_spec::runtime::LinuxResources;
use zbus::zvariant::Value;

/// How long systemd may take to move a process into its new scope (runc waits 30 s for the
/// unit's start job; a start that takes this long on a healthy node is a stuck systemd).
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest unit name systemd accepts.
const UNIT_NAME_MAX: usize = 255;

/// The cgroup controllers, whose names systemd escapes as the first part of a cgroup's name.
const CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "io",
    "blkio",
    "memory",
    "devices",
    "pids",
    "hugetlb",
    "rdma",
    "misc",
    "freezer",
    "net_cls",
    "net_prio",
    "perf_event",
];

/// The highest CPU or memory node a cpuset may name (systemd's own limit for its masks).
const CPUSET_MAX: usize = 8192;

/// A container's scope: `<prefix>-<name>.scope` in `slice`, from a `slice:prefix:name` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The path as the spec gave it.
    pub path: String,
    pub slice: String,
    pub unit: String,
    /// The scope's directory relative to each hierarchy's root, e.g.
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-c1.scope`.
    pub dir: PathBuf,
}

impl Scope {
    /// Parses `slice:prefix:name` as runc's systemd driver does; `Err` says what is wrong.
    pub fn parse(path: &str) -> Result<Scope, String> {
        let [slice, prefix, name] = path.split(':').collect::<Vec<_>>()[..] else {
            return Err("a systemd cgroup path is slice:prefix:name".into());
        };
        // An empty slice is runc's default for a container of no slice.
        let slice = if slice.is_empty() {
            sd::DEFAULT_SLICE
        } else {
            slice
        };
        // systemd's unit names are at most 255 bytes; a longer one is no unit (and expanding
        // a slice's name costs time in its number of parts).
        if slice.len() > UNIT_NAME_MAX {
            return Err(format!(
                "slice name of {} bytes: a unit name has at most {UNIT_NAME_MAX}",
                slice.len()
            ));
        }
        let expanded = sd::utils::expand_slice(slice).map_err(|_| {
            format!(
                "slice {slice:?} is not a slice name (NAME.slice, dash-separated parts, no '/')"
            )
        })?;
        if name.is_empty() {
            return Err("the name after the second ':' is empty".into());
        }
        // A unit name of systemd's characters only: no '/', so the name is one directory
        // inside the slice's, and nothing a shell or a path could read otherwise.
        for (what, part) in [("prefix", prefix), ("name", name)] {
            if let Some(c) = part
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "-_.@\\".contains(*c)))
            {
                return Err(format!(
                    "the {what} {part:?} has {c:?}, not allowed in a unit name"
                ));
            }
        }
        if name.ends_with(sd::SLICE_SUFFIX) {
            return Err(format!(
                "{name:?} names a slice: a container's cgroup is a scope"
            ));
        }
        let unit = if prefix.is_empty() {
            format!("{name}{}", sd::SCOPE_SUFFIX)
        } else {
            format!("{prefix}-{name}{}", sd::SCOPE_SUFFIX)
        };
        if unit.len() > UNIT_NAME_MAX {
            return Err(format!(
                "unit name {unit:?} has {} bytes, more than systemd's {UNIT_NAME_MAX}",
                unit.len()
            ));
        }
        // systemd names a unit's cgroup after the unit, except where the name could be read
        // as a cgroup file: then it puts a '_' in front. The shim would wait for, and remove,
        // a directory other than the scope's: refused.
        let stem = unit.split('.').next().unwrap_or_default();
        if unit.starts_with(['_', '.']) || stem == "cgroup" || CONTROLLERS.contains(&stem) {
            return Err(format!(
                "unit name {unit:?} is one whose cgroup systemd names otherwise (it begins \
                 with '_', or with a controller's name and a '.')"
            ));
        }
        let dir = Path::new(&expanded).join(&unit);
        Ok(Scope {
            path: path.to_owned(),
            slice: slice.to_owned(),
            unit,
            dir,
        })
    }

    /// Has systemd make the scope with `pid` in it and the spec's limits. A unit of that name
    /// that exists already, whatever it is, fails the start and is left alone: unit names are
    /// node-wide, and the spec's path chose this one.
    pub fn start(
        &self,
        pid: u32,
        resources: Option<&LinuxResources>,
        devices: &super::devices::Policy,
    ) -> Result<(), String> {
        let mut props = PropertiesBuilder::default_cgroup(&self.slice, &self.unit)
            .description(format!("wasmedge-aot-shim container {}", self.unit))
            .pids(vec![pid])
            .build();
        if let Some(r) = resources {
            props.extend(properties(r, super::is_v2())?);
        }
        props.extend(device_properties(devices));
        let client = SystemdClient::new(&self.unit, props).map_err(|e| e.to_string())?;
        client
            .start()
            .map_err(|e| format!("start {} in {}: {e}", self.unit, self.slice))
    }

    /// Waits until `/proc/<pid>/cgroup` shows the scope: systemd moves the process when the
    /// unit's start job runs, after `StartTransientUnit` has returned.
    pub fn wait_until_in(&self, pid: u32) -> Result<(), String> {
        let suffix = format!("/{}", self.unit);
        let file = format!("/proc/{pid}/cgroup");
        let deadline = Instant::now() + MOVE_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
            // v2's one line; on v1 the memory controller's, which the limits are in (the
            // name=systemd line moves first).
            let v2 = super::is_v2();
            let moved = text.lines().any(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next(), f.next(), f.next());
                let ours = if v2 {
                    controllers == Some("")
                } else {
                    controllers.is_some_and(|c| c.split(',').any(|c| c == "memory"))
                };
                ours && path.is_some_and(|p| p.ends_with(&suffix))
            });
            if moved {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "systemd did not move the process into {} within {MOVE_TIMEOUT:?}",
                    self.unit
                ));
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Sets the unit's resource properties on a running scope (`SetUnitProperties`).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), String> {
        let props = properties(resources, super::is_v2())?;
        let mut client = SystemdClient::new(&self.unit, vec![]).map_err(|e| e.to_string())?;
        client
            .set_properties(&props)
            .map_err(|e| format!("set the properties of {}: {e}", self.unit))
    }

    /// Stops the unit (systemd kills what is left in it and removes its cgroup); a unit that
    /// is gone already is no error.
    pub fn stop(&self) -> Result<(), String> {
        let client = SystemdClient::new(&self.unit, vec![]).map_err(|e| e.to_string())?;
        client
            .stop()
            .map_err(|e| format!("stop {}: {e}", self.unit))
    }
}

/// The device policy as `DevicePolicy` and `DeviceAllow` ([`Policy::systemd_allow`]).
///
/// [`Policy::systemd_allow`]: super::devices::Policy::systemd_allow
fn device_properties(devices: &super::devices::Policy) -> Vec<Property<'static>> {
    let groups = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let (policy, allow) = devices.systemd_allow(&groups);
    vec![
        ("DevicePolicy", Value::from(policy)),
        ("DeviceAllow", Value::from(allow)),
    ]
}

/// The spec's limits as systemd's unit properties, as runc's systemd driver sets them: what
/// systemd would otherwise write back over the cgroup files when it reloads.
fn properties(r: &LinuxResources, v2: bool) -> Result<Vec<Property<'static>>, String> {
    let mut props: Vec<Property<'static>> = Vec::new();
    // Masks (cpuset) are byte arrays; every other property is a number.
    let mut masks: Vec<Property<'static>> = Vec::new();
    let mut push = |p: Result<(&'static str, u64), sd::error::Error>| -> Result<(), String> {
        let (name, value) = p.map_err(|e| e.to_string())?;
        props.push((name, Value::U64(value)));
        Ok(())
    };
    if let Some(m) = r.memory() {
        if let Some(limit) = m.limit().filter(|l| *l != 0) {
            push(sd::memory::limit(limit, v2))?;
        }
        if v2 {
            if let Some(low) = m.reservation().filter(|l| *l != 0) {
                push(sd::memory::low(low, v2))?;
            }
            // The spec's swap is memory + swap; systemd's MemorySwapMax is swap alone.
            if let (Some(swap), Some(limit)) = (m.swap().filter(|s| *s != 0), m.limit()) {
                let alone = match (swap, limit) {
                    (-1, _) => -1,
                    (s, l) if l > 0 && s >= l => s - l,
                    (s, l) => {
                        return Err(format!(
                            "memory.swap {s} is below memory.limit {l} (swap is memory + swap)"
                        ))
                    }
                };
                push(sd::memory::swap(alone, v2))?;
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s != 0) {
            push(sd::cpu::shares(
                if v2 { cpu_weight(shares) } else { shares },
                v2,
            ))?;
        }
        let period = c.period().unwrap_or(0);
        let quota = c.quota().unwrap_or(0);
        if period != 0 {
            push(sd::cpu::period(period))?;
        }
        if quota > 0 {
            let period = if period == 0 { 100_000 } else { period };
            // CPUQuotaPerSecUSec is microseconds per second, and systemd keeps whole
            // percents of a CPU: round up to 10 ms so the cgroup gets at least the quota.
            let per_sec = (quota as u128 * 1_000_000) / period as u128;
            let per_sec = u64::try_from(per_sec.div_ceil(10_000) * 10_000).unwrap_or(u64::MAX);
            push(sd::cpu::quota(per_sec))?;
        } else if quota < 0 || period != 0 {
            // No quota (a resize that lifts the limit sends a period alone): infinity, as
            // runc sets it, or the scope would keep its old quota.
            push(sd::cpu::quota(u64::MAX))?;
        }
        for (name, list) in [("AllowedCPUs", c.cpus()), ("AllowedMemoryNodes", c.mems())] {
            if let Some(list) = list.as_deref().filter(|l| !l.is_empty()) {
                masks.push((name, Value::from(cpuset_mask(list)?)));
            }
        }
    }
    if let Some(p) = r.pids() {
        if p.limit() > 0 || p.limit() == -1 {
            push(sd::pids::max(p.limit()))?;
        }
    }
    props.append(&mut masks);
    Ok(props)
}

/// A cpuset list (`0-3,8`) as systemd's mask: byte `i`, bit `j` is CPU (or node) `8i + j`.
fn cpuset_mask(list: &str) -> Result<Vec<u8>, String> {
    let mut mask = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let parse = |n: &str| {
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n < CPUSET_MAX)
                .ok_or_else(|| format!("cpuset {list:?}: {n:?} is not a number below {CPUSET_MAX}"))
        };
        let (first, last) = (parse(first)?, parse(last)?);
        if first > last {
            return Err(format!("cpuset {list:?}: {part:?} is a range backwards"));
        }
        if mask.len() <= last / 8 {
            mask.resize(last / 8 + 1, 0);
        }
        for n in first..=last {
            mask[n / 8] |= 1 << (n % 8);
        }
    }
    Ok(mask)
}

/// cgroup v1's cpu.shares (2..262144) as v2's cpu.weight (1..10000), the conversion runc and
/// the kubelet use.
pub(super) fn cpu_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_systemd_path_names_a_scope_in_its_expanded_slice() {
        let s = Scope::parse("kubepods-burstable-pod1.slice:cri-containerd:c1").unwrap();
        assert_eq!(s.slice, "kubepods-burstable-pod1.slice");
        assert_eq!(s.unit, "cri-containerd-c1.scope");
        assert_eq!(
            s.dir,
            Path::new("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-c1.scope")
        );
        let s = Scope::parse(":ctr:t1").unwrap();
        assert_eq!(
            (s.slice.as_str(), s.dir.as_path()),
            ("system.slice", Path::new("system.slice/ctr-t1.scope"))
        );
        assert_eq!(Scope::parse("a.slice::c1").unwrap().unit, "c1.scope");
    }

    #[test]
    fn device_rules_go_to_systemd_as_an_array_of_path_and_access() {
        let cri = crate::cgroup::devices::Policy::of_spec(&[], &[]).unwrap();
        let props = device_properties(&cri);
        assert_eq!(props[0].0, "DevicePolicy");
        assert_eq!(props[0].1.value_signature().to_string(), "s");
        assert_eq!(props[1].0, "DeviceAllow");
        assert_eq!(props[1].1.value_signature().to_string(), "a(ss)");
        let all = crate::cgroup::devices::Policy::of_spec(
            &[oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .access("rwm")
                .build()
                .unwrap()],
            &[],
        )
        .unwrap();
        let props = device_properties(&all);
        assert_eq!(props[0].1, Value::from("auto"));
        assert_eq!(
            props[1].1.value_signature().to_string(),
            "a(ss)",
            "empty, typed"
        );
    }

    #[test]
    fn a_systemd_path_that_could_name_another_directory_is_refused() {
        for (path, says) in [
            ("a.slice:p:../../x", "not allowed in a unit name"),
            ("a.slice:p/q:c1", "not allowed in a unit name"),
            ("a.slice:p:c 1", "not allowed in a unit name"),
            ("a.slice:p:c\n1", "not allowed in a unit name"),
            ("../a.slice:p:c1", "is not a slice name"),
            ("a--b.slice:p:c1", "is not a slice name"),
            ("a.slice:p:", "is empty"),
            ("a.slice:p:pod.slice", "names a slice"),
        ] {
            let e = Scope::parse(path).unwrap_err();
            assert!(e.contains(says), "{path:?}: {e}");
        }
    }

    #[test]
    fn limits_become_the_properties_runc_sets() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864,"swap":134217728},
                "cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0-1"},
                "pids":{"limit":100}}"#,
        )
        .unwrap();
        let props = properties(&r, true).unwrap();
        let get = |n: &str| props.iter().find(|p| p.0 == n).map(|p| &p.1);
        let u64_of = |n: &str| match get(n) {
            Some(Value::U64(v)) => Some(*v),
            _ => None,
        };
        assert_eq!(u64_of("MemoryMax"), Some(67108864));
        assert_eq!(u64_of("MemorySwapMax"), Some(67108864));
        assert_eq!(u64_of("CPUWeight"), Some(39));
        assert_eq!(u64_of("CPUQuotaPerSecUSec"), Some(500000));
        assert_eq!(u64_of("CPUQuotaPeriodUSec"), Some(100000));
        assert_eq!(u64_of("TasksMax"), Some(100));
        assert!(get("AllowedCPUs").is_some());
        let v1 = properties(&r, false).unwrap();
        assert!(v1
            .iter()
            .any(|p| p.0 == "MemoryLimit" || p.0 == "CPUShares"));
        let bad: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":100,"swap":50}}"#).unwrap();
        assert!(properties(&bad, true).unwrap_err().contains("memory.swap"));
    }

    #[test]
    fn a_cpuset_is_systemds_little_endian_mask_and_a_huge_one_is_refused() {
        assert_eq!(cpuset_mask("16").unwrap(), [0, 0, 1]);
        assert_eq!(cpuset_mask("0-3,8").unwrap(), [0x0f, 0x01]);
        assert_eq!(cpuset_mask("1,3 , 5-6").unwrap(), [0b0110_1010]);
        assert!(cpuset_mask("0-4000000000")
            .unwrap_err()
            .contains("below 8192"));
        assert!(cpuset_mask("3-1").unwrap_err().contains("backwards"));
        assert!(cpuset_mask("x").is_err());
    }

    #[test]
    fn a_unit_name_systemd_would_escape_or_could_not_hold_is_refused() {
        for (path, says) in [
            ("a.slice::cpu", "names otherwise"),
            ("a.slice::memory", "names otherwise"),
            ("a.slice::_x", "names otherwise"),
            ("a.slice::cgroup.procs", "names otherwise"),
        ] {
            let e = Scope::parse(path).unwrap_err();
            assert!(e.contains(says), "{path:?}: {e}");
        }
        let long = format!("{}.slice:p:c", "a-".repeat(20_000));
        assert!(Scope::parse(&long).unwrap_err().contains("at most 255"));
        let long = format!("a.slice:p:{}", "c".repeat(300));
        assert!(Scope::parse(&long)
            .unwrap_err()
            .contains("more than systemd's 255"));
        // CRI's names are fine.
        assert!(Scope::parse("kubepods-besteffort-pod1.slice:cri-containerd:abc").is_ok());
    }

    #[test]
    fn a_lifted_cpu_limit_is_infinity_and_a_huge_quota_does_not_wrap() {
        let r: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"quota":0,"period":100000}}"#).unwrap();
        let props = properties(&r, true).unwrap();
        assert!(props
            .iter()
            .any(|p| p.0 == "CPUQuotaPerSecUSec" && p.1 == Value::U64(u64::MAX)));
        let r: LinuxResources =
            serde_json::from_str(r#"{"cpu":{"quota":9223372036854775807,"period":1}}"#).unwrap();
        let props = properties(&r, true).unwrap();
        assert!(props
            .iter()
            .any(|p| p.0 == "CPUQuotaPerSecUSec" && p.1 == Value::U64(u64::MAX)));
    }

    #[test]
    fn cpu_shares_convert_to_weights_as_the_kubelet_does() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
    }
}
