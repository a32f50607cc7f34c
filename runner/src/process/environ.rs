//! Step 2, after the plan: the process's environment as the kernel shows it
//! (`/proc/<pid>/environ`) becomes the spec's env, as runc's process, exec'd with the spec's
//! env only, shows it.
//!
//! A container process is a fork of the runner and is never exec'd, so the kernel's record
//! of where its environment is (`env_start..env_end` of its memory map, what
//! `/proc/<pid>/environ` reads) still names the runner's environment strings. The runner is
//! started with almost nothing of the shim's environment ([`spawn::RUNNER_ENV`]: `TMPDIR`)
//! and the node config the shim loaded ([`spawn::CONFIG_ENV`]: paths and settings, no
//! secret), so containerd's and the shim's variables are not in the process's memory at
//! all; what remains is pointed away from here. A module reaches the file through the
//! root preopen (`/proc/self/environ`), and the host's tools read it too.
//!
//! `PR_SET_MM` needs `CAP_SYS_RESOURCE` in the host's user namespace: the process holds it
//! from its birth until its credentials drop (step 8) or it enters a user namespace (step
//! 7), so this runs right after the plan. Two `prctl`s and one small allocation, which the
//! process keeps until it exits (the kernel reads the strings from its memory). Where the
//! shim runs without `CAP_SYS_RESOURCE` (a shim inside a container that drops it), the
//! kernel refuses, and the process shows the runner's environment, which is only those two
//! variables: nothing of containerd's or the shim's.
//!
//! [`spawn::RUNNER_ENV`]: wasmedge_aot_protocol::spawn::RUNNER_ENV
//! [`spawn::CONFIG_ENV`]: wasmedge_aot_protocol::spawn::CONFIG_ENV

use std::ffi::c_void;
use std::ptr::NonNull;

use rustix::process::{set_virtual_memory_map_address, VirtualMemoryMapAddress as Mm};

use super::{at, StepError};

/// Makes `env` (`NAME=value` strings) the environment the kernel shows for this process;
/// `Ok(false)` when the kernel refuses for want of `CAP_SYS_RESOURCE`.
pub fn show(env: &[String]) -> Result<bool, StepError> {
    // The kernel's format: each string followed by a NUL. At least one byte is allocated,
    // so that an empty environment still has an address in the process's memory.
    let mut block = Vec::with_capacity(env.iter().map(|v| v.len() + 1).sum::<usize>() + 1);
    for var in env {
        block.extend_from_slice(var.as_bytes());
        block.push(0);
    }
    // Kept until the process exits: the kernel reads /proc/<pid>/environ from this memory.
    let block: &'static mut [u8] = block.leak();
    let start = block.as_mut_ptr();
    // SAFETY: `start..start + len` is one live allocation (or its end).
    let end = unsafe { start.add(block.len()) };
    let set = |option, address: *mut u8| {
        // SAFETY: these two options only change which range of our own memory the kernel
        // reads for /proc/<pid>/environ; no code of ours reads through them, and the range
        // is a leaked allocation that stays mapped and unchanged until the process exits.
        unsafe { set_virtual_memory_map_address(option, NonNull::new(address.cast::<c_void>())) }
    };
    // The kernel refuses a start above the end: moving to a range above the old one sets
    // the end first, to one below it the start first. Which one it is we learn from the
    // first refusal, which changes nothing.
    let moved = set(Mm::EnvironmentStart, start)
        .and_then(|()| set(Mm::EnvironmentEnd, end))
        .or_else(|_| set(Mm::EnvironmentEnd, end).and_then(|()| set(Mm::EnvironmentStart, start)));
    match moved {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::PERM) => Ok(false),
        Err(e) => Err(at("environment")(format!(
            "prctl(PR_SET_MM) to the spec's env: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child (the test process's own environment stays as it is); needs
    /// `CAP_SYS_RESOURCE`, as the container process has it.
    #[test]
    fn proc_self_environ_shows_the_given_env_only() {
        let caps = rustix::thread::capabilities(None).unwrap();
        if !caps
            .effective
            .contains(rustix::thread::CapabilitySet::SYS_RESOURCE)
        {
            eprintln!("skipped: PR_SET_MM needs CAP_SYS_RESOURCE, which this process lacks");
            return;
        }
        for env in [vec!["A=1".to_string(), "PATH=/bin".to_string()], Vec::new()] {
            let (mut read, mut write) = std::io::pipe().unwrap();
            // SAFETY: the child allocates, which glibc's malloc allows after a fork of a
            // threaded process (it holds its locks across fork), and ends with _exit.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    use std::io::Write;
                    let out = match show(&env) {
                        Ok(true) => std::fs::read("/proc/self/environ").unwrap_or_default(),
                        Ok(false) => b"refused".to_vec(),
                        Err(e) => format!("error: {e}").into_bytes(),
                    };
                    let _ = write.write_all(&out);
                    // SAFETY: ends the forked child without running the test harness's exit.
                    unsafe { libc::_exit(0) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    drop(write);
                    let mut got = Vec::new();
                    std::io::Read::read_to_end(&mut read, &mut got).unwrap();
                    nix::sys::wait::waitpid(child, None).unwrap();
                    let want: Vec<u8> = env
                        .iter()
                        .flat_map(|v| [v.as_bytes(), b"\0"].concat())
                        .collect();
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&want)
                    );
                }
            }
        }
    }
}
