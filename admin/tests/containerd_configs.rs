//! `wasmedge-shimctl install` and `uninstall` checked by the containerds that read their
//! files: each containerd of the test matrix (1.x on PATH; 2.x from `scripts/setup.sh`, or
//! the binary `WASMEDGE_SHIM_CONTAINERD2` names) runs `containerd config dump` on the config
//! the tool wrote (a new one, and containerd's own default config with our runtime added,
//! with runc's cgroupfs driver and with its systemd one), sees the runtime registered after
//! `install`, with runc's `SystemdCgroup` in its options, and gone after `uninstall`. Needs
//! no root and starts no daemon: `config dump` only reads the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use wasmedge_shimctl::install::{
    parse_containerd_major, registered_runtimes, runtime_systemd_cgroup, BINARIES, RUNTIME_TYPE,
};

/// Where `scripts/setup.sh` extracts containerd 2.x.
const CONTAINERD2: &str = "/opt/containerd-2.1.9/usr/bin/containerd";

/// The containerd binaries to check with, and the config version each reads.
fn containerds() -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let second = std::env::var_os("WASMEDGE_SHIM_CONTAINERD2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CONTAINERD2));
    for bin in [PathBuf::from("containerd"), second] {
        let Ok(out) = Command::new(&bin).arg("--version").output() else {
            let ci = std::env::var_os("WASMEDGE_SHIM_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1");
            assert!(
                !ci,
                "{} is missing and CI requires both containerds",
                bin.display()
            );
            eprintln!("skipped {}: not installed", bin.display());
            continue;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let major = parse_containerd_major(&text)
            .unwrap_or_else(|| panic!("no version in `{} --version`: {text}", bin.display()));
        found.push((bin, if major >= 2 { 3 } else { 2 }));
    }
    found
}

fn shimctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasmedge-shimctl"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `containerd --config FILE config dump`, which must succeed: the runtimes it sees, and
/// the `SystemdCgroup` of our runtime's options.
fn dumped_runtimes(containerd: &Path, config: &Path) -> (Vec<(String, String)>, Option<bool>) {
    let out = Command::new(containerd)
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let dump = ok(
        out,
        &format!(
            "{} --config {} config dump",
            containerd.display(),
            config.display()
        ),
    );
    assert!(
        dump.contains("version = 2") || dump.contains("version = 3"),
        "{dump}"
    );
    (
        registered_runtimes(&dump).unwrap(),
        runtime_systemd_cgroup(&dump, "wasmedge").unwrap(),
    )
}

#[test]
fn both_containerds_read_what_install_and_uninstall_write() {
    let containerds = containerds();
    assert!(!containerds.is_empty(), "no containerd to check with");
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    for b in BINARIES {
        std::fs::write(src.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
    }
    let ours = ("wasmedge".to_string(), RUNTIME_TYPE.to_string());
    for (containerd, version) in containerds {
        let dir = tmp.path().join(format!("v{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        let default = ok(
            Command::new(&containerd)
                .args(["config", "default"])
                .output()
                .unwrap(),
            "containerd config default",
        );
        let stock = dir.join("stock.toml");
        std::fs::write(&stock, &default).unwrap();
        // The same with runc's systemd driver, as a kubeadm node configures it.
        assert_eq!(
            default.matches("SystemdCgroup = false").count(),
            1,
            "{default}"
        );
        let systemd_default = default.replace("SystemdCgroup = false", "SystemdCgroup = true");
        let systemd = dir.join("systemd.toml");
        std::fs::write(&systemd, &systemd_default).unwrap();
        // A new file has no runc runtime to match: the cgroup path's form picks the driver.
        for (config, systemd_cgroup) in [
            (dir.join("new/config.toml"), None),
            (stock.clone(), Some(false)),
            (systemd.clone(), Some(true)),
        ] {
            let config_s = config.to_str().unwrap();
            let what = format!("{} on {config_s}", containerd.display());
            let bin = dir.join("bin");
            let bin_s = bin.to_str().unwrap();
            ok(
                shimctl(&[
                    "install",
                    "--source-dir",
                    src.to_str().unwrap(),
                    "--bin-dir",
                    bin_s,
                    "--containerd-config",
                    config_s,
                    "--config-version",
                    &version.to_string(),
                ]),
                &format!("install, {what}"),
            );
            let (runtimes, ours_systemd) = dumped_runtimes(&containerd, &config);
            assert!(runtimes.contains(&ours), "{what}: {runtimes:?}");
            assert_eq!(ours_systemd, systemd_cgroup, "{what}");
            ok(
                shimctl(&[
                    "uninstall",
                    "--bin-dir",
                    bin_s,
                    "--containerd-config",
                    config_s,
                ]),
                &format!("uninstall, {what}"),
            );
            let (runtimes, _) = dumped_runtimes(&containerd, &config);
            assert!(
                runtimes.iter().all(|(name, _)| name != "wasmedge"),
                "{what}: {runtimes:?}"
            );
        }
        // containerd's own default configs come back as they were.
        assert_eq!(std::fs::read_to_string(&stock).unwrap(), default);
        assert_eq!(std::fs::read_to_string(&systemd).unwrap(), systemd_default);
    }
}
