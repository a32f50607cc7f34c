//! `wasmedge-shimctl`: admin tool of the WasmEdge shim.
//!
//! Data goes to stdout (human-readable, or JSON with `--json`); progress and diagnostics go
//! to stderr. Exit status: 0 on success, 1 on an error, 2 when `verify` found invalid entries
//! or `check` found a required check failing.
//!
//! ```text
//! wasmedge-shimctl image build --ref localhost/probe:v1 --out probe.tar --module probe.wasm
//! wasmedge-shimctl image build --ref localhost/probe:art --out art.tar --module probe.wasm --artifact
//! wasmedge-shimctl image build --ref localhost/probe:layer --out layer.tar --module probe.wasm --wasm-layer
//! wasmedge-shimctl image build --ref localhost/native:v1 --out native.tar \
//!     --file native-hello:/hello --entrypoint /hello --platform linux/amd64
//! wasmedge-shimctl precompile app.wasm
//! wasmedge-shimctl precompile --image localhost/probe:v1 --address /run/containerd/containerd.sock -n k8s.io
//! wasmedge-shimctl ls | stats | verify | gc --max-size 2G | rm KEY_PREFIX
//! wasmedge-shimctl install --restart | uninstall | check
//! ```
//!
//! The cache commands open the node cache of the shim config (`WASMEDGE_AOT_SHIM_CONFIG`, else
//! `/etc/wasmedge-aot-shim/config.toml`; `--config`, `--cache-dir` override). `precompile`
//! has the runner compile (`wasmedge_aot_protocol::precompile`): its entries are the ones
//! containers hit, and a tenant's module meets LLVM only in the runner's sandboxed worker.

// A command-line tool: its results are meant for stdout.
#![allow(clippy::print_stdout)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use wasmedge_aot_cache::{Cache, HashThreads};
use wasmedge_aot_protocol::config::Config;
use wasmedge_aot_protocol::phases;
use wasmedge_aot_protocol::precompile;
use wasmedge_shimctl::check::{self, CheckOptions};
use wasmedge_shimctl::image::{Archive, ImageBuilder, Platform};
use wasmedge_shimctl::install::{self, ConfigVersion, InstallOptions, NodeTarget};

#[derive(Parser)]
#[command(
    name = "wasmedge-shimctl",
    version,
    about = "Admin tool of the WasmEdge containerd shim"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// OCI image archives.
    #[command(subcommand)]
    Image(ImageCommand),
    /// AOT-compiles a module (a file, or the module of an image in containerd) into the cache.
    Precompile(PrecompileArgs),
    /// Lists the cache entries.
    Ls(CacheArgs),
    /// Cache counters and the per-phase time of containers.
    Stats(CacheArgs),
    /// Checks the full digest of every entry; invalid entries are removed (exit 2).
    Verify(CacheArgs),
    /// Evicts least recently used entries until the cache fits in --max-size.
    Gc(GcArgs),
    /// Removes the one entry whose key starts with KEY_PREFIX.
    Rm(RmArgs),
    /// Installs the binaries and registers the runtime in containerd's config.
    Install(InstallArgs),
    /// Removes the binaries and the runtime registration.
    Uninstall(UninstallArgs),
    /// Checks that the node has what the shim needs (exit 2 if a required check fails).
    Check(CheckArgs),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Builds an OCI image layout tar that `ctr images import` accepts.
    Build(BuildArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Image reference, NAME:TAG (recorded as the image's name in containerd).
    #[arg(long = "ref", value_name = "NAME:TAG")]
    reference: String,
    /// The archive to write.
    #[arg(long, value_name = "FILE.tar")]
    out: PathBuf,
    /// Build a CNCF Wasm OCI artifact (one application/wasm layer) instead of a plain image.
    #[arg(long, conflicts_with = "wasm_layer")]
    artifact: bool,
    /// Build an image whose layer is the module itself, as runwasi does (no rootfs; the shim
    /// reads the layer from containerd's content store) instead of a plain image.
    #[arg(long)]
    wasm_layer: bool,
    /// The module layer's media type with --wasm-layer.
    #[arg(
        long,
        value_name = "TYPE",
        requires = "wasm_layer",
        default_value = wasmedge_shimctl::image::COMPONENT_LAYER_MEDIA_TYPE
    )]
    layer_media_type: String,
    /// A file of the rootfs, HOST_PATH:IMAGE_PATH (plain image only; repeatable).
    #[arg(long = "file", value_name = "HOST_PATH:IMAGE_PATH")]
    files: Vec<String>,
    /// The Wasm module; in a plain image it is put at --module-path.
    #[arg(long, value_name = "HOST.wasm")]
    module: Option<PathBuf>,
    /// Where the module goes in a plain image's rootfs [default: the entrypoint, else /app.wasm].
    #[arg(long, value_name = "PATH")]
    module_path: Option<String>,
    /// Entrypoint, the module's path by default (repeat for arguments).
    #[arg(long, value_name = "PATH")]
    entrypoint: Vec<String>,
    /// Environment of the image config, K=V (repeatable).
    #[arg(long, value_name = "K=V")]
    env: Vec<String>,
    /// OS/ARCH: wasip1/wasm (default) or linux/amd64 for a native image.
    #[arg(long, default_value = "wasip1/wasm")]
    platform: Platform,
    #[arg(long)]
    json: bool,
}

