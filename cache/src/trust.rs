//! The one trust rule for directories the shim loads code from or writes to as root, checked
//! from `/` down.
//!
//! A directory is only as safe as the path that leads to it: whoever can write any directory
//! on the way can rename the rest of the path away and put a directory (or a symlink to one)
//! of their own in its place, and every later use of the path text then reaches their files.
//! The cache's own checks (record, digest, identity) cannot help: the attacker writes the
//! records too. So every component, from `/` to the directory itself, must be
//!
//! * owned by root or by the user we run as (the owner of a directory can always rename and
//!   replace what is in it, whatever its mode);
//! * not writable by group or others, with one exception for ancestors, below;
//! * a real directory, or (on the way, not as the directory itself) a symlink that is itself
//!   owned by root or by us: its target is then walked the same way, from `/` for an absolute
//!   one. The mode of a symlink means nothing, and only the writers of its directory could
//!   have put it there, who are already trusted;
//!
//! and the directory itself must be a real directory owned by the user we run as and never
//! writable by group or others.
//!
//! # Sticky world-writable ancestors such as `/tmp`
//!
//! A root-owned directory with the sticky bit (`/tmp`, mode 1777) is accepted as an ancestor,
//! never as the directory itself. Thinking as a local attacker who can write there:
//!
//! * they cannot rename, unlink or replace an entry they do not own: with the sticky bit only
//!   the entry's owner, the directory's owner (root) or a process with `CAP_FOWNER` may. An
//!   entry owned by root or by us therefore stays where it is, and the walk below it holds.
//! * they can create a name before we do (a directory, or a symlink to their own tree). The
//!   walk then finds an entry owned by them and refuses it, naming the entry and its owner;
//!   it never follows it. The attacker gets a denial of service, which a name of their choice
//!   in a world-writable directory always gives them, and no more. When the walk creates a
//!   missing component itself it uses `mkdir`, which never follows a symlink planted at that
//!   name, and checks the result like any other entry.
//! * they cannot hard-link a directory, and files found through `/tmp` are never trusted:
//!   only the directories on the way are.
//! * a sticky directory owned by someone else is refused: its owner may rename anything in
//!   it.
//!
//! After the walk, nobody but root and us can change any component, so the path text keeps
//! naming the same directory for as long as the process uses it.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Most symlinks followed in one walk, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// What [`check_dir`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The directory exists and is trusted; `path` is where the walk resolved it to.
    Exists { path: PathBuf, uid: u32, mode: u32 },
    /// The directory does not exist yet. Everything up to `existing`, its deepest existing
    /// ancestor, is trusted: [`ensure_dir`] would create the rest there.
    Missing { existing: PathBuf },
}

/// Checks `path` from `/` down without creating or changing anything. `owner` is the user the
/// directory must belong to (the effective uid of the process that will use it).
pub fn check_dir(path: &Path, owner: u32) -> Result<Found> {
    walk(path, owner, None)
}

/// Like [`check_dir`], creating missing components: ancestors with mode 0755, the directory
/// itself with `mode` (the umask may remove more). Returns the resolved path.
pub fn ensure_dir(path: &Path, owner: u32, mode: u32) -> Result<PathBuf> {
    match walk(path, owner, Some(mode))? {
        Found::Exists { path, .. } => Ok(path),
        Found::Missing { existing } => Err(Error::io(
            "create directory",
            existing,
            None,
            io::Error::from(io::ErrorKind::NotFound),
        )),
    }
}

/// Checks a directory inside one already walked (the cache's own sub-directories): the same
/// rule as for the last component of a walk.
pub(crate) fn check_inside(dir: &Path, owner: u32) -> Result<()> {
    let m = fs::symlink_metadata(dir).map_err(|e| Error::io("inspect directory", dir, None, e))?;
    if m.file_type().is_symlink() {
        return Err(untrusted(dir, dir, "is a symlink".into()));
    }
    check_component(dir, dir, &m, owner, Role::Last)
}

/// The directory's effective uid, the `owner` to pass for a directory this process uses.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// On the way to the directory: may be a root-owned sticky directory.
    Ancestor,
    /// The directory itself.
    Last,
}

/// The rule for one component, applied to its `lstat`.
fn check_component(
    path: &Path,
    component: &Path,
    m: &fs::Metadata,
    owner: u32,
    role: Role,
) -> Result<()> {
    let uid = m.uid();
    let owner_ok = match role {
        Role::Ancestor => uid == 0 || uid == owner,
        Role::Last => uid == owner,
    };
    if !owner_ok {
        let who = match (role, owner) {
            (Role::Ancestor, 0) | (Role::Last, 0) => "root".to_string(),
            (Role::Ancestor, o) => format!("root or uid {o}"),
            (Role::Last, o) => format!("uid {o}"),
        };
        return Err(untrusted(
            path,
            component,
            format!("is owned by uid {uid}, not by {who}: its owner could replace what is in it"),
        ));
    }
    if m.file_type().is_symlink() {
        // Followed by the walk; an owner check is all a symlink can have.
        return Ok(());
    }
    if !m.is_dir() {
        return Err(untrusted(path, component, "is not a directory".into()));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let sticky = mode & 0o1000 != 0;
        if !(sticky && role == Role::Ancestor) {
            return Err(untrusted(
                path,
                component,
                format!("has mode {mode:04o}: writable by group or others"),
            ));
        }
    }
    Ok(())
}

fn untrusted(path: &Path, component: &Path, reason: String) -> Error {
    Error::Untrusted {
        path: path.to_owned(),
        component: component.to_owned(),
        reason,
    }
}

