//! wasmedge-shim-runner: the fork server the shim starts. It links WasmEdge once, warms it,
//! and forks one process per container (see `wasmedge_aot_shim::zygote`). The code here
//! runs in those container processes: enter the container's cgroup and network namespace,
//! take its stdio, load and instantiate the module, report, wait for start, run.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wasmedge_aot_cache::{Cache, CacheConfig, Fingerprint, Key};
use wasmedge_aot_engine::{fingerprint, Engine, Loaded, Options, Outcome, Prepared, WasiPlan};
use wasmedge_aot_shim::aot;
use wasmedge_aot_shim::config::{Config, Policy};
use wasmedge_aot_shim::zygote::{self, CodeSource, ContainerFds, Report, SpawnRequest, Timings};

/// Everything a container process inherits from the runner, set up once before any fork.
struct Runner {
    engine: Engine,
    config: Config,
    cache: Result<Cache, String>,
    fingerprint: Fingerprint,
    /// Native modules the runner has loaded (parsed, validated, `dlopen`ed) and
    /// instantiated for earlier containers, most recently used last. A container of the
    /// same module is forked with its instance ready: it only sets its WASI environment,
    /// and shares the module's pages (its AST, the relocated shared library, the
    /// instance's memory until it writes there) with the runner instead of building its
    /// own copy.
    templates: RefCell<Vec<Template>>,
    /// Where native modules are opened from, by names unique to each artifact file (see
    /// `Engine::load_native`): inside the cache root, which the cache checks is ours alone.
    link_dir: std::path::PathBuf,
}

/// Most native modules kept loaded in the runner.
const MAX_TEMPLATES: usize = 16;

struct Template {
    key: Key,
    /// (device, inode) of the artifact it was loaded from: a re-published entry is another
    /// file, and its template is replaced.
    file: (u64, u64),
    loaded: Rc<Loaded>,
    /// The module instantiated once, without a WASI environment (`Engine::prepare`). It is
    /// never run here: each container process takes its own copy of it. `None` for a
    /// module with a start function, or if instantiating failed; containers then
    /// instantiate themselves (and report the error).
    prepared: Option<Prepared>,
}

/// What the runner resolved before forking a container.
#[derive(Default)]
struct PreFork {
    /// The key of the template the container process starts from, if any.
    template: Option<Key>,
    hash: Duration,
    lookup: Duration,
    load: Duration,
}

impl Runner {
    /// Runs in the runner before each fork: finds the module's cached native code and, the
    /// first time, loads it once for all its containers. Anything unusual (a miss, a policy
    /// that does not want native code, an unusable cache, a load error) leaves the work to
    /// the container process, which handles it with its fallbacks.
    fn before_fork(&self, req: &SpawnRequest) -> PreFork {
        let mut pre = PreFork::default();
        let Ok(cache) = &self.cache else { return pre };
        let module = &req.plan.module;
        let size = std::fs::metadata(module).map(|m| m.len()).unwrap_or(0);
        if self.config.effective_policy(req.policy, size) == Policy::Off {
            return pre;
        }
        let t = Instant::now();
        let Ok(key) = cache.key_for(module, &self.fingerprint) else {
            return pre;
        };
        pre.hash = t.elapsed();
        let t = Instant::now();
        let Ok(Some(artifact)) = cache.lookup(&key) else {
            return pre;
        };
        pre.lookup = t.elapsed();
        let Ok(meta) = artifact.file.metadata() else {
            return pre;
        };
        let file = (meta.dev(), meta.ino());
        let mut templates = self.templates.borrow_mut();
        if let Some(i) = templates.iter().position(|t| t.key == key) {
            let t = templates.remove(i);
            if t.file == file {
                pre.template = Some(key);
                templates.push(t);
                return pre;
            }
        }
        let t = Instant::now();
        let Ok(loaded) = self.engine.load_native(&artifact.path, &self.link_dir) else {
            return pre;
        };
        // A start function would run guest code here, in the process every container of
        // the node is forked from; such modules instantiate in their own process.
        let prepared = match wasmedge_aot_engine::has_start_section(module) {
            Ok(false) => self.engine.prepare(&loaded).ok(),
            _ => None,
        };
        pre.load = t.elapsed();
        if templates.len() >= MAX_TEMPLATES {
            templates.remove(0);
        }
        templates.push(Template {
            key,
            file,
            loaded: Rc::new(loaded),
            prepared,
        });
        pre.template = Some(key);
        pre
    }

    /// In a container process: the template's module, and this process's copy of its
    /// prepared instance (taken: the runner's own stays unused for the next fork).
    fn take_template(&self, key: &Key) -> Option<(Rc<Loaded>, Option<Prepared>)> {
        let mut templates = self.templates.borrow_mut();
        let t = templates.iter_mut().find(|t| &t.key == key)?;
        Some((t.loaded.clone(), t.prepared.take()))
    }
}

/// The smallest WASI command: an empty `_start`. Running it once before serving makes the
/// runner touch WasmEdge's lazily initialised state, so children share it instead of each
/// building its own.
const WARM_UP_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
    0x03, 0x02, 0x01, 0x00, // func 0: type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
];

