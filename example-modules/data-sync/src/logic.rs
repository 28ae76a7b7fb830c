//! The decisions of `data-sync`, free of host calls: input and stored shapes, batch
//! validation, the cursor, the report, the health verdict and RFC 3339 formatting.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest record id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// JSON Schema of the `hourly-sync` input, published in the manifest.
pub const SYNC_INPUT_SCHEMA: &str = r#"{
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "records": {
      "type": "array",
      "items": {
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "name", "value"],
        "properties": {
          "id": {"type": "string", "minLength": 1, "maxLength": 128},
          "name": {"type": "string", "minLength": 1},
          "value": {"type": "number"},
          "updatedAt": {"type": "string", "format": "date-time"}
        }
      }
    }
  }
}"#;

/// Input of `hourly-sync`. A missing `records` (or no input at all, as on a cron tick)
/// is an empty batch.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncInput {
    /// The batch, in upstream order.
    #[serde(default)]
    pub records: Vec<Record>,
}

/// One upstream record.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// Upstream id: non-empty, at most 128 characters, unique within a batch.
    pub id: String,
    /// Display name; non-empty.
    pub name: String,
    /// A finite number.
    pub value: f64,
    /// When upstream last changed the record, as upstream reported it.
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// What `hourly-sync` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncOutput {
    /// Size of the stored batch.
    pub records_processed: usize,
    /// The run's scheduled time, RFC 3339 UTC.
    pub synced_at: String,
}

/// A record as stored under `record/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredRecord<'a> {
    /// Upstream id.
    pub id: &'a str,
    /// Display name.
    pub name: &'a str,
    /// The value.
    pub value: f64,
    /// Upstream's change time, if it gave one.
    pub updated_at: Option<&'a str>,
    /// The scheduled time of the sync that stored it.
    pub synced_at: &'a str,
}

impl<'a> StoredRecord<'a> {
    /// `record` as stored by the sync of `synced_at`.
    pub fn new(record: &'a Record, synced_at: &'a str) -> Self {
        Self {
            id: &record.id,
            name: &record.name,
            value: record.value,
            updated_at: record.updated_at.as_deref(),
            synced_at,
        }
    }
}

/// Progress of the syncs, stored under `sync/cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    /// Scheduled time of the last sync, RFC 3339 UTC.
    pub last_synced_at: String,
    /// Number of syncs so far.
    pub total_syncs: u64,
    /// Size of the last batch.
    pub last_batch_size: usize,
}

impl Cursor {
    /// The cursor after a sync of `batch_size` records at `synced_at`.
    pub fn advance(previous: Option<&Cursor>, synced_at: &str, batch_size: usize) -> Self {
        Self {
            last_synced_at: synced_at.to_owned(),
            total_syncs: previous.map_or(0, |cursor| cursor.total_syncs) + 1,
            last_batch_size: batch_size,
        }
    }
}

/// What `GET /m/data-sync/status` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The sync cursor; `null` before the first sync.
    pub cursor: Option<Cursor>,
    /// Number of stored records, counted up to the listing limit.
    pub records: usize,
    /// Whether the count stopped at the listing limit, so there may be more records.
    pub records_capped: bool,
}

impl SyncStatus {
    /// The status from the cursor and the number of record keys listed with `limit`.
    pub fn new(cursor: Option<Cursor>, listed: usize, limit: u32) -> Self {
        Self {
            cursor,
            records: listed,
            records_capped: listed >= limit as usize,
        }
    }
}

/// The first problem found in a batch: which record, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Position of the record in the batch.
    pub index: usize,
    /// The offending field, as spelt in the input.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "records[{}].{}: {}",
            self.index, self.field, self.problem
        )
    }
}

impl std::error::Error for ValidationError {}

/// Checks every record in order and returns the first problem.
pub fn validate_batch(records: &[Record]) -> Result<(), ValidationError> {
    // A BTreeMap rather than a HashMap: no random seed, so no `wasi:random` import.
    let mut first_index_of_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        let error = |field, problem: String| ValidationError {
            index,
            field,
            problem,
        };
        if record.id.is_empty() {
            return Err(error("id", "must not be empty".to_owned()));
        }
        if record.id.chars().count() > MAX_ID_CHARS {
            return Err(error(
                "id",
                format!("must be at most {MAX_ID_CHARS} characters"),
            ));
        }
        if let Some(first) = first_index_of_id.insert(&record.id, index) {
            return Err(error(
                "id",
                format!("duplicates records[{first}].id ({:?})", record.id),
            ));
        }
        if record.name.trim().is_empty() {
            return Err(error("name", "must not be empty".to_owned()));
        }
        if !record.value.is_finite() {
            return Err(error("value", "must be a finite number".to_owned()));
        }
    }
    Ok(())
}

