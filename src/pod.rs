//! A pod's namespaces, made and held by the shim for the pod's containers.
//!
//! Under CRI a pod's containers share its network, IPC and UTS namespaces, which CRI names
//! as `/proc/<sandbox pid>/ns/<type>`. Our sandbox runs no process (its pid is the
//! shim's), so those paths would name the shim's namespaces: the host's. Instead, when the
//! sandbox is created, a thread of the shim's own enters or creates the namespaces the
//! sandbox spec asks for (the network namespace CNI made, a new IPC and UTS namespace),
//! sets the pod's hostname and sysctls in them, and the shim keeps a descriptor of each for
//! as long as the sandbox lives. A container's join of the sandbox's path is a join of
//! those descriptors; a path that names the shim but no sandbox it holds is refused.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sched::CloneFlags;

use crate::spec::{Ns, SandboxSpec};

/// The namespaces a pod's containers share; `None` is the host's.
#[derive(Debug, Default)]
pub struct PodNamespaces {
    pub network: Option<OwnedFd>,
    pub ipc: Option<OwnedFd>,
    pub uts: Option<OwnedFd>,
    /// Whether the pod has a pid namespace of its own (containers that share it:
    /// `shareProcessNamespace`).
    own_pid: bool,
    /// The process that keeps the pod's pid namespace alive, started when the first
    /// container joins it.
    init: Mutex<Option<PodInit>>,
}

/// The init (pid 1) of a pod's pid namespace. A pid namespace lives only as long as its
/// init, and our sandbox runs no pause process, so the shim forks one that does nothing
/// but wait; it is killed with the sandbox, which ends every process of the namespace.
#[derive(Debug)]
struct PodInit {
    pid: i32,
    ns: OwnedFd,
}

impl Drop for PodInit {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The name (`argv[0]`) the shim binary runs as when it is a pod's init.
pub const POD_INIT: &std::ffi::CStr = c"wasmedge-pod-init";

/// The shim binary as a pod's init: pid 1 of the pod's pid namespace, holding it alive. It
/// does nothing but wait (as a namespace's init it ignores every signal it has no handler
/// for; the shim ends it with SIGKILL) and reap whatever is orphaned into it.
pub fn pod_init_main() -> ! {
    extern "C" fn wake(_: libc::c_int) {}
    // SAFETY: the handler does nothing; it only makes SIGCHLD interrupt `pause`.
    unsafe { libc::signal(libc::SIGCHLD, wake as *const () as libc::sighandler_t) };
    loop {
        match nix::sys::wait::wait() {
            Ok(_) => {}
            // No child: sleep until a signal (SIGCHLD wakes it for the next orphan).
            Err(_) => {
                // SAFETY: pause has no memory effects.
                unsafe { libc::pause() };
            }
        }
    }
}

impl PodInit {
    fn start() -> Result<PodInit, String> {
        // Built before the fork: the child must not allocate.
        let argv: [*const libc::c_char; 2] = [POD_INIT.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        // SAFETY: the shim may have other threads, so the child makes system calls only
        // (close_range, execve), which are async-signal-safe; clone without CLONE_VM and
        // without a stack returns in the child on its copy of our stack, as fork does.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_int>(),
                std::ptr::null_mut::<libc::c_int>(),
                0 as libc::c_ulong,
            )
        };
        match pid {
            -1 => Err(format!(
                "fork the pod's pid namespace init: {}",
                std::io::Error::last_os_error()
            )),
            0 => {
                // SAFETY: as above. The child keeps none of the shim's descriptors and
                // becomes a fresh image of the shim binary under its own name, which only
                // waits ([`pod_init_main`]): none of the shim's memory stays in the pod.
                unsafe {
                    libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
                    libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr());
                    libc::_exit(127)
                }
            }
            pid => {
                let pid = pid as i32;
                let init = |ns| PodInit { pid, ns };
                let path = format!("/proc/{pid}/ns/pid");
                match File::open(&path) {
                    Ok(f) => Ok(init(f.into())),
                    Err(e) => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        Err(format!("open {path}: {e}"))
                    }
                }
            }
        }
    }
}

