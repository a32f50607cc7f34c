//! Which device nodes a container may open, read, write or make: the spec's
//! `linux.resources.devices`, reduced the way runc reduces them, and enforced by the
//! container's cgroup (v1: the devices controller's allowlist; v2: an eBPF device program,
//! [`bpf`]; a systemd scope: both its properties and our program).
//!
//! Why reduce at all instead of replaying the list: the OCI list is ordered, a later rule
//! overriding an earlier one, and its access letters can be split across rules
//! (`allow c 1:3 rw; deny c 1:3 w`). Replaying it backwards in a program (youki's way)
//! allows an `O_RDWR` open there that runc and the v1 kernel deny. So, as runc's emulator
//! does, the list becomes one default (allow or deny) and exceptions that all have the other
//! action; v1 and v2 then give the same answer for every access.
//!
//! The policy is runc's: deny everything, apply the spec's rules in order, then runc's fixed
//! list of allowed devices (`/dev/null`, `/dev/zero`, ... and `m` on every node, which the
//! container process needs to make its `/dev`), leaving out those for a path the spec's
//! `linux.devices` names. CRI sends only a deny-all: without the appended list, no CRI
//! container would have `/dev/null`.

pub mod bpf;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

/// A device class in a rule (`a` is not a class but a reset of the policy).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Class {
    Block,
    Char,
}

impl Class {
    fn letter(self) -> char {
        match self {
            Class::Block => 'b',
            Class::Char => 'c',
        }
    }

    /// The name systemd's `DeviceAllow` gives a class (`char-*`, `/dev/block/7:0`).
    fn systemd(self) -> &'static str {
        match self {
            Class::Block => "block",
            Class::Char => "char",
        }
    }
}

/// A set of the access letters `r`, `w`, `m`, as the kernel's BPF_DEVCG_ACC_* bits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const RWM: Access = Access(7);

    /// `"rwm"` or any subset of it, in any order; an empty string or another letter is
    /// refused, as runc refuses it.
    pub fn parse(s: &str) -> Result<Access, String> {
        if s.is_empty() {
            return Err("the access is empty".into());
        }
        s.chars().try_fold(Access(0), |a, c| match c {
            'r' => Ok(Access(a.0 | Self::READ.0)),
            'w' => Ok(Access(a.0 | Self::WRITE.0)),
            'm' => Ok(Access(a.0 | Self::MKNOD.0)),
            other => Err(format!("unknown access letter {other:?} in {s:?}")),
        })
    }

    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every letter of `wanted` is in `self`: one check, one rule, as the kernel
    /// matches an access (an `O_RDWR` open needs one exception with both `r` and `w`).
    pub fn covers(self, wanted: Access) -> bool {
        self.0 & wanted.0 == wanted.0
    }

    fn union(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }

    fn minus(self, other: Access) -> Access {
        Access(self.0 & !other.0)
    }

    fn intersects(self, other: Access) -> bool {
        self.0 & other.0 != 0
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, letter) in [(Self::READ, 'r'), (Self::WRITE, 'w'), (Self::MKNOD, 'm')] {
            if self.covers(bit) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// What an exception matches; `None` is the wildcard (`*`; OCI's -1 or an absent number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Match {
    pub class: Class,
    pub major: Option<u32>,
    pub minor: Option<u32>,
}

impl Match {
    /// Ordered as runc lists its rules: by major, then minor, the wildcard first, then class.
    fn key(&self) -> (i64, i64, Class) {
        let n = |v: Option<u32>| v.map_or(-1, i64::from);
        (n(self.major), n(self.minor), self.class)
    }

    fn matches(&self, class: Class, major: u32, minor: u32) -> bool {
        self.class == class
            && self.major.is_none_or(|m| m == major)
            && self.minor.is_none_or(|m| m == minor)
    }
}

impl Ord for Match {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Match {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Match {
    /// The v1 syntax: `c 1:3`, `b *:*`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
        write!(
            f,
            "{} {}:{}",
            self.class.letter(),
            n(self.major),
            n(self.minor)
        )
    }
}

/// A rule that cannot be enforced as written, with the field that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: String,
    pub message: String,
}

