//! Conversions every backend shares between domain values and what a database stores:
//! errors, integers, JSON text, enumerations as text, pages. Pure functions; the
//! mapping of whole rows is in `sql`.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    ClaimedExecution, EarlierRuns, INLINE_INPUT_MAX, IdempotencyKey, ManualOutcome, ManualRun,
    StoreError,
};
use crate::domain::{
    CodeApproval, ExecutionStatus, JobConfig, LogLevel, Millis, Page, Role, Trigger, Uploader,
};

/// The ids of `given` that are in `created`, in the order given and each once: what an
/// insert reports back, since `RETURNING` promises no order.
pub(super) fn in_given_order<'a>(
    given: impl IntoIterator<Item = &'a String>,
    mut created: HashSet<String>,
) -> Vec<String> {
    given
        .into_iter()
        .filter(|id| created.remove(*id))
        .cloned()
        .collect()
}

/// The runs of `given` that were started, in the order given and each once.
pub(super) fn claimed_in_given_order(
    given: &[ManualRun],
    started: Vec<ClaimedExecution>,
) -> Vec<ClaimedExecution> {
    let mut started: HashMap<String, ClaimedExecution> = started
        .into_iter()
        .map(|execution| (execution.id.clone(), execution))
        .collect();
    given
        .iter()
        .filter_map(|run| started.remove(&run.id))
        .collect()
}

/// A database failure, classified: [`StoreError::Unavailable`] when retrying later may
/// succeed (see [`is_unavailable`]), [`StoreError::Database`] when it will not.
pub(super) fn db(err: sqlx::Error) -> StoreError {
    if is_unavailable(&err) {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Database(err.to_string())
    }
}

/// Whether `err` says the database cannot serve now rather than that a statement is
/// wrong: no connection (pool timeout, I/O, TLS, closed pool, a crashed driver worker),
/// a read-only database, a server shutting down or out of resources, or a transaction
/// that lost to a concurrent one. Everything else (syntax, schema, constraints, rows
/// that do not decode) is a fault to fix, and retrying it would only repeat it.
pub(super) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => {
            use sqlx::error::DatabaseError as _;
            if let Some(sqlite) = e.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                let extended = sqlite.code().and_then(|c| c.parse::<i32>().ok());
                extended.is_some_and(|code| SQLITE_UNAVAILABLE.contains(&(code & 0xff)))
            } else if let Some(pg) = e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                postgres_unavailable(pg.code())
            } else {
                false
            }
        }
        _ => false,
    }
}

/// SQLite's primary result codes that mean "not now": `BUSY` (5, another writer held the
/// lock past the busy timeout), `READONLY` (8), `IOERR` (10), `FULL` (13, the disk) and
/// `CANTOPEN` (14).
const SQLITE_UNAVAILABLE: [i32; 5] = [5, 8, 10, 13, 14];

/// PostgreSQL's SQLSTATEs that mean "not now": class 08 (connection exception), 25006
/// (read-only transaction, e.g. a standby), 40001 and 40P01 (serialization failure,
/// deadlock: retry the transaction), class 53 (insufficient resources: disk, memory,
/// connections) and 57P01..57P03 (the server is shutting down or starting).
fn postgres_unavailable(sqlstate: &str) -> bool {
    sqlstate.starts_with("08")
        || sqlstate.starts_with("53")
        || matches!(
            sqlstate,
            "25006" | "40001" | "40P01" | "57P01" | "57P02" | "57P03"
        )
}

pub(super) fn corrupt(column: &str, problem: impl Display) -> StoreError {
    StoreError::Corrupt(format!("{column}: {problem}"))
}

pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Database integers are signed; a `u64` above `i64::MAX` (never a real amount of fuel,
/// bytes or milliseconds) is stored as `i64::MAX`.
pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn json_text<T: Serialize + ?Sized>(
    what: &str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|err| corrupt(what, format!("cannot encode: {err}")))
}

/// A page of at most `limit` items from `fetched`, which holds up to `limit + 1`: the
/// extra one only says that another page exists.
pub(super) fn page<T>(mut fetched: Vec<T>, limit: usize, id: impl Fn(&T) -> &str) -> Page<T> {
    let next_cursor = if fetched.len() > limit {
        fetched.truncate(limit);
        fetched.last().map(|item| id(item).to_owned())
    } else {
        None
    };
    Page {
        items: fetched,
        next_cursor,
    }
}

