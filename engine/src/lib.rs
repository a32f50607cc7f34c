//! The one place in the project that talks to WasmEdge.
//!
//! Everything else (the shim, the cache, the fork server) deals in paths, bytes and exit
//! codes; this crate turns them into WasmEdge calls: AOT-compile a module into a shared
//! library, load a module (from its Wasm bytes for the interpreter, or from a compiled
//! shared library so the kernel maps and shares its native code), instantiate it with WASI
//! and run its `_start`.
//!
//! The seam is deliberately narrow ([`Engine`], [`Loaded`], [`Prepared`], [`WasiPlan`],
//! [`RunOutcome`]) so the process model around it can change without touching WasmEdge code.

mod library;

pub use library::Library;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wasmedge_sys::AsInstance;
use wasmedge_sys::{Compiler, Config, Executor, Loader, Module, Store, Validator, WasiModule};
use wasmedge_types::error::{CoreCommonError, CoreError, CoreInstantiationError, WasmEdgeError};
use wasmedge_types::{CompilerOptimizationLevel, CompilerOutputFormat};

/// Exit code of a module that trapped, as wasmtime and a `SIGABRT` give.
pub const TRAP_EXIT_CODE: i32 = 134;

/// The smallest WASI command, `(module (func (export "_start")))`: it goes through the
/// engine's whole path (load, validate, instantiate with WASI, run) with no guest work. The
/// runner warms WasmEdge with it; tests compile and package it.
pub const EMPTY_COMMAND: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
    0x03, 0x02, 0x01, 0x00, // func 0: type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: empty body
];

/// Errors from the engine; each names the module and the phase that failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("create wasmedge {what}: {source}")]
    Create {
        what: &'static str,
        source: Box<WasmEdgeError>,
    },
    #[error("load module {path}: {source}")]
    Load {
        path: PathBuf,
        source: Box<WasmEdgeError>,
    },
    #[error("validate module {path}: {source}")]
    Validate {
        path: PathBuf,
        source: Box<WasmEdgeError>,
    },
    #[error("aot-compile {path}: {source}")]
    Compile {
        path: PathBuf,
        source: Box<WasmEdgeError>,
    },
    #[error("instantiate module {path}: {source}")]
    Instantiate {
        path: PathBuf,
        source: Box<WasmEdgeError>,
    },
    /// Instantiation found imports nothing provides (`module/name` each).
    #[error("instantiate module {path}: unknown import {} (the host provides only {host})", imports.join(", "))]
    UnknownImport {
        path: PathBuf,
        imports: Vec<String>,
        host: String,
    },
    #[error("module {path} has no `_start` export (not a WASI command)")]
    NoStart { path: PathBuf },
    #[error("wasi argument or environment contains a NUL byte: {0:?}")]
    Nul(String),
}

impl EngineError {
    /// The same error naming the module `name` (e.g. its path as the container sees it)
    /// instead of the file the engine read, which for native code is the cache's library.
    pub fn in_module(mut self, name: &Path) -> EngineError {
        match &mut self {
            EngineError::Load { path, .. }
            | EngineError::Validate { path, .. }
            | EngineError::Compile { path, .. }
            | EngineError::Instantiate { path, .. }
            | EngineError::UnknownImport { path, .. }
            | EngineError::NoStart { path } => *path = name.to_owned(),
            EngineError::Create { .. } | EngineError::Nul(_) => {}
        }
        self
    }
}

/// Options that change what the compiler produces. Every field is part of the cache key
/// (see [`Options::fingerprint_options`]), so changing one never loads a stale artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// LLVM optimization level, 0..=3.
    pub opt_level: u8,
    /// Emit checks so that a running module can be interrupted from another thread. Off:
    /// nothing interrupts a container's module (it is ended by a signal to its own
    /// process), and the check in every loop made CPU-bound code 3.7x slower.
    pub interruptible: bool,
    /// Count instructions and cost (statistics); slows native code down.
    pub statistics: bool,
    /// Proposals enabled beyond WasmEdge's defaults.
    pub threads: bool,
    pub exception_handling: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            opt_level: 2,
            interruptible: false,
            statistics: false,
            threads: false,
            exception_handling: false,
        }
    }
}

