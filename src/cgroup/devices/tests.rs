use super::bpf;
use super::*;
use oci_spec::runtime::LinuxDeviceCgroupBuilder;

fn rule(allow: bool, typ: &str, major: i64, minor: i64, access: &str) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .access(access.to_string());
    b = match typ {
        "a" => b.typ(LinuxDeviceType::A),
        "b" => b.typ(LinuxDeviceType::B),
        "c" => b.typ(LinuxDeviceType::C),
        "u" => b.typ(LinuxDeviceType::U),
        _ => b.typ(LinuxDeviceType::P),
    };
    if major != -1 {
        b = b.major(major);
    }
    if minor != -1 {
        b = b.minor(minor);
    }
    b.build().unwrap()
}

/// ctr's default rules (containerd's `WithDefaultUnixDevices` after the deny-all).
fn ctr_defaults() -> Vec<LinuxDeviceCgroup> {
    let mut r = vec![rule(false, "a", -1, -1, "rwm")];
    for (major, minor) in [
        (1, 3),
        (1, 8),
        (1, 7),
        (5, 0),
        (1, 5),
        (1, 9),
        (5, 1),
        (136, -1),
        (5, 2),
    ] {
        r.push(rule(true, "c", major, minor, "rwm"));
    }
    r
}

fn lines(p: &Policy) -> Vec<String> {
    p.exceptions().map(|(m, a)| format!("{m} {a}")).collect()
}

const RUNCS_TWELVE: &[&str] = &[
    "b *:* m",
    "c *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 10:200 rwm",
    "c 136:* rwm",
];

#[test]
fn ctr_defaults_reduce_to_runcs_allowlist() {
    let p = Policy::of_spec(&ctr_defaults(), &[]).unwrap();
    assert!(!p.default_allow());
    assert_eq!(lines(&p), RUNCS_TWELVE);
    // CRI sends only the deny-all: runc's appended list gives the same but the console.
    let cri = Policy::of_spec(&[rule(false, "a", -1, -1, "rwm")], &[]).unwrap();
    let mut expected = RUNCS_TWELVE.to_vec();
    expected.retain(|l| *l != "c 5:1 rwm");
    assert_eq!(lines(&cri), expected);
    // No rules at all is a deny-all too (runc starts from one).
    assert_eq!(Policy::of_spec(&[], &[]).unwrap(), cri);
    let privileged = Policy::of_spec(&[rule(true, "a", -1, -1, "rwm")], &[]).unwrap();
    assert!(privileged.is_allow_all());
}

#[test]
fn a_partial_deny_after_an_allow_is_subtracted() {
    let p = Policy::of_spec(
        &[
            rule(false, "a", -1, -1, "rwm"),
            rule(true, "c", 4, 3, "rw"),
            rule(false, "c", 4, 3, "w"),
        ],
        &[],
    )
    .unwrap();
    let r = Access::READ;
    let rw = Access(Access::READ.0 | Access::WRITE.0);
    assert!(p.allows(Class::Char, 4, 3, r));
    assert!(!p.allows(Class::Char, 4, 3, rw));
    assert!(!p.allows(Class::Char, 4, 3, Access::WRITE));
    // The program agrees, where a program of the raw list read backwards would allow rw.
    let prog = bpf::program(&p);
    assert!(bpf::run(&prog, Class::Char, 4, 3, r));
    assert!(!bpf::run(&prog, Class::Char, 4, 3, rw));
}

#[test]
fn a_hole_in_a_wildcard_is_refused_naming_both_rules() {
    let e = Policy::of_spec(
        &[
            rule(false, "a", -1, -1, "rwm"),
            rule(true, "c", -1, -1, "rwm"),
            rule(false, "c", 1, 3, "r"),
        ],
        &[],
    )
    .unwrap_err();
    assert_eq!(e.field, "linux.resources.devices[2]");
    assert!(
        e.message.contains("c 1:3") && e.message.contains("c *:*"),
        "{e}"
    );
    let e = Policy::of_spec(
        &[
            rule(false, "a", -1, -1, "rwm"),
            rule(true, "c", 1, -1, "rw"),
            rule(false, "c", 1, 3, "r"),
        ],
        &[],
    )
    .unwrap_err();
    assert!(e.message.contains("c 1:*"), "{e}");
}

#[test]
fn invalid_rules_are_refused_with_their_index() {
    for (i, bad) in [
        rule(true, "u", 1, 3, "rwm"),
        rule(true, "p", 1, 3, "rwm"),
        rule(true, "c", 1, 3, ""),
        rule(true, "c", 1, 3, "x"),
        rule(true, "c", -2, 3, "rwm"),
        rule(true, "c", 1, 1 << 32, "rwm"),
    ]
    .into_iter()
    .enumerate()
    {
        let rules = [rule(false, "a", -1, -1, "rwm"), bad];
        let e = Policy::of_spec(&rules, &[]).unwrap_err();
        assert_eq!(e.field, "linux.resources.devices[1]", "case {i}: {e}");
    }
    let no_access = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .build()
        .unwrap();
    assert!(Policy::of_spec(&[no_access], &[]).is_err());
}