/// What `daily-report` returns and publishes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Number of stored records read.
    pub records: usize,
    /// Sum of their values.
    pub total_value: f64,
    /// Smallest value, `null` without records.
    pub min_value: Option<f64>,
    /// Largest value, `null` without records.
    pub max_value: Option<f64>,
    /// From the sync cursor, `null` before the first sync.
    pub last_synced_at: Option<String>,
    /// The report run's scheduled time, RFC 3339 UTC.
    pub generated_at: String,
}

impl Report {
    /// The report over `values`.
    pub fn summarize(values: &[f64], last_synced_at: Option<String>, generated_at: String) -> Self {
        let min_value = values.iter().copied().reduce(f64::min);
        let max_value = values.iter().copied().reduce(f64::max);
        Self {
            records: values.len(),
            // Not `sum()`: an empty f64 sum is -0.0, which would read oddly as `-0.0`.
            total_value: values.iter().fold(0.0, |total, value| total + value),
            min_value,
            max_value,
            last_synced_at,
            generated_at,
        }
    }
}

/// Overall verdict of `health-check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every check passed.
    Healthy,
    /// At least one check failed; the module may still partly work.
    Degraded,
}

/// One check of `health-check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `config` or `kv`.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found, for an operator.
    pub detail: String,
}

impl Check {
    /// The `config` check over the value of the `source` setting.
    pub fn config(source: Option<&str>) -> Self {
        let (ok, detail) = match source.map(str::trim) {
            None => (false, "setting `source` is missing".to_owned()),
            Some("") => (false, "setting `source` is empty".to_owned()),
            Some(source) => (true, format!("source is {source:?}")),
        };
        Self {
            name: "config",
            ok,
            detail,
        }
    }

    /// The `kv` check over the result of reading the cursor.
    pub fn kv(cursor: Result<Option<Cursor>, String>) -> Self {
        let (ok, detail) = match cursor {
            Ok(Some(cursor)) => (
                true,
                format!(
                    "cursor readable: last sync at {} ({} syncs)",
                    cursor.last_synced_at, cursor.total_syncs
                ),
            ),
            Ok(None) => (true, "reachable; no sync has run yet".to_owned()),
            Err(error) => (false, error),
        };
        Self {
            name: "kv",
            ok,
            detail,
        }
    }
}

/// What `health-check` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// `healthy` when every check passed, else `degraded`.
    pub status: Status,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

impl HealthReport {
    /// The verdict over `checks`.
    pub fn from_checks(checks: Vec<Check>) -> Self {
        let status = if checks.iter().all(|check| check.ok) {
            Status::Healthy
        } else {
            Status::Degraded
        };
        Self { status, checks }
    }

    /// Whether every check passed.
    pub fn is_healthy(&self) -> bool {
        self.status == Status::Healthy
    }

