//! A task's stdio as containerd passes it: FIFOs (or files) by path, opened by the shim so
//! that the process gets descriptors, whatever kind of task it is.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

/// Stdio as containerd passed it (FIFO paths, possibly empty).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

fn dev_null(write: bool) -> std::io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?
        .into())
}

/// The path of a stdio URI: a plain path or `file://`; other schemes (a binary logger)
/// are refused.
pub(crate) fn fifo_path(uri: &str) -> Result<&str, std::io::Error> {
    if let Some(p) = uri.strip_prefix("file://") {
        return Ok(p);
    }
    if uri.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("stdio uri {uri:?} is not supported (only fifo and file paths)"),
        ));
    }
    Ok(uri)
}

/// Opens an output FIFO without blocking when containerd's reader is not there yet.
pub(crate) fn open_output(uri: &str) -> std::io::Result<OwnedFd> {
    if uri.is_empty() {
        return dev_null(true);
    }
    let path = fifo_path(uri)?;
    let is_fifo = std::fs::metadata(path).map(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    });
    if !matches!(is_fifo, Ok(true)) {
        return Ok(OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)?
            .into());
    }
    let file = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        // No reader yet: read-write never blocks and the reader finds the data later.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            OpenOptions::new().read(true).write(true).open(path)?
        }
        Err(e) => return Err(e),
    };
    set_blocking(&file)?;
    Ok(file.into())
}

pub(crate) fn open_stdin(uri: &str) -> std::io::Result<OwnedFd> {
    if uri.is_empty() {
        return dev_null(false);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo_path(uri)?)?;
    set_blocking(&file)?;
    Ok(file.into())
}

fn set_blocking(f: &std::fs::File) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL)?);
    fcntl(f, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}
