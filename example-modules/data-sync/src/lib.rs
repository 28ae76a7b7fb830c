//! `data-sync`: keeps a copy of upstream records in the module's key-value store, reports
//! on them daily and checks its own health. It also serves `GET /m/data-sync/status`
//! (see [`routes`]) to callers with API credentials.
//!
//! Deterministic by design: no clock, no randomness, no sleeps. Every timestamp it writes
//! is the run's `scheduled_at_ms`, so a retried attempt of a cron tick writes the same
//! values. The decisions (validation, the summary, the health verdict, date formatting)
//! are pure functions in [`logic`], tested natively; the job functions only move data
//! between them and the host.

use runcell_sdk::{Context, JobError, NoInput, config, events, kv, metrics};
use serde::{Deserialize, Serialize};

pub mod logic;
pub mod routes;

use logic::{Check, Cursor, HealthReport, Report, StoredRecord, SyncInput, SyncOutput};

/// Key of the sync cursor.
pub const CURSOR_KEY: &str = "sync/cursor";
/// Prefix of the stored records; a record lives under `record/{id}`.
pub const RECORD_PREFIX: &str = "record/";
/// Most records `daily-report` reads, bounding its work on a huge store.
pub const MAX_REPORTED_RECORDS: u32 = 10_000;
/// Topic `daily-report` publishes on.
pub const REPORT_TOPIC: &str = "report.generated";

/// Validates a batch, stores every record and the cursor, and records the batch size.
pub fn hourly_sync(ctx: &Context, input: Option<SyncInput>) -> Result<SyncOutput, JobError> {
    let records = input.map(|input| input.records).unwrap_or_default();
    runcell_sdk::info!(
        "sync started",
        records = records.len(),
        attempt = ctx.attempt(),
        trigger = ctx.trigger()
    );
    logic::validate_batch(&records).map_err(JobError::invalid_input)?;

    let synced_at = ctx.scheduled_at().to_rfc3339();
    for record in &records {
        kv::set(
            &record_key(&record.id),
            &StoredRecord::new(record, &synced_at),
        )?;
    }
    let previous: Option<Cursor> = kv::get(CURSOR_KEY)?;
    let cursor = Cursor::advance(previous.as_ref(), &synced_at, records.len());
    kv::set(CURSOR_KEY, &cursor)?;
    metrics::observe("data_sync.records", records.len() as f64, &[])?;

    runcell_sdk::info!(
        "sync completed",
        records_processed = records.len(),
        total_syncs = cursor.total_syncs,
        synced_at
    );
    Ok(SyncOutput {
        records_processed: records.len(),
        synced_at,
    })
}

/// Summarizes the stored records and publishes the summary on `report.generated`.
pub fn daily_report(ctx: &Context, _input: NoInput) -> Result<Report, JobError> {
    let keys = kv::list_keys(RECORD_PREFIX, MAX_REPORTED_RECORDS)?;
    if keys.len() >= MAX_REPORTED_RECORDS as usize {
        runcell_sdk::warn!(
            "record limit reached; the report covers the first records only",
            limit = MAX_REPORTED_RECORDS
        );
    }
    let mut values = Vec::with_capacity(keys.len());
    for key in &keys {
        // A key removed between listing and reading is simply not reported.
        if let Some(record) = kv::get::<ValueOnly>(key)? {
            values.push(record.value);
        }
    }
    let cursor: Option<Cursor> = kv::get(CURSOR_KEY)?;
    let report = Report::summarize(
        &values,
        cursor.map(|cursor| cursor.last_synced_at),
        ctx.scheduled_at().to_rfc3339(),
    );
    events::publish(REPORT_TOPIC, &report)?;
    runcell_sdk::info!(
        "report generated",
        records = report.records,
        total_value = report.total_value
    );
    Ok(report)
}

/// Checks the `source` setting and that the cursor is readable. A failed check makes the
/// module `degraded`, which is still a successful run.
pub fn health_check(_ctx: &Context, _input: NoInput) -> Result<HealthReport, JobError> {
    let checks = vec![
        Check::config(config::get("source").as_deref()),
        Check::kv(kv::get::<Cursor>(CURSOR_KEY).map_err(|error| error.to_string())),
    ];
    let report = HealthReport::from_checks(checks);
    if report.is_healthy() {
        runcell_sdk::info!("healthy");
    } else {
        let failed: Vec<&str> = report.failed_checks().collect();
        runcell_sdk::warn!("degraded", failed);
    }
    Ok(report)
}

/// The only part of a stored record the report needs; the rest may change shape freely.
#[derive(Debug, Deserialize, Serialize)]
struct ValueOnly {
    value: f64,
}

fn record_key(id: &str) -> String {
    format!("{RECORD_PREFIX}{id}")
}

runcell_sdk::module! {
    name: "data-sync",
    version: env!("CARGO_PKG_VERSION"),
    description: "Keeps a copy of upstream records, reports on them daily, checks its own health and serves its sync status.",
    capabilities: {
        key_value: true,
        publishes: [REPORT_TOPIC],
    },
    settings: [
        {
            name: "source",
            description: "Where the records come from, as health-check reports it.",
            jobs: ["health-check"],
        },
    ],
    routes: {
        handler: routes::serve,
        access: authenticated,
    },
    jobs: [
        hourly_sync => {
            name: "hourly-sync",
            description: "Validates a batch of records and stores each under record/{id}, with a sync cursor.",
            schedule: "0 * * * *",
            timeout_ms: 5_000,
            input_schema: logic::SYNC_INPUT_SCHEMA,
        },
        daily_report => {
            name: "daily-report",
            description: "Summarizes the stored records and publishes the summary on report.generated.",
            schedule: "0 6 * * *",
            timeout_ms: 30_000,
        },
        health_check => {
            name: "health-check",
            description: "Checks the `source` setting and the key-value store; degraded is still a success.",
            schedule: "*/5 * * * *",
            timeout_ms: 2_000,
        },
    ],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_use_the_prefix() {
        assert_eq!(record_key("a1"), "record/a1");
    }
}
