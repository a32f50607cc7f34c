//! The shim under Kubernetes: containerd's CRI plugin driven over its unix socket the way
//! kubelet drives it for a Pod with `runtimeClassName: wasmedge` on the host network (no
//! CNI): run the pod sandbox, create, start, stop and remove its containers, read their logs
//! in the CRI format, and check that nothing is left behind. Pods mix Wasm containers with
//! Linux ones (a native sidecar and init container, run by runc through the shim), which
//! share the pod's network, IPC, volumes and logs, and take `ExecSync`.
//!
//! No image can be pulled here, so the tests build their images with
//! [`wasmedge_shimctl::image`] (the pause image included) and import them into containerd's
//! `k8s.io` namespace.
//!
//! `cargo test --test cri -- --ignored` prints the start latency and memory per pod.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    security_profile::ProfileType, Capability, ContainerConfig, ContainerMetadata, ContainerState,
    ContainerStats, ContainerStatsRequest, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, ImageStatusRequest, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListPodSandboxRequest, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, SecurityProfile, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, UpdateContainerResourcesRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};
use wasmedge_shimctl::image::{ImageBuilder, Platform};

use common::{fixture, Containerd};

/// The runtime handler a `RuntimeClass` names; the harness registers it.
const HANDLER: &str = "wasmedge";
/// The containerd namespace of the CRI plugin.
const K8S_NS: &str = "k8s.io";
const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.8";
const APP_IMAGE: &str = "example.com/wasmedge-cri/probe:1";
const NOT_WASM_IMAGE: &str = "example.com/wasmedge-cri/not-wasm:1";
/// probe.wasm as the one layer of its image (runwasi's layout).
const LAYER_IMAGE: &str = "example.com/wasmedge-cri/probe:wasm-layer";
/// A Linux image: `/native-tool`, the static native sidecar and init container.
const NATIVE_IMAGE: &str = "example.com/wasmedge-cri/native-tool:1";
const SHIM_BINARY: &str = "containerd-shim-wasmedge-v1";
const RUNNER_BINARY: &str = "wasmedge-shim-runner";

// ---------------------------------------------------------------------------------------
// Images

/// An image of `files` (mode 0755) for the host's linux platform, which a plain
/// `ctr images import` takes and unpacks, as kubelet's pause image must be anyway.
// The image module's default platform, wasip1/wasm, is refused by a plain import of
// containerd 1.7 ("image might be filtered out"); with `--all-platforms` it is imported and
// the CRI plugin unpacks it at CreateContainer. The tests keep to the default import.
fn linux_image(reference: &str, entrypoint: &str, files: &[(&str, &Path)]) -> ImageBuilder {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut image = ImageBuilder::image(reference)
        .platform(Platform {
            os: "linux".into(),
            arch: arch.into(),
        })
        .entrypoint([entrypoint]);
    for (path, from) in files {
        image = image.file(path, std::fs::read(from).unwrap(), 0o755);
    }
    image
}

/// The CRI-enabled containerd of this test binary, with the pause image and the app images
/// imported into `k8s.io`.
fn cri() -> &'static Containerd {
    static CTD: OnceLock<Containerd> = OnceLock::new();
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let ctd = CTD.get_or_init(|| {
        let ctd = Containerd::start(true);
        let dir = tempfile::tempdir().unwrap();
        let images = [
            // The pause image kubelet's sandbox uses; this runtime runs no process for it.
            // A pause that stays up, as the real one does: runc's pods (which the
            // measurement compares with) keep their namespaces in it.
            linux_image(
                PAUSE_IMAGE,
                "/pause",
                &[("/pause", &fixture("native-sleep"))],
            ),
            linux_image(
                APP_IMAGE,
                "/probe.wasm",
                &[("/probe.wasm", &fixture("probe.wasm"))],
            ),
            linux_image(
                NOT_WASM_IMAGE,
                "/app.wasm",
                &[("/app.wasm", &fixture("not-wasm.txt"))],
            ),
            linux_image(
                NATIVE_IMAGE,
                "/native-tool",
                &[("/native-tool", &fixture("native-tool"))],
            ),
        ];
        for (i, image) in images.iter().enumerate() {
            let archive = dir.path().join(format!("image{i}.tar"));
            image.write(&archive).unwrap();
            ctd.ctr_in_ok(K8S_NS, &["images", "import", archive.to_str().unwrap()]);
        }
        ctd
    });
    REGISTERED.call_once(|| common::images::shutdown_at_exit(ctd));
    ctd
}

// ---------------------------------------------------------------------------------------
// A CRI client, as kubelet is one

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

struct Cri {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    ctd: &'static Containerd,
}

/// A pod sandbox of ours; removed (with its containers) on drop if a test did not.
struct Pod {
    id: String,
    name: String,
    config: PodSandboxConfig,
    logs: tempfile::TempDir,
    socket: PathBuf,
    removed: bool,
}

impl Drop for Pod {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let (socket, id) = (self.socket.clone(), self.id.clone());
        // A failed test: leave no shim behind. Our runtime may be unwinding; use a new one.
        let _ = std::thread::spawn(move || {
            block_on(async move {
                let mut rt = RuntimeServiceClient::new(channel(&socket).await);
                let _ = rt
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
                let _ = rt
                    .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                    .await;
            })
        })
        .join();
    }
}

async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    // The URI is not used: the connector dials containerd's unix socket.
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap()
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos:x}", std::process::id())
}