/// The kinds of namespace a pod shares, by their `/proc/<pid>/ns/` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    Network,
    Ipc,
    Uts,
    Pid,
}

impl Shared {
    fn file(self) -> &'static str {
        match self {
            Shared::Network => "net",
            Shared::Ipc => "ipc",
            Shared::Uts => "uts",
            Shared::Pid => "pid",
        }
    }
}

/// What a pod's container joins for a namespace path of its spec.
#[derive(Debug)]
pub enum PodJoin {
    /// The pod's own namespace: CRI names it by its sandbox's pid, which is this shim's
    /// (a pod's containers follow their sandbox's shim).
    Pod(Shared),
    /// The namespace of another container of the pod (`kubectl debug --target`, which CRI
    /// allows only within the pod), opened while that container was alive.
    Member(OwnedFd),
}

/// Resolves a pod's container's namespace path, which CRI writes only as
/// `/proc/<pid>/ns/<type>` of the sandbox (this shim) or of a container of the same pod.
/// Any other path is refused: a node shim serves many pods, and its other children are
/// other pods' containers; a pid that is neither is a sandbox whose shim is gone, and may be
/// anyone's by now; any other form (through `..`, `self`, a task, a process's root, a
/// symlink, a namespace file bound elsewhere) could name anyone's namespace.
///
/// `live_member` says whether a pid is the process of a live container of the pod; the
/// namespace is opened between two such checks, so that a member that exited, and whose
/// pid went to another process, is never what is joined.
pub fn pod_join(
    path: &Path,
    shim: u32,
    live_member: &dyn Fn(u32) -> bool,
) -> Result<PodJoin, String> {
    let other_form = || {
        format!(
            "{}: a pod's container joins a namespace only as /proc/<pid>/ns/<type> of this \
             shim or of a container of the pod",
            path.display()
        )
    };
    let rest = path.strip_prefix("/proc").map_err(|_| other_form())?;
    let parts: Vec<&str> = rest
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => n.to_str().unwrap_or(".."),
            _ => "..",
        })
        .collect();
    let (pid, file) = match parts.as_slice() {
        [pid, "ns", file] => (pid.parse::<u32>().map_err(|_| other_form())?, *file),
        _ => return Err(other_form()),
    };
    if pid == shim {
        return names_process_namespace(path, shim)
            .map(PodJoin::Pod)
            .ok_or_else(|| {
                format!(
                    "{}: the pod shares no {file} namespace (only network, IPC, UTS and pid)",
                    path.display()
                )
            });
    }
    let refused = || {
        format!(
            "{} names the namespaces of process {pid}, neither this shim ({shim}), which \
             serves the pod's sandbox, nor a live container of the pod: another pod's \
             container, or a sandbox served by no live shim",
            path.display()
        )
    };
    if !live_member(pid) {
        return Err(refused());
    }
    let fd = File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| format!("open namespace {}: {e}", path.display()))?;
    if !live_member(pid) {
        return Err(refused());
    }
    Ok(PodJoin::Member(fd))
}

/// Whether `path` names one of process `pid`'s namespaces (CRI's way to name a
/// sandbox's), and which.
pub fn names_process_namespace(path: &Path, pid: u32) -> Option<Shared> {
    let rest = path.strip_prefix(format!("/proc/{pid}/ns")).ok()?;
    [Shared::Network, Shared::Ipc, Shared::Uts, Shared::Pid]
        .into_iter()
        .find(|s| rest == Path::new(s.file()))
}

