//! A container's whole cycle through the shim's task API, as containerd drives it, without
//! containerd or `ctr` in the timed path (issue 26): a client of our own speaks ttrpc to the
//! shim and sends `Create`, `Start`, `Wait` and `Delete`, one container after another, each
//! RPC timed apart.
//!
//! The shim is started the way containerd starts it: `containerd-shim-wasmedge-v1 start` in a
//! bundle, with containerd's flags (`-namespace`, `-id`, `-address`, `-publish-binary`,
//! `-debug`) and environment (`TTRPC_ADDRESS`, `GRPC_ADDRESS`, `NAMESPACE`), printing the
//! address the client dials. A private containerd (the tests' harness) receives the shim's
//! events and serves its content store. Each container gets a bundle prepared before its
//! cycle and removed after it, untimed: `ctr`'s own spec for a Wasm container with
//! `--seccomp` (read back from a container record, so containerd's default profile, ctr's
//! namespaces and its default device rules), a `linux.cgroupsPath` of `/<namespace>/<id>`,
//! and its rootfs as an overlay mount of the hello module's directory, as a snapshotter hands
//! it over: every boundary on.
//!
//! Reported: criterion's figure for the whole cycle and one for each RPC; then, over every
//! cycle the bench ran, the median of each and of the shim's own phases (its debug log, read
//! from the `log` FIFO of the bundle it started in). `TASK_API_CYCLES=N` runs N cycles in a
//! row instead and prints the same medians as plain text (`profiling/task-api.sh`), and with
//! `TASK_API_LOG=FILE` writes the shim's log there; `TASK_API_SHIM=PATH` runs another build's
//! shim binary (with its runner beside it), for A/B comparisons.
//!
//! Needs root (containerd, mounts, cgroups); says so and exits when not root.
//! `cargo bench --bench task_api` (or `cargo criterion --bench task_api`)

// A benchmark reports its figures on stdout, as criterion does.
#![allow(clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture, Containerd, Rootfs};
use containerd_shim_protos::api;
use containerd_shim_protos::shim_sync::{Client, TaskClient};
use criterion::{criterion_group, Criterion};

const RPCS: [&str; 4] = ["create", "start", "wait", "delete"];

/// The shim, started as containerd starts it, and a ttrpc client of its task service.
struct Harness {
    client: TaskClient,
    /// `ctr`'s spec of a Wasm container with `--seccomp`, as JSON.
    spec: serde_json::Value,
    /// The hello module's directory: every container's overlay's lower layer.
    lower: Rootfs,
    bundles: PathBuf,
    /// The shim's log lines, as the `log` FIFO of its first bundle carries them.
    log: Arc<Mutex<Vec<String>>>,
    n: u64,
    /// Each cycle's RPC times, in `RPCS` order.
    cycles: Vec<[Duration; 4]>,
}

impl Harness {
    fn new() -> Harness {
        let ctd = common::containerd();
        let lower = Rootfs::with(&[("hello.wasm", &fixture("probe.wasm"))]);
        let bundles = ctd.dir.join("task-api");
        std::fs::create_dir_all(&bundles).unwrap();
        let spec = ctr_spec(ctd, lower.path());
        let (address, log) = start_shim(ctd, &bundles.join("shim"));
        let client = TaskClient::new(Client::connect(&address).unwrap());
        Harness {
            client,
            spec,
            lower,
            bundles,
            log,
            n: 0,
            cycles: Vec::new(),
        }
    }