/// Which cache the cache commands work on, and how they report.
#[derive(Args)]
struct CacheArgs {
    /// The shim config to read `cache_dir` (and compile options) from.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The cache directory, instead of the config's.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PrecompileArgs {
    /// The module to compile.
    #[arg(
        value_name = "FILE.wasm",
        required_unless_present = "image",
        conflicts_with = "image"
    )]
    module: Option<PathBuf>,
    /// Compile the module of this image, already in containerd (plain image, Wasm-layer image
    /// or Wasm artifact): the module a container of the image runs.
    #[arg(long = "image", value_name = "REF")]
    image: Option<String>,
    /// containerd's GRPC socket (with --image).
    #[arg(long, short = 'a', default_value = check::DEFAULT_CONTAINERD_SOCKET)]
    address: PathBuf,
    /// containerd namespace of the image (with --image).
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct GcArgs {
    /// Size to shrink to: bytes, or with a K, M, G or T suffix (powers of 1024), e.g. 500M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: u64,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Args)]
struct RmArgs {
    /// 1 to 64 hex digits of the key (see `ls`).
    #[arg(value_name = "KEY_PREFIX")]
    prefix: String,
    #[command(flatten)]
    cache: CacheArgs,
}

/// What `install` and `uninstall` both act on.
#[derive(Args)]
struct NodeTargetArgs {
    /// Where the binaries go.
    #[arg(long, default_value = install::DEFAULT_BIN_DIR)]
    bin_dir: PathBuf,
    /// containerd's config file (`--config` for short; the cache commands' `--config` is the
    /// shim's own).
    #[arg(long, alias = "config", default_value = install::DEFAULT_CONTAINERD_CONFIG)]
    containerd_config: PathBuf,
    /// The runtime name (a RuntimeClass's handler).
    #[arg(long, default_value = install::DEFAULT_RUNTIME_NAME)]
    runtime_name: String,
    /// Restart containerd after a change of its config.
    #[arg(long)]
    restart: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InstallArgs {
    #[command(flatten)]
    target: NodeTargetArgs,
    /// Where the binaries are copied from [default: this binary's directory].
    #[arg(long)]
    source_dir: Option<PathBuf>,
    /// Config version to create when the config is missing (2 or 3) [default: from `containerd --version`].
    #[arg(long)]
    config_version: Option<ConfigVersion>,
    /// Replace a runtime of the same name that is not ours.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct UninstallArgs {
    #[command(flatten)]
    target: NodeTargetArgs,
}

impl NodeTargetArgs {
    /// The library's target, and whether to print JSON.
    fn split(self) -> (NodeTarget, bool) {
        let target = NodeTarget {
            bin_dir: self.bin_dir,
            containerd_config: self.containerd_config,
            runtime_name: self.runtime_name,
            restart: self.restart,
        };
        (target, self.json)
    }
}

#[derive(Args)]
struct CheckArgs {
    /// containerd's GRPC socket.
    #[arg(long, short = 'a', default_value = check::DEFAULT_CONTAINERD_SOCKET)]
    address: PathBuf,
    /// containerd's config file.
    #[arg(long, default_value = install::DEFAULT_CONTAINERD_CONFIG)]
    config: PathBuf,
    /// The shim's config [default: $WASMEDGE_AOT_SHIM_CONFIG or /etc/wasmedge-aot-shim/config.toml].
    #[arg(long)]
    shim_config: Option<PathBuf>,
    /// Where the shim binaries are [default: PATH].
    #[arg(long)]
    shim_dir: Option<PathBuf>,
    #[arg(long, default_value = install::DEFAULT_RUNTIME_NAME)]
    runtime_name: String,
    #[arg(long, default_value = install::DEFAULT_RUNTIME_NAME)]
    runtime_class: String,
    /// This node's name in the cluster [default: the hostname].
    #[arg(long)]
    node_name: Option<String>,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubelet's configuration file, for its cgroup driver.
    #[arg(long, default_value = check::DEFAULT_KUBELET_CONFIG)]
    kubelet_config: PathBuf,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmedge-shimctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    let ok = ExitCode::SUCCESS;
    match command {
        Command::Image(ImageCommand::Build(args)) => build(args).map(|()| ok),
        Command::Precompile(args) => precompile(args).map(|()| ok),
        Command::Ls(args) => ls(&args).map(|()| ok),
        Command::Stats(args) => stats(&args).map(|()| ok),
        Command::Verify(args) => verify(&args),
        Command::Gc(args) => gc(&args).map(|()| ok),
        Command::Rm(args) => rm(&args).map(|()| ok),
        Command::Install(args) => install_cmd(args),
        Command::Uninstall(args) => uninstall_cmd(args),
        Command::Check(args) => check_cmd(args),
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

// ---- image build ----

fn build(args: BuildArgs) -> Result<()> {
    let mut builder = if args.artifact {
        if !args.files.is_empty() {
            bail!("--file: an artifact holds only the module");
        }
        let Some(module) = &args.module else {
            bail!("--artifact needs --module");
        };
        ImageBuilder::artifact(&args.reference, read(module)?)
    } else if args.wasm_layer {
        if !args.files.is_empty() {
            bail!("--file: a Wasm-layer image holds only the module");
        }
        let Some(module) = &args.module else {
            bail!("--wasm-layer needs --module");
        };
        let mut b = ImageBuilder::wasm_layer(&args.reference, read(module)?)
            .layer_media_type(&args.layer_media_type);
        if let Some(path) = args
            .module_path
            .clone()
            .or_else(|| args.entrypoint.first().cloned())
        {
            b = b.module(&path, read(module)?);
        }
        for kv in &args.env {
            b = b.env(kv);
        }
        b
    } else {
        let mut b = ImageBuilder::image(&args.reference);
        if let Some(module) = &args.module {
            let path = args
                .module_path
                .clone()
                .or_else(|| args.entrypoint.first().cloned())
                .unwrap_or_else(|| "/app.wasm".into());
            b = b.module(&path, read(module)?);
        }
        for spec in &args.files {
            let Some((host, dst)) = spec.rsplit_once(':') else {
                bail!("--file {spec}: expected HOST_PATH:IMAGE_PATH");
            };
            let host = Path::new(host);
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(host)
                    .with_context(|| format!("stat {}", host.display()))?
                    .permissions(),
            ) & 0o7777;
            b = b.file(dst, read(host)?, mode);
        }
        for kv in &args.env {
            b = b.env(kv);
        }
        b
    };
    builder = builder.platform(args.platform.clone());
    if !args.entrypoint.is_empty() {
        builder = builder.entrypoint(args.entrypoint.clone());
    }
    let layout = builder
        .write(&args.out)
        .with_context(|| format!("build {}", args.out.display()))?;
    if args.json {
        print_json(&json!({
            "reference": layout.reference,
            "out": args.out,
            "form": layout.form.name(),
            "platform": args.platform.to_string(),
            "manifest_digest": layout.manifest_digest,
            "config_digest": layout.config_digest,
            "layer_digest": layout.layer_digest,
        }))
    } else {
        println!("{} {}", layout.reference, layout.manifest_digest);
        Ok(())
    }
}

// ---- cache commands ----

fn load_config(args: &CacheArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load_from(path)?,
        None => Config::load()?,
    };
    if let Some(dir) = &args.cache_dir {
        config.cache_dir = dir.clone();
    }
    Ok(config)
}

fn open_cache(config: &Config) -> Result<Cache> {
    // Not on a start path: full digests on first use. shimctl never forks: its module
    // hashing may use rayon's pool.
    let mut cfg = config.cache_config(true, HashThreads::Pool);
    // A compile another process runs (a pod's, another precompile) is waited for as long as
    // it lives and makes progress: say whose it is.
    cfg.on_wait = Some(wasmedge_aot_cache::WaitHook::new(|w| {
        let pids: Vec<String> = w
            .holders
            .iter()
            .map(|h| format!("pid {} ({})", h.pid, h.state))
            .collect();
        eprintln!(
            "waiting {}s for the {} of {} held by {}, {}s of CPU so far",
            w.waited.as_secs(),
            w.what,
            w.key.map(|k| k.to_hex()).unwrap_or_default(),
            if pids.is_empty() {
                "a process that has not said who it is".to_string()
            } else {
                pids.join(", ")
            },
            w.holders_cpu.as_secs()
        );
    }));
    Cache::open(cfg).with_context(|| format!("open cache {}", config.cache_dir.display()))
}

fn precompile(args: PrecompileArgs) -> Result<()> {
    let config = load_config(&args.cache)?;
    // Keep the exported module alive until the compile is done.
    let _tmp;
    let (module, label) = match (&args.module, &args.image) {
        (Some(path), _) => (path.clone(), path.display().to_string()),
        (None, Some(reference)) => {
            let dir = tempfile::Builder::new()
                .prefix("wasmedge-shimctl.")
                .tempdir()
                .context("create a temporary directory")?;
            let (path, source) = module_of_image(&args, reference, dir.path())?;
            _tmp = dir;
            (path, format!("{reference} ({source})"))
        }
        (None, None) => bail!("give FILE.wasm or --image REF"),
    };
    let module =
        std::fs::File::open(&module).with_context(|| format!("open {}", module.display()))?;
    let started = Instant::now();
    let report = with_progress(&label, || run_precompile(&config, module, &label))
        .with_context(|| format!("precompile {label}"))?;
    let elapsed = started.elapsed();
    let outcome = match report.outcome {
        precompile::Outcome::Hit | precompile::Outcome::WaitedHit => "hit",
        precompile::Outcome::Compiled => "compiled",
    };
    if args.cache.json {
        print_json(&json!({
            "module": label,
            "key": report.key,
            "size": report.size,
            "outcome": outcome,
            "seconds": elapsed.as_secs_f64(),
            "path": report.path,
        }))
    } else {
        println!(
            "{outcome} {} {} {:.2}s {label}",
            report.key,
            human_size(report.size),
            elapsed.as_secs_f64()
        );
        Ok(())
    }
}

/// The runner binary: `WASMEDGE_SHIM_RUNNER`, else the one installed beside this tool.
fn runner_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("WASMEDGE_SHIM_RUNNER") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("find this tool's own binary")?;
    let runner = exe.with_file_name(install::BINARIES[1]);
    if !runner.is_file() {
        bail!(
            "no {} beside {} (set WASMEDGE_SHIM_RUNNER to its path)",
            install::BINARIES[1],
            exe.display()
        );
    }
    Ok(runner)
}

/// Has the runner compile `module` into the cache of `config`, as a start's compile does: in
/// its sandboxed worker, publishing the library only after its check
/// ([`wasmedge_aot_protocol::precompile`]). This tool never runs a compiler itself.
fn run_precompile(
    config: &Config,
    module: std::fs::File,
    label: &str,
) -> Result<precompile::Report> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "precompile needs root: the runner compiles in a worker that takes the compile \
             user ({}:{}) and namespaces of its own, and writes the node cache",
            config.compile_uid,
            config.compile_gid
        );
    }
    let runner = runner_binary()?;
    let config = config.to_env().map_err(anyhow::Error::msg)?;
    // Nothing of the operator's environment (tokens, proxies) reaches the process that
    // parses the module: its worker's environment is a copy of it.
    let mut cmd = std::process::Command::new(&runner);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let out = cmd
        .arg(precompile::FLAG)
        .arg(label)
        .env(precompile::CONFIG_ENV, config)
        .stdin(module)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", runner.display()))?;
    if !out.status.success() {
        bail!("{} {}; its error is above", runner.display(), out.status);
    }
    let report = precompile::Report::from_output(&out.stdout).map_err(anyhow::Error::msg)?;
    report
        .key
        .parse::<wasmedge_aot_cache::Key>()
        .context("the runner's report")?;
    Ok(report)
}