/// Host network, as `hostNetwork: true`: no CNI, no network namespace.
fn host_network(pid: NamespaceMode) -> Option<NamespaceOption> {
    Some(NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

/// A container of `image` running `command` (kubelet passes the pod spec's `command`).
fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: host_network(NamespaceMode::Container),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Cri {
    async fn connect(ctd: &'static Containerd) -> Cri {
        let ch = channel(&ctd.address).await;
        let mut cri = Cri {
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch),
            ctd,
        };
        // The CRI plugin learns of imported images from containerd's events: wait for them.
        for image in [PAUSE_IMAGE, APP_IMAGE, NOT_WASM_IMAGE, NATIVE_IMAGE] {
            cri.wait_image(image).await;
        }
        cri
    }

    async fn wait_image(&mut self, image: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .img
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .unwrap_or_else(|e| panic!("ImageStatus {image}: {e}\n{}", self.ctd.log_tail()))
                .into_inner();
            if status.image.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI plugin does not see image {image}\n{}",
                self.ctd.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn run_pod(&mut self, name: &str) -> Pod {
        self.run_pod_with(name, host_network(NamespaceMode::Container))
            .await
    }

    /// A pod with these namespace options (CNI gives it a network unless it is the host's).
    async fn run_pod_with(&mut self, name: &str, namespaces: Option<NamespaceOption>) -> Pod {
        self.run_pod_in(name, namespaces, String::new()).await
    }

    /// A pod whose containers' cgroups are under `cgroup_parent` (kubelet always names one).
    async fn run_pod_in(
        &mut self,
        name: &str,
        namespaces: Option<NamespaceOption>,
        cgroup_parent: String,
    ) -> Pod {
        self.run_pod_of(HANDLER, name, namespaces, cgroup_parent)
            .await
    }

    /// A pod of the runtime handler `handler` (`runc` for the runtime we are measured against).
    async fn run_pod_of(
        &mut self,
        handler: &str,
        name: &str,
        namespaces: Option<NamespaceOption>,
        cgroup_parent: String,
    ) -> Pod {
        let logs = tempfile::Builder::new()
            .prefix("cri-logs")
            .tempdir()
            .unwrap();
        let name = unique(name);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid: unique("uid"),
                namespace: "default".into(),
                attempt: 0,
            }),
            log_directory: logs.path().display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent,
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: namespaces,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", self.ctd.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        Pod {
            id,
            name,
            config,
            logs,
            socket: self.ctd.address.clone(),
            removed: false,
        }
    }

    async fn create(
        &mut self,
        pod: &Pod,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        Ok(self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await?
            .into_inner()
            .container_id)
    }

    async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await?;
        Ok(())
    }

    /// Creates and starts a container; panics with containerd's log if either fails.
    async fn run(&mut self, pod: &Pod, config: ContainerConfig) -> String {
        let name = config.metadata.as_ref().unwrap().name.clone();
        let id = self
            .create(pod, config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", self.ctd.log_tail()));
        self.start(&id)
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}\n{}", self.ctd.log_tail()));
        id
    }

    /// The container's status and, from the verbose info, its task's pid.
    async fn status(&mut self, id: &str) -> (ContainerStatus, Option<i32>) {
        let resp = self
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner();
        let pid = resp
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| v["pid"].as_i64())
            .map(|p| p as i32);
        (resp.status.unwrap(), pid)
    }

    async fn wait_exited(&mut self, id: &str, timeout: Duration) -> ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, _) = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit in {timeout:?}: {status:?}\n{}",
                self.ctd.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop_and_remove(&mut self, id: &str) {
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}\n{}", self.ctd.log_tail()));
        self.rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}\n{}", self.ctd.log_tail()));
    }

    async fn remove_pod(&mut self, mut pod: Pod) {
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| {
                panic!("StopPodSandbox {}: {e}\n{}", pod.name, self.ctd.log_tail())
            });
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RemovePodSandbox {}: {e}\n{}",
                    pod.name,
                    self.ctd.log_tail()
                )
            });
        pod.removed = true;
    }

    /// Checks that no pod sandbox or task of `ids` is left, nor any of the container
    /// processes `pids` (the shim, shared by the pods of the node, may stay a while).
    async fn assert_gone(&mut self, ids: &[&str], pids: &[i32]) {
        let pods = self
            .rt
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        for id in ids {
            assert!(!pods.iter().any(|p| p.id == *id), "pod {id} still listed");
        }
        let tasks = self.ctd.ctr_in_ok(K8S_NS, &["task", "ls"]);
        for id in ids {
            assert!(!tasks.contains(id), "task {id} remains:\n{tasks}");
        }
        for pid in pids {
            assert!(
                exe_name(*pid) != RUNNER_BINARY,
                "container process {pid} remains\n{}",
                self.ctd.log_tail()
            );
        }
    }

    /// The sandbox task's pid, which for this runtime is the pod's shim process.
    fn task_pid(&self, id: &str) -> Option<i32> {
        let out = self.ctd.ctr_in_ok(K8S_NS, &["task", "ls"]);
        out.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && f[0] == id)
                .then(|| f[1].parse().ok())
                .flatten()
        })
    }
}

