//! Binary formats of every file the cache writes, and their bounded, checked decoders.
//!
//! All three records share one frame (integers little-endian):
//!
//! ```text
//! offset size
//! 0      8    magic                 b"WAOCMETA" | b"WAOCMEMO" | b"WAOCSTAT"
//! 8      2    version               1
//! 10     2    flags                 per record, unknown bits are rejected
//! 12     4    body_len              bytes of body, bounded per record
//! 16     n    body
//! 16+n   32   checksum              blake3 of bytes [0, 16+n)
//! ```
//!
//! Decoders read at most the record's bound plus one byte, then check magic and version before
//! anything else, then length, then checksum, then fields. Anything unexpected is a
//! [`RecordError`]; callers turn it into a miss (entry), a re-hash (memo) or zeroed counters
//! (stats), never into trust.
//!
//! **Entry metadata** (`entries/<kk>/<key>/meta`, flags bit 0 = artifact is a shared library),
//! at most [`META_MAX`] bytes:
//!
//! ```text
//! key[32] digest[32] size:u64 created_unix_ns:u64
//! identity: dev:u64 ino:u64 size:u64 mtime_ns:i64 ctime_ns:i64
//! hint_len:u16 hint[hint_len]   (utf-8, at most 255 bytes, informational only)
//! ```
//!
//! **Hash memo** (`memo/<id>`, flags 0), body exactly 72 bytes: `identity(40) module_hash[32]`.
//!
//! **Stats** (`stats`, flags 0): `count:u32` then `count` u64 counters in the order of
//! [`crate::Stats`] fields; a newer writer may append counters, an older reader ignores them.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use crate::key::{Key, ModuleHash};

pub(crate) const META_MAGIC: &[u8; 8] = b"WAOCMETA";
pub(crate) const MEMO_MAGIC: &[u8; 8] = b"WAOCMEMO";
pub(crate) const STATS_MAGIC: &[u8; 8] = b"WAOCSTAT";
pub(crate) const FORMAT_VERSION: u16 = 1;
/// Largest metadata record we accept.
pub const META_MAX: usize = 512;
pub(crate) const MEMO_MAX: usize = 16 + 72 + 32;
pub(crate) const STATS_MAX: usize = 16 + 4 + 64 * 8 + 32;
pub(crate) const HINT_MAX: usize = 255;
const HEADER: usize = 16;
const CHECKSUM: usize = 32;
pub(crate) const FLAG_SHARED_LIBRARY: u16 = 1;

/// Why a record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record is {0} bytes, more than the limit of {1}")]
    TooLarge(u64, usize),
    #[error("record is truncated")]
    Truncated,
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    BadVersion(u16),
    #[error("unknown flags {0:#x}")]
    BadFlags(u16),
    #[error("length field {0} does not match")]
    BadLength(u32),
    #[error("checksum mismatch")]
    BadChecksum,
    #[error("invalid field: {0}")]
    BadField(&'static str),
    #[error("not a regular file")]
    NotRegular,
    #[error("read failed: {0}")]
    Io(String),
}

/// What identifies one version of a file without reading it: if any of these changed, the file may
/// have changed. `ctime` cannot be set from user space, so a rewrite that restores `mtime` is still
/// seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileId {
    pub fn of(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
        }
    }

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
    }

    fn get(r: &mut Reader<'_>) -> Result<FileId, RecordError> {
        Ok(FileId {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
        })
    }

    pub(crate) fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40);
        self.put(&mut v);
        v
    }
}

/// The metadata record of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRecord {
    pub key: Key,
    pub digest: [u8; 32],
    pub size: u64,
    pub created_unix_ns: u64,
    pub identity: FileId,
    pub shared_library: bool,
    pub hint: String,
}

