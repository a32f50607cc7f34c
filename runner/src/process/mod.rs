//! A container process, from its birth in the runner's fork to its first guest instruction.
//!
//! The steps, in the order they run (each a function of its own, each timed):
//!
//! 1. **birth**: close every descriptor inherited from the runner but this container's
//!    own; a session of its own. Timed from the fork in the parent (`fork`: the kernel's
//!    copy of the parent, the scheduler, the first copy-on-write faults).
//! 2. **plan**: read the container's plan and stdio from the shim on the control stream
//!    (timed as the wait for it: the shim sends it once the runner has answered).
//!    The runner never sees a plan: no container's env, and of its argv only `args[0]`
//!    (the request's `module_name`), is in the memory later container processes are forked
//!    from. The kernel shows the plan's env as the process's (`/proc/<pid>/environ`), not
//!    the runner's ([`environ`]).
//! 3. **cgroup**: join the container's cgroup (unless born in it), so that everything it
//!    allocates from here on is the container's; write the OOM score.
//! 4. **code**: the module's code: its zygote's template, native code from the cache (after
//!    waiting for its compile, under the synchronous policy), or the module's bytes for the
//!    interpreter, which step 9 parses, as the container.
//! 5. **namespaces**: join the pod's (or named) namespaces, create the container's own;
//!    hostname; loopback up in a new network namespace.
//! 6. **root**: the rootfs as its own mount, the spec's mounts inside it, devices; where
//!    the spec has hooks, the process reports and waits while the shim runs them
//!    (`prestart`, `createRuntime`); `pivot_root` (no host path exists for the process afterwards), sysctls, masked and
//!    read-only paths, a read-only root; `chdir` to the working directory.
//! 7. **user namespace**: rlimits first (raising a hard limit needs `CAP_SYS_RESOURCE`),
//!    then, where the plan has one, join it, or make it and have the shim write its id maps
//!    (`namespaces::enter_user` says why this comes so late).
//! 8. **credentials**: AppArmor, groups, uid/gid, capabilities (all five sets), umask,
//!    no_new_privs, and the seccomp filter last.
//! 9. **instantiate**: an interpreted module's bytes parsed and validated (as the container,
//!    under its filter), then the module with WASI preopens `/` and `.`, which are now the
//!    container's root and working directory: no host path reaches the module. This is the
//!    first step that can run guest code (a start section), so it comes after every drop.
//! 10. **ready**: report, wait for `start`, run.
//!
//! Any step that cannot do what the plan asks fails the create with an error that names
//! the step and the field; nothing runs with less isolation than asked.

mod credentials;
mod environ;
mod namespaces;
pub(crate) mod rootfs;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use wasmedge_aot_engine::{Instance, Loaded, Prepared, RunOutcome, WasiPlan};
use wasmedge_aot_protocol::config::Policy;
use wasmedge_aot_protocol::control::{
    CacheOutcome, ContainerPlan, HooksRan, IdsMapped, Report, Start, Tier, Timings, MAX_MESSAGE,
};
use wasmedge_aot_protocol::spawn::SpawnRequest;
use wasmedge_aot_protocol::wire;

use crate::code::{CodeFinder, Resolution};
use crate::sys::close_fds_except;

/// A step of a container process's set-up that failed; the create fails with it.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct StepError {
    pub step: &'static str,
    pub message: String,
}

/// `map_err` for a step.
pub(crate) fn at<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> StepError {
    move |e| StepError {
        step,
        message: e.to_string(),
    }
}

/// Runs in the container process; returns its exit code.
pub fn run(
    runner: &CodeFinder,
    req: &SpawnRequest,
    control: OwnedFd,
    module: File,
    res: Resolution,
) -> i32 {
    let control = UnixStream::from(control);
    match prepare(runner, req, &control, module, res) {
        Ok((mut instance, timings, warning)) => {
            let ready = Report::Ready { timings, warning };
            if send(&control, &ready).is_err() || !wait_for_start(&control) {
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
                RunOutcome::Exited(code) => code,
                RunOutcome::Trapped(msg) => {
                    eprintln!("wasm trap in {}: {msg}", req.module_name);
                    wasmedge_aot_engine::TRAP_EXIT_CODE
                }
            }
        }
        Err(error) => {
            let _ = send(
                &control,
                &Report::Failed {
                    error: error.to_string(),
                },
            );
            1
        }
    }
}

