//! Runcell: a job runtime whose jobs are WebAssembly components.
//!
//! The binary's entry point is [`cli::main`]; everything else is reachable for tests and
//! benchmarks through the small facades below.
#![deny(unsafe_code)]

pub mod cli;
pub mod domain;
pub mod runtime;
