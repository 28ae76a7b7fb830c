//! Runcell: a job runtime whose jobs are WebAssembly components.
//!
//! The binary's entry point is [`cli::main`]; of everything else, the integration tests
//! reach only what [`embed`] re-exports. Every other module is the crate's own, and the
//! `unreachable_pub` lint keeps its items `pub(crate)` at most.
#![deny(unsafe_code)]

mod alerter;
mod api;
mod app;
pub mod cli;
mod domain;
mod monitor;
mod queue;
mod reconciler;
#[cfg(test)]
mod rooms;
mod runtime;
mod scheduler;
mod services;
mod store;
mod telemetry;
mod worker;

/// The runtime on its own, and a node's services without its HTTP API: what the
/// integration tests under `tests/` drive directly, and all they may.
pub mod embed {
    pub use crate::domain::{
        Capabilities, FailureKind, Grants, Limits, LogEntry, LogLevel, ModuleStatus, Outcome,
        RouteAccess, RunReport,
    };
    pub use crate::queue::{MemoryQueue, Queue};
    pub use crate::runtime::host::{
        BackendError, KeyValueStore, MemoryEventSink, MemoryKeyValue, MemoryMetricsSink,
    };
    pub use crate::runtime::{
        CancelToken, EngineSettings, HostServices, IpNetwork, LoadError, LoadSource, LoadedModule,
        OutboundSettings, OutboundTls, Redactor, RunRequest, Runtime, RuntimeConfig,
        ValidationError,
    };
    pub use crate::services::{Capacity, Services};
    pub use crate::store::{SqliteStore, Store};
}
