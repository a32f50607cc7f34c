//! One process per module with native code (its zygote): it loads and instantiates that one
//! module once (its template) and forks that module's containers.
//!
//! Why not the runner itself, as before: a container process is a fork, and holds a copy of
//! everything its parent had. A runner that kept every module's template gave each container
//! every other tenant's code, data segments and loader heap, readable from inside through
//! `/proc/self/mem` (found by a hostile tenant: another module's secret, 4 times). Now the
//! runner loads no tenant's module: it hashes (through a mapping it drops), looks up the
//! cache and starts compiles, and the module's bytes are parsed and instantiated only in
//! that module's zygote and its own containers. Containers of one module share its read-only
//! code and the template's pages, as before; containers of two modules share nothing but
//! the runner's engine.
//!
//! A zygote is a sibling of the containers (`CLONE_PARENT`: the shim's child, as they are),
//! so its own forks are the shim's children too. It runs under a data limit
//! ([`LOAD_BUDGET`] to load, then [`INSTANCE_BUDGET`] to instantiate): a module whose template would take more
//! (a 105-byte module can declare a table of 4 billion entries) makes its zygote fail or
//! die, not the runner, and its containers then load their code themselves, charged to their
//! own cgroups. A refused module is remembered for [`REFUSED_FOR`], so it costs one failed
//! zygote then, not one per start. The zygote ends when the runner closes its socket
//! (evicted, or the runner gone).
//!
//! The runner never waits for a zygote's birth: it serves every node's start, one at a
//! time, and a module whose template takes long to make must not stall the others. The
//! start that finds no zygote starts one and loads its own code (as a container without a
//! template does); later starts look, without blocking, whether the zygote has its template
//! yet, and fork from it once it has.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use wasmedge_aot_cache::Key;
use wasmedge_aot_protocol::control::CacheOutcome;
use wasmedge_aot_protocol::spawn::{self, SpawnFds, SpawnReply, SpawnRequest};
use wasmedge_aot_protocol::wire;

use crate::code::{CodeFinder, Resolution};

/// Most zygotes alive at once (the least recently used goes first).
const MAX_ZYGOTES: usize = 16;
/// Most modules remembered as refused.
const MAX_REFUSED: usize = 256;
/// How long a refusal is remembered: a zygote may have failed for a passing reason (the
/// node short of memory), and a module's later starts then get their template after all.
const REFUSED_FOR: std::time::Duration = std::time::Duration::from_secs(600);
/// What a zygote may allocate to load its module's native code (the loader's copy of the
/// module, the library), above the runner's own data: a module's size bounds it.
pub const LOAD_BUDGET: u64 = 512 << 20;
/// What the template's instance may then take: its tables and its memory's initial pages,
/// which a module declares at will (105 bytes can ask for a table of 4 billion entries).
/// A module that asks more gets no template: each of its containers instantiates itself,
/// charged to its own cgroup, where the instance's pages would otherwise be the zygote's,
/// outside every pod's limit.
pub const INSTANCE_BUDGET: u64 = 64 << 20;

struct Zygote {
    key: Key,
    /// (device, inode) of the artifact it loaded: a re-published entry is another file.
    file: (u64, u64),
    sock: OwnedFd,
    /// A pidfd of it, taken at its fork: it is the shim's child (`CLONE_PARENT`), which
    /// the shim reaps the moment it dies, so its pid may be another process's by the time
    /// the runner kills it.
    pidfd: Option<OwnedFd>,
    /// Whether it has reported its template.
    born: bool,
    since: std::time::Instant,
}

impl Drop for Zygote {
    /// A zygote dropped (evicted, or one that did not answer) is killed: it holds nothing
    /// anyone needs (its containers are the shim's children), and one that hangs must not
    /// stay.
    fn drop(&mut self) {
        // Without a pidfd (a kernel without them, or the zygote already gone when it was
        // asked for) it is not killed by pid: that pid may be anyone's.
        if let Some(fd) = &self.pidfd {
            let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
        }
    }
}

