//! A container's seccomp profile (`linux.seccomp`), compiled to the BPF program its process
//! installs just before the module's first instruction.
//!
//! Compiling a profile with libseccomp takes milliseconds; every container of a node
//! asks for one of a handful of profiles (containerd's default, Kubernetes'
//! `RuntimeDefault`), so the shim compiles each distinct profile once and keeps the program
//! ([`Compiled`]). The container process only makes the `seccomp(2)` call, with no library.
//!
//! A profile of more than [`TREE_ABOVE`] system call names (containerd's default, Kubernetes'
//! `RuntimeDefault`) becomes a binary search over syscall numbers (libseccomp's optimisation
//! level 2), not libseccomp's default linear list, as runc builds it: on attach the kernel
//! runs the filter once per syscall number and architecture to build its allow-cache, which
//! for containerd's default profile took about 0.9 ms linear against 0.3 ms as a tree here,
//! and every syscall the cache does not cover walks a few comparisons instead of hundreds.
//! Below that size the tree buys nothing (and libseccomp before 2.5.4 built a wrong tree of
//! no rules); a libseccomp without the attribute (before 2.5) builds the linear list.
//!
//! The translation follows the OCI runtime spec as runc implements it: the default action
//! and its errno (`defaultErrnoRet`, the default action's only: an errno rule without its
//! own returns EPERM), the architectures, the filter flags, and each rule's action, errno
//! and argument conditions (they AND together in one rule, unless two of them name the
//! same argument: then each is a rule of its own, any of which matches). A syscall name this
//! libseccomp does not know is skipped, as runc does; a rule whose action is the default
//! adds nothing. Seccomp notification is refused by the spec translation. Where the default
//! action denies, a system call newer than every one the profile names gets ENOSYS, as
//! under runc ([`enosys_stub`]).

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use wasmedge_aot_protocol::control::Seccomp;

/// Most distinct profiles kept compiled.
const MAX_PROFILES: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("linux.seccomp: {0}")]
pub struct SeccompError(String);

fn err(what: impl std::fmt::Display) -> SeccompError {
    SeccompError(what.to_string())
}

/// The programs of the profiles this shim has compiled, by the profile's digest.
#[derive(Debug, Default)]
pub struct Compiled {
    programs: Mutex<HashMap<[u8; 32], Arc<Seccomp>>>,
}

impl Compiled {
    /// The program of `profile`, compiled the first time.
    pub fn program(&self, profile: &LinuxSeccomp) -> Result<Arc<Seccomp>, SeccompError> {
        let canonical = serde_json::to_vec(profile).map_err(err)?;
        let digest = *blake3::hash(&canonical).as_bytes();
        if let Some(p) = self.lock().get(&digest) {
            return Ok(p.clone());
        }
        let program = Arc::new(compile(profile)?);
        let mut programs = self.lock();
        if programs.len() >= MAX_PROFILES {
            programs.clear();
        }
        programs.insert(digest, program.clone());
        Ok(program)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Seccomp>>> {
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One action of the profile. An errno action without its errno returns EPERM, as the OCI
/// spec says and runc does: `defaultErrnoRet` is the default action's, never a rule's.
fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    const EPERM: u32 = libc::EPERM as u32;
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(EPERM) as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(EPERM) as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(err(
                "SCMP_ACT_NOTIFY: seccomp notification is not supported by this runtime",
            ))
        }
    })
}

/// One argument condition. For `SCMP_CMP_MASKED_EQ` the OCI spec's `value` is the mask and
/// `valueTwo` the value the masked argument must equal, as runc passes them to libseccomp
/// (containerd's default profile allows `clone` only where `flags & CLONE_NEW* == 0`).
fn condition(a: &LinuxSeccompArg) -> ScmpArgCompare {
    let (op, datum) = match a.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, a.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, a.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, a.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, a.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(a.value()),
            a.value_two().unwrap_or(0),
        ),
    };
    ScmpArgCompare::new(a.index() as u32, op, datum)
}

