//! Where everything lives under the cache root, and parsing of the names found there.
//!
//! ```text
//! <root>/                         owned by the effective user, not group/world-writable; the path
//!                                 to it checked from `/` down (`crate::trust`)
//!   v1/                           layout version; a new layout gets a new directory
//!     entries/<kk>/<key>/         one published entry (kk = first two hex digits of key)
//!         meta                    metadata record (0444), its mtime is the last-used time
//!         module.so | module.wasm the artifact (0555 | 0444)
//!     tmp/<key>.<pid>.<n>.<t>/    staging directory of a compile/insert in progress
//!     tmp/trash.<key>.<pid>.<n>.<t>/  entry being deleted
//!     locks/<key>.lock            per-key flock (single flight, removal)
//!     locks/slot.<i>.lock         compile slots, i < max_concurrent_compiles
//!     locks/quick.<i>.lock        the quick lane's compile slots, i < quick_compile_slots
//!     locks/stats.lock            serializes updates of `stats`
//!     memo/<id>                   hash memo records, id = hex of blake3(file identity)[..16]
//!     failed/<key>                the key's last failed compile (`crate::failures`)
//!     stats                       persisted counters
//!     links/<dev>-<ino>.so        a symlink to an artifact (`Cache::link_dir`): the name the engine
//!                                 loads it by, unique to the file, because `dlopen` hands back an
//!                                 already loaded object for a known name; dead ones are pruned
//!     phases.json                 the shim's per-phase totals (`crate::side`; contents are the shim's)
//!     locks/phases.lock           serializes updates of `phases.json`
//!     .<name>.<random>.tmp        a file being replaced (`crate::atomic`), also in memo/
//! ```

use std::path::{Path, PathBuf};

use crate::format::FileId;
use crate::fsutil::unique_suffix;
use crate::key::{hex, hex_val, Key};

pub(crate) const LAYOUT_DIR: &str = "v1";
pub(crate) const META_FILE: &str = "meta";
pub(crate) const TRASH_PREFIX: &str = "trash.";
const MEMO_CONTEXT: &str = "wasmedge-aot-cache 2026-11-28 memo file name v1";

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    base: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Layout {
            base: root.join(LAYOUT_DIR),
        }
    }

    /// Directories that must exist and pass the trust check.
    pub fn dirs(&self) -> [PathBuf; 7] {
        [
            self.base.clone(),
            self.entries(),
            self.tmp(),
            self.locks(),
            self.memo(),
            self.failures(),
            self.links(),
        ]
    }

    pub fn entries(&self) -> PathBuf {
        self.base.join("entries")
    }
    pub fn tmp(&self) -> PathBuf {
        self.base.join("tmp")
    }
    pub fn locks(&self) -> PathBuf {
        self.base.join("locks")
    }
    pub fn memo(&self) -> PathBuf {
        self.base.join("memo")
    }
    pub fn failures(&self) -> PathBuf {
        self.base.join("failed")
    }
    pub fn links(&self) -> PathBuf {
        self.base.join("links")
    }
    pub fn failure_file(&self, key: &Key) -> PathBuf {
        self.failures().join(key.to_hex())
    }
    pub fn stats_file(&self) -> PathBuf {
        self.base.join("stats")
    }
    pub fn stats_lock(&self) -> PathBuf {
        self.locks().join("stats.lock")
    }
    pub fn phases_file(&self) -> PathBuf {
        self.base.join("phases.json")
    }
    pub fn phases_lock(&self) -> PathBuf {
        self.locks().join("phases.lock")
    }
    pub fn base(&self) -> PathBuf {
        self.base.clone()
    }

    pub fn entry_dir(&self, key: &Key) -> PathBuf {
        self.entries().join(entry_rel_path(key))
    }

    pub fn key_lock(&self, key: &Key) -> PathBuf {
        self.locks().join(format!("{key}.lock"))
    }

    pub fn slots(&self, n: usize) -> Vec<PathBuf> {
        (0..n.max(1))
            .map(|i| self.locks().join(format!("slot.{i}.lock")))
            .collect()
    }

    pub fn quick_slots(&self, n: usize) -> Vec<PathBuf> {
        (0..n.max(1))
            .map(|i| self.locks().join(format!("quick.{i}.lock")))
            .collect()
    }

    pub fn staging_dir(&self, key: &Key) -> PathBuf {
        self.tmp().join(format!("{key}.{}", unique_suffix()))
    }

    pub fn trash_dir(&self, key: &Key) -> PathBuf {
        self.tmp()
            .join(format!("{TRASH_PREFIX}{key}.{}", unique_suffix()))
    }

    pub fn memo_file(&self, id: &FileId) -> PathBuf {
        let h = blake3::derive_key(MEMO_CONTEXT, &id.to_bytes());
        self.memo().join(hex(&h[..16]))
    }
}