fn frame(magic: &[u8; 8], flags: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len() + CHECKSUM);
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Checks the frame and returns `(flags, body)`.
fn unframe<'a>(
    magic: &[u8; 8],
    max: usize,
    bytes: &'a [u8],
) -> Result<(u16, &'a [u8]), RecordError> {
    if bytes.len() > max {
        return Err(RecordError::TooLarge(bytes.len() as u64, max));
    }
    if bytes.len() < 8 {
        return Err(RecordError::Truncated);
    }
    if &bytes[..8] != magic {
        return Err(RecordError::BadMagic);
    }
    if bytes.len() < HEADER + CHECKSUM {
        return Err(RecordError::Truncated);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(RecordError::BadVersion(version));
    }
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
    let len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if HEADER as u64 + len as u64 + CHECKSUM as u64 != bytes.len() as u64 {
        return Err(RecordError::BadLength(len));
    }
    let end = HEADER + len as usize;
    if blake3::hash(&bytes[..end]).as_bytes() != &bytes[end..] {
        return Err(RecordError::BadChecksum);
    }
    Ok((flags, &bytes[HEADER..end]))
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn arr32(&mut self) -> Result<[u8; 32], RecordError> {
        Ok(self.take(32)?.try_into().expect("32 bytes"))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn done(&self) -> Result<(), RecordError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RecordError::BadField("trailing bytes"))
        }
    }
}

impl MetaRecord {
    pub fn encode(&self) -> Vec<u8> {
        let hint = truncate_hint(&self.hint);
        let mut body = Vec::with_capacity(160);
        body.extend_from_slice(self.key.as_bytes());
        body.extend_from_slice(&self.digest);
        body.extend_from_slice(&self.size.to_le_bytes());
        body.extend_from_slice(&self.created_unix_ns.to_le_bytes());
        self.identity.put(&mut body);
        body.extend_from_slice(&(hint.len() as u16).to_le_bytes());
        body.extend_from_slice(hint.as_bytes());
        let flags = if self.shared_library {
            FLAG_SHARED_LIBRARY
        } else {
            0
        };
        frame(META_MAGIC, flags, &body)
    }

    pub fn decode(bytes: &[u8]) -> Result<MetaRecord, RecordError> {
        let (flags, body) = unframe(META_MAGIC, META_MAX, bytes)?;
        if flags & !FLAG_SHARED_LIBRARY != 0 {
            return Err(RecordError::BadFlags(flags));
        }
        let mut r = Reader(body);
        let key = Key::from_bytes(r.arr32()?);
        let digest = r.arr32()?;
        let size = r.u64()?;
        let created_unix_ns = r.u64()?;
        let identity = FileId::get(&mut r)?;
        let hint_len = r.u16()? as usize;
        if hint_len > HINT_MAX {
            return Err(RecordError::BadField("hint too long"));
        }
        let hint = std::str::from_utf8(r.take(hint_len)?)
            .map_err(|_| RecordError::BadField("hint is not utf-8"))?
            .to_owned();
        r.done()?;
        if identity.size != size {
            return Err(RecordError::BadField("identity size differs from size"));
        }
        Ok(MetaRecord {
            key,
            digest,
            size,
            created_unix_ns,
            identity,
            shared_library: flags & FLAG_SHARED_LIBRARY != 0,
            hint,
        })
    }
}

