//! Docker Engine runs Wasm images through the shim (issue 27): `docker run --runtime
//! io.containerd.wasmedge.v1 --platform wasip1/wasm` on a dockerd of the harness's own
//! ([`common::docker`]), with and without Docker's networks, detached with logs, stop, kill
//! and wait, with env and bind mounts, beside runc running the native fixtures through the
//! same dockerd.
//!
//! Docker puts a `libnetwork-setkey` prestart hook in the spec of every container with a
//! network of Docker's (`--network none` too): those tests pass once the shim runs OCI hooks.

mod common;

use std::time::Duration;

use common::docker::{self, dockerd, Dockerd, WASM};
use common::images::{self, Archive};
use wasmedge_shimctl::image::{ImageBuilder, Platform};

/// The runc baseline for most tests: `/native-tool`, whose first argument selects what it
/// does as the probe module's does (`exit`, `cat`, `write`, `sleep`).
const NATIVE_TOOL: &str = "localhost/wasmedge-tests/native-tool:v1";

fn native_tool() -> Archive {
    images::archive(
        "native-tool.tar",
        ImageBuilder::image(NATIVE_TOOL)
            .platform(Platform::linux_amd64())
            .file(
                "/native-tool",
                std::fs::read(common::fixture("native-tool")).unwrap(),
                0o755,
            )
            .entrypoint(["/native-tool"]),
    )
}

/// The shared dockerd with the probe image and the native images loaded.
fn docker_with_images() -> &'static Dockerd {
    let d = dockerd();
    d.load(&images::probe_image());
    d.load(&images::native_hello());
    d.load(&native_tool());
    d
}

/// `docker run --rm [WASM] FLAGS IMAGE ARGS`: the probe module with the shim, or `image`
/// with runc.
fn run(d: &Dockerd, wasm: bool, flags: &[&str], image: &str, args: &[&str]) -> common::RunResult {
    let mut a = vec!["run", "--rm"];
    if wasm {
        a.extend(WASM);
    }
    a.extend(flags);
    a.push(image);
    a.extend(args);
    d.docker(&a)
}

fn wasm(d: &Dockerd, flags: &[&str], args: &[&str]) -> common::RunResult {
    run(d, true, flags, images::PROBE, args)
}

fn native(d: &Dockerd, flags: &[&str], args: &[&str]) -> common::RunResult {
    run(d, false, flags, NATIVE_TOOL, args)
}

/// `docker run -d ...`: the new container's id.
fn detached(d: &Dockerd, wasm: bool, flags: &[&str], args: &[&str]) -> String {
    let mut a = vec!["run", "-d"];
    if wasm {
        a.extend(WASM);
    }
    a.extend(flags);
    a.push(if wasm { images::PROBE } else { NATIVE_TOOL });
    a.extend(args);
    d.docker_ok(&a).trim().to_string()
}

fn hello(d: &Dockerd, network: &str) {
    let flags = ["--network", network];
    let out = wasm(d, &flags, &[]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "hello from wasm\n"),
        "wasm with --network {network}: {out:?}\n{}",
        d.ctd.log_tail()
    );
    let out = run(d, false, &flags, images::NATIVE_HELLO, &[]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "hello from native\n"),
        "runc with --network {network}: {out:?}"
    );
}

#[test]
fn a_wasm_hello_runs_on_the_host_network_beside_runc_s_native_hello() {
    if !docker::can_run("docker_host_network") {
        return;
    }
    hello(docker_with_images(), "host");
}

/// Carries Docker's `libnetwork-setkey` prestart hook.
#[test]
fn a_wasm_hello_runs_with_network_none() {
    if !docker::can_run("docker_network_none") {
        return;
    }
    hello(docker_with_images(), "none");
}

