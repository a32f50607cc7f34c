//! The shim process: containerd's `start` and `delete` commands, and the daemon's
//! bootstrap (its run directory, the sweep of what dead shims left, its tasks and its
//! exit). The requests it serves are `service.rs`'s.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::asynchronous::util::{read_spec, write_str_to_file};
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Flags, StartOpts};
use log::{debug, info, warn};
use std::time::Duration;
use time::OffsetDateTime;

use wasmedge_aot_protocol::config::{Config, Grouping};

use crate::error::ShimError;
use crate::identity::{Identity, ShimState};
use crate::image_layers::ImageLayers;
use crate::service::TaskService;
use crate::spec::SANDBOX_ID_ANNOTATION;
use crate::sweep::socket_in_use;
use crate::tasks::{timestamp, Settings, Tasks};

/// Grouping key of the node-wide shim, followed by the key of its [`Identity`] (binaries and
/// configuration); the socket address also hashes containerd's address and the namespace,
/// so each namespace, binary and configuration gets its own shim.
const NODE_GROUP: &str = "wasmedge-node";
/// How long a starting node shim waits for the lock of its run directory that another
/// process holds (a sweep of a dead shim's directory of the same name cleaning up after it).
const RUN_DIR_WAIT: Duration = Duration::from_secs(10);
/// Where a node-wide shim keeps its working directory (it outlives the bundle it starts in)
/// and its [`ShimState`].
pub use wasmedge_aot_protocol::identity::STATE_ROOT;

/// The shim process: what containerd's `start` and `delete` commands and the daemon share.
pub struct WasmEdgeShim {
    namespace: String,
    id: String,
    socket: String,
    /// containerd's GRPC socket, where the Wasm layers of images are read.
    address: String,
    debug: bool,
    config: Config,
    /// The binaries this process runs and the digest of the config it loaded.
    identity: Identity,
    exit: Arc<ExitSignal>,
    /// The node shim's run directory and its lock, held from before the shim writes there
    /// until it exits (see `leave_bundle`).
    run_dir: std::sync::OnceLock<crate::sweep::RunDir>,
}

#[async_trait]
impl Shim for WasmEdgeShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        let (config, config_digest) = crate::identity::load_config(&Config::path());
        WasmEdgeShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            address: args.address.clone(),
            debug: args.debug,
            config,
            identity: Identity::of(
                Path::new("/proc/self/exe"),
                &crate::runner::installed_path(),
                config_digest,
            ),
            exit: Arc::new(ExitSignal::default()),
            run_dir: std::sync::OnceLock::new(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // Before `spawn` reads them as runc's (see `options::take_start_options`).
        crate::options::take_start_options(std::io::stdin().lock())
            .map_err(|e| containerd_shim::Error::InvalidArgument(e.to_string()))?;
        // `start` runs in the bundle.
        let grouping = match self.config.grouping {
            Grouping::Node => {
                // A pod's containers join the network namespace of its sandbox, which only
                // the shim serving the sandbox knows: they follow it, even to an older shim.
                if let Some(address) = sandbox_shim_address(&opts.id).await {
                    write_str_to_file("address", &address).await?;
                    return Ok(address);
                }
                format!("{NODE_GROUP}-{}", self.identity.key())
            }
            Grouping::Pod => read_spec(".")
                .await
                .ok()
                .and_then(|spec| spec.annotations().clone())
                .and_then(|a| a.get(SANDBOX_ID_ANNOTATION).cloned())
                .unwrap_or_else(|| opts.id.clone()),
        };
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // Clean-up after a shim that died: kill what it left and unmount the rootfs.
        let bundle = std::env::current_dir().unwrap_or_default();
        if let Some(pid) = crate::task::wasm::recorded_process(&bundle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // A Linux container: runc's state of it, its processes and its cgroup. When runc
        // fails, the rest is cleaned up all the same and containerd is told why; the dead
        // shim's record of the container stays for the sweep to retry.
        let runc_failed = match crate::task::linux::state_root(&self.namespace) {
            Ok(root) => crate::task::linux::force_delete(&root, &self.id)
                .await
                .err(),
            Err(_) => None,
        };
        let rootfs = bundle.join("rootfs");
        let _ = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH);
        // Its cgroup too (and whatever is still in it): the shim that made it is gone.
        if let Ok(spec) = read_spec(&bundle).await {
            // A path the shim would not have made (a climbing one) is left alone.
            if let Ok(Some(path)) = crate::spec::cgroups_path(&spec) {
                crate::cgroup::remove(&path);
            }
        }
        if let Some(e) = runc_failed {
            return Err(containerd_shim::Error::Other(format!(
                "container {}: {e}",
                self.id
            )));
        }
        info!(
            "cleaned up after dead shim of {} in {}",
            self.id, self.namespace
        );
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: timestamp(OffsetDateTime::now_utc()),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        if let Some(dir) = self.run_dir.take() {
            self.remove_run_dir(dir);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        // The framework builds the task service before it binds the socket, and a daemon
        // spawned for a group whose shim already runs exits right after. Such a daemon must
        // not start a runner or move out of the bundle.
        let serving = !socket_in_use(&self.socket);
        let mut state_dir = None;
        let mut swept = crate::sweep::Pending::default();
        if serving {
            if let Err(e) = crate::logger::init(&self.id, Path::new("log"), self.debug) {
                eprintln!("open shim log: {e}");
            }
            if self.config.grouping == Grouping::Node {
                // The bundle we started in is deleted with its task; move out of it.
                match self.leave_bundle().await {
                    Ok(Some(dir)) => {
                        state_dir = Some(dir.path().to_path_buf());
                        let _ = self.run_dir.set(dir);
                    }
                    Ok(None) => info!("node shim: another shim of {} serves", self.socket),
                    Err(e) => warn!("node shim: {e}"),
                }
                // What dead node shims left: their containers' cgroups and mounts, and their
                // run directories. Off the path of the first create, but planned before it:
                // a create of an id the sweep will go through waits for it (`sweep.rs`).
                let sweep =
                    crate::sweep::plan(Path::new(STATE_ROOT), state_dir.as_deref(), &self.address);
                swept = sweep.pending();
                tokio::task::spawn_blocking(move || sweep.run());
            }
        }
        let settings = Settings {
            namespace: self.namespace.clone(),
            layers: ImageLayers::new(&self.address, &self.namespace, self.config.wasm_layers),
            publisher,
            exit: self.exit.clone(),
            config: self.config.clone(),
            swept,
            state: state_dir.map(|dir| {
                let state = ShimState {
                    pid: std::process::id(),
                    namespace: self.namespace.clone(),
                    group: format!("{NODE_GROUP}-{}", self.identity.key()),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    identity: self.identity.clone(),
                    tasks: 0,
                    containerd: self.address.clone(),
                };
                (dir, state)
            }),
        };
        TaskService::new(Tasks::new(settings, serving).await)
    }
}

