//! Cache keys: what identifies a compiled artifact, and how it is derived.
//!
//! A [`Key`] is `blake3::derive_key`-style keyed hashing (context [`KEY_CONTEXT`]) over an explicit,
//! versioned, length-prefixed encoding of the module hash and the engine [`Fingerprint`]. The
//! encoding never goes through `std::hash::Hash` or serde: both are free to change between Rust or
//! crate releases, and a key that changes across a shim upgrade would silently empty the cache
//! (or, worse, a key that collides across options would hand out code built with other flags).
//!
//! Encoding, fed to the hasher in this order (all integers little-endian):
//!
//! ```text
//! u32 KEY_FORMAT_VERSION
//! field("module", module_hash[32])
//! field("engine", utf8) field("engine_version", utf8) field("aot_format_version", u32)
//! field("target", utf8)
//! field("options", u64 count) then per option, in the caller's order:
//!     field("option.key", utf8) field("option.value", utf8)
//! field("cpu_features", u64 count) then per feature, sorted and deduplicated:
//!     field("cpu_feature", utf8)
//! where field(tag, bytes) = u64 len(tag) ‖ tag ‖ u64 len(bytes) ‖ bytes
//! ```
//!
//! Compile options are ordered because order can matter to a compiler; CPU features are a set.

use std::fmt;
use std::str::FromStr;

/// Domain-separation context of key derivation. Changing it (or the encoding) is a new key
/// format: bump [`KEY_FORMAT_VERSION`] and the golden test together.
pub const KEY_CONTEXT: &str = "wasmedge-aot-cache 2026-11-28 artifact key v1";

/// Version of the key encoding documented in this module.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// Module size from which [`HashThreads::Pool`] hashes with rayon (`Hasher::update_rayon`),
/// chosen by measurement (`benches/cache.rs`, two runs on a 2-core machine shared with
/// concurrent builds, medians):
///
/// | size   | single GiB/s | rayon GiB/s |
/// |--------|--------------|-------------|
/// | 64 KiB | 5.7 - 5.7    | 2.5 - 2.5   |
/// | 256 KiB| 4.2 - 5.3    | 3.8 - 3.9   |
/// | 1 MiB  | 4.8 - 5.6    | 4.8 - 5.0   |
/// | 16 MiB | 3.1 - 3.5    | 3.7 - 3.9   |
/// | 64 MiB | 3.3 - 3.6    | 2.3 - 3.7   |
///
/// Rayon loses below 1 MiB, is a toss-up at 1 MiB and only wins (slightly) from 16 MiB: with
/// two busy cores there is nothing to gain below that. Larger nodes would gain earlier, but the
/// memo makes module hashing a once-per-file cost anyway.
pub const RAYON_THRESHOLD: usize = 16 * 1024 * 1024;

/// Everything about the engine that changes the compiled output, supplied by the caller.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint {
    /// Engine name, e.g. `wasmedge`.
    pub engine: String,
    /// Engine version: whatever identifies the engine's build, e.g. `0.14.1`. The WasmEdge
    /// engine puts the version the loaded library reports and the library's GNU build id
    /// here (`0.14.1 build-id 8f3a...`), so a rebuilt library of one version is a new key.
    pub engine_version: String,
    /// Version of the AOT artifact format the engine produces and accepts.
    pub aot_format_version: u32,
    /// Target triple, e.g. `x86_64-unknown-linux-gnu`.
    pub target: String,
    /// Every compile option as ordered key/value pairs (optimization level, output format, ...).
    pub options: Vec<(String, String)>,
    /// Target CPU features the code may use; order does not matter.
    pub cpu_features: Vec<String>,
}

/// Whether module hashing may use threads.
///
/// A process that forks must never start a thread pool: the child inherits the pool's state
/// but not its threads, and waits forever on the first job it hands it (a 20 MB module's
/// create hung that way in the runner's container processes). So the default is one thread,
/// and only a process that never forks after hashing (the admin tool) asks for the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashThreads {
    /// The calling thread only; safe in a process that forks.
    #[default]
    One,
    /// rayon's global pool from [`RAYON_THRESHOLD`] bytes on.
    Pool,
}

/// blake3 digest of a module's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash(pub [u8; 32]);

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleHash({})", hex(&self.0))
    }
}

impl ModuleHash {
    /// Hashes in memory on the calling thread.
    pub fn of_bytes(data: &[u8]) -> Self {
        Self::of_bytes_single(data)
    }

    /// Hashes in memory, with rayon from [`RAYON_THRESHOLD`] bytes on if `threads` allows.
    pub fn of_bytes_with(data: &[u8], threads: HashThreads) -> Self {
        match threads {
            HashThreads::Pool if data.len() >= RAYON_THRESHOLD => Self::of_bytes_rayon(data),
            _ => Self::of_bytes_single(data),
        }
    }