    /// A bundle for container `id`: its config.json and an empty rootfs directory, with the
    /// overlay's upper and work directories beside it. Returns the request's rootfs mount.
    fn bundle(&self, id: &str) -> (PathBuf, api::Mount) {
        let bundle = self.bundles.join(id);
        for d in ["rootfs", "upper", "work"] {
            std::fs::create_dir_all(bundle.join(d)).unwrap();
        }
        let mut spec = self.spec.clone();
        spec["root"] = serde_json::json!({ "path": "rootfs" });
        spec["linux"]["cgroupsPath"] = format!("/{}/{id}", common::namespace()).into();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let mount = api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", bundle.join("work").display()),
                format!("upperdir={}", bundle.join("upper").display()),
                format!("lowerdir={}", self.lower.path().display()),
            ],
            ..Default::default()
        };
        (bundle, mount)
    }

    /// One container: create, start, wait, delete, each timed; its bundle prepared before and
    /// removed after, untimed.
    fn cycle(&mut self) -> [Duration; 4] {
        self.n += 1;
        let id = format!("taskapi-{}-{}", std::process::id(), self.n);
        let (bundle, mount) = self.bundle(&id);
        let stdout = bundle.join("stdout");
        let ctx = || {
            containerd_shim_protos::ttrpc::context::with_timeout(
                Duration::from_secs(30).as_nanos() as i64
            )
        };
        let mut times = [Duration::ZERO; 4];

        let create = api::CreateTaskRequest {
            id: id.clone(),
            bundle: bundle.display().to_string(),
            rootfs: vec![mount],
            stdout: stdout.display().to_string(),
            ..Default::default()
        };
        let t = Instant::now();
        let created = self.client.create(ctx(), &create);
        times[0] = t.elapsed();
        let created = created.unwrap_or_else(|e| panic!("create {id}: {e}\n{}", self.log_tail()));
        assert!(created.pid > 0);

        let start = api::StartRequest {
            id: id.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        self.client.start(ctx(), &start).unwrap();
        times[1] = t.elapsed();

        let wait = api::WaitRequest {
            id: id.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        let waited = self.client.wait(ctx(), &wait).unwrap();
        times[2] = t.elapsed();
        assert_eq!(waited.exit_status, 0, "{id}\n{}", self.log_tail());

        let delete = api::DeleteRequest {
            id: id.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        self.client.delete(ctx(), &delete).unwrap();
        times[3] = t.elapsed();

        let out = std::fs::read_to_string(&stdout).unwrap_or_default();
        assert_eq!(out, "hello from wasm\n", "{id}");
        std::fs::remove_dir_all(&bundle)
            .unwrap_or_else(|e| panic!("remove {}: {e}", bundle.display()));
        self.cycles.push(times);
        times
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(20)..].join("\n")
    }

    /// The medians of the cycles since `from`: each RPC's, the whole cycle's, and each phase
    /// the shim logged for those containers (`name N µs` in its debug lines).
    fn report(&self, from: usize) {
        let cycles = &self.cycles[from..];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "task API, {} cycles in a row: median per RPC (ms)",
            cycles.len()
        );
        for (i, rpc) in RPCS.iter().enumerate() {
            let v: Vec<f64> = cycles.iter().map(|c| ms(c[i])).collect();
            println!("  {rpc:>8}: {:8.3}", median(v));
        }
        let whole: Vec<f64> = cycles.iter().map(|c| ms(c.iter().sum())).collect();
        println!("  {:>8}: {:8.3}", "cycle", median(whole));

        let first = self.n as usize - cycles.len() + 1;
        let ids: Vec<String> = (first..=self.n as usize)
            .map(|n| format!("container taskapi-{}-{n}: ", std::process::id()))
            .collect();
        let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for line in self.log.lock().unwrap().iter() {
            let Some(msg) = ids.iter().find_map(|id| line.split_once(id.as_str())) else {
                continue;
            };
            for (name, us) in phase_pairs(msg.1) {
                phases.entry(name).or_default().push(us);
            }
        }
        println!("the shim's phases, median over those containers (µs)");
        for (name, v) in phases {
            println!(
                "  {name:>22}: {:8.0}   ({} lines)",
                median(v.clone()),
                v.len()
            );
        }
    }
}

