//! The behaviour every [`Store`] backend must show. Each test is an async function over
//! `&dyn Store`; [`backend_tests!`] runs the whole list against a fresh database of one
//! backend, so a new backend is one more invocation at the bottom of this file.
//!
//! The PostgreSQL run needs a server: `RUNCELL_TEST_POSTGRES_URL` names a database its
//! user may create databases from (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Each test creates a database of its own and drops it when it ends, passed or failed;
//! an unreachable server fails the tests, it never skips them.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde_json::json;

use super::shared::usage::log_bytes;
use super::{
    CancelEffect, ClaimedExecution, EXPIRED_KEYS_PER_REQUEST, EarlierRuns, ExecutionFilter,
    INLINE_INPUT_MAX, IdempotencyKey, LeaseToken, ManualOutcome, ManualRun, PostgresStore,
    QueuedCount, Retry, Settled, SqliteStore, Store, StoreError, VersionUpload, failpoints,
};
use crate::domain::budget::{Budget, BudgetAction, BudgetMetric, BudgetPeriod};
use crate::domain::endpoint::{Endpoint, EndpointCheck, UptimeCount};
use crate::domain::metrics::{
    MetricRefusals, ModuleMetricsSummary, ROLLUP_WIDTHS, Rollup, SeriesAdmission, labels_text,
    rollup_start,
};
use crate::domain::retention::{Pruned, Retention};
use crate::domain::usage::{
    OutboundTally, PERCENTILE_ERROR, ResponseClass, RouteOutbound, RunTotals, UsageQuery,
};
use crate::domain::{
    Capabilities, CodeApproval, Event, ExecutionResult, ExecutionStatus, Job, JobConfig, JobSpec,
    LogEntry, LogLevel, Manifest, Millis, ModuleStatus, NewExecution, NodeHeartbeat, PublisherKey,
    Role, Setting, Trigger, Uploader, new_id,
};

/// A fixed "now" (2023-11-14), so expectations do not depend on the clock.
const T0: Millis = 1_700_000_000_000;
const SECOND: Millis = 1_000;

// ---- fixtures ------------------------------------------------------------------------

fn manifest(name: &str, version: &str) -> Manifest {
    Manifest {
        name: name.to_owned(),
        version: version.to_owned(),
        description: format!("{name} {version}"),
        jobs: vec![JobSpec {
            name: "work".to_owned(),
            description: "Does the work".to_owned(),
            default_schedule: Some("0 * * * * *".to_owned()),
            input_schema: Some(serde_json::json!({"type": "object"})),
            timeout_ms: Some(5_000),
            fuel: None,
        }],
        capabilities: Capabilities {
            key_value: true,
            ..Capabilities::default()
        },
        settings: Vec::new(),
    }
}

fn job(name: &str, module: &str) -> Job {
    Job {
        id: new_id(),
        name: name.to_owned(),
        module: module.to_owned(),
        job: "work".to_owned(),
        schedule: None,
        schedule_source: crate::domain::ScheduleSource::Job,
        input: serde_json::json!({"n": 1}),
        enabled: true,
        max_attempts: 3,
        timeout_ms: Some(30_000),
        fuel: Some(8_000_000_000),
        memory_bytes: Some(64 << 20),
        on_event: None,
        retain_days: None,
        retain_last: None,
        config: JobConfig::default(),
        next_run_at: None,
        created_at: T0,
        updated_at: T0,
    }
}

pub(crate) fn manual(job_id: &str, at: Millis) -> NewExecution {
    NewExecution {
        id: new_id(),
        job_id: job_id.to_owned(),
        module: "m".to_owned(),
        job: "work".to_owned(),
        trigger: Trigger::Manual,
        attempt: 1,
        retry_of: None,
        input: r#"{"n":1}"#.to_owned(),
        scheduled_at: at,
        run_after: at,
        cron_tick: None,
        event_id: None,
        created_at: at,
    }
}

fn cron(job_id: &str, tick: Millis) -> NewExecution {
    NewExecution {
        trigger: Trigger::Cron,
        cron_tick: Some(tick),
        ..manual(job_id, tick)
    }
}

