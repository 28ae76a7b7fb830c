//! The host side of the contract's imports. One file per capability: each owns its
//! guest-facing rules, the port trait its backends implement, and an in-memory backend
//! for local runs. Backends are plugged in through [`HostServices`].

pub(crate) mod config;
pub(crate) mod events;
pub(crate) mod http;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::Grants;

use super::clock::RunClock;
use super::logs::LogCollector;

pub(crate) use events::EventSink;
pub use events::MemoryEventSink;
pub use kv::{KeyValueStore, MemoryKeyValue};
pub use metrics::MemoryMetricsSink;
pub(crate) use metrics::{MetricsSink, Recorded};

/// A backend failed; the guest sees it as "unavailable", the host logs the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// The backends behind the capability imports, shared by every execution.
#[derive(Clone)]
pub struct HostServices {
    pub kv: Arc<dyn KeyValueStore>,
    pub events: Arc<dyn EventSink>,
    pub metrics: Arc<dyn MetricsSink>,
}

impl std::fmt::Debug for HostServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostServices").finish_non_exhaustive()
    }
}

impl HostServices {
    /// Backends that keep everything in this process, for local runs and tests.
    pub fn in_memory() -> Self {
        Self {
            kv: Arc::new(MemoryKeyValue::default()),
            events: Arc::new(MemoryEventSink::default()),
            metrics: Arc::new(MemoryMetricsSink::default()),
        }
    }
}

/// A host call that was still waiting on its backend when the execution's deadline passed.
/// Raised as a trap so the run ends as timed out, whatever the guest would have done.
#[derive(Debug, thiserror::Error)]
#[error("the execution deadline passed during host call `{call}`")]
pub(crate) struct HostCallTimedOut {
    pub(crate) call: &'static str,
}

/// What the capability imports of one execution can see.
pub(crate) struct HostContext {
    pub(crate) module: Arc<str>,
    /// The execution this instance runs; empty outside one (`describe`, local runs).
    pub(crate) execution_id: Arc<str>,
    pub(crate) grants: Arc<Grants>,
    pub(crate) config: Arc<BTreeMap<String, String>>,
    pub(crate) services: Arc<HostServices>,
    pub(crate) logs: LogCollector,
    /// The run's deadline.
    pub(crate) clock: Arc<RunClock>,
    pub(crate) samples_recorded: u32,
    pub(crate) events_published: u32,
}

impl HostContext {
    /// Runs a backend call, but never past the execution's deadline: epochs and fuel do
    /// not fire while the guest waits on the host, so this timer is what bounds it.
    pub(crate) async fn bounded<T>(
        &self,
        call: &'static str,
        work: impl Future<Output = T>,
    ) -> wasmtime::Result<T> {
        self.clock
            .bound(work)
            .await
            .ok_or_else(|| wasmtime::Error::new(HostCallTimedOut { call }))
    }

    /// Tells the author, in the execution's own log, why a call was refused.
    pub(crate) fn log_denial(&self, what: &str) {
        self.logs.push(
            crate::domain::LogLevel::Warn,
            &format!("denied: {what}"),
            Default::default(),
        );
    }
}