fn main() {
    let config = Config::load().unwrap_or_else(|e| {
        eprintln!("wasmedge-shim-runner: {e}; using the defaults");
        Config::default()
    });
    let options = Options::for_node(config.opt_level);
    let engine = match Engine::new(options) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("wasmedge-shim-runner: {e}");
            std::process::exit(1);
        }
    };
    warm_up(&engine);
    release_compiler_pages();
    let mut cache_config = CacheConfig::new(&config.cache_dir);
    cache_config.max_size = (config.cache_max_bytes > 0).then_some(config.cache_max_bytes);
    cache_config.max_concurrent_compiles = config.max_concurrent_compiles;
    // Container starts check an artifact's identity against its record; full digests are
    // for `wasmedge-shimctl verify` (see ARCHITECTURE.md, "Integrity").
    cache_config.verify_on_first_use = false;
    let cache = Cache::open(cache_config).map_err(|e| e.to_string());
    if let Err(e) = &cache {
        eprintln!("wasmedge-shim-runner: aot cache unusable, modules run in the interpreter: {e}");
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
    let runner = Runner {
        fingerprint: fingerprint(&engine),
        engine,
        config,
        cache,
        templates: RefCell::new(Vec::new()),
        link_dir,
    };
    // SAFETY: the shim starts us with our end of the request socket as fd 0, and nothing
    // else in this process owns fd 0.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    zygote::serve(
        sock,
        |req| runner.before_fork(req),
        |req, pre, fds| container_main(&runner, req, pre, fds),
    )
}

fn warm_up(engine: &Engine) {
    let run = || -> Result<(), String> {
        let loaded = engine
            .load_bytes(Path::new("warm-up"), WARM_UP_MODULE)
            .map_err(|e| e.to_string())?;
        let mut inst = engine
            .instantiate(&loaded, &WasiPlan::default())
            .map_err(|e| e.to_string())?;
        match inst.run() {
            Outcome::Exited(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    };
    if let Err(e) = run() {
        eprintln!("wasmedge-shim-runner: warm-up failed: {e}");
    }
}

/// Libraries that libwasmedge links only for its AOT compiler.
const COMPILER_ONLY_LIBS: &[&str] = &["libLLVM", "libz3", "libicu", "libxml2"];

/// Gives back the pages of the compiler's libraries that loading them touched (libLLVM's
/// static constructors and relocation fault in ~40 MB of its text). Containers that run or
/// load native code never execute them, and every container forked from us would otherwise
/// count them in its PSS. A later compile faults them in again from the page cache.
/// `MADV_PAGEOUT` only reclaims clean file pages of read-only mappings here; it never
/// changes what a mapping reads as.
fn release_compiler_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).unwrap_or("");
        if perms.contains('w') || !COMPILER_ONLY_LIBS.iter().any(|l| path.contains(l)) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a whole mapping of ours, read-only and file-backed;
        // MADV_PAGEOUT does not change its contents, only whether its pages are resident.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT);
        }
    }
}

/// Runs in the container process; returns its exit code.
fn container_main(runner: &Runner, req: SpawnRequest, pre: PreFork, fds: ContainerFds) -> i32 {
    let pid = std::process::id() as i32;
    let control = fds.control;
    match prepare(runner, &req, pre, fds.stdin, fds.stdout, fds.stderr) {
        Ok((mut instance, timings, warning)) => {
            let ready = Report::Ready {
                pid,
                timings,
                warning,
            };
            if zygote::report(&control, &ready).is_err() || !zygote::wait_for_start(&control) {
                // The shim gave up on this container before starting it.
                return 0;
            }
            drop(control);
            let outcome = instance.run();
            // The process ends next. Unmapping the instance's memory and freeing its state
            // one object at a time is work the kernel's exit does for the whole address
            // space at once (1 ms for a 10 MB module, measured in benches/large.rs).
            std::mem::forget(instance);
            match outcome {
                Outcome::Exited(code) => code,
                trapped @ Outcome::Trapped(_) => {
                    if let Outcome::Trapped(msg) = &trapped {
                        let name = req
                            .plan
                            .args
                            .first()
                            .map(String::as_str)
                            .unwrap_or("module");
                        eprintln!("wasm trap in {name}: {msg}");
                    }
                    trapped.exit_code()
                }
            }
        }
        Err(error) => {
            let _ = zygote::report(&control, &Report::Failed { pid, error });
            1
        }
    }
}

