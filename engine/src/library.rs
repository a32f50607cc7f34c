//! Which libwasmedge this process runs: the version it reports and the GNU build id of the
//! object the dynamic loader mapped.
//!
//! The cache key must change when the compiler changes. The version alone misses a library
//! rebuilt (patched, built with another LLVM) under the same version number; the linker's
//! build id (`NT_GNU_BUILD_ID`, a hash of the linked output) changes with every such rebuild.
//! It is read from the mapped library itself (`dl_iterate_phdr`), so it is the library that
//! was actually loaded, wherever the loader found it, not a file on disk that may have been
//! replaced since.

use std::ffi::{c_int, c_void, CStr};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// `NT_GNU_BUILD_ID` (elf.h), in a note named `GNU`.
const NT_GNU_BUILD_ID: u32 = 3;

/// The identity of the loaded libwasmedge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// What `WasmEdge_VersionGet` returns, e.g. `0.14.1`.
    pub version: String,
    /// Where the loader mapped it from.
    pub path: PathBuf,
    /// Its GNU build id, lower-case hex; `None` for a library linked without one.
    pub build_id: Option<String>,
}

impl Library {
    /// The library that defines `WasmEdge_VersionGet` in this process (looked up once: a
    /// process never changes the library it runs).
    pub fn loaded() -> &'static Library {
        static LOADED: std::sync::OnceLock<Library> = std::sync::OnceLock::new();
        LOADED.get_or_init(Library::find)
    }

    fn find() -> Library {
        let version = wasmedge_sys::utils::version_string();
        let (path, build_id) = match object_of_symbol(c"WasmEdge_VersionGet") {
            Some((path, id)) => (path, id.map(|b| hex(&b))),
            None => (PathBuf::new(), None),
        };
        Library {
            version,
            path,
            build_id,
        }
    }

    /// The engine version of the cache fingerprint: `<version> build-id <hex>`. A library
    /// without a build id is told apart by its file's size and mtime instead (a rebuild
    /// installs a new file), which is coarser but never conflates two builds of one version.
    pub fn fingerprint_version(&self) -> String {
        match &self.build_id {
            Some(id) => format!("{} build-id {id}", self.version),
            None => {
                let file = std::fs::metadata(&self.path)
                    .map(|m| format!("{}-{}.{}", m.size(), m.mtime(), m.mtime_nsec()))
                    .unwrap_or_else(|_| "unknown".into());
                format!("{} file {file}", self.version)
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Search {
    addr: usize,
    found: Option<(PathBuf, Option<Vec<u8>>)>,
}

/// The path and build id of the loaded object that defines `symbol`.
fn object_of_symbol(symbol: &CStr) -> Option<(PathBuf, Option<Vec<u8>>)> {
    // SAFETY: `symbol` is NUL-terminated; RTLD_DEFAULT searches the objects already loaded
    // and loads nothing.
    let addr = unsafe { libc::dlsym(libc::RTLD_DEFAULT, symbol.as_ptr()) };
    if addr.is_null() {
        return None;
    }
    let mut search = Search {
        addr: addr as usize,
        found: None,
    };
    // SAFETY: the callback only reads the program headers the loader hands it, and the
    // notes inside the object's own loaded segments (checked before reading); `search`
    // outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
    search.found
}

/// `dl_iterate_phdr` callback: stops (returns 1) at the object whose loaded segments hold
/// `Search::addr`.
unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: the loader passes a valid `info` for the duration of the call, and `data` is
    // the `Search` that `object_of_symbol` passed.
    let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader guarantees `dlpi_phnum` program headers at `dlpi_phdr`.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let base = info.dlpi_addr as usize;
    let loads: Vec<(usize, usize)> = phdrs
        .iter()
        .filter(|p| p.p_type == libc::PT_LOAD)
        .map(|p| {
            (
                base + p.p_vaddr as usize,
                p.p_filesz as usize,
                p.p_memsz as usize,
            )
        })
        .map(|(start, filesz, memsz)| (start, start + filesz.max(memsz)))
        .collect();
    if !loads.iter().any(|&(s, e)| (s..e).contains(&search.addr)) {
        return 0;
    }
    let path = if info.dlpi_name.is_null() {
        PathBuf::new()
    } else {
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) };
        PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()),
        )
    };
    let mut id = None;
    for p in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
        let start = base + p.p_vaddr as usize;
        let len = p.p_filesz as usize;
        // Read only what a loaded segment maps from the file.
        let mapped = phdrs
            .iter()
            .filter(|l| l.p_type == libc::PT_LOAD)
            .map(|l| (base + l.p_vaddr as usize, l.p_filesz as usize))
            .any(|(s, n)| start >= s && start + len <= s + n);
        if !mapped {
            continue;
        }
        // SAFETY: the range lies inside a loaded, file-backed segment of this object, which
        // stays mapped while the loader holds its lock during this callback.
        let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
        let align = if p.p_align == 8 { 8 } else { 4 };
        if let Some(found) = find_build_id(bytes, align) {
            id = Some(found.to_vec());
            break;
        }
    }
    search.found = Some((path, id));
    1
}

/// The descriptor of the first `GNU` note of type `NT_GNU_BUILD_ID` in a note segment.
/// Bounded: every length is checked against what is left.
fn find_build_id(mut notes: &[u8], align: usize) -> Option<&[u8]> {
    let pad = |n: usize| n.checked_next_multiple_of(align);
    let word = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_at: usize = 12;
        let desc_at = name_at.checked_add(pad(namesz)?)?;
        let end = desc_at.checked_add(pad(descsz)?)?;
        let name = notes.get(name_at..name_at.checked_add(namesz)?)?;
        let desc = notes.get(desc_at..desc_at.checked_add(descsz)?)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v.extend_from_slice(desc);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    }

    #[test]
    fn the_build_id_note_is_found_among_others_and_bad_lengths_end_the_search() {
        let mut notes = note(b"GNU\0", 5, &[1; 16]); // NT_GNU_PROPERTY_TYPE_0
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab; 20]));
        assert_eq!(find_build_id(&notes, 4), Some(&[0xab; 20][..]));
        assert_eq!(find_build_id(&note(b"Go\0\0", 3, &[1; 8]), 4), None);
        let mut bad = note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab; 20]);
        bad[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(find_build_id(&bad, 4), None);
        assert_eq!(find_build_id(&bad[..11], 4), None);
    }
}