impl Options {
    /// The options of a node whose shim config sets `opt_level`. The runner compiles with
    /// them and `wasmedge-shimctl precompile` must use the very same, or the fingerprints
    /// (and so the cache keys) would differ and a precompiled entry would never be hit.
    pub fn for_node(opt_level: u8) -> Options {
        Options {
            opt_level,
            ..Options::default()
        }
    }

    /// The compile options as ordered key/value pairs for the cache fingerprint.
    pub fn fingerprint_options(&self) -> Vec<(String, String)> {
        vec![
            ("opt_level".into(), self.opt_level.to_string()),
            ("interruptible".into(), self.interruptible.to_string()),
            ("statistics".into(), self.statistics.to_string()),
            ("threads".into(), self.threads.to_string()),
            (
                "exception_handling".into(),
                self.exception_handling.to_string(),
            ),
            ("output".into(), "native-shared-library".into()),
        ]
    }

    fn config(&self) -> Result<Config, EngineError> {
        let mut c = Config::create().map_err(|source| EngineError::Create {
            what: "config",
            source,
        })?;
        c.set_aot_optimization_level(match self.opt_level {
            0 => CompilerOptimizationLevel::O0,
            1 => CompilerOptimizationLevel::O1,
            2 => CompilerOptimizationLevel::O2,
            _ => CompilerOptimizationLevel::O3,
        });
        // A native shared library, not the "universal" Wasm-with-a-section format: the
        // kernel maps it straight from the page cache and shares it across processes.
        c.set_aot_compiler_output_format(CompilerOutputFormat::Native);
        c.interruptible(self.interruptible);
        c.count_instructions(self.statistics);
        c.measure_cost(self.statistics);
        c.threads(self.threads);
        c.exception_handling(self.exception_handling);
        Ok(c)
    }
}

/// How the engine runs a module: from its Wasm bytes, or its native code (what a
/// container reports as its tier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    /// WasmEdge's interpreter, from the Wasm bytes.
    Interpreter,
    /// Native code from an AOT-compiled shared library.
    Native,
}

/// A configured WasmEdge: one per process, reused for every module it loads.
pub struct Engine {
    options: Options,
    /// For compiling and for loading native code: exactly the fingerprinted options.
    config: Config,
    /// For the interpreter: the same, plus every proposal 0.14.1 can interpret, so that a
    /// module the compiler refuses (e.g. one using exception handling) still runs.
    interp_config: Config,
}

/// A parsed and validated module, ready to instantiate any number of times.
pub struct Loaded {
    module: std::sync::Arc<Module>,
    path: PathBuf,
    execution: Execution,
}

/// What a WASI command gets from its container.
#[derive(Debug, Clone, Default)]
pub struct WasiPlan {
    /// argv, with argv\[0\] as the program name.
    pub args: Vec<String>,
    /// `NAME=VALUE` pairs.
    pub env: Vec<String>,
    /// `GUEST:HOST` or `GUEST:HOST:readonly` directory mappings.
    pub preopens: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// `_start` returned, or the module called `proc_exit`.
    Exited(i32),
    /// The module trapped; the message says why.
    Trapped(String),
}

impl RunOutcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            RunOutcome::Exited(code) => *code,
            RunOutcome::Trapped(_) => TRAP_EXIT_CODE,
        }
    }
}

/// An instantiated module with its WASI environment, ready to run `_start`.
pub struct Instance {
    // Field order is drop order: the instance goes before the store and the imports it uses.
    instance: wasmedge_sys::Instance,
    executor: Executor,
    _store: Store,
    wasi: WasiModule,
    path: PathBuf,
}