/// A network of Docker's with an endpoint: a bridge of its own (`--internal`: no route out,
/// no NAT, nothing of the host's firewall), set up through the same prestart hook.
#[test]
fn a_wasm_hello_runs_on_an_internal_bridge_network() {
    if !docker::can_run("docker_bridge_network") {
        return;
    }
    let d = docker_with_images();
    let network = format!("wt-int-{}", std::process::id());
    d.docker_ok(&["network", "create", "--internal", &network]);
    // Removed before any assertion can fail (the exit handler prunes networks too).
    let mut listener = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        hello(d, &network);
        // Docker's hook put the Wasm container on the network: it reaches a runc
        // container there by the address Docker gave it.
        let id = detached(
            d,
            false,
            &["--network", &network],
            &["listen", "8080", "any"],
        );
        listener = Some(id.clone());
        let ip = d.docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &id,
        ]);
        let ip = ip.trim();
        assert!(!ip.is_empty(), "the listener has no address on {network}");
        let mut out = wasm(d, &["--network", &network], &["connect", ip, "8080"]);
        // The listener may not be listening yet.
        for _ in 0..50 {
            if out.code == Some(0) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            out = wasm(d, &["--network", &network], &["connect", ip, "8080"]);
        }
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), "connected\n"),
            "wasm on {network} to {ip}:8080: {out:?}"
        );
    }));
    if let Some(id) = listener {
        d.docker_ok(&["rm", "-f", &id]);
    }
    d.docker_ok(&["network", "rm", &network]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn detached_containers_keep_their_output_for_logs_and_their_exit_codes_for_wait() {
    if !docker::can_run("docker_logs_wait") {
        return;
    }
    let d = docker_with_images();
    let id = detached(d, true, &["--network", "host"], &[]);
    assert_eq!(d.docker_ok(&["wait", &id]).trim(), "0");
    assert_eq!(d.docker_ok(&["logs", &id]), "hello from wasm\n");
    d.docker_ok(&["rm", &id]);

    for wasm in [true, false] {
        let what = if wasm { "wasm" } else { "runc" };
        let id = detached(d, wasm, &["--network", "host"], &["exit", "3"]);
        assert_eq!(d.docker_ok(&["wait", &id]).trim(), "3", "{what}");
        let code = d.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
        assert_eq!(code.trim(), "3", "{what}");
        d.docker_ok(&["rm", &id]);
        // Attached: the client exits with the container's code.
        let out = run(
            d,
            wasm,
            &["--network", "host"],
            if wasm { images::PROBE } else { NATIVE_TOOL },
            &["exit", "7"],
        );
        assert_eq!(out.code, Some(7), "{what}: {out:?}");
    }
}

#[test]
fn stop_ends_a_wasm_container_at_once_and_kill_and_wait_report_the_signal() {
    if !docker::can_run("docker_stop_kill") {
        return;
    }
    let d = docker_with_images();
    let host = ["--network", "host"];

    // SIGTERM ends the module (it has no handler): well inside the 10 s grace before SIGKILL.
    let id = detached(d, true, &host, &["sleep", "60"]);
    let stop = d.docker(&["stop", &id]);
    assert_eq!(stop.code, Some(0), "{stop:?}");
    assert!(
        stop.elapsed < Duration::from_secs(5),
        "docker stop took {:?}: the module outlived SIGTERM",
        stop.elapsed
    );
    assert_eq!(d.docker_ok(&["wait", &id]).trim(), "143");
    d.docker_ok(&["rm", &id]);

    for wasm in [true, false] {
        let what = if wasm { "wasm" } else { "runc" };
        let id = detached(d, wasm, &host, &["sleep", "60"]);
        let status = d.docker_ok(&["inspect", "-f", "{{.State.Status}}", &id]);
        assert_eq!(status.trim(), "running", "{what}");
        d.docker_ok(&["kill", &id]);
        assert_eq!(d.docker_ok(&["wait", &id]).trim(), "137", "{what}");
        d.docker_ok(&["rm", &id]);
    }
}

#[test]
fn env_and_stdin_reach_the_module() {
    if !docker::can_run("docker_env_stdin") {
        return;
    }
    let d = docker_with_images();
    let out = wasm(
        d,
        &["--network", "host", "-e", "GREETING=hello-env"],
        &["env", "GREETING"],
    );
    assert_eq!(out.stdout, "hello-env\n", "{out:?}");
    // runc's: the process's environment, NUL-separated.
    let out = native(
        d,
        &["--network", "host", "-e", "GREETING=hello-env"],
        &["cat", "/proc/self/environ"],
    );
    assert!(
        out.stdout.split('\0').any(|kv| kv == "GREETING=hello-env"),
        "{out:?}"
    );

    let mut args = vec!["run", "--rm", "-i", "--network", "host"];
    args.extend(WASM);
    args.extend([images::PROBE, "echo-stdin"]);
    let out = d.docker_in(&args, Some("through stdin\n"));
    assert_eq!(out.stdout, "through stdin\n", "{out:?}");
}

#[test]
fn bind_mounts_are_read_and_written_and_ro_ones_refuse_writes() {
    if !docker::can_run("docker_bind_mounts") {
        return;
    }
    let d = docker_with_images();
    for wasm in [true, false] {
        let what = if wasm { "wasm" } else { "runc" };
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("in.txt"), "from the host\n").unwrap();
        let rw = format!("{}:/data", dir.path().display());
        let ro = format!("{rw}:ro");
        let image = if wasm { images::PROBE } else { NATIVE_TOOL };

        let out = run(
            d,
            wasm,
            &["--network", "host", "-v", &rw],
            image,
            &["cat", "/data/in.txt"],
        );
        assert_eq!(out.stdout, "from the host\n", "{what}: {out:?}");
        let out = run(
            d,
            wasm,
            &["--network", "host", "-v", &rw],
            image,
            &["write", "/data/out.txt", "from the container"],
        );
        assert_eq!(out.code, Some(0), "{what}: {out:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
            "from the container",
            "{what}"
        );

        let out = run(
            d,
            wasm,
            &["--network", "host", "-v", &ro],
            image,
            &["cat", "/data/in.txt"],
        );
        assert_eq!(out.stdout, "from the host\n", "{what} :ro: {out:?}");
        let out = run(
            d,
            wasm,
            &["--network", "host", "-v", &ro],
            image,
            &["write", "/data/ro.txt", "x"],
        );
        assert_eq!(out.code, Some(2), "{what} :ro wrote: {out:?}");
        assert!(
            out.stderr.contains("Read-only file system"),
            "{what} :ro: {out:?}"
        );
        assert!(!dir.path().join("ro.txt").exists(), "{what} :ro");
    }
}

