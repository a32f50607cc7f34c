//! What the process may do: the OOM score (step 3), rlimits (step 7, before the user
//! namespace), then in step 8 an AppArmor profile, groups, gid and uid, the five capability
//! sets, the umask, `no_new_privs`, and the seccomp filter last, in runc's order: the
//! bounding set is cut before the uid changes (which needs `CAP_SETUID` and keeps the
//! permitted set through `PR_SET_KEEPCAPS`), the sets are applied after it; without
//! `no_new_privs` the filter must go on while `CAP_SYS_ADMIN` is still held, with it the
//! filter goes last.
//!
//! The process is single-threaded, so the per-thread system calls (`setresuid`, `capset`,
//! `seccomp`) are the whole process's.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use rustix::thread::{CapabilitySet, CapabilitySets};
use wasmedge_aot_protocol::control::{Capabilities, ContainerPlan, Seccomp};

use super::{at, StepError};

/// What must be opened or built while the host's `/proc` is still the process's.
pub struct Pending {
    /// The process's AppArmor attribute (`/proc/self/attr/apparmor/current`), to change
    /// profile through at the end.
    apparmor: Option<File>,
    filter: Option<(Vec<libc::sock_filter>, u32)>,
}

/// Writes `process.oomScoreAdj`.
pub fn oom_score_adj(plan: &ContainerPlan) -> Result<(), StepError> {
    if let Some(score) = plan.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", score.to_string())
            .map_err(|e| at("oomScoreAdj")(format!("{score}: {e}")))?;
    }
    Ok(())
}

/// Opens what [`apply`] needs later, when the host's `/proc` is gone.
pub fn prepare(plan: &ContainerPlan) -> Result<Pending, StepError> {
    let apparmor = match &plan.apparmor_profile {
        Some(_) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/proc/self/attr/apparmor/current")
                .or_else(|_| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open("/proc/self/attr/current")
                })
                .map_err(|e| at("apparmorProfile")(format!("open the process's attr: {e}")))?,
        ),
        None => None,
    };
    let filter = plan.seccomp.as_ref().map(|s| (program(s), s.flags));
    Ok(Pending { apparmor, filter })
}

fn program(s: &Seccomp) -> Vec<libc::sock_filter> {
    s.instructions()
        .map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect()
}

/// Applies `process.rlimits`.
pub fn rlimits(plan: &ContainerPlan) -> Result<(), StepError> {
    for r in &plan.rlimits {
        let limit = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit reads `limit`, a valid rlimit, for the calling process.
        if unsafe { libc::setrlimit(r.resource as _, &limit) } != 0 {
            return Err(at("rlimits")(format!(
                "resource {}: {}",
                r.resource,
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

/// Drops everything the plan does not grant. Returns the time of the credentials and of
/// the seccomp filter.
pub fn apply(plan: &ContainerPlan, pending: Pending) -> Result<(Duration, Duration), StepError> {
    let t = Instant::now();
    let mut seccomp = Duration::ZERO;
    if let (Some(profile), Some(mut f)) = (&plan.apparmor_profile, pending.apparmor) {
        f.write_all(format!("changeprofile {profile}").as_bytes())
            .map_err(|e| at("apparmorProfile")(format!("{profile}: {e}")))?;
    }
    let install = |filter: &(Vec<libc::sock_filter>, u32)| -> Result<Duration, StepError> {
        let t = Instant::now();
        install_filter(&filter.0, filter.1)
            .map_err(|e| at("seccomp")(format!("install the filter: {e}")))?;
        Ok(t.elapsed())
    };
    if !plan.no_new_privileges {
        if let Some(filter) = &pending.filter {
            seccomp = install(filter)?;
        }
    }
    let caps = &plan.capabilities;
    for n in 0..64u32 {
        let cap = CapabilitySet::from_bits_retain(1 << n);
        if caps.bounding & (1 << n) != 0 {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            Ok(()) => {}
            // Past the kernel's last capability.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => {
                return Err(at("capabilities")(format!(
                    "drop {n} from the bounding set: {e}"
                )))
            }
        }
    }
    let user = &plan.user;
    rustix::thread::set_keep_capabilities(true).map_err(at("user"))?;
    let groups: Vec<rustix::process::Gid> = user
        .additional_gids
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    rustix::thread::set_thread_groups(&groups)
        .map_err(|e| at("user")(format!("additionalGids {:?}: {e}", user.additional_gids)))?;
    let gid = rustix::process::Gid::from_raw(user.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid)
        .map_err(|e| at("user")(format!("gid {}: {e}", user.gid)))?;
    let uid = rustix::process::Uid::from_raw(user.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid)
        .map_err(|e| at("user")(format!("uid {}: {e}", user.uid)))?;
    rustix::thread::set_keep_capabilities(false).map_err(at("user"))?;
    let (sets, ambient) = after_exec(caps, user.uid);
    rustix::thread::set_capabilities(None, sets)
        .map_err(|e| at("capabilities")(format!("set effective/permitted/inheritable: {e}")))?;
    rustix::thread::clear_ambient_capability_set()
        .map_err(|e| at("capabilities")(format!("clear ambient: {e}")))?;
    for n in 0..64u32 {
        if ambient & (1 << n) != 0 {
            rustix::thread::configure_capability_in_ambient_set(
                CapabilitySet::from_bits_retain(1 << n),
                true,
            )
            .map_err(|e| at("capabilities")(format!("raise {n} in the ambient set: {e}")))?;
        }
    }
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(user.umask.unwrap_or(0o022)));
    if plan.no_new_privileges {
        rustix::thread::set_no_new_privs(true).map_err(at("noNewPrivileges"))?;
        if let Some(filter) = &pending.filter {
            seccomp = install(filter)?;
        }
    }
    Ok((t.elapsed() - seccomp, seccomp))
}

/// The capability sets (and the ambient set) a runc container's process has: runc applies
/// the spec's sets and then execs the container's program, and `execve` of a file without
/// file capabilities or set-id bits transforms them. For root (`uid` 0) the file counts as
/// holding every capability: permitted becomes inheritable | bounding | ambient, and
/// effective all of permitted. For any other user the file holds none: permitted and
/// effective become the ambient set. Inheritable stays; ambient is what permitted and
/// inheritable allow. Our process does not exec, so it takes the result directly: a
/// non-root container keeps no effective capability, as under runc.
fn after_exec(caps: &Capabilities, uid: u32) -> (CapabilitySets, u64) {
    let ambient = caps.ambient & caps.permitted & caps.inheritable;
    let permitted = if uid == 0 {
        caps.inheritable | caps.bounding | ambient
    } else {
        ambient
    };
    let sets = CapabilitySets {
        effective: CapabilitySet::from_bits_retain(permitted),
        permitted: CapabilitySet::from_bits_retain(permitted),
        inheritable: CapabilitySet::from_bits_retain(caps.inheritable),
    };
    (sets, ambient)
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, program)`.
fn install_filter(program: &[libc::sock_filter], flags: u32) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| std::io::Error::other("program too long"))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
