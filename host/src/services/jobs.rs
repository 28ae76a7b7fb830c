//! Job definitions and manual triggers.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::schedule::Schedule;
use super::{ServiceError, Services};
use crate::domain::{
    ExecutionStatus, Job, JobConfig, JobSpec, Limits, MAX_EVENT_DEPTH, Manifest, Millis,
    ModuleRecord, ModuleStatus, Page, ScheduleSource, Setting, SettingValue, new_id, now_millis,
    topics_overlap,
};
use crate::runtime::host::events::is_valid_topic;
use crate::store::{EarlierRuns, IdempotencyKey, ManualOutcome, ManualRun};

/// Jobs retry at most this many times; more is a loop, not resilience.
pub(crate) const MAX_ATTEMPTS: u32 = 25;
/// A job's stored default input is configuration, not data.
const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// A job's own retention in days, at most a century: past that, say nothing (and keep
/// the server's).
const MAX_RETAIN_DAYS: u32 = 36_500;
/// A job's bound on its kept executions: ten million rows is about what a dashboard can
/// still page through.
const MAX_RETAIN_LAST: u32 = 10_000_000;

/// A new job, as a client describes it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobDraft {
    /// 1 to 128 letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// An installed module.
    pub module: String,
    /// A job the module's current version offers.
    pub job: String,
    /// A cron expression (UTC, optional seconds field). Absent: the default schedule
    /// the module declares for the job, which the job then follows (`scheduleSource`
    /// `module`), or none if it declares none; `null`: not scheduled, the job runs only
    /// when triggered.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub schedule: Option<Option<String>>,
    /// The input of runs whose trigger gives none (default `null`).
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    /// Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// 1 (the default, no retry) to 25.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Wall-clock limit of a run; absent: the module's hint, else the server's default.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// CPU limit of a run, in fuel units; absent: the module's hint, else the server's
    /// default.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Memory limit of a run; absent: the server's default.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// A topic or topic pattern (`prefix.*`, `*`) whose events trigger a run.
    #[serde(default)]
    pub on_event: Option<String>,
    /// Days its final executions are kept, from their creation, 1 to 36,500; absent:
    /// the server's `--retain-executions`.
    #[serde(default)]
    pub retain_days: Option<u32>,
    /// Keep at most this many of its newest executions (1 to 10,000,000); absent: no
    /// such bound.
    #[serde(default)]
    pub retain_last: Option<u32>,
    /// Settings the module reads through its `config` interface (default none): up to 64
    /// names of 1 to 128 letters, digits, `-`, `_` or `.`, each mapped to a string of at
    /// most 64 KiB, or to `{"secret": "..."}` for a secret. A secret is stored encrypted,
    /// only the module can read it, and responses show it as `{"secret": "***"}`; it is
    /// masked in the run's logs, error and result (values of 4 bytes or more). A server
    /// without a secret key refuses secrets (422).
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, SettingValue>>)]
    pub config: Option<BTreeMap<String, SettingValue>>,
}

impl JobDraft {
    /// Job `job` of `module`, named `name`, with every option at its default.
    pub fn new(name: impl Into<String>, module: impl Into<String>, job: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            module: module.into(),
            job: job.into(),
            schedule: None,
            input: None,
            enabled: None,
            max_attempts: None,
            timeout_ms: None,
            fuel: None,
            memory_bytes: None,
            on_event: None,
            retain_days: None,
            retain_last: None,
            config: None,
        }
    }
}

/// Changes to a job; absent fields stay, `null` clears an optional one.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub job: Option<String>,
    /// A cron expression, or `null` for none; either way the job stops following its
    /// module's default schedule.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub schedule: Option<Option<String>>,
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default, with = "double_option")]
    pub timeout_ms: Option<Option<u64>>,
    #[serde(default, with = "double_option")]
    pub fuel: Option<Option<u64>>,
    #[serde(default, with = "double_option")]
    pub memory_bytes: Option<Option<u64>>,
    #[serde(default, with = "double_option")]
    pub on_event: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    pub retain_days: Option<Option<u32>>,
    #[serde(default, with = "double_option")]
    pub retain_last: Option<Option<u32>>,
    /// Replaces all of the job's settings (see the job's `config`): a setting left out is
    /// removed. `{"secret": "***"}`, the form responses show a secret in, keeps the secret
    /// stored under that name, so a job read with GET can be sent back with edits; for a
    /// name with no stored secret it is refused (422). A secret's value can thus never be
    /// `***`.
    #[serde(default)]
    #[schema(value_type = Option<BTreeMap<String, SettingValue>>)]
    pub config: Option<BTreeMap<String, SettingValue>>,
}

