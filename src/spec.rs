//! Translation of an OCI runtime spec into what a WASI command needs.
//!
//! A Wasm container has no Linux process image: its "process" is a module inside the
//! rootfs, run with the spec's argv, env and cwd, seeing the rootfs as `/` and each bind
//! mount at its destination. Everything here is pure (no mounts, no WasmEdge) so that every
//! rule can be unit-tested: how the module is found, which mounts become preopens, and how
//! a path that tries to leave the rootfs (through `..` or a symlink) is refused.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// Errors in a spec that make it unrunnable; each names the offending path or field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("spec has no process")]
    NoProcess,
    #[error("spec process has no args: the first arg names the wasm module")]
    NoArgs,
    #[error("path {path:?} leaves the container root {root}")]
    Escape { path: String, root: PathBuf },
    #[error("too many levels of symbolic links resolving {path:?} in {root}")]
    SymlinkLoop { path: String, root: PathBuf },
    #[error("entrypoint {path:?} not found in {root}")]
    NotFound { path: String, root: PathBuf },
    #[error("entrypoint {path:?} ({host}) is not a regular file")]
    NotAFile { path: String, host: PathBuf },
    #[error("cwd {cwd:?} is not a directory in the container root {root}")]
    BadCwd { cwd: String, root: PathBuf },
    #[error("io error resolving {path:?} in {root}: {message}")]
    Io {
        path: String,
        root: PathBuf,
        message: String,
    },
}

/// A host directory made visible to the module at `guest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    pub guest: String,
    pub host: PathBuf,
    pub readonly: bool,
}

impl Preopen {
    /// WasmEdge's `GUEST:HOST[:readonly]` form.
    pub fn to_wasmedge(&self) -> String {
        let mut s = format!("{}:{}", self.guest, self.host.display());
        if self.readonly {
            s.push_str(":readonly");
        }
        s
    }
}

/// Everything the engine needs to run one container's module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Host path of the module file, inside the rootfs.
    pub module: PathBuf,
    /// argv, `args[0]` as the spec gives it.
    pub args: Vec<String>,
    /// `NAME=VALUE` pairs.
    pub env: Vec<String>,
    /// The rootfs as `/`, the cwd as `.`, then bind mounts in spec order.
    pub preopens: Vec<Preopen>,
    /// `linux.cgroupsPath`, if the spec has one.
    pub cgroups_path: Option<String>,
    /// The network namespace to join (a pod's), if the spec names one by path.
    pub network_ns: Option<PathBuf>,
}

/// Builds the plan for `spec`, whose rootfs is (already mounted) at `rootfs`.
pub fn plan(spec: &Spec, rootfs: &Path) -> Result<Plan, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let args = process.args().clone().unwrap_or_default();
    let entry = args.first().ok_or(SpecError::NoArgs)?;
    let cwd = process.cwd().to_string_lossy().into_owned();
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };

    let cwd_host = resolve_in_root(rootfs, &cwd)?;
    if !cwd_host.is_dir() {
        return Err(SpecError::BadCwd {
            cwd,
            root: rootfs.to_owned(),
        });
    }

    let entry_in_root = if entry.starts_with('/') {
        entry.clone()
    } else {
        format!("{}/{}", cwd.trim_end_matches('/'), entry)
    };
    let module = resolve_in_root(rootfs, &entry_in_root)?;
    match std::fs::metadata(&module) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(SpecError::NotAFile {
                path: entry.clone(),
                host: module,
            })
        }
        Err(_) => {
            return Err(SpecError::NotFound {
                path: entry.clone(),
                root: rootfs.to_owned(),
            })
        }
    }

    let mut preopens = vec![Preopen {
        guest: "/".into(),
        host: rootfs.to_owned(),
        readonly: spec
            .root()
            .as_ref()
            .is_some_and(|r| r.readonly() == Some(true)),
    }];
    if cwd != "/" {
        preopens.push(Preopen {
            guest: ".".into(),
            host: cwd_host,
            readonly: false,
        });
    }
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let Some(source) = m.source() else { continue };
        // WASI preview 1 preopens are directories; file binds (/etc/hosts and friends from
        // CRI) and the kernel filesystems of a Linux container have no meaning here.
        if !is_bind || !source.is_dir() {
            continue;
        }
        preopens.push(Preopen {
            guest: m.destination().to_string_lossy().into_owned(),
            host: source.clone(),
            readonly: options.iter().any(|o| o == "ro"),
        });
    }

    let env = process.env().clone().unwrap_or_default();
    let linux = spec.linux().as_ref();
    let cgroups_path = linux
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty());
    let network_ns = network_namespace(spec);

    Ok(Plan {
        module,
        args,
        env,
        preopens,
        cgroups_path,
        network_ns,
    })
}

/// The network namespace the spec asks to join, by path.
pub fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| {
            nss.iter().find(|ns| {
                ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network && ns.path().is_some()
            })
        })
        .and_then(|ns| ns.path().clone())
}

