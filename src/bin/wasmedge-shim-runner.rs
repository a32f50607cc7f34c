//! wasmedge-shim-runner: the fork server the shim starts. It links WasmEdge once, warms it,
//! and forks one process per container (see `wasmedge_aot_shim::zygote`). The code here
//! runs in those container processes: enter the container's cgroup and network namespace,
//! take its stdio, load and instantiate the module, report, wait for start, run.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use wasmedge_aot_engine::{Engine, Loaded, Options, Outcome, WasiPlan};
use wasmedge_aot_shim::zygote::{self, CodeSource, ContainerFds, Report, SpawnRequest, Timings};

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
    let engine = match Engine::new(Options::default()) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("wasmedge-shim-runner: {e}");
            std::process::exit(1);
        }
    };
    warm_up(&engine);
    // SAFETY: the shim starts us with our end of the request socket as fd 0, and nothing
    // else in this process owns fd 0.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    zygote::serve(sock, |req, fds| container_main(&engine, req, fds))
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

/// Runs in the container process; returns its exit code.
fn container_main(engine: &Engine, req: SpawnRequest, fds: ContainerFds) -> i32 {
    let pid = std::process::id() as i32;
    let control = fds.control;
    match prepare(engine, &req, fds.stdin, fds.stdout, fds.stderr) {
        Ok((instance, timings)) => {
            if zygote::report(&control, &Report::Ready { pid, timings }).is_err()
                || !zygote::wait_for_start(&control)
            {
                // The shim gave up on this container before starting it.
                return 0;
            }
            drop(control);
            match instance.run() {
                Outcome::Exited(code) => code,
                trapped @ Outcome::Trapped(_) => {
                    if let Outcome::Trapped(msg) = &trapped {
                        eprintln!("wasm trap in {}: {msg}", req.plan.module.display());
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

fn prepare(
    engine: &Engine,
    req: &SpawnRequest,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<(wasmedge_aot_engine::Instance, Timings), String> {
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
    if let Some(path) = &plan.cgroups_path {
        wasmedge_aot_shim::cgroup::join(path, std::process::id())
            .map_err(|e| format!("join cgroup {path}: {e}"))?;
    }
    if let Some(ns) = &plan.network_ns {
        let f = std::fs::File::open(ns).map_err(|e| format!("open netns {}: {e}", ns.display()))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter netns {}: {e}", ns.display()))?;
    }

    let started = Instant::now();
    let loaded: Loaded = match &req.code {
        CodeSource::Interpreter => {
            let bytes = std::fs::read(&plan.module)
                .map_err(|e| format!("read {}: {e}", plan.module.display()))?;
            engine.load_bytes(&plan.module, &bytes)
        }
        CodeSource::Native(so) => engine.load_native(so),
    }
    .map_err(|e| e.to_string())?;
    let load_us = started.elapsed().as_micros() as u64;

    let started = Instant::now();
    let wasi = WasiPlan {
        args: plan.args.clone(),
        env: plan.env.clone(),
        preopens: plan.preopens.iter().map(|p| p.to_wasmedge()).collect(),
    };
    let instance = engine.instantiate(&loaded, &wasi).map_err(|e| e.to_string())?;
    Ok((
        instance,
        Timings {
            load_us,
            instantiate_us: started.elapsed().as_micros() as u64,
            tier: format!("{:?}", loaded.tier()).to_lowercase(),
        },
    ))
}