/// One rule of the spec's list, checked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rule {
    pub allow: bool,
    /// `None` for type `a`, whose numbers and access the kernel and runc ignore.
    pub target: Option<Match>,
    pub access: Access,
}

impl Rule {
    /// Rule `i` of `linux.resources.devices`; a bad one is refused naming its index.
    pub fn from_oci(i: usize, r: &LinuxDeviceCgroup) -> Result<Rule, RuleError> {
        let field = |message: String| RuleError {
            field: format!("linux.resources.devices[{i}]"),
            message,
        };
        let number = |v: Option<i64>, what: &str| -> Result<Option<u32>, RuleError> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) => u32::try_from(n)
                    .map(Some)
                    .map_err(|_| field(format!("{what} {n} is not a device number or -1"))),
            }
        };
        let class = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(Class::Block),
            LinuxDeviceType::C => Some(Class::Char),
            other => {
                return Err(field(format!(
                    "type {:?} is a node type, not one a cgroup rule takes (a, b or c)",
                    other.as_str()
                )))
            }
        };
        // runc refuses an absent access as it refuses an empty one.
        let access = Access::parse(r.access().as_deref().unwrap_or("")).map_err(field)?;
        let (major, minor) = (number(r.major(), "major")?, number(r.minor(), "minor")?);
        Ok(Rule {
            allow: r.allow(),
            target: class.map(|class| Match {
                class,
                major,
                minor,
            }),
            access,
        })
    }

    const fn allow(class: Class, major: Option<u32>, minor: Option<u32>, access: Access) -> Rule {
        Rule {
            allow: true,
            target: Some(Match {
                class,
                major,
                minor,
            }),
            access,
        }
    }
}

/// runc's `AllowedDevices`, appended to every container's rules, with the container path
/// of those that have one: a rule whose path the spec's `linux.devices` names is left out
/// (the spec then says what that node may do).
const RUNC_DEFAULTS: &[(Option<&str>, Rule)] = &[
    // Making any node: the container's own `/dev` is made inside its cgroup.
    (None, Rule::allow(Class::Char, None, None, Access::MKNOD)),
    (None, Rule::allow(Class::Block, None, None, Access::MKNOD)),
    (
        Some("/dev/null"),
        Rule::allow(Class::Char, Some(1), Some(3), Access::RWM),
    ),
    (
        Some("/dev/random"),
        Rule::allow(Class::Char, Some(1), Some(8), Access::RWM),
    ),
    (
        Some("/dev/full"),
        Rule::allow(Class::Char, Some(1), Some(7), Access::RWM),
    ),
    (
        Some("/dev/tty"),
        Rule::allow(Class::Char, Some(5), Some(0), Access::RWM),
    ),
    (
        Some("/dev/zero"),
        Rule::allow(Class::Char, Some(1), Some(5), Access::RWM),
    ),
    (
        Some("/dev/urandom"),
        Rule::allow(Class::Char, Some(1), Some(9), Access::RWM),
    ),
    // /dev/pts/*, /dev/ptmx, and tun, which runc keeps allowing for compatibility.
    (None, Rule::allow(Class::Char, Some(136), None, Access::RWM)),
    (
        None,
        Rule::allow(Class::Char, Some(5), Some(2), Access::RWM),
    ),
    (
        None,
        Rule::allow(Class::Char, Some(10), Some(200), Access::RWM),
    ),
];

/// A devices cgroup's state: a default and exceptions that all have the other action
/// (runc's emulator). Equal policies enforce the same thing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Policy {
    default_allow: bool,
    exceptions: BTreeMap<Match, Access>,
}

impl Policy {
    pub fn deny_all() -> Policy {
        Policy {
            default_allow: false,
            exceptions: BTreeMap::new(),
        }
    }

