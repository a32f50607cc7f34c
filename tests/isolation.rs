//! The container boundary, proved on running containers against a real containerd: what
//! the kernel says of a Wasm container's process (credentials, capabilities, no_new_privs,
//! seccomp, namespaces, root, mounts) is what it says of runc's for the same `ctr` flags,
//! and what a module can reach (files, mounts, the host's loopback) is what a runc
//! container could.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use common::{containerd, fixture, images, Rootfs, Run};

/// A rootfs with the probe module at /probe.wasm and the native sleeper at /sleep.
fn rootfs() -> Rootfs {
    let r = Rootfs::with(&[
        ("probe.wasm", &fixture("probe.wasm")),
        ("sleep", &fixture("native-sleep")),
    ]);
    r.write("etc/greeting", "hello from the image\n");
    r
}

fn flags(f: &[&str]) -> Vec<String> {
    f.iter().map(|s| s.to_string()).collect()
}

/// The `/proc/<pid>/status` fields that describe a process's privileges.
const STATUS_FIELDS: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
];

fn status(pid: i32) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| STATUS_FIELDS.contains(k))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

/// For each namespace type, whether the process has its own (not the host's, that is not
/// this test process's).
fn own_namespaces(pid: i32) -> BTreeMap<&'static str, bool> {
    ["mnt", "pid", "net", "ipc", "uts", "cgroup", "user"]
        .into_iter()
        .map(|t| {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{t}")).unwrap();
            let ours = std::fs::read_link(format!("/proc/self/ns/{t}")).unwrap();
            (t, theirs != ours)
        })
        .collect()
}

/// The process's mounts as it sees them: mount point, its read-only flag, and the file
/// system type, sorted.
fn mounts(pid: i32) -> Vec<(String, bool, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let mut m: Vec<_> = text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let fstype = right.split(' ').next()?.to_string();
            Some((
                left.get(4)?.to_string(),
                left.get(5)?.split(',').any(|o| o == "ro"),
                fstype,
            ))
        })
        .collect();
    m.sort();
    m
}

/// Starts a Wasm sleeper and a runc sleeper with the same flags; returns both pids.
fn start_pair(name: &str, r: &Rootfs, extra: &[&str]) -> (i32, i32) {
    let ctd = containerd();
    let mut wasm = Run::rootfs(
        &format!("{name}-wasm"),
        r.path(),
        &["/probe.wasm", "sleep", "60"],
    );
    wasm.flags = flags(extra);
    let mut runc = Run::rootfs(&format!("{name}-runc"), r.path(), &["/sleep", "60"]);
    runc.runtime = Some(images::RUNC.into());
    runc.flags = flags(extra);
    ctd.run_detached(&wasm);
    ctd.run_detached(&runc);
    for id in [&wasm.id, &runc.id] {
        ctd.wait_status(id, "RUNNING", Duration::from_secs(20));
    }
    (
        ctd.task_pid(&wasm.id).unwrap(),
        ctd.task_pid(&runc.id).unwrap(),
    )
}

#[test]
fn the_process_gets_what_runc_gives_for_the_same_flags() {
    if !common::can_run("same_as_runc") {
        return;
    }
    let r = rootfs();
    let ctd = containerd();
    for (name, extra) in [
        ("iso-default", vec![]),
        ("iso-user", vec!["--user", "1000:1000"]),
        ("iso-seccomp", vec!["--seccomp"]),
        (
            "iso-caps",
            vec!["--cap-drop", "CAP_CHOWN", "--cap-add", "CAP_SYS_PTRACE"],
        ),
        (
            "iso-privs",
            vec!["--allow-new-privs", "--user", "1000:1000"],
        ),
        ("iso-ro", vec!["--read-only", "--hostname", "isolated"]),
    ] {
        let (wasm, runc) = start_pair(name, &r, &extra);
        let (ws, rs) = (status(wasm), status(runc));
        let (wn, rn) = (own_namespaces(wasm), own_namespaces(runc));
        let (mut wm, rm) = (mounts(wasm), mounts(runc));
        // One difference, on purpose: the Wasm process's own memory is masked (a guest
        // that opened it would leave the Wasm sandbox); runc's process is native anyway.
        let own_memory = |m: &(String, bool, String)| {
            let p = m.0.strip_prefix("/proc/").unwrap_or("");
            let parts: Vec<&str> = p.split('/').collect();
            matches!(parts.as_slice(), [pid, "mem"] | [pid, "task", _, "mem"] if pid.parse::<u32>().is_ok())
        };
        let masked = wm.iter().filter(|m| own_memory(m)).count();
        assert_eq!(masked, 2, "{name}: its memory masked twice: {wm:?}");
        wm.retain(|m| !own_memory(m));
        eprintln!("{name}: wasm {ws:?}\n{name}: runc {rs:?}");
        eprintln!("{name}: wasm {wn:?}\n{name}: runc {rn:?}");
        eprintln!("{name}: wasm {wm:?}\n{name}: runc {rm:?}");
        ctd.remove(&format!("{name}-wasm"));
        ctd.remove(&format!("{name}-runc"));
        assert_eq!(ws, rs, "{name} {extra:?}: process status");
        assert_eq!(wn, rn, "{name} {extra:?}: own namespaces");
        assert_eq!(wm, rm, "{name} {extra:?}: mounts");
    }
}

