//! The container's cgroup: created with the spec's limits and entered by the container
//! process before it loads anything, so every byte it allocates is charged to the
//! container; watched for OOM kills, read for `stats`, updated, and removed on delete.
//!
//! Two drivers place it, as runc's two do. cgroupfs: the shim makes the directory the path
//! names under each hierarchy's root, and the process is born in it on cgroup v2
//! (`clone3(CLONE_INTO_CGROUP)`) or joins it by itself on v1 (see the runner's
//! `process::cgroup`). systemd (a `slice:prefix:name` path): systemd makes a transient scope
//! and moves the process into it before the process reads its plan ([`systemd`]).

pub mod devices;
pub mod metrics;
pub mod systemd;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use cgroups_rs::fs::{hierarchies, Cgroup};
use oci_spec::runtime::{LinuxResources, Spec};

/// A container's cgroup, by the driver that places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPath {
    /// cgroupfs: the shim's directory, relative to each hierarchy's root.
    Fs(String),
    /// systemd: a transient scope that systemd makes and removes.
    Systemd(systemd::Scope),
}

impl CgroupPath {
    /// `linux.cgroupsPath` as the driver its form names: `slice:prefix:name` is systemd's
    /// (what CRI writes for a pod whose cgroup parent is a slice), anything else a
    /// directory, which must stay under the hierarchies' roots.
    pub fn parse(path: &str) -> Result<CgroupPath, String> {
        let parts: Vec<&str> = path.split(':').collect();
        if parts.len() == 3 && (parts[0].is_empty() || parts[0].ends_with(".slice")) {
            return systemd::Scope::parse(path).map(CgroupPath::Systemd);
        }
        // The shim creates, kills the processes of and removes the cgroup at the path.
        if Path::new(path).components().any(|c| {
            !matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        }) {
            return Err(format!(
                "{path:?} climbs out of the cgroup hierarchy (a '..' or '.' component)"
            ));
        }
        Ok(CgroupPath::Fs(path.to_owned()))
    }

    /// The path as the spec gave it (what a record keeps, and [`CgroupPath::parse`] reads).
    pub fn as_spec(&self) -> &str {
        match self {
            CgroupPath::Fs(p) => p,
            CgroupPath::Systemd(s) => &s.path,
        }
    }

    /// Whether systemd places this cgroup (runc's `--systemd-cgroup`).
    pub fn is_systemd(&self) -> bool {
        matches!(self, CgroupPath::Systemd(_))
    }

    /// The cgroup's directory relative to each hierarchy's root.
    fn dir(&self) -> &str {
        match self {
            CgroupPath::Fs(p) => relative(p),
            CgroupPath::Systemd(s) => s.dir.to_str().unwrap_or_default(),
        }
    }
}