fn completed(id: &str, logs: Vec<LogEntry>) -> ExecutionResult {
    ExecutionResult {
        id: id.to_owned(),
        status: ExecutionStatus::Completed,
        result: Some(r#"{"ok":true}"#.to_owned()),
        error: None,
        error_kind: None,
        finished_at: T0 + 2 * SECOND,
        duration_ms: 12.5,
        fuel_consumed: 1_234,
        memory_peak_bytes: 65_536,
        cpu_time_ms: 3.25,
        logs,
        outbound: Vec::new(),
    }
}

fn log(seq: u32, message: &str) -> LogEntry {
    let mut fields = serde_json::Map::new();
    if seq.is_multiple_of(2) {
        fields.insert("seq".to_owned(), serde_json::json!(seq));
    }
    LogEntry {
        seq,
        ts_ms: (T0 + Millis::from(seq)) as u64,
        level: if seq.is_multiple_of(2) {
            LogLevel::Info
        } else {
            LogLevel::Warn
        },
        message: message.to_owned(),
        fields,
    }
}

fn ids(executions: &[NewExecution]) -> Vec<String> {
    executions.iter().map(|e| e.id.clone()).collect()
}

/// Enqueues one manual execution of `job_id` due at `T0` and claims it for `node-a`.
async fn running(store: &dyn Store, job_id: &str) -> String {
    let execution = manual(job_id, T0);
    store
        .enqueue_executions(std::slice::from_ref(&execution))
        .await
        .unwrap();
    let claimed = store
        .claim_executions(
            &ids(std::slice::from_ref(&execution)),
            "node-a",
            T0,
            T0 + 30 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    execution.id
}

async fn status_of(store: &dyn Store, id: &str) -> ExecutionStatus {
    store.get_execution(id).await.unwrap().unwrap().status
}

// ---- modules -------------------------------------------------------------------------

async fn a_fresh_store_answers_pings(store: &dyn Store) {
    store.ping().await.unwrap();
}

async fn the_first_upload_creates_an_enabled_module(store: &dyn Store) {
    let record = store
        .install_module_version(
            &manifest("sync", "1.0.0"),
            "hash-1",
            b"wasm-1",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(record.name, "sync");
    assert_eq!(record.status, ModuleStatus::Enabled);
    assert_eq!(record.created_at, T0);
    assert_eq!(record.current.version, "1.0.0");
    assert_eq!(record.current.content_hash, "hash-1");
    assert_eq!(record.current.size_bytes, 6);
    assert_eq!(record.current.manifest, manifest("sync", "1.0.0"));
    assert_eq!(store.get_module("sync").await.unwrap(), Some(record));
    assert_eq!(
        store.module_wasm("hash-1").await.unwrap().as_deref(),
        Some(&b"wasm-1"[..])
    );
    assert_eq!(store.get_module("other").await.unwrap(), None);
}

async fn a_new_version_becomes_current_and_old_ones_stay_listed_newest_first(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("sync", "1.0.0"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let record = store
        .install_module_version(
            &manifest("sync", "2.0.0"),
            "hash-2",
            b"two",
            &VersionUpload::default(),
            T0 + SECOND,
        )
        .await
        .unwrap();
    assert_eq!(record.current.version, "2.0.0");
    assert_eq!(record.created_at, T0);
    assert_eq!(record.updated_at, T0 + SECOND);
    let versions = store.list_module_versions("sync").await.unwrap();
    let listed: Vec<&str> = versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(listed, ["2.0.0", "1.0.0"]);
    assert!(versions.iter().all(|v| v.module == "sync"));
    assert_eq!(store.list_modules().await.unwrap(), vec![record]);
}

async fn reuploading_known_bytes_makes_them_current_without_a_duplicate(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("sync", "1.0.0"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    store
        .install_module_version(
            &manifest("sync", "2.0.0"),
            "hash-2",
            b"two",
            &VersionUpload::default(),
            T0 + SECOND,
        )
        .await
        .unwrap();
    let record = store
        .install_module_version(
            &manifest("sync", "1.0.0"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0 + 2 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(record.current.content_hash, "hash-1");
    assert_eq!(
        record.current.uploaded_at, T0,
        "the version keeps its first upload time"
    );
    assert_eq!(record.updated_at, T0 + 2 * SECOND);
    let versions = store.list_module_versions("sync").await.unwrap();
    assert_eq!(versions.len(), 2);
}

async fn identical_bytes_of_two_modules_outlive_the_deletion_of_one(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("first", "1"),
            "shared",
            b"same",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    store
        .install_module_version(
            &manifest("second", "1"),
            "shared",
            b"same",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    assert!(store.delete_module("first", false).await.unwrap());
    assert_eq!(
        store.module_wasm("shared").await.unwrap().as_deref(),
        Some(&b"same"[..])
    );
    assert!(store.delete_module("second", false).await.unwrap());
    assert_eq!(store.module_wasm("shared").await.unwrap(), None);
}

fn uploader(username: &str, role: Role) -> Uploader {
    Uploader {
        username: username.to_owned(),
        role,
        token: None,
    }
}

/// An upload by operator `ci`, approved by nobody.
fn by_operator() -> VersionUpload {
    VersionUpload {
        uploaded_by: Some(uploader("ci", Role::Operator)),
        ..VersionUpload::default()
    }
}

/// An upload whose code `by` approved (with `key`, when a pinned key signed it).
fn approved_upload(by: &str, key: Option<&str>, at: Millis) -> VersionUpload {
    VersionUpload {
        uploaded_by: Some(uploader("ci", Role::Operator)),
        signed_by: key.map(str::to_owned),
        approval: Some(CodeApproval {
            by: by.to_owned(),
            at,
            key: key.map(str::to_owned),
        }),
    }
}

fn publisher_key(id: &str, comment: &str) -> PublisherKey {
    PublisherKey {
        id: id.to_owned(),
        public_key: vec![7; 32],
        comment: comment.to_owned(),
        pinned_by: "admin".to_owned(),
        pinned_at: T0,
    }
}

async fn an_approval_binds_to_the_bytes_it_approved(store: &dyn Store) {
    let first = store
        .install_module_version(&manifest("sync", "1"), "hash-1", b"one", &by_operator(), T0)
        .await
        .unwrap();
    assert_eq!(
        first.current.uploaded_by,
        Some(uploader("ci", Role::Operator))
    );
    assert_eq!(first.current.approval, None);
    let caps = first.current.manifest.capabilities.clone();
    let approved = store
        .approve_module_version("sync", "hash-1", &caps, None, "admin", T0 + SECOND)
        .await
        .unwrap()
        .unwrap();
    let admin_approval = CodeApproval {
        by: "admin".to_owned(),
        at: T0 + SECOND,
        key: None,
    };
    assert_eq!(approved.current.approval, Some(admin_approval.clone()));
    assert_eq!(approved.approved, caps);

    // New bytes under the same name wait; the approved ones again keep their approval.
    let second = store
        .install_module_version(
            &manifest("sync", "2"),
            "hash-2",
            b"two",
            &by_operator(),
            T0 + 2 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(second.current.approval, None);
    assert_eq!(second.approved, caps, "the capabilities stay approved");
    let back = store
        .install_module_version(
            &manifest("sync", "1"),
            "hash-1",
            b"one",
            &by_operator(),
            T0 + 3 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(back.current.approval, Some(admin_approval));

    // Unapproved bytes gain the approval an upload brings, and keep the first one.
    let gained = store
        .install_module_version(
            &manifest("sync", "2"),
            "hash-2",
            b"two",
            &approved_upload("root", None, T0 + 4 * SECOND),
            T0 + 4 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(gained.current.approval.as_ref().unwrap().by, "root");
    assert_eq!(
        gained.current.uploaded_by,
        Some(uploader("ci", Role::Operator)),
        "the first uploader stays"
    );
    let kept = store
        .install_module_version(
            &manifest("sync", "2"),
            "hash-2",
            b"two",
            &approved_upload("someone else", None, T0 + 5 * SECOND),
            T0 + 5 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(kept.current.approval, gained.current.approval);
    let versions = store.list_module_versions("sync").await.unwrap();
    assert!(
        versions.iter().all(|v| v.approval.is_some()),
        "{versions:?}"
    );
    assert_eq!(store.get_module("sync").await.unwrap(), Some(kept));
}

async fn an_approval_reaches_only_the_version_its_approver_saw(store: &dyn Store) {
    store
        .install_module_version(&manifest("sync", "1"), "hash-1", b"one", &by_operator(), T0)
        .await
        .unwrap();
    store
        .install_module_version(&manifest("sync", "2"), "hash-2", b"two", &by_operator(), T0)
        .await
        .unwrap();
    let everything = Capabilities {
        key_value: true,
        outbound_hosts: vec!["*".to_owned()],
        ..Capabilities::default()
    };
    let hosts = ["status.example.com".to_owned()];
    let grant = Some(hosts.as_slice());
    let raced = store
        .approve_module_version("sync", "hash-1", &everything, grant, "admin", T0)
        .await;
    assert!(matches!(raced, Err(StoreError::Conflict(_))), "{raced:?}");
    let record = store.get_module("sync").await.unwrap().unwrap();
    assert_eq!(record.current.approval, None);
    assert_eq!(
        record.approved,
        Capabilities::default(),
        "nothing was approved"
    );
    assert_eq!(record.outbound_grant, None, "nothing was granted");
    assert_eq!(
        store
            .approve_module_version("missing", "hash-1", &everything, grant, "admin", T0)
            .await
            .unwrap(),
        None
    );
}

async fn an_approval_records_the_outbound_hosts_granted_until_the_next_one(store: &dyn Store) {
    let mut monitor = manifest("monitor", "1");
    monitor.capabilities.outbound_hosts = vec!["*".to_owned()];
    store
        .install_module_version(&monitor, "hash-1", b"one", &by_operator(), T0)
        .await
        .unwrap();
    let fresh = store.get_module("monitor").await.unwrap().unwrap();
    assert_eq!(fresh.outbound_grant, None, "nothing granted by default");
    let narrowed = vec![
        "status.example.com".to_owned(),
        "*.internal.example.org:8443".to_owned(),
    ];
    let approved = store
        .approve_module_version(
            "monitor",
            "hash-1",
            &monitor.capabilities,
            Some(&narrowed),
            "admin",
            T0 + SECOND,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(approved.outbound_grant.as_ref(), Some(&narrowed));
    assert_eq!(
        approved.approved, monitor.capabilities,
        "the request reviewed"
    );
    assert_eq!(approved.granted_hosts(), narrowed.as_slice());

    // A new version keeps the module's grant; reads agree with the approval's answer.
    monitor.version = "2".to_owned();
    let upgraded = store
        .install_module_version(&monitor, "hash-2", b"two", &by_operator(), T0 + 2 * SECOND)
        .await
        .unwrap();
    assert_eq!(upgraded.outbound_grant.as_ref(), Some(&narrowed));
    let listed = store.list_modules().await.unwrap();
    assert_eq!(
        listed,
        [store.get_module("monitor").await.unwrap().unwrap()]
    );
    assert_eq!(listed[0].outbound_grant.as_ref(), Some(&narrowed));

    // An approval without a grant of its own records "as requested".
    let as_requested = store
        .approve_module_version(
            "monitor",
            "hash-2",
            &monitor.capabilities,
            None,
            "admin",
            T0 + 3 * SECOND,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(as_requested.outbound_grant, None);
    assert_eq!(as_requested.granted_hosts(), ["*"]);
}

async fn a_pinned_key_approves_uploads_until_it_is_unpinned(store: &dyn Store) {
    let key = publisher_key("00112233aabbccdd", "release");
    assert_eq!(store.pin_publisher_key("sync", &key).await.unwrap(), None);
    store
        .install_module_version(&manifest("sync", "1"), "hash-1", b"one", &by_operator(), T0)
        .await
        .unwrap();
    assert_eq!(
        store.pin_publisher_key("sync", &key).await.unwrap(),
        Some(key.clone())
    );
    let renamed = store
        .pin_publisher_key("sync", &publisher_key("00112233aabbccdd", "ci"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renamed.comment, "ci");
    assert_eq!(renamed.pinned_at, T0);
    assert_eq!(store.publisher_keys("sync").await.unwrap(), vec![renamed]);
    assert_eq!(store.publisher_keys("other").await.unwrap(), vec![]);

    let signed = store
        .install_module_version(
            &manifest("sync", "2"),
            "hash-2",
            b"two",
            &approved_upload("publisher key `00112233aabbccdd`", Some(&key.id), T0),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(
        signed.current.approval.unwrap().key.as_deref(),
        Some(key.id.as_str())
    );
    assert_eq!(signed.current.signed_by.as_deref(), Some(key.id.as_str()));
    // A key that is not pinned (unpinned since it was checked) approves nothing.
    let stray = store
        .install_module_version(
            &manifest("sync", "3"),
            "hash-3",
            b"three",
            &approved_upload(
                "publisher key `ffffffffffffffff`",
                Some("ffffffffffffffff"),
                T0,
            ),
            T0,
        )
        .await
        .unwrap();
    assert_eq!(stray.current.approval, None);

    assert!(store.unpin_publisher_key("sync", &key.id).await.unwrap());
    assert!(!store.unpin_publisher_key("sync", &key.id).await.unwrap());
    assert_eq!(store.publisher_keys("sync").await.unwrap(), vec![]);
    let versions = store.list_module_versions("sync").await.unwrap();
    let two = versions
        .iter()
        .find(|v| v.content_hash == "hash-2")
        .unwrap();
    assert_eq!(
        two.approval, None,
        "unpinning withdraws what the key approved"
    );
    assert_eq!(two.signed_by.as_deref(), Some(key.id.as_str()));

    // A deleted module takes its keys along.
    store.pin_publisher_key("sync", &key).await.unwrap();
    assert!(store.delete_module("sync", false).await.unwrap());
    store
        .install_module_version(&manifest("sync", "1"), "hash-1", b"one", &by_operator(), T0)
        .await
        .unwrap();
    assert_eq!(store.publisher_keys("sync").await.unwrap(), vec![]);
}

async fn a_module_can_be_disabled_and_enabled_again(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("sync", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let disabled = store
        .set_module_status("sync", ModuleStatus::Disabled, T0 + SECOND)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(disabled.status, ModuleStatus::Disabled);
    assert_eq!(disabled.updated_at, T0 + SECOND);
    // A new upload does not re-enable it behind the administrator's back.
    let reuploaded = store
        .install_module_version(
            &manifest("sync", "2"),
            "hash-2",
            b"two",
            &VersionUpload::default(),
            T0 + 2 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(reuploaded.status, ModuleStatus::Disabled);
    let enabled = store
        .set_module_status("sync", ModuleStatus::Enabled, T0 + 3 * SECOND)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(enabled.status, ModuleStatus::Enabled);
    assert_eq!(
        store
            .set_module_status("missing", ModuleStatus::Enabled, T0)
            .await
            .unwrap(),
        None
    );
}

async fn deleting_a_module_without_its_jobs_leaves_them_and_removes_its_data(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("sync", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    store
        .install_module_version(
            &manifest("sync", "2"),
            "hash-2",
            b"two",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let kept = job("nightly", "sync");
    store.insert_job(&kept).await.unwrap();
    store.kv_set("sync", "cursor", b"42", T0).await.unwrap();
    store.kv_set("other", "cursor", b"7", T0).await.unwrap();

    assert!(store.delete_module("sync", false).await.unwrap());

    assert_eq!(store.get_module("sync").await.unwrap(), None);
    assert!(store.list_module_versions("sync").await.unwrap().is_empty());
    assert_eq!(store.module_wasm("hash-1").await.unwrap(), None);
    assert_eq!(store.module_wasm("hash-2").await.unwrap(), None);
    assert_eq!(store.kv_get("sync", "cursor").await.unwrap(), None);
    assert_eq!(
        store.kv_get("other", "cursor").await.unwrap().as_deref(),
        Some(&b"7"[..])
    );
    assert_eq!(store.get_job(&kept.id).await.unwrap(), Some(kept));
    assert!(!store.delete_module("sync", false).await.unwrap());
}

async fn deleting_a_module_with_its_jobs_keeps_their_executions(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("sync", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let doomed = job("nightly", "sync");
    let unrelated = job("other", "elsewhere");
    store.insert_job(&doomed).await.unwrap();
    store.insert_job(&unrelated).await.unwrap();
    let execution = manual(&doomed.id, T0);
    store
        .enqueue_executions(std::slice::from_ref(&execution))
        .await
        .unwrap();

    assert!(store.delete_module("sync", true).await.unwrap());

    assert_eq!(store.get_job(&doomed.id).await.unwrap(), None);
    assert!(store.get_job(&unrelated.id).await.unwrap().is_some());
    assert!(store.get_execution(&execution.id).await.unwrap().is_some());
}

// ---- jobs ----------------------------------------------------------------------------

async fn a_job_reads_back_as_it_was_written(store: &dyn Store) {
    let mut written = job("nightly", "sync");
    written.schedule = Some("0 0 * * * *".to_owned());
    written.schedule_source = crate::domain::ScheduleSource::Module;
    written.on_event = Some("report.*".to_owned());
    written.next_run_at = Some(T0 + SECOND);
    written.timeout_ms = None;
    store.insert_job(&written).await.unwrap();
    assert_eq!(
        store.get_job(&written.id).await.unwrap(),
        Some(written.clone())
    );
    written.schedule_source = crate::domain::ScheduleSource::Job;
    written.schedule = None;
    assert!(store.update_job(&written).await.unwrap());
    assert_eq!(store.get_job(&written.id).await.unwrap(), Some(written));
    assert_eq!(store.get_job("missing").await.unwrap(), None);
}

async fn a_jobs_settings_read_back_with_their_secrets_still_sealed(store: &dyn Store) {
    let mut written = job("monitor", "endpoint-monitor");
    written.config = JobConfig::new(BTreeMap::from([
        (
            "endpoints".to_owned(),
            Setting::Plain("[{\"name\": \"é\"}]".to_owned()),
        ),
        (
            "apiKey".to_owned(),
            Setting::Sealed("v1:bm90LXJlYWxseS1zZWFsZWQ".to_owned()),
        ),
    ]));
    store.insert_job(&written).await.unwrap();
    assert_eq!(
        store.get_job(&written.id).await.unwrap().as_ref(),
        Some(&written)
    );
    assert_eq!(
        store.get_jobs(&[written.id.clone()]).await.unwrap(),
        [written.clone()]
    );

    written.config = JobConfig::new(BTreeMap::from([(
        "apiKey".to_owned(),
        Setting::Plain("now plain".to_owned()),
    )]));
    assert!(store.update_job(&written).await.unwrap());
    assert_eq!(
        store.get_job(&written.id).await.unwrap(),
        Some(written.clone())
    );
    written.config = JobConfig::default();
    assert!(store.update_job(&written).await.unwrap());
    assert_eq!(store.get_job(&written.id).await.unwrap(), Some(written));
}

async fn a_job_name_is_taken_only_once(store: &dyn Store) {
    store.insert_job(&job("nightly", "sync")).await.unwrap();
    let err = store
        .insert_job(&job("nightly", "other"))
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict(message) => assert!(message.contains("nightly"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn renaming_a_job_onto_a_taken_name_conflicts(store: &dyn Store) {
    let first = job("first", "sync");
    let mut second = job("second", "sync");
    store.insert_job(&first).await.unwrap();
    store.insert_job(&second).await.unwrap();

    second.name = "first".to_owned();
    match store.update_job(&second).await.unwrap_err() {
        StoreError::Conflict(message) => assert!(message.contains("first"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }

    second.name = "renamed".to_owned();
    second.enabled = false;
    second.input = serde_json::json!({"changed": true});
    second.updated_at = T0 + SECOND;
    assert!(store.update_job(&second).await.unwrap());
    assert_eq!(store.get_job(&second.id).await.unwrap(), Some(second));

    assert!(!store.update_job(&job("ghost", "sync")).await.unwrap());
}

async fn a_deleted_job_is_gone(store: &dyn Store) {
    let doomed = job("doomed", "sync");
    store.insert_job(&doomed).await.unwrap();
    assert!(store.delete_job(&doomed.id).await.unwrap());
    assert_eq!(store.get_job(&doomed.id).await.unwrap(), None);
    assert!(!store.delete_job(&doomed.id).await.unwrap());
}

async fn jobs_list_oldest_first_a_page_at_a_time(store: &dyn Store) {
    let mut created = Vec::new();
    for n in 0..5 {
        let job = job(&format!("job-{n}"), "sync");
        store.insert_job(&job).await.unwrap();
        created.push(job.id);
    }
    let first = store.list_jobs(None, 2).await.unwrap();
    let second = store
        .list_jobs(first.next_cursor.as_deref(), 2)
        .await
        .unwrap();
    let last = store
        .list_jobs(second.next_cursor.as_deref(), 2)
        .await
        .unwrap();
    let listed: Vec<String> = [&first, &second, &last]
        .iter()
        .flat_map(|page| page.items.iter().map(|j| j.id.clone()))
        .collect();
    assert_eq!(listed, created);
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.next_cursor, None);
    let exact = store.list_jobs(None, 5).await.unwrap();
    assert_eq!(exact.items.len(), 5);
    assert_eq!(exact.next_cursor, None, "no cursor when nothing follows");
}

async fn jobs_are_fetched_by_id_skipping_missing_ones(store: &dyn Store) {
    let a = job("a", "sync");
    let b = job("b", "sync");
    store.insert_job(&a).await.unwrap();
    store.insert_job(&b).await.unwrap();
    let found = store
        .get_jobs(&[b.id.clone(), "missing".to_owned(), a.id.clone()])
        .await
        .unwrap();
    let found: HashSet<String> = found.into_iter().map(|j| j.id).collect();
    assert_eq!(found, HashSet::from([a.id, b.id]));
    assert!(store.get_jobs(&[]).await.unwrap().is_empty());
}

async fn only_enabled_scheduled_jobs_that_are_due_are_returned(store: &dyn Store) {
    let scheduled = |name: &str, next: Option<Millis>, enabled: bool| Job {
        schedule: Some("0 * * * * *".to_owned()),
        next_run_at: next,
        enabled,
        ..job(name, "sync")
    };
    let due = scheduled("due", Some(T0 - SECOND), true);
    let due_now = scheduled("due-now", Some(T0), true);
    let later = scheduled("later", Some(T0 + SECOND), true);
    let disabled = scheduled("disabled", Some(T0 - SECOND), false);
    let unscheduled = Job {
        next_run_at: Some(T0 - SECOND),
        ..job("unscheduled", "sync")
    };
    for job in [&due, &due_now, &later, &disabled, &unscheduled] {
        store.insert_job(job).await.unwrap();
    }
    let names = |jobs: Vec<Job>| -> HashSet<String> { jobs.into_iter().map(|j| j.name).collect() };
    assert_eq!(
        names(store.due_scheduled_jobs(T0).await.unwrap()),
        HashSet::from(["due".to_owned(), "due-now".to_owned()])
    );

    store
        .set_job_next_run(&due.id, Some(T0 + 60 * SECOND))
        .await
        .unwrap();
    store.set_job_next_run(&due_now.id, None).await.unwrap();
    assert!(store.due_scheduled_jobs(T0).await.unwrap().is_empty());
    assert_eq!(
        store.get_job(&due.id).await.unwrap().unwrap().next_run_at,
        Some(T0 + 60 * SECOND)
    );
}

async fn only_enabled_jobs_with_an_event_pattern_are_subscribed(store: &dyn Store) {
    let subscribed = Job {
        on_event: Some("report.*".to_owned()),
        ..job("subscribed", "sync")
    };
    let disabled = Job {
        on_event: Some("report.*".to_owned()),
        enabled: false,
        ..job("disabled", "sync")
    };
    store.insert_job(&subscribed).await.unwrap();
    store.insert_job(&disabled).await.unwrap();
    store.insert_job(&job("plain", "sync")).await.unwrap();
    assert_eq!(
        store.event_subscribed_jobs().await.unwrap(),
        vec![subscribed]
    );
}

async fn the_jobs_using_a_module_are_named(store: &dyn Store) {
    store.insert_job(&job("b-job", "sync")).await.unwrap();
    store.insert_job(&job("a-job", "sync")).await.unwrap();
    store.insert_job(&job("elsewhere", "other")).await.unwrap();
    assert_eq!(
        store
            .jobs_using_module("sync")
            .await
            .unwrap()
            .into_iter()
            .map(|job| job.name)
            .collect::<Vec<_>>(),
        ["a-job", "b-job"]
    );
    assert!(store.jobs_using_module("none").await.unwrap().is_empty());
}

// ---- executions ----------------------------------------------------------------------

async fn an_enqueued_execution_reads_back_queued_with_what_it_was_given(store: &dyn Store) {
    let mut new = cron("job-1", T0);
    new.attempt = 2;
    new.retry_of = Some("first".to_owned());
    new.event_id = Some("event-1".to_owned());
    new.run_after = T0 + 5 * SECOND;
    let created = store
        .enqueue_executions(std::slice::from_ref(&new))
        .await
        .unwrap();
    assert_eq!(created, [new.id.clone()]);
    let execution = store.get_execution(&new.id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Queued);
    assert_eq!(execution.job_id, "job-1");
    assert_eq!(execution.module, "m");
    assert_eq!(execution.job, "work");
    assert_eq!(execution.trigger, Trigger::Cron);
    assert_eq!(execution.attempt, 2);
    assert_eq!(execution.retry_of.as_deref(), Some("first"));
    assert_eq!(execution.input, serde_json::json!({"n": 1}));
    assert_eq!(execution.scheduled_at, T0);
    assert_eq!(execution.run_after, T0 + 5 * SECOND);
    assert_eq!(execution.cron_tick, Some(T0));
    assert_eq!(execution.event_id.as_deref(), Some("event-1"));
    assert_eq!(execution.created_at, T0);
    assert_eq!(execution.started_at, None);
    assert_eq!(execution.node_id, None);
    assert!(!execution.cancel_requested);
    assert_eq!(store.get_execution("missing").await.unwrap(), None);
}

async fn manual_runs_take_the_jobs_names_and_stored_input_unless_given_one(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("m", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let job = job("sync", "m");
    store.insert_job(&job).await.unwrap();
    let runs = [
        ManualRun {
            id: new_id(),
            input: None,
        },
        ManualRun {
            id: new_id(),
            input: Some(r#"{"n":2}"#.to_owned()),
        },
    ];
    let created = store
        .enqueue_manual(&job.id, &runs, T0, None)
        .await
        .unwrap();
    assert_eq!(
        created,
        ManualOutcome::Created(vec![runs[0].id.clone(), runs[1].id.clone()])
    );
    for (run, input) in runs.iter().zip([json!({"n": 1}), json!({"n": 2})]) {
        let execution = store.get_execution(&run.id).await.unwrap().unwrap();
        assert_eq!(execution.status, ExecutionStatus::Queued);
        assert_eq!(execution.job_id, job.id);
        assert_eq!(execution.module, "m");
        assert_eq!(execution.job, "work");
        assert_eq!(execution.trigger, Trigger::Manual);
        assert_eq!(execution.attempt, 1);
        assert_eq!(execution.input, input);
        assert_eq!(
            (
                execution.scheduled_at,
                execution.run_after,
                execution.created_at
            ),
            (T0, T0, T0)
        );
    }
    // More runs than one statement holds: all of them, in the order given.
    let many: Vec<ManualRun> = (0..1_300)
        .map(|_| ManualRun {
            id: new_id(),
            input: None,
        })
        .collect();
    let created = store
        .enqueue_manual(&job.id, &many, T0, None)
        .await
        .unwrap();
    assert_eq!(
        created,
        ManualOutcome::Created(many.iter().map(|run| run.id.clone()).collect::<Vec<_>>())
    );
}

async fn manual_runs_of_a_job_that_cannot_run_queue_nothing(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("m", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let enabled = job("enabled", "m");
    let disabled = Job {
        enabled: false,
        ..job("disabled", "m")
    };
    let orphan = job("orphan", "gone");
    for job in [&enabled, &disabled, &orphan] {
        store.insert_job(job).await.unwrap();
    }
    let runs = |n: usize| -> Vec<ManualRun> {
        (0..n)
            .map(|_| ManualRun {
                id: new_id(),
                input: None,
            })
            .collect()
    };
    for (job_id, n) in [
        (disabled.id.as_str(), 1),
        (disabled.id.as_str(), 1_300),
        (orphan.id.as_str(), 1),
        ("missing", 1),
    ] {
        let batch = runs(n);
        assert_eq!(
            store
                .enqueue_manual(job_id, &batch, T0, None)
                .await
                .unwrap(),
            ManualOutcome::NotRunnable
        );
        assert_eq!(store.get_execution(&batch[0].id).await.unwrap(), None);
    }
    store
        .set_module_status("m", ModuleStatus::Disabled, T0)
        .await
        .unwrap();
    let batch = runs(1_300);
    assert_eq!(
        store
            .enqueue_manual(&enabled.id, &batch, T0, None)
            .await
            .unwrap(),
        ManualOutcome::NotRunnable
    );
    for run in [&batch[0], &batch[1_299]] {
        assert_eq!(store.get_execution(&run.id).await.unwrap(), None);
    }
}

async fn manual_runs_started_on_a_node_run_there_alone_under_its_lease(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("m", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let job = job("sync", "m");
    store.insert_job(&job).await.unwrap();
    let runs = [
        ManualRun {
            id: new_id(),
            input: None,
        },
        ManualRun {
            id: new_id(),
            input: Some(r#"{"n":2}"#.to_owned()),
        },
    ];
    let lease_end = T0 + 30 * SECOND;
    let started = store
        .start_manual(&job.id, &runs, T0, "node-a", lease_end, None)
        .await
        .unwrap()
        .created()
        .expect("the job can run");
    let revision = started[0].job_revision;
    assert!(revision.is_some(), "{started:?}");
    assert_eq!(
        started,
        runs.iter()
            .zip([r#"{"n":1}"#, r#"{"n":2}"#])
            .map(|(run, input)| ClaimedExecution {
                id: run.id.clone(),
                job_id: job.id.clone(),
                module: job.module.clone(),
                job: job.job.clone(),
                attempt: 1,
                trigger: Trigger::Manual,
                retry_of: None,
                input: input.to_owned(),
                scheduled_at: T0,
                run_after: T0,
                job_revision: revision,
            })
            .collect::<Vec<_>>()
    );
    let ids: Vec<String> = runs.iter().map(|run| run.id.clone()).collect();
    for id in &ids {
        let execution = store.get_execution(id).await.unwrap().unwrap();
        assert_eq!(execution.status, ExecutionStatus::Running);
        assert_eq!(execution.node_id.as_deref(), Some("node-a"));
        assert_eq!(execution.started_at, Some(T0));
        assert_eq!(execution.created_at, T0);
    }
    // Never queued: a delivery of the same ids to another node claims nothing, and the
    // reconciler finds nothing to offer.
    assert!(
        store
            .claim_executions(&ids, "node-b", T0 + SECOND, lease_end + SECOND)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .due_queued_executions(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // The lease is node-a's: renewed by it alone, and once run out, found expired.
    store
        .renew_leases(&ids[1..], "node-a", lease_end + 10 * SECOND)
        .await
        .unwrap();
    let expired = store.expired_executions(lease_end + 1, 10).await.unwrap();
    assert_eq!(
        expired.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids[..1]
    );
    assert_eq!(
        store
            .record_results(&[completed(&ids[1], Vec::new())], &[])
            .await
            .unwrap(),
        ids[1..]
    );
    // A job that cannot run starts nothing.
    store
        .set_module_status("m", ModuleStatus::Disabled, T0)
        .await
        .unwrap();
    let refused = [ManualRun {
        id: new_id(),
        input: None,
    }];
    assert_eq!(
        store
            .start_manual(&job.id, &refused, T0, "node-a", lease_end, None)
            .await
            .unwrap(),
        ManualOutcome::NotRunnable
    );
    assert_eq!(store.get_execution(&refused[0].id).await.unwrap(), None);
}

// ---- large inputs, stored once; idempotency keys -------------------------------------

/// About `kib` KiB of JSON, far over the inline limit, different for each `tag`.
fn large_input(tag: &str, kib: usize) -> serde_json::Value {
    json!({"tag": tag, "blob": "x".repeat(kib * 1024)})
}

fn fresh_runs(n: usize) -> Vec<ManualRun> {
    (0..n)
        .map(|_| ManualRun {
            id: new_id(),
            input: None,
        })
        .collect()
}

fn run_ids(runs: &[ManualRun]) -> Vec<String> {
    runs.iter().map(|run| run.id.clone()).collect()
}

async fn install_m(store: &dyn Store) {
    store
        .install_module_version(
            &manifest("m", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
}

/// Asserts that each execution read has the input `expected` says for its id.
fn assert_inputs<'a>(
    read: impl IntoIterator<Item = (&'a str, serde_json::Value)>,
    expected: &std::collections::HashMap<String, serde_json::Value>,
) {
    let mut checked = 0;
    for (id, input) in read {
        let want = expected
            .get(id)
            .unwrap_or_else(|| panic!("unexpected {id}"));
        assert!(&input == want, "execution {id} read back another input");
        checked += 1;
    }
    assert!(checked > 0, "nothing was read");
}

async fn large_inputs_are_stored_once_and_read_back_whole(store: &dyn Store) {
    install_m(store).await;
    let stored = large_input("stored", 16);
    let mut job = Job {
        input: stored.clone(),
        ..job("big", "m")
    };
    store.insert_job(&job).await.unwrap();
    let own = large_input("own", 16);
    let small = json!({"n": 7});
    // More runs with the stored input than one statement holds, two with one large
    // input of their own, and one with a small input.
    let mut runs = fresh_runs(600);
    for input in [&own, &own, &small] {
        runs.push(ManualRun {
            id: new_id(),
            input: Some(input.to_string()),
        });
    }
    let mut expected: std::collections::HashMap<String, serde_json::Value> = runs
        .iter()
        .map(|run| {
            let input = run
                .input
                .as_deref()
                .map_or(stored.clone(), |text| serde_json::from_str(text).unwrap());
            (run.id.clone(), input)
        })
        .collect();
    let queued = store
        .enqueue_manual(&job.id, &runs, T0, None)
        .await
        .unwrap();
    assert_eq!(queued, ManualOutcome::Created(run_ids(&runs)));
    // Started at once: the claim's answer carries the whole input.
    let started_input = large_input("started", 16);
    let started_runs = [
        ManualRun {
            id: new_id(),
            input: None,
        },
        ManualRun {
            id: new_id(),
            input: Some(started_input.to_string()),
        },
    ];
    let started = store
        .start_manual(&job.id, &started_runs, T0, "node-a", T0 + 30 * SECOND, None)
        .await
        .unwrap()
        .created()
        .expect("the job can run");
    assert_eq!(started[0].input, stored.to_string());
    assert_eq!(started[1].input, started_input.to_string());
    expected.insert(started_runs[0].id.clone(), stored.clone());
    expected.insert(started_runs[1].id.clone(), started_input.clone());

    // Every way an execution is read gives its whole input.
    for run in [&runs[0], &runs[599], &runs[600], &runs[601], &runs[602]] {
        let execution = store.get_execution(&run.id).await.unwrap().unwrap();
        assert_inputs([(run.id.as_str(), execution.input)], &expected);
    }
    let filter = ExecutionFilter {
        job_id: Some(job.id.clone()),
        status: None,
    };
    let page = store.list_executions(&filter, None, 500).await.unwrap();
    assert_eq!(page.items.len(), 500);
    assert_inputs(
        page.items.iter().map(|e| (e.id.as_str(), e.input.clone())),
        &expected,
    );
    let claimed = store
        .claim_executions(&run_ids(&runs), "node-b", T0, T0 + 30 * SECOND)
        .await
        .unwrap();
    assert_eq!(claimed.len(), runs.len());
    assert_inputs(
        claimed
            .iter()
            .map(|c| (c.id.as_str(), serde_json::from_str(&c.input).unwrap())),
        &expected,
    );
    let held = store.executions_held_by("node-a", 10).await.unwrap();
    assert_eq!(held.len(), 2);
    assert_inputs(
        held.iter().map(|e| (e.id.as_str(), e.input.clone())),
        &expected,
    );
    let expired = store
        .expired_executions(T0 + 31 * SECOND, 1_000)
        .await
        .unwrap();
    assert_eq!(expired.len(), runs.len() + 2);
    assert_inputs(
        expired.iter().map(|e| (e.id.as_str(), e.input.clone())),
        &expected,
    );

    // Retries (by the reconciler, by a worker) and cron runs with large inputs.
    store
        .mark_handlers_began(std::slice::from_ref(&started[1].id))
        .await
        .unwrap();
    let settled_retry = NewExecution {
        trigger: Trigger::Retry,
        attempt: 2,
        retry_of: Some(started[1].id.clone()),
        input: started_input.to_string(),
        ..manual(&job.id, T0 + 40 * SECOND)
    };
    assert_eq!(
        store
            .settle_expired_execution(
                &started[1].id,
                Millis::MAX,
                T0 + 45 * SECOND,
                "lost",
                Some(&settled_retry),
            )
            .await
            .unwrap(),
        Settled::Failed
    );
    let recorded_retry = Retry {
        failed: runs[600].id.clone(),
        next: NewExecution {
            trigger: Trigger::Retry,
            attempt: 2,
            retry_of: Some(runs[600].id.clone()),
            input: own.to_string(),
            ..manual(&job.id, T0 + 5 * SECOND)
        },
    };
    let failed = ExecutionResult {
        status: ExecutionStatus::Failed,
        result: None,
        error: Some("boom".to_owned()),
        ..completed(&runs[600].id, Vec::new())
    };
    store
        .record_results(&[failed], std::slice::from_ref(&recorded_retry))
        .await
        .unwrap();
    let ticks: Vec<NewExecution> = (1..=3)
        .map(|n| NewExecution {
            input: stored.to_string(),
            ..cron(&job.id, T0 + n * 60 * SECOND)
        })
        .collect();
    assert_eq!(store.enqueue_executions(&ticks).await.unwrap().len(), 3);
    expected.insert(settled_retry.id.clone(), started_input.clone());
    expected.insert(recorded_retry.next.id.clone(), own.clone());
    for tick in &ticks {
        expected.insert(tick.id.clone(), stored.clone());
    }
    for id in [&settled_retry.id, &recorded_retry.next.id, &ticks[2].id] {
        let execution = store.get_execution(id).await.unwrap().unwrap();
        assert_inputs([(id.as_str(), execution.input)], &expected);
    }

    // Each large input is stored once; rows hold only the small one.
    let counts = store.storage_counts().await.unwrap();
    assert_eq!(counts.stored_inputs, 3, "{counts:?}");
    let large_bytes: usize = [&stored, &own, &started_input]
        .iter()
        .map(|input| input.to_string().len())
        .sum();
    assert_eq!(counts.stored_input_bytes, large_bytes as i64, "{counts:?}");
    assert_eq!(
        counts.inline_input_bytes,
        small.to_string().len() as i64,
        "{counts:?}"
    );

    // A job's new large input is stored once too; earlier runs keep theirs.
    let changed = large_input("changed", 16);
    job.input = changed.clone();
    job.updated_at = T0 + SECOND;
    assert!(store.update_job(&job).await.unwrap());
    let later = fresh_runs(2);
    store
        .enqueue_manual(&job.id, &later, T0 + SECOND, None)
        .await
        .unwrap();
    for (id, input) in [(&later[1].id, &changed), (&runs[0].id, &stored)] {
        assert_eq!(
            &store.get_execution(id).await.unwrap().unwrap().input,
            input
        );
    }
    assert_eq!(store.storage_counts().await.unwrap().stored_inputs, 4);
    // A small input is copied into rows again.
    job.input = json!({"n": 1});
    assert!(store.update_job(&job).await.unwrap());
    let small_runs = fresh_runs(1);
    store
        .enqueue_manual(&job.id, &small_runs, T0 + SECOND, None)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_execution(&small_runs[0].id)
            .await
            .unwrap()
            .unwrap()
            .input,
        json!({"n": 1})
    );
    assert_eq!(
        store.storage_counts().await.unwrap().inline_input_bytes,
        (small.to_string().len() + json!({"n": 1}).to_string().len()) as i64
    );
}

async fn an_input_at_the_inline_limit_stays_in_its_row(store: &dyn Store) {
    install_m(store).await;
    let job = job("edge", "m");
    store.insert_job(&job).await.unwrap();
    // `"xx…x"`: the quotes count.
    let at_limit = serde_json::Value::String("x".repeat(INLINE_INPUT_MAX - 2));
    let over = serde_json::Value::String("x".repeat(INLINE_INPUT_MAX - 1));
    let runs: Vec<ManualRun> = [&at_limit, &over]
        .iter()
        .map(|input| ManualRun {
            id: new_id(),
            input: Some(input.to_string()),
        })
        .collect();
    store
        .enqueue_manual(&job.id, &runs, T0, None)
        .await
        .unwrap();
    let counts = store.storage_counts().await.unwrap();
    assert_eq!(counts.inline_input_bytes, INLINE_INPUT_MAX as i64);
    assert_eq!(counts.stored_input_bytes, INLINE_INPUT_MAX as i64 + 1);
    for (run, input) in runs.iter().zip([&at_limit, &over]) {
        assert_eq!(
            &store.get_execution(&run.id).await.unwrap().unwrap().input,
            input
        );
    }
}

fn key(key: &str, fingerprint: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: key.to_owned(),
        fingerprint: fingerprint.to_owned(),
        expires_at: T0 + 24 * 3_600 * SECOND,
    }
}

async fn executions_of(store: &dyn Store, job_id: &str) -> usize {
    let filter = ExecutionFilter {
        job_id: Some(job_id.to_owned()),
        status: None,
    };
    store
        .list_executions(&filter, None, 500)
        .await
        .unwrap()
        .items
        .len()
}

async fn a_keyed_request_creates_its_runs_once_and_its_retries_get_them_back(store: &dyn Store) {
    install_m(store).await;
    let job = job("sync", "m");
    store.insert_job(&job).await.unwrap();
    let first = fresh_runs(3);
    let k1 = key("k-1", "ask-a");
    assert_eq!(
        store
            .enqueue_manual(&job.id, &first, T0, Some(&k1))
            .await
            .unwrap(),
        ManualOutcome::Created(run_ids(&first))
    );
    // A retry comes with run ids of its own; it creates nothing and gets the first
    // request's ids, as they were answered, whichever way it would have created them.
    let earlier = ManualOutcome::Replayed(EarlierRuns {
        ids: run_ids(&first),
        status: ExecutionStatus::Queued,
    });
    let retry = fresh_runs(3);
    assert_eq!(
        store
            .enqueue_manual(&job.id, &retry, T0 + SECOND, Some(&k1))
            .await
            .unwrap(),
        earlier
    );
    let started = store
        .start_manual(
            &job.id,
            &retry,
            T0 + SECOND,
            "node-a",
            T0 + 30 * SECOND,
            Some(&k1),
        )
        .await
        .unwrap();
    assert_eq!(
        started.try_map(|_| Ok::<_, ()>(())).unwrap(),
        ManualOutcome::Replayed(EarlierRuns {
            ids: run_ids(&first),
            status: ExecutionStatus::Queued,
        })
    );
    assert_eq!(store.get_execution(&retry[0].id).await.unwrap(), None);
    assert_eq!(executions_of(store, &job.id).await, 3);
    // The same key asking something else is refused, and creates nothing.
    let other = fresh_runs(1);
    assert_eq!(
        store
            .enqueue_manual(&job.id, &other, T0 + SECOND, Some(&key("k-1", "ask-b")))
            .await
            .unwrap(),
        ManualOutcome::KeyReused
    );
    assert_eq!(executions_of(store, &job.id).await, 3);

    // Runs started at once are replayed as started.
    let k2 = key("k-2", "ask-a");
    let begun = fresh_runs(2);
    assert!(
        store
            .start_manual(&job.id, &begun, T0, "node-a", T0 + 30 * SECOND, Some(&k2))
            .await
            .unwrap()
            .created()
            .is_some()
    );
    assert_eq!(
        store
            .enqueue_manual(&job.id, &fresh_runs(2), T0 + SECOND, Some(&k2))
            .await
            .unwrap(),
        ManualOutcome::Replayed(EarlierRuns {
            ids: run_ids(&begun),
            status: ExecutionStatus::Running,
        })
    );
    assert_eq!(executions_of(store, &job.id).await, 5);

    // A request that creates nothing (its job cannot run) does not take its key; a
    // replay does not care that the job cannot run now.
    store
        .set_module_status("m", ModuleStatus::Disabled, T0)
        .await
        .unwrap();
    let k3 = key("k-3", "ask-c");
    assert_eq!(
        store
            .enqueue_manual(&job.id, &fresh_runs(1), T0 + SECOND, Some(&k3))
            .await
            .unwrap(),
        ManualOutcome::NotRunnable
    );
    assert_eq!(
        store
            .enqueue_manual(&job.id, &fresh_runs(3), T0 + SECOND, Some(&k1))
            .await
            .unwrap(),
        earlier
    );
    store
        .set_module_status("m", ModuleStatus::Enabled, T0)
        .await
        .unwrap();
    let third = fresh_runs(1);
    assert_eq!(
        store
            .enqueue_manual(&job.id, &third, T0 + 2 * SECOND, Some(&k3))
            .await
            .unwrap(),
        ManualOutcome::Created(run_ids(&third))
    );

    // Once expired, a key is free for any request.
    let reused = IdempotencyKey {
        expires_at: k1.expires_at + k1.expires_at - T0,
        ..key("k-1", "ask-b")
    };
    let fourth = fresh_runs(2);
    assert_eq!(
        store
            .enqueue_manual(&job.id, &fourth, k1.expires_at, Some(&reused))
            .await
            .unwrap(),
        ManualOutcome::Created(run_ids(&fourth))
    );
    assert_eq!(
        store
            .enqueue_manual(&job.id, &fresh_runs(2), k1.expires_at + 1, Some(&reused))
            .await
            .unwrap(),
        ManualOutcome::Replayed(EarlierRuns {
            ids: run_ids(&fourth),
            status: ExecutionStatus::Queued,
        })
    );
    assert_eq!(executions_of(store, &job.id).await, 8);
}

async fn concurrent_requests_under_one_key_create_one_batch(store: &dyn Store) {
    install_m(store).await;
    let job = job("sync", "m");
    store.insert_job(&job).await.unwrap();
    let k = key("k", "ask");
    let attempts: Vec<Vec<ManualRun>> = (0..8).map(|_| fresh_runs(50)).collect();
    let outcomes = futures_util::future::join_all(attempts.iter().enumerate().map(|(n, runs)| {
        let k = &k;
        let job_id = job.id.as_str();
        async move {
            // Half would start their runs at once, half would queue them.
            if n % 2 == 0 {
                store
                    .enqueue_manual(job_id, runs, T0, Some(k))
                    .await
                    .unwrap()
            } else {
                store
                    .start_manual(job_id, runs, T0, "node-a", T0 + 30 * SECOND, Some(k))
                    .await
                    .unwrap()
                    .try_map(|started| Ok::<_, ()>(started.into_iter().map(|run| run.id).collect()))
                    .unwrap()
            }
        }
    }))
    .await;
    let created: Vec<&Vec<String>> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            ManualOutcome::Created(ids) => Some(ids),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{outcomes:?}");
    let winner = created[0];
    assert_eq!(winner.len(), 50);
    for outcome in &outcomes {
        match outcome {
            ManualOutcome::Created(ids) => assert_eq!(ids, winner),
            ManualOutcome::Replayed(earlier) => assert_eq!(&earlier.ids, winner),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(executions_of(store, &job.id).await, 50);
    assert_eq!(store.storage_counts().await.unwrap().idempotency_keys, 1);
}

async fn expired_keys_are_deleted_a_few_at_a_time_by_later_keyed_requests(store: &dyn Store) {
    install_m(store).await;
    let job = job("sync", "m");
    store.insert_job(&job).await.unwrap();
    let old = EXPIRED_KEYS_PER_REQUEST + 8;
    for n in 0..old {
        let short = IdempotencyKey {
            expires_at: T0 + SECOND,
            ..key(&format!("old-{n}"), "ask")
        };
        store
            .enqueue_manual(&job.id, &fresh_runs(1), T0, Some(&short))
            .await
            .unwrap();
    }
    let keys = || async { store.storage_counts().await.unwrap().idempotency_keys };
    assert_eq!(keys().await, old);
    // Requests without a key leave keys alone.
    store
        .enqueue_manual(&job.id, &fresh_runs(1), T0 + 2 * SECOND, None)
        .await
        .unwrap();
    assert_eq!(keys().await, old);
    // Each keyed request takes its key and deletes a bounded batch of expired ones.
    store
        .enqueue_manual(
            &job.id,
            &fresh_runs(1),
            T0 + 2 * SECOND,
            Some(&key("new-1", "ask")),
        )
        .await
        .unwrap();
    assert_eq!(keys().await, old - EXPIRED_KEYS_PER_REQUEST + 1);
    store
        .enqueue_manual(
            &job.id,
            &fresh_runs(1),
            T0 + 2 * SECOND,
            Some(&key("new-2", "ask")),
        )
        .await
        .unwrap();
    assert_eq!(keys().await, 2, "only the unexpired keys are left");
}

async fn a_claim_tells_the_revision_of_each_job_which_grows_with_every_change(store: &dyn Store) {
    let mut job = job("sync", "m");
    store.insert_job(&job).await.unwrap();
    let claim_revision = |at: Millis| {
        let job_id = job.id.clone();
        async move {
            let execution = manual(&job_id, at);
            store
                .enqueue_executions(std::slice::from_ref(&execution))
                .await
                .unwrap();
            let claimed = store
                .claim_executions(
                    std::slice::from_ref(&execution.id),
                    "node-a",
                    at,
                    at + SECOND,
                )
                .await
                .unwrap();
            claimed[0].job_revision
        }
    };
    let first = claim_revision(T0).await.expect("the job exists");
    assert_eq!(claim_revision(T0).await, Some(first));
    // Advancing its schedule is not a change of definition.
    store
        .set_job_next_run(&job.id, Some(T0 + 60 * SECOND))
        .await
        .unwrap();
    assert_eq!(claim_revision(T0).await, Some(first));
    job.timeout_ms = Some(1_000);
    assert!(store.update_job(&job).await.unwrap());
    let second = claim_revision(T0).await.expect("the job exists");
    assert!(second > first, "{second} after {first}");
    assert!(store.update_job(&job).await.unwrap());
    assert!(claim_revision(T0).await.expect("the job exists") > second);
    assert!(store.delete_job(&job.id).await.unwrap());
    assert_eq!(claim_revision(T0).await, None);
}

async fn a_cron_tick_fires_once(store: &dyn Store) {
    let first = cron("job-1", T0);
    let created = store
        .enqueue_executions(std::slice::from_ref(&first))
        .await
        .unwrap();
    assert_eq!(created, [first.id.as_str()]);
    // Another scheduler, later, fires the same tick, plus the next one.
    let again = [cron("job-1", T0), cron("job-1", T0 + 60 * SECOND)];
    let created = store.enqueue_executions(&again).await.unwrap();
    assert_eq!(created, [again[1].id.as_str()]);
    // The same tick of another job is another execution.
    let other = cron("job-2", T0);
    assert_eq!(
        store
            .enqueue_executions(std::slice::from_ref(&other))
            .await
            .unwrap(),
        [other.id.as_str()]
    );
}

async fn a_tick_repeated_within_one_batch_is_created_once(store: &dyn Store) {
    let batch = [cron("job-1", T0), cron("job-1", T0), manual("job-1", T0)];
    let created = store.enqueue_executions(&batch).await.unwrap();
    assert_eq!(created, [batch[0].id.clone(), batch[2].id.clone()]);
    let page = store
        .list_executions(&ExecutionFilter::default(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
}

async fn two_schedulers_firing_one_tick_at_once_create_one_execution(store: &dyn Store) {
    let ticks: Vec<Millis> = (0..50).map(|n| T0 + n * 60 * SECOND).collect();
    let a: Vec<NewExecution> = ticks.iter().map(|&t| cron("job-1", t)).collect();
    let b: Vec<NewExecution> = ticks.iter().rev().map(|&t| cron("job-1", t)).collect();
    let (from_a, from_b) = tokio::join!(store.enqueue_executions(&a), store.enqueue_executions(&b));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    assert_eq!(from_a.len() + from_b.len(), ticks.len());
    let page = store
        .list_executions(&ExecutionFilter::default(), None, 1_000)
        .await
        .unwrap();
    let fired: HashSet<Millis> = page.items.iter().filter_map(|e| e.cron_tick).collect();
    assert_eq!(page.items.len(), ticks.len());
    assert_eq!(fired.len(), ticks.len());
}

async fn enqueueing_the_same_execution_twice_creates_it_once(store: &dyn Store) {
    let execution = manual("job-1", T0);
    let batch = std::slice::from_ref(&execution);
    assert_eq!(store.enqueue_executions(batch).await.unwrap().len(), 1);
    assert!(store.enqueue_executions(batch).await.unwrap().is_empty());
    assert!(store.enqueue_executions(&[]).await.unwrap().is_empty());
}

async fn a_claim_takes_only_queued_due_executions_and_only_once(store: &dyn Store) {
    let due = manual("job-1", T0);
    let later = NewExecution {
        run_after: T0 + 60 * SECOND,
        ..manual("job-1", T0)
    };
    let cancelled = manual("job-1", T0);
    store
        .enqueue_executions(&[due.clone(), later.clone(), cancelled.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.cancel_execution(&cancelled.id, T0).await.unwrap(),
        CancelEffect::CancelledQueued
    );
    let wanted = [
        due.id.clone(),
        later.id.clone(),
        cancelled.id.clone(),
        "missing".to_owned(),
    ];

    let claimed = store
        .claim_executions(&wanted, "node-a", T0, T0 + 30 * SECOND)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let claim = &claimed[0];
    assert_eq!(claim.id, due.id);
    assert_eq!(claim.job_id, "job-1");
    assert_eq!(claim.attempt, 1);
    assert_eq!(claim.trigger, Trigger::Manual);
    assert_eq!(claim.retry_of, None);
    assert_eq!(claim.input, due.input);
    assert_eq!(claim.scheduled_at, T0);

    let execution = store.get_execution(&due.id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Running);
    assert_eq!(execution.node_id.as_deref(), Some("node-a"));
    assert_eq!(execution.started_at, Some(T0));

    // A duplicate delivery, to this node or another, finds nothing to run.
    let again = store
        .claim_executions(&wanted, "node-b", T0 + SECOND, T0 + 30 * SECOND)
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(status_of(store, &later.id).await, ExecutionStatus::Queued);
    assert_eq!(
        status_of(store, &cancelled.id).await,
        ExecutionStatus::Cancelled
    );
}

async fn results_are_recorded_once_with_their_logs(store: &dyn Store) {
    let id = running(store, "job-1").await;
    let result = completed(&id, vec![log(0, "start"), log(1, "done")]);
    assert_eq!(
        store
            .record_results(std::slice::from_ref(&result), &[])
            .await
            .unwrap(),
        [id.as_str()]
    );
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Completed);
    assert_eq!(execution.result, Some(serde_json::json!({"ok": true})));
    assert_eq!(execution.finished_at, Some(T0 + 2 * SECOND));
    assert_eq!(execution.duration_ms, Some(12.5));
    assert_eq!(execution.fuel_consumed, Some(1_234));
    assert_eq!(execution.memory_peak_bytes, Some(65_536));
    assert_eq!(execution.cpu_time_ms, Some(3.25));
    assert_eq!(
        store.execution_logs(&id, None, 100).await.unwrap(),
        result.logs
    );

    // A late duplicate (a redelivered run) changes nothing and adds no log line.
    let late = ExecutionResult {
        status: ExecutionStatus::Failed,
        result: None,
        error: Some("late".to_owned()),
        error_kind: Some("TRAP".to_owned()),
        logs: vec![log(0, "late"), log(1, "late"), log(2, "late")],
        ..completed(&id, Vec::new())
    };
    assert!(store.record_results(&[late], &[]).await.unwrap().is_empty());
    assert_eq!(store.get_execution(&id).await.unwrap().unwrap(), execution);
    assert_eq!(store.execution_logs(&id, None, 100).await.unwrap().len(), 2);
}

async fn a_result_for_an_execution_never_claimed_is_ignored(store: &dyn Store) {
    let queued = manual("job-1", T0);
    store
        .enqueue_executions(std::slice::from_ref(&queued))
        .await
        .unwrap();
    let running = running(store, "job-1").await;
    let recorded = store
        .record_results(
            &[
                completed(&queued.id, vec![log(0, "nope")]),
                completed(&running, Vec::new()),
                completed("missing", vec![log(0, "nope")]),
            ],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(recorded, [running]);
    assert_eq!(status_of(store, &queued.id).await, ExecutionStatus::Queued);
    assert!(
        store
            .execution_logs(&queued.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .execution_logs("missing", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn two_results_for_one_execution_in_one_batch_record_the_first(store: &dyn Store) {
    let id = running(store, "job-1").await;
    let first = completed(&id, vec![log(0, "first")]);
    let second = ExecutionResult {
        status: ExecutionStatus::Failed,
        logs: vec![log(0, "second")],
        ..completed(&id, Vec::new())
    };
    assert_eq!(
        store.record_results(&[first, second], &[]).await.unwrap(),
        [id.as_str()]
    );
    assert_eq!(status_of(store, &id).await, ExecutionStatus::Completed);
    let logs = store.execution_logs(&id, None, 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].message, "first");
}

async fn logs_are_read_in_order_after_a_position(store: &dyn Store) {
    let id = running(store, "job-1").await;
    let logs: Vec<LogEntry> = (0..10).map(|n| log(n, &format!("line {n}"))).collect();
    store
        .record_results(&[completed(&id, logs.clone())], &[])
        .await
        .unwrap();
    assert_eq!(store.execution_logs(&id, None, 3).await.unwrap(), logs[..3]);
    assert_eq!(
        store.execution_logs(&id, Some(2), 3).await.unwrap(),
        logs[3..6]
    );
    assert_eq!(
        store.execution_logs(&id, Some(8), 100).await.unwrap(),
        logs[9..]
    );
    assert!(
        store
            .execution_logs(&id, Some(9), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn cancelling_a_queued_execution_ends_it_before_it_starts(store: &dyn Store) {
    let queued = manual("job-1", T0);
    store
        .enqueue_executions(std::slice::from_ref(&queued))
        .await
        .unwrap();
    assert_eq!(
        store
            .cancel_execution(&queued.id, T0 + SECOND)
            .await
            .unwrap(),
        CancelEffect::CancelledQueued
    );
    let execution = store.get_execution(&queued.id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Cancelled);
    assert_eq!(execution.finished_at, Some(T0 + SECOND));
    assert_eq!(execution.error_kind.as_deref(), Some("CANCELLED"));
    assert_eq!(
        store.due_queued_executions(Millis::MAX, 10).await.unwrap(),
        Vec::<String>::new()
    );
}

async fn cancelling_a_running_execution_flags_it_for_its_worker(store: &dyn Store) {
    let flagged = running(store, "job-1").await;
    let untouched = running(store, "job-1").await;
    assert_eq!(
        store.cancel_execution(&flagged, T0 + SECOND).await.unwrap(),
        CancelEffect::FlaggedRunning
    );
    let execution = store.get_execution(&flagged).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Running);
    assert!(execution.cancel_requested);
    assert_eq!(
        store
            .cancel_requested(&[flagged.clone(), untouched, "missing".to_owned()])
            .await
            .unwrap(),
        [flagged.as_str()]
    );
    // Once it has ended, it is no longer asked to stop.
    let cancelled = ExecutionResult {
        status: ExecutionStatus::Cancelled,
        ..completed(&flagged, Vec::new())
    };
    store.record_results(&[cancelled], &[]).await.unwrap();
    assert!(store.cancel_requested(&[flagged]).await.unwrap().is_empty());
}

async fn cancelling_an_ended_or_unknown_execution_changes_nothing(store: &dyn Store) {
    let id = running(store, "job-1").await;
    store
        .record_results(&[completed(&id, Vec::new())], &[])
        .await
        .unwrap();
    let before = store.get_execution(&id).await.unwrap();
    assert_eq!(
        store.cancel_execution(&id, T0 + SECOND).await.unwrap(),
        CancelEffect::AlreadyFinal(ExecutionStatus::Completed)
    );
    assert_eq!(store.get_execution(&id).await.unwrap(), before);
    assert_eq!(
        store.cancel_execution("missing", T0).await.unwrap(),
        CancelEffect::NotFound
    );
}

async fn a_requeued_execution_can_be_claimed_again(store: &dyn Store) {
    let id = running(store, "job-1").await;
    store
        .requeue_executions(std::slice::from_ref(&id))
        .await
        .unwrap();
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Queued);
    assert_eq!(execution.node_id, None);
    assert_eq!(execution.started_at, None);
    assert!(
        store
            .expired_executions(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty(),
        "a queued row holds no lease"
    );
    let claimed = store
        .claim_executions(
            std::slice::from_ref(&id),
            "node-b",
            T0 + SECOND,
            T0 + 31 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.node_id.as_deref(), Some("node-b"));
    assert_eq!(execution.started_at, Some(T0 + SECOND));
}

async fn a_requeued_execution_that_was_asked_to_stop_ends_cancelled(store: &dyn Store) {
    let id = running(store, "job-1").await;
    store.cancel_execution(&id, T0).await.unwrap();
    store
        .requeue_executions(std::slice::from_ref(&id))
        .await
        .unwrap();
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Cancelled);
    assert!(execution.finished_at.is_some());
    assert!(
        store
            .due_queued_executions(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn requeueing_leaves_ended_executions_alone(store: &dyn Store) {
    let id = running(store, "job-1").await;
    store
        .record_results(&[completed(&id, Vec::new())], &[])
        .await
        .unwrap();
    store
        .requeue_executions(std::slice::from_ref(&id))
        .await
        .unwrap();
    assert_eq!(status_of(store, &id).await, ExecutionStatus::Completed);
}

/// A running execution whose handler began (as its worker records).
async fn begun(store: &dyn Store, job_id: &str) -> String {
    let id = running(store, job_id).await;
    store
        .mark_handlers_began(std::slice::from_ref(&id))
        .await
        .unwrap();
    id
}

async fn settle(store: &dyn Store, id: &str, expired_before: Millis) -> Settled {
    store
        .settle_expired_execution(id, expired_before, T0 + 45 * SECOND, "lost", None)
        .await
        .unwrap()
}

async fn an_expired_lease_of_a_begun_run_is_found_and_failed_once(store: &dyn Store) {
    let id = begun(store, "job-1").await; // lease until T0 + 30 s
    let lease_end = T0 + 30 * SECOND;
    assert!(
        store
            .expired_executions(lease_end, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(settle(store, &id, lease_end).await, Settled::NotExpired);

    let expired = store.expired_executions(lease_end + 1, 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, id);
    let settled = store
        .settle_expired_execution(
            &id,
            lease_end + 1,
            T0 + 31 * SECOND,
            "node-a stopped renewing its lease",
            None,
        )
        .await
        .unwrap();
    assert_eq!(settled, Settled::Failed);
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Failed);
    assert_eq!(execution.error_kind.as_deref(), Some("LEASE_EXPIRED"));
    assert_eq!(
        execution.error.as_deref(),
        Some("node-a stopped renewing its lease")
    );
    // The time it was settled, not the horizon it was judged against.
    assert_eq!(execution.finished_at, Some(T0 + 31 * SECOND));
    assert_eq!(settle(store, &id, Millis::MAX).await, Settled::NotExpired);
    assert!(
        store
            .expired_executions(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn an_expired_run_whose_handler_never_began_goes_back_to_the_queue(store: &dyn Store) {
    let id = running(store, "job-1").await; // claimed by node-a, never began
    let retry = NewExecution {
        attempt: 2,
        ..manual("job-1", T0 + 40 * SECOND)
    };
    let settled = store
        .settle_expired_execution(&id, Millis::MAX, T0 + 45 * SECOND, "lost", Some(&retry))
        .await
        .unwrap();
    assert_eq!(settled, Settled::Requeued);
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Queued);
    assert_eq!(execution.attempt, 1, "the same attempt: it never ran");
    assert_eq!(execution.node_id, None);
    assert_eq!(execution.started_at, None);
    assert_eq!(execution.error, None);
    assert!(
        store.get_execution(&retry.id).await.unwrap().is_none(),
        "no next attempt for a run that never began"
    );
    assert_eq!(
        store.due_queued_executions(Millis::MAX, 10).await.unwrap(),
        vec![id.clone()]
    );
    // Claimable again, by any node.
    let claimed = store
        .claim_executions(
            std::slice::from_ref(&id),
            "node-b",
            T0 + 50 * SECOND,
            T0 + 80 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].attempt, 1);
}

async fn an_expired_run_that_never_began_and_was_cancelled_ends_cancelled(store: &dyn Store) {
    let id = running(store, "job-1").await;
    store.cancel_execution(&id, T0 + SECOND).await.unwrap();
    assert_eq!(settle(store, &id, Millis::MAX).await, Settled::Cancelled);
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Cancelled);
    assert_eq!(execution.finished_at, Some(T0 + 45 * SECOND));
    assert!(
        store
            .due_queued_executions(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn marking_handlers_began_leaves_ended_executions_alone(store: &dyn Store) {
    let id = running(store, "job-1").await;
    store
        .record_results(&[completed(&id, Vec::new())], &[])
        .await
        .unwrap();
    store
        .mark_handlers_began(std::slice::from_ref(&id))
        .await
        .unwrap();
    assert_eq!(status_of(store, &id).await, ExecutionStatus::Completed);
    assert_eq!(settle(store, &id, Millis::MAX).await, Settled::NotExpired);
}

async fn a_lease_expiry_and_its_retry_commit_together(store: &dyn Store) {
    let id = begun(store, "job-1").await;
    let retry = NewExecution {
        trigger: Trigger::Retry,
        attempt: 2,
        retry_of: Some(id.clone()),
        ..manual("job-1", T0 + 40 * SECOND)
    };
    // A crash between the failure and its retry: neither is written.
    failpoints::arm("settle_expired_execution.before_retry", &id);
    let crashed = store
        .settle_expired_execution(&id, Millis::MAX, T0 + 45 * SECOND, "lost", Some(&retry))
        .await;
    failpoints::disarm("settle_expired_execution.before_retry", &id);
    assert!(crashed.is_err());
    assert_eq!(status_of(store, &id).await, ExecutionStatus::Running);
    assert!(store.get_execution(&retry.id).await.unwrap().is_none());
    // The next pass settles both.
    let settled = store
        .settle_expired_execution(&id, Millis::MAX, T0 + 45 * SECOND, "lost", Some(&retry))
        .await
        .unwrap();
    assert_eq!(settled, Settled::Failed);
    assert_eq!(status_of(store, &id).await, ExecutionStatus::Failed);
    let next = store.get_execution(&retry.id).await.unwrap().unwrap();
    assert_eq!(next.status, ExecutionStatus::Queued);
    assert_eq!(next.attempt, 2);
    assert_eq!(next.retry_of.as_deref(), Some(id.as_str()));
}

async fn a_recorded_failure_and_its_retry_commit_together(store: &dyn Store) {
    let failing = running(store, "job-1").await;
    let other = running(store, "job-1").await;
    let failed = ExecutionResult {
        status: ExecutionStatus::Failed,
        result: None,
        error: Some("boom".to_owned()),
        error_kind: Some("TRANSIENT".to_owned()),
        ..completed(&failing, vec![log(0, "about to fail")])
    };
    let retry = Retry {
        failed: failing.clone(),
        next: NewExecution {
            trigger: Trigger::Retry,
            attempt: 2,
            retry_of: Some(failing.clone()),
            ..manual("job-1", T0 + 5 * SECOND)
        },
    };
    let results = [failed, completed(&other, Vec::new())];
    // A crash between recording the batch and creating the retry: nothing of the
    // batch is written, so it is recorded whole when the worker tries again.
    failpoints::arm("record_results.before_retries", &failing);
    let crashed = store
        .record_results(&results, std::slice::from_ref(&retry))
        .await;
    failpoints::disarm("record_results.before_retries", &failing);
    assert!(crashed.is_err());
    assert_eq!(status_of(store, &failing).await, ExecutionStatus::Running);
    assert_eq!(status_of(store, &other).await, ExecutionStatus::Running);
    assert!(store.get_execution(&retry.next.id).await.unwrap().is_none());
    assert!(
        store
            .execution_logs(&failing, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let recorded = store
        .record_results(&results, std::slice::from_ref(&retry))
        .await
        .unwrap();
    assert_eq!(recorded, vec![failing.clone(), other.clone()]);
    assert_eq!(status_of(store, &failing).await, ExecutionStatus::Failed);
    let next = store.get_execution(&retry.next.id).await.unwrap().unwrap();
    assert_eq!(next.status, ExecutionStatus::Queued);
    assert_eq!(next.attempt, 2);

    // A late duplicate of the failure creates no second retry.
    let again = Retry {
        failed: failing.clone(),
        next: NewExecution {
            trigger: Trigger::Retry,
            attempt: 2,
            retry_of: Some(failing.clone()),
            ..manual("job-1", T0 + 6 * SECOND)
        },
    };
    assert!(
        store
            .record_results(&results[..1], std::slice::from_ref(&again))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_execution(&again.next.id).await.unwrap().is_none());
}

async fn a_renewed_lease_does_not_expire(store: &dyn Store) {
    let id = running(store, "job-1").await; // lease until T0 + 30 s, held by node-a
    let ids = std::slice::from_ref(&id);
    store
        .renew_leases(ids, "node-b", T0 + 90 * SECOND)
        .await
        .unwrap();
    assert_eq!(
        store
            .expired_executions(T0 + 60 * SECOND, 10)
            .await
            .unwrap()
            .len(),
        1,
        "only the holder renews"
    );
    store
        .renew_leases(ids, "node-a", T0 + 90 * SECOND)
        .await
        .unwrap();
    assert!(
        store
            .expired_executions(T0 + 60 * SECOND, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        settle(store, &id, T0 + 60 * SECOND).await,
        Settled::NotExpired
    );
}

async fn executions_list_newest_first_by_job_and_status_a_page_at_a_time(store: &dyn Store) {
    let batch: Vec<NewExecution> = (0..7)
        .map(|n| manual(if n % 2 == 0 { "even" } else { "odd" }, T0))
        .collect();
    store.enqueue_executions(&batch).await.unwrap();
    let running = running(store, "even").await;
    let newest_first = |job: Option<&str>| -> Vec<String> {
        let mut ids: Vec<String> = batch
            .iter()
            .filter(|e| job.is_none_or(|j| e.job_id == j))
            .map(|e| e.id.clone())
            .collect();
        ids.reverse();
        ids
    };

    let mut all = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let filter = ExecutionFilter {
            status: Some(ExecutionStatus::Queued),
            ..ExecutionFilter::default()
        };
        let page = store
            .list_executions(&filter, cursor.as_deref(), 3)
            .await
            .unwrap();
        pages += 1;
        all.extend(page.items.into_iter().map(|e| e.id));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(all, newest_first(None));
    assert_eq!(pages, 3);

    let even = ExecutionFilter {
        job_id: Some("even".to_owned()),
        ..ExecutionFilter::default()
    };
    let page = store.list_executions(&even, None, 100).await.unwrap();
    let listed: Vec<String> = page.items.into_iter().map(|e| e.id).collect();
    let mut expected = vec![running.clone()];
    expected.extend(newest_first(Some("even")));
    assert_eq!(listed, expected);
    assert_eq!(page.next_cursor, None);

    let even_running = ExecutionFilter {
        status: Some(ExecutionStatus::Running),
        ..even
    };
    let page = store
        .list_executions(&even_running, None, 100)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, running);
}

async fn every_status_lists_on_its_own_newest_first(store: &dyn Store) {
    let mut expected: Vec<(ExecutionStatus, Vec<String>)> = Vec::new();
    for status in [
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::TimedOut,
        ExecutionStatus::Cancelled,
    ] {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let id = running(store, "job-1").await;
            let result = ExecutionResult {
                status,
                ..completed(&id, Vec::new())
            };
            store.record_results(&[result], &[]).await.unwrap();
            ids.push(id);
        }
        ids.reverse();
        expected.push((status, ids));
    }
    let queued = manual("job-1", T0);
    store
        .enqueue_executions(std::slice::from_ref(&queued))
        .await
        .unwrap();
    expected.push((ExecutionStatus::Queued, vec![queued.id]));
    let running = running(store, "job-1").await;
    expected.push((ExecutionStatus::Running, vec![running]));

    for (status, ids) in expected {
        let filter = ExecutionFilter {
            status: Some(status),
            ..ExecutionFilter::default()
        };
        let mut listed = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_executions(&filter, cursor.as_deref(), 2)
                .await
                .unwrap();
            assert!(page.items.iter().all(|e| e.status == status), "{status:?}");
            listed.extend(page.items.into_iter().map(|e| e.id));
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(listed, ids, "{status:?}");
    }
}

async fn the_reconciler_sees_due_queued_executions_oldest_first(store: &dyn Store) {
    assert_eq!(
        store.due_queued_executions(Millis::MAX, 10).await.unwrap(),
        Vec::<String>::new()
    );
    let late = NewExecution {
        run_after: T0 + 10 * SECOND,
        ..manual("job-1", T0)
    };
    let early = NewExecution {
        run_after: T0 + 5 * SECOND,
        ..manual("job-1", T0)
    };
    let now = manual("job-1", T0);
    store
        .enqueue_executions(&[late.clone(), early.clone(), now.clone()])
        .await
        .unwrap();
    running(store, "job-1").await;

    assert_eq!(
        store.due_queued_executions(T0, 10).await.unwrap(),
        std::slice::from_ref(&now.id)
    );
    assert_eq!(
        store
            .due_queued_executions(T0 + 5 * SECOND, 10)
            .await
            .unwrap(),
        [now.id.clone(), early.id.clone()]
    );
    assert_eq!(
        store
            .due_queued_executions(T0 + 60 * SECOND, 2)
            .await
            .unwrap(),
        [now.id.clone(), early.id.clone()]
    );
    store
        .claim_executions(std::slice::from_ref(&now.id), "node-a", T0, T0 + SECOND)
        .await
        .unwrap();
    assert_eq!(
        store.due_queued_executions(Millis::MAX, 10).await.unwrap(),
        [early.id.clone(), late.id.clone()]
    );
}

async fn queued_executions_are_counted_by_whether_they_are_due(store: &dyn Store) {
    assert_eq!(
        store.count_queued(T0).await.unwrap(),
        QueuedCount::default()
    );
    let backing_off = NewExecution {
        trigger: Trigger::Retry,
        run_after: T0 + 10 * SECOND,
        ..manual("job-1", T0 - 60 * SECOND)
    };
    let due = manual("job-1", T0);
    store
        .enqueue_executions(&[backing_off.clone(), due])
        .await
        .unwrap();
    running(store, "job-1").await;
    assert_eq!(
        store.count_queued(T0).await.unwrap(),
        QueuedCount { due: 1, delayed: 1 }
    );
    assert_eq!(
        store.count_queued(T0 + 10 * SECOND).await.unwrap(),
        QueuedCount { due: 2, delayed: 0 }
    );

    // A claim says when the execution became due, and what it runs.
    let claimed = store
        .claim_executions(
            std::slice::from_ref(&backing_off.id),
            "node-a",
            T0 + 11 * SECOND,
            T0 + 40 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        (
            claimed[0].module.as_str(),
            claimed[0].job.as_str(),
            claimed[0].scheduled_at,
            claimed[0].run_after
        ),
        ("m", "work", T0 - 60 * SECOND, T0 + 10 * SECOND)
    );
    assert_eq!(
        store.count_queued(T0 + 10 * SECOND).await.unwrap(),
        QueuedCount { due: 1, delayed: 0 }
    );

    let pools = store.pools();
    assert!(!pools.is_empty());
    for pool in pools {
        assert!(pool.max >= 1, "{pool:?}");
        assert!(pool.idle <= pool.open && pool.open <= pool.max, "{pool:?}");
    }
}

async fn batches_larger_than_one_statement_are_handled_whole(store: &dyn Store) {
    // Above the backend's rows-per-statement, so every batch is split.
    const N: usize = 1_234;
    let batch: Vec<NewExecution> = (0..N).map(|_| manual("job-1", T0)).collect();
    let wanted = ids(&batch);
    assert_eq!(store.enqueue_executions(&batch).await.unwrap(), wanted);
    let claimed = store
        .claim_executions(&wanted, "node-a", T0, T0 + SECOND)
        .await
        .unwrap();
    assert_eq!(claimed.len(), N);
    store
        .renew_leases(&wanted, "node-a", T0 + 60 * SECOND)
        .await
        .unwrap();
    assert!(
        store
            .expired_executions(T0 + 30 * SECOND, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let results: Vec<ExecutionResult> = wanted
        .iter()
        .map(|id| completed(id, vec![log(0, "a")]))
        .collect();
    let recorded: HashSet<String> = store
        .record_results(&results, &[])
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(recorded.len(), N);
    assert!(
        store
            .expired_executions(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let last = wanted.last().unwrap();
    assert_eq!(store.execution_logs(last, None, 10).await.unwrap().len(), 1);
    assert!(store.cancel_requested(&wanted).await.unwrap().is_empty());
}

// ---- events --------------------------------------------------------------------------

async fn events_list_newest_first_by_topic_a_page_at_a_time(store: &dyn Store) {
    let mut events = Vec::new();
    for n in 0..5 {
        let event = Event {
            id: new_id(),
            topic: if n % 2 == 0 {
                "report.generated"
            } else {
                "sync.done"
            }
            .to_owned(),
            payload: serde_json::json!({"n": n}),
            source: "api".to_owned(),
            created_at: T0 + n,
            depth: n as u32 + 1,
            caused_by: (n > 0).then(new_id),
            refused: if n == 4 {
                vec![crate::domain::EventRefusal {
                    job_id: new_id(),
                    job: "loop".to_owned(),
                    reason: "too deep".to_owned(),
                }]
            } else {
                Vec::new()
            },
        };
        store.insert_event(&event).await.unwrap();
        events.push(event);
    }
    let first = store.list_events(None, None, 3).await.unwrap();
    let mut expected: Vec<Event> = events.iter().rev().cloned().collect();
    assert_eq!(first.items, expected[..3]);
    let rest = store
        .list_events(None, first.next_cursor.as_deref(), 3)
        .await
        .unwrap();
    assert_eq!(rest.items, expected[3..]);
    assert_eq!(rest.next_cursor, None);

    expected.retain(|e| e.topic == "report.generated");
    let reports = store
        .list_events(Some("report.generated"), None, 10)
        .await
        .unwrap();
    assert_eq!(reports.items, expected);
    assert!(
        store
            .list_events(Some("nothing"), None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(matches!(
        store.insert_event(&events[0]).await,
        Err(StoreError::Conflict(_))
    ));

    // The depth of the event that started a run, for the events that run publishes.
    let subscriber = job("subscriber", "sync");
    store.insert_job(&subscriber).await.unwrap();
    let started = NewExecution {
        trigger: Trigger::Event,
        event_id: Some(events[2].id.clone()),
        ..manual(&subscriber.id, T0)
    };
    let unstarted = manual(&subscriber.id, T0);
    // A retry carries no event of its own: it counts as deep as its first attempt, or a
    // run that publishes and fails would start each chain afresh.
    let retried = NewExecution {
        trigger: Trigger::Retry,
        attempt: 2,
        retry_of: Some(started.id.clone()),
        ..manual(&subscriber.id, T0)
    };
    store
        .enqueue_executions(&[started.clone(), unstarted.clone(), retried.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.starting_event_depth(&started.id).await.unwrap(),
        Some(3)
    );
    assert_eq!(
        store.starting_event_depth(&retried.id).await.unwrap(),
        Some(3)
    );
    assert_eq!(
        store.starting_event_depth(&unstarted.id).await.unwrap(),
        None
    );
    assert_eq!(store.starting_event_depth("missing").await.unwrap(), None);
}

// ---- module data ---------------------------------------------------------------------

async fn kv_values_are_scoped_to_their_module(store: &dyn Store) {
    store.kv_set("a", "key", b"for a", T0).await.unwrap();
    store.kv_set("b", "key", b"for b", T0).await.unwrap();
    assert_eq!(
        store.kv_get("a", "key").await.unwrap().as_deref(),
        Some(&b"for a"[..])
    );
    store.kv_set("a", "key", b"overwritten", T0).await.unwrap();
    assert_eq!(
        store.kv_get("a", "key").await.unwrap().as_deref(),
        Some(&b"overwritten"[..])
    );
    store.kv_delete("a", "key").await.unwrap();
    store.kv_delete("a", "never-set").await.unwrap();
    assert_eq!(store.kv_get("a", "key").await.unwrap(), None);
    assert_eq!(
        store.kv_get("b", "key").await.unwrap().as_deref(),
        Some(&b"for b"[..])
    );
    assert_eq!(
        store.kv_list_keys("a", "", 10).await.unwrap(),
        Vec::<String>::new()
    );
    store.kv_set("a", "empty", b"", T0).await.unwrap();
    assert_eq!(store.kv_get("a", "empty").await.unwrap(), Some(Vec::new()));
}

async fn kv_keys_list_sorted_by_prefix_up_to_a_limit(store: &dyn Store) {
    for key in ["user:2", "user:1", "users", "user:10", "order:1", "user"] {
        store.kv_set("m", key, b"x", T0).await.unwrap();
    }
    store.kv_set("other", "user:3", b"x", T0).await.unwrap();
    assert_eq!(
        store.kv_list_keys("m", "user:", 10).await.unwrap(),
        ["user:1", "user:10", "user:2"]
    );
    assert_eq!(
        store.kv_list_keys("m", "user", 10).await.unwrap(),
        ["user", "user:1", "user:10", "user:2", "users"]
    );
    assert_eq!(
        store.kv_list_keys("m", "", 2).await.unwrap(),
        ["order:1", "user"]
    );
    assert!(store.kv_list_keys("m", "zzz", 10).await.unwrap().is_empty());
}

async fn a_kv_prefix_with_wildcards_matches_only_itself(store: &dyn Store) {
    for key in [
        "100%", "100%done", "1000", "a_b", "a_bc", "axb", "a\\b", "a\\c",
    ] {
        store.kv_set("m", key, b"x", T0).await.unwrap();
    }
    assert_eq!(
        store.kv_list_keys("m", "100%", 10).await.unwrap(),
        ["100%", "100%done"]
    );
    assert_eq!(
        store.kv_list_keys("m", "a_", 10).await.unwrap(),
        ["a_b", "a_bc"]
    );
    assert_eq!(store.kv_list_keys("m", "a\\b", 10).await.unwrap(), ["a\\b"]);
    assert!(store.kv_list_keys("m", "%", 10).await.unwrap().is_empty());
}

async fn kv_keys_beyond_ascii_sort_by_code_point(store: &dyn Store) {
    for key in ["é-1", "é-2", "ê", "e", "\u{10FFFF}x", "日本"] {
        store.kv_set("m", key, b"x", T0).await.unwrap();
    }
    assert_eq!(
        store.kv_list_keys("m", "é", 10).await.unwrap(),
        ["é-1", "é-2"]
    );
    assert_eq!(
        store.kv_list_keys("m", "\u{10FFFF}", 10).await.unwrap(),
        ["\u{10FFFF}x"]
    );
    assert_eq!(
        store.kv_list_keys("m", "", 10).await.unwrap(),
        ["e", "é-1", "é-2", "ê", "日本", "\u{10FFFF}x"]
    );
}

// ---- module metrics --------------------------------------------------------------------

/// A series' latest value and time, as listed.
type Latest = Option<(f64, Millis)>;

fn labels(pairs: &[(&str, &str)]) -> String {
    labels_text(
        &pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

async fn admitted(store: &dyn Store, module: &str, name: &str, labels: &str, max: u32) -> i64 {
    match store
        .admit_metric_series(module, name, labels, T0, max)
        .await
        .unwrap()
    {
        SeriesAdmission::Admitted(id) => id,
        SeriesAdmission::Refused => panic!("{module}/{name}{labels} was refused"),
    }
}

async fn summary(store: &dyn Store, module: &str) -> ModuleMetricsSummary {
    let mut summaries = store.metric_summaries(Some(module)).await.unwrap();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    summaries.remove(0)
}

async fn a_module_s_series_are_admitted_up_to_its_bound_and_refusals_counted(store: &dyn Store) {
    assert!(store.metric_summaries(None).await.unwrap().is_empty());
    let eu = labels(&[("region", "eu")]);
    let a = admitted(store, "m", "latency", &eu, 3).await;
    let b = admitted(store, "m", "latency", &labels(&[("region", "us")]), 3).await;
    let c = admitted(store, "m", "errors", "{}", 3).await;
    assert_eq!(HashSet::from([a, b, c]).len(), 3);
    // Known series are admitted at the bound, as often as asked.
    assert_eq!(admitted(store, "m", "latency", &eu, 3).await, a);
    assert_eq!(admitted(store, "m", "errors", "{}", 1).await, c);
    let refused = store
        .admit_metric_series("m", "latency", &labels(&[("region", "ap")]), T0 + 5, 3)
        .await
        .unwrap();
    assert_eq!(refused, SeriesAdmission::Refused);
    store
        .count_refused_metric_sample("m", T0 + 9)
        .await
        .unwrap();
    assert_eq!(
        summary(store, "m").await,
        ModuleMetricsSummary {
            module: "m".to_owned(),
            series: 3,
            refusals: MetricRefusals {
                samples: 2,
                last_at: Some(T0 + 9),
            },
        }
    );
    // Another module has a bound of its own.
    admitted(store, "other", "latency", &eu, 3).await;
    let all = store.metric_summaries(None).await.unwrap();
    let names: Vec<&str> = all.iter().map(|s| s.module.as_str()).collect();
    assert_eq!(names, ["m", "other"]);
    assert_eq!(all[1].series, 1);
    assert_eq!(all[1].refusals, MetricRefusals::default());
}

async fn concurrent_admissions_never_pass_the_bound(store: &dyn Store) {
    let label_sets: Vec<String> = (0..24).map(|n| labels(&[("n", &n.to_string())])).collect();
    let outcomes = futures_util::future::join_all(label_sets.iter().map(|labels| async move {
        store
            .admit_metric_series("m", "requests", labels, T0, 10)
            .await
            .unwrap()
    }))
    .await;
    let admitted = outcomes
        .iter()
        .filter(|o| matches!(o, SeriesAdmission::Admitted(_)))
        .count();
    assert_eq!(admitted, 10, "{outcomes:?}");
    let summary = summary(store, "m").await;
    assert_eq!(summary.series, 10);
    assert_eq!(summary.refusals.samples, 14);
}

/// Every sample of `samples` (series, value, time), merged one by one in order into
/// the rollups of `width`.
fn merged_one_by_one(samples: &[(i64, f64, Millis)], width: Millis) -> Vec<(i64, Millis, Rollup)> {
    let mut rollups = BTreeMap::<(i64, Millis), Rollup>::new();
    for &(series, value, at) in samples {
        let sample = Rollup::of(value, at);
        rollups
            .entry((series, rollup_start(at, width)))
            .and_modify(|r| r.merge(&sample))
            .or_insert(sample);
    }
    rollups
        .into_iter()
        .map(|((series, t), rollup)| (series, t, rollup))
        .collect()
}

async fn rollups_hold_exactly_what_the_samples_merged_one_by_one_give(store: &dyn Store) {
    let a = admitted(store, "m", "latency", &labels(&[("region", "eu")]), 10).await;
    let b = admitted(store, "m", "latency", &labels(&[("region", "us")]), 10).await;
    // Values in quarters, so every sum is exact whatever the order of addition; times
    // over three days, several samples a minute, some late, some at equal times.
    let mut samples = Vec::new();
    for i in 0..1_200_i64 {
        let at = T0 + i * 17 * MINUTE_MS / 3 + (i % 7) * SECOND;
        let series = if i % 3 == 0 { b } else { a };
        samples.push((series, (i % 37) as f64 * 0.25 - 3.0, at));
        if i % 11 == 0 {
            samples.push((series, 100.0 + i as f64, at - 5 * SECOND));
            samples.push((series, -100.0 - i as f64, at));
        }
    }
    // Written one at a time, in batches, and in a batch of more rollups than one
    // statement takes.
    let (single, rest) = samples.split_at(40);
    for sample in single {
        assert!(
            store
                .add_metric_samples(std::slice::from_ref(sample))
                .await
                .unwrap()
        );
    }
    let (batch, large) = rest.split_at(100);
    for chunk in batch.chunks(30) {
        assert!(store.add_metric_samples(chunk).await.unwrap());
    }
    assert!(store.add_metric_samples(large).await.unwrap());
    let first = T0 - DAY;
    let last = T0 + 10 * DAY;
    for width in ROLLUP_WIDTHS {
        let read = store
            .metric_rollups(&[a, b], width, first, last)
            .await
            .unwrap();
        assert_eq!(read, merged_one_by_one(&samples, width), "width {width}");
    }
    // A window reads the rollups that start in it, of the series asked for.
    let from = rollup_start(T0, HOUR) + HOUR;
    let read = store
        .metric_rollups(&[b], HOUR, from, from + 2 * HOUR)
        .await
        .unwrap();
    let expected: Vec<_> = merged_one_by_one(&samples, HOUR)
        .into_iter()
        .filter(|(series, t, _)| *series == b && *t >= from && *t < from + 2 * HOUR)
        .collect();
    assert_eq!(read, expected);
    assert_eq!(read.len(), 2);
}

async fn samples_of_a_series_that_is_gone_are_not_written(store: &dyn Store) {
    let a = admitted(store, "m", "latency", "{}", 10).await;
    let written = store
        .add_metric_samples(&[(a, 1.0, T0), (a + 1_000, 2.0, T0)])
        .await
        .unwrap();
    assert!(!written);
    assert!(
        store
            .metric_rollups(&[a], MINUTE_MS, T0 - DAY, T0 + DAY)
            .await
            .unwrap()
            .is_empty(),
        "all or nothing"
    );
}

async fn series_list_by_name_and_labels_with_their_latest_value(store: &dyn Store) {
    let us = labels(&[("region", "us")]);
    let eu = labels(&[("region", "eu"), ("env", "prod")]);
    let b = admitted(store, "m", "latency", &us, 10).await;
    let a = admitted(store, "m", "latency", &eu, 10).await;
    let c = admitted(store, "m", "errors", "{}", 10).await;
    admitted(store, "n", "latency", &us, 10).await;
    store
        .add_metric_samples(&[
            (a, 4.0, T0 + 2 * DAY),
            (a, 9.0, T0 + DAY),
            (b, 1.5, T0),
            (b, 2.5, T0 + 3 * SECOND),
        ])
        .await
        .unwrap();
    let all = store.metric_series("m", None).await.unwrap();
    let listed: Vec<(i64, &str, Latest)> = all
        .iter()
        .map(|s| (s.id, s.name.as_str(), s.last))
        .collect();
    assert_eq!(
        listed,
        [
            (c, "errors", None),
            (a, "latency", Some((4.0, T0 + 2 * DAY))),
            (b, "latency", Some((2.5, T0 + 3 * SECOND))),
        ]
    );
    assert_eq!(all[1].labels["env"], "prod");
    assert_eq!(all[1].labels.len(), 2);
    assert_eq!(all[1].created_at, T0);
    let latency = store.metric_series("m", Some("latency")).await.unwrap();
    assert_eq!(latency, all[1..]);
    assert!(
        store
            .metric_series("m", Some("nope"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .metric_series("nobody", None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn text_with_nul_characters_is_recorded(store: &dyn Store) {
    // A guest may print anything; losing its whole result to one byte would be worse
    // than a replaced character (PostgreSQL text cannot hold NUL).
    let id = running(store, "job-1").await;
    let result = ExecutionResult {
        status: ExecutionStatus::Failed,
        result: None,
        error: Some("bad\0byte".to_owned()),
        error_kind: Some("TRAP".to_owned()),
        ..completed(&id, vec![log(0, "binary \0 output")])
    };
    assert_eq!(
        store.record_results(&[result], &[]).await.unwrap(),
        [id.as_str()]
    );
    let execution = store.get_execution(&id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Failed);
    let error = execution.error.unwrap();
    assert!(
        error == "bad\0byte" || error == "bad\u{FFFD}byte",
        "{error:?}"
    );
    let logs = store.execution_logs(&id, None, 10).await.unwrap();
    assert_eq!(logs.len(), 1);
    assert!(
        logs[0].message == "binary \0 output" || logs[0].message == "binary \u{FFFD} output",
        "{:?}",
        logs[0].message
    );
    // Keys are identities: they keep every character.
    store.kv_set("m", "a\0b", b"nul", T0).await.unwrap();
    store.kv_set("m", "a", b"plain", T0).await.unwrap();
    assert_eq!(
        store.kv_get("m", "a\0b").await.unwrap().as_deref(),
        Some(&b"nul"[..])
    );
    assert_eq!(
        store.kv_list_keys("m", "a", 10).await.unwrap(),
        ["a", "a\0b"]
    );
    // An event a guest published, topic and source as it spelled them.
    let event = Event {
        id: new_id(),
        topic: "odd\0topic".to_owned(),
        payload: serde_json::json!({}),
        source: "module\0x".to_owned(),
        created_at: T0,
        depth: 1,
        caused_by: None,
        refused: Vec::new(),
    };
    store.insert_event(&event).await.unwrap();
    let listed = store.list_events(None, None, 10).await.unwrap().items;
    let stored = listed.iter().find(|e| e.id == event.id).unwrap();
    assert!(
        ["odd\0topic", "odd\u{FFFD}topic"].contains(&stored.topic.as_str())
            && ["module\0x", "module\u{FFFD}x"].contains(&stored.source.as_str()),
        "{stored:?}"
    );
}

// ---- nodes and leases ----------------------------------------------------------------

fn node(node_id: &str, last_heartbeat_at: Millis, running: u32) -> NodeHeartbeat {
    NodeHeartbeat {
        node_id: node_id.to_owned(),
        started_at: T0,
        last_heartbeat_at,
        workers: 5,
        running,
        version: "0.1.0".to_owned(),
    }
}

async fn nodes_list_by_id_with_their_latest_heartbeat(store: &dyn Store) {
    assert!(store.list_nodes().await.unwrap().is_empty());
    store.heartbeat_node(&node("node-b", T0, 0)).await.unwrap();
    store.heartbeat_node(&node("node-a", T0, 1)).await.unwrap();
    let later = NodeHeartbeat {
        workers: 8,
        version: "0.2.0".to_owned(),
        ..node("node-b", T0 + 10 * SECOND, 3)
    };
    store.heartbeat_node(&later).await.unwrap();
    assert_eq!(
        store.list_nodes().await.unwrap(),
        [node("node-a", T0, 1), later]
    );
    // A node restarted under the same id replaces its row.
    let restarted = NodeHeartbeat {
        started_at: T0 + 20 * SECOND,
        ..node("node-a", T0 + 20 * SECOND, 0)
    };
    store.heartbeat_node(&restarted).await.unwrap();
    let nodes = store.list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0], restarted);
}

const LEADER: &str = "cron-leader";
const TTL: Millis = 10 * SECOND;

async fn a_held_lease_is_refused_to_anyone_else_until_it_expires(store: &dyn Store) {
    let first = store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .expect("a lease never taken is free");
    for at in [T0, T0 + TTL - 1] {
        assert_eq!(
            store
                .acquire_lease(LEADER, "node-b", at, TTL)
                .await
                .unwrap(),
            None
        );
    }
    // Another lease is another name.
    assert!(
        store
            .acquire_lease("other", "node-b", T0, TTL)
            .await
            .unwrap()
            .is_some()
    );
    // Refusals changed nothing: the holder still renews with its token.
    assert_eq!(
        store
            .acquire_lease(LEADER, "node-a", T0 + TTL - 1, TTL)
            .await
            .unwrap(),
        Some(first)
    );
}

async fn renewing_a_lease_keeps_its_token_and_extends_it(store: &dyn Store) {
    let token = store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    let renewed = store
        .acquire_lease(LEADER, "node-a", T0 + 5 * SECOND, TTL)
        .await
        .unwrap();
    assert_eq!(renewed, Some(token));
    // Renewed at T0 + 5 s, it is still held after the first term would have ended.
    assert_eq!(
        store
            .acquire_lease(LEADER, "node-b", T0 + TTL + SECOND, TTL)
            .await
            .unwrap(),
        None
    );
    // A holder whose lease lapsed with nobody taking it keeps its tenure.
    assert_eq!(
        store
            .acquire_lease(LEADER, "node-a", T0 + 60 * SECOND, TTL)
            .await
            .unwrap(),
        Some(token)
    );
}

async fn a_takeover_after_expiry_bumps_the_token(store: &dyn Store) {
    let first = store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    let second = store
        .acquire_lease(LEADER, "node-b", T0 + TTL, TTL)
        .await
        .unwrap()
        .expect("an expired lease is free");
    assert!(second > first, "{second:?} after {first:?}");
    // The old holder comes back: it is now the other one.
    assert_eq!(
        store
            .acquire_lease(LEADER, "node-a", T0 + TTL + 1, TTL)
            .await
            .unwrap(),
        None
    );
    let third = store
        .acquire_lease(LEADER, "node-a", T0 + 2 * TTL, TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(third > second, "{third:?} after {second:?}");
}

async fn a_released_lease_is_free_at_once_under_a_new_token(store: &dyn Store) {
    let first = store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    assert!(!store.release_lease(LEADER, "node-b").await.unwrap());
    assert!(!store.release_lease("never-taken", "node-a").await.unwrap());
    assert_eq!(
        store
            .acquire_lease(LEADER, "node-b", T0, TTL)
            .await
            .unwrap(),
        None,
        "a release by someone else releases nothing"
    );
    assert!(store.release_lease(LEADER, "node-a").await.unwrap());
    assert!(!store.release_lease(LEADER, "node-a").await.unwrap());
    let second = store
        .acquire_lease(LEADER, "node-b", T0 + 1, TTL)
        .await
        .unwrap()
        .expect("a released lease is free before it would have expired");
    assert!(second > first);
}

async fn a_lease_holder_is_named_while_its_lease_lasts(store: &dyn Store) {
    assert_eq!(store.lease_holder(LEADER, T0).await.unwrap(), None);
    store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .lease_holder(LEADER, T0 + TTL - 1)
            .await
            .unwrap()
            .as_deref(),
        Some("node-a")
    );
    assert_eq!(
        store.lease_holder(LEADER, T0 + TTL).await.unwrap(),
        None,
        "expired"
    );
    assert!(store.release_lease(LEADER, "node-a").await.unwrap());
    assert_eq!(
        store.lease_holder(LEADER, T0).await.unwrap(),
        None,
        "released"
    );
}

async fn two_would_be_leaders_racing_for_a_free_lease_get_one_lease(store: &dyn Store) {
    let holders: Vec<String> = (0..8).map(|n| format!("node-{n}")).collect();
    let attempts = holders
        .iter()
        .map(|holder| store.acquire_lease(LEADER, holder, T0, TTL));
    let won: Vec<LeaseToken> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .filter_map(Result::unwrap)
        .collect();
    assert_eq!(won, [LeaseToken(1)]);
}

/// A scheduled job due at `T0`.
fn scheduled(name: &str) -> Job {
    Job {
        schedule: Some("0 * * * * *".to_owned()),
        next_run_at: Some(T0),
        ..job(name, "sync")
    }
}

async fn next_run_at(store: &dyn Store, job: &Job) -> Option<Millis> {
    store.get_job(&job.id).await.unwrap().unwrap().next_run_at
}

async fn the_lease_holder_advances_every_schedule_at_once(store: &dyn Store) {
    let (a, b, c) = (scheduled("a"), scheduled("b"), scheduled("c"));
    for job in [&a, &b, &c] {
        store.insert_job(job).await.unwrap();
    }
    let token = store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    let updates = [
        (a.id.clone(), Some(T0 + 60 * SECOND)),
        (b.id.clone(), None),
        ("missing".to_owned(), Some(T0)),
        (a.id.clone(), Some(T0 + 120 * SECOND)),
    ];
    assert!(
        store
            .advance_schedules(&updates, LEADER, "node-a", token, T0 + SECOND)
            .await
            .unwrap()
    );
    assert_eq!(next_run_at(store, &a).await, Some(T0 + 120 * SECOND));
    assert_eq!(next_run_at(store, &b).await, None);
    assert_eq!(next_run_at(store, &c).await, Some(T0));
    assert!(
        store
            .advance_schedules(&[], LEADER, "node-a", token, T0 + SECOND)
            .await
            .unwrap()
    );
    let due: Vec<String> = store
        .due_scheduled_jobs(T0)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(due, ["c"]);
}

async fn a_stale_holder_s_fenced_write_is_refused(store: &dyn Store) {
    let job = scheduled("nightly");
    store.insert_job(&job).await.unwrap();
    let stale = store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    let current = store
        .acquire_lease(LEADER, "node-b", T0 + TTL, TTL)
        .await
        .unwrap()
        .unwrap();
    let back_in_time = [(job.id.clone(), Some(T0 - 60 * SECOND))];
    // The old leader, paused through its lease and unaware, writes with its old token.
    assert!(
        !store
            .advance_schedules(&back_in_time, LEADER, "node-a", stale, T0 + TTL + 1)
            .await
            .unwrap()
    );
    // Nor may anyone write with the current token under another name.
    assert!(
        !store
            .advance_schedules(&back_in_time, LEADER, "node-a", current, T0 + TTL + 1)
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_schedules(&back_in_time, "other", "node-b", current, T0 + TTL + 1)
            .await
            .unwrap()
    );
    assert_eq!(next_run_at(store, &job).await, Some(T0));
    let forward = [(job.id.clone(), Some(T0 + 60 * SECOND))];
    assert!(
        store
            .advance_schedules(&forward, LEADER, "node-b", current, T0 + TTL + 1)
            .await
            .unwrap()
    );
    assert_eq!(next_run_at(store, &job).await, Some(T0 + 60 * SECOND));
}

async fn a_fenced_write_after_the_lease_expired_or_was_released_is_refused(store: &dyn Store) {
    let job = scheduled("nightly");
    store.insert_job(&job).await.unwrap();
    let token = store
        .acquire_lease(LEADER, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    let update = [(job.id.clone(), Some(T0 + 60 * SECOND))];
    // Expired, though nobody took it yet: a leader must not act on a lapsed lease.
    assert!(
        !store
            .advance_schedules(&update, LEADER, "node-a", token, T0 + TTL)
            .await
            .unwrap()
    );
    assert!(
        store
            .advance_schedules(&update, LEADER, "node-a", token, T0 + TTL - 1)
            .await
            .unwrap()
    );
    assert!(store.release_lease(LEADER, "node-a").await.unwrap());
    let later = [(job.id.clone(), Some(T0 + 120 * SECOND))];
    assert!(
        !store
            .advance_schedules(&later, LEADER, "node-a", token, T0 + 1)
            .await
            .unwrap()
    );
    assert_eq!(next_run_at(store, &job).await, Some(T0 + 60 * SECOND));
}

// ---- throughput ----------------------------------------------------------------------

/// Not a pass/fail test: prints how fast the hot path (enqueue, claim, record) moves
/// 20,000 executions without logs, at a few batch sizes.
async fn hot_path_throughput_of_20000_executions(store: &dyn Store) {
    const N: usize = 20_000;
    // The test's name says which backend this is (the test thread is named after it).
    let thread = std::thread::current();
    let backend = thread.name().unwrap_or("store");
    for batch_size in [50, 200, 1_000] {
        let job_id = format!("bench-{batch_size}");
        let executions: Vec<NewExecution> = (0..N).map(|_| manual(&job_id, T0)).collect();
        let started = Instant::now();
        for batch in executions.chunks(batch_size) {
            store.enqueue_executions(batch).await.unwrap();
        }
        let enqueued = started.elapsed();
        let started = Instant::now();
        for batch in executions.chunks(batch_size) {
            let claimed = store
                .claim_executions(&ids(batch), "node-a", T0, T0 + SECOND)
                .await
                .unwrap();
            assert_eq!(claimed.len(), batch.len());
        }
        let claimed = started.elapsed();
        let started = Instant::now();
        for batch in executions.chunks(batch_size) {
            let results: Vec<ExecutionResult> =
                batch.iter().map(|e| completed(&e.id, Vec::new())).collect();
            assert_eq!(
                store.record_results(&results, &[]).await.unwrap().len(),
                batch.len()
            );
        }
        let recorded = started.elapsed();
        let total = enqueued + claimed + recorded;
        println!(
            "{backend}: {N} executions in batches of {batch_size}: enqueue {enqueued:?}, claim {claimed:?}, \
             record {recorded:?}; total {total:?} = {:.0} executions/s",
            N as f64 / total.as_secs_f64()
        );
    }
}

// ---- usage rollups ---------------------------------------------------------------------

/// Every step's totals of `job_id` over all time, by rollup step.
async fn usage_totals(store: &dyn Store, job_id: &str, tier: Millis) -> RunTotals {
    let rows = store
        .usage_runs(&UsageQuery {
            from: 0,
            to: crate::domain::now_millis() + DAY,
            step: None,
            tier,
            module: None,
            job_id: Some(job_id.to_owned()),
            host: None,
            by_job: true,
        })
        .await
        .unwrap();
    assert!(rows.len() <= 1, "{rows:?}");
    rows.into_iter()
        .next()
        .map(|r| r.totals)
        .unwrap_or_default()
}

const MINUTE_MS: Millis = 60 * SECOND;
const HOUR: Millis = 60 * MINUTE_MS;
const DAY: Millis = 24 * HOUR;

async fn every_final_status_is_counted_once_at_every_step(store: &dyn Store) {
    // Completed twice, with different durations; the second result sent twice.
    let first = running(store, "job-u").await;
    let second = running(store, "job-u").await;
    store
        .record_results(&[completed(&first, vec![log(0, "hello")])], &[])
        .await
        .unwrap();
    let slow = ExecutionResult {
        duration_ms: 400.0,
        fuel_consumed: 10_000,
        memory_peak_bytes: 1 << 20,
        ..completed(&second, Vec::new())
    };
    store
        .record_results(&[slow.clone(), slow.clone()], &[])
        .await
        .unwrap();
    store.record_results(&[slow], &[]).await.unwrap();
    // Failed, with a retry that is still queued (not counted until it ends).
    let failing = running(store, "job-u").await;
    let failed = ExecutionResult {
        status: ExecutionStatus::Failed,
        result: None,
        error: Some("boom".to_owned()),
        ..completed(&failing, Vec::new())
    };
    let retry = Retry {
        failed: failing.clone(),
        next: NewExecution {
            trigger: Trigger::Retry,
            attempt: 2,
            retry_of: Some(failing.clone()),
            ..manual("job-u", T0 + 5 * SECOND)
        },
    };
    store.record_results(&[failed], &[retry]).await.unwrap();
    // Cancelled while queued; cancelled again (already final: nothing).
    let queued = manual("job-u", T0);
    store
        .enqueue_executions(std::slice::from_ref(&queued))
        .await
        .unwrap();
    store
        .cancel_execution(&queued.id, T0 + SECOND)
        .await
        .unwrap();
    store
        .cancel_execution(&queued.id, T0 + SECOND)
        .await
        .unwrap();
    // Asked to stop, then put back by a node that never started it: cancelled.
    let stopped = running(store, "job-u").await;
    store.cancel_execution(&stopped, T0).await.unwrap();
    store
        .requeue_executions(std::slice::from_ref(&stopped))
        .await
        .unwrap();
    // Its node died after its handler began: failed by the reconciler, once.
    let lost = begun(store, "job-u").await;
    assert_eq!(settle(store, &lost, Millis::MAX).await, Settled::Failed);
    assert_eq!(settle(store, &lost, Millis::MAX).await, Settled::NotExpired);
    // Requeued without a cancel: not final, not counted.
    let requeued = running(store, "job-u").await;
    store
        .requeue_executions(std::slice::from_ref(&requeued))
        .await
        .unwrap();

    for tier in [MINUTE_MS, HOUR, DAY] {
        let totals = usage_totals(store, "job-u", tier).await;
        assert_eq!(
            (
                totals.runs,
                totals.completed,
                totals.failed,
                totals.timed_out,
                totals.cancelled
            ),
            (6, 2, 2, 0, 2),
            "at step {tier}"
        );
        assert_eq!(totals.fuel_consumed, 1_234 + 10_000 + 1_234);
        assert_eq!(totals.memory_peak_bytes, 1 << 20);
        assert!((totals.duration_ms_sum - (12.5 + 400.0 + 12.5)).abs() < 1e-9);
        assert!((totals.duration_ms_max - 400.0).abs() < 1e-9);
        assert_eq!(totals.durations.count(), 3, "runs that ran have durations");
        let p99 = totals
            .durations
            .quantile(0.99, totals.duration_ms_max)
            .unwrap();
        assert!((p99 - 400.0).abs() / 400.0 <= PERCENTILE_ERROR, "{p99}");
        assert_eq!(totals.log_bytes, log_bytes(&[log(0, "hello")]));
    }
    // The rollups agree with the executions table.
    let mut finals = 0;
    let page = store
        .list_executions(
            &ExecutionFilter {
                job_id: Some("job-u".to_owned()),
                status: None,
            },
            None,
            100,
        )
        .await
        .unwrap();
    for execution in page.items {
        if execution.status.is_final() {
            finals += 1;
        }
    }
    assert_eq!(finals, 6);
}

async fn usage_points_merge_into_coarser_steps_exactly(store: &dyn Store) {
    // Runs ending in three different minutes of one hour, durations spread.
    let hour = (T0 / HOUR + 1) * HOUR;
    let mut durations = Vec::new();
    for (i, minute) in [0, 0, 7, 59].into_iter().enumerate() {
        let id = running(store, "job-m").await;
        let duration = 3.0 * (i as f64 + 1.0).powi(3);
        durations.push(duration);
        let result = ExecutionResult {
            finished_at: hour + minute * MINUTE_MS + 5 * SECOND,
            duration_ms: duration,
            ..completed(&id, Vec::new())
        };
        store.record_results(&[result], &[]).await.unwrap();
    }
    let query = |tier, step| UsageQuery {
        from: hour,
        to: hour + HOUR,
        step,
        tier,
        module: Some("m".to_owned()),
        job_id: None,
        host: None,
        by_job: false,
    };
    let minutes = store
        .usage_runs(&query(MINUTE_MS, Some(MINUTE_MS)))
        .await
        .unwrap();
    assert_eq!(
        minutes
            .iter()
            .map(|r| (r.t.unwrap() - hour, r.totals.runs))
            .collect::<Vec<_>>(),
        vec![(0, 2), (7 * MINUTE_MS, 1), (59 * MINUTE_MS, 1)]
    );
    let merged = store
        .usage_runs(&query(MINUTE_MS, Some(HOUR)))
        .await
        .unwrap();
    let hours = store.usage_runs(&query(HOUR, Some(HOUR))).await.unwrap();
    let days = store
        .usage_runs(&UsageQuery {
            from: hour - hour % DAY,
            to: hour - hour % DAY + DAY,
            ..query(DAY, None)
        })
        .await
        .unwrap();
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].t, Some(hour));
    assert_eq!(
        merged[0].totals, hours[0].totals,
        "minutes add up to the hour"
    );
    assert_eq!(days[0].totals.durations, hours[0].totals.durations);
    // Percentiles within the stated error of the exact ones.
    durations.sort_by(f64::total_cmp);
    let totals = &hours[0].totals;
    for (q, exact) in [(0.5, durations[1]), (1.0, durations[3])] {
        let read = totals
            .durations
            .quantile(q, totals.duration_ms_max)
            .unwrap();
        assert!(
            (read - exact).abs() / exact <= PERCENTILE_ERROR,
            "{q}: {read} vs {exact}"
        );
    }
}

async fn outbound_requests_are_counted_per_module_and_host_once(store: &dyn Store) {
    let id = running(store, "job-o").await;
    let mut api = OutboundTally::new("api.example.com");
    api.count(ResponseClass::Status(200), 10, 1_000, Some(20.0));
    api.count(ResponseClass::Status(503), 10, 50, Some(200.0));
    api.count(ResponseClass::Denied, 0, 0, None);
    let mut cdn = OutboundTally::new("cdn.example.com");
    cdn.count(ResponseClass::Error, 0, 0, Some(5_000.0));
    let result = ExecutionResult {
        outbound: vec![api, cdn],
        ..completed(&id, Vec::new())
    };
    store
        .record_results(std::slice::from_ref(&result), &[])
        .await
        .unwrap();
    store.record_results(&[result], &[]).await.unwrap();
    let rows = store
        .usage_outbound(&UsageQuery {
            from: 0,
            to: T0 + DAY,
            step: None,
            tier: HOUR,
            module: Some("m".to_owned()),
            job_id: None,
            host: None,
            by_job: false,
        })
        .await
        .unwrap();
    let hosts: Vec<&str> = rows.iter().map(|r| r.totals.host.as_str()).collect();
    assert_eq!(hosts, ["api.example.com", "cdn.example.com"]);
    let api = &rows[0].totals;
    assert_eq!(
        (
            api.requests,
            api.responses_2xx,
            api.responses_5xx,
            api.denied
        ),
        (3, 1, 1, 1)
    );
    assert_eq!((api.bytes_sent, api.bytes_received), (20, 1_050));
    assert_eq!(api.latency.count(), 2, "denied requests have no latency");
    assert_eq!((rows[1].totals.requests, rows[1].totals.errors), (1, 1));
    let totals = usage_totals(store, "job-o", MINUTE_MS).await;
    assert_eq!(totals.outbound_requests, 4);
    // One host only.
    let cdn_only = store
        .usage_outbound(&UsageQuery {
            from: 0,
            to: T0 + DAY,
            step: Some(MINUTE_MS),
            tier: MINUTE_MS,
            module: None,
            job_id: None,
            host: Some("cdn.example.com".to_owned()),
            by_job: false,
        })
        .await
        .unwrap();
    assert_eq!(cdn_only.len(), 1);
    assert_eq!(
        cdn_only[0].t,
        Some(T0 + 2 * SECOND - (T0 + 2 * SECOND) % MINUTE_MS)
    );
}

async fn route_requests_add_to_their_modules_outbound_points(store: &dyn Store) {
    let tally = |host: &str, statuses: &[u16]| {
        let mut tally = OutboundTally::new(host);
        for status in statuses {
            tally.count(ResponseClass::Status(*status), 5, 100, Some(10.0));
        }
        tally
    };
    let minute = T0 - T0 % MINUTE_MS;
    store
        .count_route_outbound(&[
            RouteOutbound {
                module: "proxy".to_owned(),
                minute,
                tallies: vec![tally("api.example.com", &[200, 200, 500])],
            },
            RouteOutbound {
                module: "proxy".to_owned(),
                minute: minute + MINUTE_MS,
                tallies: vec![
                    tally("api.example.com", &[404]),
                    tally("cdn.example.com", &[200]),
                ],
            },
            RouteOutbound {
                module: "other".to_owned(),
                minute,
                tallies: vec![tally("api.example.com", &[200])],
            },
        ])
        .await
        .unwrap();
    // Counted again: added to, as a second flush of the same minute is.
    store
        .count_route_outbound(&[RouteOutbound {
            module: "proxy".to_owned(),
            minute,
            tallies: vec![tally("api.example.com", &[302])],
        }])
        .await
        .unwrap();
    let proxy_to_api = |step, tier| UsageQuery {
        from: 0,
        to: T0 + DAY,
        step,
        tier,
        module: Some("proxy".to_owned()),
        job_id: None,
        host: Some("api.example.com".to_owned()),
        by_job: false,
    };
    let minutes = store
        .usage_outbound(&proxy_to_api(Some(MINUTE_MS), MINUTE_MS))
        .await
        .unwrap();
    let by_minute: Vec<(Option<i64>, i64)> =
        minutes.iter().map(|r| (r.t, r.totals.requests)).collect();
    assert_eq!(
        by_minute,
        [(Some(minute), 4), (Some(minute + MINUTE_MS), 1)]
    );
    for tier in [HOUR, DAY] {
        let total = store
            .usage_outbound(&proxy_to_api(None, tier))
            .await
            .unwrap();
        assert_eq!(total.len(), 1, "{tier}");
        let api = &total[0].totals;
        assert_eq!(
            (
                api.requests,
                api.responses_2xx,
                api.responses_3xx,
                api.responses_4xx,
                api.responses_5xx
            ),
            (5, 2, 1, 1, 1),
            "{tier}"
        );
        assert_eq!((api.bytes_sent, api.bytes_received), (25, 500));
        assert_eq!(api.latency.count(), 5);
    }
}

// ---- retention ---------------------------------------------------------------------------

/// An execution id as one created at `at` would have.
fn id_at(at: Millis) -> String {
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        u64::try_from(at / 1000).unwrap(),
        u32::try_from(at % 1000).unwrap() * 1_000_000,
    ))
    .to_string()
}

/// An execution of `job_id` created at `at`, left in `status` (finished at `at` + 1 s
/// when final), with one log line when final.
async fn made_at(store: &dyn Store, job_id: &str, at: Millis, status: ExecutionStatus) -> String {
    let execution = NewExecution {
        id: id_at(at),
        ..manual(job_id, at)
    };
    store
        .enqueue_executions(std::slice::from_ref(&execution))
        .await
        .unwrap();
    if status == ExecutionStatus::Queued {
        return execution.id;
    }
    let claimed = store
        .claim_executions(
            std::slice::from_ref(&execution.id),
            "node-a",
            at,
            at + 30 * SECOND,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    if status == ExecutionStatus::Running {
        return execution.id;
    }
    let result = ExecutionResult {
        status,
        finished_at: at + SECOND,
        ..completed(&execution.id, vec![log(0, "kept until pruned")])
    };
    store.record_results(&[result], &[]).await.unwrap();
    execution.id
}

async fn exists(store: &dyn Store, id: &str) -> bool {
    store.get_execution(id).await.unwrap().is_some()
}

async fn prune_all(store: &dyn Store, retention: &Retention, now: Millis) -> Pruned {
    let plan = retention.plan(now);
    let mut total = Pruned::default();
    loop {
        let batch = store.prune_history(&plan, 2).await.unwrap();
        if batch.is_empty() {
            return total;
        }
        total.add(batch);
    }
}

async fn expired_history_goes_and_what_is_not_final_stays(store: &dyn Store) {
    let now = crate::domain::now_millis();
    let old = now - 40 * DAY;
    let gone = made_at(store, "job-r", old, ExecutionStatus::Completed).await;
    let gone_too = made_at(store, "job-r", old + 1, ExecutionStatus::Failed).await;
    let queued = made_at(store, "job-r", old + 2, ExecutionStatus::Queued).await;
    let running = made_at(store, "job-r", old + 3, ExecutionStatus::Running).await;
    let recent = made_at(store, "job-r", now - 3 * DAY, ExecutionStatus::Completed).await;
    let fresh = made_at(store, "job-r", now - HOUR, ExecutionStatus::Completed).await;
    let usage_before = usage_totals(store, "job-r", DAY).await;

    let retention = Retention {
        logs: std::time::Duration::from_secs(2 * 86_400),
        ..Retention::default()
    };
    let pruned = prune_all(store, &retention, now).await;
    assert_eq!(pruned.executions, 2, "{pruned:?}");
    assert_eq!(
        pruned.log_lines, 3,
        "two with their executions, one sooner: {pruned:?}"
    );
    assert!(!exists(store, &gone).await && !exists(store, &gone_too).await);
    assert!(exists(store, &queued).await, "a queued run is never pruned");
    assert!(
        exists(store, &running).await,
        "a running run is never pruned"
    );
    assert!(exists(store, &recent).await);
    assert!(
        store
            .execution_logs(&recent, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.execution_logs(&fresh, None, 10).await.unwrap().len(),
        1
    );
    // The day points of the runs pruned are kept, so totals do not change; the minute
    // points of 40 and 3 days ago are past their two days.
    assert_eq!(usage_totals(store, "job-r", DAY).await, usage_before);
    assert_eq!(usage_totals(store, "job-r", MINUTE_MS).await.runs, 1);
    assert!(pruned.usage_rows > 0);
    assert!(
        prune_all(store, &retention, now).await.is_empty(),
        "nothing left to do"
    );
}

async fn a_job_keeps_its_own_days_or_only_its_newest(store: &dyn Store) {
    let now = crate::domain::now_millis();
    let mut keeper = job("keeper", "m");
    keeper.retain_days = Some(60);
    store.insert_job(&keeper).await.unwrap();
    let mut newest = job("newest", "m");
    newest.retain_last = Some(2);
    store.insert_job(&newest).await.unwrap();
    let mut brief = job("brief", "m");
    brief.retain_days = Some(1);
    store.insert_job(&brief).await.unwrap();

    let kept = made_at(
        store,
        &keeper.id,
        now - 40 * DAY,
        ExecutionStatus::Completed,
    )
    .await;
    let too_old = made_at(
        store,
        &keeper.id,
        now - 70 * DAY,
        ExecutionStatus::Completed,
    )
    .await;
    let mut runs = Vec::new();
    for hours in [5, 4, 3, 2] {
        runs.push(
            made_at(
                store,
                &newest.id,
                now - hours * HOUR,
                ExecutionStatus::Completed,
            )
            .await,
        );
    }
    let short_lived = made_at(store, &brief.id, now - 2 * DAY, ExecutionStatus::Completed).await;

    let pruned = prune_all(store, &Retention::default(), now).await;
    assert_eq!(pruned.executions, 4, "{pruned:?}");
    assert!(
        exists(store, &kept).await,
        "kept 60 days, not the server's 30"
    );
    assert!(!exists(store, &too_old).await);
    assert!(!exists(store, &runs[0]).await && !exists(store, &runs[1]).await);
    assert!(exists(store, &runs[2]).await && exists(store, &runs[3]).await);
    assert!(
        !exists(store, &short_lived).await,
        "kept one day, not the server's 30"
    );
}

// ---- endpoint monitors ------------------------------------------------------------------

fn endpoint(name: &str) -> Endpoint {
    Endpoint {
        id: new_id(),
        name: name.to_owned(),
        url: "https://status.example.com/health".to_owned(),
        method: "GET".to_owned(),
        headers: JobConfig::new(BTreeMap::from([
            (
                "accept".to_owned(),
                Setting::Plain("application/json".to_owned()),
            ),
            (
                "authorization".to_owned(),
                Setting::Sealed("v1:c2VhbGVk".to_owned()),
            ),
        ])),
        body: None,
        interval_seconds: 30,
        timeout_ms: 5_000,
        conditions: vec![
            "status == 200".to_owned(),
            r#"body.status == "UP""#.to_owned(),
        ],
        enabled: true,
        next_check_at: Some(T0),
        created_at: T0,
        updated_at: T0,
    }
}

fn check(endpoint_id: &str, due_at: Millis, up: bool) -> EndpointCheck {
    EndpointCheck {
        endpoint_id: endpoint_id.to_owned(),
        due_at,
        checked_at: due_at + 40,
        up,
        status_code: if up { Some(200) } else { Some(503) },
        latency_ms: Some(38),
        failed_condition: (!up).then(|| "status == 200".to_owned()),
        error: None,
        node_id: "node-a".to_owned(),
    }
}

async fn an_endpoint_reads_back_as_written_and_its_name_is_taken_once(store: &dyn Store) {
    let first = endpoint("api-health");
    store.insert_endpoint(&first).await.unwrap();
    assert_eq!(
        store.get_endpoint(&first.id).await.unwrap(),
        Some(first.clone())
    );
    let taken = store
        .insert_endpoint(&endpoint("api-health"))
        .await
        .unwrap_err();
    assert!(
        matches!(&taken, StoreError::Conflict(m) if m.contains("api-health")),
        "{taken:?}"
    );

    let second = Endpoint {
        body: Some(r#"{"probe": true}"#.to_owned()),
        method: "POST".to_owned(),
        enabled: false,
        next_check_at: None,
        ..endpoint("search")
    };
    store.insert_endpoint(&second).await.unwrap();
    let page = store.list_endpoints(None, 1).await.unwrap();
    assert_eq!(page.items, std::slice::from_ref(&first));
    let rest = store
        .list_endpoints(page.next_cursor.as_deref(), 10)
        .await
        .unwrap();
    assert_eq!((rest.items, rest.next_cursor), (vec![second.clone()], None));

    let renamed = Endpoint {
        name: "search".to_owned(),
        ..first.clone()
    };
    assert!(matches!(
        store.update_endpoint(&renamed).await,
        Err(StoreError::Conflict(_))
    ));
    let changed = Endpoint {
        url: "http://10.0.0.5:8080/ready".to_owned(),
        interval_seconds: 60,
        conditions: Vec::new(),
        updated_at: T0 + SECOND,
        ..first.clone()
    };
    assert!(store.update_endpoint(&changed).await.unwrap());
    assert_eq!(store.get_endpoint(&first.id).await.unwrap(), Some(changed));
    assert!(!store.update_endpoint(&endpoint("missing")).await.unwrap());

    store
        .record_endpoint_check(&check(&first.id, T0, true))
        .await
        .unwrap();
    assert!(store.delete_endpoint(&first.id).await.unwrap());
    assert!(!store.delete_endpoint(&first.id).await.unwrap());
    assert_eq!(store.get_endpoint(&first.id).await.unwrap(), None);
    let checks = store
        .endpoint_checks(&first.id, 0, Millis::MAX, None, 10)
        .await
        .unwrap();
    assert!(checks.items.is_empty(), "its checks went with it");
    // A check finishing after its endpoint was deleted leaves nothing behind.
    assert!(
        !store
            .record_endpoint_check(&check(&first.id, T0 + 30 * SECOND, true))
            .await
            .unwrap()
    );
}

async fn an_interval_is_claimed_once_and_only_by_the_lease_holder(store: &dyn Store) {
    const LEASE: &str = "endpoints";
    let due = endpoint("due");
    let later = Endpoint {
        next_check_at: Some(T0 + 60 * SECOND),
        ..endpoint("later")
    };
    let disabled = Endpoint {
        enabled: false,
        ..endpoint("disabled")
    };
    for one in [&due, &later, &disabled] {
        store.insert_endpoint(one).await.unwrap();
    }
    let found: Vec<String> = store
        .due_endpoints(T0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(found, ["due"]);

    let stale = store
        .acquire_lease(LEASE, "node-a", T0, TTL)
        .await
        .unwrap()
        .unwrap();
    let current = store
        .acquire_lease(LEASE, "node-b", T0 + TTL, TTL)
        .await
        .unwrap()
        .unwrap();
    let now = T0 + TTL + 1;
    let claim = [(due.id.clone(), T0, T0 + 30 * SECOND)];
    // A node that lost the lease claims nothing.
    assert_eq!(
        store
            .claim_endpoint_checks(&claim, LEASE, "node-a", stale, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .claim_endpoint_checks(&claim, LEASE, "node-b", current, now)
            .await
            .unwrap(),
        Some(vec![due.id.clone()])
    );
    // The same interval again: already claimed, so nothing moves.
    assert_eq!(
        store
            .claim_endpoint_checks(&claim, LEASE, "node-b", current, now)
            .await
            .unwrap(),
        Some(Vec::new())
    );
    let moved = store.get_endpoint(&due.id).await.unwrap().unwrap();
    assert_eq!(moved.next_check_at, Some(T0 + 30 * SECOND));
    assert!(store.due_endpoints(now, 10).await.unwrap().is_empty());
    let disabled_claim = [(disabled.id.clone(), T0, T0 + 30 * SECOND)];
    assert_eq!(
        store
            .claim_endpoint_checks(&disabled_claim, LEASE, "node-b", current, now)
            .await
            .unwrap(),
        Some(Vec::new())
    );
}

async fn a_check_is_recorded_once_per_due_time_and_counted_in_uptime(store: &dyn Store) {
    let watched = endpoint("watched");
    store.insert_endpoint(&watched).await.unwrap();
    let step = 30 * SECOND;
    for i in 0..6 {
        let up = i != 2 && i != 5;
        assert!(
            store
                .record_endpoint_check(&check(&watched.id, T0 + i * step, up))
                .await
                .unwrap()
        );
    }
    // A second node's check of the same interval is not recorded.
    let twice = EndpointCheck {
        node_id: "node-b".to_owned(),
        ..check(&watched.id, T0 + step, false)
    };
    assert!(!store.record_endpoint_check(&twice).await.unwrap());

    let page = store
        .endpoint_checks(&watched.id, 0, Millis::MAX, None, 4)
        .await
        .unwrap();
    let due: Vec<Millis> = page.items.iter().map(|c| c.due_at).collect();
    assert_eq!(
        due,
        [T0 + 5 * step, T0 + 4 * step, T0 + 3 * step, T0 + 2 * step]
    );
    assert_eq!(page.items[0], check(&watched.id, T0 + 5 * step, false));
    let cursor: Millis = page.next_cursor.unwrap().parse().unwrap();
    let rest = store
        .endpoint_checks(&watched.id, 0, Millis::MAX, Some(cursor), 4)
        .await
        .unwrap();
    let due: Vec<Millis> = rest.items.iter().map(|c| c.due_at).collect();
    assert_eq!((due, rest.next_cursor), (vec![T0 + step, T0], None));
    assert_eq!(rest.items[0].node_id, "node-a");
    let window = store
        .endpoint_checks(&watched.id, T0 + step, T0 + 3 * step, None, 10)
        .await
        .unwrap();
    assert_eq!(window.items.len(), 2);

    let uptime = store
        .endpoint_uptime(&watched.id, &[T0 + 3 * step, T0, T0 + 10 * step])
        .await
        .unwrap();
    assert_eq!(
        uptime,
        [
            UptimeCount { checks: 3, up: 2 },
            UptimeCount { checks: 6, up: 4 },
            UptimeCount::default(),
        ]
    );
}

async fn endpoint_checks_past_their_retention_are_pruned(store: &dyn Store) {
    let now = crate::domain::now_millis();
    let watched = endpoint("pruned");
    store.insert_endpoint(&watched).await.unwrap();
    for due in [now - 40 * DAY, now - 31 * DAY, now - 29 * DAY, now - HOUR] {
        store
            .record_endpoint_check(&check(&watched.id, due, true))
            .await
            .unwrap();
    }
    let pruned = prune_all(store, &Retention::default(), now).await;
    assert_eq!(pruned.endpoint_checks, 2, "{pruned:?}");
    let kept = store
        .endpoint_checks(&watched.id, 0, Millis::MAX, None, 10)
        .await
        .unwrap();
    assert_eq!(kept.items.len(), 2);
}

// ---- consumption budgets ---------------------------------------------------------------

fn budget(metric: BudgetMetric, host: Option<&str>, per: BudgetPeriod, limit: u64) -> Budget {
    Budget {
        metric,
        host: host.map(str::to_owned),
        per,
        limit,
        action: BudgetAction::Enforce,
    }
}

async fn module_with_budgets(store: &dyn Store, name: &str, budgets: &[Budget]) {
    store
        .install_module_version(
            &manifest(name, "1.0.0"),
            &format!("hash-{name}"),
            b"wasm",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    store
        .set_module_budgets(name, budgets, T0)
        .await
        .unwrap()
        .unwrap();
}

async fn an_upload_reads_back_compiling_then_finished_once_and_is_forgotten_after_a_day(
    store: &dyn Store,
) {
    use crate::domain::upload::{UPLOAD_KEPT_FOR_MS, UploadOutcome, UploadRecord};
    let upload = |id: &str, created_at| UploadRecord {
        id: id.to_owned(),
        content_hash: "ab".repeat(32),
        size_bytes: 18_000_000,
        uploaded_by: "ann".to_owned(),
        node_id: "node-a".to_owned(),
        created_at,
        finished: None,
    };
    let start = 1_000_000_000;
    store.create_upload(&upload("old", start)).await.unwrap();
    let compiling = upload("new", start + 10);
    store.create_upload(&compiling).await.unwrap();
    assert_eq!(
        store.get_upload("new").await.unwrap(),
        Some(compiling.clone())
    );
    assert_eq!(store.get_upload("missing").await.unwrap(), None);

    let refused = UploadOutcome {
        at: start + 500,
        http_status: 422,
        body: json!({"error": {"code": "invalid_module", "message": "not a component"}}),
    };
    assert!(store.finish_upload("new", &refused).await.unwrap());
    let installed = UploadOutcome {
        at: start + 600,
        http_status: 201,
        body: json!({"name": "demo"}),
    };
    assert!(
        !store.finish_upload("new", &installed).await.unwrap(),
        "an upload ends once"
    );
    assert!(!store.finish_upload("missing", &installed).await.unwrap());
    let finished = store.get_upload("new").await.unwrap().unwrap();
    assert_eq!(finished.finished, Some(refused));

    // The next upload a day later forgets both.
    store
        .create_upload(&upload("later", start + 11 + UPLOAD_KEPT_FOR_MS))
        .await
        .unwrap();
    assert_eq!(store.get_upload("old").await.unwrap(), None);
    assert_eq!(store.get_upload("new").await.unwrap(), None);
    assert!(store.get_upload("later").await.unwrap().is_some());
}

async fn budgets_read_back_with_their_module_until_replaced(store: &dyn Store) {
    let budgets = vec![
        budget(BudgetMetric::Runs, None, BudgetPeriod::Hour, 2),
        budget(
            BudgetMetric::OutboundRequests,
            Some("api.example.com"),
            BudgetPeriod::Day,
            100,
        ),
    ];
    module_with_budgets(store, "paid", &budgets).await;
    let record = store.get_module("paid").await.unwrap().unwrap();
    assert_eq!(record.budgets, budgets);
    assert_eq!(store.list_modules().await.unwrap()[0].budgets, budgets);
    let cleared = store
        .set_module_budgets("paid", &[], T0 + SECOND)
        .await
        .unwrap()
        .unwrap();
    assert!(cleared.budgets.is_empty());
    assert_eq!(cleared.updated_at, T0 + SECOND);
    assert!(
        store
            .set_module_budgets("missing", &budgets, T0)
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_budget_counter_refuses_past_its_limit_until_the_next_window(store: &dyn Store) {
    let runs = budget(BudgetMetric::Runs, None, BudgetPeriod::Hour, 2);
    module_with_budgets(store, "paid", std::slice::from_ref(&runs)).await;
    let (start, end) = BudgetPeriod::Hour.window(T0);
    let counter = runs.counter("paid", T0);
    assert_eq!(counter.window_start, start);
    let charge = [(counter.clone(), 1)];
    assert_eq!(store.charge_budgets(&charge).await.unwrap(), None);
    assert_eq!(store.charge_budgets(&charge).await.unwrap(), None);
    assert_eq!(
        store.charge_budgets(&charge).await.unwrap(),
        Some(0),
        "the third run of a budget of 2 is refused"
    );
    assert_eq!(
        store
            .budget_usage(std::slice::from_ref(&counter))
            .await
            .unwrap(),
        [2]
    );
    // The last millisecond of the window is still in it; the next one starts afresh.
    let last = [(runs.counter("paid", end - 1), 1)];
    assert_eq!(store.charge_budgets(&last).await.unwrap(), Some(0));
    let next = runs.counter("paid", end);
    assert_eq!(next.window_start, end);
    assert_eq!(
        store
            .budget_usage(std::slice::from_ref(&next))
            .await
            .unwrap(),
        [0]
    );
    assert_eq!(
        store.charge_budgets(&[(next.clone(), 1)]).await.unwrap(),
        None
    );
    assert_eq!(
        store.budget_usage(&[counter, next]).await.unwrap(),
        [2, 1],
        "each window keeps its own count"
    );
}

async fn charges_of_several_budgets_are_taken_all_or_none(store: &dyn Store) {
    let every = budget(BudgetMetric::OutboundRequests, None, BudgetPeriod::Day, 10);
    let one = budget(
        BudgetMetric::OutboundRequests,
        Some("api.example.com"),
        BudgetPeriod::Hour,
        1,
    );
    module_with_budgets(store, "paid", &[every.clone(), one.clone()]).await;
    let both = [(every.counter("paid", T0), 1), (one.counter("paid", T0), 1)];
    assert_eq!(store.charge_budgets(&both).await.unwrap(), None);
    assert_eq!(store.charge_budgets(&both).await.unwrap(), Some(1));
    assert_eq!(
        store
            .budget_usage(&[every.counter("paid", T0), one.counter("paid", T0)])
            .await
            .unwrap(),
        [1, 1],
        "the refused charge took nothing from the budget that had room"
    );
}

async fn fuel_is_added_past_the_limit_and_then_refuses_a_check(store: &dyn Store) {
    let fuel = budget(BudgetMetric::Fuel, None, BudgetPeriod::Hour, 1_000);
    module_with_budgets(store, "paid", std::slice::from_ref(&fuel)).await;
    let counter = fuel.counter("paid", T0);
    let check = [(counter.clone(), 0)];
    assert_eq!(store.charge_budgets(&check).await.unwrap(), None);
    store
        .add_budget_usage(&[(counter.clone(), 900)])
        .await
        .unwrap();
    assert_eq!(store.charge_budgets(&check).await.unwrap(), None);
    store
        .add_budget_usage(&[(counter.clone(), 900)])
        .await
        .unwrap();
    assert_eq!(store.budget_usage(&[counter]).await.unwrap(), [1_800]);
    assert_eq!(store.charge_budgets(&check).await.unwrap(), Some(0));
}

async fn concurrent_charges_never_pass_the_limit(store: &dyn Store) {
    let requests = budget(BudgetMetric::OutboundRequests, None, BudgetPeriod::Hour, 5);
    module_with_budgets(store, "paid", std::slice::from_ref(&requests)).await;
    let counter = requests.counter("paid", T0);
    let charges = [(counter.clone(), 1)];
    let outcomes =
        futures_util::future::join_all((0..40).map(|_| store.charge_budgets(&charges))).await;
    let taken = outcomes
        .into_iter()
        .filter(|outcome| outcome.as_ref().unwrap().is_none())
        .count();
    assert_eq!(taken, 5);
    assert_eq!(store.budget_usage(&[counter]).await.unwrap(), [5]);
}

async fn budget_counters_of_old_windows_are_pruned_and_go_with_their_module(store: &dyn Store) {
    let runs = budget(BudgetMetric::Runs, None, BudgetPeriod::Hour, 5);
    module_with_budgets(store, "paid", std::slice::from_ref(&runs)).await;
    let old = runs.counter("paid", T0 - 3 * 3_600_000);
    let current = runs.counter("paid", T0);
    for counter in [&old, &current] {
        store
            .charge_budgets(&[((*counter).clone(), 1)])
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .prune_budget_counters(current.window_start)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.budget_usage(&[old, current.clone()]).await.unwrap(),
        [0, 1]
    );
    assert!(store.delete_module("paid", false).await.unwrap());
    assert_eq!(store.budget_usage(&[current]).await.unwrap(), [0]);
}

// ---- alerts ------------------------------------------------------------------------------

fn alert_rule(name: &str) -> crate::domain::alert::AlertRule {
    use crate::domain::alert::{AlertCondition, AlertQuery, AlertRule, AlertState, Op, Severity};
    AlertRule {
        id: new_id(),
        name: name.to_owned(),
        query: AlertQuery::parse(
            &json!({"source": "endpoint", "endpoint": "e", "measure": "down"}),
        )
        .unwrap(),
        condition: AlertCondition {
            op: Op::Ge,
            value: 1.0,
        },
        for_ms: 0,
        severity: Severity::Critical,
        labels: BTreeMap::from([("team".to_owned(), "ops".to_owned())]),
        channels: vec!["ch-1".to_owned(), "ch-2".to_owned()],
        description: Some("down".to_owned()),
        enabled: true,
        state: AlertState::Ok,
        since: T0,
        value: None,
        created_at: T0,
        updated_at: T0,
    }
}

fn outbox_row(
    rule_id: Option<&str>,
    channel_id: &str,
    at: Millis,
) -> crate::domain::alert::Notification {
    crate::domain::alert::Notification {
        id: new_id(),
        rule_id: rule_id.map(str::to_owned),
        channel_id: channel_id.to_owned(),
        kind: "firing".to_owned(),
        payload: json!({"kind": "firing"}),
        status: crate::domain::alert::NotificationStatus::Pending,
        attempts: Vec::new(),
        next_attempt_at: at,
        expires_at: at + DAY,
        delivered_at: None,
        created_at: at,
    }
}

fn firing(rule: &crate::domain::alert::AlertRule, at: Millis) -> crate::domain::alert::Transition {
    use crate::domain::alert::{AlertState, Change, HistoryEntry, Transition};
    Transition {
        rule_id: rule.id.clone(),
        from: (rule.state, rule.since),
        to: (AlertState::Firing, at),
        value: Some(3.0),
        entry: HistoryEntry {
            id: new_id(),
            rule_id: rule.id.clone(),
            rule: rule.name.clone(),
            change: Change::Firing,
            severity: rule.severity,
            value: Some(3.0),
            labels: rule.labels.clone(),
            silenced: false,
            at,
        },
        notifications: rule
            .channels
            .iter()
            .map(|channel| outbox_row(Some(&rule.id), channel, at))
            .collect(),
    }
}

async fn an_alert_transition_is_written_whole_once_and_only_under_the_lease(store: &dyn Store) {
    use super::alerts::Fence;
    use crate::domain::alert::AlertState;
    let alerts = store.alerts();
    let rule = alert_rule("api-down");
    alerts.insert_rule(&rule).await.unwrap();
    assert!(matches!(
        alerts.insert_rule(&alert_rule("api-down")).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(alerts.get_rule(&rule.id).await.unwrap(), Some(rule.clone()));
    let token = store
        .acquire_lease("alerts", "node-a", T0, 5 * SECOND)
        .await
        .unwrap()
        .unwrap();
    let at = T0 + SECOND;
    let fence = |holder, token| Fence {
        lease: "alerts",
        holder,
        token,
        now: at,
    };
    let transition = firing(&rule, at);

    // Another node, or a stale token, writes nothing.
    assert_eq!(
        alerts
            .record_transition(&transition, fence("node-b", token))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        alerts
            .record_transition(&transition, fence("node-a", LeaseToken(token.0 + 1)))
            .await
            .unwrap(),
        None
    );
    assert!(
        alerts
            .history(0, Millis::MAX, None, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    assert_eq!(
        alerts
            .record_transition(&transition, fence("node-a", token))
            .await
            .unwrap(),
        Some(true)
    );
    let stored = alerts.get_rule(&rule.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.since, stored.value),
        (AlertState::Firing, at, Some(3.0))
    );
    // The same decision made twice (a second evaluator read the old state) is refused whole.
    let again = firing(&rule, at);
    assert_eq!(
        alerts
            .record_transition(&again, fence("node-a", token))
            .await
            .unwrap(),
        Some(false)
    );
    let history = alerts
        .history(0, Millis::MAX, Some(&rule.id), None, 10)
        .await
        .unwrap();
    assert_eq!(history.items, std::slice::from_ref(&transition.entry));
    let outbox = alerts.notifications(Some(&rule.id), 10).await.unwrap();
    assert_eq!(outbox.len(), 2);
    assert_eq!(alerts.due_notifications(at, 10).await.unwrap().len(), 2);

    // Editing the definition leaves the state alone.
    let renamed = crate::domain::alert::AlertRule {
        name: "api-is-down".to_owned(),
        ..rule.clone()
    };
    assert!(alerts.update_rule(&renamed).await.unwrap());
    let stored = alerts.get_rule(&rule.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.name.as_str(), stored.state),
        ("api-is-down", AlertState::Firing)
    );
    // Deleting the rule drops what it has not sent; its history stays.
    assert!(alerts.delete_rule(&rule.id).await.unwrap());
    assert!(
        alerts
            .notifications(Some(&rule.id), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        alerts
            .history(0, Millis::MAX, None, None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

async fn an_outbox_row_is_retried_then_settled_and_only_under_the_lease(store: &dyn Store) {
    use super::alerts::{AttemptOutcome, Fence};
    use crate::domain::alert::{Attempt, NotificationStatus};
    let alerts = store.alerts();
    let row = outbox_row(None, "ch-1", T0);
    alerts.insert_notification(&row).await.unwrap();
    let token = store
        .acquire_lease("alerts", "node-a", T0, 5 * SECOND)
        .await
        .unwrap()
        .unwrap();
    let fence = |holder, now| Fence {
        lease: "alerts",
        holder,
        token,
        now,
    };
    let failed = Attempt {
        at: T0,
        status: Some(500),
        error: Some("answered 500".to_owned()),
    };
    assert_eq!(
        alerts
            .record_attempt(
                &row.id,
                &failed,
                AttemptOutcome::RetryAt(T0 + 2 * SECOND),
                fence("node-b", T0)
            )
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        alerts
            .record_attempt(
                &row.id,
                &failed,
                AttemptOutcome::RetryAt(T0 + 2 * SECOND),
                fence("node-a", T0)
            )
            .await
            .unwrap(),
        Some(true)
    );
    assert!(
        alerts
            .due_notifications(T0 + SECOND, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = alerts.due_notifications(T0 + 2 * SECOND, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].attempts, std::slice::from_ref(&failed));

    let delivered = Attempt {
        at: T0 + 2 * SECOND,
        status: Some(200),
        error: None,
    };
    assert_eq!(
        alerts
            .record_attempt(
                &row.id,
                &delivered,
                AttemptOutcome::Delivered,
                fence("node-a", T0 + 2 * SECOND)
            )
            .await
            .unwrap(),
        Some(true)
    );
    // A second sender's late answer changes nothing once delivered.
    assert_eq!(
        alerts
            .record_attempt(
                &row.id,
                &delivered,
                AttemptOutcome::Delivered,
                fence("node-a", T0 + 2 * SECOND)
            )
            .await
            .unwrap(),
        Some(false)
    );
    let stored = alerts.get_notification(&row.id).await.unwrap().unwrap();
    assert_eq!(stored.status, NotificationStatus::Delivered);
    assert_eq!(stored.delivered_at, Some(T0 + 2 * SECOND));
    assert_eq!(stored.attempts, [failed, delivered]);
    assert!(
        alerts
            .due_notifications(Millis::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn alert_history_and_settled_notifications_past_their_retention_are_pruned(
    store: &dyn Store,
) {
    use super::alerts::Fence;
    let now = crate::domain::now_millis();
    let alerts = store.alerts();
    let old = now - 100 * DAY;
    let rule = crate::domain::alert::AlertRule {
        since: old - SECOND,
        ..alert_rule("old")
    };
    alerts.insert_rule(&rule).await.unwrap();
    let token = store
        .acquire_lease("alerts", "node-a", now, 5 * SECOND)
        .await
        .unwrap()
        .unwrap();
    let mut transition = firing(&rule, old);
    transition.notifications[0].status = crate::domain::alert::NotificationStatus::Suppressed;
    let fence = Fence {
        lease: "alerts",
        holder: "node-a",
        token,
        now,
    };
    assert_eq!(
        alerts.record_transition(&transition, fence).await.unwrap(),
        Some(true)
    );
    let pruned = prune_all(store, &Retention::default(), now).await;
    // The history entry and the suppressed row go; the row still pending stays.
    assert_eq!(pruned.alerts, 2, "{pruned:?}");
    assert!(
        alerts
            .history(0, Millis::MAX, None, None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let left = alerts.notifications(None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].status,
        crate::domain::alert::NotificationStatus::Pending
    );
}

// ---- backends ------------------------------------------------------------------------

/// Runs each listed behaviour against a fresh database from `$open`, which returns the
/// store and a guard that cleans the database up when dropped.
macro_rules! backend_tests {
    ($backend:ident, $open:path, [$($(#[$attr:meta])* $test:ident),* $(,)?]) => {
        mod $backend {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (store, _guard) = $open().await;
                    super::$test(&store).await;
                }
            )*
        }
    };
}

async fn fresh_sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("data").join("runcell.db"))
        .await
        .unwrap();
    (store, dir)
}

async fn fresh_sqlite_in_memory() -> (SqliteStore, ()) {
    (SqliteStore::open_in_memory().await.unwrap(), ())
}

/// Runs every behaviour against a backend: the one list, so a behaviour added here is
/// required of every backend.
macro_rules! every_behaviour {
    ($backend:ident, $open:path) => {
        backend_tests!(
            $backend,
            $open,
            [
                a_fresh_store_answers_pings,
                an_upload_reads_back_compiling_then_finished_once_and_is_forgotten_after_a_day,
                the_first_upload_creates_an_enabled_module,
                a_new_version_becomes_current_and_old_ones_stay_listed_newest_first,
                reuploading_known_bytes_makes_them_current_without_a_duplicate,
                identical_bytes_of_two_modules_outlive_the_deletion_of_one,
                a_module_can_be_disabled_and_enabled_again,
                an_approval_binds_to_the_bytes_it_approved,
                an_approval_reaches_only_the_version_its_approver_saw,
                an_approval_records_the_outbound_hosts_granted_until_the_next_one,
                a_pinned_key_approves_uploads_until_it_is_unpinned,
                deleting_a_module_without_its_jobs_leaves_them_and_removes_its_data,
                deleting_a_module_with_its_jobs_keeps_their_executions,
                a_job_reads_back_as_it_was_written,
                a_jobs_settings_read_back_with_their_secrets_still_sealed,
                a_job_name_is_taken_only_once,
                renaming_a_job_onto_a_taken_name_conflicts,
                a_deleted_job_is_gone,
                jobs_list_oldest_first_a_page_at_a_time,
                jobs_are_fetched_by_id_skipping_missing_ones,
                only_enabled_scheduled_jobs_that_are_due_are_returned,
                only_enabled_jobs_with_an_event_pattern_are_subscribed,
                the_jobs_using_a_module_are_named,
                an_enqueued_execution_reads_back_queued_with_what_it_was_given,
                manual_runs_take_the_jobs_names_and_stored_input_unless_given_one,
                manual_runs_of_a_job_that_cannot_run_queue_nothing,
                manual_runs_started_on_a_node_run_there_alone_under_its_lease,
                large_inputs_are_stored_once_and_read_back_whole,
                an_input_at_the_inline_limit_stays_in_its_row,
                a_keyed_request_creates_its_runs_once_and_its_retries_get_them_back,
                concurrent_requests_under_one_key_create_one_batch,
                expired_keys_are_deleted_a_few_at_a_time_by_later_keyed_requests,
                a_claim_tells_the_revision_of_each_job_which_grows_with_every_change,
                a_cron_tick_fires_once,
                a_tick_repeated_within_one_batch_is_created_once,
                two_schedulers_firing_one_tick_at_once_create_one_execution,
                enqueueing_the_same_execution_twice_creates_it_once,
                a_claim_takes_only_queued_due_executions_and_only_once,
                results_are_recorded_once_with_their_logs,
                a_result_for_an_execution_never_claimed_is_ignored,
                two_results_for_one_execution_in_one_batch_record_the_first,
                logs_are_read_in_order_after_a_position,
                cancelling_a_queued_execution_ends_it_before_it_starts,
                cancelling_a_running_execution_flags_it_for_its_worker,
                cancelling_an_ended_or_unknown_execution_changes_nothing,
                a_requeued_execution_can_be_claimed_again,
                a_requeued_execution_that_was_asked_to_stop_ends_cancelled,
                requeueing_leaves_ended_executions_alone,
                an_expired_lease_of_a_begun_run_is_found_and_failed_once,
                an_expired_run_whose_handler_never_began_goes_back_to_the_queue,
                an_expired_run_that_never_began_and_was_cancelled_ends_cancelled,
                marking_handlers_began_leaves_ended_executions_alone,
                a_lease_expiry_and_its_retry_commit_together,
                a_recorded_failure_and_its_retry_commit_together,
                a_renewed_lease_does_not_expire,
                executions_list_newest_first_by_job_and_status_a_page_at_a_time,
                every_status_lists_on_its_own_newest_first,
                the_reconciler_sees_due_queued_executions_oldest_first,
                queued_executions_are_counted_by_whether_they_are_due,
                batches_larger_than_one_statement_are_handled_whole,
                events_list_newest_first_by_topic_a_page_at_a_time,
                kv_values_are_scoped_to_their_module,
                kv_keys_list_sorted_by_prefix_up_to_a_limit,
                a_kv_prefix_with_wildcards_matches_only_itself,
                kv_keys_beyond_ascii_sort_by_code_point,
                a_module_s_series_are_admitted_up_to_its_bound_and_refusals_counted,
                concurrent_admissions_never_pass_the_bound,
                rollups_hold_exactly_what_the_samples_merged_one_by_one_give,
                samples_of_a_series_that_is_gone_are_not_written,
                series_list_by_name_and_labels_with_their_latest_value,
                text_with_nul_characters_is_recorded,
                nodes_list_by_id_with_their_latest_heartbeat,
                a_held_lease_is_refused_to_anyone_else_until_it_expires,
                renewing_a_lease_keeps_its_token_and_extends_it,
                a_takeover_after_expiry_bumps_the_token,
                a_released_lease_is_free_at_once_under_a_new_token,
                a_lease_holder_is_named_while_its_lease_lasts,
                two_would_be_leaders_racing_for_a_free_lease_get_one_lease,
                the_lease_holder_advances_every_schedule_at_once,
                a_stale_holder_s_fenced_write_is_refused,
                a_fenced_write_after_the_lease_expired_or_was_released_is_refused,
                every_final_status_is_counted_once_at_every_step,
                expired_history_goes_and_what_is_not_final_stays,
                a_job_keeps_its_own_days_or_only_its_newest,
                usage_points_merge_into_coarser_steps_exactly,
                outbound_requests_are_counted_per_module_and_host_once,
                route_requests_add_to_their_modules_outbound_points,
                an_endpoint_reads_back_as_written_and_its_name_is_taken_once,
                an_interval_is_claimed_once_and_only_by_the_lease_holder,
                a_check_is_recorded_once_per_due_time_and_counted_in_uptime,
                endpoint_checks_past_their_retention_are_pruned,
                budgets_read_back_with_their_module_until_replaced,
                a_budget_counter_refuses_past_its_limit_until_the_next_window,
                charges_of_several_budgets_are_taken_all_or_none,
                fuel_is_added_past_the_limit_and_then_refuses_a_check,
                concurrent_charges_never_pass_the_limit,
                budget_counters_of_old_windows_are_pruned_and_go_with_their_module,
                an_alert_transition_is_written_whole_once_and_only_under_the_lease,
                an_outbox_row_is_retried_then_settled_and_only_under_the_lease,
                alert_history_and_settled_notifications_past_their_retention_are_pruned,
                #[ignore = "a measurement; run with --release -- --ignored --nocapture"]
                hot_path_throughput_of_20000_executions,
            ]
        );
    };
}

every_behaviour!(sqlite, super::fresh_sqlite);
every_behaviour!(postgres, super::fresh_postgres);

/// The server the PostgreSQL tests create their databases on.
fn postgres_admin_url() -> String {
    std::env::var("RUNCELL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced by `database`, its parameters kept.
fn with_database(url: &str, database: &str) -> String {
    let (base, params) = url
        .split_once('?')
        .map_or((url, None), |(b, p)| (b, Some(p)));
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match params {
        Some(params) => format!("{server}/{database}?{params}"),
        None => format!("{server}/{database}"),
    }
}

/// A database of its own for one test, dropped when this guard is dropped: at the end
/// of the test, and also when the test panics (the guard drops while unwinding).
pub(crate) struct PostgresDatabase {
    admin_url: String,
    name: String,
    pub(crate) url: String,
}

impl PostgresDatabase {
    pub(super) async fn create() -> Self {
        use sqlx::{Connection, Executor};
        let admin_url = postgres_admin_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| {
                let server = admin_url
                    .rsplit_once('@')
                    .map_or(admin_url.as_str(), |(_, s)| s);
                panic!(
                    "the PostgreSQL store tests need a server: cannot connect to {server} \
                     ({err}); start one or set RUNCELL_TEST_POSTGRES_URL"
                )
            });
        let name = format!("runcell_test_{}", uuid::Uuid::now_v7().simple());
        // The copy of the template fails while anyone else is connected to it (another
        // tool on a shared server, briefly): worth a few short retries, no more.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match admin
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
            {
                Ok(_) => break,
                Err(err) if attempts < 5 && err.to_string().contains("accessed by other users") => {
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempts)).await;
                }
                Err(err) => panic!("cannot create database {name}: {err}"),
            }
        }
        let _ = admin.close().await;
        Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        // FORCE ends the store's connections still open.
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(err) = run_while_dropping(&self.admin_url, &[statement]) {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

/// Runs `statements` at `url` from a `Drop`, at the end of a test or while it unwinds:
/// on a thread and runtime of its own, since the test's runtime may be shutting down and
/// cannot be blocked on from inside. Joined, so what they remove is gone when the test
/// ends. Never panics: a panic while unwinding would abort the whole test run.
fn run_while_dropping(url: &str, statements: &[String]) -> Result<(), String> {
    use sqlx::{Connection, Executor};
    let url = url.to_owned();
    let statements = statements.to_vec();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| err.to_string())?;
        runtime.block_on(async {
            let mut admin = sqlx::PgConnection::connect(&url)
                .await
                .map_err(|err| err.to_string())?;
            for statement in statements {
                admin
                    .execute(sqlx::AssertSqlSafe(statement))
                    .await
                    .map_err(|err| err.to_string())?;
            }
            let _ = admin.close().await;
            Ok::<(), String>(())
        })
    })
    .join()
    .map_err(|_| "the thread panicked".to_owned())?
}

/// A login-less role of its own for one test, dropped with what it was granted when
/// this guard is dropped (before the database it was granted in).
struct PostgresRole {
    database_url: String,
    name: String,
}

impl Drop for PostgresRole {
    fn drop(&mut self) {
        let statements = [
            format!("DROP OWNED BY {}", self.name),
            format!("DROP ROLE {}", self.name),
        ];
        if let Err(err) = run_while_dropping(&self.database_url, &statements) {
            eprintln!("could not drop test role {}: {err}", self.name);
        }
    }
}

#[tokio::test]
async fn a_role_that_may_not_write_wal_messages_starts_runs_durably_instead() {
    use sqlx::{Connection, Executor};
    let (owner, database) = fresh_postgres().await;
    owner
        .install_module_version(
            &manifest("m", "1"),
            "hash-1",
            b"one",
            &VersionUpload::default(),
            T0,
        )
        .await
        .unwrap();
    let job = job("sync", "m");
    owner.insert_job(&job).await.unwrap();
    let role = PostgresRole {
        database_url: database.url.clone(),
        name: format!("runcell_test_{}", uuid::Uuid::now_v7().simple()),
    };
    let mut admin = sqlx::PgConnection::connect(&database.url).await.unwrap();
    for statement in [
        format!("CREATE ROLE {}", role.name),
        format!("GRANT ALL ON SCHEMA public TO {}", role.name),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}", role.name),
        // In this database only: each has its own catalog.
        "REVOKE EXECUTE ON FUNCTION pg_logical_emit_message(boolean, text, text) FROM PUBLIC"
            .to_owned(),
    ] {
        admin.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    let _ = admin.close().await;
    let separator = if database.url.contains('?') { '&' } else { '?' };
    let as_role = format!(
        "{}{separator}options=-c%20role%3D{}",
        database.url, role.name
    );
    let store = PostgresStore::connect(&as_role)
        .await
        .expect("a role without the function still opens the store");
    let runs = [ManualRun {
        id: new_id(),
        input: None,
    }];
    let started = store
        .start_manual(&job.id, &runs, T0, "node-a", T0 + 30 * SECOND, None)
        .await
        .unwrap()
        .created()
        .expect("the job can run");
    assert_eq!(started.len(), 1);
    store.flush().await.expect("nothing to wait for");
    assert_eq!(
        status_of(&store, &runs[0].id).await,
        ExecutionStatus::Running
    );
}

pub(crate) async fn fresh_postgres() -> (PostgresStore, PostgresDatabase) {
    let database = PostgresDatabase::create().await;
    let store = PostgresStore::connect(&database.url)
        .await
        .unwrap_or_else(|err| panic!("cannot open {}: {err}", database.name));
    (store, database)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_on_a_fresh_postgres_database_both_migrate_it() {
    use sqlx::Connection;
    let database = PostgresDatabase::create().await;
    let connects = (0..3).map(|_| PostgresStore::connect(&database.url));
    let stores: Vec<PostgresStore> = futures_util::future::join_all(connects)
        .await
        .into_iter()
        .map(|store| store.expect("every node starts"))
        .collect();
    let written = job("nightly", "sync");
    stores[0].insert_job(&written).await.unwrap();
    for store in &stores {
        assert_eq!(
            store.get_job(&written.id).await.unwrap().as_ref(),
            Some(&written)
        );
    }
    let mut conn = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut expected: Vec<i64> = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/postgres"
    ))
    .unwrap()
    .filter_map(|entry| {
        let name = entry.ok()?.file_name().into_string().ok()?;
        name.split('_').next()?.parse().ok()
    })
    .collect();
    expected.sort_unstable();
    assert_eq!(applied, expected, "each migration applied once");
    let _ = conn.close().await;
}

#[tokio::test]
async fn an_unreachable_postgres_fails_fast_with_a_clear_error() {
    let started = Instant::now();
    // Nothing listens on port 1: refused at once.
    let err = PostgresStore::connect("postgres://runcell:s3cret@127.0.0.1:1/runcell")
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1/runcell"), "{message}");
    assert!(
        !message.contains("s3cret"),
        "the password leaked: {message}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let err = PostgresStore::connect("postgres://127.0.0.1:port/runcell")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid PostgreSQL URL"), "{err}");
}

#[test]
fn a_test_database_url_keeps_the_server_and_parameters() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/postgres", "x"),
        "postgres://u:p@h:5432/x"
    );
    assert_eq!(
        with_database("postgres://h/postgres?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h:1", "x"), "postgres://h:1/x");
}

// The in-memory variant shares one connection between reads and writes; a few
// behaviours that lean on concurrency and batching show it does not deadlock.
backend_tests!(
    sqlite_in_memory,
    super::fresh_sqlite_in_memory,
    [
        a_fresh_store_answers_pings,
        the_first_upload_creates_an_enabled_module,
        two_schedulers_firing_one_tick_at_once_create_one_execution,
        results_are_recorded_once_with_their_logs,
        cancelling_a_running_execution_flags_it_for_its_worker,
        batches_larger_than_one_statement_are_handled_whole,
    ]
);

#[tokio::test]
async fn a_sqlite_file_keeps_its_data_when_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("deeper").join("runcell.db");
    let written = job("nightly", "sync");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.insert_job(&written).await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.get_job(&written.id).await.unwrap(), Some(written));
}

// ---- migration 0014: approvals bound to code -----------------------------------------

/// Rows as a deployment from before migration 0014 holds them: module `sync` with an old
/// version (`hash-1`) and its current one (`hash-2`), whose key-value request an admin
/// approved. `blob` is the backend's literal for a one-byte blob.
fn rows_before_0014(blob: &str) -> Vec<String> {
    let approved = serde_json::to_string(&manifest("sync", "2").capabilities).unwrap();
    let old = serde_json::to_string(&manifest("sync", "1")).unwrap();
    let current = serde_json::to_string(&manifest("sync", "2")).unwrap();
    vec![
        format!(
            "INSERT INTO module_blobs (content_hash, bytes) VALUES ('hash-1', {blob}), ('hash-2', {blob})"
        ),
        format!(
            "INSERT INTO modules (name, status, current_hash, created_at, updated_at, approved_capabilities) \
             VALUES ('sync', 'ENABLED', 'hash-2', {T0}, {T0}, '{approved}')"
        ),
        format!(
            "INSERT INTO module_versions (module, version, content_hash, size_bytes, manifest, uploaded_at) \
             VALUES ('sync', '1', 'hash-1', 1, '{old}', {T0}), ('sync', '2', 'hash-2', 1, '{current}', {})",
            T0 + SECOND
        ),
    ]
}

/// What migration 0014 must have made of [`rows_before_0014`]: the running version keeps
/// running; the old one was never vouched for and would wait.
async fn running_installs_keep_running_after_0014(store: &dyn Store) {
    let record = store.get_module("sync").await.unwrap().unwrap();
    assert_eq!(record.current.content_hash, "hash-2");
    assert!(
        record
            .current
            .awaiting_approval(&record.approved)
            .is_empty(),
        "{record:?}"
    );
    let approval = record.current.approval.unwrap();
    assert_eq!(approval.by, "approved before approvals bound to code");
    assert_eq!(approval.at, T0 + SECOND);
    assert_eq!(record.current.uploaded_by, None);
    let versions = store.list_module_versions("sync").await.unwrap();
    let old = versions
        .iter()
        .find(|v| v.content_hash == "hash-1")
        .unwrap();
    assert_eq!(old.approval, None);
    assert_eq!(
        old.awaiting_approval(&record.approved),
        ["new code uploaded before approvals were bound to code"]
    );
}

/// A SQLite database file migrated up to `version`, with `statements` run on it, as a
/// deployment of that version would have left it; its directory goes with the first half.
async fn sqlite_migrated_to(
    version: i64,
    statements: Vec<String>,
) -> (tempfile::TempDir, std::path::PathBuf) {
    use sqlx::Executor;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runcell.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate!("../migrations/sqlite")
        .run_to(version, &pool)
        .await
        .unwrap();
    for statement in statements {
        pool.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    pool.close().await;
    (dir, path)
}

/// The same for a PostgreSQL database of its own.
async fn postgres_migrated_to(version: i64, statements: Vec<String>) -> PostgresDatabase {
    use sqlx::Executor;
    let database = PostgresDatabase::create().await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::migrate!("../migrations/postgres")
        .run_to(version, &pool)
        .await
        .unwrap();
    for statement in statements {
        pool.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    pool.close().await;
    database
}

#[tokio::test]
async fn migrating_sqlite_to_0014_keeps_the_current_version_of_each_module_approved() {
    let (_dir, path) = sqlite_migrated_to(13, rows_before_0014("X'00'")).await;
    let store = SqliteStore::open(&path).await.unwrap();
    running_installs_keep_running_after_0014(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_postgres_to_0014_keeps_the_current_version_of_each_module_approved() {
    let database = postgres_migrated_to(13, rows_before_0014("'\\x00'::bytea")).await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    running_installs_keep_running_after_0014(&store).await;
}

// ---- migration 0017: large inputs stored once ----------------------------------------

/// A job whose stored input is large, as a deployment from before migration 0017 holds
/// it; `enabled` is the backend's literal for true.
fn rows_before_0017(enabled: &str) -> Vec<String> {
    let input = large_input("before", 16).to_string();
    vec![format!(
        "INSERT INTO jobs (id, name, module, job, input, enabled, max_attempts, created_at, \
         updated_at) VALUES ('job-big', 'big', 'm', 'work', '{input}', {enabled}, 1, {T0}, {T0})"
    )]
}

/// What opening a store must have made of [`rows_before_0017`]: the job's input stored
/// once, for its manual runs to refer to.
async fn large_job_inputs_from_before_0017_are_stored_once(store: &dyn Store) {
    install_m(store).await;
    let runs = fresh_runs(20);
    assert_eq!(
        store
            .enqueue_manual("job-big", &runs, T0, None)
            .await
            .unwrap(),
        ManualOutcome::Created(run_ids(&runs))
    );
    let counts = store.storage_counts().await.unwrap();
    assert_eq!(counts.stored_inputs, 1, "{counts:?}");
    assert_eq!(counts.inline_input_bytes, 0, "{counts:?}");
    assert_eq!(
        store
            .get_execution(&runs[19].id)
            .await
            .unwrap()
            .unwrap()
            .input,
        large_input("before", 16)
    );
}

#[tokio::test]
async fn migrating_sqlite_to_0017_stores_large_job_inputs_once() {
    let (_dir, path) = sqlite_migrated_to(16, rows_before_0017("1")).await;
    let store = SqliteStore::open(&path).await.unwrap();
    large_job_inputs_from_before_0017_are_stored_once(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_postgres_to_0017_stores_large_job_inputs_once() {
    let database = postgres_migrated_to(16, rows_before_0017("true")).await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    large_job_inputs_from_before_0017_are_stored_once(&store).await;
}

// ---- migration 0021: metric series ------------------------------------------------------

/// Samples as a deployment from before migration 0021 holds them, one row each: one
/// series recorded with its labels in two orders, one without labels, and one of a
/// module since deleted.
fn rows_before_0021() -> Vec<String> {
    vec![format!(
        "INSERT INTO metric_samples (module, name, labels, value, ts) VALUES \
         ('m', 'latency', '[[\"region\",\"eu\"],[\"env\",\"prod\"]]', 2.0, {T0}), \
         ('m', 'errors', '[]', 1.0, {T0}), \
         ('m', 'latency', '[[\"env\",\"prod\"],[\"region\",\"eu\"]]', 4.0, {}), \
         ('gone', 'latency', '[]', 7.0, {T0})",
        T0 + SECOND
    )]
}

/// What opening a store must have made of [`rows_before_0021`], however often it opens.
async fn metric_samples_from_before_0021_are_in_their_series(store: &dyn Store) {
    let series = store.metric_series("m", None).await.unwrap();
    let listed: Vec<(&str, String, Latest)> = series
        .iter()
        .map(|s| (s.name.as_str(), labels_text(&s.labels), s.last))
        .collect();
    assert_eq!(
        listed,
        [
            ("errors", "{}".to_owned(), Some((1.0, T0))),
            (
                "latency",
                labels(&[("env", "prod"), ("region", "eu")]),
                Some((4.0, T0 + SECOND))
            ),
        ]
    );
    let rollups = store
        .metric_rollups(&[series[1].id], MINUTE_MS, T0 - DAY, T0 + DAY)
        .await
        .unwrap();
    assert_eq!(rollups.len(), 1);
    assert_eq!((rollups[0].2.samples, rollups[0].2.sum), (2, 6.0));
    let modules: Vec<(String, i64)> = store
        .metric_summaries(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.module, s.series))
        .collect();
    assert_eq!(modules, [("gone".to_owned(), 1), ("m".to_owned(), 2)]);
}

#[tokio::test]
async fn migrating_sqlite_to_0021_moves_metric_samples_into_series_once() {
    let (_dir, path) = sqlite_migrated_to(19, rows_before_0021()).await;
    let store = SqliteStore::open(&path).await.unwrap();
    metric_samples_from_before_0021_are_in_their_series(&store).await;
    drop(store);
    let store = SqliteStore::open(&path).await.unwrap();
    metric_samples_from_before_0021_are_in_their_series(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_postgres_to_0021_moves_metric_samples_into_series_once() {
    let database = postgres_migrated_to(19, rows_before_0021()).await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    metric_samples_from_before_0021_are_in_their_series(&store).await;
    let store = PostgresStore::connect(&database.url).await.unwrap();
    metric_samples_from_before_0021_are_in_their_series(&store).await;
}