/// How many rows a listing fetches: one more than the page, to know whether another
/// follows. A limit of zero is read as one, so a page always makes progress.
pub(super) fn page_fetch(limit: u32) -> (usize, i64) {
    let limit = limit.max(1);
    (limit as usize, i64::from(limit) + 1)
}

/// A job's settings as stored (see [`JobConfig::to_stored_json`]). The error names the
/// column, never the text: it holds sealed secrets.
pub(super) fn parse_job_config(text: &str) -> Result<JobConfig, StoreError> {
    JobConfig::from_stored_json(text).map_err(|err| corrupt("config", err))
}

pub(super) fn parse_status(text: &str) -> Result<ExecutionStatus, StoreError> {
    ExecutionStatus::parse(text).ok_or_else(|| corrupt("status", format!("unknown `{text}`")))
}

pub(super) fn parse_trigger(text: &str) -> Result<Trigger, StoreError> {
    [
        Trigger::Manual,
        Trigger::Cron,
        Trigger::Event,
        Trigger::Retry,
    ]
    .into_iter()
    .find(|t| t.as_str() == text)
    .ok_or_else(|| corrupt("trigger", format!("unknown `{text}`")))
}

pub(super) fn parse_level(text: &str) -> Result<LogLevel, StoreError> {
    [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ]
    .into_iter()
    .find(|l| l.as_str() == text)
    .ok_or_else(|| corrupt("level", format!("unknown `{text}`")))
}

/// The schedule updates of [`super::Store::advance_schedules`], one per job: the last
/// one given for it, as if they had been applied in order.
pub(super) fn last_update_per_job(
    updates: &[(String, Option<Millis>)],
) -> Vec<(&str, Option<Millis>)> {
    let mut last: HashMap<&str, Option<Millis>> = HashMap::with_capacity(updates.len());
    for (id, next_run_at) in updates {
        last.insert(id.as_str(), *next_run_at);
    }
    let mut updates: Vec<(&str, Option<Millis>)> = last.into_iter().collect();
    // A fixed order: concurrent writers lock the rows in the same order.
    updates.sort_unstable_by_key(|(id, _)| *id);
    updates
}

/// Who uploaded a version, from its three columns (all `NULL` before migration 0014).
pub(super) fn uploader(
    username: Option<String>,
    role: Option<&str>,
    token: Option<String>,
) -> Result<Option<Uploader>, StoreError> {
    let (Some(username), Some(role)) = (username, role) else {
        return Ok(None);
    };
    let role =
        Role::parse(role).ok_or_else(|| corrupt("uploader_role", format!("unknown `{role}`")))?;
    Ok(Some(Uploader {
        username,
        role,
        token,
    }))
}

/// A version's approval, from its three columns (`approved_at` `NULL`: none).
pub(super) fn code_approval(
    at: Option<Millis>,
    by: Option<String>,
    key: Option<String>,
) -> Option<CodeApproval> {
    Some(CodeApproval {
        at: at?,
        by: by.unwrap_or_default(),
        key,
    })
}

/// Why an approval of version `approving` was refused: `current` became current meanwhile.
pub(super) fn approval_raced(module: &str, approving: &str, current: &str) -> StoreError {
    StoreError::Conflict(format!(
        "module `{module}` changed while it was being approved: its current version is now {current}, not {approving}; look at it again and approve what you see"
    ))
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};

    use super::*;

    fn classified(err: sqlx::Error) -> StoreError {
        db(err)
    }

    #[tokio::test]
    async fn a_lost_connection_is_unavailable_but_a_wrong_statement_is_not() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let wrong = sqlx::query("SELEC 1").execute(&pool).await.unwrap_err();
        assert!(matches!(classified(wrong), StoreError::Database(_)));
        let missing = sqlx::query("SELECT * FROM nowhere")
            .execute(&pool)
            .await
            .unwrap_err();
        assert!(matches!(classified(missing), StoreError::Database(_)));
        pool.close().await;
        let closed = sqlx::query("SELECT 1").execute(&pool).await.unwrap_err();
        assert!(
            matches!(classified(closed), StoreError::Unavailable(_)),
            "a closed pool"
        );
        assert!(matches!(
            classified(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(
            classified(sqlx::Error::Io(io)),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classified(sqlx::Error::RowNotFound),
            StoreError::Database(_)
        ));
    }

    #[tokio::test]
    async fn a_read_only_sqlite_database_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.db");
        let mut writer = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .unwrap()
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut writer)
            .await
            .unwrap();
        let mut reader = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .unwrap()
            .read_only(true)
            .connect()
            .await
            .unwrap();
        let refused = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut reader)
            .await
            .unwrap_err();
        assert!(
            matches!(classified(refused), StoreError::Unavailable(_)),
            "read-only"
        );
    }

    #[tokio::test]
    async fn a_read_only_postgres_transaction_is_unavailable_and_bad_sql_is_not() {
        let url = std::env::var("RUNCELL_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let mut conn = sqlx::postgres::PgConnection::connect(&url).await.unwrap();
        sqlx::query("SET default_transaction_read_only = on")
            .execute(&mut conn)
            .await
            .unwrap();
        let refused = sqlx::query("CREATE TEMP TABLE runcell_ro_probe (x int)")
            .execute(&mut conn)
            .await
            .unwrap_err();
        assert!(
            matches!(classified(refused), StoreError::Unavailable(_)),
            "read-only"
        );
        let wrong = sqlx::query("SELEC 1").execute(&mut conn).await.unwrap_err();
        assert!(matches!(classified(wrong), StoreError::Database(_)));
    }

    #[test]
    fn postgres_connection_read_only_and_shutdown_states_are_unavailable() {
        for state in [
            "08006", "08001", "25006", "40001", "40P01", "53100", "57P01",
        ] {
            assert!(postgres_unavailable(state), "{state}");
        }
        // Syntax, undefined table, not-null, check: faults to fix, not to retry.
        for state in ["42601", "42P01", "23502", "23514", "22P02"] {
            assert!(!postgres_unavailable(state), "{state}");
        }
    }
}

