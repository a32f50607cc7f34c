//! The files a shim keeps beside its containers, written off the request path: a Wasm
//! container's `wasm.pid` in its bundle, and a node shim's container records and state file
//! in its run directory (`sweep.rs`, `identity`).
//!
//! They are written for after a crash (containerd's `delete` of a dead shim's task, the next
//! shim's sweep) and for `wasmedge-shimctl check`, never read by the request that writes
//! them. On a node whose `/run` is a disk file system (as on this project's machine), each
//! write, rename or unlink cost a create or a delete 0.3 to 5 ms of waiting on the file
//! system's journal, on the shim's runtime thread, which serves every request. So one
//! thread of their own does them, in the order the shim asks: a container's record is
//! written before it is forgotten, and a new container of the same id is recorded after
//! the old one was forgotten. What a shim that dies leaves unwritten is what it asked in
//! its last moments (a record of a container it created a millisecond before); containerd's
//! `delete` in the container's bundle still cleans up after that one.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What a node shim records of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub cgroup: Option<String>,
    pub rootfs: Option<PathBuf>,
    /// runc's state root, for a Linux container (records written before there were any
    /// have none).
    #[serde(default)]
    pub runc_root: Option<PathBuf>,
}

type Job = Box<dyn FnOnce() + Send>;

/// One thread that runs the jobs it is given one after the other, in the order given.
#[derive(Debug)]
pub struct Writer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}

impl Writer {
    /// Starts the thread; it ends when the writer is dropped, after the jobs given before.
    pub fn new() -> Writer {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("shim-records".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            });
        Writer {
            jobs: Mutex::new(started.ok().map(|_| tx)),
        }
    }

    /// Runs `job` after every job given before; at once, on this thread, if the writer's
    /// thread could not be started.
    pub fn write(&self, job: impl FnOnce() + Send + 'static) {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let job: Job = Box::new(job);
        let unsent = match jobs.as_ref() {
            Some(tx) => tx.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        drop(jobs);
        if let Some(job) = unsent {
            job();
        }
    }

    /// Waits until every job given before has run.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.write(move || {
            let _ = tx.send(());
        });
        let _ = rx.recv();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn jobs_run_in_the_order_given_and_off_the_callers_thread() {
        let w = Writer::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let caller = std::thread::current().id();
        for i in 0..100 {
            let seen = seen.clone();
            w.write(move || {
                assert_ne!(std::thread::current().id(), caller);
                seen.lock().unwrap().push(i);
            });
        }
        w.flush();
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_written_then_forgotten_is_gone_and_a_new_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().to_path_buf();
        let w = Writer::new();
        let r = crate::sweep::Record {
            id: "c1".into(),
            cgroup: Some("/ns/c1".into()),
            rootfs: None,
            runc_root: None,
        };
        let (d, rec) = (run_dir.clone(), r.clone());
        w.write(move || crate::sweep::record(&d, &rec).unwrap());
        let d = run_dir.clone();
        w.write(move || crate::sweep::forget(&d, "c1"));
        w.flush();
        let path = run_dir.join(crate::sweep::CONTAINERS_DIR).join("c1");
        assert!(!path.exists());
        let d = run_dir.clone();
        w.write(move || crate::sweep::record(&d, &r).unwrap());
        w.flush();
        assert!(path.exists());
    }
}