/// `/proc/<pid>/environ`, one string per variable.
fn environ(pid: i32) -> Vec<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    nul_separated(&String::from_utf8_lossy(&env))
}

fn nul_separated(text: &str) -> Vec<String> {
    text.split('\0')
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// Variables of `env` that are neither in `spec` nor one the runner is started with
/// (`spawn::RUNNER_ENV` and the node config in `spawn::CONFIG_ENV`, which the kernel shows
/// where it refuses the process the spec's env for want of `CAP_SYS_RESOURCE`, as on this
/// project's test machine).
fn foreign(env: &[String], spec: &[String]) -> Vec<String> {
    use wasmedge_aot_protocol::spawn::{CONFIG_ENV, RUNNER_ENV};
    let runners = |v: &String| {
        RUNNER_ENV
            .iter()
            .chain([&CONFIG_ENV])
            .any(|name| v.split_once('=').is_some_and(|(n, _)| n == *name))
    };
    env.iter()
        .filter(|v| !spec.contains(v) && !runners(v))
        .cloned()
        .collect()
}

/// A container process is a fork of the runner, which the shim started: before, the kernel
/// showed the environment containerd gave the shim (`GRPC_ADDRESS`, `TTRPC_ADDRESS`, proxy
/// credentials) as the container's, to the host and to a root module through
/// `/proc/self/environ`. runc execs its process with the spec's env only.
#[test]
fn the_process_environment_is_the_specs_only_as_runc_shows_it() {
    if !common::can_run("environ_as_runc") {
        return;
    }
    let r = rootfs();
    let ctd = containerd();
    let (wasm, runc) = start_pair("iso-env", &r, &["--env", "GREETING=hello"]);
    let (we, re) = (environ(wasm), environ(runc));
    ctd.remove("iso-env-wasm");
    ctd.remove("iso-env-runc");
    assert!(re.contains(&"GREETING=hello".to_string()), "runc: {re:?}");
    assert_eq!(
        foreign(&we, &re),
        Vec::<String>::new(),
        "the host's view: {we:?}"
    );
    if we != re {
        eprintln!("the kernel refused PR_SET_MM: the runner's environment shows: {we:?}");
    }

    // What the module reads of its own process: the spec's env, which WASI gives it too.
    let env = &["--env", "GREETING=hello"];
    let seen = probe("env-self", &r, &["cat", "/proc/self/environ"], env, vec![]);
    let wasi = probe("env-wasi", &r, &["envall"], env, vec![]);
    assert_eq!(seen.code, Some(0), "{seen:?}");
    let seen = nul_separated(&seen.stdout);
    let wasi: Vec<String> = wasi.stdout.lines().map(str::to_string).collect();
    assert!(wasi.contains(&"GREETING=hello".to_string()), "{wasi:?}");
    assert_eq!(
        foreign(&seen, &wasi),
        Vec::<String>::new(),
        "the module's view: {seen:?}"
    );
}

#[test]
fn a_start_section_runs_as_the_container_never_as_the_set_up() {
    if !common::can_run("start_section_credentials") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    // Instantiation runs a module's start section: guest code, before `_start`. It must
    // already be the container (user, capabilities, seccomp), not the host's root that set
    // the container up.
    let r = Rootfs::with(&[("start.wasm", &fixture("start-open.wasm"))]);
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = data.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut run = Run::rootfs("start-section", r.path(), &["/start.wasm"]);
    run.flags = flags(&["--user", "1000:1000", "--seccomp"]);
    run.mounts = vec![bind(data.path(), "/data", "rw")];
    let out = containerd().run(&run);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout, "start: open errno 02\n",
        "the start section read the secret: {out:?}"
    );
    let m = std::fs::metadata(data.path().join("made-in-start")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (1000, 1000),
        "owner of the start section's file"
    );
}

