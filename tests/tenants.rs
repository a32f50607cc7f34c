//! Tenants on one node, against a real containerd: one container's process holds nothing
//! of another container's module (its code, its data, the loader's copy of its bytes), and
//! one module cannot take down what starts the others.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use common::{containerd, fixture, Rootfs, Run};

/// A Wasm command whose memory holds `secret` (a data segment) and whose `_start` spins:
/// it stays up to be looked at.
fn spinning_module_with(secret: &[u8]) -> Vec<u8> {
    assert!(secret.len() < 100);
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let mut section = |id: u8, body: &[u8]| {
        m.push(id);
        m.push(body.len() as u8);
        m.extend_from_slice(body);
    };
    section(1, &[1, 0x60, 0, 0]); // type 0: [] -> []
    section(3, &[1, 0]); // function 0: type 0
    section(5, &[1, 0, 1]); // one memory, 1 page
    let mut exports = vec![2, 6];
    exports.extend_from_slice(b"_start");
    exports.extend_from_slice(&[0, 0, 6]);
    exports.extend_from_slice(b"memory");
    exports.extend_from_slice(&[2, 0]);
    section(7, &exports);
    section(10, &[1, 7, 0, 0x03, 0x40, 0x0c, 0, 0x0b, 0x0b]); // loop { br 0 }
    let mut data = vec![1, 0, 0x41, 16, 0x0b, secret.len() as u8];
    data.extend_from_slice(secret);
    section(11, &data);
    m
}

/// Whether the readable memory of process `pid` contains `needle`.
fn memory_holds(pid: i32, needle: &[u8]) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut buf = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        buf.resize((end - start) as usize, 0);
        if mem.seek(SeekFrom::Start(start)).is_err() {
            continue;
        }
        let Ok(n) = mem.read(&mut buf) else {
            continue;
        };
        if buf[..n].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

#[test]
fn a_container_holds_nothing_of_another_tenants_module() {
    if !common::can_run("tenant_memory") {
        return;
    }
    let ctd = containerd();
    // Built at run time so no cache, runner or process has seen it before.
    let secret = format!(
        "tenant-a-secret-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    )
    .into_bytes();
    let a = Rootfs::with(&[]);
    std::fs::write(a.path().join("a.wasm"), spinning_module_with(&secret)).unwrap();
    // The first start compiles the module; the second starts from its native code, which
    // is where a template is made.
    for id in ["tenant-a-1", "tenant-a-2"] {
        let run = Run::rootfs(id, a.path(), &["/a.wasm"]);
        ctd.run_detached(&run);
        ctd.wait_status(id, "RUNNING", Duration::from_secs(120));
    }
    let a_pid = ctd.task_pid("tenant-a-2").unwrap();
    let b = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let run = Run::rootfs("tenant-b", b.path(), &["/probe.wasm", "sleep", "60"]);
    ctd.run_detached(&run);
    ctd.wait_status("tenant-b", "RUNNING", Duration::from_secs(60));
    let b_pid = ctd.task_pid("tenant-b").unwrap();

    let in_a = memory_holds(a_pid, &secret);
    let in_b = memory_holds(b_pid, &secret);
    for id in ["tenant-a-1", "tenant-a-2", "tenant-b"] {
        ctd.remove(id);
    }
    assert!(
        in_a,
        "the scan finds the secret where it belongs (its own container)"
    );
    assert!(!in_b, "another tenant's container holds tenant A's data");
}

/// The data a process may have, from `/proc/<pid>/status`.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A module that declares a table of `entries` funcrefs (and runs an empty `_start`).
fn module_with_table(entries: u32) -> Vec<u8> {
    let mut leb = Vec::new();
    let mut v = entries;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            leb.push(byte);
            break;
        }
        leb.push(byte | 0x80);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    let mut section = |id: u8, body: &[u8]| {
        m.push(id);
        m.push(body.len() as u8);
        m.extend_from_slice(body);
    };
    section(1, &[1, 0x60, 0, 0]);
    section(3, &[1, 0]);
    let mut table = vec![1, 0x70, 0];
    table.extend_from_slice(&leb);
    section(4, &table);
    let mut exports = vec![1, 6];
    exports.extend_from_slice(b"_start");
    exports.extend_from_slice(&[0, 0]);
    section(7, &exports);
    section(10, &[1, 2, 0, 0x0b]);
    m
}

