//! Image archives for the tests, and the harness's import, listing and shutdown.
//!
//! Archives are built with `wasmedge_shimctl::image` (the library behind
//! `wasmedge-shimctl image build`) into `<target>/fixtures/images`, once per test binary.
//!
//! Gotcha: `ctr images import` without a platform keeps only the host's (`linux/amd64`) and
//! silently drops a `wasip1/wasm` image ("image might be filtered out", exit status 0):
//! [`Containerd::import_image`] passes `--all-platforms`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmedge_shimctl::image::{ImageBuilder, Layout, Platform};

use super::{fixture, fixtures, namespace, Containerd};

/// The runc runtime, for the native baseline (runs get a private `--runc-root`).
pub const RUNC: &str = "io.containerd.runc.v2";

/// The runc baseline: `/hello`, the static native hello, as a `linux/amd64` image.
pub const NATIVE_HELLO: &str = "localhost/wasmedge-tests/native-hello:v1";
/// `/app.wasm` = probe.wasm as a plain `wasip1/wasm` image (Entrypoint `/app.wasm`).
pub const PROBE: &str = "localhost/wasmedge-tests/probe:v1";
/// probe.wasm as a CNCF Wasm OCI artifact (one `application/wasm` layer).
pub const PROBE_ARTIFACT: &str = "localhost/wasmedge-tests/probe:artifact";

/// An archive built for the tests: where it is and what it holds.
#[derive(Clone, Debug)]
pub struct Archive {
    pub path: PathBuf,
    pub reference: String,
    pub manifest_digest: String,
    /// The one layer's digest; for an artifact, the digest of the module itself.
    pub layer_digest: String,
}

/// Builds `builder` into `<target>/fixtures/images/<file>`, once per test binary per file.
pub fn archive(file: &str, builder: ImageBuilder) -> Archive {
    static BUILT: Mutex<Vec<Archive>> = Mutex::new(Vec::new());
    let dir = fixtures().join("images");
    let path = dir.join(file);
    let mut built = BUILT.lock().unwrap();
    if let Some(a) = built.iter().find(|a| a.path == path) {
        return a.clone();
    }
    std::fs::create_dir_all(&dir).unwrap();
    let layout: Layout = builder
        .write(&path)
        .unwrap_or_else(|e| panic!("build {}: {e}", path.display()));
    let a = Archive {
        path,
        reference: layout.reference,
        manifest_digest: layout.manifest_digest,
        layer_digest: layout.layer_digest,
    };
    built.push(a.clone());
    a
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// [`NATIVE_HELLO`]: prints `hello from native` with runc.
pub fn native_hello() -> Archive {
    archive(
        "native-hello.tar",
        ImageBuilder::image(NATIVE_HELLO)
            .platform(Platform::linux_amd64())
            .file("/hello", read(&fixture("native-hello")), 0o755)
            .entrypoint(["/hello"]),
    )
}

/// [`PROBE`]: `/app.wasm` is probe.wasm; `/etc/probe.txt` holds `probe data\n`.
pub fn probe_image() -> Archive {
    archive(
        "probe.tar",
        ImageBuilder::image(PROBE)
            .module("/app.wasm", read(&fixture("probe.wasm")))
            .file("/etc/probe.txt", b"probe data\n".to_vec(), 0o644),
    )
}

/// [`PROBE_ARTIFACT`]: probe.wasm as a Wasm OCI artifact.
pub fn probe_artifact() -> Archive {
    archive(
        "probe-artifact.tar",
        ImageBuilder::artifact(PROBE_ARTIFACT, read(&fixture("probe.wasm"))),
    )
}

impl Containerd {
    /// `ctr images import --all-platforms ARCHIVE` (wasm platforms included), once per
    /// containerd and archive; checks that the image is then listed under its reference.
    pub fn import_image(&self, archive: &Archive) {
        static IMPORTED: OnceLock<Mutex<Vec<(PathBuf, PathBuf)>>> = OnceLock::new();
        let imported = IMPORTED.get_or_init(Default::default);
        let key = (self.address.clone(), archive.path.clone());
        let mut done = imported.lock().unwrap();
        if done.contains(&key) {
            return;
        }
        self.ctr_ok(&[
            "images",
            "import",
            "--all-platforms",
            archive.path.to_str().unwrap(),
        ]);
        assert!(
            self.images().contains(&archive.reference),
            "{} not listed after import of {}",
            archive.reference,
            archive.path.display()
        );
        done.push(key);
    }

    /// Image names of our namespace (`ctr images ls -q`).
    pub fn images(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["images", "ls", "-q"]))
    }

    /// Blob digests in containerd's content store (`ctr content ls -q`).
    pub fn content(&self) -> Vec<String> {
        lines(&self.ctr_ok(&["content", "ls", "-q"]))
    }

    /// `ctr task kill -s SIGNAL ID` (e.g. `SIGTERM`, `SIGKILL`); must succeed.
    pub fn kill(&self, id: &str, signal: &str) {
        self.ctr_ok(&["task", "kill", "-s", signal, id]);
    }

    /// `ctr task ls`: (id, pid, status) of every task of our namespace.
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        self.ctr_ok(&["task", "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.first()?.to_string(),
                    f.get(1)?.parse().ok()?,
                    f.get(2)?.to_string(),
                ))
            })
            .collect()
    }

    /// `ctr task rm ID` then `ctr container rm ID`; both must succeed (the task must be
    /// stopped). [`Containerd::remove`] is the forgiving variant that kills first.
    pub fn delete(&self, id: &str) {
        self.ctr_ok(&["task", "rm", id]);
        self.ctr_ok(&["container", "rm", id]);
    }

    /// Where containerd keeps a blob of its content store (for the artifact form's module).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .join("root/io.containerd.content.v1.content/blobs/sha256")
            .join(hex)
    }

    /// containerd's own log (with the shims' logs), kept in the temp dir.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The `--fifo-dir` to give `ctr` (its default is the system's /run/containerd/fifo).
    pub fn fifo_dir(&self) -> PathBuf {
        self.dir.join("fifo")
    }

    /// Stops containerd and removes everything it left: its shims (found by the socket
    /// address on their command line), mounts under its directory, and the directory
    /// (kept, with its log, when `WASMEDGE_TESTS_KEEP=1`). Run by [`Owned`]'s drop, and for
    /// the shared instance when the process exits.
    pub fn shutdown(&self) {
        // Tasks first, through containerd, so that runtimes clean their own state.
        let namespaces = self.ctr(&["namespaces", "ls", "-q"]);
        for ns in lines(&String::from_utf8_lossy(&namespaces.stdout)) {
            let tasks = ctr_ns(self, &ns, &["tasks", "ls", "-q"]);
            for id in lines(&String::from_utf8_lossy(&tasks.stdout)) {
                let _ = ctr_ns(self, &ns, &["tasks", "kill", "-s", "SIGKILL", &id]);
                let _ = ctr_ns(self, &ns, &["tasks", "rm", "-f", &id]);
            }
            let containers = ctr_ns(self, &ns, &["containers", "ls", "-q"]);
            for id in lines(&String::from_utf8_lossy(&containers.stdout)) {
                let _ = ctr_ns(self, &ns, &["containers", "rm", &id]);
            }
        }
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.lock().unwrap().try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.lock().unwrap().kill();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let address = self.address.display().to_string();
        for (pid, cmdline) in super::processes_matching(&address) {
            if cmdline.contains("shim") && pid != std::process::id() as i32 {
                let pid = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        // Whatever else runs with our shim configuration: compiles outlive their runner.
        for pid in super::processes_of(self) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // The bridge CNI made for our pods, if any.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &super::cni_bridge()])
            .stderr(std::process::Stdio::null())
            .status();
        // The (now empty) parent cgroups of this process's containers, in every hierarchy.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(hierarchy.path().join(namespace()));
        }
        super::unmount_and_remove(&self.dir);
    }
}