fn relative(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// Whether the node runs cgroup v2 alone.
pub fn is_v2() -> bool {
    hierarchies::is_cgroup2_unified_mode()
}

/// Creates a cgroupfs cgroup (in every hierarchy on cgroup v1) with the spec's resources and
/// its device policy. A cgroup that exists with processes in it is refused, as runc refuses
/// it: the shim kills what is in the container's cgroup when the container goes. Returns,
/// on cgroup v2, the cgroup's directory, for `clone3(CLONE_INTO_CGROUP)`: the container
/// process is born in it, under its device filter, and never moves.
pub fn create(
    path: &str,
    spec: &Spec,
    devices: &devices::Policy,
) -> Result<(Cgroup, Option<OwnedFd>), String> {
    if populated(Path::new(relative(path))) {
        return Err("the cgroup exists and has processes in it: it is not this container's".into());
    }
    let cg = Cgroup::new(hierarchies::auto(), relative(path)).map_err(|e| e.to_string())?;
    let made = || -> Result<Option<OwnedFd>, String> {
        if let Some(res) = resources(spec) {
            apply(&cg, res)?;
        }
        let dir = v2_dir(&cg).map_err(|e| e.to_string())?;
        apply_devices(&cg, dir.as_ref().map(|d| d.as_fd()), devices)?;
        Ok(dir)
    };
    match made() {
        Ok(dir) => Ok((cg, dir)),
        Err(e) => {
            // Empty still: nothing of the container has been in it.
            let _ = cg.delete();
            Err(e)
        }
    }
}

/// Puts the device policy on the cgroup: on v2 our program on its directory `v2_dir`
/// (replacing systemd's, on a scope), on v1 the devices controller's lists, read back.
/// Without a devices controller the rules cannot hold, and the create fails.
fn apply_devices(
    cg: &Cgroup,
    v2_dir: Option<std::os::fd::BorrowedFd<'_>>,
    policy: &devices::Policy,
) -> Result<(), String> {
    use cgroups_rs::fs::{devices::DevicesController, Controller};
    if let Some(dir) = v2_dir {
        let prog = devices::bpf::program_for(policy)
            .map_err(|e| format!("linux.resources.devices: load the device program: {e}"))?;
        return devices::bpf::install(dir, &prog)
            .map_err(|e| format!("linux.resources.devices: attach the device program: {e}"));
    }
    let controller = cg.controller_of::<DevicesController>().ok_or(
        "linux.resources.devices: this node has no devices cgroup controller to hold the rules",
    )?;
    devices::apply_v1(controller.path(), policy)
        .map_err(|e| format!("linux.resources.devices: {e}"))
}

/// Why a process did not get into its scope, and whether the scope was made (and so is the
/// container's, to remove).
#[derive(Debug)]
pub struct ScopeError {
    pub started: bool,
    pub message: String,
}

/// Has systemd put process `pid` in its scope with the spec's limits, then writes them to the
/// scope's cgroup files too (delegated to us), as runc's systemd driver does, for what
/// systemd has no property for. Blocking: it talks to systemd and waits for the move.
/// The device policy goes on last, replacing the program systemd attached for the unit's
/// `DeviceAllow` with ours, which says the same and what systemd cannot say.
pub fn enter_scope(
    scope: &systemd::Scope,
    pid: u32,
    spec: &Spec,
    devices: &devices::Policy,
) -> Result<Cgroup, ScopeError> {
    let res = resources(spec);
    let failed = |started| move |message| ScopeError { started, message };
    scope.start(pid, res, devices).map_err(failed(false))?;
    scope.wait_until_in(pid).map_err(failed(true))?;
    let cg = Cgroup::load(hierarchies::auto(), scope.dir.to_str().unwrap_or_default());
    let in_scope = |e: String| failed(true)(format!("{}: {e}", scope.unit));
    if let Some(res) = res {
        apply(&cg, res).map_err(in_scope)?;
    }
    let dir = v2_dir(&cg).map_err(|e| in_scope(e.to_string()))?;
    apply_devices(&cg, dir.as_ref().map(|d| d.as_fd()), devices).map_err(in_scope)?;
    Ok(cg)
}

/// Writes the spec's resources to the cgroup's files: on v2 with runc's conversions
/// ([`v2::apply`]), on v1 through containerd's shim library.
fn apply(cg: &Cgroup, res: &LinuxResources) -> Result<(), String> {
    if cg.v2() {
        let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(relative(cg.path()));
        return v2::apply(&dir, res);
    }
    containerd_shim::cgroup::update_resources(cg, res).map_err(|e| e.to_string())
}

fn resources(spec: &Spec) -> Option<&LinuxResources> {
    spec.linux().as_ref().and_then(|l| l.resources().as_ref())
}

/// The cgroup at `path` as it is: a Linux container's, which runc made, or a scope.
pub fn load(path: &CgroupPath) -> Cgroup {
    Cgroup::load(hierarchies::auto(), path.dir())
}

/// Changes a running container's limits (containerd's `Update`): systemd's properties for a
/// scope, then the cgroup files, as at create.
pub fn update(path: &CgroupPath, res: &LinuxResources) -> Result<(), String> {
    if let CgroupPath::Systemd(scope) = path {
        scope.update(res)?;
    }
    apply(&load(path), res)
}

/// On cgroup v2, the cgroup's directory, opened for `clone3(CLONE_INTO_CGROUP)`: the
/// container process is born in it. `None` on v1, where the process joins by itself.
pub fn v2_dir(cg: &Cgroup) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    if !cg.v2() {
        return Ok(None);
    }
    let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(relative(cg.path()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&dir)?;
    Ok(Some(f.into()))
}

/// Whether a process is left in the cgroup at `dir` (relative to the hierarchies' roots).
pub fn populated(dir: &Path) -> bool {
    if is_v2() {
        let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(dir);
        return v2::populated(&dir).unwrap_or(false);
    }
    !Cgroup::load(hierarchies::auto(), dir.to_str().unwrap_or_default())
        .procs()
        .is_empty()
}

/// What a cgroup's removal cost, for the delete's phase line: the wait for its processes to
/// be gone (reading what is left, killing it) and the removal itself (`rmdir` of each
/// hierarchy's directory, or a scope's stop).
#[derive(Debug, Default, Clone, Copy)]
pub struct Removal {
    pub drain_us: u128,
    pub remove_us: u128,
}

/// Removes the cgroup, killing anything still in it first (`cgroup.kill` on v2, SIGKILL to
/// each process it lists on v1), so that no process of the container outlives its delete
/// and no directory outlives a shim that died. A scope is then stopped, which makes
/// systemd remove it.
pub fn remove(path: &CgroupPath) -> Removal {
    let mut timed = Removal::default();
    if let Err(e) = kill_and_remove(path, &mut timed) {
        log::warn!("remove cgroup {}: {e}", path.as_spec());
    }
    timed
}

/// [`remove`] for a path a record kept (the sweep, `shim delete`): one that does not parse
/// is left alone, as the shim would not have made it.
pub fn remove_recorded(path: &str) {
    match CgroupPath::parse(path) {
        Ok(p) => {
            remove(&p);
        }
        Err(e) => log::warn!("recorded cgroup {path:?} left alone: {e}"),
    }
}

fn kill_and_remove(path: &CgroupPath, timed: &mut Removal) -> Result<(), String> {
    let killed = if is_v2() {
        let dir = Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(path.dir());
        // systemd removes a scope's directory itself when it stops the unit.
        v2::drain_timed(&dir, !path.is_systemd(), timed).map_err(|e| e.to_string())
    } else {
        drain_v1(path, timed)
    };
    if let CgroupPath::Systemd(scope) = path {
        let stopping = std::time::Instant::now();
        stop_bounded(scope)?;
        timed.remove_us += stopping.elapsed().as_micros();
    }
    killed
}

/// Stops a scope, waiting for systemd at most [`STOP_WAIT`]: the scope is empty by then (its
/// processes killed), and systemd removes an empty transient scope by itself, so a stuck
/// systemd must not hold up a delete. The call goes on in its thread.
fn stop_bounded(scope: &systemd::Scope) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let s = scope.clone();
    std::thread::Builder::new()
        .name("scope-stop".into())
        .spawn(move || {
            let _ = tx.send(s.stop());
        })
        .map_err(|e| format!("stop {}: {e}", scope.unit))?;
    rx.recv_timeout(STOP_WAIT).unwrap_or_else(|_| {
        Err(format!(
            "stop {}: systemd did not answer within {STOP_WAIT:?}",
            scope.unit
        ))
    })
}

