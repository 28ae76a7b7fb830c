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
// Until the store's rewrite lands with a reason on each of its allows. Outside tests only:
// the two allows are `cfg_attr(not(test), ...)`.
#[cfg_attr(
    not(test),
    expect(
        clippy::allow_attributes_without_reason,
        reason = "the store is being rewritten; its allows get their reasons there"
    )
)]
pub mod store;
pub mod worker;