/// `/probe.wasm` and the native sleeper `/sleep` as an image: `ctr run --uidmap` makes a
/// user namespace only for an image (whose snapshot it remaps), not for `--rootfs`.
const USERNS_IMAGE: &str = "localhost/wasmedge-tests/userns:v1";
const ID_MAPS: [&str; 4] = ["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"];

fn userns_image() -> images::Archive {
    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    images::archive(
        "userns.tar",
        wasmedge_shimctl::image::ImageBuilder::image(USERNS_IMAGE)
            .module("/probe.wasm", read("probe.wasm"))
            .file("/sleep", read("native-sleep"), 0o755),
    )
}

#[test]
fn a_user_namespace_maps_the_containers_users_to_unprivileged_host_users() {
    if !common::can_run("user_namespace") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let ctd = containerd();
    // runc's process enters its user namespace first and must then reach the bundle's rootfs
    // through the harness's directory: let others traverse it (not list it).
    std::fs::set_permissions(&ctd.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    ctd.import_image(&userns_image());

    // What the host sees of the process is what it sees of runc's: the same ids and
    // capabilities, the same maps, a user namespace of its own.
    let maps = |pid: i32| {
        ["uid_map", "gid_map"].map(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/{f}"))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    for (name, user) in [
        ("uns-root", vec![]),
        ("uns-user", vec!["--user", "1000:1000"]),
    ] {
        let mut extra = ID_MAPS.to_vec();
        extra.extend(user);
        let mut wasm = Run::image(
            &format!("{name}-wasm"),
            USERNS_IMAGE,
            &["/probe.wasm", "sleep", "60"],
        );
        wasm.flags = flags(&extra);
        let mut runc = Run::image(&format!("{name}-runc"), USERNS_IMAGE, &["/sleep", "60"]);
        runc.runtime = Some(images::RUNC.into());
        runc.flags = flags(&extra);
        ctd.run_detached(&wasm);
        ctd.run_detached(&runc);
        for id in [&wasm.id, &runc.id] {
            ctd.wait_status(id, "RUNNING", Duration::from_secs(20));
        }
        let (w, r) = (
            ctd.task_pid(&wasm.id).unwrap(),
            ctd.task_pid(&runc.id).unwrap(),
        );
        let (ws, rs) = (status(w), status(r));
        let (wn, rn) = (own_namespaces(w), own_namespaces(r));
        let (wm, rm) = (maps(w), maps(r));
        eprintln!("{name}: wasm {ws:?} {wn:?} {wm:?}\n{name}: runc {rs:?} {rn:?} {rm:?}");
        ctd.remove(&wasm.id);
        ctd.remove(&runc.id);
        assert_eq!(ws, rs, "{name}: process status");
        assert_eq!(wn, rn, "{name}: own namespaces");
        assert!(wn["user"], "{name}: a user namespace of its own");
        assert_eq!(wm, rm, "{name}: id maps");
        assert_eq!(wm, ["0 100000 65536", "0 100000 65536"], "{name}");
        let host_uid = if name == "uns-root" {
            "100000"
        } else {
            "101000"
        };
        assert_eq!(
            ws["Uid"],
            [host_uid; 4].join(" "),
            "{name}: uid on the host"
        );
    }

    // Inside, the container's root is root, over its own users only: a host root's
    // 0600 file in a volume stays closed to it, and what it creates belongs to host 100000.
    let data = tempfile::tempdir().unwrap();
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = data.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = |id: &str, args: &[&str], user: &[&str]| {
        let mut full = vec!["/probe.wasm"];
        full.extend_from_slice(args);
        let mut r = Run::image(id, USERNS_IMAGE, &full);
        let mut extra = ID_MAPS.to_vec();
        extra.extend_from_slice(user);
        r.flags = flags(&extra);
        r.mounts = vec![bind(data.path(), "/data", "rw")];
        ctd.run(&r)
    };
    let out = run("uns-status", &["cat", "/proc/self/status"], &[]);
    assert!(out.stdout.contains("\nUid:\t0\t0\t0\t0\n"), "{out:?}");
    let out = run("uns-secret", &["cat", "/data/secret"], &[]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "the secret leaked: {out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    let out = run("uns-create", &["write", "/data/made", "x"], &[]);
    assert_eq!(out.stdout, "written\n", "{out:?}");
    let m = std::fs::metadata(data.path().join("made")).unwrap();
    assert_eq!((m.uid(), m.gid()), (100000, 100000), "owner on the host");

    // A user the mappings leave out fails the create, naming the field.
    let out = run(
        "uns-unmapped",
        &["cat", "/etc/hostname"],
        &["--user", "70000:0"],
    );
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("process.user.uid") && out.stderr.contains("70000"),
        "{out:?}"
    );
}

/// A bind mount of `src` at `dst` for `ctr run --mount`.
fn bind(src: &Path, dst: &str, mode: &str) -> String {
    format!(
        "type=bind,src={},dst={dst},options=rbind:{mode}",
        src.display()
    )
}

fn probe(
    id: &str,
    r: &Rootfs,
    args: &[&str],
    extra: &[&str],
    mounts: Vec<String>,
) -> common::RunResult {
    let mut full = vec!["/probe.wasm"];
    full.extend_from_slice(args);
    let mut run = Run::rootfs(id, r.path(), &full);
    run.flags = flags(extra);
    run.mounts = mounts;
    containerd().run(&run)
}

#[test]
fn files_obey_the_specs_user_and_read_only_mounts_refuse_writes() {
    if !common::can_run("files_and_users") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let r = rootfs();
    let data = tempfile::tempdir().unwrap();
    // A world-writable volume with a root-only secret in it.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = data.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let user = ["--user", "1000:1000"];
    let rw = || vec![bind(data.path(), "/data", "rw")];

    let out = probe("files-secret", &r, &["cat", "/data/secret"], &user, rw());
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "the secret leaked: {out:?}");
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    // Root in the container reads it, as under runc.
    let out = probe("files-secret-root", &r, &["cat", "/data/secret"], &[], rw());
    assert_eq!(out.stdout, "root only\n", "{out:?}");

    let out = probe(
        "files-create",
        &r,
        &["write", "/data/made", "x"],
        &user,
        rw(),
    );
    assert_eq!(out.stdout, "written\n", "{out:?}");
    let m = std::fs::metadata(data.path().join("made")).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (1000, 1000),
        "owner of a file the module made"
    );

    let ro = vec![bind(data.path(), "/data", "ro")];
    let out = probe("files-ro", &r, &["write", "/data/not", "x"], &[], ro);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
    assert!(!data.path().join("not").exists());

    let out = probe(
        "files-ro-root",
        &r,
        &["write", "/new", "x"],
        &["--read-only"],
        vec![],
    );
    assert!(out.stderr.contains("Read-only file system"), "{out:?}");
}

