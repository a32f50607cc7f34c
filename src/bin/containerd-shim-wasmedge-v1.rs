//! containerd-shim-wasmedge-v1: the shim binary containerd starts for
//! `runtime_type = "io.containerd.wasmedge.v1"`. It never links WasmEdge (see ARCHITECTURE.md).

use wasmedge_aot_shim::pod::{pod_init_main, POD_INIT};
use wasmedge_aot_shim::shim::WasmEdgeShim;
use wasmedge_aot_shim::RUNTIME_ID;

fn main() {
    // The shim runs as a pod's init under another name (see `pod::PodInit`).
    if std::env::args_os().next().as_deref() == Some(POD_INIT.to_str().unwrap_or_default().as_ref())
    {
        pod_init_main();
    }
    // containerd 2 asks what the runtime is and implements (`-info`, options on stdin).
    if std::env::args_os()
        .skip(1)
        .any(|a| a == "-info" || a == "--info")
    {
        info_main();
    }
    // runc's client writes its temporary files (exec process specs) to XDG_RUNTIME_DIR, else
    // to /tmp: the shim writes as root only under directories it owns. Set while the
    // process has one thread, before anything reads the environment.
    std::env::set_var(
        "XDG_RUNTIME_DIR",
        wasmedge_aot_shim::task::linux::SCRATCH_DIR,
    );
    shim();
}

fn info_main() -> ! {
    use std::io::{Read, Write};
    let mut options = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(wasmedge_aot_shim::info::MAX_OPTIONS + 1)
        .read_to_end(&mut options)
    {
        eprintln!("{RUNTIME_ID} -info: read the options: {e}");
        std::process::exit(1);
    }
    if options.len() as u64 > wasmedge_aot_shim::info::MAX_OPTIONS {
        eprintln!(
            "{RUNTIME_ID} -info: the options are larger than {} bytes",
            wasmedge_aot_shim::info::MAX_OPTIONS
        );
        std::process::exit(1);
    }
    let info =
        wasmedge_aot_shim::info::runtime_info(RUNTIME_ID, env!("CARGO_PKG_VERSION"), &options);
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(&info).and_then(|()| out.flush()) {
        eprintln!("{RUNTIME_ID} -info: {e}");
        std::process::exit(1);
    }
    std::process::exit(0)
}

// One runtime thread (`current_thread`): the shim only moves requests and fds around; the
// work happens in the container processes. Blocking work (files, systemd, the sweep, the
// look at an entrypoint) runs on tokio's blocking threads, and the records' writer
// (`records.rs`) and the copy of the runner's stderr into the log (`tasks.rs`) each have a
// thread of their own; a pod's namespaces are made, and a scope is stopped, on short-lived
// threads.
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
