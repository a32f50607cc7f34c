//! The shim's log, written to containerd's log pipes.
//!
//! containerd gives every task a `log` FIFO in its bundle and copies what the shim writes
//! there into its own log while that task exists. A shim that serves many tasks outlives the
//! bundle it was started in, so this logger keeps one sink per live task and writes each
//! record to the newest sink that still has a reader, dropping sinks whose reader is gone
//! (`EPIPE`; the shim ignores `SIGPIPE`). Lines are logfmt, as containerd's own shims write.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use log::{LevelFilter, Metadata, Record};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

struct Sink {
    id: String,
    file: File,
}

#[derive(Default)]
pub struct PipeLogger {
    sinks: Mutex<Vec<Sink>>,
}

static LOGGER: OnceLock<PipeLogger> = OnceLock::new();

/// Installs the logger with the FIFO at `first` (the starting bundle's `log`) as its sink.
pub fn init(first: &Path, debug: bool) -> std::io::Result<()> {
    let logger = LOGGER.get_or_init(PipeLogger::default);
    logger.attach("", first)?;
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(if debug {
            LevelFilter::Debug
        } else {
            LevelFilter::Info
        });
    log::set_max_level(level);
    // A second init (tests) keeps the first logger; that is fine.
    let _ = log::set_logger(logger);
    Ok(())
}

/// Adds task `id`'s log FIFO; it becomes the sink records go to first.
pub fn attach_task(id: &str, bundle: &Path) {
    if let Some(l) = LOGGER.get() {
        let _ = l.attach(id, &bundle.join("log"));
    }
}

/// Drops task `id`'s sink (its bundle is about to go).
pub fn detach_task(id: &str) {
    if let Some(l) = LOGGER.get() {
        l.lock().retain(|s| s.id != id);
    }
}

impl PipeLogger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sink>> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attach(&self, id: &str, path: &Path) -> std::io::Result<()> {
        // Non-blocking open: with no reader (containerd not copying this pipe) it fails with
        // ENXIO instead of hanging the shim.
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        self.lock().push(Sink {
            id: id.to_string(),
            file,
        });
        Ok(())
    }

    fn write_line(&self, line: &[u8]) {
        let mut sinks = self.lock();
        while let Some(sink) = sinks.last_mut() {
            match sink.file.write_all(line) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return, // pipe full: drop the line
                Err(_) => {
                    sinks.pop();
                }
            }
        }
    }
}

fn format_record(record: &Record) -> String {
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let msg = record
        .args()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        "time=\"{now}\" level={} msg=\"{msg}\" runtime=io.containerd.wasmedge.v1\n",
        record.level().as_str().to_lowercase()
    )
}

impl log::Log for PipeLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            self.write_line(format_record(record).as_bytes());
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn records_go_to_the_newest_live_pipe_and_dead_pipes_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for p in [&a, &b] {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        }
        let open_reader = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p)
                .unwrap()
        };
        let mut ra = open_reader(&a);
        let rb = open_reader(&b);
        let logger = PipeLogger::default();
        logger.attach("", &a).unwrap();
        logger.attach("task-b", &b).unwrap();
        drop(rb); // containerd stopped reading b's pipe: its task is gone
        logger.write_line(b"one\n");
        let mut got = String::new();
        ra.read_to_string(&mut got).ok();
        assert_eq!(got, "one\n");
        assert_eq!(logger.lock().len(), 1);
        // No reader at all: attaching fails instead of blocking.
        let c = dir.path().join("c");
        nix::unistd::mkfifo(&c, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(logger.attach("c", &c).is_err());
    }

    #[test]
    fn lines_are_logfmt_with_quotes_escaped() {
        let line = format_record(
            &Record::builder()
                .args(format_args!("say \"hi\""))
                .level(log::Level::Warn)
                .build(),
        );
        assert!(line.contains(r#"level=warn msg="say \"hi\"""#), "{line}");
        assert!(line.ends_with('\n'));
    }
}