impl Pod {
    /// The container's log as `(stream, tag, content)` lines, checking the CRI line format
    /// `<RFC3339Nano timestamp> <stream> <P|F> <content>`. Waits up to 5 s for `lines` lines:
    /// containerd writes the log asynchronously.
    fn log(&self, container: &str, lines: usize) -> Vec<(String, String, String)> {
        let path = self.logs.path().join(container).join("0.log");
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= lines || Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        text.lines()
            .map(|line| {
                let mut f = line.splitn(4, ' ');
                let (ts, stream, tag) = (f.next().unwrap(), f.next(), f.next());
                assert!(
                    is_rfc3339_nano(ts),
                    "bad timestamp in CRI log line {line:?}"
                );
                (
                    stream.unwrap_or_default().to_string(),
                    tag.unwrap_or_default().to_string(),
                    f.next().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// `2026-11-28T17:23:27.123456789Z` or with a `+01:00` offset.
fn is_rfc3339_nano(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() >= 21
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && (ts.ends_with('Z') || ts[20..].contains(['+', '-']))
}

fn exe_name(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn a_wasm_pod_runs_through_cri_logs_in_cri_format_and_leaves_nothing_behind() {
    if !common::can_run("cri_hello_pod") {
        return;
    }
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod = cri.run_pod("hello").await;
        let shim = cri.task_pid(&pod.id).expect("sandbox task listed");
        assert_eq!(
            exe_name(shim),
            SHIM_BINARY,
            "the sandbox's pid is its shim's"
        );

        let id = cri
            .run(&pod, container("hello", APP_IMAGE, &["/probe.wasm"]))
            .await;
        let status = cri.wait_exited(&id, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        assert_eq!(status.reason, "Completed", "{status:?}");
        assert_eq!(
            pod.log("hello", 1),
            [("stdout".into(), "F".into(), "hello from wasm".into())]
        );
        let (_, pid) = cri.status(&id).await;
        let pid = pid.expect("verbose status names the task pid");

        cri.stop_and_remove(&id).await;
        let pod_id = pod.id.clone();
        cri.remove_pod(pod).await;
        cri.assert_gone(&[&pod_id, &id], &[pid]).await;
    });
}

/// The `/proc/<pid>/status` lines whose keys are in `keys`, as `key: value`.
fn status_of(pid: i32, keys: &[&str]) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| keys.iter().any(|k| l.starts_with(&format!("{k}:"))))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn ns_inode(pid: i32, t: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{t}")).unwrap()
}

#[test]
fn a_restricted_pod_gets_its_security_context_and_its_containers_share_the_pods_namespaces() {
    if !common::can_run("cri_security_context") {
        return;
    }
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod = cri.run_pod("secure").await;
        // runAsUser: 1000, runAsNonRoot (kubelet checks the uid), capabilities.drop: [ALL],
        // seccompProfile: RuntimeDefault, allowPrivilegeEscalation: false.
        let mut restricted = container("restricted", APP_IMAGE, &["/probe.wasm", "sleep", "60"]);
        let sc = restricted
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        sc.run_as_user = Some(k8s_cri::v1::Int64Value { value: 1000 });
        sc.run_as_group = Some(k8s_cri::v1::Int64Value { value: 3000 });
        sc.capabilities = Some(Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        sc.seccomp = Some(SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            ..Default::default()
        });
        sc.no_new_privs = true;
        let a = cri.run(&pod, restricted).await;
        let b = cri
            .run(
                &pod,
                container("neighbour", APP_IMAGE, &["/probe.wasm", "sleep", "60"]),
            )
            .await;
        let (_, pa) = cri.status(&a).await;
        let (_, pb) = cri.status(&b).await;
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        assert_eq!(
            status_of(
                pa,
                &[
                    "Uid",
                    "Gid",
                    "CapEff",
                    "CapPrm",
                    "CapBnd",
                    "CapAmb",
                    "NoNewPrivs",
                    "Seccomp"
                ]
            ),
            [
                "Uid: 1000 1000 1000 1000",
                "Gid: 3000 3000 3000 3000",
                "CapPrm: 0000000000000000",
                "CapEff: 0000000000000000",
                "CapBnd: 0000000000000000",
                "CapAmb: 0000000000000000",
                "NoNewPrivs: 1",
                "Seccomp: 2",
            ]
        );
        // The pod's IPC namespace is shared by its containers and is not the host's; each
        // container has its own mount and pid namespaces; a host-network pod keeps the
        // host's network namespace.
        let host = std::process::id() as i32;
        assert_eq!(ns_inode(pa, "ipc"), ns_inode(pb, "ipc"));
        assert_ne!(ns_inode(pa, "ipc"), ns_inode(host, "ipc"));
        assert_eq!(ns_inode(pa, "uts"), ns_inode(pb, "uts"));
        assert_eq!(ns_inode(pa, "net"), ns_inode(host, "net"));
        for t in ["mnt", "pid"] {
            assert_ne!(ns_inode(pa, t), ns_inode(pb, t), "{t}");
            assert_ne!(ns_inode(pa, t), ns_inode(host, t), "{t}");
        }
        for id in [&a, &b] {
            cri.stop_and_remove(id).await;
        }
        cri.remove_pod(pod).await;
    });
}

#[test]
fn a_pod_with_a_network_of_its_own_shares_it_with_its_containers_and_not_with_the_host() {
    if !common::can_run("cri_pod_network") {
        return;
    }
    let ctd = cri();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod_ns = Some(NamespaceOption {
            network: NamespaceMode::Pod as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        });
        let pod = cri.run_pod_with("net", pod_ns.clone()).await;
        let in_pod = |name: &str, command: &[&str]| {
            let mut c = container(name, APP_IMAGE, command);
            c.linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap()
                .namespace_options = pod_ns.clone();
            c
        };
        let a = cri
            .run(&pod, in_pod("a", &["/probe.wasm", "sleep", "60"]))
            .await;
        let b = cri
            .run(&pod, in_pod("b", &["/probe.wasm", "sleep", "60"]))
            .await;
        let (_, pa) = cri.status(&a).await;
        let (_, pb) = cri.status(&b).await;
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        let host = std::process::id() as i32;
        for t in ["net", "ipc", "uts"] {
            assert_eq!(ns_inode(pa, t), ns_inode(pb, t), "{t}: the pod's");
            assert_ne!(ns_inode(pa, t), ns_inode(host, t), "{t}: not the host's");
        }
        // The pod's loopback is its own: the host's listener is out of reach.
        let c = cri
            .run(
                &pod,
                in_pod("c", &["/probe.wasm", "connect", "127.0.0.1", &port]),
            )
            .await;
        let status = cri.wait_exited(&c, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 3, "{status:?} {:?}", pod.log("c", 5));
        for id in [&a, &b, &c] {
            cri.stop_and_remove(id).await;
        }
        cri.remove_pod(pod).await;
    });
}

/// The pids of every process whose pid namespace is `ns` (a `pid:[inode]` link).
fn processes_in(ns: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_deref()
                == Some(ns)
        })
        .collect()
}

#[test]
fn share_process_namespace_gives_the_pod_one_pid_namespace_that_ends_with_it() {
    if !common::can_run("cri_share_process_namespace") {
        return;
    }
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let shared = host_network(NamespaceMode::Pod);
        let pod = cri.run_pod_with("pidns", shared.clone()).await;
        let in_pod = |name: &str, command: &[&str]| {
            let mut c = container(name, APP_IMAGE, command);
            c.linux
                .as_mut()
                .unwrap()
                .security_context
                .as_mut()
                .unwrap()
                .namespace_options = shared.clone();
            c
        };
        let a = cri
            .run(&pod, in_pod("a", &["/probe.wasm", "sleep", "60"]))
            .await;
        let b = cri
            .run(&pod, in_pod("b", &["/probe.wasm", "sleep", "60"]))
            .await;
        let (_, pa) = cri.status(&a).await;
        let (_, pb) = cri.status(&b).await;
        let (pa, pb) = (pa.unwrap(), pb.unwrap());
        let ns = ns_inode(pa, "pid");
        assert_eq!(ns, ns_inode(pb, "pid"));
        assert_ne!(ns, ns_inode(std::process::id() as i32, "pid"));
        // The pod's init, a and b, seen from inside by a third container.
        let c = cri
            .run(&pod, in_pod("c", &["/probe.wasm", "ls", "/proc"]))
            .await;
        let status = cri.wait_exited(&c, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        let pids: Vec<String> = pod
            .log("c", 200)
            .into_iter()
            .map(|(_, _, line)| line)
            .filter(|l| l.parse::<u32>().is_ok())
            .collect();
        assert!(pids.len() >= 4, "init, a, b and c: {pids:?}");
        assert!(pids.contains(&"1".to_string()), "{pids:?}");
        for id in [&a, &b, &c] {
            cri.stop_and_remove(id).await;
        }
        assert!(
            !processes_in(&ns).is_empty(),
            "the pod's init outlives its containers"
        );
        cri.remove_pod(pod).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_in(&ns).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            processes_in(&ns),
            Vec::<i32>::new(),
            "nothing of the pod is left"
        );
    });
}