/// `docker stats` shows the memory limit of `--memory` (it showed `0B` once).
#[test]
fn docker_stats_shows_the_memory_limit() {
    if !docker::can_run("docker_stats_limit") {
        return;
    }
    let d = docker_with_images();
    for wasm in [true, false] {
        let what = if wasm { "wasm" } else { "runc" };
        let id = detached(
            d,
            wasm,
            &["--network", "host", "--memory", "64m"],
            &["sleep", "60"],
        );
        let usage = d.docker_ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &id]);
        d.docker_ok(&["rm", "-f", &id]);
        assert!(usage.trim().ends_with("/ 64MiB"), "{what}: {usage:?}");
    }
}

/// What the shim does not do, said at once: a terminal (`-t`), and `exec` into a Wasm
/// container.
#[test]
fn a_terminal_and_exec_are_refused_with_their_reason() {
    if !docker::can_run("docker_tty_exec") {
        return;
    }
    let d = docker_with_images();
    let out = wasm(d, &["--network", "host", "-t"], &[]);
    assert_eq!(out.code, Some(125), "{out:?}");
    assert!(
        out.stderr
            .contains("a terminal (tty) for a wasm container is not supported"),
        "{out:?}"
    );

    let id = detached(d, true, &["--network", "host"], &["sleep", "60"]);
    let out = d.docker(&["exec", &id, "/app.wasm"]);
    d.docker_ok(&["rm", "-f", &id]);
    assert_eq!(out.code, Some(126), "{out:?}");
    // (The client prints this error on its stdout.)
    assert!(
        format!("{}{}", out.stdout, out.stderr)
            .contains("exec into a wasm container is not supported"),
        "{out:?}"
    );
}
