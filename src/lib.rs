#![doc = include_str!("../README.md")]

pub mod cgroup;
pub mod command;
pub mod error;
pub mod hooks;
pub mod image_layers;
pub mod info;
pub mod logger;
pub mod options;
pub mod pod;
pub mod records;
pub mod runner;
pub mod seccomp;
pub mod service;
pub mod shim;
pub mod spec;
pub mod status;
pub mod stdio;
pub mod sweep;
pub mod task;
pub mod tasks;
pub mod wasm;

/// The name containerd knows this runtime by.
pub const RUNTIME_ID: &str = "io.containerd.wasmedge.v1";
/// The shim's own binary name.
pub const SHIM_BINARY: &str = "containerd-shim-wasmedge-v1";
/// Binary the shim forks containers from; found next to the shim binary.
pub const RUNNER_BINARY: &str = "wasmedge-shim-runner";

/// The node's configuration file, shared with the runner and the admin tool.
pub use wasmedge_aot_protocol::config;
/// The records the shim leaves for the admin tool: its identity and state file, and the
/// node's phase totals. The shim owns them; their formats live in the protocol crate, which
/// the admin tool reads them through.
pub(crate) use wasmedge_aot_protocol::{identity, phases};

/// Whether `name` can name a file of ours: containerd's ids and namespaces are
/// `[A-Za-z0-9_.-]+`, and anything else (a `/`, `..`) is refused rather than joined to a path.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Creates `dir` (0700, owned by the shim's user) and every missing directory above it,
/// checked from `/` down: what the shim writes as root lives only under directories it
/// owns and has checked (`wasmedge_aot_cache::trust`, the cache's own rule).
pub fn ensure_own_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let euid = wasmedge_aot_cache::trust::effective_uid();
    wasmedge_aot_cache::trust::ensure_dir(dir, euid, 0o700)
        .map(drop)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.display())))
}
