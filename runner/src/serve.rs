//! The runner socket loop: one request, one fork, one reply.
//!
//! The runner forks each container process as a child of the shim (`CLONE_PARENT`), so the
//! shim reaps it and learns its exit status like any child of its own; the runner keeps no
//! per-container state, and if it dies, running containers carry on. The process is born
//! in the pid namespace its container asks for (a new one, of which it is pid 1, or a
//! pod's), and on cgroup v2 directly in its cgroup (`clone3(CLONE_INTO_CGROUP)`): neither
//! can be entered later by the process itself.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use wasmedge_aot_protocol::spawn::{self, SpawnFds, SpawnReply};

use crate::code::CodeFinder;
use crate::sys::{exit_now, fork_container};
use crate::zygote::Zygotes;

/// Serves requests on `sock` until the shim closes it. Must be called while the process is
/// single-threaded: forking is only safe then.
pub fn serve(sock: OwnedFd, runner: &CodeFinder) -> ! {
    let mut buf = vec![0u8; spawn::MAX_MESSAGE];
    // The zygotes of the modules with native code: the runner itself loads none.
    let zygotes = Zygotes::default();
    loop {
        let (req, fds) = match spawn::recv_request(sock.as_fd(), &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => std::process::exit(0),
            Err(e) => {
                // Every request gets exactly one reply, or the shim would pair the next
                // reply with this request.
                eprintln!("wasmedge-shim-runner: bad request: {e}");
                reply(
                    &sock,
                    &SpawnReply::Failed {
                        error: format!("bad spawn request: {e}"),
                    },
                );
                continue;
            }
        };
        let SpawnFds {
            control,
            module,
            pid_ns,
            cgroup,
        } = fds;
        let module = File::from(module);
        // Once per request, as it arrives: what it finds of its module's compiles (a
        // failure, a running job) is as of now, not of the last request.
        runner.compiles.reap_all(&runner.node);
        let mut res = runner.resolve(&req, &module);
        // Native code: the module's zygote forks the container, from its template.
        if res.template.is_some() {
            let borrowed = SpawnFds {
                control: control.as_fd(),
                module: module.as_fd(),
                pid_ns: pid_ns.as_ref().map(|f| f.as_fd()),
                cgroup: cgroup.as_ref().map(|f| f.as_fd()),
            };
            match zygotes.fork_container(runner, &req, &res, &module, borrowed) {
                Ok(pid) => {
                    reply(&sock, &SpawnReply::Spawned { pid });
                    continue;
                }
                Err(e) => {
                    eprintln!(
                        "wasmedge-shim-runner: {}: no template ({e}); the container loads its code itself",
                        req.module_name
                    );
                    res.template = None;
                }
            }
        }
        res.forked = Some(std::time::Instant::now());
        // SAFETY: the runner is single-threaded (it starts no thread), so the child may run
        // arbitrary code after the fork.
        match unsafe {
            fork_container(
                &runner.node.own_pid_ns,
                req.pid_namespace,
                pid_ns.as_ref(),
                cgroup.as_ref(),
            )
        } {
            Ok(None) => {
                let code = crate::process::run(runner, &req, control, module, res);
                exit_now(code)
            }
            Ok(Some(pid)) => reply(&sock, &SpawnReply::Spawned { pid }),
            Err(e) => reply(
                &sock,
                &SpawnReply::Failed {
                    error: format!("fork the container process: {e}"),
                },
            ),
        }
    }
}

fn reply(sock: &OwnedFd, reply: &SpawnReply) {
    if let Err(e) = spawn::send_reply(sock.as_fd(), reply) {
        eprintln!("wasmedge-shim-runner: reply to the shim: {e}");
    }
}