    /// Names of the failed checks.
    pub fn failed_checks(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.checks
            .iter()
            .filter(|check| !check.ok)
            .map(|check| check.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str, value: f64) -> Record {
        Record {
            id: id.to_owned(),
            name: name.to_owned(),
            value,
            updated_at: None,
        }
    }

    fn problem(records: &[Record]) -> String {
        validate_batch(records).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_batch_and_an_empty_batch_pass() {
        validate_batch(&[]).unwrap();
        validate_batch(&[record("a1", "Alpha", 12.5), record("b2", "Beta", -3.0)]).unwrap();
    }

    #[test]
    fn a_non_finite_value_names_the_record_and_field() {
        let batch = [
            record("a", "A", 1.0),
            record("b", "B", 2.0),
            record("c", "C", f64::NAN),
        ];
        assert_eq!(problem(&batch), "records[2].value: must be a finite number");
        assert_eq!(
            problem(&[record("a", "A", f64::INFINITY)]),
            "records[0].value: must be a finite number"
        );
    }

    #[test]
    fn ids_must_be_present_short_and_unique() {
        assert_eq!(
            problem(&[record("", "A", 1.0)]),
            "records[0].id: must not be empty"
        );
        validate_batch(&[record(&"é".repeat(128), "A", 1.0)]).unwrap();
        assert_eq!(
            problem(&[record(&"x".repeat(129), "A", 1.0)]),
            "records[0].id: must be at most 128 characters"
        );
        assert_eq!(
            problem(&[
                record("a", "A", 1.0),
                record("b", "B", 1.0),
                record("a", "C", 1.0)
            ]),
            "records[2].id: duplicates records[0].id (\"a\")"
        );
    }

    #[test]
    fn names_must_not_be_blank() {
        assert_eq!(
            problem(&[record("a", "A", 1.0), record("b", " ", 1.0)]),
            "records[1].name: must not be empty"
        );
    }

    #[test]
    fn the_first_problem_wins() {
        let batch = [record("a", "", f64::NAN), record("", "B", 1.0)];
        assert_eq!(problem(&batch), "records[0].name: must not be empty");
    }

    #[test]
    fn input_uses_camel_case_and_defaults_to_an_empty_batch() {
        let input: SyncInput = serde_json::from_str(
            r#"{"records":[{"id":"a1","name":"Alpha","value":12.5,"updatedAt":"2026-11-28T10:00:00Z"}]}"#,
        )
        .unwrap();
        assert_eq!(
            input.records[0].updated_at.as_deref(),
            Some("2026-11-28T10:00:00Z")
        );
        assert_eq!(
            serde_json::from_str::<SyncInput>("{}").unwrap(),
            SyncInput::default()
        );
        serde_json::from_str::<SyncInput>(r#"{"records":[],"extra":1}"#).unwrap_err();
    }

    #[test]
    fn stored_records_and_the_cursor_have_the_documented_shape() {
        let record = record("a1", "Alpha", 12.5);
        let stored =
            serde_json::to_value(StoredRecord::new(&record, "2026-11-28T10:00:00Z")).unwrap();
        assert_eq!(
            stored,
            serde_json::json!({"id":"a1","name":"Alpha","value":12.5,"updatedAt":null,"syncedAt":"2026-11-28T10:00:00Z"})
        );

        let first = Cursor::advance(None, "2026-11-28T10:00:00Z", 3);
        let second = Cursor::advance(Some(&first), "2026-11-28T11:00:00Z", 0);
        assert_eq!(
            serde_json::to_value(&second).unwrap(),
            serde_json::json!({"lastSyncedAt":"2026-11-28T11:00:00Z","totalSyncs":2,"lastBatchSize":0})
        );
    }

    #[test]
    fn the_status_reports_the_cursor_and_the_record_count() {
        let cursor = Cursor::advance(None, "2026-11-28T10:00:00Z", 2);
        assert_eq!(
            serde_json::to_value(SyncStatus::new(Some(cursor), 2, 10_000)).unwrap(),
            serde_json::json!({
                "cursor": {"lastSyncedAt": "2026-11-28T10:00:00Z", "totalSyncs": 1, "lastBatchSize": 2},
                "records": 2,
                "recordsCapped": false
            })
        );
        assert_eq!(
            serde_json::to_value(SyncStatus::new(None, 0, 10_000)).unwrap(),
            serde_json::json!({"cursor": null, "records": 0, "recordsCapped": false})
        );
        assert!(SyncStatus::new(None, 10_000, 10_000).records_capped);
    }

    #[test]
    fn the_report_summarizes_values() {
        let report = Report::summarize(
            &[12.5, -3.0, 7.0],
            Some("2026-11-28T10:00:00Z".to_owned()),
            "2026-11-29T06:00:00Z".to_owned(),
        );
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            serde_json::json!({
                "records": 3, "totalValue": 16.5, "minValue": -3.0, "maxValue": 12.5,
                "lastSyncedAt": "2026-11-28T10:00:00Z", "generatedAt": "2026-11-29T06:00:00Z"
            })
        );
    }

    #[test]
    fn an_empty_report_has_null_extremes() {
        let report = Report::summarize(&[], None, "1970-01-01T00:00:00Z".to_owned());
        assert_eq!(report.records, 0);
        assert_eq!(serde_json::to_value(&report).unwrap()["totalValue"], 0.0);
        assert!(report.total_value.is_sign_positive());
        assert_eq!((report.min_value, report.max_value), (None, None));
        assert_eq!(report.last_synced_at, None);
    }

    #[test]
    fn health_is_degraded_when_any_check_fails() {
        let healthy =
            HealthReport::from_checks(vec![Check::config(Some("api")), Check::kv(Ok(None))]);
        assert!(healthy.is_healthy());
        assert_eq!(
            serde_json::to_value(&healthy).unwrap(),
            serde_json::json!({"status": "healthy", "checks": [
                {"name": "config", "ok": true, "detail": "source is \"api\""},
                {"name": "kv", "ok": true, "detail": "reachable; no sync has run yet"},
            ]})
        );

        let degraded = HealthReport::from_checks(vec![
            Check::config(Some("  ")),
            Check::kv(Err("key-value store unavailable: down".to_owned())),
        ]);
        assert_eq!(degraded.status, Status::Degraded);
        assert_eq!(
            degraded.failed_checks().collect::<Vec<_>>(),
            ["config", "kv"]
        );
        assert_eq!(Check::config(None).detail, "setting `source` is missing");
    }

    #[test]
    fn the_input_schema_is_json() {
        let schema: serde_json::Value = serde_json::from_str(SYNC_INPUT_SCHEMA).unwrap();
        assert_eq!(schema["properties"]["records"]["type"], "array");
    }
}