#[test]
fn containers_of_a_pod_share_its_shim_and_stop_container_ends_a_running_module() {
    if !common::can_run("cri_two_containers") {
        return;
    }
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod = cri.run_pod("two").await;
        let shim = cri.task_pid(&pod.id).expect("sandbox task listed");
        assert_eq!(exe_name(shim), SHIM_BINARY);

        let sleeper = cri
            .run(
                &pod,
                container("sleeper", APP_IMAGE, &["/probe.wasm", "sleep", "1000"]),
            )
            .await;
        let (status, pid) = cri.status(&sleeper).await;
        assert_eq!(status.state, ContainerState::ContainerRunning as i32);
        let pid = pid.expect("verbose status names the task pid");
        assert_eq!(
            common::ppid(pid),
            Some(shim),
            "the container process is a child of the pod's shim"
        );
        assert_eq!(exe_name(pid), RUNNER_BINARY, "forked from the runner");

        let args = cri
            .run(
                &pod,
                container(
                    "args",
                    APP_IMAGE,
                    &["/probe.wasm", "args", "one", "two words"],
                ),
            )
            .await;
        let status = cri.wait_exited(&args, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        let out: Vec<String> = pod.log("args", 4).into_iter().map(|l| l.2).collect();
        assert_eq!(out, ["/probe.wasm", "args", "one", "two words"]);
        // The args container lived too briefly for its parent to be read; containerd's log
        // says which shim address it dialled for each task: the socket of the pod's shim.
        let socket = shim_socket(shim).expect("the shim's -socket argument");
        let log = ctd.log();
        let sandbox_marker = format!("RunPodSandbox for &PodSandboxMetadata{{Name:{},", pod.name);
        assert_eq!(
            bootstrap_address_after(&log, &sandbox_marker),
            Some(socket.clone())
        );
        for id in [&sleeper, &args] {
            let marker = format!("StartContainer for \\\"{id}\\\"");
            assert_eq!(
                bootstrap_address_after(&log, &marker),
                Some(socket.clone()),
                "task {id} served by another shim\n{}",
                ctd.log_tail()
            );
        }
        // One shim daemon in the namespace (each `start` briefly spawns one that exits when
        // it finds the socket taken).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let daemons = shim_daemons(ctd);
            if daemons == [shim] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "shim daemons {daemons:?}, expected [{shim}]"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // StopContainer: SIGTERM, then SIGKILL after the timeout; the module ends at once.
        let timeout = 5;
        let started = Instant::now();
        cri.rt
            .stop_container(StopContainerRequest {
                container_id: sleeper.clone(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", ctd.log_tail()));
        let stopped = started.elapsed();
        let (status, _) = cri.status(&sleeper).await;
        assert_eq!(
            status.state,
            ContainerState::ContainerExited as i32,
            "{status:?}"
        );
        assert!(
            stopped < Duration::from_secs(timeout as u64),
            "StopContainer took {stopped:?}"
        );
        assert!(
            [128 + libc::SIGTERM, 128 + libc::SIGKILL].contains(&status.exit_code),
            "{status:?}"
        );
        assert_ne!(
            exe_name(pid),
            RUNNER_BINARY,
            "the sleeper's process is gone"
        );
        let (_, args_pid) = cri.status(&args).await;

        for id in [&sleeper, &args] {
            cri.stop_and_remove(id).await;
        }
        let pod_id = pod.id.clone();
        cri.remove_pod(pod).await;
        let pids: Vec<i32> = [Some(pid), args_pid].into_iter().flatten().collect();
        cri.assert_gone(&[&pod_id, &sleeper, &args], &pids).await;
    });
}

#[test]
fn a_non_wasm_entrypoint_runs_as_a_linux_container_whose_failure_leaves_the_pod_usable() {
    if !common::can_run("cri_not_wasm") {
        return;
    }
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod = cri.run_pod("bad").await;
        // A script is no module: runc runs it, and its interpreter is not in the image.
        let bad = cri.run(&pod, container("bad", NOT_WASM_IMAGE, &[])).await;
        let status = cri.wait_exited(&bad, Duration::from_secs(30)).await;
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (1, "Error"),
            "{status:?}"
        );
        // runc's reason, in the container's log as kubectl logs shows it.
        assert_eq!(
            pod.log("bad", 1),
            [(
                "stderr".into(),
                "F".into(),
                "exec /app.wasm: no such file or directory".into()
            )]
        );

        let id = cri
            .run(&pod, container("hello", APP_IMAGE, &["/probe.wasm"]))
            .await;
        let status = cri.wait_exited(&id, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        assert_eq!(pod.log("hello", 1)[0].2, "hello from wasm");
        let (_, pid) = cri.status(&id).await;

        for id in [&bad, &id] {
            cri.stop_and_remove(id).await;
        }
        let pod_id = pod.id.clone();
        cri.remove_pod(pod).await;
        let pids: Vec<i32> = pid.into_iter().collect();
        cri.assert_gone(&[&pod_id, &bad, &id], &pids).await;
    });
}

#[test]
fn a_pod_runs_an_image_whose_module_is_a_wasm_layer() {
    if !common::can_run("cri_wasm_layer") {
        return;
    }
    let ctd = cri();
    // runwasi's layout, platform wasip1/wasm: imported with every platform, as the README
    // says (a plain import keeps only the host's).
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("layer.tar");
    ImageBuilder::wasm_layer(LAYER_IMAGE, std::fs::read(fixture("probe.wasm")).unwrap())
        .write(&archive)
        .unwrap();
    ctd.ctr_in_ok(
        K8S_NS,
        &[
            "images",
            "import",
            "--all-platforms",
            archive.to_str().unwrap(),
        ],
    );
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        cri.wait_image(LAYER_IMAGE).await;
        let pod = cri.run_pod("layer").await;
        // No command: the image's entrypoint, /app.wasm, which no rootfs holds.
        let id = cri.run(&pod, container("layer", LAYER_IMAGE, &[])).await;
        let status = cri.wait_exited(&id, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?}\n{}", ctd.log_tail());
        assert_eq!(pod.log("layer", 1)[0].2, "hello from wasm");
        let (_, pid) = cri.status(&id).await;
        cri.stop_and_remove(&id).await;
        let pod_id = pod.id.clone();
        cri.remove_pod(pod).await;
        let pids: Vec<i32> = pid.into_iter().collect();
        cri.assert_gone(&[&pod_id, &id], &pids).await;
    });
}

/// The `-socket` argument of a shim daemon: the address containerd dials for its tasks.
fn shim_socket(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let i = args.iter().position(|a| a == "-socket")?;
    args.get(i + 1).cloned()
}

/// The shim address in containerd's first line about dialling a shim after the first line
/// holding `marker` (the tests run one at a time, so that is this task's): `shim bootstrap
/// parameters` in containerd 1.7, `connecting to shim ID` in 2.x, both with `address="..."`.
fn bootstrap_address_after(log: &str, marker: &str) -> Option<String> {
    log.lines()
        .skip_while(|l| !l.contains(marker))
        .find(|l| {
            l.contains("msg=\"shim bootstrap parameters\"")
                || l.contains("msg=\"connecting to shim ")
        })?
        .split("address=\"")
        .nth(1)?
        .split('"')
        .next()
        .map(str::to_string)
}