/// Cuts a hint to [`HINT_MAX`] bytes on a character boundary.
pub(crate) fn truncate_hint(s: &str) -> &str {
    let mut end = s.len().min(HINT_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

pub(crate) fn encode_memo(id: &FileId, hash: &ModuleHash) -> Vec<u8> {
    let mut body = id.to_bytes();
    body.extend_from_slice(&hash.0);
    frame(MEMO_MAGIC, 0, &body)
}

pub(crate) fn decode_memo(bytes: &[u8]) -> Result<(FileId, ModuleHash), RecordError> {
    let (flags, body) = unframe(MEMO_MAGIC, MEMO_MAX, bytes)?;
    if flags != 0 {
        return Err(RecordError::BadFlags(flags));
    }
    let mut r = Reader(body);
    let id = FileId::get(&mut r)?;
    let h = ModuleHash(r.arr32()?);
    r.done()?;
    Ok((id, h))
}

pub(crate) fn encode_stats(counters: &[u64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + counters.len() * 8);
    body.extend_from_slice(&(counters.len() as u32).to_le_bytes());
    for c in counters {
        body.extend_from_slice(&c.to_le_bytes());
    }
    frame(STATS_MAGIC, 0, &body)
}

pub(crate) fn decode_stats(bytes: &[u8]) -> Result<Vec<u64>, RecordError> {
    let (flags, body) = unframe(STATS_MAGIC, STATS_MAX, bytes)?;
    if flags != 0 {
        return Err(RecordError::BadFlags(flags));
    }
    let mut r = Reader(body);
    let n = r.u32()? as usize;
    if n > 64 {
        return Err(RecordError::BadField("too many counters"));
    }
    let out = (0..n).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
    r.done()?;
    Ok(out)
}

/// Reads a whole record from an already opened file, refusing non-regular files and anything
/// longer than `max` before allocating for it.
pub(crate) fn read_bounded(file: &mut File, max: usize) -> Result<Vec<u8>, RecordError> {
    let m = file
        .metadata()
        .map_err(|e| RecordError::Io(e.to_string()))?;
    if !m.file_type().is_file() {
        return Err(RecordError::NotRegular);
    }
    if m.len() > max as u64 {
        return Err(RecordError::TooLarge(m.len(), max));
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    // `take` also bounds a file that grows after the fstat above.
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| RecordError::Io(e.to_string()))?;
    if buf.len() > max {
        return Err(RecordError::TooLarge(buf.len() as u64, max));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_meta() -> impl Strategy<Value = MetaRecord> {
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            any::<(u64, u64, i64, i64, u64)>(),
            any::<bool>(),
            ".{0,80}",
        )
            .prop_map(|(k, d, size, (dev, ino, m, c, cr), sl, hint)| MetaRecord {
                key: Key::from_bytes(k),
                digest: d,
                size,
                created_unix_ns: cr,
                identity: FileId {
                    dev,
                    ino,
                    size,
                    mtime_ns: m,
                    ctime_ns: c,
                },
                shared_library: sl,
                hint: truncate_hint(&hint).to_owned(),
            })
    }

    proptest! {
        #[test]
        fn meta_round_trip(m in arb_meta()) {
            let bytes = m.encode();
            prop_assert!(bytes.len() <= META_MAX);
            prop_assert_eq!(MetaRecord::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn meta_rejects_any_single_byte_change(m in arb_meta(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut bytes = m.encode();
            let i = pos.index(bytes.len());
            bytes[i] ^= x;
            prop_assert!(MetaRecord::decode(&bytes).is_err());
        }

        #[test]
        fn meta_rejects_truncation(m in arb_meta(), cut in any::<prop::sample::Index>()) {
            let bytes = m.encode();
            let n = cut.index(bytes.len());
            prop_assert!(MetaRecord::decode(&bytes[..n]).is_err());
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = MetaRecord::decode(&bytes);
            let _ = decode_memo(&bytes);
            let _ = decode_stats(&bytes);
        }

        #[test]
        fn memo_and_stats_round_trip(id in any::<(u64, u64, u64, i64, i64)>(), h in any::<[u8; 32]>(), c in proptest::collection::vec(any::<u64>(), 0..64)) {
            let id = FileId { dev: id.0, ino: id.1, size: id.2, mtime_ns: id.3, ctime_ns: id.4 };
            prop_assert_eq!(decode_memo(&encode_memo(&id, &ModuleHash(h))).unwrap(), (id, ModuleHash(h)));
            prop_assert_eq!(decode_stats(&encode_stats(&c)).unwrap(), c);
        }
    }

    #[test]
    fn magic_and_version_are_checked_first() {
        let m = MetaRecord {
            key: Key::from_bytes([1; 32]),
            digest: [2; 32],
            size: 3,
            created_unix_ns: 4,
            identity: FileId {
                size: 3,
                ..FileId::default()
            },
            shared_library: true,
            hint: "m.wasm".into(),
        };
        let mut b = m.encode();
        b[0] = b'X';
        assert_eq!(MetaRecord::decode(&b), Err(RecordError::BadMagic));
        let mut b = m.encode();
        b[8] = 2;
        assert_eq!(MetaRecord::decode(&b), Err(RecordError::BadVersion(2)));
        assert_eq!(
            MetaRecord::decode(&encode_memo(&FileId::default(), &ModuleHash([0; 32]))),
            Err(RecordError::BadMagic)
        );
        assert_eq!(
            MetaRecord::decode(&vec![0; META_MAX + 1]),
            Err(RecordError::TooLarge(META_MAX as u64 + 1, META_MAX))
        );
    }
}
