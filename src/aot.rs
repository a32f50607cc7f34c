//! Choosing a container's code: native from the node cache, or the interpreter.
//!
//! Runs in the container process before it joins the container's cgroup, so that a compile
//! (which can take minutes and gigabytes for a large module) is not charged to the pod.
//! Nothing here fails a container: an unusable cache or a failed compile means the
//! interpreter, and one warning that says why.

use std::path::Path;
use std::time::Duration;

use wasmedge_aot_cache::{Cache, Compiler, Fingerprint, Outcome};

use crate::config::Policy;
use crate::zygote::CodeSource;

/// What [`resolve`] decided, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub code: CodeSource,
    /// `hit`, `compiled`, `waited-hit`, `miss-tiered`, `off`, or `fallback`.
    pub outcome: &'static str,
    pub hash: Duration,
    pub lookup: Duration,
    pub compile: Duration,
    pub warning: Option<String>,
}

impl Resolved {
    fn interpreter(outcome: &'static str, warning: Option<String>) -> Resolved {
        Resolved {
            code: CodeSource::Interpreter,
            outcome,
            hash: Duration::ZERO,
            lookup: Duration::ZERO,
            compile: Duration::ZERO,
            warning,
        }
    }
}

/// Finds (or, under [`Policy::Sync`], compiles) the native code of `module`. Under
/// [`Policy::Tiered`] a miss calls `compile_later` and runs the interpreter now.
/// `policy` must already be effective (not [`Policy::Auto`]).
pub fn resolve(
    cache: Result<&Cache, &str>,
    module: &Path,
    fingerprint: &Fingerprint,
    policy: Policy,
    compiler: &dyn Compiler,
    compile_later: impl FnOnce(),
) -> Resolved {
    if policy == Policy::Off {
        return Resolved::interpreter("off", None);
    }
    let cache = match cache {
        Ok(c) => c,
        Err(e) => {
            return Resolved::interpreter(
                "fallback",
                Some(format!(
                    "aot cache unusable ({e}); running {} in the interpreter",
                    module.display()
                )),
            )
        }
    };
    let fallback = |what: &str, e: &dyn std::fmt::Display| {
        Resolved::interpreter(
            "fallback",
            Some(format!(
                "{what} {}: {e}; running it in the interpreter",
                module.display()
            )),
        )
    };
    if policy == Policy::Tiered {
        let start = std::time::Instant::now();
        let key = match cache.key_for(module, fingerprint) {
            Ok(k) => k,
            Err(e) => return fallback("cannot hash", &e),
        };
        let hash = start.elapsed();
        let start = std::time::Instant::now();
        return match cache.lookup(&key) {
            Ok(Some(a)) => Resolved {
                code: CodeSource::Native(a.path),
                outcome: "hit",
                hash,
                lookup: start.elapsed(),
                compile: Duration::ZERO,
                warning: None,
            },
            Ok(None) => {
                compile_later();
                Resolved {
                    hash,
                    lookup: start.elapsed(),
                    ..Resolved::interpreter("miss-tiered", None)
                }
            }
            Err(e) => fallback("cannot look up", &e),
        };
    }
    match cache.get_or_compile(module, fingerprint, compiler) {
        Ok(f) => Resolved {
            code: CodeSource::Native(f.artifact.path),
            outcome: match f.outcome {
                Outcome::Hit => "hit",
                Outcome::WaitedHit => "waited-hit",
                Outcome::Compiled => "compiled",
            },
            hash: f.timings.hash,
            lookup: f.timings.lookup,
            compile: f.timings.compile + f.timings.wait + f.timings.publish,
            warning: None,
        },
        Err(e) => fallback("cannot aot-compile", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use wasmedge_aot_cache::{BoxError, CacheConfig};

    struct FakeCompiler {
        calls: Cell<u32>,
        fail: bool,
    }

    impl Compiler for FakeCompiler {
        fn compile(&self, module: &Path, out: &Path) -> Result<(), BoxError> {
            self.calls.set(self.calls.get() + 1);
            if self.fail {
                return Err("exception-handling proposal is not supported by the compiler".into());
            }
            std::fs::write(out, std::fs::read(module)?)?;
            Ok(())
        }
    }

    fn setup() -> (tempfile::TempDir, Cache, std::path::PathBuf, Fingerprint) {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(CacheConfig::new(dir.path().join("cache"))).unwrap();
        let module = dir.path().join("m.wasm");
        std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
        let fp = Fingerprint {
            engine: "fake".into(),
            ..Default::default()
        };
        (dir, cache, module, fp)
    }

    #[test]
    fn sync_compiles_once_then_hits() {
        let (_d, cache, module, fp) = setup();
        let c = FakeCompiler {
            calls: Cell::new(0),
            fail: false,
        };
        let r = resolve(Ok(&cache), &module, &fp, Policy::Sync, &c, || {
            panic!("no background")
        });
        assert_eq!(r.outcome, "compiled");
        assert!(matches!(r.code, CodeSource::Native(ref p) if p.ends_with("module.so")));
        let r = resolve(Ok(&cache), &module, &fp, Policy::Sync, &c, || {
            panic!("no background")
        });
        assert_eq!(r.outcome, "hit");
        assert_eq!(c.calls.get(), 1);
    }

    #[test]
    fn tiered_miss_runs_the_interpreter_and_asks_for_a_background_compile() {
        let (_d, cache, module, fp) = setup();
        let c = FakeCompiler {
            calls: Cell::new(0),
            fail: false,
        };
        let asked = Cell::new(false);
        let r = resolve(Ok(&cache), &module, &fp, Policy::Tiered, &c, || {
            asked.set(true)
        });
        assert_eq!(
            (r.outcome, r.code.clone()),
            ("miss-tiered", CodeSource::Interpreter)
        );
        assert!(asked.get());
        assert_eq!(c.calls.get(), 0, "tiered never compiles on the start path");
        cache.get_or_compile(&module, &fp, &c).unwrap();
        let r = resolve(Ok(&cache), &module, &fp, Policy::Tiered, &c, || {
            panic!("hit")
        });
        assert_eq!(r.outcome, "hit");
    }

    #[test]
    fn failures_fall_back_to_the_interpreter_with_one_warning() {
        let (_d, cache, module, fp) = setup();
        let c = FakeCompiler {
            calls: Cell::new(0),
            fail: true,
        };
        let r = resolve(Ok(&cache), &module, &fp, Policy::Sync, &c, || {});
        assert_eq!((r.outcome, r.code), ("fallback", CodeSource::Interpreter));
        let w = r.warning.unwrap();
        assert!(
            w.contains("cannot aot-compile") && w.contains("exception-handling"),
            "{w}"
        );

        let r = resolve(
            Err("root not owned by uid 0"),
            &module,
            &fp,
            Policy::Sync,
            &c,
            || {},
        );
        assert_eq!(r.code, CodeSource::Interpreter);
        assert!(r.warning.unwrap().contains("root not owned by uid 0"));

        let r = resolve(Ok(&cache), &module, &fp, Policy::Off, &c, || {});
        assert_eq!((r.outcome, r.warning), ("off", None));
    }
}
