//! The one way this project replaces a small file: write a temporary file beside it, then
//! rename it over the old one.
//!
//! The temporary name is unpredictable (`.<name>.<random>.tmp`, tempfile's generator) and the
//! file is created with `O_CREAT | O_EXCL | O_NOFOLLOW`, so nothing planted in the directory
//! (a symlink or a file at the name) is ever opened or followed: a collision is retried with
//! another name. `rename` replaces the directory entry, never what a symlink at the final name
//! points to. On any error the temporary file is removed. The directory must be one only we
//! can write (see [`crate::trust`]): a rename in a directory others can write proves nothing.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// How hard [`write_atomic`] works to make the new contents survive a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync the file before the rename and the directory after it: after a crash the path
    /// holds the old or the new contents, complete.
    Durable,
    /// No fsync: after a crash the path may hold the old contents or (on some file systems)
    /// an empty file. For records that are cheap to lose (a memo, statistics).
    BestEffort,
}

/// Replaces the file at `path` with `bytes`, with permissions `mode` (the umask does not apply).
pub fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    durability: Durability,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let prefix = format!(".{}.", name.to_string_lossy());
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .rand_bytes(12)
        .make_in(dir, |p| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
        })?;
    // Exactly `mode`, whatever the umask: an installed binary must stay executable.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.as_file_mut().write_all(bytes)?;
    if durability == Durability::Durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    if durability == Durability::Durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads back a small file such a writer replaces: never through a symlink at `path`, never a
/// non-regular file, never more than `max` bytes (checked before allocating). `None` when it
/// is missing or any of that fails: these files are records a reader can do without.
pub fn read_small(path: &Path, max: usize) -> Option<Vec<u8>> {
    let mut f = crate::fsutil::open_nofollow(path).ok()?;
    crate::format::read_bounded(&mut f, max).ok()
}

/// Whether `file_name` is a temporary file [`write_atomic`] made for `name` (a leftover of a
/// process that died between create and rename).
pub fn is_temp_of(file_name: &str, name: &str) -> bool {
    file_name
        .strip_prefix('.')
        .and_then(|s| s.strip_prefix(name))
        .and_then(|s| s.strip_prefix('.'))
        .is_some_and(|s| s.ends_with(".tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("stats");
        write_atomic(&p, b"one", 0o600, Durability::Durable).unwrap();
        // Group-writable: the usual umask (022) would take that bit away; the mode asked for
        // is the mode the file gets.
        write_atomic(&p, b"two", 0o664, Durability::BestEffort).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o664
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("stats")]);
    }

    #[test]
    fn a_fifo_or_a_directory_reads_as_absent_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix_mkfifo(&fifo);
        assert_eq!(read_small(&fifo, 1024), None);
        assert_eq!(read_small(dir.path(), 1024), None);
        let big = dir.path().join("big");
        fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert_eq!(read_small(&big, 1024), None);
        fs::write(&big, b"ok").unwrap();
        assert_eq!(read_small(&big, 1024).as_deref(), Some(&b"ok"[..]));
    }

    fn nix_mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn a_symlink_at_the_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"root's file").unwrap();
        let p = dir.path().join("phases.json");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_atomic(&p, b"{}", 0o600, Durability::Durable).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        assert!(fs::symlink_metadata(&p).unwrap().is_file());
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        assert_ne!(
            fs::metadata(&p).unwrap().ino(),
            fs::metadata(&victim).unwrap().ino()
        );
    }

    #[test]
    fn temporary_names_are_recognised() {
        assert!(is_temp_of(".stats.a1B2c3D4e5F6.tmp", "stats"));
        assert!(!is_temp_of("stats", "stats"));
        assert!(!is_temp_of(".stats2.x.tmp", "stats"));
        assert!(!is_temp_of(".stats.x", "stats"));
    }
}
