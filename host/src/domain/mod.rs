//! Pure types every layer shares: what a module offers, what a run may use, what a run
//! produced. Imports nothing from the rest of the crate and does no I/O.

pub(crate) mod alert;
mod approval;
mod auth;
pub(crate) mod budget;
pub(crate) mod conditions;
mod config;
pub(crate) mod endpoint;
mod limits;
mod manifest;
pub(crate) mod metrics;
mod model;
mod pool;
pub(crate) mod retention;
mod retry;
mod run;
pub(crate) mod upload;
pub(crate) mod usage;
pub(crate) mod window;

pub(crate) use approval::{CodeApproval, PublisherKey, Uploader};
pub(crate) use auth::{ApiToken, AuditEntry, Credential, Principal, RefreshToken, Role, User};
pub(crate) use config::{
    JobConfig, MAX_SETTING_NAME_BYTES, MAX_SETTINGS, SECRET_MASK, SecretValue, Setting,
    SettingValue, is_valid_setting_name,
};
pub use limits::Limits;
pub(crate) use limits::{FUEL_PER_CPU_MS, RUST_FUEL_PER_CPU_MS, parse_byte_size};
pub use manifest::{Capabilities, RouteAccess};
pub(crate) use manifest::{
    HostName, HostPattern, JobSpec, Manifest, ManifestError, SettingSpec, check_host_patterns,
};
pub use model::ModuleStatus;
pub(crate) use model::{
    Event, EventRefusal, Execution, ExecutionResult, ExecutionStatus, Job, MAX_EVENT_DEPTH,
    MetricSample, Millis, ModuleRecord, ModuleVersion, NODE_HEARTBEAT_EVERY, NewExecution,
    NodeHeartbeat, Page, SCHEDULER_LEASE, ScheduleSource, new_id, now_millis,
};
pub(crate) use pool::PoolState;
pub(crate) use retry::RetryPolicy;
pub use run::{FailureKind, Grants, LogEntry, LogLevel, Outcome, RunReport};
pub(crate) use run::{LogMessage, RunContext, Trigger, Usage, topic_matches, topics_overlap};