#[test]
fn the_root_is_the_rootfs_and_no_host_path_exists() {
    if !common::can_run("root_is_rootfs") {
        return;
    }
    let r = rootfs();
    let ctd = containerd();
    let mut run = Run::rootfs("root-ls", r.path(), &["/probe.wasm", "sleep", "60"]);
    run.flags = vec![];
    ctd.run_detached(&run);
    ctd.wait_status("root-ls", "RUNNING", Duration::from_secs(20));
    let pid = ctd.task_pid("root-ls").unwrap();
    let root = std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let rootfs = std::fs::metadata(r.path()).unwrap();
    assert_eq!((root.dev(), root.ino()), (rootfs.dev(), rootfs.ino()));
    ctd.remove("root-ls");

    let out = probe("root-list", &r, &["ls", "/"], &[], vec![]);
    let mut seen: Vec<&str> = out.stdout.lines().collect();
    seen.sort();
    // The image's files and the mount points the spec asked for; nothing of the host's.
    assert_eq!(
        seen,
        [
            ".",
            "..",
            "dev",
            "etc",
            "probe.wasm",
            "proc",
            "run",
            "sleep",
            "sys"
        ],
        "{out:?}"
    );
}

#[test]
fn mount_destinations_and_working_directories_are_container_paths() {
    if !common::can_run("container_paths") {
        return;
    }
    let r = rootfs();
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("marker"), "in the volume\n").unwrap();
    // A colon in a destination once made WasmEdge open the host's `/` read-write.
    let out = probe(
        "dst-colon",
        &r,
        &["ls", "/x:/"],
        &[],
        vec![bind(vol.path(), "/x:/", "ro")],
    );
    let mut seen: Vec<&str> = out.stdout.lines().collect();
    seen.sort();
    assert_eq!(seen, [".", "..", "marker"], "{out:?}");
    let out = probe(
        "dst-colon-cat",
        &r,
        &["cat", "/x:/marker"],
        &[],
        vec![bind(vol.path(), "/x:/", "ro")],
    );
    assert_eq!(out.stdout, "in the volume\n", "{out:?}");

    // `..` and a symlink out of the root in a destination land inside the root.
    std::os::unix::fs::symlink("../../../../../../tmp", r.path().join("escape")).unwrap();
    let out = probe(
        "dst-link",
        &r,
        &["cat", "/tmp/m/marker"],
        &[],
        vec![bind(vol.path(), "/escape/m", "ro")],
    );
    assert_eq!(out.stdout, "in the volume\n", "{out:?}");
    assert!(r.path().join("tmp/m").is_dir(), "made inside the rootfs");
    assert!(!Path::new("/tmp/m").exists(), "nothing made on the host");
    let out = probe(
        "dst-dotdot",
        &r,
        &["cat", "/b/marker"],
        &[],
        vec![bind(vol.path(), "/a/../../../b", "ro")],
    );
    assert_eq!(out.stdout, "in the volume\n", "{out:?}");

    // A working directory with a colon, and one through a symlink that climbs out.
    r.write("..:/inside-colon", "colon dir\n");
    let mut run = Run::rootfs(
        "cwd-colon",
        r.path(),
        &["/probe.wasm", "cat", "inside-colon"],
    );
    run.cwd = Some("/..:".into());
    let out = containerd().run(&run);
    assert_eq!(out.stdout, "colon dir\n", "{out:?}");
    r.write("real/here", "through the link\n");
    std::os::unix::fs::symlink("../../../../real", r.path().join("w")).unwrap();
    let mut run = Run::rootfs("cwd-link", r.path(), &["/probe.wasm", "cat", "here"]);
    run.cwd = Some("/w".into());
    let out = containerd().run(&run);
    assert_eq!(out.stdout, "through the link\n", "{out:?}");
}

