//! Node configuration of the shim: where the AOT cache lives and when modules are compiled.
//!
//! Read from the TOML file named by `WASMEDGE_AOT_SHIM_CONFIG`, else
//! [`DEFAULT_CONFIG_PATH`]; a missing file means the defaults. Every shim process on a node
//! reads the same file, so they share one cache. A pod may override the compile policy with
//! the [`POLICY_ANNOTATION`] annotation.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmedge_aot_cache::{CacheConfig, HashThreads};

pub const CONFIG_ENV: &str = "WASMEDGE_AOT_SHIM_CONFIG";
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wasmedge-aot-shim/config.toml";
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/wasmedge-aot-shim/cache";
/// Per-pod (or per-container) override of [`Config::compile_policy`].
pub const POLICY_ANNOTATION: &str = "wasmedge-aot-shim.io/compile-policy";

/// When a module that is not in the cache gets compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Compile before the first start; every start runs native code.
    Sync,
    /// Start at once in the interpreter and compile in the background; later starts run
    /// native code.
    Tiered,
    /// Compile synchronously when the module is at most [`Config::sync_max_module_bytes`],
    /// else tiered: a small module compiles in well under a second, a large one can take
    /// minutes that no pod should wait for.
    #[default]
    Auto,
    /// Interpreter only; the cache is not touched.
    Off,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sync" => Ok(Policy::Sync),
            "tiered" => Ok(Policy::Tiered),
            "auto" => Ok(Policy::Auto),
            "off" => Ok(Policy::Off),
            other => Err(format!(
                "unknown compile policy {other:?} (expected sync, tiered, auto or off)"
            )),
        }
    }
}

/// Which containers share a shim process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// One shim (and one runner) for every Wasm container of a containerd namespace on the
    /// node: the runner's WasmEdge is linked and warmed once, so a container costs only its
    /// own process. Modules still run in separate processes, so a module that traps, runs
    /// out of memory or is killed takes down nothing else.
    #[default]
    Node,
    /// One shim per pod (by the CRI sandbox-id annotation, else per container), as runc
    /// does: a shim failure is confined to one pod, at ~10 MB and a runner start per pod.
    Pod,
}

