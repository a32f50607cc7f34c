//! A Wasm container's OCI hooks, against a real containerd: run where and as runc runs them
//! (the runtime's namespaces, the spec's args and env, the state on stdin), `prestart` and
//! `createRuntime` before any guest code with the container's namespaces made, a failing or
//! hung hook failing the create. `ctr run --config` takes the whole spec, hooks included.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{containerd, fixture, Containerd, Rootfs, RUNTIME};
use serde_json::{json, Value};

/// A hook that records what it was given in `dir`: its state (stdin), argv and env, the
/// network namespace of the state's pid, its working directory where it holds a spec (the
/// bundle), and its phase's name in `order`; it writes
/// `/from-hook` into the container's root; exits with `$HOOK_EXIT` (0 if unset).
const RECORDER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
phase=$1
cat > "$dir/$phase.state"
printf '%s\n' "$0" "$@" > "$dir/$phase.args"
env > "$dir/$phase.env"
pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$dir/$phase.state")
if [ -n "$pid" ]; then readlink "/proc/$pid/ns/net" > "$dir/$phase.netns"; fi
# The container's root and its /proc mounted in its mount namespace (not yet pivoted).
if [ -n "$pid" ] && grep -q " $ROOTFS/proc " "/proc/$pid/mountinfo"; then
  echo mounted > "$dir/$phase.root"
fi
echo "$phase" >> "$dir/order"
if [ -f config.json ]; then pwd > "$dir/$phase.cwd"; fi
if [ "$phase" = prestart ]; then echo "written by the prestart hook" > "$ROOTFS/from-hook"; fi
[ -n "$HOOK_STDERR" ] && echo "$HOOK_STDERR" >&2
# A process left behind, holding the hook's stdout and stderr open past its exit.
[ -n "$HOOK_DAEMON" ] && (sleep 20 &)
[ -n "$HOOK_SLEEP" ] && sleep "$HOOK_SLEEP"
exit "${HOOK_EXIT:-0}"
"#;

struct Hooked {
    dir: tempfile::TempDir,
    rootfs: Rootfs,
}

impl Hooked {
    fn new() -> Hooked {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("record");
        std::fs::write(&script, RECORDER).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hooked {
            dir,
            rootfs: Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]),
        }
    }

    fn script(&self) -> PathBuf {
        self.dir.path().join("record")
    }

    /// A hook of `phase` with `env` beside the recorder's.
    fn hook(&self, phase: &str, env: &[&str], timeout: Option<u32>) -> Value {
        let mut e = vec![
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("ROOTFS={}", self.rootfs.path().display()),
            "HOOK_MARK=given".to_string(),
        ];
        e.extend(env.iter().map(|s| s.to_string()));
        let mut h = json!({
            "path": self.script(),
            "args": [format!("{phase}-argv0"), phase],
            "env": e,
        });
        if let Some(t) = timeout {
            h["timeout"] = json!(t);
        }
        h
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    /// `ctr run --rm --config`: the default spec with `args`, this root and `hooks`.
    fn run(&self, ctd: &Containerd, id: &str, args: &[&str], hooks: Value) -> std::process::Output {
        let mut spec: Value = serde_json::from_str(&ctd.ctr_ok(&["oci", "spec"])).unwrap();
        spec["process"]["args"] = json!(args);
        spec["root"] = json!({ "path": self.rootfs.path() });
        // `ctr oci spec`'s cgroup is the namespace's, one for every container: each gets
        // its own, as `ctr run` gives it, so that tests running side by side do not share.
        spec["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", common::namespace()));
        spec["hooks"] = hooks;
        let config = self.dir.path().join(format!("{id}.json"));
        std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
        let fifo = ctd.fifo_dir();
        ctd.ctr(&[
            "run",
            "--rm",
            "--fifo-dir",
            fifo.to_str().unwrap(),
            "--runtime",
            RUNTIME,
            "--config",
            config.to_str().unwrap(),
            id,
        ])
    }
}

