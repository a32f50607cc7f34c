//! What the node's processes agree on.
//!
//! - [`config`]: the node's shim configuration file, read by the shim, the runner and the
//!   admin tool alike.
//! - [`spawn`]: the runner socket. The shim asks its runner (the warm WasmEdge fork server)
//!   for a container process; the runner answers with the process's pid. The request says
//!   which module to run and how the process must be born (its pid namespace, its cgroup),
//!   and nothing about the container itself: argv and env (where Kubernetes puts secrets)
//!   never pass through the runner, whose memory every later container process is forked
//!   from.
//! - [`container`]: the control stream, shim ↔ one container process. The shim sends the
//!   container's whole plan (argv, env, user, capabilities, mounts, namespaces, seccomp
//!   filter, stdio), the process reports when it is ready to run, and the shim says `start`.
//!
//! Both are JSON over unix sockets with file descriptors passed as `SCM_RIGHTS`
//! ([`wire`]): each side of every message has one encoder and one decoder, here.
//!
//! And the records the shim leaves for the admin tool (`wasmedge-shimctl`), which must not
//! link the shim to read them:
//!
//! - [`identity`]: which binaries and configuration a node shim runs, and its state file.
//! - [`phases`]: the node-wide sums of each container's start phases, in the cache's layout.
//! - [`precompile`]: how the admin tool has the runner compile a module into the cache.
//!
//! And one rule the shim and the admin tool must apply alike: [`wasm_layer`], which layer of
//! an image whose module is a layer of its own a container runs (and `precompile --image`
//! compiles).

pub mod config;
pub mod control;
pub mod identity;
pub mod phases;
pub mod precompile;
pub mod spawn;
pub mod wasm_layer;
pub mod wire;