impl Engine {
    pub fn new(options: Options) -> Result<Engine, EngineError> {
        // WasmEdge logs to the process's stderr, which in a container process is the
        // container's own stderr; errors reach the user through our results instead.
        wasmedge_sys::utils::log_off();
        let config = options.config()?;
        let mut interp_config = options.config()?;
        interp_config.exception_handling(true);
        interp_config.threads(true);
        interp_config.tail_call(true);
        interp_config.function_references(true);
        Ok(Engine {
            options,
            config,
            interp_config,
        })
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// AOT-compiles the module at `wasm` into a native shared library at `out`.
    pub fn compile(&self, wasm: &Path, out: &Path) -> Result<(), EngineError> {
        let bytes = std::fs::read(wasm).map_err(|e| EngineError::Compile {
            path: wasm.to_owned(),
            source: Box::new(WasmEdgeError::Operation(e.to_string())),
        })?;
        self.compile_bytes(wasm, &bytes, out)
    }

    /// AOT-compiles the module `bytes` into a native shared library at `out` (the compiler
    /// writes its temporaries beside it). `path` only names the module in errors. For a
    /// process that read the module while it could, and compiles after giving up the right
    /// to open it.
    pub fn compile_bytes(&self, path: &Path, bytes: &[u8], out: &Path) -> Result<(), EngineError> {
        let compiler =
            Compiler::create(Some(&self.config)).map_err(|source| EngineError::Create {
                what: "compiler",
                source,
            })?;
        compiler
            .compile_from_bytes(bytes, out)
            .map_err(|source| EngineError::Compile {
                path: path.to_owned(),
                source,
            })
    }

    /// Parses and validates Wasm bytes for the interpreter. `path` only names the module in
    /// errors.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Loaded, EngineError> {
        let loader =
            Loader::create(Some(&self.interp_config)).map_err(|source| EngineError::Create {
                what: "loader",
                source,
            })?;
        let module = loader
            .from_bytes(bytes)
            .map_err(|source| EngineError::Load {
                path: path.to_owned(),
                source,
            })?;
        self.validated(module, path, Execution::Interpreter)
    }

    /// Loads an AOT-compiled shared library; WasmEdge maps it with `dlopen`, so its code
    /// pages are shared with every process that maps it.
    ///
    /// `dlopen` returns an already loaded object when asked for the same file name again,
    /// even if the file behind that name has since been replaced (a cache entry that was
    /// found corrupt and recompiled keeps its path). So the library is opened through a
    /// name that includes its device and inode: a symlink in `link_dir`, which must be a
    /// directory only we can write to (a link planted there would be code we execute).
    pub fn load_native(&self, so: &Path, link_dir: &Path) -> Result<Loaded, EngineError> {
        let load_err = |e: std::io::Error| EngineError::Load {
            path: so.to_owned(),
            source: Box::new(WasmEdgeError::Operation(e.to_string())),
        };
        let meta = std::fs::metadata(so).map_err(load_err)?;
        let link = link_dir.join(format!("{:x}-{:x}.so", meta.dev(), meta.ino()));
        if std::fs::read_link(&link).ok().as_deref() != Some(so) {
            // Made under an unpredictable name (symlink(2) never follows or replaces what is
            // there, and a taken name is retried), then renamed into place.
            tempfile::Builder::new()
                .prefix(".link.")
                .make_in(link_dir, |tmp| std::os::unix::fs::symlink(so, tmp))
                .map_err(load_err)?
                .persist(&link)
                .map_err(|e| load_err(e.error))?;
        }
        let loader = self.loader()?;
        let module = loader
            .from_file(&link)
            .map_err(|source| EngineError::Load {
                path: so.to_owned(),
                source,
            })?;
        self.validated(module, so, Execution::Native)
    }

    fn loader(&self) -> Result<Loader, EngineError> {
        Loader::create(Some(&self.config)).map_err(|source| EngineError::Create {
            what: "loader",
            source,
        })
    }

    fn config_for(&self, execution: Execution) -> &Config {
        match execution {
            Execution::Interpreter => &self.interp_config,
            Execution::Native => &self.config,
        }
    }

    fn validated(
        &self,
        module: std::sync::Arc<Module>,
        path: &Path,
        execution: Execution,
    ) -> Result<Loaded, EngineError> {
        let validator = Validator::create(Some(self.config_for(execution))).map_err(|source| {
            EngineError::Create {
                what: "validator",
                source,
            }
        })?;
        validator
            .validate(&module)
            .map_err(|source| EngineError::Validate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Loaded {
            module,
            path: path.to_owned(),
            execution,
        })
    }