fn state(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
fn hooks_run_in_the_runtimes_view_before_any_guest_code() {
    if !common::can_run("hooks") {
        return;
    }
    let ctd = containerd();
    let h = Hooked::new();
    let hooks = json!({
        "prestart": [h.hook("prestart", &[], Some(10))],
        "createRuntime": [h.hook("createRuntime", &[], None)],
        "poststart": [h.hook("poststart", &[], None)],
        "poststop": [h.hook("poststop", &[], None)],
    });
    let out = h.run(
        ctd,
        "hooks-all",
        &["/probe.wasm", "cat", "/from-hook"],
        hooks,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // The module read what the prestart hook wrote into its root: the hook ran first.
    assert_eq!(stdout, "written by the prestart hook\n", "{out:?}");
    assert_eq!(
        h.read("order"),
        "prestart\ncreateRuntime\npoststart\npoststop\n"
    );
    let created = state(&h.read("prestart.state"));
    assert_eq!(created["id"], "hooks-all");
    assert_eq!(created["status"], "creating");
    let pid = created["pid"].as_i64().expect("a pid in the state");
    assert!(pid > 1, "{created}");
    // Run from the bundle, which the state names.
    assert_eq!(
        h.read("prestart.cwd").trim(),
        created["bundle"].as_str().unwrap()
    );
    // The container's network namespace existed when the hook ran, and is not the host's.
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let netns = h.read("prestart.netns");
    assert!(netns.starts_with("net:["), "{netns:?}");
    assert_ne!(netns.trim(), host_net.to_str().unwrap());
    // After the root's mounts, as in runc (before its pivot_root).
    assert_eq!(h.read("prestart.root"), "mounted\n");
    assert_eq!(state(&h.read("poststart.state"))["status"], "running");
    assert_eq!(state(&h.read("poststart.state"))["pid"], pid);
    let stopped = state(&h.read("poststop.state"));
    assert_eq!(stopped["status"], "stopped");
    // As runc execs it: argv as given, and only the spec's env (nothing of containerd's
    // or the shim's).
    assert_eq!(
        h.read("prestart.args"),
        format!("{}\nprestart\n", h.script().display())
    );
    let env = h.read("createRuntime.env");
    assert!(env.contains("HOOK_MARK=given\n"), "{env}");
    for leaked in [
        "TTRPC_ADDRESS",
        "GRPC_ADDRESS",
        "WASMEDGE_AOT_SHIM_CONFIG",
        "NAMESPACE=",
    ] {
        assert!(!env.contains(leaked), "{leaked} in the hook's env: {env}");
    }
}

#[test]
fn a_failing_createruntime_hook_fails_the_create_runs_poststop_and_leaves_nothing() {
    if !common::can_run("hooks") {
        return;
    }
    let ctd = containerd();
    let h = Hooked::new();
    let hooks = json!({
        "createRuntime": [h.hook(
            "createRuntime",
            &["HOOK_EXIT=3", "HOOK_STDERR=no network for you", "HOOK_DAEMON=1"],
            None
        )],
        "poststart": [h.hook("poststart", &[], None)],
        "poststop": [h.hook("poststop", &[], None)],
    });
    let out = h.run(
        ctd,
        "hooks-fail",
        &["/probe.wasm", "cat", "/from-hook"],
        hooks,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("hooks.createRuntime[0]")
            && stderr.contains("exit status 3")
            && stderr.contains("no network for you"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "the module ran: {out:?}");
    // As runc's failed create, the poststop hooks undo what the first ones did.
    assert_eq!(h.read("order"), "createRuntime\npoststop\n");
    let pid = state(&h.read("createRuntime.state"))["pid"]
        .as_i64()
        .unwrap();
    let gone = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the container process of a failed create is still alive"
    );
    assert!(ctd.tasks().iter().all(|(id, ..)| id != "hooks-fail"));
}

#[test]
fn a_hook_past_its_timeout_is_killed_and_fails_the_create() {
    if !common::can_run("hooks") {
        return;
    }
    let ctd = containerd();
    let h = Hooked::new();
    let hooks = json!({ "prestart": [h.hook("prestart", &["HOOK_SLEEP=60"], Some(1))] });
    let started = Instant::now();
    let out = h.run(ctd, "hooks-timeout", &["/probe.wasm"], hooks);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("hooks.prestart[0]") && stderr.contains("timeout of 1s"),
        "{stderr}"
    );
    // Not the hook's 60 s (nor containerd's own deadline).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn hooks_that_would_run_in_the_tenants_view_are_refused() {
    if !common::can_run("hooks") {
        return;
    }
    let ctd = containerd();
    let h = Hooked::new();
    let hooks = json!({ "startContainer": [h.hook("startContainer", &[], None)] });
    let out = h.run(ctd, "hooks-inside", &["/probe.wasm"], hooks);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(stderr.contains("hooks.startContainer"), "{stderr}");
    assert_eq!(h.read("order"), "", "a hook ran");
}