/// libseccomp's `SCMP_FLTATR_CTL_OPTIMIZE` levels: rules in priority order, or a binary tree.
const LINEAR: u32 = 1;
const TREE: u32 = 2;
/// More system call names than this make the program a tree (runc's threshold).
const TREE_ABOVE: usize = 32;

/// Compiles one profile into its BPF program.
pub fn compile(profile: &LinuxSeccomp) -> Result<Seccomp, SeccompError> {
    let names: usize = profile
        .syscalls()
        .iter()
        .flatten()
        .map(|r| r.names().len())
        .sum();
    compile_as(profile, if names > TREE_ABOVE { TREE } else { LINEAR })
}

fn compile_as(profile: &LinuxSeccomp, layout: u32) -> Result<Seccomp, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    // The filter is installed by the container process itself, after no_new_privs or while
    // it holds CAP_SYS_ADMIN; libseccomp must not set no_new_privs on its own.
    ctx.set_ctl_nnp(false).map_err(err)?;
    if layout != LINEAR {
        // Not fatal: a libseccomp before 2.5 has no such attribute, and builds the list.
        let _ = ctx.set_ctl_optimize(layout);
    }
    let mut arches = vec![ScmpArch::native()];
    for arch in profile.architectures().iter().flatten() {
        let name = serde_json::to_value(arch)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let arch =
            ScmpArch::from_str(&name).map_err(|e| err(format!("architecture {name}: {e}")))?;
        if !ctx.is_arch_present(arch).map_err(err)? {
            ctx.add_arch(arch)
                .map_err(|e| err(format!("architecture {name}: {e}")))?;
        }
        if !arches.contains(&arch) {
            arches.push(arch);
        }
    }
    let mut flags = 0u32;
    for flag in profile.flags().iter().flatten() {
        match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => {
                flags |= libc::SECCOMP_FILTER_FLAG_LOG as u32
            }
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                flags |= libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW as u32
            }
            // One thread: synchronising threads is what installing on it already does.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {}
            other => {
                return Err(err(format!(
                    "flag {other:?} is not supported by this runtime"
                )))
            }
        }
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let args = rule.args().clone().unwrap_or_default();
        let mut per_index = [0usize; 6];
        for a in &args {
            if a.index() >= per_index.len() {
                return Err(err(format!(
                    "syscall argument index {} is out of range",
                    a.index()
                )));
            }
            per_index[a.index()] += 1;
        }
        let conditions: Vec<ScmpArgCompare> = args.iter().map(condition).collect();
        // As runc: the conditions AND together in one rule, unless two name the same
        // argument; then each condition is a rule of its own (any one of them matches).
        let one_each = per_index.iter().any(|&n| n > 1);
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let add = |ctx: &mut ScmpFilterContext, conds: &[ScmpArgCompare]| {
                ctx.add_rule_conditional(act, syscall, conds)
                    .map(|_| ())
                    .map_err(|e| err(format!("rule for {name}: {e}")))
            };
            if one_each {
                for c in &conditions {
                    add(&mut ctx, std::slice::from_ref(c))?;
                }
            } else {
                add(&mut ctx, &conditions)?;
            }
        }
    }
    let mut program = export(&ctx)?;
    if !matches!(
        default,
        ScmpAction::Allow | ScmpAction::Log | ScmpAction::Trace(_)
    ) {
        let names = profile
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|r| r.names().iter().map(String::as_str));
        let mut stub = enosys_stub(&newest_syscalls(&arches, names));
        stub.append(&mut program);
        program = stub;
    }
    Ok(Seccomp { program, flags })
}

/// `AUDIT_ARCH_*` of the architectures whose newer system calls get ENOSYS (the ones this
/// runtime's nodes run, and their compat ABIs); x32 shares x86_64's and sets bit 30 of the
/// number.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
const X32_BIT: u32 = 1 << 30;

/// For each architecture (by `AUDIT_ARCH_*`, x32 apart), the largest system call number the
/// profile names, for any action.
#[derive(Debug, Default)]
struct Newest {
    by_arch: Vec<(u32, u32)>,
    x86_64: Option<u32>,
    x32: Option<u32>,
}

