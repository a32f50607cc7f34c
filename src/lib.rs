#![doc = include_str!("../README.md")]

pub mod cgroup;
pub mod check;
pub mod container;
pub mod error;
pub mod identity;
pub mod image;
pub mod install;
pub mod logger;
pub mod phases;
pub mod pod;
pub mod runner;
pub mod seccomp;
pub mod service;
pub mod spec;
pub mod sweep;

/// The node's configuration file, shared with the runner and the admin tool.
pub use wasmedge_aot_protocol::config;
