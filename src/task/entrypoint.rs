//! What runs a container: the look at its entrypoint (`process.args[0]`) that decides its
//! kind. A regular file in the rootfs that starts with Wasm's magic is a Wasm module; no
//! such file is the module of the image's Wasm layer, if the image has one
//! ([`crate::image_layers`]); anything else is runc's.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use log::warn;
use rustix::fs::{Mode, OFlags};
use wasmedge_aot_protocol::control::open_in_root;

use super::{CreateContext, New};
use crate::error::ShimError;
use crate::image_layers::LayerError;

/// What runs a container's entrypoint.
pub enum Entrypoint {
    /// A Wasm module: our path.
    Wasm(Module),
    /// Anything else: runc.
    Linux,
}

/// The module a Wasm container runs, and its hash if the shim already knows it.
pub struct Module {
    /// The container's root, opened (as a path) when the entrypoint was looked at.
    pub root: OwnedFd,
    pub file: File,
    /// Its first bytes, read once, when its kind was decided.
    pub header: crate::wasm::Header,
    /// blake3 of a module read from an image's Wasm layer (the runner then does not hash).
    pub hash: Option<String>,
}

/// What a look in the rootfs found.
enum Found {
    /// A file that starts with Wasm's magic, opened, with its first bytes, and the root
    /// it was found in.
    Wasm(OwnedFd, File, crate::wasm::Header),
    /// No such file in the root.
    Missing(OwnedFd, String),
    /// Anything else.
    Other,
}

/// How long the shim waits for a look at a container's entrypoint.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Looks at entrypoints at once, each on a blocking thread.
const PROBE_THREADS: usize = 4;
static PROBES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PROBE_THREADS);

/// What runs the container `new` with `spec` and its root at `rootfs`.
pub async fn probe(
    new: &New<'_>,
    spec: &oci_spec::runtime::Spec,
    rootfs: &Path,
    ctx: &CreateContext<'_>,
) -> Result<Entrypoint, ShimError> {
    Ok(match look(spec, rootfs).await {
        Found::Wasm(root, file, header) => Entrypoint::Wasm(Module {
            root,
            file,
            header,
            hash: None,
        }),
        Found::Missing(root, argv0) => match layer_module(new.id, root, &argv0, ctx).await? {
            Some(module) => Entrypoint::Wasm(module),
            None => Entrypoint::Linux,
        },
        Found::Other => Entrypoint::Linux,
    })
}

/// The module of a container whose entrypoint `argv0` is no file in its rootfs: its
/// image's Wasm layer. `None` when the image has no Wasm layer (or the container no
/// image): the container is then a Linux one, and runc's error names what is missing.
async fn layer_module(
    id: &str,
    root: OwnedFd,
    argv0: &str,
    ctx: &CreateContext<'_>,
) -> Result<Option<Module>, ShimError> {
    let entry_err = ShimError::create(id, "entrypoint");
    match ctx.layers.module(id, argv0).await {
        Ok(m) => {
            let file = m
                .open()
                .map_err(|e| entry_err(format!("open the module of {}: {e}", m.digest)))?;
            Ok(Some(Module {
                root,
                file,
                header: m.header,
                hash: Some(m.hash.to_hex()),
            }))
        }
        Err(LayerError::NoImage | LayerError::NoWasmLayer { .. } | LayerError::Off) => Ok(None),
        Err(e) => Err(entry_err(format!(
            "entrypoint {argv0:?} not found in the container root, and {e}"
        ))),
    }
}

/// [`found`], on a thread of its own: the rootfs may be a lazily pulled snapshot (a FUSE
/// file system that fetches a file's bytes from a registry when it is first read), and the
/// shim's runtime thread serves every container of the node. An entrypoint that cannot be
/// looked at in [`PROBE_TIMEOUT`] is runc's to run (runc's error then says why).
async fn look(spec: &oci_spec::runtime::Spec, rootfs: &Path) -> Found {
    let Some(process) = spec.process() else {
        return Found::Other;
    };
    let Some(entry) = process.args().as_ref().and_then(|a| a.first()).cloned() else {
        return Found::Other;
    };
    let cwd = process.cwd().to_string_lossy().into_owned();
    let rootfs = rootfs.to_owned();
    let deadline = tokio::time::Instant::now() + PROBE_TIMEOUT;
    // A probe stuck in a read holds its thread (and its permit) until the read returns: at
    // most PROBE_THREADS of them, so stuck probes never take the blocking pool that the
    // shim's other file work (specs, mounts, state) runs on.
    let permit = match tokio::time::timeout_at(deadline, PROBES.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            warn!(
                "no look at the entrypoint in {} s ({PROBE_THREADS} looks are stuck): the \
                 container is runc's",
                PROBE_TIMEOUT.as_secs()
            );
            return Found::Other;
        }
    };
    let probe = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        found(&rootfs, &cwd, entry)
    });
    match tokio::time::timeout_at(deadline, probe).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => {
            warn!("the look at an entrypoint failed: {e}");
            Found::Other
        }
        Err(_) => {
            warn!(
                "no look at the entrypoint in {} s: the container is runc's",
                PROBE_TIMEOUT.as_secs()
            );
            Found::Other
        }
    }
}