impl PodNamespaces {
    /// Makes (or, for a path, enters) the namespaces `spec` asks for, on a thread of its own
    /// so that the shim's own namespaces never change.
    pub fn create(spec: &SandboxSpec) -> Result<PodNamespaces, String> {
        let spec = spec.clone();
        std::thread::Builder::new()
            .name("pod-namespaces".into())
            .spawn(move || make(&spec))
            .map_err(|e| format!("start the thread that makes the pod's namespaces: {e}"))?
            .join()
            .map_err(|_| "the thread that makes the pod's namespaces panicked".to_string())?
    }

    /// A descriptor of the pod's namespace of kind `what`: `Ok(None)` for the host's.
    pub fn get(&self, what: Shared) -> Result<Option<OwnedFd>, String> {
        let fd = match what {
            Shared::Network => self.network.as_ref(),
            Shared::Ipc => self.ipc.as_ref(),
            Shared::Uts => self.uts.as_ref(),
            Shared::Pid if !self.own_pid => None,
            Shared::Pid => {
                let mut init = self.init.lock().unwrap_or_else(|p| p.into_inner());
                if init.is_none() {
                    *init = Some(PodInit::start()?);
                }
                let ns = &init.as_ref().expect("started above").ns;
                return ns.try_clone().map(Some).map_err(|e| e.to_string());
            }
        };
        fd.map(|f| f.try_clone().map_err(|e| e.to_string()))
            .transpose()
    }
}

