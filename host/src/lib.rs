//! Runcell: a job runtime whose jobs are WebAssembly components.
//!
//! The binary's entry point is [`cli::main`]; everything else is reachable for tests and
//! benchmarks through the small facades below.
#![deny(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod domain;
pub mod queue;
pub mod reconciler;
#[cfg(test)]
mod rooms;
pub mod runtime;
pub mod scheduler;
pub mod services;
pub mod store;
pub mod worker;