#[test]
fn a_node_the_spec_lists_drops_runcs_default_rule_for_its_path() {
    let deny_null = [
        rule(false, "a", -1, -1, "rwm"),
        rule(false, "c", 1, 3, "rwm"),
    ];
    // Without the path listed, runc's default allows /dev/null again after the spec's deny.
    let p = Policy::of_spec(&deny_null, &[]).unwrap();
    assert!(p.allows(Class::Char, 1, 3, Access::READ));
    let p = Policy::of_spec(&deny_null, &["/dev/null".to_string()]).unwrap();
    assert!(!p.allows(Class::Char, 1, 3, Access::READ));
    assert!(p.allows(Class::Char, 1, 3, Access::MKNOD), "c *:* m stays");
}

#[test]
fn the_program_for_ctrs_defaults_is_runcs_size() {
    let p = Policy::of_spec(&ctr_defaults(), &[]).unwrap();
    // 6 + 2 blocks of 6 (m only) + 9 of 5 + c 136:* of 4 + 2.
    assert_eq!(bpf::program(&p).len(), 69);
    assert_eq!(
        bpf::program(&p),
        bpf::program(&p.clone()),
        "the same policy, the same bytes"
    );
}

/// A small deterministic generator, so the property runs the same in every CI.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn the_program_agrees_with_the_policy_on_random_rules() {
    let mut g = Lcg(7);
    let mut checked = 0;
    for _ in 0..400 {
        let mut rules = Vec::new();
        for _ in 0..g.next(8) {
            let typ = ["a", "b", "c", "c", "b"][g.next(5) as usize];
            let num = |g: &mut Lcg| if g.next(3) == 0 { -1 } else { g.next(4) as i64 };
            let access = ["r", "w", "m", "rw", "rwm", "wm"][g.next(6) as usize];
            let (major, minor) = (num(&mut g), num(&mut g));
            rules.push(rule(g.next(2) == 0, typ, major, minor, access));
        }
        let Ok(p) = Policy::of_spec(&rules, &[]) else {
            continue;
        };
        let prog = bpf::program(&p);
        for class in [Class::Block, Class::Char] {
            for major in [0, 1, 2, 3, 5, 136] {
                for minor in 0..4 {
                    for bits in 1..8 {
                        let a = Access(bits);
                        assert_eq!(
                            bpf::run(&prog, class, major, minor, a),
                            p.allows(class, major, minor, a),
                            "{rules:?} {class:?} {major}:{minor} {a}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn v1_lists_read_back_and_writes_reset_first() {
    let p = Policy::of_spec(&ctr_defaults(), &[]).unwrap();
    let writes = p.v1_writes();
    assert_eq!(writes[0], ("devices.deny", "a".to_string()));
    assert_eq!(writes.len(), 13);
    assert!(writes[1..].iter().all(|(f, _)| *f == "devices.allow"));
    let list: String = RUNCS_TWELVE.iter().map(|l| format!("{l}\n")).collect();
    assert_eq!(Policy::from_v1_list(&list).unwrap(), p);
    assert!(Policy::from_v1_list("a *:* rwm\n").unwrap().is_allow_all());
    assert!(Policy::from_v1_list("x 1:2 rwm\n").is_err());
}

#[test]
fn systemd_gets_the_allowlist_it_can_say() {
    let groups = "Character devices:\n  1 mem\n136 pts\n\nBlock devices:\n  7 loop\n";
    let p = Policy::of_spec(&ctr_defaults(), &[]).unwrap();
    let (policy, allow) = p.systemd_allow(groups);
    assert_eq!(policy, "strict");
    assert!(allow.contains(&("block-*".into(), "m".into())));
    assert!(allow.contains(&("char-*".into(), "m".into())));
    assert!(allow.contains(&("/dev/char/1:3".into(), "rwm".into())));
    assert!(allow.contains(&("char-pts".into(), "rwm".into())));
    assert_eq!(allow.len(), 12);
    let privileged = Policy::of_spec(&[rule(true, "a", -1, -1, "rwm")], &[]).unwrap();
    assert_eq!(privileged.systemd_allow(groups), ("auto", vec![]));
    // `*:3` cannot be said; a major with no group neither: narrower after a reload.
    let odd = Policy::of_spec(
        &[rule(true, "c", -1, 3, "r"), rule(true, "c", 99, -1, "r")],
        &[],
    )
    .unwrap();
    assert_eq!(odd.systemd_allow(groups).1.len(), 12 - 1);
}

/// A scratch cgroup directory under `root`, removed (after its processes have left) on drop.
struct Scratch(std::path::PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn scratch(root: &str) -> Option<Scratch> {
    if !nix::unistd::geteuid().is_root() || !Path::new(root).join("cgroup.procs").exists() {
        eprintln!("skipped: needs root and {root}");
        return None;
    }
    let dir = Path::new(root).join(format!("wasmedge-devices-test-{}", std::process::id()));
    let dir = dir.with_extension(format!("{}", rand_suffix()));
    std::fs::create_dir(&dir).unwrap();
    Some(Scratch(dir))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// What `sh` in the cgroup (`procs` is the file to join by) says opening each node.
fn open_in(procs: &Path, nodes: &[&Path]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(r#"echo $$ > "$1" && exec 2>&1 && : < "$2" && echo opened"#)
                .arg("sh")
                .arg(procs)
                .arg(n)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
        .collect()
}

/// A block node of a major no driver has (240, a local/experimental number): the open of
/// an allowed one gets ENXIO ("No such device or address") from the block layer, a denied
/// one EPERM before it.
fn nodes(dir: &Path) -> (std::path::PathBuf, tempfile::TempDir) {
    let tmp = tempfile::Builder::new()
        .prefix("devices-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let node = tmp.path().join("disk");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(240, 250),
    )
    .unwrap();
    let _ = dir;
    (node, tmp)
}

#[test]
fn a_device_program_denies_a_block_node_to_a_process_in_its_cgroup() {
    let Some(cg) = scratch("/sys/fs/cgroup/unified") else {
        return;
    };
    let (disk, _tmp) = nodes(&cg.0);
    let dir = std::fs::File::open(&cg.0).unwrap();
    let before = open_in(&cg.0.join("cgroup.procs"), &[&disk]);
    assert!(before[0].contains("No such device"), "{before:?}");

    let cri = Policy::of_spec(&[rule(false, "a", -1, -1, "rwm")], &[]).unwrap();
    let prog = bpf::program_for(&cri).unwrap();
    bpf::install(dir.as_fd(), &prog).unwrap();
    let after = open_in(&cg.0.join("cgroup.procs"), &[&disk, Path::new("/dev/null")]);
    assert!(after[0].contains("Operation not permitted"), "{after:?}");
    assert_eq!(after[1], "opened");
    assert_eq!(
        bpf::attached_names(dir.as_fd()).unwrap(),
        vec![Some(bpf::NAME.to_string())]
    );
}

#[test]
fn installing_again_replaces_and_never_stacks() {
    let Some(cg) = scratch("/sys/fs/cgroup/unified") else {
        return;
    };
    let dir = std::fs::File::open(&cg.0).unwrap();
    // A foreign program (as systemd's would be) that allows everything.
    let all = bpf::program_for(&Policy::of_spec(&[rule(true, "a", -1, -1, "rwm")], &[]).unwrap())
        .unwrap();
    bpf::install(dir.as_fd(), &all).unwrap();
    for i in 0..70 {
        let allow = [rule(false, "a", -1, -1, "rwm"), rule(true, "c", 7, i, "r")];
        let p = bpf::program_for(&Policy::of_spec(&allow, &[]).unwrap()).unwrap();
        bpf::install(dir.as_fd(), &p).unwrap();
        assert_eq!(
            bpf::attached(dir.as_fd()).unwrap(),
            vec![p.id()],
            "install {i}"
        );
    }
    // Two attached (a crashed install between attach and detach): the next leaves one.
    let cri = bpf::program_for(&Policy::deny_all()).unwrap();
    bpf::install(dir.as_fd(), &cri).unwrap();
    bpf::install(dir.as_fd(), &cri).unwrap();
    assert_eq!(bpf::attached(dir.as_fd()).unwrap(), vec![cri.id()]);
}

#[test]
fn v1_rules_are_written_and_read_back() {
    let Some(cg) = scratch("/sys/fs/cgroup/devices") else {
        return;
    };
    let (disk, _tmp) = nodes(&cg.0);
    let p = Policy::of_spec(&ctr_defaults(), &[]).unwrap();
    apply_v1(&cg.0, &p).unwrap();
    let list = std::fs::read_to_string(cg.0.join("devices.list")).unwrap();
    assert_eq!(list.lines().collect::<Vec<_>>(), RUNCS_TWELVE);
    let got = open_in(&cg.0.join("tasks"), &[&disk, Path::new("/dev/null")]);
    assert!(got[0].contains("Operation not permitted"), "{got:?}");
    assert_eq!(got[1], "opened");
}

use std::os::fd::AsFd;