/// How long a delete waits for systemd to stop a scope.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn drain_v1(path: &CgroupPath, timed: &mut Removal) -> Result<(), String> {
    let draining = std::time::Instant::now();
    let cg = load(path);
    // The usual case, a container whose processes are gone: the kernel removes an empty
    // cgroup's directory and refuses (EBUSY) one with a process in it, so an `rmdir` in each
    // hierarchy is the check, without reading a process list per hierarchy first.
    if !path.is_systemd() && remove_if_empty_v1(&cg) {
        timed.remove_us = draining.elapsed().as_micros();
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let procs = cg.procs();
        if procs.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "{} processes still in it after SIGKILL",
                procs.len()
            ));
        }
        for p in procs {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    timed.drain_us = draining.elapsed().as_micros();
    if path.is_systemd() {
        return Ok(());
    }
    let removing = std::time::Instant::now();
    let removed = cg.delete().map_err(|e| e.to_string());
    timed.remove_us = removing.elapsed().as_micros();
    removed
}

/// Removes the v1 cgroup's directory in each hierarchy; `false` when one stays (a process or
/// a child cgroup in it, or another error): what is left is then drained and removed.
fn remove_if_empty_v1(cg: &Cgroup) -> bool {
    cg.subsystems().iter().fold(true, |all, sub| {
        let removed = match std::fs::remove_dir(sub.to_controller().path()) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        all && removed
    })
}