#[test]
fn a_module_with_a_huge_table_costs_only_its_own_container() {
    if !common::can_run("tenant_table_bomb") {
        return;
    }
    let ctd = containerd();
    let hello = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    // The node's shim and runner are up (held up by a running container), and the probe's
    // native code is in the cache.
    let warm = Run::rootfs("bomb-warm", hello.path(), &["/probe.wasm", "sleep", "120"]);
    ctd.run_detached(&warm);
    ctd.wait_status("bomb-warm", "RUNNING", Duration::from_secs(60));
    let shim = common::ppid(ctd.task_pid("bomb-warm").unwrap()).unwrap();
    let runner = common::runner_of(shim).unwrap();
    let before = rss_kb(runner);

    // 30 million entries: ~470 MB of table wherever it is instantiated; 4 billion: more
    // than any allocator gives.
    for (id, entries) in [("bomb-30m", 30_000_000u32), ("bomb-4g", u32::MAX)] {
        let r = Rootfs::with(&[]);
        std::fs::write(r.path().join("bomb.wasm"), module_with_table(entries)).unwrap();
        let mut run = Run::rootfs(id, r.path(), &["/bomb.wasm"]);
        run.memory_limit = Some(256 << 20);
        run.timeout = Some(Duration::from_secs(120));
        // Twice: the second start is a cache hit, the one a template would be made for.
        let first = ctd.run(&run);
        run.id = format!("{id}-again");
        let again = ctd.run(&run);
        eprintln!("{id}: {first:?}\n{id} again: {again:?}");
        // Another tenant's start is unaffected, by either.
        let other = ctd.run(&Run::rootfs(
            &format!("{id}-other"),
            hello.path(),
            &["/probe.wasm", "exit", "0"],
        ));
        assert_eq!(
            other.code,
            Some(0),
            "{id}: another tenant's start: {other:?}"
        );
        assert_ne!(again.code, Some(0), "{id}: a bomb ran within 256 MB");
    }
    let (now, after) = (common::runner_of(shim), rss_kb(runner));
    ctd.remove("bomb-warm");
    assert_eq!(now, Some(runner), "the runner survived");
    assert!(
        after < before + 64 * 1024,
        "the runner grew from {before} kB to {after} kB"
    );
}

#[test]
fn a_module_cannot_reach_its_own_process_memory() {
    if !common::can_run("own_process_memory") {
        return;
    }
    // Its process's memory holds the engine and its native code: writing there leaves the
    // Wasm sandbox without any engine bug. runc's processes are native anyway; ours must
    // keep what WASI promises.
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let out = containerd().run(&Run::rootfs(
        "self-mem",
        r.path(),
        &["/probe.wasm", "selfmem"],
    ));
    assert_ne!(
        out.stdout, "read 16\n",
        "the module read its own memory: {out:?}"
    );
    assert_eq!(out.stdout, "read 0\n", "{out:?}");
}

#[test]
fn a_first_synchronous_start_keeps_no_handle_on_its_compile() {
    if !common::can_run("compile_pidfd") {
        return;
    }
    // A module no cache has seen: its first start waits for its compile, a root process
    // of the node's, through a pidfd.
    let r = common::unique_probe("pidfd-leak");
    let ctd = containerd();
    let run = Run::rootfs("pidfd-leak", r.path(), &["/probe.wasm", "sleep", "60"]);
    ctd.run_detached(&run);
    ctd.wait_status("pidfd-leak", "RUNNING", Duration::from_secs(120));
    let pid = ctd.task_pid("pidfd-leak").unwrap();
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .collect();
    ctd.remove("pidfd-leak");
    assert!(
        !fds.iter().any(|l| l == "anon_inode:[pidfd]"),
        "the container holds a pidfd: {fds:?}"
    );
}