/// How long a zygote may take to make its template: the loader's parse of the largest
/// module takes seconds; a zygote that takes longer is killed, and its containers load their
/// code themselves.
const BIRTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// How long it waits for a zygote to fork a container (a fork takes well under a second).
const FORK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bounds the runner's waits on `sock`: every other start waits while it does.
fn recv_timeout(sock: &OwnedFd, t: std::time::Duration) -> Result<(), String> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    let tv = nix::sys::time::TimeVal::new(t.as_secs() as i64, 0);
    setsockopt(sock, ReceiveTimeout, &tv).map_err(|e| format!("zygote socket timeout: {e}"))
}

/// The runner's zygotes, most recently used last.
#[derive(Default)]
pub struct Zygotes {
    live: RefCell<Vec<Zygote>>,
    refused: RefCell<Vec<Refusal>>,
}

/// A module's entry and artifact whose zygote failed, and when.
type Refusal = (Key, (u64, u64), std::time::Instant);

/// What a look at a zygote's birth found.
enum Birth {
    Born,
    NotYet,
    Failed(String),
}

/// The zygote's first message: `Ok` with its template, or why not.
type Born = Result<(), String>;

impl Zygotes {
    /// Has the zygote of the module `res` found native code for fork the container; starts
    /// the zygote first if there is none. `Err` says why not: the caller forks the container
    /// itself, which then loads its code on its own.
    pub fn fork_container(
        &self,
        runner: &CodeFinder,
        req: &SpawnRequest,
        res: &Resolution,
        module: &File,
        fds: SpawnFds<BorrowedFd<'_>>,
    ) -> Result<i32, String> {
        let (Some((key, level)), Some((so, file, _))) = (res.template, res.artifact.as_ref())
        else {
            return Err("no native code to make a template of".into());
        };
        let refuse = |why: String| {
            let mut refused = self.refused.borrow_mut();
            if refused.len() >= MAX_REFUSED {
                refused.remove(0);
            }
            refused.push((key, *file, std::time::Instant::now()));
            Err(why)
        };
        {
            let mut refused = self.refused.borrow_mut();
            refused.retain(|(.., at)| at.elapsed() < REFUSED_FOR);
            if refused.iter().any(|(k, f, _)| *k == key && f == file) {
                return Err("its template was refused before".into());
            }
        }
        let mut live = self.live.borrow_mut();
        let found = live.iter().position(|z| z.key == key);
        let mut zygote = match found.map(|i| live.remove(i)) {
            Some(z) if z.file == *file => z,
            // None, or one of an entry since re-published (dropping it ends it).
            _ => {
                if live.len() >= MAX_ZYGOTES {
                    live.remove(0);
                }
                // The request's descriptors, which the zygote must not keep (a module file
                // keeps its rootfs busy, a control socket keeps a container's shim end open,
                // a pod's pid namespace alive), nor the runner's ends of the other zygotes'
                // sockets (each would keep the others alive after the runner).
                let request_fds: Vec<i32> = [
                    Some(fds.control),
                    Some(module.as_fd()),
                    fds.pid_ns,
                    fds.cgroup,
                ]
                .into_iter()
                .flatten()
                .map(|fd| fd.as_raw_fd())
                .chain(live.iter().map(|z| z.sock.as_raw_fd()))
                .collect();
                // SAFETY: the runner is single-threaded (see `serve`).
                match unsafe { start(runner, key, level, so, *file, module, &request_fds) } {
                    Ok(z) => {
                        live.push(z);
                        return Err("its template is being made".into());
                    }
                    Err(e) => return refuse(e),
                }
            }
        };
        if !zygote.born {
            match birth(&zygote) {
                Birth::Born => {
                    zygote.born = true;
                    recv_timeout(&zygote.sock, FORK_TIMEOUT)?;
                }
                Birth::NotYet if zygote.since.elapsed() < BIRTH_TIMEOUT => {
                    live.push(zygote);
                    return Err("its template is still being made".into());
                }
                // Dropping it kills it.
                Birth::NotYet => {
                    return refuse(format!(
                        "its zygote did not make its template within {BIRTH_TIMEOUT:?}"
                    ))
                }
                Birth::Failed(why) => return refuse(why),
            }
        }
        let pid = ask(&zygote, req, res, fds);
        // A zygote that did not answer is gone; the next start makes another.
        if pid.is_ok() {
            live.push(zygote);
        }
        pid
    }
}