#[test]
fn a_container_with_its_own_network_namespace_cannot_reach_the_hosts_loopback() {
    if !common::can_run("no_host_loopback") {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let r = rootfs();
    let out = probe("net-own", &r, &["connect", "127.0.0.1", &port], &[], vec![]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    // The same module on the host's network reaches it: the probe is not what fails.
    let out = probe(
        "net-host",
        &r,
        &["connect", "127.0.0.1", &port],
        &["--net-host"],
        vec![],
    );
    assert_eq!(out.stdout, "connected\n", "{out:?}");
}

#[test]
fn a_seccomp_profile_blocks_its_system_calls() {
    if !common::can_run("seccomp_blocks") {
        return;
    }
    let r = rootfs();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}"#,
    )
    .unwrap();
    let profile = profile.display().to_string();
    let blocked = ["--seccomp", "--seccomp-profile", profile.as_str()];
    let out = probe("seccomp-mkdir", &r, &["mkdir", "/made"], &blocked, vec![]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("mkdir /made: Operation not permitted"),
        "{out:?}"
    );
    assert!(!r.path().join("made").exists());
    let out = probe(
        "seccomp-allowed",
        &r,
        &["mkdir", "/made"],
        &["--seccomp"],
        vec![],
    );
    assert_eq!(out.stdout, "made\n", "{out:?}");
}

#[test]
fn a_shared_root_propagation_runs_as_under_runc() {
    if !common::can_run("rootfs_propagation_shared") {
        return;
    }
    let r = rootfs();
    // Both start (the create used to fail: pivot_root refuses a shared parent).
    let (wasm, _runc) = start_pair("iso-shared", &r, &["--rootfs-propagation", "shared"]);
    let root_line = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap_or_default()
            .to_string()
    };
    let line = root_line(wasm);
    let ctd = containerd();
    ctd.remove("iso-shared-wasm");
    ctd.remove("iso-shared-runc");
    // Its "/" is shared, as runc (1.2 on) makes it after the pivot, in a peer group of its
    // own: none of the host's, which would carry its mounts out.
    let group = |tag: &str, l: &str| {
        l.split_whitespace()
            .find_map(|f| f.strip_prefix(tag).map(str::to_string))
    };
    let peer = group("shared:", &line).unwrap_or_else(|| panic!("not shared: {line}"));
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host
            .lines()
            .any(|l| group("shared:", l).as_deref() == Some(peer.as_str())),
        "the container's root is a peer of a host mount: {line}"
    );
}