/// cgroup v2 operations on a cgroup's directory, whatever the hierarchy is mounted at (the
/// tests run them on the hybrid hierarchy at `/sys/fs/cgroup/unified` of a v1 node).
pub mod v2 {
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// How long [`remove`] waits for the killed processes to leave.
    const DRAIN: Duration = Duration::from_secs(5);

    /// Writes the spec's resources to the v2 cgroup at `dir` as runc's fs2 driver does:
    /// v1's values converted (cpu shares to `cpu.weight`, memory + swap to swap alone, -1 to
    /// `max`), `unified` written as given. A resource v2 has no file for fails, naming it:
    /// never a silent downgrade.
    pub fn apply(dir: &Path, r: &oci_spec::runtime::LinuxResources) -> Result<(), String> {
        let write = |file: &str, value: String| {
            std::fs::write(dir.join(file), &value)
                .map_err(|e| format!("{}: write {value:?}: {e}", dir.join(file).display()))
        };
        let max = |v: i64| {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(m) = r.memory() {
            let limit = m.limit().unwrap_or(0);
            match m.swap().unwrap_or(0) {
                0 => {}
                -1 => write("memory.swap.max", "max".into())?,
                swap if limit > 0 && swap >= limit => {
                    write("memory.swap.max", (swap - limit).to_string())?
                }
                swap if limit > 0 => {
                    return Err(format!(
                        "linux.resources.memory.swap {swap} is below memory.limit {limit} \
                         (swap is memory + swap)"
                    ))
                }
                _ => {
                    return Err(
                        "linux.resources.memory.swap without memory.limit: cgroup v2 limits \
                         swap alone"
                            .into(),
                    )
                }
            }
            if limit != 0 {
                write("memory.max", max(limit))?;
            }
            if let Some(low) = m.reservation().filter(|v| *v != 0) {
                write("memory.low", max(low))?;
            }
            for (field, set) in [
                ("kernel", m.kernel().is_some()),
                ("kernelTCP", m.kernel_tcp().is_some()),
                ("swappiness", m.swappiness().is_some()),
            ] {
                if set {
                    return Err(format!(
                        "linux.resources.memory.{field}: cgroup v2 has no such limit"
                    ));
                }
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(shares) = c.shares().filter(|s| *s != 0) {
                write("cpu.weight", super::systemd::cpu_weight(shares).to_string())?;
            }
            let (quota, period) = (c.quota().unwrap_or(0), c.period().unwrap_or(0));
            if quota != 0 || period != 0 {
                let mut v = if quota > 0 {
                    quota.to_string()
                } else {
                    "max".into()
                };
                if period != 0 {
                    v = format!("{v} {period}");
                }
                write("cpu.max", v)?;
            }
            if let Some(cpus) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
                write("cpuset.cpus", cpus.to_string())?;
            }
            if let Some(mems) = c.mems().as_deref().filter(|v| !v.is_empty()) {
                write("cpuset.mems", mems.to_string())?;
            }
            if c.realtime_runtime().is_some_and(|v| v != 0)
                || c.realtime_period().is_some_and(|v| v != 0)
            {
                return Err("linux.resources.cpu.realtime*: cgroup v2 has no such limit".into());
            }
        }
        if let Some(p) = r.pids() {
            if p.limit() != 0 {
                write("pids.max", max(p.limit()))?;
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            let size = h.page_size();
            if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!(
                    "linux.resources.hugepageLimits: page size {size:?} is not one"
                ));
            }
            write(&format!("hugetlb.{size}.max"), h.limit().to_string())?;
        }
        if let Some(io) = r.block_io() {
            if let Some(w) = io.weight().filter(|w| *w != 0) {
                // blkio's 10..1000 as io's 1..10000, runc's conversion.
                let w = 1 + (u64::from(w.clamp(10, 1000)) - 10) * 9999 / 990;
                write("io.weight", format!("default {w}"))?;
            }
            let throttles = [
                ("rbps", io.throttle_read_bps_device()),
                ("wbps", io.throttle_write_bps_device()),
                ("riops", io.throttle_read_iops_device()),
                ("wiops", io.throttle_write_iops_device()),
            ];
            for (key, devices) in throttles {
                for d in devices.iter().flatten() {
                    write(
                        "io.max",
                        format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                    )?;
                }
            }
            if io.leaf_weight().is_some()
                || io.weight_device().as_ref().is_some_and(|d| !d.is_empty())
            {
                return Err(
                    "linux.resources.blockIO.leafWeight/weightDevice: not supported on cgroup \
                     v2 by this runtime"
                        .into(),
                );
            }
        }
        if r.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
            return Err("linux.resources.rdma: not supported by this runtime".into());
        }
        if r.network().is_some() {
            return Err("linux.resources.network: cgroup v2 has no net_cls or net_prio".into());
        }
        for (key, value) in r.unified().iter().flatten() {
            // A file of this cgroup's own: no path, none of the cgroup core's files.
            if key.contains('/') || key.starts_with('.') || key.starts_with("cgroup.") {
                return Err(format!(
                    "linux.resources.unified: {key:?} is not a controller's file"
                ));
            }
            write(key, value.clone())?;
        }
        Ok(())
    }

    /// Kills every process in the cgroup and below it (`cgroup.kill`, Linux 5.14).
    pub fn kill(dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("cgroup.kill"), "1")
    }

    /// Whether a process is left in the cgroup or below (`populated` of `cgroup.events`).
    pub fn populated(dir: &Path) -> std::io::Result<bool> {
        let events = std::fs::read_to_string(dir.join("cgroup.events"))?;
        Ok(events.lines().any(|l| l == "populated 1"))
    }

    /// Kills what is left in the cgroup, waits for it to go, and removes the directory.
    /// A cgroup that is already gone is removed.
    pub fn remove(dir: &Path) -> std::io::Result<()> {
        drain(dir, true)
    }

    /// Kills what is left in the cgroup and waits for it to go; then removes the
    /// directory if `rmdir`. A cgroup that is already gone is done.
    pub fn drain(dir: &Path, rmdir: bool) -> std::io::Result<()> {
        drain_timed(dir, rmdir, &mut super::Removal::default())
    }

    /// [`drain`], its two steps timed.
    pub(super) fn drain_timed(
        dir: &Path,
        rmdir: bool,
        timed: &mut super::Removal,
    ) -> std::io::Result<()> {
        if !dir.exists() {
            return Ok(());
        }
        let draining = Instant::now();
        if populated(dir)? {
            kill(dir)?;
            let deadline = Instant::now() + DRAIN;
            while populated(dir)? {
                if Instant::now() > deadline {
                    return Err(std::io::Error::other(format!(
                        "{}: processes still in it {DRAIN:?} after cgroup.kill",
                        dir.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        timed.drain_us = draining.elapsed().as_micros();
        if !rmdir {
            return Ok(());
        }
        let removing = Instant::now();
        let removed = match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        timed.remove_us = removing.elapsed().as_micros();
        removed
    }
}

/// Watches a container's cgroup for the kernel's OOM kills, which the shim publishes as
/// containerd's `TaskOOM` (what makes Kubernetes report a container as `OOMKilled`).
///
/// cgroup v1 signals an eventfd registered on `memory.oom_control` through
/// `cgroup.event_control`; v2 modifies `memory.events`, watched with inotify. Either
/// signal is only a hint: a kill is counted when the file's `oom_kill` counter goes up
/// (v1 also signals when the memory controller is under OOM without killing, and when
/// the cgroup is removed). Registered before the container's process exists, so that no
/// kill goes unseen.
pub struct OomWatch {
    notifier: tokio::io::unix::AsyncFd<Notifier>,
    counters: std::path::PathBuf,
    kills: Option<u64>,
}

/// What the log says of a watch: what signals it and the counter it confirms kills with.
impl std::fmt::Display for OomWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.notifier.get_ref() {
            Notifier::V1(_) => "eventfd",
            Notifier::V2(_) => "inotify",
        };
        write!(f, "{how} on {}", self.counters.display())?;
        match self.kills {
            Some(n) => write!(f, ", {n} kills so far"),
            None => f.write_str(", no oom_kill counter in this kernel"),
        }
    }
}

impl std::fmt::Debug for OomWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OomWatch")
            .field("counters", &self.counters)
            .field("kills", &self.kills)
            .finish_non_exhaustive()
    }
}

enum Notifier {
    V1(nix::sys::eventfd::EventFd),
    V2(nix::sys::inotify::Inotify),
}

impl std::os::fd::AsRawFd for Notifier {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        match self {
            Notifier::V1(fd) => fd.as_fd().as_raw_fd(),
            Notifier::V2(fd) => fd.as_fd().as_raw_fd(),
        }
    }
}

