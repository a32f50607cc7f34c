//! A container's cgroup metrics as containerd's `Stats` returns them: cgroup v2's own
//! message (`io.containerd.cgroups.v2.Metrics`) on a v2 node, v1's on a v1 node, which is
//! what containerd's CRI reads each as (`ContainerStats`: `kubectl top`, the Horizontal Pod
//! Autoscaler, the kubelet's eviction).
//!
//! The v2 files are flat text (`memory.current`, `key value` lines of `memory.stat`): read
//! whole, each bounded by the kernel's own page-sized output.

use std::collections::HashMap;
use std::path::Path;

use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;

/// The cgroup metrics of process `pid`, as containerd's `Stats` returns them.
pub fn of_pid(pid: u32) -> Result<Any, String> {
    if super::is_v2() {
        let dir =
            containerd_shim::cgroup::get_cgroups_v2_path_by_pid(pid).map_err(|e| e.to_string())?;
        return containerd_shim::util::convert_to_any(Box::new(v2_metrics(&dir)))
            .map_err(|e| e.to_string());
    }
    let cg = containerd_shim::cgroup::get_cgroup(pid).map_err(|e| e.to_string())?;
    let mut m = containerd_shim::cgroup::collect_metrics(&cg).map_err(|e| e.to_string())?;
    // containerd-shim fills usage alone; the limit is what `docker stats` and CRI show too.
    if let Some(memory) = cg.controller_of::<cgroups_rs::fs::memory::MemController>() {
        let limit = memory.memory_stat().limit_in_bytes;
        if limit > 0 {
            m.mut_memory().mut_usage().set_limit(limit as u64);
        }
    }
    containerd_shim::util::convert_to_any(Box::new(m)).map_err(|e| e.to_string())
}

/// The v2 metrics of the cgroup at `dir`. A controller whose files are missing (not
/// enabled for the cgroup) is left out, as containerd's own v2 manager leaves it.
pub fn v2_metrics(dir: &Path) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    if let Some(current) = value(&dir.join("pids.current")) {
        m.pids = MessageField::some(v2::PidsStat {
            current,
            // `max` is no limit, which containerd reports as 0.
            limit: value(&dir.join("pids.max")).unwrap_or(0),
            ..Default::default()
        });
    }
    if let Some(stat) = keyed(&dir.join("cpu.stat")) {
        let k = |name: &str| stat.get(name).copied().unwrap_or(0);
        m.cpu = MessageField::some(v2::CPUStat {
            usage_usec: k("usage_usec"),
            user_usec: k("user_usec"),
            system_usec: k("system_usec"),
            nr_periods: k("nr_periods"),
            nr_throttled: k("nr_throttled"),
            throttled_usec: k("throttled_usec"),
            nr_bursts: k("nr_bursts"),
            burst_usec: k("burst_usec"),
            ..Default::default()
        });
    }
    if let Some(usage) = value(&dir.join("memory.current")) {
        let stat = keyed(&dir.join("memory.stat")).unwrap_or_default();
        let k = |name: &str| stat.get(name).copied().unwrap_or(0);
        m.memory = MessageField::some(v2::MemoryStat {
            anon: k("anon"),
            file: k("file"),
            kernel_stack: k("kernel_stack"),
            slab: k("slab"),
            sock: k("sock"),
            shmem: k("shmem"),
            file_mapped: k("file_mapped"),
            file_dirty: k("file_dirty"),
            file_writeback: k("file_writeback"),
            anon_thp: k("anon_thp"),
            inactive_anon: k("inactive_anon"),
            active_anon: k("active_anon"),
            inactive_file: k("inactive_file"),
            active_file: k("active_file"),
            unevictable: k("unevictable"),
            slab_reclaimable: k("slab_reclaimable"),
            slab_unreclaimable: k("slab_unreclaimable"),
            pgfault: k("pgfault"),
            pgmajfault: k("pgmajfault"),
            workingset_refault: k("workingset_refault_anon") + k("workingset_refault_file"),
            workingset_activate: k("workingset_activate_anon") + k("workingset_activate_file"),
            workingset_nodereclaim: k("workingset_nodereclaim"),
            pgrefill: k("pgrefill"),
            pgscan: k("pgscan"),
            pgsteal: k("pgsteal"),
            pgactivate: k("pgactivate"),
            pgdeactivate: k("pgdeactivate"),
            pglazyfree: k("pglazyfree"),
            pglazyfreed: k("pglazyfreed"),
            thp_fault_alloc: k("thp_fault_alloc"),
            thp_collapse_alloc: k("thp_collapse_alloc"),
            usage,
            // `max` is no limit: the largest value, as containerd's v2 manager reports it.
            usage_limit: value(&dir.join("memory.max")).unwrap_or(u64::MAX),
            swap_usage: value(&dir.join("memory.swap.current")).unwrap_or(0),
            swap_limit: value(&dir.join("memory.swap.max")).unwrap_or(u64::MAX),
            max_usage: value(&dir.join("memory.peak")).unwrap_or(0),
            swap_max_usage: value(&dir.join("memory.swap.peak")).unwrap_or(0),
            ..Default::default()
        });
    }
    if let Some(events) = keyed(&dir.join("memory.events")) {
        let k = |name: &str| events.get(name).copied().unwrap_or(0);
        m.memory_events = MessageField::some(v2::MemoryEvents {
            low: k("low"),
            high: k("high"),
            max: k("max"),
            oom: k("oom"),
            oom_kill: k("oom_kill"),
            oom_group_kill: k("oom_group_kill"),
            ..Default::default()
        });
    }
    m
}

/// A one-value file (`memory.current`); `None` when it is missing or says `max`.
fn value(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// A flat-keyed file (`key value` lines: `memory.stat`, `cpu.stat`, `memory.events`).
fn keyed(file: &Path) -> Option<HashMap<String, u64>> {
    let text = std::fs::read_to_string(file).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_files_fill_the_v2_message_and_max_means_no_limit() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w("pids.current", "3\n");
        w("pids.max", "max\n");
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_throttled 2\n",
        );
        w("memory.current", "1048576\n");
        w("memory.max", "67108864\n");
        w("memory.swap.max", "max\n");
        w("memory.stat", "anon 4096\nfile 8192\ninactive_file 4096\nworkingset_refault_anon 1\nworkingset_refault_file 2\n");
        w("memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n");
        let m = v2_metrics(dir.path());
        assert_eq!((m.pids.current, m.pids.limit), (3, 0));
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.nr_throttled, m.cpu.nr_periods),
            (1500, 2, 0)
        );
        assert_eq!(m.memory.usage, 1 << 20);
        assert_eq!(m.memory.usage_limit, 64 << 20);
        assert_eq!(m.memory.swap_limit, u64::MAX);
        assert_eq!(
            (m.memory.inactive_file, m.memory.workingset_refault),
            (4096, 3)
        );
        assert_eq!((m.memory_events.max, m.memory_events.oom_kill), (5, 1));
    }

    #[test]
    fn a_controller_without_files_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.current"), "10\n").unwrap();
        let m = v2_metrics(dir.path());
        assert!(m.pids.is_none() && m.cpu.is_none() && m.memory_events.is_none());
        assert_eq!((m.memory.usage, m.memory.usage_limit), (10, u64::MAX));
    }
}