/// Whether zygote `z` has reported its birth, without waiting.
fn birth(z: &Zygote) -> Birth {
    let mut fds = [nix::poll::PollFd::new(
        z.sock.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    if !matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0) {
        return Birth::NotYet;
    }
    let mut buf = vec![0u8; 4096];
    let born = match wire::recv_datagram(z.sock.as_fd(), &mut buf) {
        Err(e) => return Birth::Failed(format!("the module's zygote: {e}")),
        Ok(None) => {
            return Birth::Failed(
                "the module's zygote died making its template (its memory limit, or a crash)"
                    .into(),
            )
        }
        Ok(Some((bytes, _))) => wire::decode::<Born>("zygote birth", bytes),
    };
    match born {
        Ok(Ok(())) => Birth::Born,
        Ok(Err(why)) => Birth::Failed(why),
        Err(e) => Birth::Failed(format!("the module's zygote: {e}")),
    }
}

/// Sends one container's request to `z` and waits for the forked pid.
fn ask(
    z: &Zygote,
    req: &SpawnRequest,
    res: &Resolution,
    fds: SpawnFds<BorrowedFd<'_>>,
) -> Result<i32, String> {
    let failed = |e: wire::WireError| format!("the module's zygote: {e}");
    let (bytes, fds) = req.encode(fds).map_err(failed)?;
    wire::send_datagram(z.sock.as_fd(), &bytes, &fds).map_err(failed)?;
    let nanos = |d: std::time::Duration| d.as_nanos() as u64;
    let timings = (nanos(res.hash), nanos(res.lookup));
    let bytes = wire::encode("zygote timings", &timings).map_err(failed)?;
    wire::send_datagram(z.sock.as_fd(), &bytes, &[]).map_err(failed)?;
    let mut buf = vec![0u8; 4096];
    match wire::recv_datagram(z.sock.as_fd(), &mut buf).map_err(failed)? {
        None => Err("the module's zygote ended".into()),
        Some((bytes, _)) => match wire::decode("zygote reply", bytes).map_err(failed)? {
            SpawnReply::Spawned { pid } => Ok(pid),
            SpawnReply::Failed { error } => Err(error),
        },
    }
}

/// Forks the zygote of entry `key` (level `level`, artifact `so` whose identity is `file`),
/// which makes its template and reports it on its socket.
///
/// # Safety
/// As for `fork`: the caller must be single-threaded.
unsafe fn start(
    runner: &CodeFinder,
    key: Key,
    level: u8,
    so: &std::path::Path,
    file: (u64, u64),
    module: &File,
    request_fds: &[i32],
) -> Result<Zygote, String> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("zygote socket: {e}"))?;
    // SAFETY: the caller guarantees we are single-threaded.
    match unsafe { crate::sys::fork_sibling(libc::CLONE_PARENT as u64, None) } {
        Err(e) => Err(format!("fork the module's zygote: {e}")),
        Ok(None) => {
            drop(ours);
            // SAFETY: this process is the zygote, single-threaded.
            unsafe { serve(runner, key, level, so, file, module, request_fds, theirs) }
        }
        Ok(Some(pid)) => {
            drop(theirs);
            // Its birth is looked at by later starts (`birth`), never waited for. Nothing
            // has waited since the fork: the shim cannot have reaped it yet, short of its
            // death within these microseconds.
            let pidfd = rustix::process::Pid::from_raw(pid).and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            });
            Ok(Zygote {
                key,
                file,
                sock: ours,
                pidfd,
                born: false,
                since: std::time::Instant::now(),
            })
        }
    }
}