/// Runs `f`, showing the elapsed seconds on stderr every second while it lasts.
fn with_progress<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let (done, wait) = mpsc::channel::<()>();
    let label = label.to_string();
    // A terminal gets one line rewritten every second; a log gets a line every 10 s.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ticker = std::thread::spawn(move || {
        let started = Instant::now();
        let mut shown = false;
        while let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(Duration::from_secs(1)) {
            let secs = started.elapsed().as_secs();
            if tty {
                shown = true;
                eprint!("\rcompiling {label}: {secs}s");
                let _ = std::io::stderr().flush();
            } else if secs.is_multiple_of(10) {
                eprintln!("compiling {label}: {secs}s");
            }
        }
        if shown {
            eprintln!();
        }
    });
    let result = f();
    drop(done);
    let _ = ticker.join();
    result
}

/// Exports `reference` from containerd with `ctr images export`, finds its module (the
/// entrypoint in a plain image's rootfs, else the Wasm layer a container runs, as
/// [`Archive::module`] says) and writes it to `dir/module.wasm`. Returns the file and where the module was found.
fn module_of_image(
    args: &PrecompileArgs,
    reference: &str,
    dir: &Path,
) -> Result<(PathBuf, String)> {
    let tar = dir.join("image.tar");
    let mut last_err = String::new();
    // First as ctr would for this host; then with every platform, for a wasm image whose
    // index also lists platforms that are not in the content store.
    for extra in [&[][..], &["--all-platforms"][..]] {
        let out = std::process::Command::new("ctr")
            .arg("-a")
            .arg(&args.address)
            .args(["-n", &args.namespace, "images", "export"])
            // In ctr's own process: through containerd 2.x's transfer service, ctr can exit
            // before the archive is all written (1 export in 5 came out truncated here).
            .arg("--local")
            .args(extra)
            .arg(&tar)
            .arg(reference)
            .output()
            .context("run ctr (is it on PATH?)")?;
        if out.status.success() {
            last_err.clear();
            break;
        }
        last_err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    }
    if !last_err.is_empty() {
        bail!(
            "ctr -n {} images export {reference}: {last_err}",
            args.namespace
        );
    }
    let file = std::fs::File::open(&tar).with_context(|| format!("open {}", tar.display()))?;
    let archive = Archive::read(std::io::BufReader::new(file))
        .with_context(|| format!("read the export of {reference}"))?;
    let image = archive
        .image(Some(reference))
        .or_else(|_| archive.image(None))
        .with_context(|| format!("find {reference} in its export"))?;
    let module = archive
        .module(&image)
        .with_context(|| format!("find the module of {reference}"))?;
    let path = dir.join("module.wasm");
    std::fs::write(&path, &module.bytes).with_context(|| format!("write {}", path.display()))?;
    Ok((path, module.source))
}