/// The seccomp programs the kernel holds for process `pid` (`PTRACE_SECCOMP_GET_FILTER`,
/// newest first), as `(code, jt, jf, k)` instructions. The process is stopped for the read.
fn installed_filters(pid: i32) -> Vec<Vec<(u16, u8, u8, u32)>> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    let ptrace = |request: libc::c_uint| {
        // SAFETY: seize, interrupt and detach take no buffer.
        let r = unsafe { libc::ptrace(request, pid, 0, 0) };
        assert_eq!(
            r,
            0,
            "ptrace {request:#x} of {pid}: {}",
            std::io::Error::last_os_error()
        );
    };
    ptrace(libc::PTRACE_SEIZE);
    ptrace(libc::PTRACE_INTERRUPT);
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::__WALL)).unwrap();
    let mut filters = Vec::new();
    for index in 0.. {
        // SAFETY: with a null buffer the call only returns the program's length.
        let len = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                pid.as_raw(),
                index,
                std::ptr::null_mut::<u8>(),
            )
        };
        if len <= 0 {
            break;
        }
        let mut program = vec![
            libc::sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0
            };
            len as usize
        ];
        // SAFETY: the buffer holds `len` instructions, which is what the call writes.
        let got = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                pid.as_raw(),
                index,
                program.as_mut_ptr(),
            )
        };
        assert_eq!(got, len);
        filters.push(program.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect());
    }
    ptrace(libc::PTRACE_DETACH);
    filters
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// What the kernel decides for one x86_64 system call under `filters`.
fn decide(filters: &[Vec<(u16, u8, u8, u32)>], nr: u32, args: [u64; 6]) -> u32 {
    decide_as(filters, AUDIT_ARCH_X86_64, nr, args)
}

/// What the kernel decides for one system call of architecture `arch` under `filters`: the
/// strictest of their actions (`SECCOMP_RET_ACTION_FULL` ordering, lowest first), with its
/// data.
fn decide_as(filters: &[Vec<(u16, u8, u8, u32)>], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            0 => nr,
            4 => arch,
            8 | 12 => 0, // the instruction pointer
            16..=63 => {
                let a = args[(off as usize - 16) / 8];
                if off.is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            _ => panic!("load at offset {off}"),
        }
    };
    let run = |insns: &[(u16, u8, u8, u32)]| -> u32 {
        let (mut a, mut x, mut mem, mut pc) = (0u32, 0u32, [0u32; 16], 0usize);
        loop {
            let (code, jt, jf, k) = insns[pc];
            let jump = |taken: bool| pc + 1 + usize::from(if taken { jt } else { jf });
            pc = match code {
                0x20 => {
                    a = word(k);
                    pc + 1
                } // ld [k]
                0x00 => {
                    a = k;
                    pc + 1
                } // ld #k
                0x01 => {
                    x = k;
                    pc + 1
                } // ldx #k
                0x60 => {
                    a = mem[k as usize];
                    pc + 1
                } // ld M[k]
                0x61 => {
                    x = mem[k as usize];
                    pc + 1
                } // ldx M[k]
                0x02 => {
                    mem[k as usize] = a;
                    pc + 1
                } // st M[k]
                0x03 => {
                    mem[k as usize] = x;
                    pc + 1
                } // stx M[k]
                0x54 => {
                    a &= k;
                    pc + 1
                } // and #k
                0x44 => {
                    a |= k;
                    pc + 1
                } // or #k
                0x87 => {
                    a = x;
                    pc + 1
                } // txa
                0x07 => {
                    x = a;
                    pc + 1
                } // tax
                0x05 => pc + 1 + k as usize, // ja
                0x15 => jump(a == k),
                0x25 => jump(a > k),
                0x35 => jump(a >= k),
                0x45 => jump(a & k != 0),
                0x1d => jump(a == x),
                0x2d => jump(a > x),
                0x3d => jump(a >= x),
                0x06 => return k, // ret #k
                0x16 => return a, // ret a
                _ => panic!("opcode {code:#x} at {pc}"),
            };
        }
    };
    let rank = |ret: u32| (ret & 0xffff_0000) as i32; // SECCOMP_RET_ACTION_FULL, signed
    filters
        .iter()
        .map(|f| run(f))
        .min_by_key(|&r| rank(r))
        .unwrap_or(0x7fff_0000)
}