    /// Instantiates `loaded` with a fresh WASI environment built from `plan`. Host stdio is
    /// the process's fds 0, 1 and 2.
    pub fn instantiate(&self, loaded: &Loaded, plan: &WasiPlan) -> Result<Instance, EngineError> {
        plan.check()?;
        let path = loaded.path.clone();
        let inst_err = |source| EngineError::Instantiate {
            path: path.clone(),
            source,
        };
        let wasi = WasiModule::create(
            Some(plan.args.iter().map(String::as_str).collect()),
            Some(plan.env.iter().map(String::as_str).collect()),
            Some(plan.preopens.iter().map(String::as_str).collect()),
        )
        .map_err(inst_err)?;
        let mut store = Store::create().map_err(inst_err)?;
        let mut executor =
            Executor::create(Some(self.config_for(loaded.execution)), None).map_err(inst_err)?;
        executor
            .register_import_module(&mut store, wasi.as_ref())
            .map_err(inst_err)?;
        let instance = match executor.register_active_module(&mut store, &loaded.module) {
            Ok(i) => i,
            Err(e) => match *e {
                // WasmEdge says only "unknown import": name which.
                WasmEdgeError::Core(CoreError::Instantiation(
                    CoreInstantiationError::UnknownImport,
                )) => {
                    let host = wasi.as_ref();
                    return Err(EngineError::UnknownImport {
                        path,
                        imports: unresolved_imports(&loaded.module, host),
                        host: host.name().unwrap_or_default(),
                    });
                }
                other => return Err(inst_err(Box::new(other))),
            },
        };
        if instance.get_func("_start").is_err() {
            return Err(EngineError::NoStart { path });
        }
        Ok(Instance {
            instance,
            executor,
            _store: store,
            wasi,
            path,
        })
    }

    /// Instantiates `loaded` before its container is known: everything but the WASI
    /// environment, which [`Prepared::with_wasi`] adds. A process forked from the one that
    /// holds a `Prepared` starts its copy without instantiating (function instances, tables,
    /// data segments: milliseconds for a module with megabytes of code), and shares the
    /// instance's pages with its siblings until it writes them.
    pub fn prepare(&self, loaded: &Loaded) -> Result<Prepared, EngineError> {
        self.instantiate(loaded, &WasiPlan::default()).map(Prepared)
    }
}

/// The imports of `module` that `host` (the only module registered for imports) does not
/// export, as `module/name`.
fn unresolved_imports(module: &Module, host: &wasmedge_sys::Instance) -> Vec<String> {
    let host_name = host.name().unwrap_or_default();
    let provided = host.func_names().unwrap_or_default();
    module
        .imports()
        .iter()
        .filter(|i| i.module_name() != host_name || !provided.iter().any(|f| *f == i.name()))
        .map(|i| format!("{}/{}", i.module_name(), i.name()))
        .collect()
}

impl WasiPlan {
    /// WasmEdge takes C strings.
    fn check(&self) -> Result<(), EngineError> {
        match self
            .args
            .iter()
            .chain(&self.env)
            .chain(&self.preopens)
            .find(|s| s.contains('\0'))
        {
            Some(s) => Err(EngineError::Nul(s.clone())),
            None => Ok(()),
        }
    }
}

/// An instance without its WASI environment yet (see [`Engine::prepare`]).
pub struct Prepared(Instance);

impl Prepared {
    /// Gives the instance its WASI arguments, environment and preopened directories.
    /// Consumes it: WasmEdge adds preopens to the descriptors an environment already has,
    /// so an environment is set once.
    pub fn with_wasi(mut self, plan: &WasiPlan) -> Result<Instance, EngineError> {
        plan.check()?;
        self.0.wasi.init_wasi(
            Some(plan.args.iter().map(String::as_str).collect()),
            Some(plan.env.iter().map(String::as_str).collect()),
            Some(plan.preopens.iter().map(String::as_str).collect()),
        );
        Ok(self.0)
    }
}

impl Loaded {
    pub fn execution(&self) -> Execution {
        self.execution
    }
}

impl Instance {
    /// Runs `_start` to the end. The instance stays alive afterwards, so that a process
    /// that is about to exit can leave its teardown to the kernel.
    pub fn run(&mut self) -> RunOutcome {
        let mut start = match self.instance.get_func_mut("_start") {
            Ok(f) => f,
            Err(_) => {
                return RunOutcome::Trapped(format!(
                    "module {} has no `_start`",
                    self.path.display()
                ))
            }
        };
        match self.executor.call_func(&mut start, []) {
            Ok(_) => RunOutcome::Exited(self.wasi.exit_code() as i32),
            Err(e) => match *e {
                WasmEdgeError::Core(CoreError::Common(CoreCommonError::Terminated)) => {
                    RunOutcome::Exited(self.wasi.exit_code() as i32)
                }
                other => RunOutcome::Trapped(other.to_string()),
            },
        }
    }
}

