//! What a node shim that died leaves behind, and its clean-up by the next one.
//!
//! containerd deletes the tasks of a shim it saw die (`containerd-shim-wasmedge-v1 delete`
//! in each bundle, which removes the container's mount and cgroup). What containerd no
//! longer knows (its state lost, or a bundle already gone) only the shims can find: so each
//! node shim keeps a record of every container it serves in its run directory
//! (`<run dir>/containers/<id>`: the cgroup, the rootfs, and for a Linux container runc's
//! state root), and a node shim that starts removes, for every run directory whose shim is
//! dead, the recorded Linux containers from runc (`runc delete --force`: their processes,
//! state and cgroups), the recorded cgroups (killing what is still in them) and mounts, then
//! the directory. A record whose container runc could not delete stays, with its directory,
//! for the next sweep.
//!
//! Only the dead shims of this shim's own containerd are swept: a host can run several
//! containerds (each with its own shims, in the same `/run/wasmedge-aot-shim`), and another
//! containerd deletes its own dead shims' tasks, or knows why it has not yet. A shim records
//! its containerd's address in its state file; a state without one (written by an older
//! shim) is never swept. A directory without a state file whose shim is gone (it exited when
//! idle before shims removed their directories, or died while it set up) and that records no
//! container holds nothing of any containerd's, and is removed whichever containerd it was
//! for.
//!
//! A run directory is its shim's while the shim lives: the shim holds an `flock` of its
//! [`LOCK_FILE`] from before it writes anything there until it exits ([`RunDir`]), and
//! whoever cleans up or removes a directory (the sweep, the idle exit) holds that lock first,
//! taken without waiting: a directory whose lock another process holds is a live shim's, and
//! is left alone. The state file and the socket cannot tell: a starting shim makes its
//! directory before it writes its state and before the framework binds its socket (a sweep
//! that went by them once removed a starting shim's directory under it). A directory is
//! removed under its lock, the lock file last, then the (by then empty) directory: a shim
//! that opened the lock file before must find it no longer at its path once it holds it, and
//! takes a new one (see [`RunDir::take`]). A shim older than the lock holds none: the sweep
//! makes the lock file in its directory, and only its state file and socket protect it.
//!
//! A record names its container by names that a new container of the same id has too: runc's
//! `<root>/<id>`, the cgroup (`/<namespace>/<id>` from `ctr`) and the rootfs under the bundle
//! (`<namespace>/<id>`). A user who runs `ctr run ... foo` again after the shim of the old
//! `foo` died gets a new shim whose sweep of the old record runs while it creates the new
//! `foo`. So the sweep is planned before the shim serves ([`plan`]): the ids it will go
//! through are [`Pending`] from then on, a create of such an id waits until the sweep is done
//! with it, and the sweep acts on no other id. It therefore never acts on an id this shim
//! serves or is creating: the old container's leftovers go first, the new container after.
//!
//! Not covered: a record carries no identity of its container instance (the bundle
//! directory's inode could be one), so a container of a recorded id that another live shim
//! runs is not protected. That takes two node shims of one namespace (an upgrade), the old
//! one dying, its `foo` run again on the new one, and a third shim starting before the dead
//! directory is swept.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use tokio::sync::watch;

use crate::identity::{live_shim, STATE_FILE};
pub use crate::records::Record;

/// The directory of container records in a run directory.
pub const CONTAINERS_DIR: &str = "containers";
/// The file in a run directory whose `flock` its shim holds while it lives.
pub const LOCK_FILE: &str = "shim.lock";
/// Most bytes of a record read back.
const RECORD_MAX: usize = 16 * 1024;
/// How often [`RunDir::take`] tries again a lock another process holds.
const TAKE_RETRY: Duration = Duration::from_millis(10);

/// A run directory and the lock of it this process holds: no other process removes the
/// directory or cleans up after its shim meanwhile (see the module docs).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    lock: Flock<File>,
}