/// Which images' Wasm layers (a module that is a layer of its own, see
/// [`crate::wasm_layer`]) this node runs.
///
/// The default is [`WasmLayers::Labelled`]. CRI knows an image by its config's digest, and
/// an unlabelled config (runwasi's builder writes them) says nothing of its module: anyone
/// who can pull an image onto the node (every pod author, on a node where all pods share
/// containerd's `k8s.io` namespace) can pull one with the same config and a manifest of
/// their own, and the containers of the other image may then run their module. A node that
/// runs such images, and trusts everyone who pulls onto it, sets `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WasmLayers {
    /// Any image whose config is for the `wasm` architecture: runwasi's images, whose
    /// configs name no layer, included. CRI knows an image by its config, so two such images
    /// with one config are one image to it.
    Any,
    /// Only images whose config names its Wasm layers
    /// ([`crate::wasm_layer::LAYERS_LABEL`], which `wasmedge-shimctl image build` writes).
    #[default]
    Labelled,
    /// None: an entrypoint that is no file in the rootfs is a Linux container's.
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub grouping: Grouping,
    /// Root of the node-wide AOT cache.
    pub cache_dir: PathBuf,
    pub compile_policy: Policy,
    /// Largest module compiled synchronously under [`Policy::Auto`].
    pub sync_max_module_bytes: u64,
    /// Size cap of the cache in bytes (least recently used entries are evicted); 0 = none.
    pub cache_max_bytes: u64,
    /// Most compiles at once on the node (they can take gigabytes each), besides the quick
    /// lane's.
    pub max_concurrent_compiles: usize,
    /// Compile slots of the quick lane: the first tier of a module of at most
    /// `sync_max_module_bytes` (the compile its first start waits for) takes one of these,
    /// never one of `max_concurrent_compiles`, so it never waits behind a big module's
    /// compile (`cache::Lane`).
    pub quick_compile_slots: usize,
    /// Longest a compile of one tier may run, in seconds; one past it is killed and recorded
    /// as failed (its module runs in the interpreter until `compile_retry_secs` pass). 0 =
    /// no deadline. The default leaves room for a 24 MB module at O2 on a loaded node
    /// (`profiling/levels.md`: 832 s here).
    pub compile_deadline_secs: u64,
    /// Most memory a compile may allocate (`RLIMIT_DATA` of the process running LLVM: its
    /// heap and every private writable mapping), in bytes; a compile over it fails as
    /// killed. 0 = no limit. LLVM at O2 takes 4-5 GB for a 24 MB module.
    pub compile_memory_max_bytes: u64,
    /// The unprivileged identity LLVM runs as (with no capability, `no_new_privs`, in a pid
    /// namespace of its own). Not 0; a uid no other process on the node uses is best.
    pub compile_uid: u32,
    pub compile_gid: u32,
    /// Niceness of compile processes (0..=19): a compile is the node's background work and
    /// never takes the CPU from running containers. Compiles run in processes of their own,
    /// in the shim's cgroup, never in a container's.
    pub compile_nice: i32,
    /// How long a module whose compile failed runs in the interpreter before a start tries
    /// to compile it again (a full disk may be cleaned, a killed compile may fit later).
    pub compile_retry_secs: u64,
    /// LLVM optimization level of the full tier, 0..=3: the code every start runs once it
    /// is compiled.
    pub opt_level: u8,
    /// LLVM optimization level of the quick tier, compiled first so that a module gets
    /// native code in seconds while its full tier compiles in the background (`profiling/
    /// levels.md`: O0 compiles 7-24x faster than O2 and runs 37-61x faster than the
    /// interpreter, 1.6-3.1x slower than O2). A level at or above `opt_level` turns the
    /// quick tier off.
    pub quick_opt_level: u8,
    /// Which images' Wasm layers run.
    pub wasm_layers: WasmLayers,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grouping: Grouping::Node,
            cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
            compile_policy: Policy::Auto,
            // Measured here (profiling/levels.md): the quick tier (O0) compiles about 2.5-3
            // s per MB of code, so up to 1 MiB a synchronous first start waits seconds, and
            // a larger module starts in the interpreter at once.
            sync_max_module_bytes: 1 << 20,
            cache_max_bytes: 0,
            max_concurrent_compiles: 1,
            quick_compile_slots: 1,
            compile_deadline_secs: 3600,
            compile_memory_max_bytes: 8 << 30,
            // nobody and nogroup on Debian and most distributions.
            compile_uid: 65534,
            compile_gid: 65534,
            compile_nice: 10,
            compile_retry_secs: 600,
            opt_level: 2,
            quick_opt_level: 0,
            wasm_layers: WasmLayers::Labelled,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// The path the shim reads its configuration from.
    pub fn path() -> PathBuf {
        std::env::var_os(CONFIG_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }

    /// Loads [`Config::path`]; a missing file gives the defaults.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(&Self::path())
    }

    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// This config as one environment variable's value (JSON; its paths must be UTF-8):
    /// how the shim hands its runner the config it loaded, and the admin tool a
    /// precompile the config it resolved, so that neither reads the file again.
    pub fn to_env(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|e| format!("the config as JSON: {e}"))
    }

    /// The config that environment variable `name` carries (see [`Config::to_env`]), if it
    /// is set.
    pub fn from_env(name: &str) -> Option<Result<Config, String>> {
        let json = std::env::var_os(name)?;
        Some(
            json.to_str()
                .ok_or_else(|| format!("{name} is not UTF-8"))
                .and_then(|json| serde_json::from_str(json).map_err(|e| format!("{name}: {e}"))),
        )
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(text).map_err(|e| e.message().to_string())?;
        if c.opt_level > 3 {
            return Err(format!("opt_level {} is not in 0..=3", c.opt_level));
        }
        if c.quick_opt_level > 3 {
            return Err(format!(
                "quick_opt_level {} is not in 0..=3",
                c.quick_opt_level
            ));
        }
        if !(0..=19).contains(&c.compile_nice) {
            return Err(format!("compile_nice {} is not in 0..=19", c.compile_nice));
        }
        if c.compile_uid == 0 || c.compile_gid == 0 {
            return Err(format!(
                "compile_uid {} and compile_gid {}: compiles never run as root (uid or gid 0)",
                c.compile_uid, c.compile_gid
            ));
        }
        Ok(c)
    }

    /// The settings of the node cache this config names, for a process that opens it. The
    /// cache's place, size cap and compile slots come from the config, so every process on
    /// the node agrees on them; the two arguments are what the processes differ on:
    ///
    /// - `verify_on_first_use`: whether this process checks an artifact's full blake3 digest
    ///   the first time it hands it out. The runner passes `false`: container starts check the
    ///   artifact's file identity against its record, and a full digest of a large module on
    ///   the start path would cost milliseconds per module (see ARCHITECTURE.md, "Integrity").
    ///   The admin tool passes `true`: it is not on any start path.
    /// - `hash_threads`: whether module hashing may use rayon's pool. A process that forks
    ///   must pass [`HashThreads::One`] (a child inherits a pool without its threads, see
    ///   [`HashThreads`]); only a process that never forks after hashing passes
    ///   [`HashThreads::Pool`].
    pub fn cache_config(
        &self,
        verify_on_first_use: bool,
        hash_threads: HashThreads,
    ) -> CacheConfig {
        let mut c = CacheConfig::new(&self.cache_dir);
        c.max_size = (self.cache_max_bytes > 0).then_some(self.cache_max_bytes);
        c.max_concurrent_compiles = self.max_concurrent_compiles;
        c.quick_compile_slots = self.quick_compile_slots;
        c.verify_on_first_use = verify_on_first_use;
        c.hash_threads = hash_threads;
        c
    }

    /// The optimisation levels a module is compiled at, in order: the quick tier (if it is
    /// on), then the full one.
    pub fn tiers(&self) -> Vec<u8> {
        if self.quick_opt_level < self.opt_level {
            vec![self.quick_opt_level, self.opt_level]
        } else {
            vec![self.opt_level]
        }
    }

    /// The policy for one module, after a pod's annotation override and `auto`.
    pub fn effective_policy(&self, annotation: Option<Policy>, module_bytes: u64) -> Policy {
        match annotation.unwrap_or(self.compile_policy) {
            Policy::Auto if module_bytes <= self.sync_max_module_bytes => Policy::Sync,
            Policy::Auto => Policy::Tiered,
            p => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_layers_parse() {
        assert_eq!(Config::default().wasm_layers, WasmLayers::Labelled);
        let c = Config::parse("wasm_layers = \"any\"\n").unwrap();
        assert_eq!(c.wasm_layers, WasmLayers::Any);
        assert_eq!(
            Config::parse("wasm_layers = \"off\"\n")
                .unwrap()
                .wasm_layers,
            WasmLayers::Off
        );
        assert!(Config::parse("wasm_layers = \"some\"\n").is_err());
    }

    #[test]
    fn empty_file_gives_defaults_and_fields_parse() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let c = Config::parse(
            "cache_dir = \"/tmp/c\"\ncompile_policy = \"tiered\"\ncache_max_bytes = 1000\n",
        )
        .unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/tmp/c"));
        assert_eq!(c.compile_policy, Policy::Tiered);
        assert_eq!(c.cache_max_bytes, 1000);
        assert_eq!(c.grouping, Grouping::Node);
        let c = Config::parse(
            "compile_deadline_secs = 5\ncompile_memory_max_bytes = 1000000\n\
             compile_uid = 4000\ncompile_gid = 4001\n",
        )
        .unwrap();
        assert_eq!(c.compile_deadline_secs, 5);
        assert_eq!(c.compile_memory_max_bytes, 1_000_000);
        assert_eq!((c.compile_uid, c.compile_gid), (4000, 4001));
        assert_eq!(
            Config::parse("grouping = \"pod\"").unwrap().grouping,
            Grouping::Pod
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors_that_say_what() {
        let e = Config::parse("cache_dri = \"/x\"").unwrap_err();
        assert!(e.contains("cache_dri"), "{e}");
        let e = Config::parse("compile_policy = \"fast\"").unwrap_err();
        assert!(e.contains("fast"), "{e}");
        let e = Config::parse("opt_level = 7").unwrap_err();
        assert!(e.contains("opt_level 7"), "{e}");
        let e = Config::parse("compile_uid = 0").unwrap_err();
        assert!(e.contains("compile_uid 0"), "{e}");
        let e = Config::parse("compile_gid = 0").unwrap_err();
        assert!(e.contains("compile_gid 0"), "{e}");
    }

    #[test]
    fn missing_file_is_defaults_but_unreadable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Config::load_from(&dir.path().join("none.toml")).unwrap(),
            Config::default()
        );
        let e = Config::load_from(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with("read config"), "{e}");
    }

    #[test]
    fn the_cache_config_follows_the_node_config_and_the_callers_two_choices() {
        let c = Config::parse(
            "cache_dir = \"/c\"\ncache_max_bytes = 1000\nmax_concurrent_compiles = 3\n\
             quick_compile_slots = 2\n",
        )
        .unwrap();
        let runner = c.cache_config(false, HashThreads::One);
        assert_eq!(runner.quick_compile_slots, 2);
        assert_eq!(runner.root, PathBuf::from("/c"));
        assert_eq!(runner.max_size, Some(1000));
        assert_eq!(runner.max_concurrent_compiles, 3);
        assert!(!runner.verify_on_first_use);
        assert_eq!(runner.hash_threads, HashThreads::One);
        let admin = c.cache_config(true, HashThreads::Pool);
        assert!(admin.verify_on_first_use);
        assert_eq!(admin.hash_threads, HashThreads::Pool);
        // No cap in the config: none in the cache.
        assert_eq!(
            Config::default()
                .cache_config(true, HashThreads::One)
                .max_size,
            None
        );
    }

    #[test]
    fn the_quick_tier_comes_first_unless_it_is_not_quicker() {
        assert_eq!(Config::default().tiers(), vec![0, 2]);
        let off = Config::parse("quick_opt_level = 2").unwrap();
        assert_eq!(off.tiers(), vec![2]);
        let o1 = Config::parse("opt_level = 1\nquick_opt_level = 3").unwrap();
        assert_eq!(o1.tiers(), vec![1]);
        assert!(Config::parse("quick_opt_level = 4").is_err());
    }

    #[test]
    fn auto_compiles_small_modules_synchronously_and_large_ones_tiered() {
        let c = Config::default();
        assert_eq!(c.effective_policy(None, 100_000), Policy::Sync);
        assert_eq!(c.effective_policy(None, 1 << 20), Policy::Sync);
        assert_eq!(c.effective_policy(None, (1 << 20) + 1), Policy::Tiered);
        assert_eq!(c.effective_policy(None, 100 << 20), Policy::Tiered);
        assert_eq!(c.effective_policy(Some(Policy::Off), 10), Policy::Off);
        assert_eq!(
            c.effective_policy(Some(Policy::Sync), 100 << 20),
            Policy::Sync
        );
        assert_eq!("TIERED".parse::<Policy>(), Ok(Policy::Tiered));
    }
}