/// Forks a detached process that compiles `module` into the cache (tiered policy). It is
/// re-parented to the shim, outside the container's cgroup, and the container does not wait.
fn compile_in_background(runner: &Runner, module: &Path) {
    let Ok(cache) = &runner.cache else { return };
    // SAFETY: the container process is single-threaded (forked from the single-threaded
    // runner), so the children may run arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // SAFETY: as above.
            if let Ok(nix::unistd::ForkResult::Child) = unsafe { nix::unistd::fork() } {
                let _ = nix::unistd::setsid();
                let code = match cache.get_or_compile(module, &runner.fingerprint, &runner.engine) {
                    Ok(_) => 0,
                    Err(e) => {
                        eprintln!("background aot compile of {}: {e}", module.display());
                        1
                    }
                };
                let _ = cache.flush_stats();
                // SAFETY: _exit: this process owns nothing that needs flushing at exit.
                unsafe { libc::_exit(code) }
            }
            // SAFETY: the middle process only exists to re-parent the compiler.
            unsafe { libc::_exit(0) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = nix::sys::wait::waitpid(child, None);
        }
        Err(e) => eprintln!("fork background compile: {e}"),
    }
}

type ReadyToRun = (wasmedge_aot_engine::Instance, Timings, Option<String>);

fn prepare(
    runner: &Runner,
    req: &SpawnRequest,
    pre: PreFork,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<ReadyToRun, String> {
    let engine = &runner.engine;
    let plan = &req.plan;
    // Own session: a signal for the process group reaches nothing outside the container.
    let _ = nix::unistd::setsid();
    for (fd, target) in [(stdin, 0), (stdout, 1), (stderr, 2)] {
        // SAFETY: dup2 onto the standard fds; the runner's own stdio is not used again in
        // this process.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(format!("dup2 stdio: {}", std::io::Error::last_os_error()));
        }
    }
    let (template, prepared) = match pre.template.and_then(|k| runner.take_template(&k)) {
        Some((loaded, prepared)) => (Some(loaded), prepared),
        None => (None, None),
    };
    // Before joining the cgroup: a compile is the node's cost, not the pod's.
    let resolved = match &template {
        Some(_) => aot::Resolved {
            code: CodeSource::Interpreter, // unused: the template is the code
            outcome: "hit",
            hash: pre.hash,
            lookup: pre.lookup,
            compile: Duration::ZERO,
            warning: None,
        },
        None => {
            let module_bytes = std::fs::metadata(&plan.module)
                .map(|m| m.len())
                .unwrap_or(0);
            let policy = runner.config.effective_policy(req.policy, module_bytes);
            let resolved = aot::resolve(
                runner.cache.as_ref().map_err(String::as_str),
                &plan.module,
                &runner.fingerprint,
                policy,
                engine,
                || compile_in_background(runner, &plan.module),
            );
            if let Ok(cache) = &runner.cache {
                let _ = cache.flush_stats();
            }
            resolved
        }
    };
    let mut warning = resolved.warning.clone();

    let entered = Instant::now();
    if let Some(path) = &plan.cgroups_path {
        // This process is single-threaded: forked from the single-threaded runner.
        wasmedge_aot_shim::cgroup::join_self(path)
            .map_err(|e| format!("join cgroup {path}: {e}"))?;
    }
    if let Some(ns) = &plan.network_ns {
        let f = std::fs::File::open(ns).map_err(|e| format!("open netns {}: {e}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter netns {}: {e}", ns.display()))?;
    }

    let enter_us = entered.elapsed().as_micros() as u64;
    let started = Instant::now();
    // Errors name the module as the container sees it, not the rootfs or cache file read.
    let name = Path::new(plan.args.first().map(String::as_str).unwrap_or("module"));
    let interpret = || -> Result<Loaded, String> {
        let bytes = std::fs::read(&plan.module)
            .map_err(|e| format!("read {}: {e}", plan.module.display()))?;
        engine
            .load_bytes(&plan.module, &bytes)
            .map_err(|e| e.in_module(name).to_string())
    };
    let loaded: Rc<Loaded> = match (template, &resolved.code) {
        (Some(t), _) => t,
        (None, CodeSource::Interpreter) => Rc::new(interpret()?),
        (None, CodeSource::Native(so)) => match engine.load_native(so, &runner.link_dir) {
            Ok(l) => Rc::new(l),
            Err(e) => {
                warning = Some(format!("{e}; running it in the interpreter"));
                Rc::new(interpret()?)
            }
        },
    };
    // A template's load happened once, in the runner; what this start paid for it is pre.load.
    let load_us = (started.elapsed() + pre.load).as_micros() as u64;

    let started = Instant::now();
    let wasi = WasiPlan {
        args: plan.args.clone(),
        env: plan.env.clone(),
        preopens: plan.preopens.iter().map(|p| p.to_wasmedge()).collect(),
    };
    let instance = match prepared {
        Some(p) => p.with_wasi(&wasi),
        None => engine.instantiate(&loaded, &wasi),
    }
    .map_err(|e| e.in_module(name).to_string())?;
    Ok((
        instance,
        Timings {
            hash_us: resolved.hash.as_micros() as u64,
            lookup_us: resolved.lookup.as_micros() as u64,
            compile_us: resolved.compile.as_micros() as u64,
            enter_us,
            load_us,
            instantiate_us: started.elapsed().as_micros() as u64,
            tier: format!("{:?}", loaded.tier()).to_lowercase(),
            cache: resolved.outcome.to_string(),
        },
        warning,
    ))
}
