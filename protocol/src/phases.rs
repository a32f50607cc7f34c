//! Node-wide sums of the time each container spent in each phase of create and start, for
//! `wasmedge-shimctl stats`.
//!
//! File: `phases.json` inside the cache's own layout (`<cache_dir>/v1/phases.json`; the cache
//! crate owns where it lives, its lock and how it is replaced: `wasmedge_aot_cache::side`), a
//! JSON object `{"version": 1, "containers": N, "native": N, "interpreter": N, "hash_us": ..,
//! "lookup_us": .., "compile_us": .., "fork_us": .., "plan_us": .., "cgroup_us": ..,
//! "namespaces_us": .., "mounts_us": .., "pivot_us": .., "credentials_us": .., "seccomp_us":
//! .., "load_us": .., "instantiate_us": .., "run_us": ..}` (the isolation steps, the fork and
//! the plan may be absent in older files: zero).
//! Every shim adds one container's figures when the container exits ([`record`]);
//! `wasmedge-shimctl stats` reads them ([`read`]). Nothing is recorded for a cache that does
//! not exist or is not trusted. Reads are bounded; an unreadable or corrupt file counts from
//! zero: these are statistics, never worth failing a container for. The format lives here,
//! beside the [`Timings`] it sums, because the shim writes it and the admin tool reads it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::control::{Tier, Timings};

pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTotals {
    pub version: u32,
    pub containers: u64,
    pub native: u64,
    /// Of the native starts, how many ran code of each optimisation level (the quick tier's
    /// and the full one's), as `[O0, O1, O2, O3]`.
    #[serde(default)]
    pub native_by_level: [u64; 4],
    pub interpreter: u64,
    pub hash_us: u64,
    pub lookup_us: u64,
    pub compile_us: u64,
    #[serde(default)]
    pub fork_us: u64,
    #[serde(default)]
    pub plan_us: u64,
    #[serde(default)]
    pub cgroup_us: u64,
    #[serde(default)]
    pub namespaces_us: u64,
    #[serde(default)]
    pub mounts_us: u64,
    #[serde(default)]
    pub pivot_us: u64,
    #[serde(default)]
    pub credentials_us: u64,
    #[serde(default)]
    pub seccomp_us: u64,
    pub load_us: u64,
    pub instantiate_us: u64,
    pub run_us: u64,
}

