//! A Wasm container's OCI hooks, run by the shim where runc runs a Linux container's.
//!
//! Tools outside the runtime take part in a container's life through the spec's hooks:
//! Docker connects each container to its networks with a `prestart` hook
//! (`libnetwork-setkey`), device and monitoring plugins add theirs. runc runs them; so does
//! the shim, for the containers it runs itself (runc still runs a Linux container's):
//!
//! - **`prestart`, then `createRuntime`**: once the container process has made its
//!   namespaces and its root's mounts, before `pivot_root`, its credentials or any guest
//!   code, as in runc. The process waits (`Report::Created`) until they have run; one that
//!   fails (or runs past its timeout) fails the create, with the container process and
//!   everything else of it gone, and the `poststop` hooks run (runc's failed create runs
//!   them too, to undo what the first ones did). Unlike runc's, a hook sees no user
//!   namespace of the container yet: the process makes it after its root.
//! - **`poststart`**: after `start` let the module run and its `TaskStart` is out; a
//!   failure is logged and the container runs on (the runtime spec's rule; runc kills the
//!   container instead).
//! - **`poststop`**: at delete, after the container's processes, root and cgroup are gone,
//!   once however many deletes come; a failure is logged.
//!
//! Each hook runs as runc runs it: in the runtime's namespaces and as its user (the shim's:
//! the host's, root), never with the container's credentials or in its view; its `path`
//! exec'd with exactly its `args` (`args[0]` as argv\[0\]); the container's state (the
//! runtime spec's `state` JSON) on its stdin; killed at its `timeout`, or when the request
//! that runs it is cancelled; the bundle as its working directory. Its environment is its
//! `env` only: runc gives a hook without one runc's own, which here would be containerd's
//! and the shim's. Its exit is taken from the shim's reaper ([`crate::command`]).
//!
//! `createContainer` and `startContainer` hooks run inside the container in runc (its mount
//! namespace, before and after `pivot_root`), as the runtime: a host program in the
//! tenant's view with the runtime's privileges, and a Wasm container's root holds no native
//! program to run. They are refused, naming the field, not skipped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use log::warn;
use oci_spec::runtime::{ContainerState, Hook, Spec, State, StateBuilder};
use std::os::unix::process::CommandExt;

use crate::error::{invalid, unsupported, SpecError};

/// A container's hooks, checked when its spec is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// `prestart` then `createRuntime`, in the spec's order.
    create_runtime: Vec<Named>,
    poststart: Vec<Named>,
    poststop: Vec<Named>,
    /// What the state given to each hook says of the spec.
    oci_version: String,
    annotations: Option<HashMap<String, String>>,
}

/// A hook and the spec field it came from, which its errors name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    field: String,
    hook: Hook,
}

impl Hooks {
    /// The spec's hooks; a hook this runtime cannot run as asked fails the create, naming
    /// its field.
    pub fn of(spec: &Spec) -> Result<Hooks, SpecError> {
        let Some(h) = spec.hooks() else {
            return Ok(Hooks::default());
        };
        for (field, hooks) in [
            ("hooks.createContainer", h.create_container()),
            ("hooks.startContainer", h.start_container()),
        ] {
            if hooks.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(unsupported(
                    field,
                    "hooks that run inside the container (its mount namespace, as the runtime) \
                     are not supported by this runtime for a wasm container",
                ));
            }
        }
        #[allow(deprecated)] // `prestart`: what Docker uses, and runc runs.
        let prestart = h.prestart();
        let named = |field: &str, hooks: &Option<Vec<Hook>>| -> Result<Vec<Named>, SpecError> {
            let mut out = Vec::new();
            for (i, hook) in hooks.iter().flatten().enumerate() {
                let field = format!("{field}[{i}]");
                if !hook.path().is_absolute() {
                    return Err(invalid(
                        format!("{field}.path"),
                        format!("{:?} is not absolute", hook.path()),
                    ));
                }
                if hook.timeout().is_some_and(|t| t <= 0) {
                    return Err(invalid(
                        format!("{field}.timeout"),
                        "must be greater than zero",
                    ));
                }
                out.push(Named {
                    field,
                    hook: hook.clone(),
                });
            }
            Ok(out)
        };
        let mut create_runtime = named("hooks.prestart", prestart)?;
        create_runtime.extend(named("hooks.createRuntime", h.create_runtime())?);
        Ok(Hooks {
            create_runtime,
            poststart: named("hooks.poststart", h.poststart())?,
            poststop: named("hooks.poststop", h.poststop())?,
            oci_version: spec.version().clone(),
            annotations: spec.annotations().clone(),
        })
    }

    /// Whether hooks run during the create: the container process waits for them.
    pub fn at_create(&self) -> bool {
        !self.create_runtime.is_empty()
    }

    /// `prestart` and `createRuntime`, the container process `pid` waiting: the first
    /// failure is the create's.
    pub async fn create_runtime(&self, id: &str, bundle: &Path, pid: i32) -> Result<(), String> {
        let state = self.state(id, bundle, ContainerState::Creating, Some(pid));
        for h in &self.create_runtime {
            run(h, bundle, &state).await?;
        }
        Ok(())
    }

    /// `poststart`: each runs; failures are logged.
    pub async fn poststart(&self, id: &str, bundle: &Path, pid: i32) {
        self.run_logged(
            &self.poststart,
            id,
            bundle,
            ContainerState::Running,
            Some(pid),
        )
        .await;
    }

    /// `poststop`: each runs; failures are logged.
    pub async fn poststop(&self, id: &str, bundle: &Path) {
        self.run_logged(&self.poststop, id, bundle, ContainerState::Stopped, None)
            .await;
    }

    /// Runs `hooks`, logging failures; nothing (not even the state) for a container without
    /// any, which is every start and delete of most containers.
    async fn run_logged(
        &self,
        hooks: &[Named],
        id: &str,
        bundle: &Path,
        status: ContainerState,
        pid: Option<i32>,
    ) {
        if hooks.is_empty() {
            return;
        }
        let state = self.state(id, bundle, status, pid);
        for h in hooks {
            if let Err(e) = run(h, bundle, &state).await {
                warn!("container {id}: {e}");
            }
        }
    }

    /// The runtime spec's state of the container, as JSON.
    fn state(&self, id: &str, bundle: &Path, status: ContainerState, pid: Option<i32>) -> Vec<u8> {
        let mut b = StateBuilder::default()
            .version(self.oci_version.as_str())
            .id(id)
            .status(status)
            .bundle(bundle.to_path_buf());
        if let Some(pid) = pid {
            b = b.pid(pid);
        }
        if let Some(a) = &self.annotations {
            b = b.annotations(a.clone());
        }
        let state: State = b.build().expect("every field of the state is set");
        serde_json::to_vec(&state).expect("a state serialises")
    }
}