    /// A container's policy: deny-all, the spec's `rules` in order, then runc's defaults
    /// except those for a path in `node_paths` (the spec's `linux.devices`).
    pub fn of_spec(
        rules: &[LinuxDeviceCgroup],
        node_paths: &[String],
    ) -> Result<Policy, RuleError> {
        let mut p = Policy::deny_all();
        for (i, r) in rules.iter().enumerate() {
            let rule = Rule::from_oci(i, r)?;
            p.apply(&rule).map_err(|message| RuleError {
                field: format!("linux.resources.devices[{i}]"),
                message,
            })?;
        }
        for (path, rule) in RUNC_DEFAULTS {
            if path.is_some_and(|path| node_paths.iter().any(|n| n == path)) {
                continue;
            }
            p.apply(rule).map_err(|e| RuleError {
                field: "linux.resources.devices".into(),
                message: format!("with runc's default rules appended: {e}"),
            })?;
        }
        Ok(p)
    }

    /// Applies one rule as the v1 kernel would, except that removing access which a wider
    /// exception still grants is refused ("a hole in a wildcard"): the kernel ignores that
    /// removal silently, which would leave the access allowed while the spec says denied.
    pub fn apply(&mut self, rule: &Rule) -> Result<(), String> {
        let Some(target) = rule.target else {
            *self = Policy {
                default_allow: rule.allow,
                exceptions: BTreeMap::new(),
            };
            return Ok(());
        };
        if rule.allow != self.default_allow {
            let e = self.exceptions.entry(target).or_default();
            *e = e.union(rule.access);
            return Ok(());
        }
        for wider in [
            Match {
                major: None,
                ..target
            },
            Match {
                minor: None,
                ..target
            },
            Match {
                major: None,
                minor: None,
                ..target
            },
        ] {
            if wider == target {
                continue;
            }
            if let Some(a) = self
                .exceptions
                .get(&wider)
                .filter(|a| a.intersects(rule.access))
            {
                return Err(format!(
                    "{} {target} {} would punch a hole in the wider rule {wider} {a}, which \
                     the devices cgroup cannot express",
                    if rule.allow { "allow" } else { "deny" },
                    rule.access,
                ));
            }
        }
        if let Some(a) = self.exceptions.get_mut(&target) {
            *a = a.minus(rule.access);
            if a.is_empty() {
                self.exceptions.remove(&target);
            }
        }
        Ok(())
    }

    pub fn default_allow(&self) -> bool {
        self.default_allow
    }

    /// The exceptions, in runc's order, each with the action opposite the default.
    pub fn exceptions(&self) -> impl Iterator<Item = (&Match, &Access)> {
        self.exceptions.iter()
    }

    pub fn is_allow_all(&self) -> bool {
        self.default_allow && self.exceptions.is_empty()
    }

    /// Whether one access check passes: the reference the program is tested against.
    pub fn allows(&self, class: Class, major: u32, minor: u32, wanted: Access) -> bool {
        let excepted = self
            .exceptions
            .iter()
            .any(|(m, a)| m.matches(class, major, minor) && a.covers(wanted));
        excepted != self.default_allow
    }