type ReadyToRun = (Instance, Timings, Option<String>);

fn prepare(
    runner: &CodeFinder,
    req: &SpawnRequest,
    control: &UnixStream,
    module: File,
    res: Resolution,
) -> Result<ReadyToRun, StepError> {
    // 1. Birth.
    let fork_us = res.forked.map_or(0, |t| micros(t.elapsed()));
    let mut keep: Vec<RawFd> = vec![control.as_raw_fd(), module.as_raw_fd()];
    keep.extend(runner.inherited_fds_to_keep(&res).map(|fd| fd.as_raw_fd()));
    close_fds_except(&keep);
    // Own session: a signal for the process group reaches nothing outside the container.
    let _ = nix::unistd::setsid();

    // 2. The plan, and the container's stdio in place of the runner's.
    let t = Instant::now();
    let (plan, fds) = receive_plan(control)?;
    let plan_us = micros(t.elapsed());
    let mut fds = fds.into_iter();
    for target in 0..3 {
        let fd = fds
            .next()
            .ok_or_else(|| at("plan")("stdio descriptors missing"))?;
        // SAFETY: dup2 onto the standard descriptors; the runner's (its socket on fd 0, the
        // shim's log on fd 2) are not used again in this process.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(at("stdio")(std::io::Error::last_os_error()));
        }
    }
    // Refused (no CAP_SYS_RESOURCE): the runner's environment shows, which is only
    // `spawn::RUNNER_ENV` and the node config (`spawn::CONFIG_ENV`).
    environ::show(&plan.env)?;
    let mut timings = Timings {
        fork_us,
        plan_us,
        hash_us: micros(res.hash),
        lookup_us: micros(res.lookup),
        cache: res.outcome,
        ..Timings::default()
    };

    // 3. Cgroup.
    let t = Instant::now();
    if let Some(path) = &plan.cgroup {
        if !req.into_cgroup {
            runner
                .node
                .cgroups
                .join_self(path)
                .map_err(|e| at("cgroup")(format!("join {path}: {e}")))?;
        }
    }
    timings.cgroup_us = micros(t.elapsed());
    credentials::oom_score_adj(&plan)?;
    let pending = credentials::prepare(&plan)?;

    // 4. Code.
    let t = Instant::now();
    let code = load_code(runner, req, &module, res, &mut timings)?;
    timings.load_us += micros(t.elapsed());
    drop(module);

    // 5. Namespaces.
    let t = Instant::now();
    namespaces::enter(&plan, &mut fds)?;
    timings.namespaces_us = micros(t.elapsed());

    // 6. Root; where the spec has hooks (`prestart`, `createRuntime`), the shim runs them
    // between the mounts and the pivot, as runc does, while this process waits, still as
    // the runner's, before any guest code.
    let hooks = || {
        if plan.hooks {
            send(control, &Report::Created).map_err(at("hooks"))?;
            if !receive::<HooksRan>(control, "hooks ran") {
                return Err(at("hooks")("the shim did not run the spec's hooks"));
            }
        }
        Ok(())
    };
    let (mounts, pivot) = rootfs::enter(&plan, &runner.node.cgroups, hooks)?;
    timings.mounts_us = micros(mounts);
    timings.pivot_us = micros(pivot);

    // 7. The user namespace, whose maps the shim writes; 8. credentials, seccomp last.
    // Rlimits first: raising a hard limit needs CAP_SYS_RESOURCE, which goes next.
    credentials::rlimits(&plan)?;
    let t = Instant::now();
    namespaces::enter_user(&plan, &mut fds, || {
        send(control, &Report::MapIds).map_err(at("user namespace"))?;
        if !receive::<IdsMapped>(control, "ids mapped") {
            return Err(at("user namespace")("the shim did not write the id maps"));
        }
        Ok(())
    })?;
    timings.namespaces_us += micros(t.elapsed());
    let (creds, seccomp) = credentials::apply(&plan, pending)?;
    timings.credentials_us = micros(creds);
    timings.seccomp_us = micros(seccomp);

    // 9. Instantiate, with the container's root as `/` and its working directory as `.`.
    // Only now: instantiation runs guest code (a module's start section), which must run
    // as the container, never with the set-up's host root, capabilities or no filter. The
    // preopens are opened as the container's user, as runc's process would open them.
    let t = Instant::now();
    let wasi = WasiPlan {
        args: plan.args.clone(),
        env: plan.env.clone(),
        preopens: preopens(&plan.cwd),
    };
    // Errors name the module as the container sees it, not the file WasmEdge read.
    let loaded = match code.loaded {
        Module::Loaded(l) => l,
        Module::Bytes(bytes) => {
            let l = runner
                .node
                .engine()
                .load_bytes(std::path::Path::new(&req.module_name), &bytes)
                .map_err(at("load"))?;
            timings.load_us += micros(t.elapsed());
            Rc::new(l)
        }
    };
    let t = Instant::now();
    let instance = match code.prepared {
        Some(p) => p.with_wasi(&wasi),
        None => runner.node.engine().instantiate(&loaded, &wasi),
    }
    .map_err(|e| at("instantiate")(e.in_module(std::path::Path::new(&req.module_name))))?;
    timings.instantiate_us = micros(t.elapsed());
    timings.tier = match loaded.execution() {
        wasmedge_aot_engine::Execution::Native => Tier::Native,
        wasmedge_aot_engine::Execution::Interpreter => Tier::Interpreter,
    };
    if std::process::id() == 1 {
        terminate_on_signals();
    }
    Ok((instance, timings, code.warning))
}

