//! What the runner knows of the node, set up once before it serves: the config, the node
//! cache, the engines of the code tiers, the cgroup hierarchies and its own pid namespace.
//! Every container process and every compile inherits it; nothing here changes after.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use wasmedge_aot_cache::{Cache, Fingerprint, HashThreads};
use wasmedge_aot_engine::{fingerprint, Engine, Options};
use wasmedge_aot_protocol::config::Config;

use crate::hierarchies::Hierarchies;

/// One tier of native code: what compiles it and the cache's view of it.
pub struct CodeTier {
    /// Its LLVM optimisation level.
    pub level: u8,
    pub engine: Engine,
    pub fingerprint: Fingerprint,
}

/// The node as the runner sees it.
pub struct Node {
    /// The tiers, quickest first; the last is the full tier.
    pub tiers: Vec<CodeTier>,
    pub config: Config,
    pub cache: Result<Cache, String>,
    /// Where native modules are opened from, by names unique to each artifact file (see
    /// `Engine::load_native`): inside the cache root, which the cache checks is ours alone.
    pub link_dir: PathBuf,
    /// The node's cgroup hierarchies, read once: every container process joins its cgroup
    /// through them.
    pub cgroups: Hierarchies,
    /// The runner's own pid namespace, to return to after forking into a pod's.
    pub own_pid_ns: OwnedFd,
}

impl Node {
    /// The engine of the full tier (any tier's engine loads and runs any tier's code).
    pub fn engine(&self) -> &Engine {
        &self.tiers.last().expect("at least the full tier").engine
    }

    /// The node of `config`. Container starts check an artifact's identity against its
    /// record (`verify_on_first_use` false); full digests are for `wasmedge-shimctl verify`
    /// and `precompile` (see ARCHITECTURE.md, "Integrity").
    pub fn new(config: Config, verify_on_first_use: bool) -> Result<Node, String> {
        // The runner forks, so it hashes on its one thread.
        let cache_config = config.cache_config(verify_on_first_use, HashThreads::One);
        let cache = Cache::open(cache_config).map_err(|e| e.to_string());
        if let Err(e) = &cache {
            eprintln!(
                "wasmedge-shim-runner: aot cache unusable, modules run in the interpreter: {e}"
            );
        }
        // Where the engine names the libraries it loads; unused without a cache.
        let link_dir = match &cache {
            Ok(c) => c.link_dir(),
            Err(_) => PathBuf::new(),
        };
        let own_pid_ns = File::open("/proc/self/ns/pid")
            .map_err(|e| format!("open /proc/self/ns/pid: {e}"))?
            .into();
        let mut tiers = Vec::new();
        for level in config.tiers() {
            let engine = Engine::new(Options::for_node(level)).map_err(|e| e.to_string())?;
            tiers.push(CodeTier {
                level,
                fingerprint: fingerprint(&engine),
                engine,
            });
        }
        Ok(Node {
            tiers,
            config,
            cache,
            link_dir,
            cgroups: Hierarchies::of_self(),
            own_pid_ns,
        })
    }
}