    /// A v1 `devices.list` as a policy: `a *:* rwm` is allow-all, anything else the list
    /// of allowed exceptions.
    pub fn from_v1_list(text: &str) -> Result<Policy, String> {
        let mut p = Policy::deny_all();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let bad = || format!("devices.list line {line:?}");
            let mut f = line.split_whitespace();
            let (class, numbers, access) = (
                f.next().ok_or_else(bad)?,
                f.next().ok_or_else(bad)?,
                f.next().ok_or_else(bad)?,
            );
            let access = Access::parse(access).map_err(|_| bad())?;
            let class = match class {
                "a" => {
                    p.default_allow = true;
                    continue;
                }
                "b" => Class::Block,
                "c" => Class::Char,
                _ => return Err(bad()),
            };
            let (major, minor) = numbers.split_once(':').ok_or_else(bad)?;
            let n = |s: &str| match s {
                "*" => Ok(None),
                s => s.parse::<u32>().map(Some).map_err(|_| bad()),
            };
            p.exceptions.insert(
                Match {
                    class,
                    major: n(major)?,
                    minor: n(minor)?,
                },
                access,
            );
        }
        if p.default_allow {
            p.exceptions.clear();
        }
        Ok(p)
    }

    /// The writes that take a fresh v1 devices cgroup to this policy: the reset (`a` to
    /// `devices.deny` or `devices.allow`), then each exception to the other file.
    pub fn v1_writes(&self) -> Vec<(&'static str, String)> {
        let (reset, except) = if self.default_allow {
            ("devices.allow", "devices.deny")
        } else {
            ("devices.deny", "devices.allow")
        };
        std::iter::once((reset, "a".to_string()))
            .chain(
                self.exceptions
                    .iter()
                    .map(|(m, a)| (except, format!("{m} {a}"))),
            )
            .collect()
    }

    /// systemd's `DevicePolicy` and `DeviceAllow` for this policy, as runc sends them, so
    /// that a daemon-reload (which rebuilds systemd's own device program from them) keeps
    /// the container's devices what they are. `groups` is `/proc/devices`' text: a
    /// `c 136:*` rule is `char-pts` for every systemd version. What systemd cannot say (a
    /// `*:minor` rule, a major with no group, a deny list) is left out, which after a
    /// reload makes the container's devices narrower, never wider: our program stays
    /// attached and both must allow an access.
    pub fn systemd_allow(&self, groups: &str) -> (&'static str, Vec<(String, String)>) {
        if self.is_allow_all() {
            return ("auto", Vec::new());
        }
        if self.default_allow {
            log::warn!("a device deny list cannot be said to systemd: its policy is strict");
            return ("strict", Vec::new());
        }
        let allow = self
            .exceptions
            .iter()
            .filter_map(|(m, a)| {
                let path = match (m.major, m.minor) {
                    (Some(major), Some(minor)) => {
                        format!("/dev/{}/{major}:{minor}", m.class.systemd())
                    }
                    (None, None) => format!("{}-*", m.class.systemd()),
                    (Some(major), None) => {
                        let name = group(groups, m.class, major)?;
                        format!("{}-{name}", m.class.systemd())
                    }
                    (None, Some(_)) => return None,
                };
                Some((path, a.to_string()))
            })
            .collect();
        ("strict", allow)
    }
}

/// The name `/proc/devices` gives a major of a class.
fn group(proc_devices: &str, class: Class, major: u32) -> Option<String> {
    let header = match class {
        Class::Char => "Character devices:",
        Class::Block => "Block devices:",
    };
    let mut section = false;
    for line in proc_devices.lines() {
        if line.ends_with("devices:") {
            section = line == header;
            continue;
        }
        let mut f = line.split_whitespace();
        if let (true, Some(n), Some(name)) = (section, f.next(), f.next()) {
            if n.parse() == Ok(major) {
                return Some(name.to_string());
            }
        }
    }
    None
}

/// Writes `policy` to the v1 devices cgroup at `dir` and reads it back: a list that is not
/// the policy afterwards (a parent that allows less, a kernel that ignored a write) fails.
pub fn apply_v1(dir: &Path, policy: &Policy) -> Result<(), String> {
    for (file, line) in policy.v1_writes() {
        let path = dir.join(file);
        std::fs::write(&path, &line)
            .map_err(|e| format!("write {line:?} to {}: {e}", path.display()))?;
    }
    let list = dir.join("devices.list");
    let text = std::fs::read_to_string(&list).map_err(|e| format!("{}: {e}", list.display()))?;
    let now = Policy::from_v1_list(&text)?;
    // A deny list reads back as `a *:* rwm` alone: the kernel does not list its exceptions.
    let expected = if policy.default_allow {
        Policy {
            default_allow: true,
            exceptions: BTreeMap::new(),
        }
    } else {
        policy.clone()
    };
    if now != expected {
        return Err(format!(
            "{} reads {:?} after the writes, not the container's policy",
            list.display(),
            text.lines().collect::<Vec<_>>()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
