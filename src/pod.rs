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

/// Refuses, for a container of a pod, a `/proc/<pid>/ns/...` path of a process that is
/// neither this shim nor a container of the same pod (`in_pod`): CRI names a pod's
/// namespaces by its sandbox's pid, which is this shim's when this shim serves the sandbox
/// (a pod's containers follow their sandbox's shim), and a target container's (`kubectl
/// debug --target`, which CRI allows only within the pod) by that container's process. A
/// node shim serves many pods: another of its children is another pod's container, whose
/// namespaces are not this pod's to join. Any other pid is a sandbox whose shim is gone, and
/// that pid may be anyone's by now (the host's namespaces, another pod's).
pub fn check_pod_namespace_path(
    path: &Path,
    shim: u32,
    in_pod: &dyn Fn(u32) -> bool,
) -> Result<(), String> {
    let Ok(rest) = path.strip_prefix("/proc") else {
        return Ok(());
    };
    let parts: Vec<&str> = rest
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => n.to_str().unwrap_or(".."),
            _ => "..",
        })
        .collect();
    let pid = parts.first().and_then(|p| p.parse::<u32>().ok());
    match (pid, parts.as_slice()) {
        (Some(pid), [_, "ns", _]) if pid == shim || in_pod(pid) => Ok(()),
        (Some(pid), [_, "ns", _]) => Err(format!(
            "{} names the namespaces of process {pid}, neither this shim ({shim}), which \
             serves the pod's sandbox, nor a container of the pod: another pod's \
             container, or a sandbox served by no live shim",
            path.display()
        )),
        // CRI writes no other form; any other path into /proc (`self`, a task's, through a
        // process's root) could name anyone's namespaces.
        _ => Err(format!(
            "{}: a pod's container joins a namespace under /proc only as \
             /proc/<pid>/ns/<type> of this shim or a container of the pod",
            path.display()
        )),
    }
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
    fn a_pods_container_joins_no_other_process_namespaces() {
        let none = |_: u32| false;
        assert!(check_pod_namespace_path(Path::new("/proc/42/ns/net"), 42, &none).is_ok());
        assert!(check_pod_namespace_path(Path::new("/var/run/netns/cni-1"), 42, &none).is_ok());
        let e = check_pod_namespace_path(Path::new("/proc/43/ns/net"), 42, &none).unwrap_err();
        assert!(
            e.starts_with("/proc/43/ns/net names the namespaces of process 43"),
            "{e}"
        );
        assert!(check_pod_namespace_path(Path::new("/proc/1/ns/pid"), 42, &none).is_err());
        // Even the process of a container of the pod, under any other form.
        let any = |_: u32| true;
        for other in [
            "/proc/self/ns/net",
            "/proc/42/task/42/ns/net",
            "/proc/43/root/proc/1/ns/net",
            "/proc/43/ns/../../1/ns/net",
        ] {
            let e = check_pod_namespace_path(Path::new(other), 42, &any).unwrap_err();
            assert!(e.contains("only as /proc/<pid>/ns/<type>"), "{other}: {e}");
        }
        // A container of the pod: `kubectl debug --target`; another pod's container (the
        // node shim's child too) is refused.
        let in_pod = |pid: u32| pid == 43;
        assert!(check_pod_namespace_path(Path::new("/proc/43/ns/pid"), 42, &in_pod).is_ok());
        let e = check_pod_namespace_path(Path::new("/proc/44/ns/net"), 42, &in_pod).unwrap_err();
        assert!(e.contains("nor a container of the pod"), "{e}");
    }
}
