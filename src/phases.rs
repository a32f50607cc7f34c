//! Node-wide sums of the time each container spent in each phase of create and start, for
//! `wasmedge-shimctl stats`.
//!
//! File: `phases.json` next to the cache directory (`<cache_dir>/../phases.json`), a JSON
//! object `{"version": 1, "containers": N, "native": N, "interpreter": N, "hash_us": ..,
//! "lookup_us": .., "compile_us": .., "cgroup_us": .., "namespaces_us": .., "mounts_us": ..,
//! "pivot_us": .., "credentials_us": .., "seccomp_us": .., "load_us": .., "instantiate_us":
//! .., "run_us": ..}` (the isolation steps may be absent in older files: zero).
//! Every shim adds one container's figures when the container exits, under an exclusive
//! `flock` of `phases.lock`, writing a temporary file and renaming it over the old one. Reads
//! are bounded to [`MAX_FILE`] bytes; an unreadable or corrupt file counts from zero: these
//! are statistics, never worth failing a container for.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use wasmedge_aot_protocol::container::{Tier, Timings};

pub const VERSION: u32 = 1;
const MAX_FILE: u64 = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTotals {
    pub version: u32,
    pub containers: u64,
    pub native: u64,
    pub interpreter: u64,
    pub hash_us: u64,
    pub lookup_us: u64,
    pub compile_us: u64,
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
    fn add(&mut self, t: &Timings, run_us: u64) {
        self.version = VERSION;
        self.containers += 1;
        if t.tier == Tier::Native {
            self.native += 1;
        } else {
            self.interpreter += 1;
        }
        self.hash_us += t.hash_us;
        self.lookup_us += t.lookup_us;
        self.compile_us += t.compile_us;
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

/// Where the totals for the cache at `cache_dir` live.
pub fn file_for(cache_dir: &Path) -> PathBuf {
    cache_dir
        .parent()
        .unwrap_or(Path::new("/"))
        .join("phases.json")
}

/// Reads the totals; missing or corrupt means zero.
pub fn read(path: &Path) -> PhaseTotals {
    let mut text = String::new();
    let ok = File::open(path)
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .is_ok();
    if !ok {
        return PhaseTotals::default();
    }
    match serde_json::from_str::<PhaseTotals>(&text) {
        Ok(t) if t.version == VERSION => t,
        _ => PhaseTotals::default(),
    }
}

/// Adds one container's figures to the totals at `path`.
pub fn record(path: &Path, t: &Timings, run_us: u64) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("phases.lock"))?;
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))?;
    let mut totals = read(path);
    totals.add(t, run_us);
    let tmp = dir.join(format!("phases.json.tmp.{}", std::process::id()));
    fs::write(&tmp, serde_json::to_vec_pretty(&totals)?)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(tier: Tier) -> Timings {
        Timings {
            hash_us: 1,
            lookup_us: 2,
            compile_us: 3,
            cgroup_us: 6,
            namespaces_us: 7,
            mounts_us: 8,
            pivot_us: 9,
            credentials_us: 10,
            seccomp_us: 11,
            load_us: 4,
            instantiate_us: 5,
            tier,
            cache: wasmedge_aot_protocol::container::CacheOutcome::Hit,
        }
    }

    #[test]
    fn records_accumulate_and_survive_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phases.json");
        assert_eq!(read(&path), PhaseTotals::default());
        record(&path, &timings(Tier::Native), 10).unwrap();
        record(&path, &timings(Tier::Interpreter), 20).unwrap();
        let t = read(&path);
        assert_eq!((t.containers, t.native, t.interpreter), (2, 1, 1));
        assert_eq!((t.hash_us, t.load_us, t.run_us), (2, 8, 30));
        assert_eq!((t.cgroup_us, t.mounts_us, t.seccomp_us), (12, 16, 22));

        fs::write(&path, b"{not json").unwrap();
        assert_eq!(read(&path), PhaseTotals::default());
        record(&path, &timings(Tier::Native), 1).unwrap();
        assert_eq!(read(&path).containers, 1);
    }

    #[test]
    fn lives_next_to_the_cache() {
        assert_eq!(
            file_for(Path::new("/var/lib/wasmedge-aot-shim/cache")),
            PathBuf::from("/var/lib/wasmedge-aot-shim/phases.json")
        );
    }
}
