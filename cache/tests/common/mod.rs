//! Shared test helpers: a fake compiler that leaves evidence of every run, and fixtures.
#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmedge_aot_cache::{BoxError, Compiler, Fingerprint};

pub fn fingerprint() -> Fingerprint {
    Fingerprint {
        engine: "fake".into(),
        engine_version: "1.0.0".into(),
        aot_format_version: 1,
        target: "x86_64-unknown-linux-gnu".into(),
        options: vec![("opt-level".into(), "O2".into())],
        cpu_features: vec!["avx2".into()],
    }
}

/// Appends one line to `path` with O_APPEND, atomic for short lines across processes.
pub fn append_line(path: &Path, line: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

pub fn count_lines(path: &Path, prefix: &str) -> usize {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .count()
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Writes `b"AOT" + module bytes`, padded to `size` bytes, in two halves with an optional pause
/// between them; logs `start <pid> <ns>` and `end <pid> <ns>` lines.
#[derive(Debug, Clone, Default)]
pub struct FakeCompiler {
    pub log: Option<PathBuf>,
    pub size: usize,
    pub pause: Duration,
    /// Created after the first half is written, before the pause.
    pub halfway_marker: Option<PathBuf>,
    /// Spend the pause using the CPU, as a compiler does, rather than asleep.
    pub spin: bool,
    /// After writing, fill the file system of this path until ENOSPC.
    pub fill_disk: Option<PathBuf>,
}

impl FakeCompiler {
    pub fn logging(log: &Path) -> Self {
        FakeCompiler {
            log: Some(log.to_owned()),
            size: 4096,
            ..Default::default()
        }
    }
}

pub fn fake_output(module: &[u8], size: usize) -> Vec<u8> {
    let mut out = b"AOT".to_vec();
    out.extend_from_slice(module);
    while out.len() < size {
        out.push((out.len() % 251) as u8);
    }
    out
}

impl Compiler for FakeCompiler {
    fn compile(&self, module: &Path, out: &Path) -> Result<(), BoxError> {
        if let Some(l) = &self.log {
            append_line(l, &format!("start {} {}", std::process::id(), now_ns()));
        }
        let data = fake_output(&fs::read(module)?, self.size);
        let mut f = OpenOptions::new().write(true).create_new(true).open(out)?;
        let half = data.len() / 2;
        f.write_all(&data[..half])?;
        f.flush()?;
        if let Some(m) = &self.halfway_marker {
            fs::write(m, b"")?;
        }
        if self.spin {
            let until = std::time::Instant::now() + self.pause;
            let mut x = 0u64;
            while std::time::Instant::now() < until {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        } else {
            std::thread::sleep(self.pause);
        }
        f.write_all(&data[half..])?;
        if let Some(p) = &self.fill_disk {
            let mut filler = fs::File::create(p)?;
            let chunk = vec![0u8; 4096];
            while filler.write_all(&chunk).is_ok() {}
        }
        if let Some(l) = &self.log {
            append_line(l, &format!("end {} {}", std::process::id(), now_ns()));
        }
        Ok(())
    }
}

pub fn write_module(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// All paths under `dir`, recursively (for "nothing left behind" checks).
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                out.extend(tree(&e.path()));
            }
        }
    }
    out
}
