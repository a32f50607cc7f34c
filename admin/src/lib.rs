//! `wasmedge-shimctl`, the admin tool of the WasmEdge shim, and the library behind it.
//!
//! An operator's product, apart from the shim daemon: the daemon links none of this crate's
//! dependencies (clap, toml_edit, tar, sha2), and this crate links nothing of the daemon. What
//! both read is in the crates they share: the node config, a node shim's state file and the
//! phase totals in `wasmedge-aot-protocol`, the cache and its trust rule in
//! `wasmedge-aot-cache`.
//!
//! - [`install`]: copies the binaries onto a node and registers the runtime in containerd's
//!   config (and undoes both).
//! - [`check`]: whether a node has what the shim needs, with the evidence.
//! - [`image`]: OCI image archives of a Wasm module (a plain image or a Wasm artifact), built
//!   without a registry or a daemon, and read back to find an image's module (for
//!   `precompile --image`). The integration tests and demos build their images with it.
//!
//! The binary (`src/main.rs`) adds the command line, `precompile` and the cache commands
//! (`ls`, `stats`, `verify`, `gc`, `rm`).

pub mod check;
pub mod image;
pub mod install;
