//! wasmedge-shim-runner: the fork server the shim starts. It links WasmEdge once, warms it,
//! and forks one process per container (see `wasmedge_aot_shim::zygote`). The code here
//! runs in those container processes: enter the container's cgroup and network namespace,
//! take its stdio, load and instantiate the module, report, wait for start, run.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use wasmedge_aot_cache::{Cache, CacheConfig, Fingerprint};
use wasmedge_aot_engine::{fingerprint, Engine, Loaded, Options, Outcome, WasiPlan};
use wasmedge_aot_shim::aot;
use wasmedge_aot_shim::config::Config;
use wasmedge_aot_shim::zygote::{self, CodeSource, ContainerFds, Report, SpawnRequest, Timings};

/// Everything a container process inherits from the runner, set up once before any fork.
struct Runner {
    engine: Engine,
    config: Config,
    cache: Result<Cache, String>,
    fingerprint: Fingerprint,
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
    let runner = Runner {
        fingerprint: fingerprint(&engine),
        engine,
        config,
        cache,
    };
    // SAFETY: the shim starts us with our end of the request socket as fd 0, and nothing
    // else in this process owns fd 0.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    zygote::serve(sock, |req, fds| container_main(&runner, req, fds))
}

fn warm_up(engine: &Engine) {
    let run = || -> Result<(), String> {
        let loaded = engine
            .load_bytes(Path::new("warm-up"), WARM_UP_MODULE)
            .map_err(|e| e.to_string())?;
        let inst = engine
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
fn container_main(runner: &Runner, req: SpawnRequest, fds: ContainerFds) -> i32 {
    let pid = std::process::id() as i32;
    let control = fds.control;
    match prepare(runner, &req, fds.stdin, fds.stdout, fds.stderr) {
        Ok((instance, timings, warning)) => {
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
            match instance.run() {
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

type Prepared = (wasmedge_aot_engine::Instance, Timings, Option<String>);

fn prepare(
    runner: &Runner,
    req: &SpawnRequest,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Prepared, String> {
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
    // Before joining the cgroup: a compile is the node's cost, not the pod's.
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
    let mut warning = resolved.warning.clone();

    let entered = Instant::now();
    if let Some(path) = &plan.cgroups_path {
        wasmedge_aot_shim::cgroup::join(path, std::process::id())
            .map_err(|e| format!("join cgroup {path}: {e}"))?;
    }
    if let Some(ns) = &plan.network_ns {
        let f = std::fs::File::open(ns).map_err(|e| format!("open netns {}: {e}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter netns {}: {e}", ns.display()))?;
    }

    let enter_us = entered.elapsed().as_micros() as u64;
    let started = Instant::now();
    let interpret = || -> Result<Loaded, String> {
        let bytes = std::fs::read(&plan.module)
            .map_err(|e| format!("read {}: {e}", plan.module.display()))?;
        engine
            .load_bytes(&plan.module, &bytes)
            .map_err(|e| e.to_string())
    };
    let loaded: Loaded = match &resolved.code {
        CodeSource::Interpreter => interpret()?,
        CodeSource::Native(so) => match engine.load_native(so) {
            Ok(l) => l,
            Err(e) => {
                warning = Some(format!("{e}; running it in the interpreter"));
                interpret()?
            }
        },
    };
    let load_us = started.elapsed().as_micros() as u64;

    let started = Instant::now();
    let wasi = WasiPlan {
        args: plan.args.clone(),
        env: plan.env.clone(),
        preopens: plan.preopens.iter().map(|p| p.to_wasmedge()).collect(),
    };
    let instance = engine
        .instantiate(&loaded, &wasi)
        .map_err(|e| e.to_string())?;
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