impl Notifier {
    /// Consumes what is pending; `WouldBlock` once nothing is.
    fn drain(&self) -> std::io::Result<()> {
        match self {
            Notifier::V1(fd) => fd.read().map(drop),
            Notifier::V2(fd) => fd.read_events().map(drop),
        }
        .map_err(std::io::Error::from)
    }
}

impl OomWatch {
    /// Starts watching `cg`; `None` if it has no memory controller.
    /// Must be called from within the shim's tokio runtime.
    pub fn new(cg: &Cgroup) -> Result<Option<OomWatch>, String> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        use std::os::fd::AsRawFd;

        let Some(memory) = cg.controller_of::<cgroups_rs::fs::memory::MemController>() else {
            return Ok(None);
        };
        let dir = cgroups_rs::fs::Controller::path(memory);
        let (notifier, counters) = if cg.v2() {
            let counters = dir.join("memory.events");
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| format!("inotify: {e}"))?;
            inotify
                .add_watch(&counters, AddWatchFlags::IN_MODIFY)
                .map_err(|e| format!("watch {}: {e}", counters.display()))?;
            (Notifier::V2(inotify), counters)
        } else {
            let counters = dir.join("memory.oom_control");
            let control = std::fs::File::open(&counters)
                .map_err(|e| format!("open {}: {e}", counters.display()))?;
            let efd =
                EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| format!("eventfd: {e}"))?;
            // The kernel keeps its own references to both files once registered.
            let registration = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
            std::fs::write(dir.join("cgroup.event_control"), registration)
                .map_err(|e| format!("register oom event in {}: {e}", dir.display()))?;
            (Notifier::V1(efd), counters)
        };
        let kills =
            read_oom_kills(&counters).map_err(|e| format!("{}: {e}", counters.display()))?;
        // SAFETY: the notifier owns its fd, which stays open and the same until the AsyncFd
        // (and the notifier in it) is dropped.
        let notifier = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                notifier,
                tokio::io::Interest::READABLE,
            )
        }
        .map_err(|e| format!("poll oom notifications: {e}"))?;
        Ok(Some(OomWatch {
            notifier,
            counters,
            kills,
        }))
    }

    /// Waits for the next OOM kill in the cgroup. `false` once the cgroup is gone.
    pub async fn next_kill(&mut self) -> bool {
        loop {
            let Ok(mut ready) = self.notifier.readable().await else {
                return false;
            };
            match ready.try_io(|n| n.get_ref().drain()) {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return false,
            }
            // v1 signals as the cgroup runs out of memory, before the OOM killer has picked
            // and counted a victim; v2 after counting. Give v1's killer a moment.
            let patience = match self.notifier.get_ref() {
                Notifier::V1(_) => std::time::Duration::from_millis(200),
                Notifier::V2(_) => std::time::Duration::ZERO,
            };
            let deadline = tokio::time::Instant::now() + patience;
            loop {
                let Ok(kills) = read_oom_kills(&self.counters) else {
                    return false; // removed with its cgroup
                };
                match (self.kills, kills) {
                    (Some(before), Some(now)) if now > before => {
                        self.kills = Some(now);
                        return true;
                    }
                    // A kernel without the counter (before 4.13): every v1 signal is taken
                    // as a kill, as containerd's own v1 monitor takes it.
                    (_, None) | (None, _) => return true,
                    _ if tokio::time::Instant::now() >= deadline => break,
                    _ => tokio::time::sleep(std::time::Duration::from_millis(2)).await,
                }
            }
        }
    }
}