fn ls(args: &CacheArgs) -> Result<()> {
    let cache = open_cache(&load_config(args)?)?;
    let mut entries = cache.list().context("list cache")?;
    entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
    if args.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({
                    "key": e.key.to_hex(),
                    "size": e.size,
                    "disk_size": e.disk_size,
                    "kind": e.kind.to_string(),
                    "hint": e.hint,
                    "created": rfc3339(e.created),
                    "last_used": rfc3339(e.last_used),
                    "path": e.path,
                })
            })
            .collect();
        return print_json(&list);
    }
    println!(
        "{:<16}  {:>9}  {:<20}  {:<20}  HINT",
        "KEY", "SIZE", "CREATED", "LAST USED"
    );
    for e in &entries {
        println!(
            "{:<16}  {:>9}  {:<20}  {:<20}  {}",
            &e.key.to_hex()[..16],
            human_size(e.size),
            rfc3339(e.created),
            rfc3339(e.last_used),
            e.hint
        );
    }
    Ok(())
}

fn stats(args: &CacheArgs) -> Result<()> {
    let config = load_config(args)?;
    let cache = open_cache(&config)?;
    let s = cache.stats().context("read cache stats")?;
    let p = phases::read(&config.cache_dir);
    // Failures a start would still act on: within the retry window.
    let failures = cache.failures(Duration::from_secs(config.compile_retry_secs));
    let per = |us: u64| -> f64 {
        if p.containers == 0 {
            0.0
        } else {
            us as f64 / p.containers as f64
        }
    };
    let phase_list = p.phases();
    if args.json {
        let mut phase_json = serde_json::Map::new();
        for (name, us) in phase_list {
            phase_json.insert(name.into(), json!({"total_us": us, "avg_us": per(us)}));
        }
        return print_json(&json!({
            "cache_dir": config.cache_dir,
            "cache": {
                "hits": s.hits,
                "misses": s.misses,
                "compiles": s.compiles,
                "compile_time_us": s.compile_time.as_micros() as u64,
                "bytes_stored": s.bytes_stored,
                "evictions": s.evictions,
                "evicted_bytes": s.evicted_bytes,
                "invalid_entries": s.invalid_entries,
                "entries": s.entries,
                "current_bytes": s.current_bytes,
            },
            "containers": {
                "total": p.containers,
                "native": p.native,
                "native_by_level": p.native_by_level,
                "interpreter": p.interpreter,
                "phases": phase_json,
            },
            "recent_compile_failures": failures.iter().map(|(k, f)| json!({
                "key": k.to_hex(),
                "cause": f.cause,
                "message": f.message,
                "at_unix": f.at_unix,
            })).collect::<Vec<_>>(),
        }));
    }
    println!("cache {}", config.cache_dir.display());
    println!(
        "  entries {} ({}), hits {}, misses {}, compiles {} ({:.2}s)",
        s.entries,
        human_size(s.current_bytes),
        s.hits,
        s.misses,
        s.compiles,
        s.compile_time.as_secs_f64()
    );
    println!(
        "  stored {}, evictions {} ({}), invalid entries {}",
        human_size(s.bytes_stored),
        s.evictions,
        human_size(s.evicted_bytes),
        s.invalid_entries
    );
    println!("  recent compile failures {}", failures.len());
    for (key, f) in &failures {
        println!("    {} {}: {}", key.to_hex(), f.cause, f.message);
    }
    let by_level: Vec<String> = p
        .native_by_level
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(level, n)| format!("O{level} {n}"))
        .collect();
    println!(
        "containers {} (native {}{}, interpreter {})",
        p.containers,
        p.native,
        if by_level.is_empty() {
            String::new()
        } else {
            format!(": {}", by_level.join(", "))
        },
        p.interpreter
    );
    println!("  {:<12} {:>12} {:>14}", "PHASE", "TOTAL ms", "AVG ms");
    for (name, us) in phase_list {
        println!(
            "  {name:<12} {:>12.1} {:>14.3}",
            us as f64 / 1000.0,
            per(us) / 1000.0
        );
    }
    Ok(())
}