/// Live shim daemons serving `ctd`'s `k8s.io` namespace (not `start`/`delete` runs).
fn shim_daemons(ctd: &Containerd) -> Vec<i32> {
    let address = format!("-address {} ", ctd.address.display());
    let mut pids: Vec<i32> = common::processes_matching(SHIM_BINARY)
        .into_iter()
        .filter(|(pid, cmd)| {
            exe_name(*pid) == SHIM_BINARY
                && cmd.contains(&address)
                && cmd.contains(&format!("-namespace {K8S_NS} "))
                && !cmd.trim_end().ends_with(" start")
                && !cmd.trim_end().ends_with(" delete")
        })
        .map(|(pid, _)| pid)
        .collect();
    pids.sort();
    pids
}

/// Proportional set size of a process, from `/proc/<pid>/smaps_rollup`, in KiB.
fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "measurement: run with --ignored; prints figures, asserts only that pods run"]
fn measure_pod_start_latency_and_memory_per_idle_pod() {
    if !common::can_run("cri_measure") {
        return;
    }
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;

        // RunPodSandbox → EXITED of a hello container, each run a fresh pod. The first run
        // warms the node cache (AOT compile of the probe), as any node that ran it once.
        // Each run: (RunPodSandbox returned, CreateContainer+StartContainer returned, EXITED).
        let mut runs: Vec<[Duration; 3]> = Vec::new();
        for i in 0..6 {
            let started = Instant::now();
            let pod = cri.run_pod("latency").await;
            let sandbox = started.elapsed();
            let id = cri
                .run(&pod, container("hello", APP_IMAGE, &["/probe.wasm"]))
                .await;
            let running = started.elapsed();
            let status = cri.wait_exited(&id, Duration::from_secs(60)).await;
            let exited = started.elapsed();
            assert_eq!(status.exit_code, 0, "{status:?}");
            if i > 0 {
                runs.push([sandbox, running, exited]);
            }
            cri.remove_pod(pod).await;
        }
        runs.sort_by_key(|r| r[2]);
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        let median = runs[runs.len() / 2];
        eprintln!(
            "cri: RunPodSandbox → container EXITED, hello pod: median {} ms of {} runs {:?} \
             (median run: sandbox ready at {} ms, container started at {} ms)",
            ms(median[2]),
            runs.len(),
            runs.iter().map(|r| ms(r[2])).collect::<Vec<_>>(),
            ms(median[0]),
            ms(median[1]),
        );

        // PSS of 20 idle pods: their shims, and the runners and container processes.
        const PODS: usize = 20;
        let mut pods = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..PODS {
            let pod = cri.run_pod("idle").await;
            let id = cri
                .run(
                    &pod,
                    container("sleeper", APP_IMAGE, &["/probe.wasm", "sleep", "1000"]),
                )
                .await;
            ids.push(id);
            pods.push(pod);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut containers = Vec::new();
        for id in &ids {
            let (status, pid) = cri.status(id).await;
            assert_eq!(
                status.state,
                ContainerState::ContainerRunning as i32,
                "{status:?}"
            );
            containers.push(pid.expect("verbose status names the task pid"));
        }
        // The pods' shims (their sandbox tasks' pids), and the runner processes under them:
        // each shim's runner, and the container processes the runner forks as the shim's children.
        // One pid per shim: with the node grouping every sandbox task's pid is the same shim.
        let mut shims: Vec<i32> = pods.iter().filter_map(|p| cri.task_pid(&p.id)).collect();
        shims.sort();
        shims.dedup();
        let all_shims: Vec<i32> = common::processes_matching(SHIM_BINARY)
            .into_iter()
            .filter(|(pid, cmd)| {
                exe_name(*pid) == SHIM_BINARY && cmd.contains(ctd.address.to_str().unwrap())
            })
            .map(|(pid, _)| pid)
            .collect();
        let runners: Vec<i32> = common::processes_matching(RUNNER_BINARY)
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| {
                exe_name(*pid) == RUNNER_BINARY
                    && common::ppid(*pid).is_some_and(|p| shims.contains(&p))
                    && !containers.contains(pid)
            })
            .collect();
        let sum = |pids: &[i32]| pids.iter().map(|p| pss_kib(*p)).sum::<u64>();
        let (shim_kib, runner_kib, container_kib) = (sum(&shims), sum(&runners), sum(&containers));
        let total = shim_kib + runner_kib + container_kib;
        eprintln!(
            "cri: {PODS} idle wasm pods (sandbox + `probe.wasm sleep 1000`): PSS {:.2} MiB per pod \
             ({total} KiB in all: {} shims {shim_kib} KiB, {} runners {runner_kib} KiB, \
             {} containers {container_kib} KiB; {} shim processes serve this containerd)",
            total as f64 / 1024.0 / PODS as f64,
            shims.len(),
            runners.len(),
            containers.len(),
            all_shims.len(),
        );
        for pod in pods {
            cri.remove_pod(pod).await;
        }
    });
}

// ---------------------------------------------------------------------------------------
// Linux containers in Wasm pods (issue 15)

/// `config` with the pod's namespace options and `mounts` (an `emptyDir` is a host directory
/// kubelet makes and bind-mounts into each container that names it).
fn in_pod(
    mut config: ContainerConfig,
    namespaces: &Option<NamespaceOption>,
    mounts: &[Mount],
) -> ContainerConfig {
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = namespaces.clone();
    config.mounts = mounts.to_vec();
    config
}

