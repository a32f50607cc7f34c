//! wasmedge-shim-runner: the fork server the shim starts (see ARCHITECTURE.md).
//!
//! It links WasmEdge once, warms it, opens the node cache, and then serves the runner
//! socket ([`wasmedge_aot_protocol::spawn`]) on its fd 0: for each request it finds the
//! module's code ([`code`]), forks one process for the container ([`serve`]), and that
//! process isolates itself as the container's spec asks, instantiates the module and runs
//! it ([`process`]). Modules that miss the cache are compiled by processes of their own
//! ([`compile`]), outside every container. `--precompile` compiles one module into the
//! cache for `wasmedge-shimctl precompile` instead.
//!
//! The runner forks, so it never starts a thread: a child inherits a thread pool, a lock or
//! a thread's state without the threads behind them (a test checks the thread count).

mod code;
mod compile;
mod hierarchies;
mod node;
mod process;
mod serve;
mod sys;
mod zygote;

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use wasmedge_aot_engine::{Engine, RunOutcome, WasiPlan};
use wasmedge_aot_protocol::config::Config;

/// An empty `_start`. Running it once before serving makes the runner touch WasmEdge's
/// lazily initialised state, so children share it instead of each building its own.
const WARM_UP_MODULE: &[u8] = wasmedge_aot_engine::EMPTY_COMMAND;

fn main() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(wasmedge_aot_protocol::precompile::FLAG.as_ref()) {
        let name = args.next().unwrap_or_default();
        std::process::exit(compile::precompile_main(&name.to_string_lossy()));
    }
    // The shim's config, as it loaded it; the file only for a runner started by hand. A
    // config from the shim this runner cannot read (an older shim's, after an upgrade that
    // changed its fields) is no reason to run another one: the defaults would be another
    // cache and other limits than the shim's identity names.
    let config = match Config::from_env(wasmedge_aot_protocol::spawn::CONFIG_ENV) {
        Some(Ok(config)) => config,
        Some(Err(e)) => {
            eprintln!("wasmedge-shim-runner: the shim's config: {e}");
            std::process::exit(1);
        }
        None => Config::load().unwrap_or_else(|e| {
            eprintln!("wasmedge-shim-runner: {e}; using the defaults");
            Config::default()
        }),
    };
    let runner = match code::CodeFinder::new(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wasmedge-shim-runner: {e}");
            std::process::exit(1);
        }
    };
    warm_up(runner.node.engine());
    release_compiler_pages();
    // SAFETY: the shim starts us with our end of the runner socket as fd 0, and nothing
    // else in this process owns fd 0.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    serve::serve(sock, &runner)
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
            RunOutcome::Exited(0) => Ok(()),
            RunOutcome::Exited(code) => Err(format!("exited with {code}")),
            RunOutcome::Trapped(trap) => Err(format!("trapped: {trap}")),
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