/// `name N µs` pairs of a phase line: `cgroup 704 µs, spawn to ready 4168 µs: hash 63 µs`.
fn phase_pairs(msg: &str) -> Vec<(String, f64)> {
    msg.split('"')
        .next()
        .unwrap_or_default()
        .split([',', ':', ';'])
        .filter_map(|part| {
            let part = part.trim().strip_suffix(" µs")?;
            let (name, n) = part.rsplit_once(' ')?;
            Some((name.trim().to_string(), n.parse().ok()?))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `ctr`'s spec of a Wasm container run with `--seccomp`: from a container record `ctr`
/// makes (and that is removed again), so containerd's default seccomp profile, ctr's
/// namespaces, mounts, masked paths and device rules, as `ctr run` gives them.
fn ctr_spec(ctd: &Containerd, rootfs: &Path) -> serde_json::Value {
    let id = format!("taskapi-spec-{}", std::process::id());
    ctd.ctr_ok(&[
        "container",
        "create",
        "--runtime",
        common::RUNTIME,
        "--seccomp",
        "--rootfs",
        rootfs.to_str().unwrap(),
        &id,
        "/hello.wasm",
    ]);
    let info: serde_json::Value =
        serde_json::from_str(&ctd.ctr_ok(&["container", "info", &id])).unwrap();
    ctd.ctr_ok(&["container", "rm", &id]);
    let spec = info["Spec"].clone();
    assert!(
        spec["linux"]["seccomp"].is_object() && spec["linux"]["namespaces"].is_array(),
        "no seccomp profile or namespaces in ctr's spec: {spec}"
    );
    spec
}

/// Starts the shim as containerd does (`start` in a bundle, containerd's flags and
/// environment) and returns the address it prints, with the lines of the `log` FIFO of that
/// bundle, read as containerd reads it.
fn start_shim(ctd: &Containerd, bundle: &Path) -> (String, Arc<Mutex<Vec<String>>>) {
    std::fs::create_dir_all(bundle).unwrap();
    let fifo = bundle.join("log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Read-write, as containerd opens it: the shim's non-blocking open finds a reader.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().unwrap().push(line);
        }
    });
    std::fs::write(bundle.join("config.json"), b"{}").unwrap();
    let binary = common::containerd_binary();
    let address = ctd.address.display().to_string();
    // Another build's shim, for an A/B comparison (its runner beside it).
    let shim = std::env::var_os("TASK_API_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::shim_dir().join("containerd-shim-wasmedge-v1"));
    let out = Command::new(shim)
        .current_dir(bundle)
        .args(["-namespace", common::namespace(), "-id", "taskapi-shim"])
        .args(["-address", &address])
        .arg("-publish-binary")
        .arg(&binary.containerd)
        .args(["-debug", "start"])
        .env("TTRPC_ADDRESS", format!("{address}.ttrpc"))
        .env("GRPC_ADDRESS", &address)
        .env("NAMESPACE", common::namespace())
        .env("WASMEDGE_AOT_SHIM_CONFIG", ctd.dir.join("shim.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shim start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let address = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        address.starts_with("unix://"),
        "shim start printed {address:?}"
    );
    (address, lines)
}

fn task_api(c: &mut Criterion) {
    let mut h = Harness::new();
    // The module's compile, the runner's start and its zygote: none of it in the figures.
    for _ in 0..5 {
        h.cycle();
    }
    let from = h.cycles.len();
    let h = Mutex::new(h);
    let mut g = c.benchmark_group("task API (create, start, wait, delete)");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("whole cycle", |b| {
        b.iter_custom(|iters| {
            let mut h = h.lock().unwrap();
            (0..iters).map(|_| h.cycle().iter().sum::<Duration>()).sum()
        })
    });
    for (i, rpc) in RPCS.iter().enumerate() {
        g.bench_function(*rpc, |b| {
            b.iter_custom(|iters| {
                let mut h = h.lock().unwrap();
                (0..iters).map(|_| h.cycle()[i]).sum()
            })
        });
    }
    g.finish();
    h.lock().unwrap().report(from);
}

criterion_group!(benches, task_api);

fn main() {
    if !common::can_run("task API benchmark") {
        return;
    }
    if let Some(n) = std::env::var("TASK_API_CYCLES")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut h = Harness::new();
        for _ in 0..5 {
            h.cycle();
        }
        let from = h.cycles.len();
        for _ in 0..n {
            h.cycle();
        }
        h.report(from);
        if let Some(path) = std::env::var_os("TASK_API_LOG") {
            std::fs::write(path, h.log.lock().unwrap().join("\n")).unwrap();
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