impl Cri {
    /// `ExecSync`: (exit code, stdout, stderr).
    async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
    ) -> Result<(i32, String, String), tonic::Status> {
        let resp = self
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 30,
            })
            .await?
            .into_inner();
        Ok((
            resp.exit_code,
            String::from_utf8_lossy(&resp.stdout).into_owned(),
            String::from_utf8_lossy(&resp.stderr).into_owned(),
        ))
    }

    async fn wait_log(&self, pod: &Pod, container: &str, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pod.log(container, 1).iter().any(|l| l.2 == line) {
            assert!(
                Instant::now() < deadline,
                "{container} did not log {line:?}: {:?}\n{}",
                pod.log(container, 1),
                self.ctd.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What is left of a Linux container on the node: runc's state of it, its cgroup (in any
/// hierarchy, under the pod's cgroup parent), the mounts of its bundle.
fn leftovers_of_linux_container(ctd: &Containerd, id: &str, cgroup_parent: &str) -> Vec<String> {
    let mut left = Vec::new();
    let state = Path::new("/run/wasmedge-aot-shim/runc")
        .join(K8S_NS)
        .join(id);
    if state.exists() {
        left.push(state.display().to_string());
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = hierarchy
            .path()
            .join(cgroup_parent.trim_start_matches('/'))
            .join(id);
        if cg.exists() {
            left.push(cg.display().to_string());
        }
    }
    let bundle = ctd
        .dir
        .join("state/io.containerd.runtime.v2.task")
        .join(K8S_NS)
        .join(id);
    left.extend(common::mounts_under(&bundle));
    left
}

#[test]
fn a_wasm_container_and_a_native_sidecar_share_the_pods_network_volume_and_logs() {
    if !common::can_run("cri_sidecar") {
        return;
    }
    let ctd = cri();
    let volume = tempfile::Builder::new()
        .prefix("empty-dir")
        .tempdir()
        .unwrap();
    let cgroup_parent = format!("/wasmedge-cri-{}", std::process::id());
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let ns = Some(NamespaceOption {
            network: NamespaceMode::Pod as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        });
        let pod = cri
            .run_pod_in("sidecar", ns.clone(), cgroup_parent.clone())
            .await;
        let data = [Mount {
            container_path: "/data".into(),
            host_path: volume.path().display().to_string(),
            ..Default::default()
        }];
        let wasm =
            |name: &str, command: &[&str]| in_pod(container(name, APP_IMAGE, command), &ns, &data);
        let native = |name: &str, command: &[&str]| {
            in_pod(container(name, NATIVE_IMAGE, command), &ns, &data)
        };

        // The init container runs to its end before the app starts, as kubelet runs it.
        let init = cri
            .run(
                &pod,
                native(
                    "init",
                    &[
                        "/native-tool",
                        "write",
                        "/data/from-init",
                        "prepared by init",
                    ],
                ),
            )
            .await;
        let status = cri.wait_exited(&init, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?} {:?}", pod.log("init", 1));
        assert_eq!(
            pod.log("init", 1),
            [("stdout".into(), "F".into(), "written".into())]
        );

        // The sidecar listens on the pod's loopback.
        let port = "8080";
        let sidecar = cri
            .run(&pod, native("sidecar", &["/native-tool", "listen", port]))
            .await;
        cri.wait_log(&pod, "sidecar", "listening on 127.0.0.1:8080")
            .await;
        let (status, sidecar_pid) = cri.status(&sidecar).await;
        assert_eq!(status.state, ContainerState::ContainerRunning as i32);
        let sidecar_pid = sidecar_pid.expect("verbose status names the task pid");
        let shim = cri.task_pid(&pod.id).expect("sandbox task listed");
        assert_eq!(exe_name(shim), SHIM_BINARY);

        // The Wasm container reads what the init container wrote, reaches the sidecar over
        // localhost, and writes for the sidecar to read.
        let reader = cri
            .run(
                &pod,
                wasm("reader", &["/probe.wasm", "cat", "/data/from-init"]),
            )
            .await;
        let status = cri.wait_exited(&reader, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?} {:?}", pod.log("reader", 1));
        assert_eq!(pod.log("reader", 1)[0].2, "prepared by init");

        let client = cri
            .run(
                &pod,
                wasm("client", &["/probe.wasm", "connect", "127.0.0.1", port]),
            )
            .await;
        let status = cri.wait_exited(&client, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?} {:?}", pod.log("client", 2));
        assert_eq!(pod.log("client", 1)[0].2, "connected");
        cri.wait_log(&pod, "sidecar", "accepted a connection").await;

        let writer = cri
            .run(
                &pod,
                wasm(
                    "writer",
                    &["/probe.wasm", "write", "/data/from-wasm", "written by wasm"],
                ),
            )
            .await;
        let status = cri.wait_exited(&writer, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?}");

        // ExecSync into the sidecar: its output and exit code, as kubectl exec and exec
        // probes see them.
        let (code, out, err) = cri
            .exec_sync(&sidecar, &["/native-tool", "cat", "/data/from-wasm"])
            .await
            .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", ctd.log_tail()));
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (0, "written by wasm", "")
        );
        let (code, out, err) = cri
            .exec_sync(&sidecar, &["/native-tool", "exit", "7", "probe failed"])
            .await
            .unwrap();
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (7, "probe failed\n", "probe failed on stderr\n")
        );
        let err = cri
            .exec_sync(&sidecar, &["/no-such-binary"])
            .await
            .map(|(code, out, err)| format!("exit {code}: {out}{err}"))
            .unwrap_or_else(|e| e.message().to_string());
        assert!(err.contains("no-such-binary"), "{err}");

        // The sidecar shares the pod's network, IPC and UTS namespaces with Wasm containers.
        let sleeper = cri
            .run(&pod, wasm("sleeper", &["/probe.wasm", "sleep", "60"]))
            .await;
        let (_, sleeper_pid) = cri.status(&sleeper).await;
        let sleeper_pid = sleeper_pid.unwrap();
        let host = std::process::id() as i32;
        for t in ["net", "ipc", "uts"] {
            assert_eq!(
                ns_inode(sidecar_pid, t),
                ns_inode(sleeper_pid, t),
                "{t}: the pod's"
            );
            assert_ne!(
                ns_inode(sidecar_pid, t),
                ns_inode(host, t),
                "{t}: not the host's"
            );
        }
        assert_ne!(ns_inode(sidecar_pid, "mnt"), ns_inode(host, "mnt"));
        // Exec into a Wasm container keeps its clear error.
        let err = cri
            .exec_sync(&sleeper, &["/probe.wasm"])
            .await
            .expect_err("no exec into a wasm container");
        assert!(
            err.message().contains("exec into a wasm container"),
            "{err:?}"
        );

        // The sidecar's log, in the CRI format.
        let log = pod.log("sidecar", 2);
        assert_eq!(
            log,
            [
                (
                    "stdout".into(),
                    "F".into(),
                    "listening on 127.0.0.1:8080".into()
                ),
                ("stdout".into(), "F".into(), "accepted a connection".into()),
            ]
        );

        // StopPodSandbox ends everything; RemovePodSandbox leaves nothing behind.
        let ids = [&init, &sidecar, &reader, &client, &writer, &sleeper];
        let pod_id = pod.id.clone();
        cri.remove_pod(pod).await;
        let mut pids = vec![sidecar_pid, sleeper_pid];
        pids.retain(|p| std::fs::metadata(format!("/proc/{p}")).is_ok());
        assert_eq!(pids, Vec::<i32>::new(), "processes of the pod remain");
        let mut all: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        all.push(&pod_id);
        cri.assert_gone(&all, &[sidecar_pid, sleeper_pid]).await;
        for id in [&init, &sidecar] {
            assert_eq!(
                leftovers_of_linux_container(ctd, id, &cgroup_parent),
                Vec::<String>::new(),
                "{id}"
            );
        }
    });
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(cgroup_parent.trim_start_matches('/')));
    }
}