/// One row's input as stored: the `input` column (`None` where the row takes its job's
/// stored input) and the `input_hash` column (set for a large input, whose column is
/// then empty).
pub(super) type StoredInput<'a> = (Option<&'a str>, Option<String>);

/// The inputs of a batch of executions as they are stored (see [`INLINE_INPUT_MAX`]).
#[derive(Debug, Default, PartialEq)]
pub(super) struct StoredInputs<'a> {
    /// Per row, in order.
    pub rows: Vec<StoredInput<'a>>,
    /// Each distinct large input once, `(hash, body)`: to write to `execution_inputs`
    /// before the rows that refer to it.
    pub bodies: Vec<(String, &'a str)>,
}

/// Splits `inputs` (JSON text; `None` for a job's stored input) into what rows store
/// and the bodies to store once. Inputs at most [`INLINE_INPUT_MAX`] long stay in their
/// rows and are not hashed.
pub(super) fn stored_inputs<'a>(
    inputs: impl IntoIterator<Item = Option<&'a str>>,
) -> StoredInputs<'a> {
    let mut stored = StoredInputs::default();
    let mut seen = HashSet::new();
    for input in inputs {
        let row = match input.map(|text| (text, large_input_hash(text))) {
            Some((text, Some(hash))) => {
                if seen.insert(hash.clone()) {
                    stored.bodies.push((hash.clone(), text));
                }
                (Some(""), Some(hash))
            }
            Some((text, None)) => (Some(text), None),
            None => (None, None),
        };
        stored.rows.push(row);
    }
    stored
}

/// The hash of `text` if it is a large input, stored once; `None` for one kept inline.
fn large_input_hash(text: &str) -> Option<String> {
    (text.len() > INLINE_INPUT_MAX).then(|| input_hash(text))
}

/// The hash of a large input, under which it is stored once: SHA-256 of its text,
/// lower-case hex.
pub(super) fn input_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The ids of `runs` as an idempotency key records them: a JSON array.
pub(super) fn run_ids_json(runs: &[ManualRun]) -> Result<String, StoreError> {
    json_text(
        "execution_ids",
        &runs.iter().map(|run| run.id.as_str()).collect::<Vec<_>>(),
    )
}

/// What a request under `key` gets when the key is held, unexpired, by an earlier
/// request that asked `fingerprint` and created `execution_ids` (a JSON array) in
/// state `status`.
pub(super) fn earlier_request<T>(
    key: &IdempotencyKey,
    fingerprint: &str,
    execution_ids: &str,
    status: &str,
) -> Result<ManualOutcome<T>, StoreError> {
    if fingerprint != key.fingerprint {
        return Ok(ManualOutcome::KeyReused);
    }
    let ids: Vec<String> =
        serde_json::from_str(execution_ids).map_err(|err| corrupt("execution_ids", err))?;
    Ok(ManualOutcome::Replayed(EarlierRuns {
        ids,
        status: parse_status(status)?,
    }))
}