/// The zygote's life: its template, then one fork per request until the runner goes.
///
/// # Safety
/// Single-threaded, in the zygote just forked.
#[allow(clippy::too_many_arguments)]
unsafe fn serve(
    runner: &CodeFinder,
    key: Key,
    level: u8,
    so: &std::path::Path,
    file: (u64, u64),
    module: &File,
    request_fds: &[i32],
    sock: OwnedFd,
) -> ! {
    // Nothing of the runner's request stays open here (nor the other zygotes' runner ends),
    // nor the runner's end of the shim's socket (fd 0): the shim must see it close when the
    // runner goes, and this zygote serves none of that request (the start that made it
    // loads its own code). Each becomes /dev/null, so that the numbers stay valid for the
    // (never dropped) owners. The module goes once it is loaded.
    let to_null = |fds: &mut dyn Iterator<Item = i32>| {
        if let Ok(null) = File::open("/dev/null") {
            for fd in fds {
                // SAFETY: dup2 onto an open descriptor replaces what it refers to; nothing
                // is closed that an owner would close again.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
    };
    let module_fd = module.as_raw_fd();
    to_null(
        &mut std::iter::once(0).chain(request_fds.iter().copied().filter(|&fd| fd != module_fd)),
    );
    let inherited = limit_data(LOAD_BUDGET);
    let born: Born = if runner.load_template(&key, so, file, module, || {
        limit_data(INSTANCE_BUDGET);
    }) {
        Ok(())
    } else {
        Err("its native code does not load as a template".into())
    };
    to_null(&mut std::iter::once(module_fd));
    let refused = born.is_err();
    if let Ok(bytes) = wire::encode("zygote birth", &born) {
        let _ = wire::send_datagram(sock.as_fd(), &bytes, &[]);
    }
    if refused {
        crate::sys::exit_now(0);
    }
    let mut buf = vec![0u8; spawn::MAX_MESSAGE];
    loop {
        let (req, fds) = match spawn::recv_request(sock.as_fd(), &mut buf) {
            Ok(Some(r)) => r,
            // The runner is gone, or dropped us.
            Ok(None) | Err(_) => crate::sys::exit_now(0),
        };
        let timings: (u64, u64) = match wire::recv_datagram(sock.as_fd(), &mut buf) {
            Ok(Some((bytes, _))) => wire::decode("zygote timings", bytes).unwrap_or((0, 0)),
            _ => crate::sys::exit_now(0),
        };
        let SpawnFds {
            control,
            module,
            pid_ns,
            cgroup,
        } = fds;
        let module = File::from(module);
        let size = module.metadata().map(|m| m.len()).unwrap_or(0);
        let res = Resolution {
            policy: runner.node.config.effective_policy(req.policy, size),
            template: Some((key, level)),
            artifact: Some((so.to_owned(), file, level)),
            outcome: CacheOutcome::Hit,
            hash: std::time::Duration::from_nanos(timings.0),
            lookup: std::time::Duration::from_nanos(timings.1),
            forked: Some(std::time::Instant::now()),
            ..Resolution::default()
        };
        // SAFETY: the zygote is single-threaded.
        let forked = unsafe {
            crate::sys::fork_container(
                &runner.node.own_pid_ns,
                req.pid_namespace,
                pid_ns.as_ref(),
                cgroup.as_ref(),
            )
        };
        let reply = match forked {
            Ok(None) => {
                // The container is not bound by the zygote's limit: its cgroup is its bound.
                restore_data(inherited);
                let code = crate::process::run(runner, &req, control, module, res);
                crate::sys::exit_now(code)
            }
            Ok(Some(pid)) => SpawnReply::Spawned { pid },
            Err(e) => SpawnReply::Failed {
                error: format!("fork the container process: {e}"),
            },
        };
        if let Ok(bytes) = wire::encode("zygote reply", &reply) {
            if wire::send_datagram(sock.as_fd(), &bytes, &[]).is_err() {
                crate::sys::exit_now(0);
            }
        }
    }
}

/// Caps this process's data (heap and private writable mappings) at what it has now plus
/// `budget`; returns the limit it had.
fn limit_data(budget: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: getrlimit writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_DATA, &mut old) };
    let now = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmData:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let cap = (now + budget).min(old.rlim_cur);
    let new = libc::rlimit {
        rlim_cur: cap,
        rlim_max: old.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_DATA, &new) };
    old
}

fn restore_data(old: libc::rlimit) {
    // SAFETY: setrlimit reads the struct we pass; raising the soft limit back to the hard
    // limit it had needs no privilege.
    unsafe { libc::setrlimit(libc::RLIMIT_DATA, &old) };
}
