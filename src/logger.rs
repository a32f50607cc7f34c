//! The shim's log, written to containerd's log pipes.
//!
//! containerd gives every task a `log` FIFO in its bundle and copies what the shim writes
//! there into its own log while that task exists. A shim that serves many tasks outlives the
//! bundle it was started in, so this logger keeps one sink per live task and writes each
//! record to the newest sink that still has a reader, dropping sinks whose reader is gone
//! (`EPIPE`; the shim ignores `SIGPIPE`). One pipe is enough: containerd copies every task's
//! pipe into the same log, so writing to each would repeat every line once per task. A
//! task's sink is closed when the task is deleted ([`detach_task`]), so the shim holds one
//! descriptor per live task, not one per task it ever served. Lines are logfmt, as
//! containerd's own shims write.

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

/// Installs the logger with the FIFO at `first` (the `log` of the bundle of task `id`, the
/// task whose `start` spawned this shim) as its sink.
pub fn init(id: &str, first: &Path, debug: bool) -> std::io::Result<()> {
    let logger = LOGGER.get_or_init(PipeLogger::default);
    logger.attach(id, first)?;
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

/// Adds task `id`'s log FIFO; it becomes the sink records go to first. The task that
/// spawned the shim is attached twice (at start and at create): one sink, the newer.
/// Detached again when the guard goes, unless the create it is for kept it
/// ([`Attached::keep`]: the task's delete detaches it then).
#[must_use]
pub fn attach_task(id: &str, bundle: &Path) -> Attached {
    if let Some(l) = LOGGER.get() {
        let _ = l.attach(id, &bundle.join("log"));
    }
    Attached(Some(id.to_owned()))
}

/// A task's log sink during its create (see [`attach_task`]).
pub struct Attached(Option<String>);

impl Attached {
    /// The create succeeded: the sink stays until the task's delete.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(id) = self.0.take() {
            detach_task(&id);
        }
    }
}

/// Closes task `id`'s sink: the task is deleted, or its create failed.
pub fn detach_task(id: &str) {
    if let Some(l) = LOGGER.get() {
        l.detach(id);
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
        let mut sinks = self.lock();
        sinks.retain(|s| s.id != id);
        sinks.push(Sink {
            id: id.to_string(),
            file,
        });
        Ok(())
    }

    fn detach(&self, id: &str) {
        self.lock().retain(|s| s.id != id);
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
    let msg = logfmt_escape(&record.args().to_string());
    format!(
        "time=\"{now}\" level={} msg=\"{msg}\" runtime=io.containerd.wasmedge.v1\n",
        record.level().as_str().to_lowercase()
    )
}

/// The inside of a logfmt quoted value: backslash, `"` and control characters escaped as Go's
/// logfmt does, so one record is always one line (a raw newline in a message, e.g. a
/// compiler's output, would start a line containerd reads as another record).
fn logfmt_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
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
    fn a_task_has_one_sink_and_deleting_it_closes_its_pipe() {
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
        let (_ra, mut rb) = (open_reader(&a), open_reader(&b));
        let logger = PipeLogger::default();
        // The task that spawned the shim: attached at start and again at create.
        logger.attach("task-a", &a).unwrap();
        logger.attach("task-a", &a).unwrap();
        logger.attach("task-b", &b).unwrap();
        assert_eq!(logger.lock().len(), 2);
        logger.detach("task-b");
        // task-b's pipe has no writer left: its reader sees the end.
        let mut got = Vec::new();
        assert_eq!(rb.read_to_end(&mut got).unwrap(), 0);
        assert_eq!(logger.lock().len(), 1);
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

    /// Issue 13, finding 9: a newline in a message went through raw.
    #[test]
    fn a_record_is_one_line_whatever_its_message_holds() {
        let line = format_record(
            &Record::builder()
                .args(format_args!(
                    "ld.lld: error: x\nsecond\r\tthird\u{1b}[0m \\ end"
                ))
                .level(log::Level::Warn)
                .build(),
        );
        assert_eq!(line.matches('\n').count(), 1, "{line:?}");
        assert!(line.ends_with('\n'));
        assert!(
            line.contains(r#"msg="ld.lld: error: x\nsecond\r\tthird\u001b[0m \\ end""#),
            "{line}"
        );
    }
}