    /// Single-threaded hashing (exposed for the benchmark).
    pub fn of_bytes_single(data: &[u8]) -> Self {
        ModuleHash(*blake3::hash(data).as_bytes())
    }

    /// Multi-threaded hashing on the global rayon pool (exposed for the benchmark). Same result
    /// as [`ModuleHash::of_bytes_single`].
    pub fn of_bytes_rayon(data: &[u8]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update_rayon(data);
        ModuleHash(*h.finalize().as_bytes())
    }

    /// Lower-case hex (64 digits), the form a spawn request carries.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// A key (or key prefix) that is not one: not hex, or too short or too long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key {input:?}: {reason}")]
pub struct InvalidKey {
    /// The input, cut at 80 characters.
    pub input: String,
    pub reason: &'static str,
}

impl InvalidKey {
    pub(crate) fn new(input: &str, reason: &'static str) -> InvalidKey {
        InvalidKey {
            input: input.chars().take(80).collect(),
            reason,
        }
    }
}

impl FromStr for ModuleHash {
    type Err = InvalidKey;

    /// 64 hex digits, as [`ModuleHash::to_hex`] writes them.
    fn from_str(s: &str) -> Result<ModuleHash, InvalidKey> {
        s.parse::<Key>().map(|k| ModuleHash(k.0))
    }
}

/// A module's hash computed piece by piece, for bytes that arrive in chunks (a layer read
/// from containerd's content store). Same result as [`ModuleHash::of_bytes`] on the whole.
#[derive(Default)]
pub struct ModuleHasher(blake3::Hasher);

impl fmt::Debug for ModuleHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ModuleHasher")
    }
}

impl ModuleHasher {
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finalize(&self) -> ModuleHash {
        ModuleHash(*self.0.finalize().as_bytes())
    }
}

/// The identity of a cache entry. `Display` is 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub(crate) [u8; 32]);