fn walk(path: &Path, owner: u32, create: Option<u32>) -> Result<Found> {
    let abs = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("resolve directory", path, None, e))?
            .join(path)
    };
    let inspect = |p: &Path| fs::symlink_metadata(p);
    let root = Path::new("/");
    let m = inspect(root).map_err(|e| Error::io("inspect directory", root, None, e))?;
    check_component(path, root, &m, owner, Role::Ancestor)?;

    // Components still to walk, last first, so a symlink's target can be pushed in front.
    let mut pending: Vec<OsString> = components_rev(&abs);
    let mut resolved = PathBuf::from("/");
    let mut last_meta = m;
    let mut symlinks = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            last_meta = inspect(&resolved)
                .map_err(|e| Error::io("inspect directory", &resolved, None, e))?;
            continue;
        }
        let next = resolved.join(&name);
        let is_last = pending.is_empty();
        let m = match inspect(&next) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match create {
                None => return Ok(Found::Missing { existing: resolved }),
                Some(mode) => {
                    let mode = if is_last { mode } else { 0o755 };
                    // mkdir never follows a symlink at `next`; one planted since the lstat
                    // makes it fail with EEXIST, and the lstat below then judges it.
                    match fs::DirBuilder::new().mode(mode).create(&next) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                            return Err(Error::io("create directory", &next, None, e))
                        }
                        _ => {}
                    }
                    inspect(&next).map_err(|e| Error::io("inspect directory", &next, None, e))?
                }
            },
            Err(e) => return Err(Error::io("inspect directory", &next, None, e)),
        };
        if is_last && m.file_type().is_symlink() {
            // Users name the directory itself; a link there is more likely a mistake or a
            // trick than a layout, and the cache's own documentation promises a real one.
            return Err(untrusted(
                path,
                &next,
                "is a symlink: name the real directory".into(),
            ));
        }
        let role = if is_last { Role::Last } else { Role::Ancestor };
        check_component(path, &next, &m, owner, role)?;
        if m.file_type().is_symlink() {
            symlinks += 1;
            if symlinks > MAX_SYMLINKS {
                return Err(untrusted(
                    path,
                    &next,
                    "leads through too many symlinks".into(),
                ));
            }
            let target =
                fs::read_link(&next).map_err(|e| Error::io("read symlink", &next, None, e))?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
                last_meta = inspect(&resolved)
                    .map_err(|e| Error::io("inspect directory", &resolved, None, e))?;
            }
            pending.extend(components_rev(&target));
            continue;
        }
        resolved = next;
        last_meta = m;
    }
    // A path that ends at `/` (or climbs back to it) has `/` as its directory.
    if resolved == root {
        check_component(path, root, &last_meta, owner, Role::Last)?;
    }
    Ok(Found::Exists {
        uid: last_meta.uid(),
        mode: last_meta.mode() & 0o7777,
        path: resolved,
    })
}

/// The normal and `..` components of `p`, last first (`.` and the root are dropped).
fn components_rev(p: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_directory_under_tmp_is_trusted_and_created() {
        let me = effective_uid();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/cache");
        assert_eq!(
            check_dir(&dir, me).unwrap(),
            Found::Missing {
                existing: tmp.path().to_owned()
            }
        );
        assert_eq!(ensure_dir(&dir, me, 0o700).unwrap(), dir);
        let m = fs::metadata(&dir).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        assert!(matches!(
            check_dir(&dir, me).unwrap(),
            Found::Exists { mode: 0o700, .. }
        ));
        // Relative paths and `..` resolve to the same directory.
        let back = tmp.path().join("a/b/../b/cache");
        assert!(matches!(check_dir(&back, me).unwrap(), Found::Exists { path, .. } if path == dir));
    }

    #[test]
    fn a_writable_ancestor_is_named() {
        let me = effective_uid();
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("p");
        let dir = parent.join("cache");
        fs::create_dir_all(&dir).unwrap();
        set_mode(&parent, 0o777);
        let e = check_dir(&dir, me).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "directory {} is not trusted: {} has mode 0777: writable by group or others",
                dir.display(),
                parent.display()
            )
        );
        // Sticky makes a root- (or our-) owned ancestor acceptable, never the directory.
        set_mode(&parent, 0o1777);
        assert!(check_dir(&dir, me).is_ok());
        let e = check_dir(&parent, me).unwrap_err().to_string();
        assert!(
            e.ends_with("has mode 1777: writable by group or others"),
            "{e}"
        );
        // The directory itself: group-writable is refused.
        set_mode(&parent, 0o755);
        set_mode(&dir, 0o770);
        let e = check_dir(&dir, me).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{} has mode 0770", dir.display())),
            "{e}"
        );
    }

    #[test]
    fn symlinks_are_followed_only_when_owned_by_a_trusted_user() {
        let me = effective_uid();
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real/cache");
        fs::create_dir_all(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink("real", &link).unwrap();
        let via = link.join("cache");
        assert!(matches!(check_dir(&via, me).unwrap(), Found::Exists { path, .. } if path == real));
        if me == 0 {
            // A symlink planted by someone else is never followed.
            std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
            let e = check_dir(&via, me).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "{} is owned by uid 65534, not by root",
                    link.display()
                )),
                "{e}"
            );
        }
        // A loop ends.
        let a = tmp.path().join("loop");
        std::os::unix::fs::symlink("loop", &a).unwrap();
        let e = check_dir(&a.join("x"), me).unwrap_err().to_string();
        assert!(e.contains("too many symlinks"), "{e}");
    }

    #[test]
    fn files_and_foreign_owners_are_refused() {
        let me = effective_uid();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "").unwrap();
        let e = check_dir(&file.join("cache"), me).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{} is not a directory", file.display())),
            "{e}"
        );
        let e = check_dir(tmp.path(), me.wrapping_add(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("is owned by uid {me}")), "{e}");
    }
}