fn newest_syscalls<'a>(
    arches: &[ScmpArch],
    names: impl Iterator<Item = &'a str> + Clone,
) -> Newest {
    let mut newest = Newest::default();
    for &arch in arches {
        let largest = names
            .clone()
            .filter_map(|n| ScmpSyscall::from_name_by_arch(n, arch).ok())
            .map(|s| s.as_raw_syscall())
            .filter(|&nr| nr >= 0)
            .max()
            .map(|nr| nr as u32);
        // As runc: an architecture whose largest is 0 (or none) gets no section, so that a
        // profile naming only `read` keeps its default action (a kill, say) for the rest.
        let Some(largest) = largest.filter(|&nr| nr != 0) else {
            continue;
        };
        match arch {
            ScmpArch::X8664 => newest.x86_64 = Some(largest),
            ScmpArch::X32 => newest.x32 = Some(largest),
            ScmpArch::X86 => newest.by_arch.push((AUDIT_ARCH_I386, largest)),
            ScmpArch::Aarch64 => newest.by_arch.push((AUDIT_ARCH_AARCH64, largest)),
            ScmpArch::Arm => newest.by_arch.push((AUDIT_ARCH_ARM, largest)),
            // Other architectures: the profile's default action, as before.
            _ => {}
        }
    }
    newest
}

/// runc's answer to a system call newer than every one the profile names: ENOSYS, not the
/// default action, so that a libc tries the older call it falls back to (a profile written
/// before `clone3` or `faccessat2` existed must not make them fail with EPERM). A program
/// that runs before the profile's: per architecture, `nr > newest` returns ENOSYS, anything
/// else goes on to the profile's program, which loads what it needs again.
fn enosys_stub(newest: &Newest) -> Vec<u64> {
    const LD_ABS: u16 = 0x20;
    const JA: u16 = 0x05;
    const JEQ: u16 = 0x15;
    const JGT: u16 = 0x25;
    const JSET: u16 = 0x45;
    const RET: u16 = 0x06;
    const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
    // Instructions as (code, jt, jf, k); a `None` k is a jump to the profile's program.
    type Insn = (u16, u8, u8, Option<u32>);
    let mut out: Vec<Insn> = vec![(LD_ABS, 0, 0, Some(4))];
    // One section per architecture: `ld nr; [x32 test]; jgt newest; ret ENOSYS; ja profile`.
    let mut sections: Vec<(u32, Vec<Insn>)> = Vec::new();
    let limit = |newest: u32| -> [Insn; 3] {
        [
            (JGT, 0, 1, Some(newest)),
            (RET, 0, 0, Some(ENOSYS)),
            (JA, 0, 0, None),
        ]
    };
    // x86_64 and x32 share an audit arch; bit 30 of the number tells them apart. An ABI the
    // profile has no newest for goes straight on to the profile's program.
    if newest.x86_64.is_some() || newest.x32.is_some() {
        let part = |n: Option<u32>| n.map_or(vec![(JA, 0, 0, None)], |n| limit(n).to_vec());
        let (native, x32) = (part(newest.x86_64), part(newest.x32));
        let mut s = vec![
            (LD_ABS, 0, 0, Some(0)),
            (JSET, native.len() as u8, 0, Some(X32_BIT)),
        ];
        s.extend(native);
        s.extend(x32);
        sections.push((AUDIT_ARCH_X86_64, s));
    }
    for &(arch, n) in &newest.by_arch {
        let mut s = vec![(LD_ABS, 0, 0, Some(0))];
        s.extend(limit(n));
        sections.push((arch, s));
    }
    // The dispatch: `jeq arch, 0, 1; ja section` per architecture, then `ja profile`.
    let dispatch_len = 1 + 2 * sections.len() + 1;
    let mut at = dispatch_len;
    for (arch, s) in &sections {
        let from = out.len() + 2;
        out.push((JEQ, 0, 1, Some(*arch)));
        out.push((JA, 0, 0, Some((at - from) as u32)));
        at += s.len();
    }
    out.push((JA, 0, 0, None));
    for (_, s) in sections {
        out.extend(s);
    }
    let len = out.len();
    out.iter()
        .enumerate()
        .map(|(pc, &(code, jt, jf, k))| {
            Seccomp::pack(code, jt, jf, k.unwrap_or((len - pc - 1) as u32))
        })
        .collect()
}