/// The seccomp program a Wasm container's process runs under decides every system call as
/// runc's does for the same profile (containerd's default, `ctr run --seccomp`), arguments
/// included. Before, the shim read the OCI `SCMP_CMP_MASKED_EQ` condition backwards (the
/// spec's `valueTwo` as the mask), so that `clone` with `CLONE_NEWUSER` and every other
/// `CLONE_NEW*` flag was allowed where runc's program returns EPERM; and a system call
/// newer than the profile got EPERM where runc's gets ENOSYS.
#[test]
fn the_seccomp_program_decides_every_system_call_as_runcs() {
    if !common::can_run("seccomp_as_runc") {
        return;
    }
    let r = rootfs();
    let ctd = containerd();
    let (wasm, runc) = start_pair("iso-seccomp-bpf", &r, &["--seccomp"]);
    let (w, rc) = (installed_filters(wasm), installed_filters(runc));
    ctd.remove("iso-seccomp-bpf-wasm");
    ctd.remove("iso-seccomp-bpf-runc");
    assert_eq!(w.len(), 1, "one filter in the Wasm container");
    const CLONE_NEW: [u64; 7] = [
        libc::CLONE_NEWNS as u64,
        libc::CLONE_NEWUTS as u64,
        libc::CLONE_NEWIPC as u64,
        libc::CLONE_NEWUSER as u64,
        libc::CLONE_NEWPID as u64,
        libc::CLONE_NEWNET as u64,
        libc::CLONE_NEWCGROUP as u64,
    ];
    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    const ALLOW: u32 = 0x7fff_0000;
    let thread = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD) as u64;
    assert_eq!(
        decide(&w, libc::SYS_clone as u32, [thread, 0, 0, 0, 0, 0]),
        ALLOW
    );
    for flag in CLONE_NEW {
        let args = [flag | libc::SIGCHLD as u64, 0, 0, 0, 0, 0];
        assert_eq!(
            (
                decide(&w, libc::SYS_clone as u32, args),
                decide(&rc, libc::SYS_clone as u32, args)
            ),
            (EPERM, EPERM),
            "clone with {flag:#x}"
        );
    }
    // Every system call of the x86_64, x32 (bit 30) and i386 tables, with arguments that
    // each conditional rule of the profile tells apart, and numbers past the newest the
    // profile names (runc answers those ENOSYS, so that a libc falls back).
    let args: Vec<[u64; 6]> = [
        0u64,
        8,
        0x20000,
        0xffff_ffff,
        libc::CLONE_NEWUSER as u64,
        libc::AF_NETLINK as u64,
        libc::AF_INET as u64,
    ]
    .into_iter()
    .map(|a| [a, 0, 0, 0, 0, 0])
    .collect();
    let differ = differences(&w, &rc, &every_table(), &args);
    assert!(differ.is_empty(), "{differ:#?}");
}

/// Every number of the x86_64, x32 (bit 30) and i386 tables, and some past them.
fn every_table() -> Vec<(u32, u32)> {
    (0..470u32)
        .map(|nr| (AUDIT_ARCH_X86_64, nr))
        .chain((0..560u32).map(|nr| (AUDIT_ARCH_X86_64, nr | 1 << 30)))
        .chain((0..470u32).map(|nr| (AUDIT_ARCH_I386, nr)))
        .collect()
}

/// Each call and arguments that programs `ours` and `theirs` decide differently.
fn differences(
    ours: &[Vec<(u16, u8, u8, u32)>],
    theirs: &[Vec<(u16, u8, u8, u32)>],
    calls: &[(u32, u32)],
    args: &[[u64; 6]],
) -> Vec<String> {
    let mut differ = Vec::new();
    for &(arch, nr) in calls {
        for a in args {
            let (o, t) = (
                decide_as(ours, arch, nr, *a),
                decide_as(theirs, arch, nr, *a),
            );
            if o != t {
                differ.push(format!(
                    "arch {arch:#x} syscall {nr:#x} args {a:x?}: ours {o:#x}, runc's {t:#x}"
                ));
            }
        }
    }
    differ
}

