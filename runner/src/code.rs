//! Finding a container's code, in the runner before its process is forked: a template the
//! runner keeps (the native module loaded and instantiated once), the node cache, a
//! compile, or the interpreter.
//!
//! Code comes in tiers (`Config::tiers`): a quick one (O0: compiled in seconds) and the
//! full one (O2). A start takes the best tier present in the cache; a module that lacks
//! its full tier gets it compiled in the background, after its quick tier if it has none.
//!
//! Nothing here fails a container: an unusable cache or a failed compile means the
//! interpreter, and one warning that says why. Everything here runs on the runner's one
//! thread, so its cost is paid once per module, not per container: hashing goes through
//! the cache's memo, a template is made the first time a module's native code is found.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use wasmedge_aot_cache::{Key, ModuleHash};
use wasmedge_aot_engine::{Loaded, Prepared};
use wasmedge_aot_protocol::config::{Config, Policy};
use wasmedge_aot_protocol::control::CacheOutcome;
use wasmedge_aot_protocol::spawn::SpawnRequest;

use crate::compile::{Compiles, Job};
use crate::node::Node;
use crate::sys::fd_path;

/// Most native modules kept loaded in the runner.
const MAX_TEMPLATES: usize = 16;

/// What finds a container's code in the runner: what it knows of the node, and what it
/// keeps between requests (templates, compiles).
pub struct CodeFinder {
    pub node: Node,
    /// Native modules loaded (parsed, validated, `dlopen`ed) and instantiated for earlier
    /// containers, most recently used last. A container of the same module is forked with
    /// its instance ready: it only sets its WASI environment, and shares the module's pages
    /// (its AST, the relocated library, the instance's memory until it writes there) with
    /// the runner instead of building its own copy.
    templates: RefCell<Vec<Template>>,
    pub compiles: Compiles,
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
    /// The template of the module's native code the container process starts from: its
    /// entry's key and tier level. The runner sets it for a hit; the module's zygote has it.
    pub template: Option<(Key, u8)>,
    /// The native code found: the artifact's path, (device, inode) and tier level. A
    /// container without its template loads it itself.
    pub artifact: Option<(PathBuf, (u64, u64), u8)>,
    /// The compile a synchronous start waits for, and the entries (key, level) of the
    /// module's tiers, best last: the start takes the first of them to appear.
    pub compile: Option<Rc<Job>>,
    pub wait_for: Vec<(Key, u8)>,
    /// The module's full-tier key, under which a failed compile is recorded.
    pub full_key: Option<Key>,
    /// Whether this start's miss started that compile (rather than joining one).
    pub started_compile: bool,
    pub outcome: CacheOutcome,
    pub warning: Option<String>,
    pub hash: Duration,
    pub lookup: Duration,
    /// Loading and instantiating the template, the first time (one container pays it).
    pub load: Duration,
    /// When the container process was forked (the fork's caller sets it just before).
    pub forked: Option<std::time::Instant>,
}

impl CodeFinder {
    pub fn new(config: Config) -> Result<CodeFinder, String> {
        Ok(CodeFinder {
            node: Node::new(config, false)?,
            templates: RefCell::new(Vec::new()),
            compiles: Compiles::default(),
        })
    }