#[test]
fn a_pod_of_only_linux_containers_runs_under_the_wasmedge_runtime_class() {
    if !common::can_run("cri_linux_pod") {
        return;
    }
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod = cri.run_pod("linux-only").await;
        let shim = cri.task_pid(&pod.id).expect("sandbox task listed");
        assert_eq!(
            exe_name(shim),
            SHIM_BINARY,
            "no pause process: the shim's pid"
        );
        let hello = cri
            .run(&pod, container("hello", NATIVE_IMAGE, &["/native-tool"]))
            .await;
        let status = cri.wait_exited(&hello, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 0, "{status:?}");
        assert_eq!(pod.log("hello", 1)[0].2, "hello from native");
        let failing = cri
            .run(
                &pod,
                container(
                    "failing",
                    NATIVE_IMAGE,
                    &["/native-tool", "exit", "3", "bye"],
                ),
            )
            .await;
        let status = cri.wait_exited(&failing, Duration::from_secs(30)).await;
        assert_eq!(status.exit_code, 3, "{status:?}");
        assert_eq!(status.reason, "Error", "{status:?}");

        // StopContainer ends a running one through runc's kill.
        let sleeper = cri
            .run(
                &pod,
                container("sleeper", NATIVE_IMAGE, &["/native-tool", "sleep", "1000"]),
            )
            .await;
        let (_, pid) = cri.status(&sleeper).await;
        let pid = pid.unwrap();
        assert_eq!(
            common::ppid(pid),
            Some(shim),
            "the shim reaps runc's container"
        );
        cri.stop_and_remove(&sleeper).await;
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_err(),
            "pid {pid} remains"
        );
        for id in [&hello, &failing] {
            cri.stop_and_remove(id).await;
        }
        let pod_id = pod.id.clone();
        cri.remove_pod(pod).await;
        cri.assert_gone(&[&pod_id, &hello, &failing, &sleeper], &[pid])
            .await;
        for id in [&hello, &failing, &sleeper] {
            assert_eq!(
                leftovers_of_linux_container(ctd, id, ""),
                Vec::<String>::new()
            );
        }
    });
}

/// A container of `image` running `command` with a memory limit, as the kubelet sends a
/// pod spec's `resources.limits.memory`.
fn limited(name: &str, image: &str, command: &[&str], memory: i64) -> ContainerConfig {
    let mut c = container(name, image, command);
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: memory,
        ..Default::default()
    });
    c
}

impl Cri {
    async fn stats(&mut self, id: &str) -> ContainerStats {
        self.rt
            .container_stats(ContainerStatsRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStats {id}: {e}\n{}", self.ctd.log_tail()))
            .into_inner()
            .stats
            .unwrap()
    }

    /// The kubelet's in-place resize of a container's memory limit.
    async fn resize_memory(&mut self, id: &str, memory: i64) {
        self.rt
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.into(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: memory,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "UpdateContainerResources {id}: {e}\n{}",
                    self.ctd.log_tail()
                )
            });
    }
}

#[test]
fn a_pod_s_containers_get_their_cgroups_from_the_node_s_driver_report_stats_and_are_resized() {
    if !common::can_run("cri_cgroups") {
        return;
    }
    use common::cgroup::{memory_cgroup, memory_limit, on_systemd, unit_property};
    let systemd = on_systemd();
    if std::env::var_os("WASMEDGE_SHIM_NODE_TESTS").is_some_and(|v| v == "1") {
        assert!(systemd, "the node VM runs systemd as PID 1 on cgroup v2");
    }
    // The cgroup parent as the kubelet names it for the node's driver: a pod's slice under
    // systemd (CRI then gives each container `slice:cri-containerd:<id>`, a transient scope,
    // which systemd places under kubepods.slice/kubepods-besteffort.slice/), else a directory.
    let uid = std::process::id();
    let cgroup_parent = if systemd {
        format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice")
    } else {
        format!("/wasmedge-cri-res-{uid}")
    };
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod = cri
            .run_pod_in(
                "resources",
                host_network(NamespaceMode::Container),
                cgroup_parent.clone(),
            )
            .await;
        let wasm = cri
            .run(
                &pod,
                limited(
                    "wasm",
                    APP_IMAGE,
                    &["/probe.wasm", "sleep", "300"],
                    64 << 20,
                ),
            )
            .await;
        let linux = cri
            .run(
                &pod,
                limited(
                    "linux",
                    NATIVE_IMAGE,
                    &["/native-tool", "sleep", "300"],
                    48 << 20,
                ),
            )
            .await;
        let mut dirs = Vec::new();
        for (id, limit) in [(&wasm, 64u64 << 20), (&linux, 48 << 20)] {
            let (_, pid) = cri.status(id).await;
            let dir = memory_cgroup(pid.unwrap());
            if systemd {
                let unit = format!("cri-containerd-{id}.scope");
                assert_eq!(
                    dir,
                    Path::new("/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice")
                        .join(format!("kubepods-besteffort-pod{uid}.slice"))
                        .join(&unit)
                );
                assert_eq!(unit_property(&unit, "MemoryMax"), limit.to_string());
            } else {
                assert!(
                    dir.ends_with(format!("wasmedge-cri-res-{uid}/{id}")),
                    "{dir:?}"
                );
            }
            assert_eq!(memory_limit(&dir), Some(limit), "{id}");
            let stats = cri.stats(id).await;
            let memory = stats.memory.unwrap();
            assert!(
                memory.working_set_bytes.unwrap().value > 0,
                "{id}: {memory:?}"
            );
            assert!(stats.cpu.is_some(), "{id}: no CPU stats");
            dirs.push(dir);
        }

        // The kubelet's in-place resize: the new limit in the kernel (and in systemd's
        // properties, which it would otherwise write back), the containers untouched.
        for id in [&wasm, &linux] {
            cri.resize_memory(id, 96 << 20).await;
        }
        for (id, dir) in [&wasm, &linux].into_iter().zip(&dirs) {
            assert_eq!(memory_limit(dir), Some(96 << 20), "{id}");
            if systemd {
                assert_eq!(
                    unit_property(&format!("cri-containerd-{id}.scope"), "MemoryMax"),
                    (96u64 << 20).to_string()
                );
            }
            let (status, _) = cri.status(id).await;
            assert_eq!(
                status.state,
                ContainerState::ContainerRunning as i32,
                "{id}"
            );
        }

        for id in [&wasm, &linux] {
            cri.stop_and_remove(id).await;
        }
        cri.remove_pod(pod).await;
        for dir in &dirs {
            assert!(!dir.exists(), "{} outlived its container", dir.display());
        }
        if systemd {
            for id in [&wasm, &linux] {
                let unit = format!("cri-containerd-{id}.scope");
                assert_ne!(unit_property(&unit, "ActiveState"), "active", "{unit}");
            }
        }
    });
    if !systemd {
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ =
                std::fs::remove_dir(hierarchy.path().join(cgroup_parent.trim_start_matches('/')));
        }
    }
}