/// The `oom_kill` counter of `memory.oom_control` (v1) or `memory.events` (v2), if the
/// kernel keeps one.
fn read_oom_kills(file: &std::path::Path) -> std::io::Result<Option<u64>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cgroup v2 hierarchy of this machine: the host's if it runs v2 alone, else the
    /// hybrid one v1 hosts mount at /sys/fs/cgroup/unified.
    fn v2_root() -> Option<std::path::PathBuf> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
    }

    #[test]
    fn a_v2_cgroup_is_killed_drained_and_removed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (cgroups)");
            return;
        }
        let Some(root) = v2_root() else {
            eprintln!("skipped: no cgroup v2 hierarchy mounted");
            return;
        };
        let dir = root.join(format!("wasmedge-aot-unit-v2-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        assert!(v2::populated(&dir).unwrap());
        v2::remove(&dir).unwrap();
        assert!(!dir.exists());
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "killed by cgroup.kill"
        );
        v2::remove(&dir).unwrap();
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[tokio::test]
    async fn an_oom_kill_in_the_cgroup_is_seen_and_the_watch_ends_with_the_cgroup() {
        if !is_root() {
            eprintln!("skipped: needs root (cgroups)");
            return;
        }
        let path = format!("/wasmedge-aot-unit/oom-{}", std::process::id());
        let mut spec = oci_spec::runtime::Spec::default();
        let memory = oci_spec::runtime::LinuxMemoryBuilder::default()
            .limit(32i64 << 20)
            .build()
            .unwrap();
        let resources = oci_spec::runtime::LinuxResourcesBuilder::default()
            .memory(memory)
            .build()
            .unwrap();
        let mut linux = spec.linux().clone().unwrap_or_default();
        linux.set_resources(Some(resources));
        spec.set_linux(Some(linux));
        let runcs = devices::Policy::of_spec(&[], &[]).unwrap();
        let (cg, _) = create(&path, &spec, &runcs).unwrap();
        let mut watch = OomWatch::new(&cg).unwrap().expect("a memory controller");
        let shown = watch.to_string();
        assert!(
            shown.contains("on /sys/fs/cgroup/") && shown.contains("memory."),
            "{shown}"
        );

        // GNU tail keeps a line until it ends: 256 MiB without a newline outgrows the limit.
        let memory = cg
            .controller_of::<cgroups_rs::fs::memory::MemController>()
            .unwrap();
        let dir = cgroups_rs::fs::Controller::path(memory);
        let procs = dir.join(if cg.v2() { "cgroup.procs" } else { "tasks" });
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && head -c 268435456 /dev/zero | tail -n 1 >/dev/null",
                procs.display()
            ))
            .status()
            .await
            .unwrap();
        assert!(!status.success(), "tail was not killed: {status:?}");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next_kill()).await;
        assert_eq!(seen, Ok(true));

        remove(&CgroupPath::Fs(path.clone()));
        let ended =
            tokio::time::timeout(std::time::Duration::from_secs(5), watch.next_kill()).await;
        assert_eq!(ended, Ok(false));
        let _ = Cgroup::load(hierarchies::auto(), "wasmedge-aot-unit").delete();
    }

    #[test]
    fn v2_files_get_runcs_conversions_and_what_v2_cannot_hold_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864,"swap":134217728,"reservation":1048576},
                "cpu":{"shares":1024,"quota":-1,"period":100000,"cpus":"0-1"},
                "pids":{"limit":-1},
                "hugepageLimits":[{"pageSize":"2MB","limit":4194304}],
                "blockIO":{"weight":500},
                "unified":{"memory.high":"50000000"}}"#,
        )
        .unwrap();
        v2::apply(dir.path(), &r).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("memory.swap.max"), "67108864");
        assert_eq!(read("memory.low"), "1048576");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("cpu.max"), "max 100000");
        assert_eq!(read("cpuset.cpus"), "0-1");
        assert_eq!(read("pids.max"), "max");
        assert_eq!(read("hugetlb.2MB.max"), "4194304");
        assert_eq!(read("io.weight"), "default 4950");
        assert_eq!(read("memory.high"), "50000000");

        for (json, says) in [
            (
                r#"{"unified":{"cgroup.procs":"1"}}"#,
                "not a controller's file",
            ),
            (r#"{"unified":{"../x":"1"}}"#, "not a controller's file"),
            (r#"{"memory":{"swap":100}}"#, "without memory.limit"),
            (
                r#"{"memory":{"limit":100,"swap":50}}"#,
                "below memory.limit",
            ),
            (r#"{"memory":{"swappiness":10}}"#, "memory.swappiness"),
            (r#"{"network":{"classID":1}}"#, "linux.resources.network"),
            (
                r#"{"hugepageLimits":[{"pageSize":"../2MB","limit":1}]}"#,
                "page size",
            ),
        ] {
            let r: LinuxResources = serde_json::from_str(json).unwrap();
            let e = v2::apply(dir.path(), &r).unwrap_err();
            assert!(e.contains(says), "{json}: {e}");
        }
    }
}
