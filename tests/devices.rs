//! Device nodes, against a real containerd: a Wasm container may use the devices its spec's
//! `linux.resources.devices` (and runc's default list) allow, and no other, whatever nodes
//! its image or its mounts hold. runc beside it is the reference.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{containerd, fixture, images, Rootfs, Run};

/// A loop device over a file holding `text`: a real block device of the host, detached on
/// drop.
struct LoopDevice {
    dev: PathBuf,
    _backing: tempfile::TempDir,
}

impl LoopDevice {
    fn new(text: &str) -> Option<LoopDevice> {
        let backing = tempfile::tempdir().unwrap();
        let file = backing.path().join("disk.img");
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(1 << 20, 0);
        std::fs::write(&file, bytes).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            // In the node VM a skip would prove nothing.
            if std::env::var_os("WASMEDGE_SHIM_NODE_TESTS").is_some_and(|v| v == "1") {
                panic!("losetup: {why}");
            }
            eprintln!("skipped: losetup: {}", why.trim());
            return None;
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Some(LoopDevice {
            dev,
            _backing: backing,
        })
    }

    fn rdev(&self) -> u64 {
        let m = std::fs::metadata(&self.dev).unwrap();
        assert!(m.file_type().is_block_device());
        m.rdev()
    }

    /// The first bytes of the backing file, as the host sees them.
    fn head(&self) -> String {
        let bytes = std::fs::read(&self.dev).unwrap();
        String::from_utf8_lossy(&bytes[..32]).into_owned()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn mknod_block(at: &Path, rdev: u64) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    nix::sys::stat::mknod(
        at,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        rdev,
    )
    .unwrap();
}

const SECRET: &str = "host disk secret\n";

/// A rootfs with the probe, the native tool and, at `/disk`, a node of the host's loop
/// device: what a hostile image's layer can hold.
fn hostile_rootfs(disk: &LoopDevice) -> Rootfs {
    let r = Rootfs::with(&[
        ("probe.wasm", &fixture("probe.wasm")),
        ("tool", &fixture("native-tool")),
    ]);
    mknod_block(&r.path().join("disk"), disk.rdev());
    r
}

#[test]
fn a_block_device_node_in_the_image_is_not_the_hosts_disk() {
    if !common::can_run("device_node_in_image") {
        return;
    }
    let Some(disk) = LoopDevice::new(SECRET) else {
        return;
    };
    let r = hostile_rootfs(&disk);
    let ctd = containerd();
    for (id, extra) in [
        ("dev-read", vec![]),
        ("dev-read-user", vec!["--user", "1000:1000"]),
    ] {
        let mut run = Run::rootfs(id, r.path(), &["/probe.wasm", "cat", "/disk"]);
        run.flags = extra.iter().map(|s| s.to_string()).collect();
        let out = ctd.run(&run);
        assert!(
            !out.stdout.contains("secret"),
            "{id}: read the disk: {out:?}"
        );
        assert_eq!(out.code, Some(2), "{id}: {out:?}");
        assert!(
            out.stderr.contains("Operation not permitted"),
            "{id}: {out:?}"
        );
    }
    let out = ctd.run(&Run::rootfs(
        "dev-write",
        r.path(),
        &["/probe.wasm", "write", "/disk", "overwritten by a tenant"],
    ));
    assert!(
        out.stderr.contains("Operation not permitted"),
        "wrote the disk: {out:?}"
    );
    assert_eq!(
        disk.head(),
        format!("{SECRET}{}", "\0".repeat(32 - SECRET.len()))
    );
    // runc, for the same image and flags.
    let mut runc = Run::rootfs("dev-read-runc", r.path(), &["/tool", "cat", "/disk"]);
    runc.runtime = Some(images::RUNC.into());
    let out = ctd.run(&runc);
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
}

#[test]
fn a_start_section_cannot_open_a_device_either() {
    if !common::can_run("device_in_start_section") {
        return;
    }
    let Some(disk) = LoopDevice::new(SECRET) else {
        return;
    };
    // start-open.wasm's start section opens /data/secret and prints the WASI errno.
    let r = Rootfs::with(&[("start.wasm", &fixture("start-open.wasm"))]);
    mknod_block(&r.path().join("data/secret"), disk.rdev());
    let mut run = Run::rootfs("dev-start", r.path(), &["/start.wasm"]);
    // Its first start waits for its compile: minutes in the node VM's emulated CPU.
    run.timeout = Some(std::time::Duration::from_secs(300));
    let out = containerd().run(&run);
    // 63: EPERM, from the device filter, in place before any guest instruction.
    assert!(
        out.stdout.starts_with("start: open errno 63"),
        "the start section opened the disk: {out:?}"
    );
}

#[test]
fn the_default_devices_still_work() {
    if !common::can_run("default_devices") {
        return;
    }
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    let ctd = containerd();
    for (id, args, says) in [
        ("dev-zero", vec!["head", "/dev/zero", "16"], "read 16\n"),
        (
            "dev-urandom",
            vec!["head", "/dev/urandom", "16"],
            "read 16\n",
        ),
        ("dev-random", vec!["head", "/dev/random", "16"], "read 16\n"),
        ("dev-null", vec!["write", "/dev/null", "x"], "written\n"),
    ] {
        let mut full = vec!["/probe.wasm"];
        full.extend(args);
        let out = ctd.run(&Run::rootfs(id, r.path(), &full));
        assert_eq!(out.stdout, says, "{id}: {out:?}");
    }
    // Allowed, and the device itself answers: no space, no controlling terminal.
    let out = ctd.run(&Run::rootfs(
        "dev-full",
        r.path(),
        &["/probe.wasm", "write", "/dev/full", "x"],
    ));
    assert!(out.stderr.contains("No space left on device"), "{out:?}");
    let out = ctd.run(&Run::rootfs(
        "dev-tty",
        r.path(),
        &["/probe.wasm", "cat", "/dev/tty"],
    ));
    assert!(out.stderr.contains("No such device or address"), "{out:?}");
}

#[test]
fn a_device_the_spec_allows_is_the_only_extra_one() {
    if !common::can_run("device_allowed_by_spec") {
        return;
    }
    let (Some(allowed), Some(other)) = (LoopDevice::new(SECRET), LoopDevice::new(SECRET)) else {
        return;
    };
    // `ctr run --device` adds the node and a rule allowing it (rwm), as a device plugin's
    // container gets through CRI.
    let r = Rootfs::with(&[("probe.wasm", &fixture("probe.wasm"))]);
    mknod_block(&r.path().join("nodes/other"), other.rdev());
    let dev = allowed.dev.to_str().unwrap();
    let mut run = Run::rootfs("dev-allowed", r.path(), &["/probe.wasm", "cat", dev]);
    run.flags = vec!["--device".into(), dev.into()];
    let out = containerd().run(&run);
    assert!(out.stdout.starts_with(SECRET), "{out:?}");
    let mut run = Run::rootfs(
        "dev-not-allowed",
        r.path(),
        &["/probe.wasm", "cat", "/nodes/other"],
    );
    run.flags = vec!["--device".into(), dev.into()];
    let out = containerd().run(&run);
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
}

#[test]
fn a_scope_holds_the_device_policy_and_keeps_it_through_a_reload() {
    use common::cgroup::{memory_cgroup, systemd_node, unit_property};
    use wasmedge_aot_shim::cgroup::devices::bpf;
    if !systemd_node("scope_devices") {
        return;
    }
    let Some(disk) = LoopDevice::new(SECRET) else {
        return;
    };
    let r = hostile_rootfs(&disk);
    let ctd = containerd();
    let prefix = format!("wasmdev-{}", std::process::id());
    let scoped = |id: &str, args: &[&str]| {
        let mut run = Run::rootfs(id, r.path(), args);
        run.flags = vec!["--cgroup".into(), format!("system.slice:{prefix}:{id}")];
        run
    };
    let out = ctd.run(&scoped("dev-scope-read", &["/probe.wasm", "cat", "/disk"]));
    assert!(!out.stdout.contains("secret"), "read the disk: {out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");

    let run = scoped("dev-scope", &["/probe.wasm", "sleep", "120"]);
    ctd.run_detached(&run);
    ctd.wait_status(&run.id, "RUNNING", std::time::Duration::from_secs(60));
    let unit = format!("{prefix}-{}.scope", run.id);
    let policy = unit_property(&unit, "DevicePolicy");
    let allow = unit_property(&unit, "DeviceAllow");
    let dir = memory_cgroup(ctd.task_pid(&run.id).unwrap());
    let programs = || {
        let f = std::fs::File::open(&dir).unwrap();
        bpf::attached_names(std::os::fd::AsFd::as_fd(&f)).unwrap()
    };
    let before = programs();
    // systemd rebuilds its program from DeviceAllow on a reload and attaches it beside ours.
    let reload = Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .unwrap();
    let after = programs();
    ctd.remove(&run.id);
    assert_eq!(policy, "strict");
    assert!(allow.contains("/dev/char/1:3 rwm"), "{allow}");
    assert!(allow.contains("char-pts rwm"), "{allow}");
    assert_eq!(
        before,
        vec![Some(bpf::NAME.to_string())],
        "ours replaced systemd's"
    );
    assert!(reload.success());
    assert!(after.contains(&Some(bpf::NAME.to_string())), "{after:?}");
    assert!(after.len() <= 2, "{after:?}");
}
