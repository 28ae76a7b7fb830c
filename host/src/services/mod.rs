//! What users can do, independent of how they ask: install modules, define and trigger
//! jobs, read executions and module metrics, publish events. Callers (the API, the CLI) get typed results
//! and a [`ServiceError`] that says what to fix; nothing here knows HTTP.

pub(crate) mod alerts;
pub(crate) mod auth;
mod backends;
pub(crate) mod budgets;
pub(crate) mod endpoints;
mod events;
mod executions;
pub(crate) mod job_config;
pub(crate) mod jobs;
pub(crate) mod loghub;
pub(crate) mod metrics;
pub(crate) mod modules;
pub(crate) mod publishers;
pub(crate) mod retention;
pub(crate) mod routes;
pub(crate) mod schedule;
mod scrape;
pub(crate) mod secrets;
pub(crate) mod uploads;
pub(crate) mod usage;

use std::path::PathBuf;
use std::sync::Arc;

use crate::domain::Limits;
use crate::queue::{Queue, QueueError};
use crate::runtime::{
    EngineSettings, HostServices, LoadError, OutboundSettings, Runtime, RuntimeConfig, RuntimeError,
};
use crate::store::{Store, StoreError};
use crate::telemetry::Telemetry;
use secrets::SecretBox;

pub(crate) use auth::AuthService;
pub(crate) use backends::{StoreEventSink, StoreKeyValue};
pub(crate) use events::{EventBus, PublishEvent};
pub(crate) use executions::{
    AttachedRunner, LocalRunner, RunningRegistry, WorkerReservation, next_attempt,
};
pub(crate) use jobs::{ExecuteRequest, JobDraft, JobPatch, ManualRuns, ModuleJobs};
pub(crate) use loghub::LogHub;
pub(crate) use modules::ModuleCatalog;
pub(crate) use routes::{RouteGate, RouteSettings};

/// Why a request could not be carried out. Each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The thing addressed does not exist.
    #[error("{what} `{id}` does not exist")]
    NotFound { what: &'static str, id: String },
    /// Nothing answers here now (a disabled module's routes, a module without routes).
    #[error("{0}")]
    NotServed(String),
    /// A field is malformed (syntax); fix the request.
    #[error("{field}: {message}")]
    BadField { field: String, message: String },
    /// A field is well-formed but not acceptable here (unknown reference, over a limit).
    #[error("{field}: {message}")]
    Unprocessable { field: String, message: String },
    /// The request conflicts with the current state (name taken, module in use).
    #[error("{0}")]
    Conflict(String),
    /// The uploaded file is not a module Runcell can run.
    #[error("{0}")]
    InvalidModule(#[from] LoadError),
    /// A dependency (database, queue) cannot serve now; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A fault on the server's side that retrying will not fix (a corrupt row, a query
    /// the database refused, a failure to hash): a bug to report. The text is for the log,
    /// never for the caller.
    #[error("{0}")]
    Internal(String),
    /// No valid credential: log in (again) or present a valid token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credential is valid but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// At capacity (a module's concurrent requests); retry shortly.
    #[error("{0}")]
    Busy(String),
    /// The server is at its bound for costly work (password hashing) and refused this
    /// at once rather than queue it; retry after `retry_after_secs`.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_secs: i64,
    },
    /// Too many attempts; retry after `retry_after_secs`.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after_secs: i64,
    },
}