impl RunDir {
    /// Takes the run directory `dir` for a shim's life: makes it (`make`, which may find it
    /// made) and holds its lock. While another process holds the lock (a sweep removing the
    /// directory of a dead shim of the same name, or another daemon of the same socket that
    /// is starting too) it tries again until `give_up` says so or `timeout` is over: `None`.
    pub fn take(
        dir: &Path,
        make: impl Fn(&Path) -> io::Result<()>,
        mut give_up: impl FnMut() -> bool,
        timeout: Duration,
    ) -> io::Result<Option<RunDir>> {
        let deadline = Instant::now() + timeout;
        loop {
            make(dir)?;
            match RunDir::try_take(dir) {
                Ok(Some(held)) => return Ok(Some(held)),
                // Removed (or replaced) by its last holder meanwhile: make it again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                    continue
                }
                Err(e) => return Err(e),
                Ok(None) => {}
            }
            if give_up() || Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(TAKE_RETRY);
        }
    }

    /// One attempt at the lock of `dir`, without waiting; `None` while another process holds
    /// it. Makes the lock file if there is none (a directory of a shim older than the lock),
    /// never the directory: an error of kind `NotFound` when `dir` or the lock file held is
    /// no longer there (its holder removed it meanwhile).
    pub fn try_take(dir: &Path) -> io::Result<Option<RunDir>> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(io::Error::from(e)),
        };
        // The file may have been removed with its directory between the open and the lock.
        let held = lock.metadata()?;
        let now = std::fs::symlink_metadata(&path)?;
        if now.dev() != held.dev() || now.ino() != held.ino() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} was replaced", path.display()),
            ));
        }
        Ok(Some(RunDir {
            path: dir.to_path_buf(),
            lock,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory: all but the lock file, the lock file, then the directory,
    /// which a shim that took it meanwhile (a new lock file) keeps: `false` then.
    pub fn remove(self) -> io::Result<bool> {
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_name() == LOCK_FILE {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        std::fs::remove_file(self.path.join(LOCK_FILE))?;
        let removed = match std::fs::remove_dir(&self.path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => false,
            Err(e) => return Err(e),
        };
        drop(self.lock);
        Ok(removed)
    }
}

fn record_path(run_dir: &Path, id: &str) -> Option<PathBuf> {
    // containerd ids are `[A-Za-z0-9_.-]+`; anything else is never a file name of ours.
    crate::is_plain_name(id).then(|| run_dir.join(CONTAINERS_DIR).join(id))
}

/// Records a container the shim of `run_dir` serves.
pub fn record(run_dir: &Path, r: &Record) -> std::io::Result<()> {
    let Some(path) = record_path(run_dir, &r.id) else {
        return Ok(());
    };
    let dir = run_dir.join(CONTAINERS_DIR);
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    wasmedge_aot_cache::atomic::write_atomic(
        &path,
        &serde_json::to_vec(r)?,
        0o600,
        wasmedge_aot_cache::atomic::Durability::BestEffort,
    )
}

/// Forgets a container (deleted).
pub fn forget(run_dir: &Path, id: &str) {
    if let Some(path) = record_path(run_dir, id) {
        let _ = std::fs::remove_file(path);
    }
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_slice(&wasmedge_aot_cache::atomic::read_small(path, RECORD_MAX)?).ok()
}

/// The ids the sweep has yet to go through, with how many records of each (several dead
/// shims may have recorded one id), shared by the sweep and the shim's creates.
#[derive(Debug, Clone)]
pub struct Pending(Arc<watch::Sender<HashMap<String, usize>>>);

impl Default for Pending {
    fn default() -> Pending {
        Pending(Arc::new(watch::Sender::new(HashMap::new())))
    }
}

impl Pending {
    /// Waits until the sweep is done with `id` (at once if it has no record of it); `false`
    /// if it still is not after `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration) -> bool {
        let mut pending = self.0.subscribe();
        // An error is a sender gone, which changes nothing any more: done too.
        let done = pending.wait_for(|p| !p.contains_key(id));
        let waited = tokio::time::timeout(timeout, done).await;
        waited.is_ok()
    }

    fn add(&self, id: &str) {
        self.0
            .send_modify(|p| *p.entry(id.to_string()).or_default() += 1);
    }

    /// The sweep is done with one record of `id`.
    fn done(&self, id: &str) {
        self.0.send_if_modified(|p| {
            let Some(n) = p.get_mut(id) else {
                return false;
            };
            *n -= 1;
            if *n > 0 {
                return false;
            }
            p.remove(id);
            true
        });
    }

    fn clear(&self) {
        self.0.send_if_modified(|p| {
            let changed = !p.is_empty();
            p.clear();
            changed
        });
    }
}

/// A record read back, and the file it is in.
struct Found {
    path: PathBuf,
    record: Record,
}

/// The sweep of dead shims' run directories, as [`plan`] read them; [`Sweep::run`] does it.
pub struct Sweep {
    /// This shim's containerd's address.
    containerd: String,
    dirs: Vec<(PathBuf, Vec<Found>)>,
    /// Directories of gone shims without a state file or records (see the module docs).
    empty: Vec<PathBuf>,
    pending: Pending,
}

/// Reads which run directories under `state_root` belong to dead shims of the containerd at
/// `containerd` (never `own`, nor a live shim's) and what they recorded, before the shim
/// serves: from then on, a create of a recorded id waits for the sweep
/// ([`Sweep::pending`]). Only reads small files.
pub fn plan(state_root: &Path, own: Option<&Path>, containerd: &str) -> Sweep {
    let pending = Pending::default();
    let (mut dirs, mut empty) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(state_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = entry.path();
        if Some(dir.as_path()) == own {
            continue;
        }
        if is_empty_and_gone(&dir) {
            empty.push(dir);
            continue;
        }
        if !is_dead(&dir, containerd) {
            continue;
        }
        let found = records(&dir);
        for f in &found {
            pending.add(&f.record.id);
        }
        dirs.push((dir, found));
    }
    Sweep {
        containerd: containerd.to_string(),
        dirs,
        empty,
        pending,
    }
}

fn records(dir: &Path) -> Vec<Found> {
    std::fs::read_dir(dir.join(CONTAINERS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            read_record(&path).map(|record| Found { path, record })
        })
        .collect()
}

/// Whether a shim already answers on `socket` (`unix:///path` or a path).
pub(crate) fn socket_in_use(socket: &str) -> bool {
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Whether `dir` is the run directory of a dead shim of the containerd at `containerd`. Only
/// a run directory with a state file is one a shim finished setting up; one without may
/// belong to a shim that is starting now.
fn is_dead(dir: &Path, containerd: &str) -> bool {
    crate::identity::state_in(dir).is_some_and(|state| state.containerd == containerd)
        && live_shim(dir, crate::SHIM_BINARY).is_none()
}

/// Whether `dir` is a run directory without a state file or records whose shim is gone: it
/// has the `address` file a shim writes, and nothing answers on that socket. Only a look at
/// the files: a shim starting now has neither its state nor its socket yet, and only its
/// lock tells ([`Sweep::run`] holds it when it asks again).
fn is_empty_and_gone(dir: &Path) -> bool {
    if dir.join(STATE_FILE).exists() || !records(dir).is_empty() {
        return false;
    }
    match std::fs::read_to_string(dir.join("address")) {
        Ok(socket) => !socket_in_use(socket.trim()),
        Err(_) => false,
    }
}

impl Sweep {
    /// The ids the sweep has yet to go through.
    pub fn pending(&self) -> Pending {
        self.pending.clone()
    }

    /// Cleans up after every planned dead shim, on a blocking thread of the shim's runtime.
    /// Returns the run directories removed.
    pub fn run(mut self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        for (dir, found) in std::mem::take(&mut self.dirs) {
            // Under the directory's lock, whether its shim lives is read again now, from its
            // state file: a shim that took the directory over after the plan (same namespace
            // and socket) holds the lock or has written its state, and its directory stays (a
            // list of live shims taken before the loop once had another shim's new directory
            // removed under it).
            let held = match take(&dir) {
                Some(held) if is_dead(&dir, &self.containerd) => held,
                _ => {
                    for f in &found {
                        self.pending.done(&f.record.id);
                    }
                    continue;
                }
            };
            let mut kept = 0;
            for f in found {
                let cleaned = clean_up(&f.record, &dir);
                self.pending.done(&f.record.id);
                if cleaned {
                    let _ = std::fs::remove_file(&f.path);
                } else {
                    kept += 1;
                }
            }
            if kept > 0 {
                log::warn!(
                    "{}: {kept} container(s) left for the next sweep",
                    dir.display()
                );
                continue;
            }
            remove(held, &mut removed);
        }
        for dir in std::mem::take(&mut self.empty) {
            // Read again too, under the lock: a shim of that socket may have started since.
            if let Some(held) = take(&dir).filter(|_| is_empty_and_gone(&dir)) {
                remove(held, &mut removed);
            }
        }
        removed
    }
}

/// The lock of the run directory `dir` if no live shim holds it (see the module docs).
fn take(dir: &Path) -> Option<RunDir> {
    match RunDir::try_take(dir) {
        Ok(held) => held,
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!("lock {}: {e}", dir.join(LOCK_FILE).display());
            None
        }
    }
}

fn remove(held: RunDir, removed: &mut Vec<PathBuf>) {
    let dir = held.path().to_path_buf();
    match held.remove() {
        Ok(true) => {
            log::info!("removed {}: its shim is gone", dir.display());
            removed.push(dir);
        }
        Ok(false) => {}
        Err(e) => log::warn!("remove {}: {e}", dir.display()),
    }
}

impl Drop for Sweep {
    /// Done, or gone (a panic): no create waits for it any more.
    fn drop(&mut self) {
        self.pending.clear();
    }
}

/// Removes what the dead shim of `dir` recorded of one container; `false` when runc could
/// not delete it (its processes may still run): the record stays for the next sweep.
fn clean_up(r: &Record, dir: &Path) -> bool {
    if let Some(root) = &r.runc_root {
        // runc is driven through the shim's async client: from this blocking thread, on
        // the shim's runtime (whose own thread drives its I/O).
        let deleted = match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.block_on(crate::task::linux::force_delete(root, &r.id)),
            Err(_) => Err("no runtime to run runc delete on".into()),
        };
        if let Err(e) = deleted {
            log::warn!("container {} of {}: {e}", r.id, dir.display());
            return false;
        }
    }
    if let Some(cgroup) = &r.cgroup {
        crate::cgroup::remove_recorded(cgroup);
    }
    if let Some(rootfs) = &r.rootfs {
        let _ = containerd_shim::mount::umount_recursive(rootfs.to_str(), libc::MNT_DETACH);
    }
    log::info!(
        "cleaned up container {} of the dead shim of {}",
        r.id,
        dir.display()
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The containerd of the tests' shims.
    const CONTAINERD: &str = "/run/containerd/containerd.sock";

    /// A dead shim's run directory under `root` (its state names pid 1, which is no shim)
    /// with a record of each of `ids` that names nothing to clean up.
    fn dead_shim(root: &Path, name: &str, ids: &[&str]) -> PathBuf {
        dead_shim_of(root, name, ids, CONTAINERD)
    }

    fn dead_shim_of(root: &Path, name: &str, ids: &[&str], containerd: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join(CONTAINERS_DIR)).unwrap();
        std::fs::write(
            dir.join(STATE_FILE),
            format!(
                r#"{{"pid": 1, "namespace": "x", "group": "g", "version": "0", "identity": {{"shim": null, "runner": null, "config": "none"}}, "tasks": 1, "containerd": "{containerd}"}}"#
            ),
        )
        .unwrap();
        for id in ids {
            let r = Record {
                id: id.to_string(),
                cgroup: None,
                rootfs: None,
                runc_root: None,
            };
            record(&dir, &r).unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn a_create_of_a_recorded_id_waits_until_the_sweep_is_done_with_it() {
        let root = tempfile::tempdir().unwrap();
        let first = dead_shim(root.path(), "ns-a", &["foo", "bar"]);
        let second = dead_shim(root.path(), "ns-b", &["foo"]);
        let own = dead_shim(root.path(), "ns-own", &["mine"]);
        // A directory a shim is still setting up (no state file yet) is not a dead shim's.
        std::fs::create_dir_all(root.path().join("ns-new").join(CONTAINERS_DIR)).unwrap();

        let sweep = plan(root.path(), Some(&own), CONTAINERD);
        let pending = sweep.pending();
        let short = Duration::from_millis(20);
        for id in ["foo", "bar"] {
            assert!(!pending.wait(id, short).await, "{id} is the sweep's first");
        }
        for id in ["mine", "other"] {
            assert!(pending.wait(id, short).await, "{id}: nothing to wait for");
        }

        let waiter = {
            let pending = pending.clone();
            tokio::spawn(async move { pending.wait("foo", Duration::from_secs(10)).await })
        };
        let removed = tokio::task::spawn_blocking(move || sweep.run())
            .await
            .unwrap();
        assert!(waiter.await.unwrap(), "done with foo once the sweep is");
        assert!(pending.wait("bar", short).await);
        let mut removed = removed;
        removed.sort();
        assert_eq!(removed, [first, second]);
        assert!(own.join(CONTAINERS_DIR).join("mine").exists());
        assert!(root.path().join("ns-new").exists());
    }

    #[test]
    fn an_unfinished_sweep_holds_no_create_once_it_is_gone() {
        let root = tempfile::tempdir().unwrap();
        dead_shim(root.path(), "ns-a", &["foo"]);
        let sweep = plan(root.path(), None, CONTAINERD);
        let pending = sweep.pending();
        assert!(pending.0.borrow().contains_key("foo"));
        drop(sweep);
        assert!(pending.0.borrow().is_empty());
    }

    /// Holds the lock of `dir`'s lock file as its shim does, for as long as it is kept.
    fn hold_lock(dir: &Path) -> Flock<File> {
        let file = File::create(dir.join(LOCK_FILE)).unwrap();
        Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap()
    }

    #[tokio::test]
    async fn no_sweep_removes_the_directory_of_a_shim_that_is_starting() {
        let root = tempfile::tempdir().unwrap();
        // A shim starting now: it holds its directory's lock and wrote its address, and has
        // neither written its state nor had its socket bound (the framework binds it once
        // the task service is built): the socket answers nothing yet.
        let starting = root.path().join("ns-starting");
        std::fs::create_dir_all(&starting).unwrap();
        let _starting = hold_lock(&starting);
        let unbound = root.path().join("unbound.sock");
        std::fs::write(
            starting.join("address"),
            format!("unix://{}", unbound.display()),
        )
        .unwrap();
        // A new shim of a dead shim's socket, which took the dead shim's directory over and
        // has not written its own state yet: the state there names the dead shim.
        let taken_over = dead_shim(root.path(), "ns-taken-over", &["old"]);
        let _taken_over = hold_lock(&taken_over);

        let sweep = plan(root.path(), None, CONTAINERD);
        let pending = sweep.pending();
        let removed = tokio::task::spawn_blocking(move || sweep.run())
            .await
            .unwrap();
        assert_eq!(removed, Vec::<PathBuf>::new());
        assert!(
            starting.join("address").exists(),
            "the starting shim's was swept"
        );
        assert!(
            taken_over.join(CONTAINERS_DIR).join("old").exists(),
            "the shim that took the directory over had it swept"
        );
        assert!(
            pending.wait("old", Duration::ZERO).await,
            "done with it all the same"
        );
    }

    #[test]
    fn a_run_directory_is_one_shims_and_its_removal_leaves_the_next_shim_a_new_one() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("ns-a");
        let make = |d: &Path| std::fs::create_dir_all(d);
        let first = RunDir::take(&dir, make, || false, Duration::ZERO)
            .unwrap()
            .expect("nobody holds it");
        std::fs::write(dir.join("address"), "unix:///nowhere.sock").unwrap();
        record(
            &dir,
            &Record {
                id: "a".into(),
                cgroup: None,
                rootfs: None,
                runc_root: None,
            },
        )
        .unwrap();
        assert!(
            RunDir::try_take(&dir).unwrap().is_none(),
            "held by the first"
        );
        let mut asked = 0;
        let waited = RunDir::take(
            &dir,
            make,
            || {
                asked += 1;
                asked > 2
            },
            Duration::from_secs(10),
        );
        assert!(waited.unwrap().is_none(), "given up while held");
        assert_eq!(asked, 3);

        // A shim that opened the lock file before the removal holds a file of no directory.
        let stale = File::open(dir.join(LOCK_FILE)).unwrap();
        assert!(first.remove().unwrap());
        assert!(!dir.exists());
        let stale = Flock::lock(stale, FlockArg::LockExclusiveNonblock).unwrap();
        assert!(RunDir::try_take(&dir).is_err_and(|e| e.kind() == io::ErrorKind::NotFound));
        let next = RunDir::take(&dir, make, || false, Duration::ZERO)
            .unwrap()
            .expect("a new directory, whose lock is not the stale one");
        assert_eq!(next.path(), dir);
        assert!(dir.join(LOCK_FILE).exists() && !dir.join(CONTAINERS_DIR).exists());
        drop(stale);
    }

    #[tokio::test]
    async fn only_this_containerds_dead_shims_and_gone_empty_directories_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let ours = dead_shim(root.path(), "ns-ours", &["a"]);
        let theirs = dead_shim_of(root.path(), "ns-theirs", &["b"], "/other/containerd.sock");
        // Written before states named their containerd: whose it is, nobody can tell.
        let older = dead_shim_of(root.path(), "ns-older", &["c"], "");
        std::fs::write(
            older.join(STATE_FILE),
            r#"{"pid": 1, "namespace": "x", "group": "g", "version": "0", "identity": {"shim": null, "runner": null, "config": "none"}, "tasks": 1}"#,
        )
        .unwrap();
        // A shim that exited when idle: no state, no records, nothing on its socket.
        let idle = root.path().join("ns-idle");
        std::fs::create_dir_all(idle.join(CONTAINERS_DIR)).unwrap();
        let gone = root.path().join("gone.sock");
        std::fs::write(idle.join("address"), format!("unix://{}", gone.display())).unwrap();
        // A shim serving on its socket that has not written its state yet.
        let starting = root.path().join("ns-starting");
        std::fs::create_dir_all(&starting).unwrap();
        let listening = root.path().join("listening.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&listening).unwrap();
        std::fs::write(
            starting.join("address"),
            format!("unix://{}", listening.display()),
        )
        .unwrap();

        let sweep = plan(root.path(), None, CONTAINERD);
        let pending = sweep.pending();
        assert!(
            !pending.wait("a", Duration::ZERO).await,
            "ours is the sweep's"
        );
        assert!(pending.wait("b", Duration::ZERO).await, "theirs is not");
        let removed = tokio::task::spawn_blocking(move || sweep.run())
            .await
            .unwrap();
        let mut removed = removed;
        removed.sort();
        assert_eq!(removed, [idle, ours]);
        for kept in [&theirs, &older, &starting] {
            assert!(kept.exists(), "{} was swept", kept.display());
        }
    }
}