/// The only preopens a module gets. After `pivot_root` the process's `/` is the
/// container's root and its working directory the container's, so both are constant
/// strings: no path from a spec or an image ever reaches WasmEdge's `GUEST:HOST` syntax, and
/// what the module can reach is what the kernel lets the container reach (read-only mounts
/// included).
fn preopens(cwd: &str) -> Vec<String> {
    let mut p = vec!["/:/".to_string()];
    if !cwd.trim_end_matches('/').is_empty() {
        p.push(".:.".to_string());
    }
    p
}

struct Code {
    loaded: Module,
    prepared: Option<Prepared>,
    warning: Option<String>,
}

/// A module's code: loaded, or (for the interpreter) its bytes, which are parsed only once
/// the process is the container (step 9): a crafted module that reached a bug of WasmEdge's
/// loader would otherwise run as the set-up's host root, with every capability and no
/// seccomp filter.
enum Module {
    Loaded(Rc<Loaded>),
    Bytes(Vec<u8>),
}

/// Step 4: the module's code, loaded (not yet instantiated), or read to be parsed later.
fn load_code(
    runner: &CodeFinder,
    req: &SpawnRequest,
    module: &File,
    res: Resolution,
    timings: &mut Timings,
) -> Result<Code, StepError> {
    timings.load_us = micros(res.load);
    let mut warning = res.warning;
    if let Some((key, level)) = res.template {
        if let Some((loaded, prepared)) = runner.take_template(&key) {
            timings.opt_level = Some(level);
            return Ok(Code {
                loaded: Module::Loaded(loaded),
                prepared,
                warning,
            });
        }
    }
    // Native code without its template (its zygote refused it, or died): this process
    // loads it, charged to its own cgroup.
    if let Some((so, _, level)) = &res.artifact {
        match native(runner, so, *level, timings) {
            Ok(loaded) => return Ok(Code::native(loaded, warning)),
            Err(e) => warning = Some(e),
        }
    }
    if let (Some(job), Policy::Sync) = (&res.compile, res.policy) {
        let t = Instant::now();
        let found = wait_for_entry(runner, job, &res.wait_for);
        // The compile's pidfd (a handle on a root process of the node's) goes before the
        // container's boundary does: /dev/null takes its number, which the runner's table
        // still owns in this copy.
        if let Ok(null) = File::open("/dev/null") {
            // SAFETY: dup2 onto a descriptor this process holds replaces what it refers to.
            unsafe { libc::dup2(null.as_raw_fd(), job.pidfd.as_raw_fd()) };
        }
        timings.compile_us = micros(t.elapsed());
        match found {
            Some((artifact, level)) => match native(runner, &artifact.path, level, timings) {
                Ok(loaded) => {
                    timings.cache = if res.started_compile {
                        CacheOutcome::Compiled
                    } else {
                        CacheOutcome::WaitedHit
                    };
                    return Ok(Code::native(loaded, warning));
                }
                Err(e) => warning = Some(e),
            },
            None => {
                let why = res
                    .full_key
                    .and_then(|full| {
                        let c = runner.node.cache.as_ref().ok()?;
                        c.recent_failure(&full, crate::compile::RECORD_EXPLAINS)
                    })
                    .map(|f| (f.cause, f.message))
                    .unwrap_or_else(|| {
                        crate::compile::unexplained(&runner.node, "it ended without an artifact")
                    });
                warning = Some(format!(
                    "the aot compile of {} failed: {}: {}; running it in the interpreter",
                    req.module_name, why.0, why.1
                ))
            }
        }
        timings.cache = CacheOutcome::Fallback;
    }
    let bytes =
        read_all(module).map_err(|e| at("load")(format!("read {}: {e}", req.module_name)))?;
    Ok(Code {
        loaded: Module::Bytes(bytes),
        prepared: None,
        warning,
    })
}