    /// Decides where the container's code comes from. Runs in the runner before each fork;
    /// what it finds or starts (a template, a compile) serves every later container of the
    /// module too.
    pub fn resolve(&self, req: &SpawnRequest, module: &File) -> Resolution {
        let size = module.metadata().map(|m| m.len()).unwrap_or(0);
        let policy = self.node.config.effective_policy(req.policy, size);
        let mut res = Resolution {
            policy,
            ..Resolution::default()
        };
        if policy == Policy::Off {
            res.outcome = CacheOutcome::Off;
            return res;
        }
        let cache = match &self.node.cache {
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
        // A module from an image's Wasm layer comes with its hash: the shim computed it over
        // the very bytes of the sealed memory file it sent (nothing can change them since),
        // after checking them against the layer's digest. The hash is taken only for a file
        // whose seals say so; anything else is hashed here.
        let hash = match &req.module_hash {
            Some(hex) if is_sealed(module) => match hex.parse::<ModuleHash>() {
                Ok(h) => Ok(h),
                Err(e) => Err(format!("the shim's module hash {hex:?}: {e}")),
            },
            _ => cache.hash_module(&path).map_err(|e| e.to_string()),
        };
        let hash = match hash {
            Ok(h) => h,
            Err(e) => return res.fallback(cannot("hash", &req.module_name, e)),
        };
        let keys: Vec<(Key, u8)> = self
            .node
            .tiers
            .iter()
            .map(|t| (Key::derive(&hash, &t.fingerprint), t.level))
            .collect();
        res.hash = t.elapsed();
        // The best tier present, from the full one down.
        let t = Instant::now();
        let mut found = None;
        for (i, (key, _)) in keys.iter().enumerate().rev() {
            match cache.lookup(key) {
                Ok(Some(a)) => {
                    found = Some((i, a));
                    break;
                }
                Ok(None) => {}
                Err(e) => return res.fallback(cannot("look up", &req.module_name, e)),
            }
        }
        res.lookup = t.elapsed();
        // The tiers still to compile: those above the best present.
        let first_missing = found.as_ref().map_or(0, |(i, _)| i + 1);
        let full = keys.last().expect("at least the full tier").0;
        res.full_key = Some(full);
        let retry = Duration::from_secs(self.node.config.compile_retry_secs);
        let failure = self.compiles.recent_failure(&self.node, &full, retry);
        if first_missing < keys.len() && failure.is_none() {
            // A process of its own compiles them (one per module on the node).
            match self
                .compiles
                .start(&self.node, &full, module, &req.module_name, first_missing)
            {
                Ok((job, started)) if found.is_none() => {
                    if policy == Policy::Sync {
                        res.compile = Some(job);
                        res.started_compile = started;
                        res.wait_for = keys.clone();
                    } else {
                        res.outcome = CacheOutcome::MissTiered;
                    }
                }
                Ok(_) => {}
                Err(e) if found.is_none() => {
                    return res.fallback(format!(
                        "cannot start the aot compile of {}: {e}; running it in the interpreter",
                        req.module_name
                    ))
                }
                Err(e) => eprintln!(
                    "cannot start the full-tier compile of {}: {e}",
                    req.module_name
                ),
            }
        }
        let Some((i, artifact)) = found else {
            if let Some(f) = failure {
                // A compile that failed a moment ago would fail again: the interpreter until
                // the retry time, without paying for it on every start.
                let now = std::time::SystemTime::now();
                return res.fallback(format!(
                    "the aot compile of {} failed {} s ago: {}: {}; running it in the interpreter \
                     (a start tries again in {} s)",
                    req.module_name,
                    f.age(now).as_secs(),
                    f.cause,
                    f.message,
                    retry.saturating_sub(f.age(now)).as_secs()
                ));
            }
            return res;
        };
        res.outcome = CacheOutcome::Hit;
        if let Ok(meta) = artifact.file.metadata() {
            res.template = Some(keys[i]);
            res.artifact = Some((artifact.path.clone(), (meta.dev(), meta.ino()), keys[i].1));
        }
        res
    }

    /// In a module's zygote: loads the native module of entry `key` from `so` (whose
    /// identity is `file`) and instantiates it once, without a WASI environment. `false` if
    /// the library does not load (its containers then try, and report why).
    /// `before_instance` runs between the load and the instantiation.
    pub fn load_template(
        &self,
        key: &Key,
        so: &Path,
        file: (u64, u64),
        module: &File,
        before_instance: impl FnOnce(),
    ) -> bool {
        let mut templates = self.templates.borrow_mut();
        if templates.iter().any(|t| t.key == *key && t.file == file) {
            return true;
        }
        let Ok(loaded) = self.node.engine().load_native(so, &self.node.link_dir) else {
            return false;
        };
        before_instance();
        // A start function would run guest code here, in the process the module's
        // containers are forked from; such modules instantiate in their own process.
        let prepared = match wasmedge_aot_engine::has_start_section(&fd_path(module)) {
            Ok(false) => self.node.engine().prepare(&loaded).ok(),
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

/// Whether `module` is a memory file sealed against every change of its bytes.
fn is_sealed(module: impl std::os::fd::AsFd) -> bool {
    use rustix::fs::SealFlags;
    rustix::fs::fcntl_get_seals(module)
        .is_ok_and(|s| s.contains(SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK))
}
