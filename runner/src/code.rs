//! Finding a container's code, in the runner before its process is forked: a template the
//! runner keeps (the native module loaded and instantiated once), the node cache, a
//! compile, or the interpreter.
//!
//! Nothing here fails a container: an unusable cache or a failed compile means the
//! interpreter, and one warning that says why. Everything here runs on the runner's one
//! thread, so its cost is paid once per module, not per container: hashing goes through
//! the cache's memo, a template is made the first time a module's native code is found.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use wasmedge_aot_cache::{Cache, Fingerprint, HashThreads, Key};
use wasmedge_aot_engine::{fingerprint, Engine, Loaded, Prepared};
use wasmedge_aot_protocol::config::{Config, Policy};
use wasmedge_aot_protocol::container::CacheOutcome;
use wasmedge_aot_protocol::spawn::SpawnRequest;

use crate::compile::{Compiles, Job};
use crate::process::cgroup::Hierarchies;

/// Most native modules kept loaded in the runner.
const MAX_TEMPLATES: usize = 16;

/// Everything a container process inherits from the runner, set up once before any fork.
pub struct Runner {
    pub engine: Engine,
    pub config: Config,
    pub cache: Result<Cache, String>,
    pub fingerprint: Fingerprint,
    /// Native modules loaded (parsed, validated, `dlopen`ed) and instantiated for earlier
    /// containers, most recently used last. A container of the same module is forked with
    /// its instance ready: it only sets its WASI environment, and shares the module's pages
    /// (its AST, the relocated library, the instance's memory until it writes there) with
    /// the runner instead of building its own copy.
    templates: RefCell<Vec<Template>>,
    /// Where native modules are opened from, by names unique to each artifact file (see
    /// `Engine::load_native`): inside the cache root, which the cache checks is ours alone.
    pub link_dir: PathBuf,
    pub compiles: Compiles,
    /// The node's cgroup hierarchies, read once: every container process joins its cgroup
    /// through them.
    pub cgroups: Hierarchies,
    /// The runner's own pid namespace, to return to after forking into a pod's.
    pub own_pid_ns: OwnedFd,
}

struct Template {
    key: Key,
    /// (device, inode) of the artifact it was loaded from: a re-published entry is another
    /// file, and its template is replaced.
    file: (u64, u64),
    loaded: Rc<Loaded>,
    /// The module instantiated once, without a WASI environment (`Engine::prepare`). It is
    /// never run here: each container process takes its own copy of it. `None` for a
    /// module with a start function (guest code that instantiation runs, which must run in
    /// the container's process only), or if instantiating failed; containers then
    /// instantiate themselves (and report the error).
    prepared: Option<Prepared>,
}

/// What the runner decided about a container's code before forking its process.
#[derive(Default)]
pub struct Resolution {
    pub policy: Policy,
    /// The module's cache key, when it was hashed.
    pub key: Option<Key>,
    /// A template of the module's native code: the container process starts from it.
    pub template: bool,
    /// The compile a synchronous start waits for.
    pub compile: Option<Rc<Job>>,
    /// Whether this start's miss started that compile (rather than joining one).
    pub started_compile: bool,
    pub outcome: CacheOutcome,
    pub warning: Option<String>,
    pub hash: Duration,
    pub lookup: Duration,
    /// Loading and instantiating the template, the first time (one container pays it).
    pub load: Duration,
}