/// The containerds kept in statics (the shared one, the CRI one), shut down at exit.
static AT_EXIT: std::sync::Mutex<Vec<&'static Containerd>> = std::sync::Mutex::new(Vec::new());

/// Has `ctd`, kept in a static, shut down when the test process exits: statics are never
/// dropped, and without it every test run would leave its shims, mounts, bridge and temp dir.
pub fn shutdown_at_exit(ctd: &'static Containerd) {
    extern "C" fn at_exit() {
        let all = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()));
        for ctd in all {
            ctd.shutdown();
        }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `at_exit` is a plain `extern "C" fn()` that lives as long as the process;
        // it runs after the tests, when libtest calls exit().
        let rc = unsafe { libc::atexit(at_exit) };
        assert_eq!(rc, 0, "atexit failed");
    });
    AT_EXIT.lock().unwrap_or_else(|p| p.into_inner()).push(ctd);
}

/// A containerd owned by one test, shut down and removed on drop (unlike the shared one).
/// Prints the tail of containerd's log if the test is failing.
pub struct Owned(pub Containerd);

impl Owned {
    /// A private containerd; `cri` enables the CRI plugin (`restrict_oom_score_adj = true`).
    pub fn start(cri: bool) -> Owned {
        Owned(Containerd::start(cri))
    }
}

impl std::ops::Deref for Owned {
    type Target = Containerd;

    fn deref(&self) -> &Containerd {
        &self.0
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} (tail) ---\n{}",
                self.0.log_path().display(),
                self.0.log_tail()
            );
        }
        self.0.shutdown();
    }
}

/// Runs `ctr -a SOCK -n <namespace> ARGS` and returns (exit code, stdout, stderr).
pub fn ctr_raw(ctd: &Containerd, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(&super::containerd_binary().ctr)
        .arg("-a")
        .arg(&ctd.address)
        .arg("-n")
        .arg(namespace())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ctr -n NS ARGS`, for namespaces other than [`namespace`] (CRI uses `k8s.io`).
fn ctr_ns(ctd: &Containerd, ns: &str, args: &[&str]) -> std::process::Output {
    Command::new(&super::containerd_binary().ctr)
        .arg("-a")
        .arg(&ctd.address)
        .arg("-n")
        .arg(ns)
        .args(args)
        .output()
        .unwrap()
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}
