//! containerd-shim-wasmedge-v1: the shim binary containerd starts for
//! `runtime_type = "io.containerd.wasmedge.v1"`. It never links WasmEdge (see ARCHITECTURE.md).

use wasmedge_aot_shim::service::{WasmEdgeShim, RUNTIME_ID};

// One thread: the shim only moves requests and fds around; the work happens in the
// container processes, and every extra thread would cost memory on a dense node.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    containerd_shim::asynchronous::run::<WasmEdgeShim>(RUNTIME_ID, None).await;
}