impl ServiceError {
    pub(crate) fn bad(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadField {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unprocessable {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            what,
            id: id.into(),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => ServiceError::Conflict(message),
            StoreError::Unavailable(_) => ServiceError::Unavailable(err.to_string()),
            StoreError::Database(_) | StoreError::Corrupt(_) => {
                ServiceError::Internal(err.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unreachable_database_asks_the_caller_to_retry() {
        let unavailable = ServiceError::from(StoreError::Unavailable("pool timed out".into()));
        assert!(matches!(unavailable, ServiceError::Unavailable(_)));
        for fault in [
            StoreError::Database("no such column: x".into()),
            StoreError::Corrupt("status: unknown `DONE`".into()),
        ] {
            let mapped = ServiceError::from(fault);
            assert!(matches!(mapped, ServiceError::Internal(_)), "{mapped:?}");
        }
        let conflict = ServiceError::from(StoreError::Conflict("taken".into()));
        assert!(matches!(conflict, ServiceError::Conflict(_)));
    }
}

impl From<QueueError> for ServiceError {
    fn from(err: QueueError) -> Self {
        ServiceError::Unavailable(err.to_string())
    }
}

/// Settings the services enforce.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// The most any job may ask for.
    pub ceiling: Limits,
    /// Limits of a job that asks for nothing (and gave no hint).
    pub defaults: Limits,
    /// Largest module file accepted.
    pub max_module_bytes: usize,
    /// Most executions one bulk request may create.
    pub max_bulk: usize,
    /// How long an idempotency key of a manual trigger holds: a retry within it is
    /// answered with what the first request created. Long enough for any client's
    /// retries (a day, as the payment APIs that made the header common keep theirs),
    /// short enough that keys do not pile up.
    pub idempotency_ttl: std::time::Duration,
    /// What requests to modules' HTTP routes may use.
    pub routes: RouteSettings,
    /// How many times a minute events may start each job on this node.
    pub event_triggers_per_minute: u32,
    /// The shortest interval an endpoint monitor may be checked at.
    pub endpoint_min_interval: std::time::Duration,
    /// This node's id, as its heartbeats name it.
    pub node_id: String,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            ceiling: Limits::default_ceiling(),
            defaults: Limits::default(),
            max_module_bytes: 64 * 1024 * 1024,
            max_bulk: 10_000,
            idempotency_ttl: std::time::Duration::from_secs(24 * 60 * 60),
            routes: RouteSettings::default(),
            event_triggers_per_minute: 600,
            endpoint_min_interval: std::time::Duration::from_secs(10),
            node_id: "local".to_owned(),
        }
    }
}

/// Everything the services share; cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub runtime: Runtime,
    pub modules: ModuleCatalog,
    pub logs: LogHub,
    pub events: EventBus,
    pub running: RunningRegistry,
    /// This node's workers, for starting manual runs here at once; none attached when
    /// the node runs no workers.
    pub local_runner: AttachedRunner,
    pub routes: Arc<RouteGate>,
    /// Outbound requests of module routes not yet counted in the usage rollups.
    pub(crate) route_outbound: Arc<usage::PendingRouteOutbound>,
    /// Module metrics: the sink of every run's samples, and their queries.
    pub metrics: Arc<metrics::ModuleMetrics>,
    pub settings: Arc<ServiceSettings>,
    /// Seals and opens jobs' secret settings; `None` on a node given no key (distributed
    /// without `RUNCELL_SECRET_KEY`), where secrets can be neither set nor read.
    pub secrets: Option<SecretBox>,
    /// The operator's outbound rules, which endpoint checks obey as modules' requests do.
    pub outbound: Arc<OutboundSettings>,
    /// This node's metrics: whoever does something `/metrics` counts records it here.
    pub(crate) telemetry: Telemetry,
    /// When these services started: work this node took on before (under the same node
    /// id, in an earlier process) is not going on any more.
    pub(crate) started_at: crate::domain::Millis,
    /// The uploads this node is installing (see [`uploads::UPLOADS_IN_FLIGHT`]).
    pub(crate) upload_slots: Arc<tokio::sync::Semaphore>,
}

/// How much work a node takes on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Runs in flight (worker slots): what claims are sized to. A run waiting on the
    /// network holds one but no CPU.
    pub workers: usize,
    /// Guests running their code at once (CPU permits); the other runs in flight wait
    /// for one, their clocks stopped.
    pub cpu_guests: usize,
    /// Modules compiled at once (uploads, and loads of code this node has not compiled
    /// yet); the others wait their turn.
    pub compilations: usize,
}

impl Capacity {
    /// `workers` runs in flight, one guest per core on a CPU, one compilation at a time.
    pub fn with_workers(workers: usize) -> Self {
        let engine = EngineSettings::default();
        Self {
            workers,
            cpu_guests: engine.cpu_guests,
            compilations: engine.compilations,
        }
    }
}

impl Services {
    /// The services of one node on `store` and `queue`, with a runtime sized for
    /// `workers` runs at once.
    pub fn new(
        store: Arc<dyn Store>,
        queue: Arc<dyn Queue>,
        cache_dir: Option<PathBuf>,
        capacity: Capacity,
        outbound: OutboundSettings,
        settings: ServiceSettings,
    ) -> Result<Self, RuntimeError> {
        let events = EventBus::new(
            store.clone(),
            queue.clone(),
            settings.event_triggers_per_minute,
        );
        let metrics = Arc::new(metrics::ModuleMetrics::new(store.clone()));
        let outbound_rules = Arc::new(outbound.clone());
        let host = HostServices {
            kv: Arc::new(StoreKeyValue(store.clone())),
            events: Arc::new(StoreEventSink(events.clone())),
            metrics: metrics.clone(),
        };
        let runtime = Runtime::new(
            RuntimeConfig {
                engine: EngineSettings {
                    // Runs, requests to module routes, and describe calls of uploads
                    // happening meanwhile.
                    max_concurrent_instances: (capacity.workers
                        + settings.routes.total_concurrency
                        + 8) as u32,
                    cpu_guests: capacity.cpu_guests,
                    compilations: capacity.compilations,
                    ..EngineSettings::default()
                },
                cache_dir,
                outbound,
            },
            host,
        )?;
        Ok(Self {
            modules: ModuleCatalog::new(store.clone(), runtime.clone()),
            store,
            queue,
            runtime,
            logs: LogHub::default(),
            events,
            running: RunningRegistry::default(),
            local_runner: AttachedRunner::default(),
            routes: Arc::new(RouteGate::new(&settings.routes)),
            route_outbound: Arc::default(),
            metrics,
            settings: Arc::new(settings),
            secrets: None,
            outbound: outbound_rules,
            telemetry: Telemetry::new(),
            started_at: crate::domain::now_millis(),
            upload_slots: uploads::upload_slots(),
        })
    }
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").finish_non_exhaustive()
    }
}