impl WasmEdgeShim {
    /// Moves the daemon's working directory to a directory of its own, with the `address`
    /// file the shim framework reads at exit to remove the socket, and returns it with its
    /// lock, which no sweep or idle exit removes it under (`sweep.rs`). `None` when another
    /// daemon of the socket holds it, and serves (two were started at once).
    async fn leave_bundle(&self) -> Result<Option<crate::sweep::RunDir>, ShimError> {
        let name: String = self
            .socket
            .rsplit('/')
            .next()
            .unwrap_or("shim")
            .chars()
            .take(16)
            .collect();
        let dir = Path::new(STATE_ROOT).join(format!("{}-{name}", self.namespace));
        // Checked from `/` down like the cache: we write here as root.
        let make = crate::ensure_own_dir;
        // Held by another process: a sweep removing a dead shim's directory of this name
        // (for as long as it cleans up after it), or a daemon of this socket started at the
        // same time, which serves once it answers on it.
        let (path, socket) = (dir.clone(), self.socket.clone());
        let taken = tokio::task::spawn_blocking(move || {
            crate::sweep::RunDir::take(&path, make, || socket_in_use(&socket), RUN_DIR_WAIT)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(ShimError::io(format!("create and lock {}", dir.display())))?;
        let Some(taken) = taken else {
            if socket_in_use(&self.socket) {
                return Ok(None);
            }
            return Err(ShimError::Io {
                context: format!("lock {}", dir.display()),
                source: std::io::Error::other(format!(
                    "still held by another process after {} s",
                    RUN_DIR_WAIT.as_secs()
                )),
            });
        };
        std::fs::write(dir.join("address"), &self.socket)
            .map_err(ShimError::io(format!("write {}/address", dir.display())))?;
        std::env::set_current_dir(&dir)
            .map_err(ShimError::io(format!("chdir {}", dir.display())))?;
        Ok(Some(taken))
    }

    /// A node shim that exits (idle, so it records no container) removes its run directory,
    /// which would otherwise stay until the host reboots, one per namespace, binary and
    /// config it ever ran with. First the directory, under the lock the shim has held all
    /// along, while the socket still answers: a `start` meanwhile finds this shim alive, so
    /// no new shim of the socket is in the directory. Then the socket, which the framework
    /// would remove after us through the `address` file of the directory, gone now.
    fn remove_run_dir(&self, dir: crate::sweep::RunDir) {
        let path = dir.path().to_path_buf();
        if let Err(e) = dir.remove() {
            warn!("remove {}: {e}", path.display());
        }
        let socket = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if let Err(e) = std::fs::remove_file(socket) {
            debug!("remove {socket}: {e}");
        }
    }
}

/// The address of the shim that serves the pod sandbox of the container whose bundle is the
/// current directory, if it is a pod's container (not the sandbox) and that shim is alive.
/// Sibling bundles are containerd's (`<state>/<namespace>/<id>`), and `start` wrote the
/// sandbox's `address` there.
async fn sandbox_shim_address(id: &str) -> Option<String> {
    let spec = read_spec(".").await.ok()?;
    let sandbox = spec
        .annotations()
        .as_ref()?
        .get(SANDBOX_ID_ANNOTATION)?
        .clone();
    let plain = !sandbox.is_empty() && !sandbox.contains('/') && sandbox != "." && sandbox != "..";
    if sandbox == id || !plain {
        return None;
    }
    let address = std::fs::read_to_string(Path::new("..").join(&sandbox).join("address")).ok()?;
    let address = address.trim().to_string();
    socket_in_use(&address).then_some(address)
}