/// `<kk>/<key>` relative to `entries/`.
pub fn entry_rel_path(key: &Key) -> PathBuf {
    let h = key.to_hex();
    PathBuf::from(&h[..2]).join(h)
}

/// Inverse of [`entry_rel_path`] for a `(shard, name)` pair read from disk; anything that is not
/// exactly a lower-case key under its own shard is rejected.
pub fn parse_entry_name(shard: &str, name: &str) -> Option<Key> {
    let key = parse_lower_hex_key(name)?;
    (shard.len() == 2 && name.starts_with(shard)).then_some(key)
}

/// The key a staging directory name (`<key>.<suffix>`) belongs to.
pub fn parse_staging_name(name: &str) -> Option<Key> {
    let (k, rest) = name.split_at_checked(64)?;
    if !rest.starts_with('.') || rest.len() < 2 {
        return None;
    }
    parse_lower_hex_key(k)
}

fn parse_lower_hex_key(s: &str) -> Option<Key> {
    if s.len() != 64 || !s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(Key::from_bytes(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entry_path_round_trip(k in any::<[u8; 32]>()) {
            let key = Key::from_bytes(k);
            let rel = entry_rel_path(&key);
            let shard = rel.parent().unwrap().to_str().unwrap();
            let name = rel.file_name().unwrap().to_str().unwrap();
            prop_assert_eq!(parse_entry_name(shard, name), Some(key));
            let l = Layout::new(Path::new("/r"));
            let stage = l.staging_dir(&key);
            prop_assert_eq!(parse_staging_name(stage.file_name().unwrap().to_str().unwrap()), Some(key));
            let trash = l.trash_dir(&key);
            prop_assert!(trash.file_name().unwrap().to_str().unwrap().starts_with(TRASH_PREFIX));
        }

        #[test]
        fn parsing_rejects_other_names(shard in ".{0,3}", name in ".{0,70}") {
            if let Some(k) = parse_entry_name(&shard, &name) {
                prop_assert_eq!(k.to_hex(), name.clone());
                prop_assert_eq!(&name[..2], shard.as_str());
            }
            if let Some(k) = parse_staging_name(&name) {
                prop_assert!(name.starts_with(&k.to_hex()));
            }
        }
    }

    #[test]
    fn parsing_rejects_near_misses() {
        let k = Key::from_bytes([0xab; 32]);
        let h = k.to_hex();
        assert_eq!(parse_entry_name("ab", &h), Some(k));
        assert_eq!(parse_entry_name("cd", &h), None);
        assert_eq!(parse_entry_name("ab", &h.to_uppercase()), None);
        assert_eq!(parse_entry_name("ab", &h[..63]), None);
        assert_eq!(parse_entry_name("ab", &format!("{h}0")), None);
        assert_eq!(parse_staging_name(&format!("{h}.")), None);
        assert_eq!(parse_staging_name(&format!("{h}x1")), None);
        assert_eq!(parse_staging_name(&format!("{h}.1.2.3")), Some(k));
    }
}
