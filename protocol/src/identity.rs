//! Which build and which configuration a shim runs, so that new containers go to a shim of
//! the installed binaries and the current configuration.
//!
//! A node shim serves every new container of its namespace for as long as it has a task. If
//! its grouping key named only the namespace, a changed config file or a new shim binary
//! would never take effect on a node that always runs a Wasm pod. So the key of a node shim
//! also names its [`Identity`]: the file identity (device, inode, size, mtime) of the shim
//! and runner executables and a digest of the config file's bytes. A `start` after an upgrade
//! computes another key, so containerd gets a new shim for the new container; running
//! containers stay with the shim that started them, which exits when it has none left.
//!
//! Each node shim publishes what it runs and how many tasks it serves in its run directory
//! (`<`[`STATE_ROOT`]`>/<namespace>-<socket>/`[`STATE_FILE`]), which `wasmedge-shimctl
//! check` reads. The shim owns these records (it alone writes them); they live here because
//! the admin tool reads them and must not link the shim.
//!
//! Digests are blake3, the hash the node already uses for modules, so this crate (which the
//! runner links too) brings no second hash function.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where node shims keep their run directories (one per namespace and socket).
pub const STATE_ROOT: &str = "/run/wasmedge-aot-shim";
/// A node shim's record of itself, in its run directory.
pub const STATE_FILE: &str = "shim.json";
/// Largest state file read back.
const STATE_MAX: usize = 16 * 1024;

/// The identity of an executable file: a new build installed over it changes at least one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileIdentity {
    /// Of the file `path` names (following symlinks: `/proc/self/exe` is the running binary).
    pub fn of(path: &Path) -> io::Result<FileIdentity> {
        let m = std::fs::metadata(path)?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

/// What a shim runs: its binaries and its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The shim executable; `None` if it could not be inspected.
    pub shim: Option<FileIdentity>,
    /// The runner it starts.
    pub runner: Option<FileIdentity>,
    /// blake3 of the config file's bytes (hex), `none` when there is no file.
    pub config: String,
}

impl Identity {
    pub fn of(shim: &Path, runner: &Path, config_digest: String) -> Identity {
        Identity {
            shim: FileIdentity::of(shim).ok(),
            runner: FileIdentity::of(runner).ok(),
            config: config_digest,
        }
    }

    /// 16 hex digits naming the identity in a grouping key.
    pub fn key(&self) -> String {
        let encoded = serde_json::to_vec(self).unwrap_or_default();
        blake3::hash(&encoded).to_hex()[..16].to_string()
    }
}

/// Loads the config at `path` as [`Config::load_from`] does (a missing or bad file gives the
/// defaults) and returns it with the digest of the very bytes it was parsed from.
pub fn load_config(path: &Path) -> (Config, String) {
    match std::fs::read(path) {
        Ok(bytes) => {
            let config = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|t| Config::parse(t).ok())
                .unwrap_or_default();
            (config, digest(&bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Config::default(), "none".into()),
        Err(_) => (Config::default(), "unreadable".into()),
    }
}

/// The digest [`load_config`] gives the file at `path` now.
pub fn config_digest(path: &Path) -> String {
    load_config(path).1
}

fn digest(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// A node shim's [`STATE_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimState {
    pub pid: u32,
    pub namespace: String,
    /// Its grouping key (`wasmedge-node-<identity key>`).
    pub group: String,
    /// The shim crate's version.
    pub version: String,
    pub identity: Identity,
    /// Tasks it serves now.
    pub tasks: usize,
    /// The address of the containerd that started it (its `-address`, containerd's GRPC
    /// socket): a starting shim sweeps only the dead shims of its own containerd, since
    /// several can run on one host (empty in states written before it was recorded).
    #[serde(default)]
    pub containerd: String,
}

impl ShimState {
    /// Writes the state into `dir` (a directory only root can write, see `leave_bundle`).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        wasmedge_aot_cache::atomic::write_atomic(
            &dir.join(STATE_FILE),
            &bytes,
            0o644,
            wasmedge_aot_cache::atomic::Durability::BestEffort,
        )
    }
}

/// The states of the node shims alive now, from the run directories under `state_root`. A
/// state whose pid is gone, or is no longer a shim, is a leftover and skipped.
pub fn live_shims(state_root: &Path, shim_binary: &str) -> Vec<(PathBuf, ShimState)> {
    let mut found = Vec::new();
    let Ok(dirs) = std::fs::read_dir(state_root) else {
        return found;
    };
    for d in dirs.flatten() {
        if let Some(state) = live_shim(&d.path(), shim_binary) {
            found.push((d.path(), state));
        }
    }
    found.sort_by_key(|(_, s)| s.pid);
    found
}

/// The state of the run directory `dir` if its shim (a process running `shim_binary`) is
/// alive; `None` for a dead shim's directory or one without a (readable) state file.
pub fn live_shim(dir: &Path, shim_binary: &str) -> Option<ShimState> {
    let state = read_state(&dir.join(STATE_FILE))?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", state.pid)).unwrap_or_default();
    let name = exe.file_name().unwrap_or_default().to_string_lossy();
    // A replaced binary reads as `<path> (deleted)`.
    (name == shim_binary || name.strip_suffix(" (deleted)") == Some(shim_binary)).then_some(state)
}

/// The state in the run directory `dir`, whether its shim lives or not.
pub fn state_in(dir: &Path) -> Option<ShimState> {
    read_state(&dir.join(STATE_FILE))
}

fn read_state(path: &Path) -> Option<ShimState> {
    serde_json::from_slice(&wasmedge_aot_cache::atomic::read_small(path, STATE_MAX)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_binary_or_config_is_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let (shim, runner, config) = (
            dir.path().join("shim"),
            dir.path().join("runner"),
            dir.path().join("config.toml"),
        );
        std::fs::write(&shim, b"build 1").unwrap();
        std::fs::write(&runner, b"runner 1").unwrap();
        let id = |_: ()| Identity::of(&shim, &runner, config_digest(&config));
        let first = id(());
        assert_eq!(first.config, "none");
        assert_eq!(first.key(), id(()).key(), "stable while nothing changes");
        assert_eq!(first.key().len(), 16);

        std::fs::write(&config, "cache_dir = \"/x\"\n").unwrap();
        let with_config = id(());
        assert_ne!(with_config.key(), first.key());
        assert_eq!(load_config(&config).0.cache_dir, PathBuf::from("/x"));

        // An installer writes the new build beside the old and renames it over.
        let next = dir.path().join("shim.new");
        std::fs::write(&next, b"build 2").unwrap();
        std::fs::rename(&next, &shim).unwrap();
        assert_ne!(id(()).key(), with_config.key());
    }

    #[test]
    fn states_of_dead_processes_are_skipped() {
        let root = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let me = me.file_name().unwrap().to_str().unwrap();
        let state = |pid: u32| ShimState {
            pid,
            namespace: "ns".into(),
            group: "wasmedge-node-0".into(),
            version: "0.1.0".into(),
            identity: Identity {
                shim: None,
                runner: None,
                config: "none".into(),
            },
            tasks: 2,
            containerd: "/run/containerd/containerd.sock".into(),
        };
        for (name, pid) in [("live", std::process::id()), ("dead", u32::MAX / 2)] {
            let d = root.path().join(name);
            std::fs::create_dir(&d).unwrap();
            state(pid).write(&d).unwrap();
        }
        let live = live_shims(root.path(), me);
        assert_eq!(live.len(), 1, "{live:?}");
        assert_eq!(live[0].1, state(std::process::id()));
    }
}