/// Warm pod start, RunPodSandbox to the container's exit, of a Wasm pod of this runtime and
/// of a runc pod running a static native hello, interleaved, with the node's cgroup driver
/// (each pod in a slice of its own where systemd is PID 1). A measurement: it prints the
/// medians and their ratio (the node VM runs it: `profiling/node-vm-pod-start.sh`).
#[test]
fn measure_warm_pod_start_against_runc() {
    if !common::can_run("cri_pod_start_vs_runc") {
        return;
    }
    let systemd = common::cgroup::on_systemd();
    let runs: usize = std::env::var("POD_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5);
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
        // The first of each warms the node (the module's compile, runc's binaries' pages).
        for i in 0..=runs {
            for (k, (handler, image, argv)) in [
                (HANDLER, APP_IMAGE, "/probe.wasm"),
                ("runc", NATIVE_IMAGE, "/native-tool"),
            ]
            .into_iter()
            .enumerate()
            {
                let parent = if systemd {
                    format!(
                        "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}x{i}x{k}.slice",
                        std::process::id()
                    )
                } else {
                    String::new()
                };
                let started = Instant::now();
                let pod = cri
                    .run_pod_of(
                        handler,
                        "start",
                        host_network(NamespaceMode::Container),
                        parent,
                    )
                    .await;
                let id = cri.run(&pod, container("hello", image, &[argv])).await;
                let status = cri.wait_exited(&id, Duration::from_secs(120)).await;
                let elapsed = started.elapsed();
                assert_eq!(status.exit_code, 0, "{handler}: {status:?}");
                if i > 0 {
                    times[k].push(elapsed);
                }
                cri.remove_pod(pod).await;
            }
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e3
        };
        let (wasm, runc) = (median(&mut times[0]), median(&mut times[1]));
        eprintln!(
            "cri: warm pod start (RunPodSandbox to the container's exit), {} cgroups, median of \
             {runs} interleaved: wasmedge {wasm:.1} ms, runc {runc:.1} ms, ratio {:.2}",
            if systemd { "systemd" } else { "cgroupfs" },
            wasm / runc
        );
    });
}

/// The runtime's `SystemdCgroup` (the harness registers `wasmedge-systemd` with `true` and
/// `wasmedge-cgroupfs` with `false`, as `wasmedge-shimctl install` writes them) against the
/// cgroup path CRI gives for the node's driver: where they agree, a Wasm and a Linux
/// container run; where they differ, each create fails naming `SystemdCgroup` and
/// `linux.cgroupsPath`, before any cgroup or scope exists, and the pod stays usable.
#[test]
fn a_runtimes_systemd_cgroup_must_agree_with_the_cgroup_path_cri_gives() {
    if !common::can_run("cri_systemd_cgroup_option") {
        return;
    }
    use common::cgroup::{memory_cgroup, on_systemd, unit_property};
    let systemd = on_systemd();
    let uid = std::process::id();
    // The node's driver: a pod's slice under systemd, else a directory (this host).
    let (parent, agreeing, other, on) = if systemd {
        (
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}xopt.slice"
            ),
            "wasmedge-systemd",
            "wasmedge-cgroupfs",
            "false",
        )
    } else {
        (
            format!("/wasmedge-cri-opt-{uid}"),
            "wasmedge-cgroupfs",
            "wasmedge-systemd",
            "true",
        )
    };
    assert!(common::SYSTEMD_CGROUP_HANDLERS
        .iter()
        .any(|(h, _)| *h == agreeing));
    let ctd = cri();
    block_on(async {
        let mut cri = Cri::connect(ctd).await;
        let pod = cri
            .run_pod_of(
                agreeing,
                "option",
                host_network(NamespaceMode::Container),
                parent.clone(),
            )
            .await;
        for (name, image, argv) in [
            ("wasm", APP_IMAGE, "/probe.wasm"),
            ("linux", NATIVE_IMAGE, "/native-tool"),
        ] {
            let id = cri
                .run(&pod, container(name, image, &[argv, "sleep", "300"]))
                .await;
            let (_, pid) = cri.status(&id).await;
            let dir = memory_cgroup(pid.unwrap());
            if systemd {
                assert!(
                    dir.ends_with(format!("cri-containerd-{id}.scope")),
                    "{dir:?}"
                );
            } else {
                assert!(
                    dir.ends_with(format!("wasmedge-cri-opt-{uid}/{id}")),
                    "{dir:?}"
                );
            }
            cri.stop_and_remove(&id).await;
        }
        cri.remove_pod(pod).await;

        let pod = cri
            .run_pod_of(
                other,
                "option",
                host_network(NamespaceMode::Container),
                parent.clone(),
            )
            .await;
        for (name, image, argv) in [
            ("wasm", APP_IMAGE, "/probe.wasm"),
            ("linux", NATIVE_IMAGE, "/native-tool"),
        ] {
            let id = cri
                .create(&pod, container(name, image, &[argv]))
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
            // CRI creates the task, where the shim reads the options, at StartContainer.
            let e = cri.start(&id).await.unwrap_err();
            assert!(
                e.message().contains(&format!(
                    "runtime options: SystemdCgroup = {on} in the runtime's options"
                )) && e.message().contains("but linux.cgroupsPath"),
                "{name}: {e}"
            );
            if systemd {
                let unit = format!("cri-containerd-{id}.scope");
                assert_eq!(unit_property(&unit, "LoadState"), "not-found", "{unit}");
            } else {
                for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
                    let dir = hierarchy
                        .path()
                        .join(parent.trim_start_matches('/'))
                        .join(&id);
                    assert!(!dir.exists(), "{} made for a refused create", dir.display());
                }
            }
            cri.rt
                .remove_container(RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
        }
        // The pod of the refused containers is still the shim's to stop and remove.
        let sandbox = pod.id.clone();
        cri.remove_pod(pod).await;
        cri.assert_gone(&[&sandbox], &[]).await;
    });
    if !systemd {
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join(parent.trim_start_matches('/')));
        }
    }
}