/// Name of the AOT output format, part of the cache fingerprint: a native shared library
/// as WasmEdge 0.14 writes and loads it.
pub const AOT_FORMAT: &str = "wasmedge-native-so";
/// Bumped whenever how this crate produces artifacts changes.
pub const AOT_FORMAT_VERSION: u32 = 1;

/// The target triple native code is compiled for.
pub fn target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// The host CPU's feature flags: WasmEdge compiles for the host CPU, so an artifact made
/// on one CPU must never be loaded on a node whose CPU lacks a feature it uses.
pub fn cpu_features() -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut flags: Vec<String> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags") || l.starts_with("Features"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    flags.sort();
    flags.dedup();
    flags
}

/// The cache key's view of this engine: everything that changes the compiled code. The
/// version is the loaded library's, with its build id ([`Library::fingerprint_version`]), so
/// an upgraded or rebuilt libwasmedge never loads what another one compiled.
pub fn fingerprint(engine: &Engine) -> wasmedge_aot_cache::Fingerprint {
    wasmedge_aot_cache::Fingerprint {
        engine: "wasmedge".into(),
        engine_version: Library::loaded().fingerprint_version(),
        aot_format_version: AOT_FORMAT_VERSION,
        target: target(),
        options: engine.options().fingerprint_options(),
        cpu_features: cpu_features(),
    }
}

/// WasmEdge's AOT compiler behind the cache's compiler seam.
impl wasmedge_aot_cache::Compiler for Engine {
    fn compile(&self, module: &Path, out: &Path) -> Result<(), wasmedge_aot_cache::BoxError> {
        Ok(Engine::compile(self, module, out)?)
    }
}

