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
const MOVE_TIMEOUT: Duration = Duration::from_secs(30);

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
        let dir = Path::new(&expanded).join(&unit);
        Ok(Scope {
            path: path.to_owned(),
            slice: slice.to_owned(),
            unit,
            dir,
        })
    }

    /// Has systemd make the scope with `pid` in it and the spec's limits, and waits until the
    /// process is in it. A scope of the same name left by a dead container is stopped
    /// first, if nothing runs in it any more.
    pub fn start(&self, pid: u32, resources: Option<&LinuxResources>) -> Result<(), String> {
        let mut props = PropertiesBuilder::default_cgroup(&self.slice, &self.unit)
            .description(format!("wasmedge-aot-shim container {}", self.unit))
            .pids(vec![pid])
            .build();
        if let Some(r) = resources {
            props.extend(properties(r, super::is_v2())?);
        }
        let client = SystemdClient::new(&self.unit, props).map_err(|e| e.to_string())?;
        if let Err(e) = client.start() {
            if !client.exists() || super::populated(&self.dir) {
                return Err(format!("start {} in {}: {e}", self.unit, self.slice));
            }
            // A dead container's unit, empty: stop it (it resets a failed one) and retry.
            client
                .stop()
                .map_err(|e| format!("stop the stale {}: {e}", self.unit))?;
            client
                .start()
                .map_err(|e| format!("start {} in {}: {e}", self.unit, self.slice))?;
        }
        self.wait_until_in(pid)
    }

    /// Waits until `/proc/<pid>/cgroup` shows the scope: systemd moves the process when the
    /// unit's start job runs, after `StartTransientUnit` has returned.
    fn wait_until_in(&self, pid: u32) -> Result<(), String> {
        let suffix = format!("/{}", self.unit);
        let file = format!("/proc/{pid}/cgroup");
        let deadline = Instant::now() + MOVE_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
            if text.lines().any(|l| l.ends_with(&suffix)) {
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
            let per_sec = (quota as u64 * 1_000_000) / period;
            push(sd::cpu::quota(per_sec.div_ceil(10_000) * 10_000))?;
        } else if quota < 0 {
            push(sd::cpu::quota(u64::MAX))?;
        }
        for (list, f) in [
            (c.cpus(), sd::cpuset::cpus as fn(&str) -> _),
            (c.mems(), sd::cpuset::mems),
        ] {
            if let Some(list) = list.as_deref().filter(|l| !l.is_empty()) {
                let (name, mask) = f(list).map_err(|e| format!("cpuset {list:?}: {e}"))?;
                masks.push((name, Value::from(mask)));
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

/// cgroup v1's cpu.shares (2..262144) as v2's cpu.weight (1..10000), the conversion runc and
/// the kubelet use.
fn cpu_weight(shares: u64) -> u64 {
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
    fn cpu_shares_convert_to_weights_as_the_kubelet_does() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
    }
}
