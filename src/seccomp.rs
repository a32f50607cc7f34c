//! A container's seccomp profile (`linux.seccomp`), compiled to the BPF program its process
//! installs just before the module's first instruction.
//!
//! Compiling a profile with libseccomp takes milliseconds; every container of a node
//! asks for one of a handful of profiles (containerd's default, Kubernetes'
//! `RuntimeDefault`), so the shim compiles each distinct profile once and keeps the program
//! ([`Compiled`]). The container process only makes the `seccomp(2)` call, with no library.
//!
//! The translation follows the OCI runtime spec as runc implements it: the default action
//! and errno, the architectures, the filter flags, and each rule's action, errno and
//! argument conditions (conditions on one argument index AND together in one rule;
//! several conditions on the same index become one rule each). A syscall name this
//! libseccomp does not know is skipped, as runc does; a rule whose action is the default
//! adds nothing. Seccomp notification is refused by the spec translation.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
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

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: u32,
) -> Result<ScmpAction, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(default_errno) as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(errno.unwrap_or(default_errno) as u16)
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(err(
                "SCMP_ACT_NOTIFY: seccomp notification is not supported by this runtime",
            ))
        }
    })
}

fn compare(op: LinuxSeccompOperator, value_two: Option<u64>) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI: `value` is the mask, `valueTwo` the value compared with.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value_two.unwrap_or(0)),
    }
}

/// Compiles one profile into its BPF program.
pub fn compile(profile: &LinuxSeccomp) -> Result<Seccomp, SeccompError> {
    // EPERM unless the profile says otherwise, as runc.
    let default_errno = profile.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        default_errno,
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(err)?;
    // The filter is installed by the container process itself, after no_new_privs or while
    // it holds CAP_SYS_ADMIN; libseccomp must not set no_new_privs on its own.
    ctx.set_ctl_nnp(false).map_err(err)?;
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
        let act = action(rule.action(), rule.errno_ret(), default_errno)?;
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
        for name in rule.names() {
            let Ok(syscall) = ScmpSyscall::from_name(name) else {
                continue;
            };
            let cond = |a: &oci_spec::runtime::LinuxSeccompArg| {
                ScmpArgCompare::new(a.index() as u32, compare(a.op(), a.value_two()), a.value())
            };
            let together: Vec<ScmpArgCompare> = args
                .iter()
                .filter(|a| per_index[a.index()] == 1)
                .map(cond)
                .collect();
            let alone: Vec<ScmpArgCompare> = args
                .iter()
                .filter(|a| per_index[a.index()] > 1)
                .map(cond)
                .collect();
            let add = |ctx: &mut ScmpFilterContext, conds: &[ScmpArgCompare]| {
                ctx.add_rule_conditional(act, syscall, conds)
                    .map(|_| ())
                    .map_err(|e| err(format!("rule for {name}: {e}")))
            };
            if args.is_empty() {
                add(&mut ctx, &[])?;
            }
            for c in &alone {
                add(&mut ctx, std::slice::from_ref(c))?;
            }
            if !together.is_empty() {
                add(&mut ctx, &together)?;
            }
        }
    }
    Ok(Seccomp {
        program: export(&ctx)?,
        flags,
    })
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

    #[test]
    fn unknown_syscall_names_are_skipped_as_runc_does() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        assert!(compile(&p).is_ok());
    }
}