/// Whether `bytes` start like a core Wasm module (magic and version 1).
pub fn looks_like_wasm(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// Whether the Wasm module at `path` has a start section: a function that instantiation
/// itself runs. Reads the whole file, then parses its sections up to the start section or
/// the code section, which comes after it; a file that is not a core Wasm module (version
/// 1), or ends inside a section it parses, is an error.
pub fn has_start_section(path: &Path) -> std::io::Result<bool> {
    use wasmparser::{Parser, Payload};
    let bytes = std::fs::read(path)?;
    if !looks_like_wasm(&bytes) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a Wasm module",
        ));
    }
    for payload in Parser::new(0).parse_all(&bytes) {
        match payload.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))? {
            Payload::StartSection { .. } => return Ok(true),
            Payload::CodeSectionStart { .. } | Payload::End(_) => return Ok(false),
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WASI command that exits with `argc * 100 + envc * 10 + preopens`, where `preopens`
    /// counts the descriptors 3, 4 and 5 that are preopened directories.
    const WASI_SHAPE: &str = r#"
        (module
          (import "wasi_snapshot_preview1" "args_sizes_get" (func $args (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "environ_sizes_get" (func $envs (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (func $is_preopen (param $fd i32) (result i32)
            (i32.eqz (call $prestat (local.get $fd) (i32.const 64))))
          (func (export "_start")
            (drop (call $args (i32.const 0) (i32.const 4)))
            (drop (call $envs (i32.const 8) (i32.const 12)))
            (call $exit
              (i32.add
                (i32.add
                  (i32.mul (i32.load (i32.const 0)) (i32.const 100))
                  (i32.mul (i32.load (i32.const 8)) (i32.const 10)))
                (i32.add
                  (call $is_preopen (i32.const 3))
                  (i32.add (call $is_preopen (i32.const 4)) (call $is_preopen (i32.const 5))))))))
    "#;

    fn shape_module(engine: &Engine) -> Loaded {
        let bytes = wat::parse_str(WASI_SHAPE).unwrap();
        engine.load_bytes(Path::new("shape.wasm"), &bytes).unwrap()
    }

    fn plan(dir: &Path) -> WasiPlan {
        WasiPlan {
            args: vec!["shape.wasm".into(), "a".into(), "b".into()],
            env: vec!["X=1".into(), "Y=2".into()],
            preopens: vec![format!("/:{}", dir.display())],
        }
    }

    #[test]
    fn a_prepared_instance_runs_with_the_environment_it_is_given() {
        let engine = Engine::new(Options::default()).unwrap();
        let loaded = shape_module(&engine);
        let dir = tempfile::tempdir().unwrap();

        let direct = engine
            .instantiate(&loaded, &plan(dir.path()))
            .unwrap()
            .run();
        assert_eq!(direct, RunOutcome::Exited(321));

        let prepared = engine.prepare(&loaded).unwrap();
        let run = prepared.with_wasi(&plan(dir.path())).unwrap().run();
        assert_eq!(
            run, direct,
            "same argv, env and preopens as a direct instance"
        );
    }

    #[test]
    fn a_prepared_instance_without_environment_has_only_the_program_name() {
        let engine = Engine::new(Options::default()).unwrap();
        let loaded = shape_module(&engine);
        let run = engine
            .prepare(&loaded)
            .unwrap()
            .with_wasi(&WasiPlan {
                args: vec!["shape.wasm".into()],
                ..WasiPlan::default()
            })
            .unwrap()
            .run();
        assert_eq!(run, RunOutcome::Exited(100));
    }

    #[test]
    fn start_sections_are_found_by_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, wat: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
            path
        };
        let with = write(
            "with.wasm",
            r#"(module (memory 1) (data (i32.const 0) "x") (func $init) (start $init)
                 (func (export "_start")))"#,
        );
        assert!(has_start_section(&with).unwrap());
        let without = write(
            "without.wasm",
            r#"(module (memory 1) (data (i32.const 0) "x") (func (export "_start")))"#,
        );
        assert!(!has_start_section(&without).unwrap());
        assert!(!has_start_section(&write("shape.wasm", WASI_SHAPE)).unwrap());

        let truncated = dir.path().join("truncated.wasm");
        let bytes = std::fs::read(&with).unwrap();
        std::fs::write(&truncated, &bytes[..9]).unwrap();
        assert!(has_start_section(&truncated).is_err());
        let not_wasm = dir.path().join("not.wasm");
        std::fs::write(&not_wasm, b"#!/bin/sh\n").unwrap();
        assert!(has_start_section(&not_wasm).is_err());
    }

    /// The link to a library was made at `.<dev>-<ino>.<pid>` in the link directory: a
    /// predictable name, where anything already there made the load fail.
    #[test]
    fn the_library_link_is_made_under_an_unpredictable_name() {
        let engine = Engine::new(Options::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("shape.wasm");
        std::fs::write(&wasm, wat::parse_str(WASI_SHAPE).unwrap()).unwrap();
        let so = dir.path().join("shape.so");
        engine.compile(&wasm, &so).unwrap();
        let links = dir.path().join("links");
        std::fs::create_dir(&links).unwrap();
        let m = std::fs::metadata(&so).unwrap();
        let planted = links.join(format!(
            ".{:x}-{:x}.{}",
            m.dev(),
            m.ino(),
            std::process::id()
        ));
        std::fs::create_dir(&planted).unwrap();
        let loaded = engine.load_native(&so, &links).unwrap();
        assert_eq!(loaded.execution(), Execution::Native);
        let names: Vec<_> = std::fs::read_dir(&links)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&format!("{:x}-{:x}.so", m.dev(), m.ino())));
    }

    #[test]
    fn an_unknown_import_is_named_with_the_module() {
        let engine = Engine::new(Options::default()).unwrap();
        let bytes = wat::parse_str(
            r#"(module
                 (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
                 (import "wasi_snapshot_preview1" "no_such_call" (func))
                 (import "env" "f" (func))
                 (func (export "_start")))"#,
        )
        .unwrap();
        let loaded = engine
            .load_bytes(Path::new("/rootfs/app.wasm"), &bytes)
            .unwrap();
        let e = engine
            .instantiate(&loaded, &WasiPlan::default())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "instantiate module /rootfs/app.wasm: unknown import wasi_snapshot_preview1/no_such_call, env/f (the host provides only wasi_snapshot_preview1)"
        );
        assert!(e
            .in_module(Path::new("/app.wasm"))
            .to_string()
            .starts_with("instantiate module /app.wasm: unknown import"));
    }

    #[test]
    fn nul_bytes_are_refused_before_reaching_wasmedge() {
        let engine = Engine::new(Options::default()).unwrap();
        let loaded = shape_module(&engine);
        let bad = WasiPlan {
            args: vec!["a\0b".into()],
            ..WasiPlan::default()
        };
        assert!(matches!(
            engine.prepare(&loaded).unwrap().with_wasi(&bad),
            Err(EngineError::Nul(_))
        ));
        assert!(matches!(
            engine.instantiate(&loaded, &bad),
            Err(EngineError::Nul(_))
        ));
    }
}
