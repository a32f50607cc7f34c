#![doc = include_str!("../README.md")]

pub mod cgroup;
pub mod container;
pub mod error;
pub mod service;
pub mod spec;
pub mod zygote;