impl Key {
    /// Derives the key of `module` compiled by the engine described by `fp`.
    pub fn derive(module: &ModuleHash, fp: &Fingerprint) -> Key {
        let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        h.update(&KEY_FORMAT_VERSION.to_le_bytes());
        field(&mut h, b"module", &module.0);
        field(&mut h, b"engine", fp.engine.as_bytes());
        field(&mut h, b"engine_version", fp.engine_version.as_bytes());
        field(
            &mut h,
            b"aot_format_version",
            &fp.aot_format_version.to_le_bytes(),
        );
        field(&mut h, b"target", fp.target.as_bytes());
        field(&mut h, b"options", &(fp.options.len() as u64).to_le_bytes());
        for (k, v) in &fp.options {
            field(&mut h, b"option.key", k.as_bytes());
            field(&mut h, b"option.value", v.as_bytes());
        }
        let mut feats: Vec<&str> = fp.cpu_features.iter().map(String::as_str).collect();
        feats.sort_unstable();
        feats.dedup();
        field(&mut h, b"cpu_features", &(feats.len() as u64).to_le_bytes());
        for f in feats {
            field(&mut h, b"cpu_feature", f.as_bytes());
        }
        Key(*h.finalize().as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a key from raw bytes (e.g. read back from a record).
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// Lower-case hex, the form used in file names.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

fn field(h: &mut blake3::Hasher, tag: &[u8], data: &[u8]) {
    h.update(&(tag.len() as u64).to_le_bytes());
    h.update(tag);
    h.update(&(data.len() as u64).to_le_bytes());
    h.update(data);
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl FromStr for Key {
    type Err = InvalidKey;

    fn from_str(s: &str) -> Result<Key, InvalidKey> {
        let invalid = |reason| InvalidKey::new(s, reason);
        if s.len() != 64 {
            return Err(invalid("a key is 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(|| invalid("not hex"))?;
            let lo = hex_val(pair[1]).ok_or_else(|| invalid("not hex"))?;
            out[i] = hi << 4 | lo;
        }
        Ok(Key(out))
    }
}

pub(crate) fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn golden_fp() -> Fingerprint {
        Fingerprint {
            engine: "wasmedge".into(),
            engine_version: "0.14.0".into(),
            aot_format_version: 1,
            target: "x86_64-unknown-linux-gnu".into(),
            options: vec![
                ("opt-level".into(), "O2".into()),
                ("format".into(), "so".into()),
            ],
            cpu_features: vec!["sse4.2".into(), "avx2".into()],
        }
    }

    #[test]
    fn module_hash_in_pieces_and_hex_round_trip() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let mut h = ModuleHasher::default();
        for chunk in data.chunks(4093) {
            h.update(chunk);
        }
        let whole = ModuleHash::of_bytes(&data);
        assert_eq!(h.finalize(), whole);
        assert_eq!(whole.to_hex().parse::<ModuleHash>().unwrap(), whole);
        assert!("abc".parse::<ModuleHash>().is_err());
        assert!("g".repeat(64).parse::<ModuleHash>().is_err());
    }

    /// Pins the key format: if this changes, every node's cache is invalidated on upgrade, so it
    /// must only change together with KEY_FORMAT_VERSION.
    #[test]
    fn golden_key() {
        let m = ModuleHash::of_bytes(b"\0asm\x01\0\0\0");
        assert_eq!(
            m.0,
            *blake3::hash(b"\0asm\x01\0\0\0").as_bytes(),
            "module hash is plain blake3"
        );
        let key = Key::derive(&m, &golden_fp());
        assert_eq!(
            key.to_hex(),
            "8821a8b0abcb0e4fbdc752177d6f18532d1deade1eb934623a9828e4e7284692"
        );
    }

    #[test]
    fn feature_order_does_not_matter_but_option_order_does() {
        let m = ModuleHash::of_bytes(b"x");
        let a = golden_fp();
        let mut b = a.clone();
        b.cpu_features.reverse();
        b.cpu_features.push("avx2".into());
        assert_eq!(Key::derive(&m, &a), Key::derive(&m, &b));
        let mut c = a.clone();
        c.options.reverse();
        assert_ne!(Key::derive(&m, &a), Key::derive(&m, &c));
    }

    #[test]
    fn rayon_and_single_agree() {
        let data: Vec<u8> = (0..(2 << 20) + 1).map(|i| (i * 7) as u8).collect();
        assert_eq!(
            ModuleHash::of_bytes_single(&data),
            ModuleHash::of_bytes_rayon(&data)
        );
    }

    #[test]
    fn key_hex_round_trip_and_errors() {
        let k = Key::derive(&ModuleHash::of_bytes(b"m"), &golden_fp());
        assert_eq!(k.to_hex().parse::<Key>().unwrap(), k);
        assert_eq!(k.to_hex().to_uppercase().parse::<Key>().unwrap(), k);
        let e = "abc".parse::<Key>().unwrap_err().to_string();
        assert_eq!(e, "invalid key \"abc\": a key is 64 hex digits");
        let e = "g".repeat(64).parse::<Key>().unwrap_err().to_string();
        assert!(e.ends_with(": not hex"), "{e}");
    }

    fn arb_fp() -> impl Strategy<Value = Fingerprint> {
        (
            ".{0,8}",
            ".{0,8}",
            any::<u32>(),
            ".{0,8}",
            proptest::collection::vec((".{0,6}", ".{0,6}"), 0..4),
            proptest::collection::vec("[a-z0-9.]{1,6}", 0..4),
        )
            .prop_map(|(e, v, a, t, o, c)| Fingerprint {
                engine: e,
                engine_version: v,
                aot_format_version: a,
                target: t,
                options: o,
                cpu_features: c,
            })
    }

    proptest! {
        #[test]
        fn derivation_is_deterministic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), fp in arb_fp()) {
            let m = ModuleHash::of_bytes(&bytes);
            prop_assert_eq!(Key::derive(&m, &fp), Key::derive(&m, &fp.clone()));
            prop_assert_eq!(m, ModuleHash::of_bytes_rayon(&bytes));
        }

        #[test]
        fn derivation_is_fingerprint_sensitive(bytes in proptest::collection::vec(any::<u8>(), 0..256), fp in arb_fp(), which in 0usize..6, extra in "[a-z]{1,4}") {
            let m = ModuleHash::of_bytes(&bytes);
            let mut other = fp.clone();
            match which {
                0 => other.engine.push_str(&extra),
                1 => other.engine_version.push_str(&extra),
                2 => other.aot_format_version = other.aot_format_version.wrapping_add(1),
                3 => other.target.push_str(&extra),
                4 => other.options.push((extra.clone(), String::new())),
                _ => {
                    prop_assume!(!other.cpu_features.contains(&extra));
                    other.cpu_features.push(extra.clone());
                }
            }
            prop_assert_ne!(Key::derive(&m, &fp), Key::derive(&m, &other));
            // Moving a byte between adjacent fields must not collide (length prefixes).
            let mut shifted = fp.clone();
            shifted.engine.push('x');
            shifted.engine_version.insert(0, 'x');
            let mut base = fp.clone();
            base.engine_version.insert_str(0, "xx");
            prop_assert_ne!(Key::derive(&m, &shifted), Key::derive(&m, &base));
        }

        #[test]
        fn derivation_is_module_sensitive(a in proptest::collection::vec(any::<u8>(), 0..256), b in proptest::collection::vec(any::<u8>(), 0..256), fp in arb_fp()) {
            prop_assume!(a != b);
            prop_assert_ne!(Key::derive(&ModuleHash::of_bytes(&a), &fp), Key::derive(&ModuleHash::of_bytes(&b), &fp));
        }
    }
}
