//! What the benchmarks that drive the real runner share: the runner started as the shim
//! starts it (this process in the shim's place, the parent of its container processes),
//! the plan of a container isolated as `ctr run` isolates it by default, and one container
//! run from spawn to exit over the same two protocols the shim speaks.

#![allow(dead_code)] // each bench uses a part

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use wasmedge_aot_protocol::control::{ContainerPlan, Report, Start, MAX_MESSAGE};
use wasmedge_aot_protocol::spawn::{
    BlockingClient, PidNamespace, SpawnFds, SpawnReply, SpawnRequest,
};
use wasmedge_aot_protocol::wire;

/// The runner the shim would start, with the node cache at `node/cache`.
pub fn start_runner(node: &Path) -> BlockingClient {
    let config = wasmedge_aot_protocol::config::Config {
        cache_dir: node.join("cache"),
        ..Default::default()
    };
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/wasmedge-shim-runner");
    assert!(
        runner.exists(),
        "{} is missing: cargo build --release --workspace --bins",
        runner.display()
    );
    let (sock, _child) =
        wasmedge_aot_protocol::spawn::start_runner(&runner, Stdio::inherit(), &config).unwrap();
    BlockingClient::new(sock)
}

/// The plan of a container running `args` in `rootfs`, as `ctr run` makes it by default:
/// its own pid, mount, network, IPC and UTS namespaces, the default mounts (proc, a fresh
/// /dev with devpts, shm and mqueue, sysfs), masked and read-only paths, the default
/// capabilities, no_new_privs; the spec translated by the shim's own code.
pub fn isolated_plan(rootfs: &Path, args: &[&str]) -> (ContainerPlan, PidNamespace) {
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process.set_no_new_privileges(Some(true));
    spec.set_process(Some(process));
    // A cgroups path, as ctr's specs have one: a spec without one is refused (its device
    // rules would have no cgroup). `run_container` sets the path each run uses.
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some("/wasmedge-aot-bench/plan".into()));
    spec.set_linux(Some(linux));
    let cs = wasmedge_aot_shim::spec::container(
        &spec,
        wasmedge_aot_shim::spec::cgroups_path(&spec).unwrap(),
        Default::default(),
    )
    .unwrap();
    let mut plan = cs.plan;
    plan.root.path = rootfs.to_owned();
    plan.env = vec!["PATH=/".into()];
    let pid = match cs.pid {
        wasmedge_aot_shim::spec::Ns::New => PidNamespace::New,
        _ => PidNamespace::Inherit,
    };
    (plan, pid)
}

/// One container run through the runner, as the shim does it: its cgroup (at `cgroup`, if
/// any), spawn, plan, Ready, start, exit. Returns the time to the container's exit (the
/// cgroup's removal is the delete's cost) and its exit code.
pub fn run_container(
    runner: &BlockingClient,
    module: &File,
    plan: &(ContainerPlan, PidNamespace),
    name: &str,
    cgroup: Option<String>,
) -> (Duration, i32) {
    let devnull = || -> OwnedFd { File::open("/dev/null").unwrap().into() };
    let devnull_w = || -> OwnedFd {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into()
    };
    let (plan, pid_namespace) = plan;
    let mut plan = plan.clone();
    plan.cgroup = cgroup;
    let (stdin, stdout, stderr) = (devnull(), devnull_w(), devnull_w());
    let (ours, theirs) = UnixStream::pair().unwrap();

    let t = Instant::now();
    if let Some(path) = &plan.cgroup {
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_linux(None);
        // The device policy a CRI container gets: deny-all and runc's defaults.
        let devices = wasmedge_aot_shim::cgroup::devices::Policy::of_spec(&[], &[]).unwrap();
        wasmedge_aot_shim::cgroup::create(path, &spec, &devices).unwrap();
    }
    // The plan fits in the socket's buffer: it waits there for the process.
    let body = wire::encode("plan", &plan).unwrap();
    wire::send_framed(
        ours.as_fd(),
        &body,
        &[stdin.as_fd(), stdout.as_fd(), stderr.as_fd()],
    )
    .unwrap();
    let req = SpawnRequest {
        id: name.to_string(),
        module_name: plan.args[0].clone(),
        module_hash: None,
        policy: None,
        pid_namespace: *pid_namespace,
        into_cgroup: false,
    };
    let pid = match runner
        .spawn(
            &req,
            SpawnFds {
                control: theirs.as_fd(),
                module: module.as_fd(),
                pid_ns: None,
                cgroup: None,
            },
        )
        .unwrap()
    {
        SpawnReply::Spawned { pid } => pid,
        SpawnReply::Failed { error } => panic!("spawn: {error}"),
    };
    drop(theirs);
    let (report, _) = wire::recv_framed(ours.as_fd(), MAX_MESSAGE).unwrap();
    match wire::decode::<Report>("report", &report).unwrap() {
        Report::Ready { .. } => {}
        other => panic!("container process did not get ready: {other:?}"),
    }
    wire::send_framed(ours.as_fd(), &wire::encode("start", &Start).unwrap(), &[]).unwrap();
    // The container process is our child, as it is the shim's.
    let pid = nix::unistd::Pid::from_raw(pid);
    let status = nix::sys::wait::waitpid(pid, None).unwrap();
    let elapsed = t.elapsed();
    let code = match status {
        nix::sys::wait::WaitStatus::Exited(_, code) => code,
        other => panic!("container {name} ended with {other:?}"),
    };
    if let Some(path) = &plan.cgroup {
        wasmedge_aot_shim::cgroup::remove_recorded(path);
    }
    (elapsed, code)
}
