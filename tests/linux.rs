//! Linux containers through the shim, with `ctr`: an entrypoint that is not a Wasm module
//! runs with runc, from the same bundle, and gets what containerd's runc shim gives it:
//! output and exit code, `ctr task exec`, a terminal, kill, pause and resume, the process
//! list and metrics, and nothing left after its delete. (The CRI tests, `tests/cri.rs`,
//! mix such containers with Wasm ones in a pod.)

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::images::Owned;
use common::{containerd, fixture, namespace, Containerd, Rootfs, Run};

fn native_rootfs() -> Rootfs {
    Rootfs::with(&[("native-tool", &fixture("native-tool"))])
}

/// runc's state of container `id` in this test process's namespace, if any is left.
fn runc_state(id: &str) -> Option<std::path::PathBuf> {
    let state = Path::new("/run/wasmedge-aot-shim/runc")
        .join(namespace())
        .join(id);
    state.exists().then_some(state)
}

#[test]
fn ctr_run_of_a_native_program_prints_and_exits_with_its_code() {
    if !common::can_run("linux_run") {
        return;
    }
    let ctd = containerd();
    let r = native_rootfs();
    let out = ctd.run(&Run::rootfs("native-hello", r.path(), &["/native-tool"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "hello from native\n");

    let out = ctd.run(&Run::rootfs(
        "native-exit",
        r.path(),
        &["/native-tool", "exit", "3", "bye"],
    ));
    assert_eq!(out.code, Some(3), "{out:?}");
    assert_eq!(out.stdout, "bye\n");
    assert_eq!(out.stderr, "bye on stderr\n");
    assert_eq!(runc_state("native-exit"), None);

    // A missing executable is runc's clear error, naming it; the shim carries on.
    let out = ctd.run(&Run::rootfs("native-missing", r.path(), &["/no-such-tool"]));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("/no-such-tool"), "{out:?}");
    let _ = ctd.ctr(&["container", "rm", "native-missing"]);
    assert_eq!(runc_state("native-missing"), None);
    let out = ctd.run(&Run::rootfs("native-after", r.path(), &["/native-tool"]));
    assert_eq!(out.stdout, "hello from native\n", "{out:?}");
}

#[test]
fn ctr_task_exec_runs_in_a_linux_container_with_its_output_and_exit_code() {
    if !common::can_run("linux_exec") {
        return;
    }
    let ctd = containerd();
    let r = native_rootfs();
    let id = "native-exec";
    ctd.run_detached(&Run::rootfs(
        id,
        r.path(),
        &["/native-tool", "sleep", "100"],
    ));
    ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
    let fifo = ctd.fifo_dir().display().to_string();
    let exec = |exec_id: &str, args: &[&str]| {
        let mut a = vec![
            "task",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            exec_id,
            id,
        ];
        a.extend_from_slice(args);
        ctd.ctr(&a)
    };
    let out = exec("e1", &["/native-tool", "exit", "5", "from exec"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from exec\n");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "from exec on stderr\n"
    );
    let out = exec("e2", &["/native-tool", "cat", "/proc/1/cmdline"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/native-tool\x00sleep\x00100\x00",
        "exec'd into the container's pid namespace"
    );
    // The same exec id again, after the first is gone, and an exec id that is no name.
    let out = exec("e1", &["/native-tool"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = exec("../e3", &["/native-tool"]);
    assert!(!out.status.success(), "{out:?}");

    // ps, pause and resume, metrics, kill --all.
    let ps = ctd.ctr_ok(&["task", "ps", id]);
    let pid = ctd.task_pid(id).unwrap();
    assert!(ps.contains(&pid.to_string()), "{ps}");
    ctd.ctr_ok(&["task", "pause", id]);
    assert_eq!(ctd.task_status(id).as_deref(), Some("PAUSED"));
    ctd.ctr_ok(&["task", "resume", id]);
    assert_eq!(ctd.task_status(id).as_deref(), Some("RUNNING"));
    let metrics = ctd.ctr_ok(&["task", "metrics", id]);
    assert!(metrics.contains("memory"), "{metrics}");
    ctd.ctr_ok(&["task", "kill", "--all", "-s", "SIGKILL", id]);
    ctd.wait_status(id, "STOPPED", Duration::from_secs(10));
    ctd.delete(id);
    assert_eq!(runc_state(id), None);
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err());
}

/// Runs `ctr ARGS` with a terminal of its own (`-t` needs one): a pty of 77x33 on whose
/// master the test types `input` and reads until the output contains `until`. Returns ctr's
/// success and that output.
fn ctr_on_a_pty(
    ctd: &common::Containerd,
    args: &[&str],
    input: &str,
    until: &str,
) -> (bool, String) {
    let size = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 77,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = Command::new("ctr")
        .arg("-a")
        .arg(&ctd.address)
        .args(["-n", namespace()])
        .args(args)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    std::io::Write::write_all(&mut master, input.as_bytes()).unwrap();
    let until = until.to_string();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once ctr and its children have closed the slave.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&out).contains(&until) {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ctr {args:?} did not end\n{}",
            ctd.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap())
}

#[test]
fn ctr_run_and_exec_with_a_terminal_give_a_linux_container_its_tty_and_its_size() {
    if !common::can_run("linux_tty") {
        return;
    }
    let ctd = containerd();
    let r = native_rootfs();
    let fifo = ctd.fifo_dir().display().to_string();
    let root = r.path().display().to_string();
    // ctr gives the container's terminal the size of its own (ResizePty).
    let run = |id: &str, args: &[&str], input: &str, until: &str| {
        let mut a = vec![
            "run",
            "--rm",
            "-t",
            "--fifo-dir",
            &fifo,
            "--runtime",
            common::RUNTIME,
            "--rootfs",
            &root,
            id,
        ];
        a.extend_from_slice(args);
        ctr_on_a_pty(ctd, &a, input, until)
    };
    let (ok, out) = run("native-tty", &["/native-tool", "tty"], "", "\n");
    assert!(ok, "{out}\n{}", ctd.log_tail());
    assert!(out.contains("tty yes 77x33"), "{out:?}");
    assert_eq!(runc_state("native-tty"), None);
    // What is typed reaches the process through its terminal (the stdin FIFO the shim
    // copies to the terminal's master).
    let (ok, out) = run(
        "native-tty-in",
        &["/native-tool", "readline"],
        "typed\r",
        "read typed",
    );
    assert!(ok, "{out}\n{}", ctd.log_tail());
    assert!(out.contains("read typed (tty yes)"), "{out:?}");

    let id = "native-tty-exec";
    ctd.run_detached(&Run::rootfs(
        id,
        r.path(),
        &["/native-tool", "sleep", "100"],
    ));
    ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
    let exec = |exec_id: &str, args: &[&str], input: &str, until: &str| {
        let mut a = vec![
            "task",
            "exec",
            "-t",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            exec_id,
            id,
        ];
        a.extend_from_slice(args);
        ctr_on_a_pty(ctd, &a, input, until)
    };
    let (ok, out) = exec("t1", &["/native-tool", "tty"], "", "\n");
    assert!(ok, "{out}\n{}", ctd.log_tail());
    assert!(out.contains("tty yes 77x33"), "{out:?}");
    let (ok, out) = exec("t2", &["/native-tool", "readline"], "typed\r", "read typed");
    assert!(ok, "{out}\n{}", ctd.log_tail());
    assert!(out.contains("read typed (tty yes)"), "{out:?}");
    ctd.remove(id);
}

#[test]
fn a_linux_container_over_its_memory_limit_is_oom_killed_and_reported() {
    if !common::can_run("linux_oom") {
        return;
    }
    let ctd = containerd();
    let r = native_rootfs();
    let events = ctd.events();
    let mut run = Run::rootfs("native-oom", r.path(), &["/native-tool", "alloc", "256"]);
    run.memory_limit = Some(32 << 20);
    let out = ctd.run(&run);
    assert_eq!(out.code, Some(137), "{out:?}");
    assert!(!out.stdout.contains("allocated"), "{out:?}");
    events.wait_for(&["/tasks/oom", "native-oom"], Duration::from_secs(5));
    assert_eq!(runc_state("native-oom"), None);
}

/// runc's `delete --force` fails (here a runc that refuses it): the task's delete fails with
/// runc's reason, and the shim keeps the container and its record (a later delete, or the
/// sweep after a dead shim, retries), instead of forgetting what may still run.
#[test]
fn a_failed_runc_delete_fails_the_delete_with_runcs_reason_and_keeps_the_container() {
    if !common::can_run("linux_delete_fails") {
        return;
    }
    let switch = tempfile::tempdir().unwrap();
    let refuse = switch.path().join("refuse");
    let bin = common::bin_with_runc(&format!(
        r#"if [ -e '{}' ]; then
  case " $* " in *" delete --force "*) echo "refused by the test's runc" >&2; exit 1 ;; esac
fi
exec "$RUNC" "$@""#,
        refuse.display()
    ));
    let ctd = Owned(Containerd::start_with_bin(false, "", bin.path()));
    let r = native_rootfs();
    let id = "native-undeletable";
    ctd.run_detached(&Run::rootfs(
        id,
        r.path(),
        &["/native-tool", "sleep", "100"],
    ));
    ctd.wait_status(id, "RUNNING", Duration::from_secs(10));
    // The node shim works in its run directory, where it records its containers.
    let shim = common::ppid(ctd.task_pid(id).unwrap()).unwrap();
    let record = std::fs::read_link(format!("/proc/{shim}/cwd"))
        .unwrap()
        .join("containers")
        .join(id);
    assert!(record.exists(), "{}", record.display());
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    ctd.wait_status(id, "STOPPED", Duration::from_secs(10));

    std::fs::write(&refuse, "").unwrap();
    let out = ctd.ctr(&["task", "rm", id]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!("runc delete --force {id}"))
            && said.contains("refused by the test's runc"),
        "{said}"
    );
    assert_eq!(ctd.task_status(id).as_deref(), Some("STOPPED"));
    assert!(record.exists(), "the record goes only with the container");
    assert!(runc_state(id).is_some());

    // runc deletes it now: so does the shim.
    std::fs::remove_file(&refuse).unwrap();
    ctd.ctr_ok(&["task", "rm", id]);
    assert_eq!(ctd.task_status(id), None);
    assert!(!record.exists());
    assert_eq!(runc_state(id), None);
    ctd.ctr_ok(&["container", "rm", id]);
}