/// A profile of the pod author's own (`ctr run --seccomp-profile`) decides as under runc:
/// every comparison operator, errno rules with and without their own errno beside a
/// `defaultErrnoRet`, several conditions on distinct arguments (they AND together) and on
/// one argument (each a rule of its own, as runc adds them), and every action. Before, an
/// errno rule without its errno returned the default's errno instead of EPERM, and a rule
/// with two conditions on one argument ANDed its other conditions together where runc
/// lets any one of them match.
#[test]
fn a_pod_authors_seccomp_profile_decides_as_under_runc() {
    if !common::can_run("seccomp_profile_as_runc") {
        return;
    }
    // Everything x86_64 has is allowed but the calls the rules are about, which neither
    // runtime makes to start a container.
    let ruled = [
        "setpriority",
        "ioprio_set",
        "kcmp",
        "fadvise64",
        "sync_file_range",
        "tee",
        "splice",
        "vmsplice",
        "mbind",
        "personality",
        "acct",
        "swapon",
        "ptrace",
        "reboot",
    ];
    let allowed: Vec<String> = (0..460)
        .filter_map(|nr| {
            libseccomp::ScmpSyscall::from(nr)
                .get_name_by_arch(libseccomp::ScmpArch::X8664)
                .ok()
        })
        .filter(|n| !ruled.contains(&n.as_str()))
        .collect();
    let arg = |index: u32, op: &str, value: u64| json!({"index": index, "value": value, "op": op});
    let rule = |name: &str, action: &str, errno: Option<u32>, args: Vec<serde_json::Value>| {
        let mut r = json!({"names": [name], "action": action, "args": args});
        if let Some(e) = errno {
            r["errnoRet"] = json!(e);
        }
        r
    };
    let masked = json!({"index": 5, "value": 3, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"});
    let profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 95,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW"},
            rule("setpriority", "SCMP_ACT_ERRNO", Some(5), vec![arg(0, "SCMP_CMP_EQ", 1)]),
            rule("ioprio_set", "SCMP_ACT_ERRNO", None, vec![arg(1, "SCMP_CMP_NE", 0)]),
            rule("kcmp", "SCMP_ACT_ALLOW", None, vec![arg(0, "SCMP_CMP_LT", 10)]),
            rule("fadvise64", "SCMP_ACT_ERRNO", Some(8), vec![arg(3, "SCMP_CMP_LE", 4)]),
            rule("sync_file_range", "SCMP_ACT_TRAP", None, vec![arg(3, "SCMP_CMP_GE", 2)]),
            rule("tee", "SCMP_ACT_ALLOW", None, vec![arg(2, "SCMP_CMP_GT", 100)]),
            rule("splice", "SCMP_ACT_ERRNO", Some(11), vec![masked]),
            rule("vmsplice", "SCMP_ACT_ALLOW", None,
                vec![arg(0, "SCMP_CMP_EQ", 0), arg(3, "SCMP_CMP_EQ", 1)]),
            rule("mbind", "SCMP_ACT_ERRNO", Some(13), vec![
                arg(0, "SCMP_CMP_EQ", 1),
                arg(0, "SCMP_CMP_EQ", 2),
                arg(1, "SCMP_CMP_EQ", 5),
                arg(2, "SCMP_CMP_EQ", 7),
            ]),
            rule("personality", "SCMP_ACT_LOG", None, vec![arg(0, "SCMP_CMP_EQ", 0xffff)]),
            rule("acct", "SCMP_ACT_KILL_PROCESS", None, vec![]),
            rule("swapon", "SCMP_ACT_TRACE", None, vec![]),
            rule("ptrace", "SCMP_ACT_KILL", None, vec![]),
            rule("reboot", "SCMP_ACT_ERRNO", Some(1), vec![]),
        ],
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.json");
    std::fs::write(&file, serde_json::to_vec(&profile).unwrap()).unwrap();
    let file = file.display().to_string();
    let r = rootfs();
    let ctd = containerd();
    let flags = ["--seccomp", "--seccomp-profile", file.as_str()];
    let (wasm, runc) = start_pair("iso-seccomp-own", &r, &flags);
    let (w, rc) = (installed_filters(wasm), installed_filters(runc));
    ctd.remove("iso-seccomp-own-wasm");
    ctd.remove("iso-seccomp-own-runc");
    // Arguments: all zero, each argument alone at values either side of every rule's, and
    // the pairs the two-condition rules look at.
    let values = [
        0u64,
        1,
        2,
        3,
        4,
        5,
        7,
        9,
        10,
        11,
        100,
        101,
        0xffff,
        1 << 32,
        u64::MAX,
    ];
    let mut args = vec![[0u64; 6]];
    for i in 0..6 {
        for v in values {
            let mut a = [0u64; 6];
            a[i] = v;
            args.push(a);
        }
    }
    for (i, j) in [(0, 3), (1, 2), (0, 1), (0, 2)] {
        for x in [0u64, 1, 2, 5, 7] {
            for y in [0u64, 1, 2, 5, 7] {
                let mut a = [0u64; 6];
                (a[i], a[j]) = (x, y);
                args.push(a);
            }
        }
    }
    let numbers: Vec<u32> = ruled
        .iter()
        .map(|n| {
            libseccomp::ScmpSyscall::from_name(n)
                .unwrap()
                .as_raw_syscall() as u32
        })
        .collect();
    let calls: Vec<(u32, u32)> = numbers.iter().map(|&nr| (AUDIT_ARCH_X86_64, nr)).collect();
    let mut differ = differences(&w, &rc, &calls, &args);
    differ.extend(differences(&w, &rc, &every_table(), &[[0; 6]]));
    assert!(differ.is_empty(), "{differ:#?}");
    // The profile is not vacuous: each rule decides something for some arguments.
    for nr in numbers {
        let seen: std::collections::BTreeSet<u32> =
            args.iter().map(|a| decide(&w, nr, *a)).collect();
        assert!(
            seen.len() > 1 || !seen.contains(&(0x0005_0000 | 95)),
            "syscall {nr} only ever gets the default: {seen:x?}"
        );
    }
}