/// Tells "absent" (outer `None`) from "null" (`Some(None)`).
pub(super) mod double_option {
    use serde::{Deserialize, Deserializer};

    pub(in crate::services) fn deserialize<'de, T, D>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(deserializer).map(Some)
    }
}

/// What creating a module's jobs did: a job per job its current version offers, or why
/// not.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleJobs {
    /// The jobs created, each named `{module}.{job}` and following its default schedule.
    pub created: Vec<Job>,
    /// The module's jobs no job was created for, and why.
    pub skipped: Vec<SkippedModuleJob>,
}

/// A module's job that creating its jobs left out.
#[derive(Debug, Clone, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedModuleJob {
    /// The job's name in the module.
    pub job: String,
    /// Why no job was created for it.
    pub reason: String,
}

/// A manual trigger.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteRequest {
    /// Replaces the job's stored input for this run.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
}

fn is_valid_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `pattern` is a topic, a `prefix.*` pattern, or `*`.
pub(crate) fn is_valid_topic_pattern(pattern: &str) -> bool {
    pattern == "*"
        || is_valid_topic(pattern)
        || pattern.strip_suffix(".*").is_some_and(is_valid_topic)
}

/// Why a job whose input-schema is `schema` cannot take an event envelope, if what the
/// schema says at its top level rules it out (its type, its required or allowed fields).
/// A schema that says nothing of these is taken to accept it.
fn refuses_event_envelope(schema: &serde_json::Value) -> Option<String> {
    const ENVELOPE: [&str; 5] = ["id", "topic", "source", "createdAt", "payload"];
    let object_allowed = match &schema["type"] {
        serde_json::Value::String(kind) => kind == "object",
        serde_json::Value::Array(kinds) => kinds.iter().any(|kind| kind == "object"),
        _ => true,
    };
    if !object_allowed {
        return Some(format!("accepts no object (type {})", schema["type"]));
    }
    if let Some(required) = schema["required"].as_array()
        && let Some(missing) = required
            .iter()
            .filter_map(serde_json::Value::as_str)
            .find(|field| !ENVELOPE.contains(field))
    {
        return Some(format!(
            "requires field `{missing}`, which an event does not have"
        ));
    }
    if schema["additionalProperties"] == serde_json::Value::Bool(false) {
        let properties = schema["properties"].as_object();
        if let Some(absent) = ENVELOPE
            .iter()
            .find(|field| !properties.is_some_and(|p| p.contains_key(**field)))
        {
            return Some(format!(
                "does not allow field `{absent}`, which an event has"
            ));
        }
    }
    None
}

/// The limits a run of `job` gets: the job's own, else the module's hint, else the
/// server's defaults.
pub(crate) fn effective_limits(job: &Job, spec: Option<&JobSpec>, defaults: &Limits) -> Limits {
    defaults.resolve(
        job.fuel,
        job.timeout_ms.map(Duration::from_millis),
        job.memory_bytes,
        spec,
    )
}

