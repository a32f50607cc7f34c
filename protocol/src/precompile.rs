//! `wasmedge-shimctl precompile` ↔ the runner.
//!
//! A precompile handles a tenant's bytes as a container's first start does, so it compiles
//! the same way: the admin tool links no engine and runs no compiler; it starts the runner
//! (`wasmedge-shim-runner --precompile`), which compiles the module's full tier into the
//! node cache in the sandboxed worker and publishes the library only after the same check
//! of its shape (`runner/src/compile`).
//!
//! The admin tool passes the module open read-only as the runner's stdin (a descriptor,
//! not a path the runner would open as root) and the node config it resolved (its file
//! and `--cache-dir`) as JSON in [`CONFIG_ENV`] (`Config::to_env`). The runner prints one [`Report`] as a line
//! of JSON on stdout and exits 0; or its error on stderr and exits non-zero.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The runner's first argument that asks for a precompile.
pub const FLAG: &str = "--precompile";

/// The environment variable that carries the config, as JSON.
pub const CONFIG_ENV: &str = "WASMEDGE_SHIM_PRECOMPILE_CONFIG";

/// Where the module's full-tier code came from (the cache's own outcome).
pub use wasmedge_aot_cache::Outcome;

/// What a precompile did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The cache key of the module's full-tier code, in hex.
    pub key: String,
    pub outcome: Outcome,
    /// The library's size in bytes.
    pub size: u64,
    /// The library in the cache, for the operator to read (JSON: UTF-8 only).
    pub path: PathBuf,
}

impl Report {
    /// The line the runner prints.
    pub fn to_line(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|e| format!("the report of {}: {e}", self.key))
    }

    /// The report in the runner's output.
    pub fn from_output(out: &[u8]) -> Result<Report, String> {
        serde_json::from_slice(out.trim_ascii()).map_err(|e| {
            format!(
                "the runner's report ({e}): {:?}",
                String::from_utf8_lossy(&out[..out.len().min(512)])
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn a_report_reads_back_as_written() {
        let r = Report {
            key: "ab".repeat(32),
            outcome: Outcome::WaitedHit,
            size: 4096,
            path: "/var/lib/c\u{e9} 1/x.so".into(),
        };
        let line = r.to_line().unwrap();
        assert!(line.contains("\"waited-hit\""), "{line}");
        assert_eq!(
            Report::from_output(format!("{line}\n").as_bytes()).unwrap(),
            r
        );
        assert!(Report::from_output(b"compiled").is_err());
        // A second object glued to the first is refused, not read as an unknown field.
        let glued = line.replace('}', r#","z":{}}"#);
        assert!(Report::from_output(glued.as_bytes()).is_err(), "{glued}");
    }

    #[test]
    fn a_config_reads_back_as_written() {
        let config = Config {
            cache_dir: "/var/lib/x y/\u{e9}".into(),
            compile_uid: 4242,
            ..Config::default()
        };
        let json = config.to_env().unwrap();
        assert_eq!(serde_json::from_str::<Config>(&json).unwrap(), config);
    }
}