/// The filter's BPF program, one `struct sock_filter` (8 bytes) per instruction.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u64>, SeccompError> {
    let fd =
        rustix::fs::memfd_create("seccomp-bpf", rustix::fs::MemfdFlags::CLOEXEC).map_err(err)?;
    let mut file = std::fs::File::from(fd);
    ctx.export_bpf(file.as_fd()).map_err(err)?;
    let mut bytes = Vec::new();
    file.rewind().map_err(err)?;
    file.read_to_end(&mut bytes).map_err(err)?;
    if bytes.len() % 8 != 0 || bytes.is_empty() {
        return Err(err(format!(
            "libseccomp exported {} bytes of BPF",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|i| {
            Seccomp::pack(
                u16::from_ne_bytes([i[0], i[1]]),
                i[2],
                i[3],
                u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_profile_compiles_once_and_its_program_is_reused() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["mkdirat","mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        );
        let compiled = Compiled::default();
        let a = compiled.program(&p).unwrap();
        let b = compiled.program(&p).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // The first instruction loads the architecture from seccomp_data (offset 4).
        let (code, _, _, k) = a.instructions().next().unwrap();
        assert_eq!((code, k), (0x20, 4), "{:?}", a.program);
        // ERRNO(1) appears as a return value 0x00050001.
        assert!(a
            .instructions()
            .any(|(code, _, _, k)| code == 0x06 && k == 0x0005_0001));
    }

    #[test]
    fn notification_and_bad_indexes_are_refused_with_the_field() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(compile(&p)
            .unwrap_err()
            .to_string()
            .contains("SCMP_ACT_NOTIFY"));
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(compile(&p).unwrap_err().to_string().contains("index 9"));
    }

    /// Runs a program over one `seccomp_data` (x86_64, `nr`, `args`): the action it returns
    /// and the instructions it executed. Only the opcodes libseccomp emits are known.
    fn run(program: &Seccomp, nr: u32, args: [u64; 6]) -> (u32, usize) {
        run_as(program, AUDIT_ARCH_X86_64, nr, args)
    }

    fn run_as(program: &Seccomp, arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let insns: Vec<_> = program.instructions().collect();
        let word = |off: u32| -> u32 {
            match off {
                0 => nr,
                4 => arch,
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
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let (code, jt, jf, k) = insns[pc];
            steps += 1;
            let jump = |taken: bool| pc + 1 + usize::from(if taken { jt } else { jf });
            pc = match code {
                0x20 => {
                    a = word(k);
                    pc + 1
                }
                0x54 => {
                    a &= k;
                    pc + 1
                }
                0x05 => pc + 1 + k as usize,
                0x15 => jump(a == k),
                0x25 => jump(a > k),
                0x35 => jump(a >= k),
                0x45 => jump(a & k != 0),
                0x06 => return (k, steps),
                _ => panic!("opcode {code:#x} at {pc}"),
            };
        }
    }

    #[test]
    fn the_tree_program_decides_every_syscall_as_the_profile_says_in_far_fewer_steps() {
        // containerd's default profile's shape: deny by default, ~300 plain allows, and
        // conditional ones (`personality` with one of three values, `clone` without the
        // namespace flags).
        let plain: Vec<(i32, String)> = (0..450)
            .filter(|nr| nr % 7 != 3 && *nr != 135 && *nr != 56)
            .filter_map(|nr| Some((nr, ScmpSyscall::from(nr).get_name().ok()?)))
            .collect();
        let names: Vec<&str> = plain.iter().map(|(_, n)| n.as_str()).collect();
        let p = profile(&format!(
            r#"{{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],"syscalls":[
                {{"names":{},"action":"SCMP_ACT_ALLOW"}},
                {{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":0,"op":"SCMP_CMP_EQ"}}]}},
                {{"names":["personality"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":8,"op":"SCMP_CMP_EQ"}}]}},
                {{"names":["clone"],"action":"SCMP_ACT_ALLOW","args":[{{"index":0,"value":2114060288,"valueTwo":0,"op":"SCMP_CMP_MASKED_EQ"}}]}}
            ]}}"#,
            serde_json::to_string(&names).unwrap()
        ));
        let linear = compile_as(&p, LINEAR).unwrap();
        let tree = compile(&p).unwrap();
        assert_ne!(
            linear.program,
            tree.program,
            "{} names make a tree",
            names.len()
        );
        const ALLOW: u32 = 0x7fff_0000;
        const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
        const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
        let newest = plain.iter().map(|(n, _)| *n as u32).max().unwrap().max(135);
        let (mut linear_worst, mut tree_worst) = (0, 0);
        for nr in 0..460u32 {
            for arg0 in [0u64, 8, 9, 0x1000_0000, 0x2_0000_0000] {
                let allowed = match nr {
                    135 => arg0 == 0 || arg0 == 8,
                    56 => arg0 & 2114060288 == 0,
                    _ => plain.iter().any(|(n, _)| *n as u32 == nr),
                };
                let want = match (allowed, nr > newest) {
                    (true, _) => ALLOW,
                    (false, false) => EPERM,
                    (false, true) => ENOSYS,
                };
                let args = [arg0, 0, 0, 0, 0, 0];
                let (l, l_steps) = run(&linear, nr, args);
                let (t, t_steps) = run(&tree, nr, args);
                assert_eq!((l, t), (want, want), "syscall {nr}, arg0 {arg0:#x}");
                linear_worst = linear_worst.max(l_steps);
                tree_worst = tree_worst.max(t_steps);
            }
        }
        assert!(
            tree_worst * 5 < linear_worst,
            "tree {tree_worst} steps at worst, linear {linear_worst}"
        );
    }

    /// Asserts what `program` returns for each (architecture, number), arguments zero.
    fn decides(program: &Seccomp, cases: &[(u32, u32, u32)]) {
        for &(arch, nr, want) in cases {
            let got = run_as(program, arch, nr, [0; 6]).0;
            assert_eq!(got, want, "arch {arch:#x}, syscall {nr:#x}");
        }
    }

    #[test]
    fn newer_system_calls_get_enosys_on_each_architecture_as_under_runc() {
        const ALLOW: u32 = 0x7fff_0000;
        const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
        const ENOSYS: u32 = 0x0005_0000 | libc::ENOSYS as u32;
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86","SCMP_ARCH_X32"],
                "syscalls":[{"names":["read","preadv2"],"action":"SCMP_ACT_ALLOW"},
                            {"names":["openat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
        );
        let program = compile(&p).unwrap();
        // (architecture, number, decision): preadv2 is the newest the profile names, 327 on
        // x86_64, 546 on x32 (with bit 30), 378 on i386.
        decides(
            &program,
            &[
                (AUDIT_ARCH_X86_64, 0, ALLOW),
                (AUDIT_ARCH_X86_64, 257, 0x0005_0000 | 13),
                (AUDIT_ARCH_X86_64, 300, EPERM),
                (AUDIT_ARCH_X86_64, 327, ALLOW),
                (AUDIT_ARCH_X86_64, 328, ENOSYS),
                (AUDIT_ARCH_X86_64, 459, ENOSYS),
                (AUDIT_ARCH_X86_64, X32_BIT, ALLOW),
                (AUDIT_ARCH_X86_64, X32_BIT | 300, EPERM),
                (AUDIT_ARCH_X86_64, X32_BIT | 546, ALLOW),
                (AUDIT_ARCH_X86_64, X32_BIT | 547, ENOSYS),
                (AUDIT_ARCH_I386, 3, ALLOW),
                (AUDIT_ARCH_I386, 300, EPERM),
                (AUDIT_ARCH_I386, 379, ENOSYS),
            ],
        );
        // Without x32 in the profile, an x32 call is the profile's (libseccomp's) to decide.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let program = compile(&p).unwrap();
        assert_eq!(run(&program, 2, [0; 6]).0, ENOSYS);
        assert_ne!(run(&program, X32_BIT | 2, [0; 6]).0, ENOSYS);
        // A largest number of 0 (only `read` on x86_64) makes no section, as in runc: the
        // default action (here a kill) stays for every other call.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_KILL_PROCESS","architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let program = compile(&p).unwrap();
        assert_eq!(run(&program, 0, [0; 6]).0, ALLOW);
        assert_eq!(run(&program, 1, [0; 6]).0, 0x8000_0000);
        assert_eq!(run(&program, 459, [0; 6]).0, 0x8000_0000);
        // aarch64's and arm's sections (preadv2 is 286 on aarch64, 392 on arm).
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_AARCH64","SCMP_ARCH_ARM"],
                "syscalls":[{"names":["read","preadv2"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let program = compile(&p).unwrap();
        decides(
            &program,
            &[
                (AUDIT_ARCH_AARCH64, 63, ALLOW),
                (AUDIT_ARCH_AARCH64, 286, ALLOW),
                (AUDIT_ARCH_AARCH64, 200, EPERM),
                (AUDIT_ARCH_AARCH64, 287, ENOSYS),
                (AUDIT_ARCH_ARM, 392, ALLOW),
                (AUDIT_ARCH_ARM, 393, ENOSYS),
                (AUDIT_ARCH_X86_64, 328, ENOSYS),
            ],
        );
        // An allowing default needs no stub: a newer call is allowed, as the profile says.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let program = compile(&p).unwrap();
        assert_eq!(run(&program, 459, [0; 6]).0, ALLOW);
        assert_eq!(run(&program, 83, [0; 6]).0, EPERM);
    }

    #[test]
    fn conditions_and_errnos_mean_what_they_mean_to_runc() {
        const ALLOW: u32 = 0x7fff_0000;
        let errno = |e: u32| 0x0005_0000 | e;
        // mbind (237): two conditions name argument 0, so each of the four is a rule of its
        // own; splice (275): conditions on distinct arguments AND together. ioprio_set
        // (251): an errno rule without its errno is EPERM, not the default's 95.
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":95,"architectures":["SCMP_ARCH_X86_64"],
                "syscalls":[
                  {"names":["read","write","exit"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["mbind"],"action":"SCMP_ACT_ALLOW","args":[
                    {"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"},
                    {"index":1,"value":5,"op":"SCMP_CMP_EQ"},{"index":2,"value":7,"op":"SCMP_CMP_EQ"}]},
                  {"names":["splice"],"action":"SCMP_ACT_ALLOW","args":[
                    {"index":1,"value":5,"op":"SCMP_CMP_EQ"},{"index":2,"value":7,"op":"SCMP_CMP_EQ"}]},
                  {"names":["ioprio_set"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        let program = compile(&p).unwrap();
        for (nr, args, want) in [
            (237, [1, 0, 0], ALLOW),
            (237, [2, 0, 0], ALLOW),
            (237, [0, 5, 0], ALLOW),
            (237, [0, 0, 7], ALLOW),
            (237, [0, 0, 0], errno(95)),
            (275, [0, 5, 7], ALLOW),
            (275, [0, 5, 0], errno(95)),
            (275, [0, 0, 7], errno(95)),
            (251, [0, 0, 0], errno(libc::EPERM as u32)),
            (200, [0, 0, 0], errno(95)),
        ] {
            let args = [args[0], args[1], args[2], 0, 0, 0];
            assert_eq!(run(&program, nr, args).0, want, "syscall {nr}, {args:?}");
        }
    }

    #[test]
    fn unknown_syscall_names_are_skipped_as_runc_does() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(compile(&p).is_ok());
    }
}