fn verify(args: &CacheArgs) -> Result<ExitCode> {
    let cache = open_cache(&load_config(args)?)?;
    let report = cache.verify().context("verify cache")?;
    if args.json {
        print_json(&json!({
            "ok": report.ok.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
            "removed": report.removed.iter().map(|(k, why)| json!({"key": k.to_hex(), "reason": why})).collect::<Vec<_>>(),
            "busy": report.busy.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
        }))?;
    } else {
        for (key, why) in &report.removed {
            println!("invalid {} removed: {why}", key.to_hex());
        }
        for key in &report.busy {
            println!("busy    {} (locked, not checked)", key.to_hex());
        }
        println!(
            "{} valid, {} invalid (removed), {} busy",
            report.ok.len(),
            report.removed.len(),
            report.busy.len()
        );
    }
    Ok(if report.removed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn gc(args: &GcArgs) -> Result<()> {
    let cache = open_cache(&load_config(&args.cache)?)?;
    let r = cache.gc(args.max_size).context("gc cache")?;
    if args.cache.json {
        return print_json(&json!({
            "max_size": args.max_size,
            "evicted": r.evicted.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
            "evicted_bytes": r.evicted_bytes,
            "invalid_removed": r.invalid_removed,
            "remaining_entries": r.remaining_entries,
            "remaining_bytes": r.remaining_bytes,
        }));
    }
    for key in &r.evicted {
        println!("evicted {}", key.to_hex());
    }
    println!(
        "evicted {} entries ({}), removed {} invalid; {} entries ({}) remain",
        r.evicted.len(),
        human_size(r.evicted_bytes),
        r.invalid_removed,
        r.remaining_entries,
        human_size(r.remaining_bytes)
    );
    Ok(())
}

fn rm(args: &RmArgs) -> Result<()> {
    let cache = open_cache(&load_config(&args.cache)?)?;
    let key = cache.remove(&args.prefix)?;
    if args.cache.json {
        print_json(&json!({ "removed": key.to_hex() }))
    } else {
        println!("removed {}", key.to_hex());
        Ok(())
    }
}

// ---- node setup ----

fn install_cmd(args: InstallArgs) -> Result<ExitCode> {
    let (target, json) = args.target.split();
    let report = install::install(&InstallOptions {
        target,
        source_dir: args.source_dir,
        config_version: args.config_version,
        force: args.force,
    })?;
    print_install(&report, json)
}

fn uninstall_cmd(args: UninstallArgs) -> Result<ExitCode> {
    let (target, json) = args.target.split();
    print_install(&install::uninstall(&target)?, json)
}

fn print_install(report: &install::InstallReport, json: bool) -> Result<ExitCode> {
    if json {
        print_json(report)?;
    } else {
        print!("{report}");
    }
    Ok(if report.restart_failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_cmd(args: CheckArgs) -> Result<ExitCode> {
    let mut opts = CheckOptions {
        socket: args.address,
        containerd_config: args.config,
        shim_dir: args.shim_dir,
        runtime_name: args.runtime_name,
        runtime_class: args.runtime_class,
        node_name: args.node_name,
        kubeconfig: args.kubeconfig,
        kubelet_config: args.kubelet_config,
        ..CheckOptions::default()
    };
    if let Some(c) = args.shim_config {
        opts.shim_config = c;
    }
    let report = check::check(&opts);
    if args.json {
        print_json(&report)?;
    } else {
        print!("{report}");
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

// ---- formatting ----

/// `500M`, `2G`, `1024`, `1.5G`: bytes, with K/M/G/T as powers of 1024 (an optional `B`
/// or `iB` after the suffix is accepted).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let bad = || format!("invalid size {s:?}: expected e.g. 0, 1048576, 500M or 2G");
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    match num.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && f * (mult as f64) < u64::MAX as f64 => {
            Ok((f * mult as f64) as u64)
        }
        _ => Err(bad()),
    }
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds: the `ls` table has a column of that width).
fn rfc3339(t: SystemTime) -> String {
    let t = OffsetDateTime::from(t);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    // Only a year outside 0..=9999 has no RFC 3339 form; no file of a cache has one.
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert!(parse_size("lots").unwrap_err().contains("\"lots\""));
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn times_format_as_utc() {
        use std::time::UNIX_EPOCH;
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // leap day 2024
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        assert_eq!(
            rfc3339(t + Duration::from_millis(999)),
            "2024-02-29T12:34:56Z",
            "whole seconds"
        );
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