impl PhaseTotals {
    /// Each phase's name and total, in the order `wasmedge-shimctl stats` lists them.
    pub fn phases(&self) -> [(&'static str, u64); 14] {
        [
            ("hash", self.hash_us),
            ("lookup", self.lookup_us),
            ("compile", self.compile_us),
            ("fork", self.fork_us),
            ("plan", self.plan_us),
            ("cgroup", self.cgroup_us),
            ("namespaces", self.namespaces_us),
            ("mounts", self.mounts_us),
            ("pivot", self.pivot_us),
            ("credentials", self.credentials_us),
            ("seccomp", self.seccomp_us),
            ("load", self.load_us),
            ("instantiate", self.instantiate_us),
            ("run", self.run_us),
        ]
    }

    fn add(&mut self, t: &Timings, run_us: u64) {
        self.version = VERSION;
        self.containers += 1;
        if t.tier == Tier::Native {
            self.native += 1;
            if let Some(level) = t.opt_level.filter(|l| *l < 4) {
                self.native_by_level[level as usize] += 1;
            }
        } else {
            self.interpreter += 1;
        }
        self.hash_us += t.hash_us;
        self.lookup_us += t.lookup_us;
        self.compile_us += t.compile_us;
        self.fork_us += t.fork_us;
        self.plan_us += t.plan_us;
        self.cgroup_us += t.cgroup_us;
        self.namespaces_us += t.namespaces_us;
        self.mounts_us += t.mounts_us;
        self.pivot_us += t.pivot_us;
        self.credentials_us += t.credentials_us;
        self.seccomp_us += t.seccomp_us;
        self.load_us += t.load_us;
        self.instantiate_us += t.instantiate_us;
        self.run_us += run_us;
    }
}

/// Reads the totals of the cache at `cache_dir`; missing or corrupt means zero.
pub fn read(cache_dir: &Path) -> PhaseTotals {
    wasmedge_aot_cache::read_phase_totals(cache_dir)
        .and_then(|b| parse(&b))
        .unwrap_or_default()
}

fn parse(bytes: &[u8]) -> Option<PhaseTotals> {
    serde_json::from_slice::<PhaseTotals>(bytes)
        .ok()
        .filter(|t| t.version == VERSION)
}

/// Adds one container's figures to the totals of the cache at `cache_dir`.
pub fn record(cache_dir: &Path, t: &Timings, run_us: u64) -> Result<(), wasmedge_aot_cache::Error> {
    wasmedge_aot_cache::update_phase_totals(cache_dir, |old| {
        let mut totals = old.and_then(|b| parse(&b)).unwrap_or_default();
        totals.add(t, run_us);
        serde_json::to_vec_pretty(&totals).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(tier: Tier) -> Timings {
        Timings {
            hash_us: 1,
            lookup_us: 2,
            compile_us: 3,
            fork_us: 12,
            plan_us: 13,
            cgroup_us: 6,
            namespaces_us: 7,
            mounts_us: 8,
            pivot_us: 9,
            credentials_us: 10,
            seccomp_us: 11,
            load_us: 4,
            instantiate_us: 5,
            tier,
            opt_level: (tier == Tier::Native).then_some(2),
            cache: crate::control::CacheOutcome::Hit,
        }
    }

    fn cache(dir: &Path) -> std::path::PathBuf {
        let root = dir.join("cache");
        drop(wasmedge_aot_cache::Cache::open(wasmedge_aot_cache::CacheConfig::new(&root)).unwrap());
        root
    }

    #[test]
    fn records_accumulate_and_survive_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = cache(dir.path());
        assert_eq!(read(&root), PhaseTotals::default());
        record(&root, &timings(Tier::Native), 10).unwrap();
        record(&root, &timings(Tier::Interpreter), 20).unwrap();
        let t = read(&root);
        assert_eq!((t.containers, t.native, t.interpreter), (2, 1, 1));
        assert_eq!((t.hash_us, t.load_us, t.run_us), (2, 8, 30));
        assert_eq!((t.cgroup_us, t.mounts_us, t.seccomp_us), (12, 16, 22));
        assert_eq!((t.fork_us, t.plan_us), (24, 26));

        let file = root.join("v1/phases.json");
        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(read(&root), PhaseTotals::default());
        record(&root, &timings(Tier::Native), 1).unwrap();
        assert_eq!(read(&root).containers, 1);
    }

    /// Issue 13, finding 2: the totals were written in the cache's parent through
    /// `phases.json.tmp.<pid>`, and a symlink planted there redirected the write.
    #[test]
    fn nothing_is_written_outside_the_cache_and_planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = cache(dir.path());
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"a file of root's").unwrap();
        // Every name a writer of the old code used, in the parent and in the cache.
        let pid = std::process::id();
        for d in [dir.path().to_owned(), root.join("v1")] {
            for name in [
                format!("phases.json.tmp.{pid}"),
                "phases.json".into(),
                "phases.lock".into(),
            ] {
                let _ = std::os::unix::fs::symlink(&victim, d.join(name));
            }
        }
        let before: Vec<_> = listing(dir.path());
        record(&root, &timings(Tier::Native), 10).unwrap();
        record(&root, &timings(Tier::Native), 10).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"a file of root's");
        assert_eq!(listing(dir.path()), before, "written outside the cache");
        assert_eq!(read(&root).containers, 2);
        assert!(std::fs::symlink_metadata(root.join("v1/phases.json"))
            .unwrap()
            .is_file());
    }

    /// A cache that does not exist is not created to hold statistics.
    #[test]
    fn a_missing_cache_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("none");
        assert!(record(&root, &timings(Tier::Native), 1).is_err());
        assert!(!root.exists());
    }

    fn listing(dir: &Path) -> Vec<(std::ffi::OsString, u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.path().symlink_metadata().unwrap();
                (e.file_name(), m.ino(), m.size())
            })
            .collect();
        v.sort();
        v
    }
}
