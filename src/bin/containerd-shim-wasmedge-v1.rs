//! containerd-shim-wasmedge-v1: the shim binary containerd starts for
//! `runtime_type = "io.containerd.wasmedge.v1"`. It never links WasmEdge (see ARCHITECTURE.md).

use wasmedge_aot_shim::pod::{pod_init_main, POD_INIT};
use wasmedge_aot_shim::service::{WasmEdgeShim, RUNTIME_ID};

fn main() {
    // The shim runs as a pod's init under another name (see `pod::PodInit`).
    if std::env::args_os().next().as_deref() == Some(POD_INIT.to_str().unwrap_or_default().as_ref())
    {
        pod_init_main();
    }
    // runc's client writes its temporary files (exec process specs) to XDG_RUNTIME_DIR, else
    // to /tmp: the shim writes as root only under directories it owns. Set while the
    // process has one thread, before anything reads the environment.
    std::env::set_var("XDG_RUNTIME_DIR", wasmedge_aot_shim::linux::SCRATCH_DIR);
    shim();
}

// One thread: the shim only moves requests and fds around; the work happens in the
// container processes, and every extra thread would cost memory on a dense node.
#[tokio::main(flavor = "current_thread")]
async fn shim() {
    // The shim keeps its own logger: it writes to the log pipe of every live task, because
    // a node-wide shim outlives the bundle (and log pipe) it was started with.
    let config = containerd_shim::Config {
        no_setup_logger: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<WasmEdgeShim>(RUNTIME_ID, Some(config)).await;
}