impl Code {
    fn native(loaded: Loaded, warning: Option<String>) -> Code {
        Code {
            loaded: Module::Loaded(Rc::new(loaded)),
            prepared: None,
            warning,
        }
    }
}

/// Loads the native artifact `so` of tier `level` in this process; the warning says why not.
fn native(
    runner: &CodeFinder,
    so: &std::path::Path,
    level: u8,
    timings: &mut Timings,
) -> Result<Loaded, String> {
    let loaded = runner
        .node
        .engine()
        .load_native(so, &runner.node.link_dir)
        .map_err(|e| format!("{e}; running it in the interpreter"))?;
    timings.opt_level = Some(level);
    Ok(loaded)
}

/// Waits, as long as the compile runs, for one of the module's tiers (`keys`, best last) to
/// appear, and returns the best present: a compile publishes its quick tier long before it
/// ends with the full one, and a start that joined a compile of the full tier alone waits
/// for that.
fn wait_for_entry(
    runner: &CodeFinder,
    job: &crate::compile::Job,
    keys: &[(wasmedge_aot_cache::Key, u8)],
) -> Option<(wasmedge_aot_cache::Artifact, u8)> {
    let cache = runner.node.cache.as_ref().ok()?;
    loop {
        let ended = job.wait_for(Duration::from_millis(20));
        for (key, level) in keys.iter().rev() {
            if let Ok(Some(a)) = cache.lookup(key) {
                return Some((a, *level));
            }
        }
        if ended {
            return None;
        }
    }
}

fn read_all(f: &File) -> std::io::Result<Vec<u8>> {
    let len = f.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

fn receive_plan(control: &UnixStream) -> Result<(ContainerPlan, Vec<OwnedFd>), StepError> {
    let (bytes, fds) = wire::recv_framed(control.as_fd(), MAX_MESSAGE).map_err(at("plan"))?;
    let plan = wire::decode("container plan", &bytes).map_err(at("plan"))?;
    Ok((plan, fds))
}

/// Writes one framed message with plain `write`s: after the seccomp filter, the process
/// uses no more system calls than a profile is bound to allow (`read`, `write`).
fn send(mut control: &UnixStream, report: &Report) -> std::io::Result<()> {
    let body = wire::encode("report", report).map_err(std::io::Error::other)?;
    control.write_all(&wire::frame(&body))
}

/// Waits for the shim's [`Start`]. `false` means the shim went away or gave up.
fn wait_for_start(control: &UnixStream) -> bool {
    receive::<Start>(control, "start")
}

/// Reads one of the shim's small messages (a unit struct); `false` for anything else or
/// the end of the stream.
fn receive<T: wire::DeserializeOwned>(control: &UnixStream, what: &'static str) -> bool {
    wire::read_framed(control, 64).is_ok_and(|body| wire::decode::<T>(what, &body).is_ok())
}

/// As pid 1 of its pid namespace the process would ignore every signal it has no handler
/// for (the kernel protects a namespace's init). A Wasm module cannot install handlers, so
/// the signals that end a process by default end this one too, with the status a killed
/// process reports (128 + signal), as they would outside a pid namespace.
fn terminate_on_signals() {
    extern "C" fn terminate(sig: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) }
    }
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
    ] {
        // SAFETY: installs a handler that only calls an async-signal-safe function.
        unsafe { libc::signal(sig, terminate as *const () as libc::sighandler_t) };
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}