#[test]
fn an_interpreted_modules_bytes_are_parsed_only_inside_its_boundary() {
    if !common::can_run("parse_inside_boundary") {
        return;
    }
    // Bytes that are not a valid module (the magic, then garbage), run in the interpreter,
    // in a container whose root cannot be made (a bind mount of a source that does not
    // exist). The set-up fails at its mounts, before anything parses the tenant's bytes:
    // were they parsed first, the loader's error would be what the create reports, and a
    // crafted module would have reached WasmEdge's loader as the host's root.
    let r = Rootfs::with(&[]);
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    bytes.extend_from_slice(&[0xff; 64]);
    std::fs::write(r.path().join("bad.wasm"), bytes).unwrap();
    let mut run = Run::rootfs("parse-late", r.path(), &["/bad.wasm"]);
    run.annotations = vec![format!(
        "{}=off",
        wasmedge_aot_protocol::config::POLICY_ANNOTATION
    )];
    run.mounts = vec!["type=bind,src=/nonexistent-wasmedge-test,dst=/x,options=rbind:ro".into()];
    let out = containerd().run(&run);
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("mounts"), "{out:?}");
    assert!(
        !out.stderr.contains("load:"),
        "parsed before the boundary: {out:?}"
    );
}

#[test]
fn a_pods_container_joins_no_namespace_of_another_pods_container() {
    if !common::can_run("other_pod_namespace") {
        return;
    }
    // One node shim serves every pod: each container's process is its child. CRI names a
    // pod's namespaces by its sandbox's pid and a debug target by a container of the same
    // pod; another pod's container is neither.
    let ctd = containerd();
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let pod = |sandbox: &str| format!("io.kubernetes.cri.sandbox-id={sandbox}");
    let mut victim = Run::rootfs("pod-a-app", r.path(), &["/probe.wasm", "sleep", "60"]);
    victim.annotations.push(pod("pod-a"));
    ctd.run_detached(&victim);
    ctd.wait_status("pod-a-app", "RUNNING", Duration::from_secs(60));
    let victim_pid = ctd.task_pid("pod-a-app").unwrap();
    let join = |id: &str, sandbox: &str| {
        let mut run = Run::rootfs(id, r.path(), &["/probe.wasm"]);
        run.annotations.push(pod(sandbox));
        run.flags = vec![
            "--with-ns".into(),
            format!("network:/proc/{victim_pid}/ns/net"),
        ];
        ctd.run(&run)
    };
    let other_pod = join("pod-b-app", "pod-b");
    let same_pod = join("pod-a-debug", "pod-a");
    // Only as CRI writes it: `..` on the way to /proc is no way around the check.
    let mut detour = Run::rootfs("pod-b-detour", r.path(), &["/probe.wasm"]);
    detour.annotations.push(pod("pod-b"));
    detour.flags = vec![
        "--with-ns".into(),
        format!("network:/run/../proc/{victim_pid}/ns/net"),
    ];
    let detour = ctd.run(&detour);
    // A container of the pod that has exited is no member: its pid may be anyone's now.
    let mut done = Run::rootfs("pod-a-done", r.path(), &["/probe.wasm"]);
    done.annotations.push(pod("pod-a"));
    ctd.run_detached(&done);
    ctd.wait_status("pod-a-done", "STOPPED", Duration::from_secs(60));
    let done_pid = ctd.task_pid("pod-a-done").unwrap();
    let mut late = Run::rootfs("pod-a-late", r.path(), &["/probe.wasm"]);
    late.annotations.push(pod("pod-a"));
    late.flags = vec![
        "--with-ns".into(),
        format!("network:/proc/{done_pid}/ns/net"),
    ];
    let late = ctd.run(&late);
    ctd.remove("pod-a-app");
    ctd.remove("pod-a-done");
    assert!(
        other_pod.stderr.contains("nor a live container of the pod"),
        "another pod's container joined pod-a's network namespace: {other_pod:?}"
    );
    assert_eq!(same_pod.stdout, "hello from wasm\n", "{same_pod:?}");
    assert!(
        detour.stderr.contains("only as /proc/<pid>/ns/<type>"),
        "a path through .. joined pod-a's network namespace: {detour:?}"
    );
    assert!(
        late.stderr.contains("nor a live container of the pod"),
        "the pid of a stopped container was taken for a member: {late:?}"
    );
}
