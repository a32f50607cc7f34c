#![doc = include_str!("../README.md")]

pub mod aot;
pub mod cgroup;
pub mod check;
pub mod config;
pub mod container;
pub mod error;
pub mod identity;
pub mod image;
pub mod install;
pub mod logger;
pub mod phases;
pub mod service;
pub mod spec;
pub mod zygote;