/// A path for the open file `f` that the kernel resolves to that very file.
pub fn fd_path(f: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

impl Runner {
    pub fn new(engine: Engine, config: Config) -> Result<Runner, String> {
        // Container starts check an artifact's identity against its record; full digests are
        // for `wasmedge-shimctl verify` (see ARCHITECTURE.md, "Integrity"). The runner forks,
        // so it hashes on its one thread.
        let cache_config = config.cache_config(false, HashThreads::One);
        let cache = Cache::open(cache_config).map_err(|e| e.to_string());
        if let Err(e) = &cache {
            eprintln!(
                "wasmedge-shim-runner: aot cache unusable, modules run in the interpreter: {e}"
            );
        }
        let link_dir = config.cache_dir.join("links");
        if cache.is_ok() {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&link_dir);
            // Links to artifacts that were evicted or replaced since are dead weight.
            for entry in std::fs::read_dir(&link_dir).into_iter().flatten().flatten() {
                if std::fs::metadata(entry.path()).is_err() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let own_pid_ns = File::open("/proc/self/ns/pid")
            .map_err(|e| format!("open /proc/self/ns/pid: {e}"))?
            .into();
        Ok(Runner {
            fingerprint: fingerprint(&engine),
            engine,
            config,
            cache,
            templates: RefCell::new(Vec::new()),
            link_dir,
            compiles: Compiles::default(),
            cgroups: Hierarchies::of_self(),
            own_pid_ns,
        })
    }

    /// Decides where the container's code comes from. Runs in the runner before each fork;
    /// what it finds or starts (a template, a compile) serves every later container of the
    /// module too.
    pub fn resolve(&self, req: &SpawnRequest, module: &File) -> Resolution {
        let size = module.metadata().map(|m| m.len()).unwrap_or(0);
        let policy = self.config.effective_policy(req.policy, size);
        let mut res = Resolution {
            policy,
            ..Resolution::default()
        };
        if policy == Policy::Off {
            res.outcome = CacheOutcome::Off;
            return res;
        }
        let cache = match &self.cache {
            Ok(c) => c,
            Err(e) => {
                return res.fallback(format!(
                    "aot cache unusable ({e}); running {} in the interpreter",
                    req.module_name
                ))
            }
        };
        let path = fd_path(module);
        let t = Instant::now();
        let key = match cache.key_for(&path, &self.fingerprint) {
            Ok(k) => k,
            Err(e) => return res.fallback(cannot("hash", &req.module_name, e)),
        };
        res.hash = t.elapsed();
        res.key = Some(key);
        let t = Instant::now();
        let artifact = match cache.lookup(&key) {
            Ok(a) => a,
            Err(e) => return res.fallback(cannot("look up", &req.module_name, e)),
        };
        res.lookup = t.elapsed();
        let Some(artifact) = artifact else {
            // A compile that failed a moment ago would fail again: the interpreter until the
            // retry time, without paying for it on every start.
            let retry = Duration::from_secs(self.config.compile_retry_secs);
            if let Some(f) = self.compiles.recent_failure(self, &key, retry) {
                let next = retry.saturating_sub(f.age(std::time::SystemTime::now()));
                return res.fallback(format!(
                    "the aot compile of {} failed {} s ago: {}: {}; running it in the interpreter \
                     (a start tries again in {} s)",
                    req.module_name,
                    f.age(std::time::SystemTime::now()).as_secs(),
                    f.cause,
                    f.message,
                    next.as_secs()
                ));
            }
            // A miss: a process of its own compiles the module (one per module on the node);
            // a synchronous start waits for it, a tiered one runs the interpreter meanwhile.
            match self.compiles.start(self, &key, module, &req.module_name) {
                Ok((job, started)) => {
                    if policy == Policy::Sync {
                        res.compile = Some(job);
                        res.started_compile = started;
                    } else {
                        res.outcome = CacheOutcome::MissTiered;
                    }
                }
                Err(e) => {
                    return res.fallback(format!(
                        "cannot start the aot compile of {}: {e}; running it in the interpreter",
                        req.module_name
                    ))
                }
            }
            return res;
        };
        res.outcome = CacheOutcome::Hit;
        let t = Instant::now();
        res.template = self.template_for(&key, &artifact.path, &artifact.file, module);
        res.load = t.elapsed();
        res
    }

    /// Finds or makes the template of the entry `key` whose artifact is `so`. `false` if the
    /// library does not load here (the container process then tries, and reports why).
    fn template_for(&self, key: &Key, so: &Path, so_file: &File, module: &File) -> bool {
        let Ok(meta) = so_file.metadata() else {
            return false;
        };
        let file = (meta.dev(), meta.ino());
        let mut templates = self.templates.borrow_mut();
        if let Some(i) = templates.iter().position(|t| t.key == *key) {
            let t = templates.remove(i);
            if t.file == file {
                templates.push(t);
                return true;
            }
        }
        let Ok(loaded) = self.engine.load_native(so, &self.link_dir) else {
            return false;
        };
        // A start function would run guest code here, in the process every container of
        // the node is forked from; such modules instantiate in their own process.
        let prepared = match wasmedge_aot_engine::has_start_section(&fd_path(module)) {
            Ok(false) => self.engine.prepare(&loaded).ok(),
            _ => None,
        };
        if templates.len() >= MAX_TEMPLATES {
            templates.remove(0);
        }
        templates.push(Template {
            key: *key,
            file,
            loaded: Rc::new(loaded),
            prepared,
        });
        true
    }

    /// In a container process: the template's module, and this process's copy of its
    /// prepared instance (taken: nothing else in this process uses it).
    pub fn take_template(&self, key: &Key) -> Option<(Rc<Loaded>, Option<Prepared>)> {
        let mut templates = self.templates.borrow_mut();
        let t = templates.iter_mut().find(|t| t.key == *key)?;
        Some((t.loaded.clone(), t.prepared.take()))
    }

    /// The descriptors a container process keeps from the runner: none but those of its
    /// own request (the runner's socket, the other compiles' handles, the cache's files are
    /// closed at birth).
    pub fn inherited_fds_to_keep<'a>(
        &self,
        res: &'a Resolution,
    ) -> impl Iterator<Item = std::os::fd::BorrowedFd<'a>> {
        res.compile.iter().map(|j| j.pidfd.as_fd())
    }
}

impl Resolution {
    fn fallback(mut self, warning: String) -> Resolution {
        self.outcome = CacheOutcome::Fallback;
        self.warning = Some(warning);
        self
    }
}

/// The warning of a cache step that failed for `module`, which then runs in the interpreter.
fn cannot(what: &str, module: &str, e: impl std::fmt::Display) -> String {
    format!("cannot {what} {module}: {e}; running it in the interpreter")
}
