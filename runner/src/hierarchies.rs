//! The node's cgroup hierarchies, as the runner finds them once at start, and a container
//! process joining its cgroup.
//!
//! Joining on cgroup v1: the process is single-threaded, so it moves its only thread by
//! writing `0` to each hierarchy's `tasks`. Moving a whole process through `cgroup.procs`
//! takes the kernel's global threadgroup lock, whose writer waits for an RCU grace period
//! (10-20 ms per start measured here); a thread moving itself skips it, and a
//! single-threaded process whose thread moved has moved. On cgroup v2 the shim has the
//! runner fork the process straight into its cgroup (`clone3(CLONE_INTO_CGROUP)`), so it
//! never moves at all; [`Hierarchies::join_self`] there writes `cgroup.procs`.

use std::io::Write;
use std::path::PathBuf;

/// Super options of a v1 cgroup mount that are not controllers.
const NOT_CONTROLLERS: &[&str] = &[
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
    "none",
];

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/memory`.
    pub mount_point: PathBuf,
    /// The cgroup its mount shows as its root (`/` on a host).
    pub mount_root: String,
    /// Its controllers as `/proc/<pid>/cgroup` names them (`cpu`, `name=systemd`, or empty
    /// for the v2 hierarchy).
    pub controllers: String,
    pub v2: bool,
}

/// Every cgroup hierarchy mounted in the runner's mount namespace.
#[derive(Debug, Clone, Default)]
pub struct Hierarchies(pub Vec<Hierarchy>);

impl Hierarchies {
    /// Reads `/proc/self/mountinfo`.
    pub fn of_self() -> Hierarchies {
        Hierarchies::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    /// Parses mountinfo text: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [TAGS...] - FSTYPE SOURCE SUPER_OPTS`.
    pub fn parse(mountinfo: &str) -> Hierarchies {
        let mut out = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(root), Some(mount_point), Some(fstype)) =
                (left.get(3), left.get(4), right.first())
            else {
                continue;
            };
            let v2 = match *fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => continue,
            };
            let controllers = if v2 {
                String::new()
            } else {
                // The super options name the controllers (and `name=...` for a named
                // hierarchy) among the mount's own options.
                right
                    .get(2)
                    .unwrap_or(&"")
                    .split(',')
                    .filter(|o| !NOT_CONTROLLERS.contains(o) && !o.starts_with("release_agent="))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            out.push(Hierarchy {
                mount_point: PathBuf::from(unescape(mount_point)),
                mount_root: unescape(root),
                controllers,
                v2,
            });
        }
        Hierarchies(out)
    }

    /// Whether the node runs cgroup v2 alone (no v1 hierarchy mounted).
    pub fn unified_only(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(|h| h.v2)
    }

    /// Moves the calling process, which must be single-threaded, into the cgroup at `path`
    /// (relative to each hierarchy's root) in every hierarchy where the shim created it.
    pub fn join_self(&self, path: &str) -> std::io::Result<()> {
        let rel = path.trim_start_matches('/');
        let mut joined = 0;
        for h in &self.0 {
            let dir = h.mount_point.join(rel);
            if !dir.is_dir() {
                continue;
            }
            let file = if h.v2 { "cgroup.procs" } else { "tasks" };
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(file))
                .and_then(|mut f| f.write_all(b"0"))
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display()))
                })?;
            joined += 1;
        }
        if joined == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no hierarchy has it",
            ));
        }
        Ok(())
    }

    /// The directory of the calling process's cgroup in hierarchy `h`, from
    /// `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines).
    pub fn own_dir(h: &Hierarchy, proc_self_cgroup: &str) -> Option<PathBuf> {
        let path = proc_self_cgroup.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let same = if h.v2 {
                controllers.is_empty()
            } else {
                sorted(controllers) == sorted(&h.controllers)
            };
            same.then_some(path)
        })?;
        let rel = path
            .strip_prefix(h.mount_root.as_str())
            .unwrap_or(path)
            .trim_start_matches('/');
        Some(h.mount_point.join(rel))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Hierarchy> {
        self.0.iter()
    }
}

fn sorted(list: &str) -> Vec<&str> {
    let mut v: Vec<&str> = list.split(',').filter(|s| !s.is_empty()).collect();
    v.sort_unstable();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The name a hierarchy is mounted under inside `/sys/fs/cgroup` (`memory`, `cpu,cpuacct`,
/// `unified`, ...).
pub fn mount_name(h: &Hierarchy) -> &str {
    h.mount_point
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /tmp/a\\040b rw - tmpfs tmpfs rw
";

    #[test]
    fn hierarchies_come_from_mountinfo_with_their_controllers() {
        let h = Hierarchies::parse(MOUNTINFO);
        let got: Vec<(&str, &str, bool)> = h
            .iter()
            .map(|h| (mount_name(h), h.controllers.as_str(), h.v2))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cpu", "cpu", false),
                ("memory", "memory", false),
                ("systemd", "name=systemd", false),
                ("unified", "", true)
            ]
        );
        assert!(!h.unified_only());
        let v2 = Hierarchies::parse("41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert!(v2.unified_only());
    }

    #[test]
    fn a_process_finds_its_own_cgroup_directory_in_each_hierarchy() {
        let h = Hierarchies::parse(MOUNTINFO);
        let cg = "12:memory:/ns/c1\n4:cpu:/ns/c1\n1:name=systemd:/ns/c1\n0::/ns/c1\n";
        let dirs: Vec<_> = h.iter().map(|x| Hierarchies::own_dir(x, cg)).collect();
        assert_eq!(
            dirs,
            vec![
                Some(PathBuf::from("/sys/fs/cgroup/cpu/ns/c1")),
                Some(PathBuf::from("/sys/fs/cgroup/memory/ns/c1")),
                Some(PathBuf::from("/sys/fs/cgroup/systemd/ns/c1")),
                Some(PathBuf::from("/sys/fs/cgroup/unified/ns/c1")),
            ]
        );
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape("/x\\"), "/x\\");
    }
}
