//! Pure types every layer shares: what a module offers, what a run may use, what a run
//! produced. Imports nothing from the rest of the crate and does no I/O.

mod approval;
mod auth;
mod config;
mod limits;
mod manifest;
mod model;
mod retry;
mod run;

pub use approval::{CodeApproval, PublisherKey, Uploader};
pub use auth::{ApiToken, AuditEntry, Credential, Principal, RefreshToken, Role, User};
pub use config::{JobConfig, SECRET_MASK, SecretValue, Setting, SettingValue};
pub use limits::{FUEL_PER_CPU_MS, Limits, LimitsError, RUST_FUEL_PER_CPU_MS, parse_byte_size};
pub use manifest::{
    Capabilities, DEFAULT_HTTP_PORTS, HostName, HostPattern, HostPatternError, JobSpec, Manifest,
    ManifestError, RouteAccess,
};
pub use model::{
    Event, Execution, ExecutionResult, ExecutionStatus, Job, MetricSample, Millis, ModuleRecord,
    ModuleStatus, ModuleVersion, NODE_HEARTBEAT_EVERY, NewExecution, NodeHeartbeat, Page,
    SCHEDULER_LEASE, failure_kind_name, new_id, now_millis,
};
pub use retry::RetryPolicy;
pub use run::{
    FailureKind, Grants, LogEntry, LogLevel, LogMessage, Outcome, RunContext, RunReport, Trigger,
    Usage, topic_matches,
};