impl Services {
    fn check_job(&self, job: &Job) -> Result<(), ServiceError> {
        if !is_valid_job_name(&job.name) {
            return Err(ServiceError::bad(
                "name",
                format!(
                    "`{}` is not a valid job name: 1 to 128 letters, digits, `-`, `_` or `.`",
                    job.name
                ),
            ));
        }
        if let Some(schedule) = &job.schedule {
            Schedule::parse(schedule).map_err(|reason| ServiceError::bad("schedule", reason))?;
        }
        if let Some(pattern) = &job.on_event
            && !is_valid_topic_pattern(pattern)
        {
            return Err(ServiceError::bad(
                "onEvent",
                format!(
                    "`{pattern}` is not a topic pattern: a topic (`report.generated`), a prefix (`report.*`) or `*`"
                ),
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&job.max_attempts) {
            return Err(ServiceError::unprocessable(
                "maxAttempts",
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        let input_len = job.input.to_string().len();
        if input_len > MAX_INPUT_BYTES {
            return Err(ServiceError::unprocessable(
                "input",
                format!("{input_len} bytes, above the limit of {MAX_INPUT_BYTES}"),
            ));
        }
        for (field, value, max) in [
            ("retainDays", job.retain_days, MAX_RETAIN_DAYS),
            ("retainLast", job.retain_last, MAX_RETAIN_LAST),
        ] {
            if let Some(value) = value
                && !(1..=max).contains(&value)
            {
                return Err(ServiceError::unprocessable(
                    field,
                    format!("{value} is not between 1 and {max}"),
                ));
            }
        }
        let ceiling = &self.settings.ceiling;
        for (field, value, max) in [
            (
                "timeoutMs",
                job.timeout_ms,
                ceiling.timeout.as_millis() as u64,
            ),
            ("fuel", job.fuel, ceiling.fuel),
            ("memoryBytes", job.memory_bytes, ceiling.memory_bytes),
        ] {
            match value {
                Some(0) => {
                    return Err(ServiceError::unprocessable(
                        field,
                        "must be greater than zero",
                    ));
                }
                Some(v) if v > max => {
                    return Err(ServiceError::unprocessable(
                        field,
                        format!("{v} is above this server's ceiling of {max}"),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The manifest of `module`'s current version and its job `job`, which must exist.
    async fn module_job(
        &self,
        module: &str,
        job: &str,
    ) -> Result<(Manifest, JobSpec), ServiceError> {
        let record = self.store.get_module(module).await?.ok_or_else(|| {
            ServiceError::unprocessable(
                "module",
                format!("no module named `{module}` is installed"),
            )
        })?;
        let manifest = record.current.manifest;
        let spec = manifest.job(job).cloned().ok_or_else(|| {
            let offered: Vec<&str> = manifest.jobs.iter().map(|j| j.name.as_str()).collect();
            ServiceError::unprocessable(
                "job",
                format!(
                    "module `{module}` offers no job `{job}`; it offers: {}",
                    offered.join(", ")
                ),
            )
        })?;
        Ok((manifest, spec))
    }

    /// What a module declares of its jobs' settings, applied to `job`: a required
    /// setting without a value, or a secret one given as plain text, is refused, naming
    /// the setting.
    fn check_declared_settings(job: &Job, manifest: &Manifest) -> Result<(), ServiceError> {
        for setting in manifest.settings.iter().filter(|s| s.applies_to(&job.job)) {
            let field = format!("config.{}", setting.name);
            match job.config.get(&setting.name) {
                None if setting.required => {
                    return Err(ServiceError::unprocessable(
                        field,
                        format!(
                            "module `{}` requires setting `{}` for job `{}` ({}); give it{}",
                            manifest.name,
                            setting.name,
                            job.job,
                            setting.description.trim_end_matches('.'),
                            if setting.secret {
                                " as a secret: {\"secret\": \"...\"}"
                            } else {
                                " a value"
                            }
                        ),
                    ));
                }
                Some(Setting::Plain(_)) if setting.secret => {
                    return Err(ServiceError::unprocessable(
                        field,
                        format!(
                            "setting `{}` is a secret for module `{}`: give it as {{\"secret\": \"...\"}}, not as plain text, so it is stored encrypted and masked",
                            setting.name, manifest.name
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// What is likely wrong with `job` without making it invalid, one sentence each: an
    /// event subscription its input cannot take or that its own module feeds, settings
    /// its module does not declare. Shown with the job; empty when nothing is.
    pub async fn job_warnings(&self, job: &Job) -> Result<Vec<String>, ServiceError> {
        let Some(record) = self.store.get_module(&job.module).await? else {
            return Ok(Vec::new());
        };
        let manifest = &record.current.manifest;
        let mut warnings = Vec::new();
        if let Some(pattern) = &job.on_event {
            if let Some(topic) = manifest
                .capabilities
                .publishes
                .iter()
                .find(|topic| topics_overlap(pattern, topic))
            {
                warnings.push(format!(
                    "onEvent `{pattern}` matches `{topic}`, which module `{}` publishes on: each run may start another; a chain of events stops at depth {MAX_EVENT_DEPTH}",
                    manifest.name
                ));
            }
            if let Some(reason) = manifest
                .job(&job.job)
                .and_then(|spec| spec.input_schema.as_ref())
                .and_then(refuses_event_envelope)
            {
                warnings.push(format!(
                    "onEvent is set, but the input schema of job `{}` {reason}: runs started by events get the event ({{id, topic, source, createdAt, payload}}) as input and will fail as invalid input; take an `Event<T>` (Rust SDK) or no input",
                    job.job
                ));
            }
        }
        if !manifest.settings.is_empty() {
            for (name, _) in job.config.iter() {
                let declared = manifest
                    .settings
                    .iter()
                    .any(|s| s.name == name && s.applies_to(&job.job));
                if !declared {
                    warnings.push(format!(
                        "setting `{name}` is not among those module `{}` declares for job `{}`; its runs do not read it",
                        manifest.name, job.job
                    ));
                }
            }
        }
        Ok(warnings)
    }

    fn next_run(job: &Job, now: Millis) -> Option<Millis> {
        if !job.enabled {
            return None;
        }
        let schedule = Schedule::parse(job.schedule.as_deref()?).ok()?;
        schedule.next_after(now)
    }

    pub async fn create_job(&self, draft: JobDraft) -> Result<Job, ServiceError> {
        let now = now_millis();
        let (manifest, spec) = self.module_job(&draft.module, &draft.job).await?;
        let (schedule, schedule_source) = match draft.schedule {
            None => (spec.default_schedule.clone(), ScheduleSource::Module),
            Some(schedule) => (schedule, ScheduleSource::Job),
        };
        let mut job = Job {
            id: new_id(),
            name: draft.name,
            module: draft.module,
            job: draft.job,
            schedule,
            schedule_source,
            input: draft.input.unwrap_or(serde_json::Value::Null),
            enabled: draft.enabled.unwrap_or(true),
            max_attempts: draft.max_attempts.unwrap_or(1),
            timeout_ms: draft.timeout_ms,
            fuel: draft.fuel,
            memory_bytes: draft.memory_bytes,
            on_event: draft.on_event,
            retain_days: draft.retain_days,
            retain_last: draft.retain_last,
            config: JobConfig::default(),
            next_run_at: None,
            created_at: now,
            updated_at: now,
        };
        if let Some(config) = draft.config {
            job.config = self.settle_config(&job.id, config, &JobConfig::default())?;
        }
        self.check_job(&job)?;
        Self::check_declared_settings(&job, &manifest)?;
        job.next_run_at = Self::next_run(&job, now);
        self.store.insert_job(&job).await?;
        tracing::info!(job = %job.name, id = %job.id, module = %job.module, "job created");
        Ok(job)
    }

    /// Creates a job for each job the module's current version offers, named
    /// `{module}.{job}`, on the module's default schedule, so a module runs as its author
    /// meant it to once installed. A module job that a job already runs (whatever its
    /// name) is left alone, so calling this again creates only what is missing; so is one
    /// that cannot be created as it is (a required setting with no value), with the reason.
    pub async fn create_module_jobs(&self, module: &str) -> Result<ModuleJobs, ServiceError> {
        let record = self
            .store
            .get_module(module)
            .await?
            .ok_or_else(|| ServiceError::not_found("module", module))?;
        let existing = self.store.jobs_using_module(module).await?;
        let mut outcome = ModuleJobs {
            created: Vec::new(),
            skipped: Vec::new(),
        };
        for spec in &record.current.manifest.jobs {
            let name = format!("{module}.{}", spec.name);
            let skip = |reason: String| SkippedModuleJob {
                job: spec.name.clone(),
                reason,
            };
            if let Some(runs_it) = existing.iter().find(|job| job.job == spec.name) {
                outcome
                    .skipped
                    .push(skip(format!("job `{}` already runs it", runs_it.name)));
                continue;
            }
            match self
                .create_job(JobDraft::new(name, module, &spec.name))
                .await
            {
                Ok(job) => outcome.created.push(job),
                Err(
                    err @ (ServiceError::Unprocessable { .. }
                    | ServiceError::BadField { .. }
                    | ServiceError::Conflict(_)),
                ) => outcome.skipped.push(skip(err.to_string())),
                Err(err) => return Err(err),
            }
        }
        Ok(outcome)
    }

    /// Gives the jobs of `record`'s module that follow its default schedules
    /// (`scheduleSource` `module`) the defaults its current version declares, after a new
    /// version was installed.
    pub(crate) async fn follow_default_schedules(
        &self,
        record: &ModuleRecord,
    ) -> Result<(), ServiceError> {
        let module = record.name.as_str();
        let now = now_millis();
        for mut job in self.store.jobs_using_module(module).await? {
            if job.schedule_source != ScheduleSource::Module {
                continue;
            }
            let default = record
                .current
                .manifest
                .job(&job.job)
                .and_then(|spec| spec.default_schedule.clone());
            if default == job.schedule {
                continue;
            }
            tracing::info!(
                job = %job.name,
                module,
                from = job.schedule.as_deref().unwrap_or("none"),
                to = default.as_deref().unwrap_or("none"),
                "job follows its module's new default schedule"
            );
            job.schedule = default;
            job.updated_at = now;
            job.next_run_at = Self::next_run(&job, now);
            self.store.update_job(&job).await?;
        }
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Result<Job, ServiceError> {
        self.store
            .get_job(id)
            .await?
            .ok_or_else(|| ServiceError::not_found("job", id))
    }

    pub async fn list_jobs(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Job>, ServiceError> {
        Ok(self.store.list_jobs(cursor, limit).await?)
    }

    pub async fn update_job(&self, id: &str, patch: JobPatch) -> Result<Job, ServiceError> {
        let mut job = self.get_job(id).await?;
        let JobPatch {
            name,
            job: module_job,
            schedule,
            input,
            enabled,
            max_attempts,
            timeout_ms,
            fuel,
            memory_bytes,
            on_event,
            retain_days,
            retain_last,
            config,
        } = patch;
        /// Absent means unchanged.
        fn apply<T>(field: &mut T, change: Option<T>) {
            if let Some(value) = change {
                *field = value;
            }
        }
        let job_changed = module_job.is_some();
        let settings_changed = config.is_some();
        // Enabling a job that its module's settings would refuse is changing it too; a
        // job made before its module declared them can still be disabled or edited.
        let enabling = enabled == Some(true) && !job.enabled;
        apply(&mut job.name, name);
        apply(&mut job.job, module_job);
        if let Some(schedule) = schedule {
            job.schedule = schedule;
            job.schedule_source = ScheduleSource::Job;
        }
        apply(&mut job.input, input);
        apply(&mut job.enabled, enabled);
        apply(&mut job.max_attempts, max_attempts);
        apply(&mut job.timeout_ms, timeout_ms);
        apply(&mut job.fuel, fuel);
        apply(&mut job.memory_bytes, memory_bytes);
        apply(&mut job.on_event, on_event);
        apply(&mut job.retain_days, retain_days);
        apply(&mut job.retain_last, retain_last);
        if let Some(config) = config {
            job.config = self.settle_config(&job.id, config, &job.config)?;
        }
        self.check_job(&job)?;
        if job_changed || settings_changed || enabling {
            let (manifest, spec) = self.module_job(&job.module, &job.job).await?;
            if job_changed && job.schedule_source == ScheduleSource::Module {
                job.schedule = spec.default_schedule;
            }
            Self::check_declared_settings(&job, &manifest)?;
        }
        let now = now_millis();
        job.updated_at = now;
        job.next_run_at = Self::next_run(&job, now);
        if !self.store.update_job(&job).await? {
            return Err(ServiceError::not_found("job", id));
        }
        Ok(job)
    }

    pub async fn delete_job(&self, id: &str) -> Result<(), ServiceError> {
        if !self.store.delete_job(id).await? {
            return Err(ServiceError::not_found("job", id));
        }
        Ok(())
    }

    /// Refuses to trigger a job that cannot run, saying why.
    async fn check_runnable(&self, job: &Job) -> Result<(), ServiceError> {
        if !job.enabled {
            return Err(ServiceError::Conflict(format!(
                "job `{}` is disabled; enable it to run it",
                job.name
            )));
        }
        let module = self.store.get_module(&job.module).await?.ok_or_else(|| {
            ServiceError::Conflict(format!("module `{}` no longer exists", job.module))
        })?;
        if module.status == ModuleStatus::Disabled {
            return Err(ServiceError::Conflict(format!(
                "module `{}` is disabled; enable it to run its jobs",
                job.module
            )));
        }
        Ok(())
    }

    /// Creates one manual run; returns its execution id and state. With an idempotency
    /// key, as [`Services::execute_job_bulk`].
    pub async fn execute_job(
        &self,
        id: &str,
        request: ExecuteRequest,
        idempotency_key: Option<&str>,
    ) -> Result<ManualRuns, ServiceError> {
        self.execute_job_bulk(id, vec![request.input], idempotency_key)
            .await
    }

    /// Creates one manual run per input (`None` uses the job's stored input), in one
    /// transaction; returns the execution ids in order. With a worker of this node free
    /// for each, the runs start here at once; otherwise they are queued for any node.
    ///
    /// With an idempotency key (the API has checked its syntax), a request under a key
    /// taken in the last [`ServiceSettings::idempotency_ttl`](super::ServiceSettings)
    /// creates nothing: if it asks the same (job and inputs) it gets the runs the first
    /// request created, as they were answered then (`replayed`); if it asks something
    /// else it is refused. Concurrent requests under one key create one batch.
    pub async fn execute_job_bulk(
        &self,
        id: &str,
        inputs: Vec<Option<serde_json::Value>>,
        idempotency_key: Option<&str>,
    ) -> Result<ManualRuns, ServiceError> {
        if inputs.is_empty() || inputs.len() > self.settings.max_bulk {
            return Err(ServiceError::unprocessable(
                "inputs",
                format!("give between 1 and {} inputs", self.settings.max_bulk),
            ));
        }
        let now = now_millis();
        let key = idempotency_key.map(|key| IdempotencyKey {
            key: key.to_owned(),
            fingerprint: request_fingerprint(id, &inputs),
            expires_at: now.saturating_add(self.settings.idempotency_ttl.as_millis() as Millis),
        });
        let key = key.as_ref();
        let runs: Vec<ManualRun> = inputs
            .into_iter()
            .map(|input| ManualRun {
                id: new_id(),
                input: input.map(|value| value.to_string()),
            })
            .collect();
        let runner = self.local_runner.get();
        if let Some((runner, reservation)) = runner
            .as_ref()
            .and_then(|runner| Some((runner, runner.reserve(runs.len())?)))
        {
            let lease_until = now + runner.lease().as_millis() as Millis;
            let outcome = self
                .store
                .start_manual(id, &runs, now, runner.node_id(), lease_until, key)
                .await?;
            // Any outcome but `Created` started nothing: dropping the reservation frees
            // its workers.
            let started = match outcome {
                ManualOutcome::Created(started) => started,
                ManualOutcome::NotRunnable => return Err(self.why_not_runnable(id).await),
                ManualOutcome::Replayed(earlier) => return self.replay(earlier).await,
                ManualOutcome::KeyReused => return Err(self.key_reused(key)),
            };
            let ids = started.iter().map(|run| run.id.clone()).collect();
            runner.start(reservation, started);
            // Started first, acknowledged once durable (see `Store::start_manual`).
            self.store.flush().await?;
            return Ok(ManualRuns {
                ids,
                status: ExecutionStatus::Running,
                replayed: false,
            });
        }
        let ids = match self.store.enqueue_manual(id, &runs, now, key).await? {
            ManualOutcome::Created(ids) => ids,
            ManualOutcome::NotRunnable => return Err(self.why_not_runnable(id).await),
            ManualOutcome::Replayed(earlier) => return self.replay(earlier).await,
            ManualOutcome::KeyReused => return Err(self.key_reused(key)),
        };
        super::executions::offer(self.queue.as_ref(), &ids).await;
        Ok(ManualRuns {
            ids,
            status: ExecutionStatus::Queued,
            replayed: false,
        })
    }

    /// The answer to a retry of a request that created `earlier`, once what it created
    /// is durable (the first request may still be waiting for that itself).
    async fn replay(&self, earlier: EarlierRuns) -> Result<ManualRuns, ServiceError> {
        self.store.flush().await?;
        Ok(ManualRuns {
            ids: earlier.ids,
            status: earlier.status,
            replayed: true,
        })
    }

    /// Why a request under an idempotency key taken by another request is refused.
    fn key_reused(&self, key: Option<&IdempotencyKey>) -> ServiceError {
        let key = key.map_or("", |key| key.key.as_str());
        ServiceError::unprocessable(
            IDEMPOTENCY_KEY_FIELD,
            format!(
                "`{key}` was used in the last {} hours for a request with another job or other \
                 inputs; a retry must repeat its request exactly, and a new request needs a new key",
                self.settings.idempotency_ttl.as_secs().div_ceil(3_600)
            ),
        )
    }

    /// Why runs of job `id` could not be created: read only after the attempt, which
    /// checks everything in the same statement.
    async fn why_not_runnable(&self, id: &str) -> ServiceError {
        let job = match self.get_job(id).await {
            Ok(job) => job,
            Err(err) => return err,
        };
        if let Err(err) = self.check_runnable(&job).await {
            return err;
        }
        ServiceError::Conflict(format!(
            "job `{}` changed while it was being queued; try again",
            job.name
        ))
    }
}

/// Manual runs just created, or created by the first request under the same
/// idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManualRuns {
    /// In the order of the inputs.
    pub ids: Vec<String>,
    /// `RUNNING` when this node had a free worker for each run and started them,
    /// `QUEUED` when they wait for any node's worker (for a replay: as first answered).
    pub status: ExecutionStatus,
    /// Created by an earlier request under the same idempotency key, not by this one.
    pub replayed: bool,
}

/// How errors name the idempotency key, which comes in a header.
pub(crate) const IDEMPOTENCY_KEY_FIELD: &str = "Idempotency-Key";

/// What a manual trigger asks, as an idempotency key remembers it: SHA-256 over the job
/// and the inputs as parsed (so `{"count": 2}` and `{"inputs": [null, null]}` ask the
/// same, and so do the same bodies spaced differently), lower-case hex.
fn request_fingerprint(job_id: &str, inputs: &[Option<serde_json::Value>]) -> String {
    let mut digest = Sha256::new();
    digest.update(job_id.as_bytes());
    digest.update([0]);
    for input in inputs {
        match input {
            // Serializing a value cannot fail.
            Some(value) => digest.update(value.to_string().as_bytes()),
            None => digest.update(b"-"),
        }
        digest.update([0]);
    }
    hex::encode(digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_are_topics_prefixes_or_everything() {
        assert!(is_valid_topic_pattern("report.generated"));
        assert!(is_valid_topic_pattern("report.*"));
        assert!(is_valid_topic_pattern("*"));
        assert!(!is_valid_topic_pattern("report.*.x"));
        assert!(!is_valid_topic_pattern(""));
        assert!(!is_valid_topic_pattern("*.report"));
    }

    #[test]
    fn a_jobs_own_limits_win_over_the_modules_hint() {
        let spec = JobSpec {
            name: "j".into(),
            description: String::new(),
            default_schedule: None,
            input_schema: None,
            timeout_ms: Some(5_000),
            fuel: Some(1_000),
        };
        let mut job = Job {
            id: "1".into(),
            name: "j".into(),
            module: "m".into(),
            job: "j".into(),
            schedule: None,
            schedule_source: ScheduleSource::Job,
            input: serde_json::Value::Null,
            enabled: true,
            max_attempts: 1,
            timeout_ms: None,
            fuel: None,
            memory_bytes: None,
            on_event: None,
            retain_days: None,
            retain_last: None,
            config: JobConfig::default(),
            next_run_at: None,
            created_at: 0,
            updated_at: 0,
        };
        let defaults = Limits::default();
        let limits = effective_limits(&job, Some(&spec), &defaults);
        assert_eq!(limits.timeout, Duration::from_secs(5));
        assert_eq!(limits.fuel, 1_000);
        job.timeout_ms = Some(200);
        job.memory_bytes = Some(1 << 20);
        let limits = effective_limits(&job, Some(&spec), &defaults);
        assert_eq!(limits.timeout, Duration::from_millis(200));
        assert_eq!(limits.memory_bytes, 1 << 20);
        assert_eq!(effective_limits(&job, None, &defaults).fuel, defaults.fuel);
    }
}