/// Runs one hook to its end (or its timeout).
async fn run(h: &Named, bundle: &Path, state: &[u8]) -> Result<(), String> {
    let hook = &h.hook;
    let mut cmd = Command::new(hook.path());
    match hook.args().as_deref() {
        Some([argv0, rest @ ..]) => {
            cmd.arg0(argv0).args(rest);
        }
        _ => {
            cmd.arg0(hook.path());
        }
    }
    cmd.env_clear();
    for pair in hook.env().iter().flatten() {
        // `NAME=VALUE`; a pair without `=` is passed as `NAME=`.
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        cmd.env(k, v);
    }
    cmd.current_dir(bundle)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let timeout = hook.timeout().map(|t| Duration::from_secs(t as u64));
    let what = format!("{} {}", h.field, display(hook.path()));
    match crate::command::run(cmd, Some(state.to_vec()), timeout).await {
        Ok(f) if f.code == 0 => Ok(()),
        Ok(f) => Err(format!(
            "{what}: {}{}",
            exit(f.code),
            crate::command::output(&f.stdout, &f.stderr)
        )),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn display(p: &Path) -> String {
    format!("{:?}", PathBuf::from(p))
}

/// How the reaper's code reads: an exit status, where above 128 possibly 128 and the signal
/// that ended the hook (the reaper reports both alike).
fn exit(code: i32) -> String {
    match code {
        c if c > 128 && c - 128 < 65 => {
            format!("exit status {c} (or killed by signal {})", c - 128)
        }
        c => format!("exit status {c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder, SpecBuilder};

    fn hook(path: &str) -> Hook {
        HookBuilder::default().path(path).build().unwrap()
    }

    #[test]
    #[allow(deprecated)]
    fn prestart_runs_before_create_runtime_and_fields_are_named() {
        let spec = SpecBuilder::default()
            .hooks(
                HooksBuilder::default()
                    .create_runtime(vec![hook("/b")])
                    .prestart(vec![hook("/a")])
                    .poststop(vec![hook("/c")])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let h = Hooks::of(&spec).unwrap();
        let order: Vec<_> = h.create_runtime.iter().map(|n| n.field.as_str()).collect();
        assert_eq!(order, ["hooks.prestart[0]", "hooks.createRuntime[0]"]);
        assert!(h.at_create());
        assert_eq!(h.poststop[0].field, "hooks.poststop[0]");
        assert!(!Hooks::of(&SpecBuilder::default().build().unwrap())
            .unwrap()
            .at_create());
    }

    #[test]
    fn hooks_it_cannot_run_as_asked_are_refused_naming_the_field() {
        let with = |hooks: oci_spec::runtime::Hooks| {
            let spec = SpecBuilder::default().hooks(hooks).build().unwrap();
            Hooks::of(&spec).unwrap_err().to_string()
        };
        let e = with(
            HooksBuilder::default()
                .start_container(vec![hook("/x")])
                .build()
                .unwrap(),
        );
        assert!(e.starts_with("hooks.startContainer"), "{e}");
        let e = with(
            HooksBuilder::default()
                .create_container(vec![hook("/x")])
                .build()
                .unwrap(),
        );
        assert!(e.starts_with("hooks.createContainer"), "{e}");
        let e = with(
            HooksBuilder::default()
                .poststart(vec![hook("/ok"), hook("relative")])
                .build()
                .unwrap(),
        );
        assert!(e.starts_with("hooks.poststart[1].path"), "{e}");
        let mut zero = hook("/x");
        zero.set_timeout(Some(0));
        let e = with(
            HooksBuilder::default()
                .create_runtime(vec![zero])
                .build()
                .unwrap(),
        );
        assert!(e.starts_with("hooks.createRuntime[0].timeout"), "{e}");
    }

    #[test]
    fn the_state_is_the_runtime_specs() {
        let spec = SpecBuilder::default()
            .version("1.1.0")
            .annotations(HashMap::from([("k".to_string(), "v".to_string())]))
            .hooks(
                HooksBuilder::default()
                    .poststop(vec![hook("/x")])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let h = Hooks::of(&spec).unwrap();
        let bundle = Path::new("/run/b");
        let v: serde_json::Value =
            serde_json::from_slice(&h.state("c1", bundle, ContainerState::Creating, Some(42)))
                .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ociVersion": "1.1.0", "id": "c1", "status": "creating",
                               "pid": 42, "bundle": "/run/b", "annotations": {"k": "v"}})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&h.state("c1", bundle, ContainerState::Stopped, None)).unwrap();
        assert!(v.get("pid").is_none(), "{v}");
    }
}