/// The network namespace a pod's container must join. CRI names the sandbox task's
/// namespaces as `/proc/<sandbox pid>/ns/net`; our sandboxes run no process and report the
/// shim's pid, so that path would be the shim's (the host's) namespace. It is replaced by
/// what the sandbox's own spec named (`sandbox_netns`: the CNI namespace, or `None` for a
/// host-network pod). Any other path is kept.
pub fn pod_network_namespace(
    container_ns: Option<PathBuf>,
    shim_pid: u32,
    sandbox_netns: Option<Option<PathBuf>>,
) -> Option<PathBuf> {
    let ours = PathBuf::from(format!("/proc/{shim_pid}/ns/net"));
    match container_ns {
        Some(p) if p == ours => sandbox_netns.flatten(),
        other => other,
    }
}

/// Resolves `path` (as the container sees it) to a host path inside `root`, following
/// symlinks as the container would: an absolute target starts again at `root`. A `..` or a
/// relative symlink that would climb above `root` is refused rather than clamped, so a
/// hostile image gets an error, not a surprise. A missing final part is allowed (the
/// caller decides whether the file must exist).
pub fn resolve_in_root(root: &Path, path: &str) -> Result<PathBuf, SpecError> {
    const MAX_LINKS: usize = 40;
    let escape = || SpecError::Escape {
        path: path.to_string(),
        root: root.to_owned(),
    };
    // Components still to walk, in reverse so that pop() yields the next one.
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            done.pop().ok_or_else(escape)?;
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.to_owned())
            .chain(done.iter().map(PathBuf::from))
            .chain(std::iter::once(PathBuf::from(&part)))
            .collect();
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(SpecError::SymlinkLoop {
                        path: path.to_string(),
                        root: root.to_owned(),
                    });
                }
                let target = std::fs::read_link(&candidate).map_err(|e| SpecError::Io {
                    path: path.to_string(),
                    root: root.to_owned(),
                    message: e.to_string(),
                })?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(components(&target).into_iter().rev());
            }
            Ok(_) => done.push(part),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                done.push(part);
                // Nothing below a missing directory can exist; keep the rest verbatim but
                // still refuse a `..` that would climb out.
                while let Some(rest) = todo.pop() {
                    if rest == ".." {
                        done.pop().ok_or_else(escape)?;
                    } else {
                        done.push(rest);
                    }
                }
            }
            Err(e) => {
                return Err(SpecError::Io {
                    path: path.to_string(),
                    root: root.to_owned(),
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(std::iter::once(root.to_owned())
        .chain(done.iter().map(PathBuf::from))
        .collect())
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, ProcessBuilder,
        RootBuilder, SpecBuilder,
    };
    use std::os::unix::fs::symlink;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir_all(r.join("app/bin")).unwrap();
        std::fs::write(r.join("app/bin/main.wasm"), b"\0asm\x01\0\0\0").unwrap();
        std::fs::write(r.join("top.wasm"), b"\0asm\x01\0\0\0").unwrap();
        symlink("/app/bin/main.wasm", r.join("abs-link.wasm")).unwrap();
        symlink("bin/main.wasm", r.join("app/rel-link.wasm")).unwrap();
        symlink("../../../../etc/passwd", r.join("app/out-link")).unwrap();
        symlink("loop-b", r.join("loop-a")).unwrap();
        symlink("loop-a", r.join("loop-b")).unwrap();
        dir
    }

    fn spec(args: &[&str], cwd: &str) -> SpecBuilder {
        let mut b = SpecBuilder::default();
        b = b.root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .unwrap(),
        );
        b.process(
            ProcessBuilder::default()
                .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .env(vec!["A=1".to_string(), "PATH=/bin".to_string()])
                .cwd(cwd)
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn absolute_entrypoint_resolves_inside_rootfs() {
        let r = rootfs();
        let p = plan(&spec(&["/top.wasm", "x"], "/").build().unwrap(), r.path()).unwrap();
        assert_eq!(p.module, r.path().join("top.wasm"));
        assert_eq!(p.args, vec!["/top.wasm", "x"]);
        assert_eq!(p.env, vec!["A=1", "PATH=/bin"]);
        assert_eq!(p.preopens.len(), 1);
        assert_eq!(
            p.preopens[0].to_wasmedge(),
            format!("/:{}", r.path().display())
        );
    }

    #[test]
    fn relative_entrypoint_resolves_against_cwd_and_cwd_is_preopened_as_dot() {
        let r = rootfs();
        let p = plan(&spec(&["bin/main.wasm"], "/app").build().unwrap(), r.path()).unwrap();
        assert_eq!(p.module, r.path().join("app/bin/main.wasm"));
        assert_eq!(p.preopens[1].guest, ".");
        assert_eq!(p.preopens[1].host, r.path().join("app"));
    }

    #[test]
    fn a_read_only_root_is_preopened_read_only() {
        let r = rootfs();
        let s = spec(&["/top.wasm"], "/")
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(true)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let p = plan(&s, r.path()).unwrap();
        assert!(p.preopens[0].readonly);
        assert!(p.preopens[0].to_wasmedge().ends_with(":readonly"));
    }

    #[test]
    fn symlinks_inside_the_rootfs_are_followed_as_the_container_sees_them() {
        let r = rootfs();
        let abs = resolve_in_root(r.path(), "/abs-link.wasm").unwrap();
        assert_eq!(abs, r.path().join("app/bin/main.wasm"));
        let rel = resolve_in_root(r.path(), "/app/rel-link.wasm").unwrap();
        assert_eq!(rel, r.path().join("app/bin/main.wasm"));
    }

    #[test]
    fn dotdot_and_symlink_escapes_are_refused() {
        let r = rootfs();
        for p in [
            "/../etc/passwd",
            "/app/../../x",
            "/app/out-link",
            "/nope/../../x",
        ] {
            let err = resolve_in_root(r.path(), p).unwrap_err();
            assert!(matches!(err, SpecError::Escape { .. }), "{p}: {err:?}");
        }
        let err = plan(&spec(&["/app/out-link"], "/").build().unwrap(), r.path()).unwrap_err();
        assert!(
            err.to_string().contains("leaves the container root"),
            "{err}"
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let r = rootfs();
        let err = resolve_in_root(r.path(), "/loop-a").unwrap_err();
        assert!(matches!(err, SpecError::SymlinkLoop { .. }), "{err:?}");
    }

    #[test]
    fn missing_entrypoint_and_directory_entrypoint_are_clear_errors() {
        let r = rootfs();
        let err = plan(&spec(&["/missing.wasm"], "/").build().unwrap(), r.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "entrypoint \"/missing.wasm\" not found in {}",
                r.path().display()
            )
        );
        let err = plan(&spec(&["/app"], "/").build().unwrap(), r.path()).unwrap_err();
        assert!(matches!(err, SpecError::NotAFile { .. }), "{err:?}");
        let err = plan(&spec(&[], "/").build().unwrap(), r.path()).unwrap_err();
        assert_eq!(err, SpecError::NoArgs);
        let err = plan(&spec(&["/top.wasm"], "/nodir").build().unwrap(), r.path()).unwrap_err();
        assert!(matches!(err, SpecError::BadCwd { .. }), "{err:?}");
    }

    #[test]
    fn directory_bind_mounts_become_preopens_with_their_mode() {
        let r = rootfs();
        let data = tempfile::tempdir().unwrap();
        let file = data.path().join("hosts");
        std::fs::write(&file, "").unwrap();
        let mount = |dst: &str, src: &Path, typ: &str, opts: &[&str]| {
            MountBuilder::default()
                .destination(dst)
                .source(src)
                .typ(typ)
                .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .build()
                .unwrap()
        };
        let s = spec(&["/top.wasm"], "/")
            .mounts(vec![
                mount("/proc", Path::new("proc"), "proc", &[]),
                mount("/data", data.path(), "bind", &["rbind", "ro"]),
                mount("/rw", data.path(), "none", &["rbind", "rw"]),
                mount("/etc/hosts", &file, "bind", &["rbind", "ro"]),
            ])
            .build()
            .unwrap();
        let p = plan(&s, r.path()).unwrap();
        let got: Vec<_> = p
            .preopens
            .iter()
            .map(|p| (p.guest.as_str(), p.readonly))
            .collect();
        assert_eq!(got, vec![("/", false), ("/data", true), ("/rw", false)]);
        assert_eq!(
            p.preopens[1].to_wasmedge(),
            format!("/data:{}:readonly", data.path().display())
        );
    }

    #[test]
    fn a_pod_container_joins_the_sandbox_namespace_not_the_shims() {
        let shim = PathBuf::from("/proc/42/ns/net");
        let cni = PathBuf::from("/var/run/netns/cni-1");
        // CNI pod: the sandbox spec named the pod's namespace.
        assert_eq!(
            pod_network_namespace(Some(shim.clone()), 42, Some(Some(cni.clone()))),
            Some(cni.clone())
        );
        // Host-network pod, or a sandbox this shim does not know: no namespace to join.
        assert_eq!(
            pod_network_namespace(Some(shim.clone()), 42, Some(None)),
            None
        );
        assert_eq!(pod_network_namespace(Some(shim), 42, None), None);
        // Any other path is the container's own choice.
        assert_eq!(
            pod_network_namespace(Some(cni.clone()), 42, None),
            Some(cni)
        );
        assert_eq!(pod_network_namespace(None, 42, None), None);
    }

    #[test]
    fn cgroups_path_and_network_namespace_come_from_linux_section() {
        let r = rootfs();
        let s = spec(&["/top.wasm"], "/")
            .linux(
                LinuxBuilder::default()
                    .cgroups_path(PathBuf::from("/default/c1"))
                    .namespaces(vec![LinuxNamespaceBuilder::default()
                        .typ(LinuxNamespaceType::Network)
                        .path(PathBuf::from("/var/run/netns/cni-1"))
                        .build()
                        .unwrap()])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let p = plan(&s, r.path()).unwrap();
        assert_eq!(p.cgroups_path.as_deref(), Some("/default/c1"));
        assert_eq!(p.network_ns, Some(PathBuf::from("/var/run/netns/cni-1")));
    }
}