/// What the container's entrypoint is (`process.args[0]`, resolved as the Wasm path
/// resolves it: absolute, or relative to the working directory, inside the root): a
/// regular file that starts with Wasm's magic, no file at all, or anything else (a Linux
/// executable, a script, a name runc looks up on `PATH`).
fn found(rootfs: &Path, cwd: &str, entry: String) -> Found {
    let cwd = if cwd.is_empty() { "/" } else { cwd };
    let Ok(root) = open_dir(rootfs) else {
        return Found::Other;
    };
    match open_module(&root, cwd, &entry) {
        Ok(Some(module)) => match crate::wasm::Header::of(&module) {
            header if header.is_wasm() => Found::Wasm(root, module, header),
            _ => Found::Other,
        },
        Ok(None) => Found::Missing(root, entry),
        Err(_) => Found::Other,
    }
}

/// A directory, opened as a path.
fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The module `entry` (`process.args[0]`, absolute or relative to `cwd`), opened read-only
/// inside the container's root; `None` if there is no such file.
fn open_module(root: &OwnedFd, cwd: &str, entry: &str) -> Result<Option<File>, String> {
    let path = if entry.starts_with('/') {
        entry.to_string()
    } else {
        format!("{}/{entry}", cwd.trim_end_matches('/'))
    };
    // O_PATH first: opening a FIFO for reading would hold this look's thread and permit
    // until a writer came (the container then goes to runc after PROBE_TIMEOUT), and
    // opening a device node runs its driver's open as the host's root.
    // Only a regular file is opened for reading, through the descriptor just checked.
    let found = match open_in_root(root, &path, OFlags::PATH) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(format!("entrypoint {entry:?}: {e}")),
    };
    let st = rustix::fs::fstat(&found).map_err(|e| format!("entrypoint {entry:?}: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(format!("entrypoint {entry:?} is not a regular file"));
    }
    let reopened = rustix::fs::open(
        format!("/proc/self/fd/{}", found.as_raw_fd()),
        OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("entrypoint {entry:?}: {e}"))?;
    Ok(Some(File::from(reopened)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const CORE: &[u8] = b"\0asm\x01\0\0\0";

    fn kind(root: &Path, cwd: &str, entry: &str) -> &'static str {
        match found(root, cwd, entry.to_string()) {
            Found::Wasm(_, _, crate::wasm::Header::Core) => "wasm",
            Found::Wasm(..) => "other wasm",
            Found::Missing(_, name) if name == entry => "missing",
            Found::Missing(..) => "missing, renamed",
            Found::Other => "runc",
        }
    }

    #[test]
    fn the_entrypoint_decides_the_kind_as_the_container_resolves_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("app/bin")).unwrap();
        std::fs::write(root.join("app/bin/m.wasm"), CORE).unwrap();
        std::fs::write(root.join("comp.wasm"), b"\0asm\x0d\0\x01\0").unwrap();
        std::fs::write(root.join("short.wasm"), b"\0asm").unwrap();
        std::fs::write(root.join("native"), b"\x7fELF\x02\x01\x01\0").unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        std::fs::create_dir(root.join("dir")).unwrap();
        // Inside the root, `..` and absolute links resolve as in the container: a link to
        // `/app/bin/m.wasm` is the module, one that climbs out stays in the root.
        symlink("/app/bin/m.wasm", root.join("link.wasm")).unwrap();
        symlink("../../../../../../etc/passwd", root.join("climb")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

        assert_eq!(kind(root, "/", "/app/bin/m.wasm"), "wasm");
        assert_eq!(kind(root, "/app", "bin/m.wasm"), "wasm", "relative to cwd");
        assert_eq!(
            kind(root, "", "app/bin/m.wasm"),
            "wasm",
            "an empty cwd is /"
        );
        assert_eq!(kind(root, "/", "/link.wasm"), "wasm");
        assert_eq!(
            kind(root, "/", "/comp.wasm"),
            "other wasm",
            "ours to refuse"
        );
        assert_eq!(
            kind(root, "/", "/short.wasm"),
            "other wasm",
            "ours to refuse"
        );
        assert_eq!(kind(root, "/", "/native"), "runc");
        assert_eq!(kind(root, "/", "/empty"), "runc");
        assert_eq!(
            kind(root, "/", "sh"),
            "missing",
            "a name runc looks up on PATH"
        );
        assert_eq!(
            kind(root, "/", "/climb"),
            "missing",
            "the host's /etc/passwd"
        );
        // Neither opened for reading: a FIFO would hold the look, a directory is no module.
        assert_eq!(kind(root, "/", "/fifo"), "runc");
        assert_eq!(kind(root, "/", "/dir"), "runc");
        assert_eq!(kind(&root.join("nowhere"), "/", "/app/bin/m.wasm"), "runc");
    }
}