/// Runs on its own thread: namespaces are per thread for network, IPC and UTS, so this
/// thread can enter and create them without touching the shim's other threads.
fn make(spec: &SandboxSpec) -> Result<PodNamespaces, String> {
    let mut new = CloneFlags::empty();
    if let Ns::Join(path) = &spec.network {
        let f = File::open(path)
            .map_err(|e| format!("open network namespace {}: {e}", path.display()))?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("enter network namespace {}: {e}", path.display()))?;
    }
    for (ns, flag) in [
        (&spec.network, CloneFlags::CLONE_NEWNET),
        (&spec.ipc, CloneFlags::CLONE_NEWIPC),
        (&spec.uts, CloneFlags::CLONE_NEWUTS),
    ] {
        if *ns == Ns::New {
            new |= flag;
        }
    }
    if !new.is_empty() {
        nix::sched::unshare(new)
            .map_err(|e| format!("create the pod's namespaces {new:?}: {e}"))?;
    }
    if let Some(h) = &spec.hostname {
        rustix::system::sethostname(h.as_bytes())
            .map_err(|e| format!("set hostname {h:?}: {e}"))?;
    }
    if let Some(d) = &spec.domainname {
        rustix::system::setdomainname(d.as_bytes())
            .map_err(|e| format!("set domainname {d:?}: {e}"))?;
    }
    for (key, value) in &spec.sysctl {
        // `/proc/sys` shows the namespaces of the thread that opens it: this one's.
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }
    let open = |ns: &Ns, file: &str| -> Result<Option<OwnedFd>, String> {
        if *ns == Ns::Host {
            return Ok(None);
        }
        let path = format!("/proc/thread-self/ns/{file}");
        File::open(&path)
            .map(|f| Some(f.into()))
            .map_err(|e| format!("open {path}: {e}"))
    };
    Ok(PodNamespaces {
        network: open(&spec.network, "net")?,
        ipc: open(&spec.ipc, "ipc")?,
        uts: open(&spec.uts, "uts")?,
        own_pid: spec.pid == Ns::New,
        init: Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_names_a_sandbox_namespace_by_its_pid() {
        assert_eq!(
            names_process_namespace(Path::new("/proc/42/ns/net"), 42),
            Some(Shared::Network)
        );
        assert_eq!(
            names_process_namespace(Path::new("/proc/42/ns/pid"), 42),
            Some(Shared::Pid)
        );
        assert_eq!(
            names_process_namespace(Path::new("/proc/43/ns/net"), 42),
            None
        );
        assert_eq!(
            names_process_namespace(Path::new("/var/run/netns/cni-1"), 42),
            None
        );
        assert_eq!(
            names_process_namespace(Path::new("/proc/42/ns/mnt"), 42),
            None
        );
    }

    #[test]
    fn a_pod_gets_its_own_ipc_and_uts_namespaces_with_its_hostname() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (namespaces)");
            return;
        }
        let spec = SandboxSpec {
            network: Ns::Host,
            ipc: Ns::New,
            uts: Ns::New,
            pid: Ns::New,
            hostname: Some("pod-a".into()),
            domainname: None,
            sysctl: vec![("kernel.shmmni".into(), "1234".into())],
        };
        let pod = PodNamespaces::create(&spec).unwrap();
        assert!(
            pod.network.is_none(),
            "host network: no namespace of its own"
        );
        let ino = |f: &OwnedFd| nix::sys::stat::fstat(f).unwrap().st_ino;
        let own = |t: &str| {
            nix::sys::stat::stat(format!("/proc/self/ns/{t}").as_str())
                .unwrap()
                .st_ino
        };
        assert_ne!(ino(pod.ipc.as_ref().unwrap()), own("ipc"));
        assert_ne!(ino(pod.uts.as_ref().unwrap()), own("uts"));
        // The shim's own hostname did not change; the pod's is inside its namespace.
        let hostname = || {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        };
        assert_ne!(hostname(), "pod-a");
        let uts = pod.uts.as_ref().unwrap();
        let ipc = pod.ipc.as_ref().unwrap();
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(uts, CloneFlags::CLONE_NEWUTS).unwrap();
                nix::sched::setns(ipc, CloneFlags::CLONE_NEWIPC).unwrap();
                (
                    hostname(),
                    std::fs::read_to_string("/proc/sys/kernel/shmmni").unwrap(),
                )
            })
            .join()
            .unwrap()
        });
        assert_eq!(seen, ("pod-a".to_string(), "1234\n".to_string()));
    }

    #[test]
    fn a_pods_container_joins_only_its_pods_namespaces() {
        let none = |_: u32| false;
        let me = std::process::id();
        let pod = |p: &str, member: &dyn Fn(u32) -> bool| pod_join(Path::new(p), me, member);
        assert!(matches!(
            pod(&format!("/proc/{me}/ns/net"), &none),
            Ok(PodJoin::Pod(Shared::Network))
        ));
        // The pod shares no mount or cgroup namespace: the shim's are the host's.
        let e = pod(&format!("/proc/{me}/ns/mnt"), &none).unwrap_err();
        assert!(e.contains("the pod shares no mnt namespace"), "{e}");
        let e = pod("/proc/43/ns/net", &none).unwrap_err();
        assert!(
            e.starts_with("/proc/43/ns/net names the namespaces of process 43")
                && e.contains("nor a live container of the pod"),
            "{e}"
        );
        // Any other form, even of a member's, and any path outside /proc.
        let any = |_: u32| true;
        for other in [
            "/proc/self/ns/net",
            "/proc/43/task/43/ns/net",
            "/proc/43/root/proc/1/ns/net",
            "/proc/43/ns/../../1/ns/net",
            "/run/../proc/43/ns/net",
            "/dev/fd/../../43/ns/net",
            "/var/run/netns/cni-1",
        ] {
            let e = pod(other, &any).unwrap_err();
            assert!(e.contains("only as /proc/<pid>/ns/<type>"), "{other}: {e}");
        }
        // A live member's: opened, and checked alive again after the open.
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = child.id();
        let path = format!("/proc/{pid}/ns/net");
        let joined = pod(&path, &|p| p == pid);
        let checks = std::cell::Cell::new(0);
        let dies_during_the_open = pod(&path, &|p| {
            checks.set(checks.get() + 1);
            p == pid && checks.get() == 1
        });
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(joined, Ok(PodJoin::Member(_))), "{joined:?}");
        assert!(dies_during_the_open.is_err());
    }
}
