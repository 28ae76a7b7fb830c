//! The generic layer under both backends: what a database must do for the store's shared
//! SQL to run on it ([`Sql`]), and the mapping of rows to domain types, written once.
//!
//! # Why a trait of its own
//!
//! sqlx's traits say what one value or one connection can do (`Encode`, `Decode`,
//! `Executor`), and generic code over them has to repeat every such bound (`i64` binds,
//! `&str` decodes, `&mut Connection` executes, ...) on every function, because Rust does
//! not carry a trait's where-clauses to its users, only its supertraits. So [`Sql`]
//! states the whole set once, as supertraits ([`Binds`], [`Reads`]) and methods (running
//! a statement, which sqlx gives generic code no way to name), and both databases have
//! it. sqlx's `Any` driver would have been the other way, but it binds no arrays (the
//! PostgreSQL hot path is array binds) and copies every value through its own enum.
//!
//! Statements bind with [`Bind::arg`] rather than `bind`, and rows are read with
//! [`Columns::col`]: the same calls, with bounds a generic function can prove.

use std::borrow::Cow;
use std::pin::Pin;

use sqlx::query::Query;
use sqlx::{ColumnIndex, Database, Decode, Encode, QueryBuilder, Row, Type};

use super::ClaimedExecution;
use super::StoreError;
use super::convert::{
    code_approval, corrupt, db, parse_job_config, parse_level, parse_status, parse_trigger,
    uploader,
};
use crate::domain::metrics::{MetricRefusals, MetricSeries, ModuleMetricsSummary, Rollup};
use crate::domain::{
    Event, Execution, ExecutionStatus, Job, JobConfig, LogEntry, Manifest, Millis, ModuleRecord,
    ModuleStatus, ModuleVersion, NodeHeartbeat, PublisherKey, ScheduleSource, Trigger,
};

/// What running a statement returns.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database the shared SQL runs on: it binds and reads every column type the store
/// uses, and runs statements on a connection. Implemented by SQLite and PostgreSQL.
pub(crate) trait Sql:
    Database
    + sqlx::database::HasStatementCache
    + for<'a> Binds<'a, i64>
    + for<'a> Binds<'a, Option<i64>>
    + for<'a> Binds<'a, i32>
    + for<'a> Binds<'a, f64>
    + for<'a> Binds<'a, Option<f64>>
    + for<'a> Binds<'a, bool>
    + for<'a> Binds<'a, String>
    + for<'a> Binds<'a, Option<String>>
    + for<'a> Binds<'a, &'a str>
    + for<'a> Binds<'a, Option<&'a str>>
    + for<'a> Binds<'a, &'a [u8]>
    + for<'r> Reads<'r, i64>
    + for<'r> Reads<'r, Option<i64>>
    + for<'r> Reads<'r, i32>
    + for<'r> Reads<'r, Option<i32>>
    + for<'r> Reads<'r, bool>
    + for<'r> Reads<'r, f64>
    + for<'r> Reads<'r, Option<f64>>
    + for<'r> Reads<'r, String>
    + for<'r> Reads<'r, Option<String>>
    + for<'r> Reads<'r, &'r str>
    + for<'r> Reads<'r, Option<&'r str>>
    + for<'r> Reads<'r, Vec<u8>>
{
    /// Runs `query` on `conn` and returns every row.
    fn fetch_all<'e>(
        query: Query<'e, Self, Self::Arguments>,
        conn: &'e mut Self::Connection,
    ) -> BoxFuture<'e, Result<Vec<Self::Row>, sqlx::Error>>;

    /// Runs `query` on `conn` and returns its first row, if any.
    fn fetch_optional<'e>(
        query: Query<'e, Self, Self::Arguments>,
        conn: &'e mut Self::Connection,
    ) -> BoxFuture<'e, Result<Option<Self::Row>, sqlx::Error>>;

    /// Runs `query` on `conn` and returns how many rows it changed.
    fn execute<'e>(
        query: Query<'e, Self, Self::Arguments>,
        conn: &'e mut Self::Connection,
    ) -> BoxFuture<'e, Result<u64, sqlx::Error>>;

    /// `text` as this database can store it in a `TEXT` column. PostgreSQL's cannot
    /// hold NUL, which a guest may well print: it becomes U+FFFD there, rather than the
    /// whole record being lost to an encoding error.
    fn text(text: &str) -> Cow<'_, str>;

    /// Pushes the test that `column` is one of `ids` (at most [`Sql::MAX_ROWS`]): a
    /// padded `IN` list on SQLite, one array parameter on PostgreSQL.
    fn push_ids(query: &mut QueryBuilder<Self>, column: &str, ids: &[String]);

    /// Binds a module key-value key: text on SQLite, bytes on PostgreSQL (see its
    /// migration).
    fn bind_key<'q>(
        query: Query<'q, Self, Self::Arguments>,
        key: &str,
    ) -> Query<'q, Self, Self::Arguments>;

    /// Rows per multi-row statement.
    const MAX_ROWS: usize;

    /// The row-locking clause of a `SELECT` whose rows the transaction then updates
    /// (with its leading space), or nothing where the transaction already excludes
    /// every other writer.
    const FOR_UPDATE: &'static str;

    /// Likewise, for rows the transaction only needs unchanged until it ends.
    const FOR_SHARE: &'static str;

    /// Likewise, for rows any one of several concurrent transactions may take, where
    /// each should skip what another holds rather than wait for it.
    const FOR_UPDATE_SKIP_LOCKED: &'static str;

    /// How a statement that finds executions by their ids tests their `status` without
    /// letting the planner drive it by a partial index on `status` (a walk over every
    /// queued or running row) instead of the primary key: each backend explains its
    /// spelling.
    const BY_KEY_STATUS: &'static str;

    /// The index clause (with its leading space) that a scan of queued executions in
    /// due order must use, for a planner without statistics.
    const QUEUED_DUE_INDEX: &'static str;

    /// Likewise, for running executions in lease order.
    const RUNNING_LEASE_INDEX: &'static str;

    /// The function that gives the larger of two values (SQLite's two-argument `MAX`).
    const GREATEST: &'static str;

    /// The aggregate that joins a group's `bucket` and `count` columns into one text,
    /// `bucket:count,...`.
    const BUCKET_LIST: &'static str;

    /// The column of `module_versions` that orders uploads made in one millisecond.
    const VERSION_UPLOAD_ORDER: &'static str;

    /// A statement that locks a username (`$1`, any letter case) until the transaction
    /// ends, where writers run side by side; `None` where they run one at a time.
    const USERNAME_LOCK: Option<&'static str>;
}

/// [`Sql`]'s ways of running a statement, for the `impl Sql` of a concrete database:
/// there sqlx's executor bounds hold, where generic code cannot state them.
macro_rules! statement_runners {
    () => {
        fn fetch_all<'e>(
            query: sqlx::query::Query<'e, Self, Self::Arguments>,
            conn: &'e mut Self::Connection,
        ) -> $crate::store::sql::BoxFuture<'e, Result<Vec<Self::Row>, sqlx::Error>> {
            Box::pin(query.fetch_all(conn))
        }

        fn fetch_optional<'e>(
            query: sqlx::query::Query<'e, Self, Self::Arguments>,
            conn: &'e mut Self::Connection,
        ) -> $crate::store::sql::BoxFuture<'e, Result<Option<Self::Row>, sqlx::Error>> {
            Box::pin(query.fetch_optional(conn))
        }

        fn execute<'e>(
            query: sqlx::query::Query<'e, Self, Self::Arguments>,
            conn: &'e mut Self::Connection,
        ) -> $crate::store::sql::BoxFuture<'e, Result<u64, sqlx::Error>> {
            Box::pin(async move { Ok(query.execute(conn).await?.rows_affected()) })
        }
    };
}
pub(crate) use statement_runners;

/// A database that binds values of type `T`, which may borrow for `'t`, as statement
/// parameters.
pub(crate) trait Binds<'t, T>: Database {
    fn bind_to<'q>(
        query: Query<'q, Self, Self::Arguments>,
        value: T,
    ) -> Query<'q, Self, Self::Arguments>;

    fn push_bind_to(builder: &mut QueryBuilder<Self>, value: T);
}

impl<'t, DB: Database, T: Encode<'t, DB> + Type<DB>> Binds<'t, T> for DB {
    fn bind_to<'q>(
        query: Query<'q, Self, Self::Arguments>,
        value: T,
    ) -> Query<'q, Self, Self::Arguments> {
        query.bind(value)
    }

    fn push_bind_to(builder: &mut QueryBuilder<Self>, value: T) {
        builder.push_bind(value);
    }
}

/// A database whose rows decode columns as type `T`, borrowing from a row for `'r`.
pub(crate) trait Reads<'r, T>: Database {
    fn read(row: &'r Self::Row, column: &str) -> Result<T, sqlx::Error>;
}

impl<'r, DB, T> Reads<'r, T> for DB
where
    DB: Database,
    T: Decode<'r, DB> + Type<DB>,
    for<'n> &'n str: ColumnIndex<DB::Row>,
{
    fn read(row: &'r Self::Row, column: &str) -> Result<T, sqlx::Error> {
        row.try_get(column)
    }
}

/// Binding on a statement of any [`Sql`] database.
pub(crate) trait Bind {
    /// The statement with `value` bound as its next parameter.
    fn arg<'t, T>(self, value: T) -> Self
    where
        Self: BindsAs<'t, T>;
}

/// Helper of [`Bind`]: a statement whose database binds `T`.
pub(crate) trait BindsAs<'t, T> {
    fn bind_as(self, value: T) -> Self;
}

impl<'q, 't, DB: Binds<'t, T>, T> BindsAs<'t, T> for Query<'q, DB, DB::Arguments> {
    fn bind_as(self, value: T) -> Self {
        DB::bind_to(self, value)
    }
}

impl<'q, DB: Database> Bind for Query<'q, DB, DB::Arguments> {
    fn arg<'t, T>(self, value: T) -> Self
    where
        Self: BindsAs<'t, T>,
    {
        self.bind_as(value)
    }
}

/// Binding a parameter into a [`QueryBuilder`] of any [`Sql`] database.
pub(crate) fn push_arg<'t, DB: Binds<'t, T>, T>(builder: &mut QueryBuilder<DB>, value: T) {
    DB::push_bind_to(builder, value);
}

/// Running a statement of any [`Sql`] database, with failures classified as the
/// store reports them.
pub(crate) trait Run<'e, DB: Sql> {
    fn all(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<Vec<DB::Row>, StoreError>> + Send + 'e;
    fn optional(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<Option<DB::Row>, StoreError>> + Send + 'e;
    fn one(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<DB::Row, StoreError>> + Send + 'e;
    /// The number of rows the statement changed.
    fn run(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'e;
}

impl<'e, DB: Sql> Run<'e, DB> for Query<'e, DB, DB::Arguments> {
    fn all(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<Vec<DB::Row>, StoreError>> + Send + 'e {
        let fetch = DB::fetch_all(self, conn);
        async move { fetch.await.map_err(db) }
    }

    fn optional(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<Option<DB::Row>, StoreError>> + Send + 'e {
        let fetch = DB::fetch_optional(self, conn);
        async move { fetch.await.map_err(db) }
    }

    fn one(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<DB::Row, StoreError>> + Send + 'e {
        let fetch = DB::fetch_optional(self, conn);
        async move {
            fetch
                .await
                .map_err(db)?
                .ok_or_else(|| StoreError::Database("a statement returned no row".into()))
        }
    }

    fn run(
        self,
        conn: &'e mut DB::Connection,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'e {
        let execute = DB::execute(self, conn);
        async move { execute.await.map_err(db) }
    }
}

/// Reading the columns of a row of any [`Sql`] database, each failure naming its column.
pub(crate) trait Columns {
    /// The database the row comes from.
    type Db: Sql;

    fn col<'r, T>(&'r self, name: &str) -> Result<T, StoreError>
    where
        Self::Db: Reads<'r, T>;

    fn col_u64(&self, name: &str) -> Result<u64, StoreError> {
        let value: i64 = self.col(name)?;
        u64::try_from(value).map_err(|_| corrupt(name, format!("negative value {value}")))
    }

    fn col_opt_u64(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let value: Option<i64> = self.col(name)?;
        value
            .map(|v| u64::try_from(v).map_err(|_| corrupt(name, format!("negative value {v}"))))
            .transpose()
    }

    /// An `INTEGER` column of PostgreSQL (32 bits), which SQLite reads as well.
    fn col_u32(&self, name: &str) -> Result<u32, StoreError> {
        let value: i32 = self.col(name)?;
        u32::try_from(value).map_err(|_| corrupt(name, format!("negative value {value}")))
    }

    /// A nullable `INTEGER` column of PostgreSQL (32 bits).
    fn col_opt_u32(&self, name: &str) -> Result<Option<u32>, StoreError> {
        let value: Option<i32> = self.col(name)?;
        value
            .map(|v| u32::try_from(v).map_err(|_| corrupt(name, format!("negative value {v}"))))
            .transpose()
    }

    fn col_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, StoreError> {
        let text: &str = self.col(name)?;
        serde_json::from_str(text).map_err(|err| corrupt(name, err))
    }

    fn col_opt_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let text: Option<&str> = self.col(name)?;
        text.map(|t| serde_json::from_str(t).map_err(|err| corrupt(name, err)))
            .transpose()
    }

    fn col_config(&self) -> Result<JobConfig, StoreError> {
        parse_job_config(self.col("config")?)
    }

    fn col_status(&self) -> Result<ExecutionStatus, StoreError> {
        parse_status(self.col("status")?)
    }

    fn col_trigger(&self) -> Result<Trigger, StoreError> {
        parse_trigger(self.col("trigger")?)
    }
}

impl<R: Row> Columns for R
where
    R::Database: Sql,
{
    type Db = R::Database;

    fn col<'r, T>(&'r self, name: &str) -> Result<T, StoreError>
    where
        Self::Db: Reads<'r, T>,
    {
        <R::Database as Reads<'r, T>>::read(self, name).map_err(|err| corrupt(name, err))
    }
}

// ---- rows ------------------------------------------------------------------------------

pub(crate) fn module_from_row(row: &impl Columns) -> Result<ModuleRecord, StoreError> {
    let name: String = row.col("name")?;
    let status: &str = row.col("status")?;
    Ok(ModuleRecord {
        status: ModuleStatus::parse(status)
            .ok_or_else(|| corrupt("status", format!("unknown `{status}`")))?,
        current: version_from_row(row, name.clone())?,
        approved: row.col_json("approved_capabilities")?,
        outbound_grant: row.col_opt_json("granted_outbound_hosts")?,
        budgets: row.col_json("budgets")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
        name,
    })
}

pub(crate) fn version_from_row(
    row: &impl Columns,
    module: String,
) -> Result<ModuleVersion, StoreError> {
    Ok(ModuleVersion {
        module,
        version: row.col("version")?,
        content_hash: row.col("content_hash")?,
        size_bytes: row.col_u64("size_bytes")?,
        manifest: row.col_json::<Manifest>("manifest")?,
        uploaded_at: row.col("uploaded_at")?,
        uploaded_by: uploader(
            row.col("uploaded_by")?,
            row.col("uploader_role")?,
            row.col("uploader_token")?,
        )?,
        signed_by: row.col("signed_by")?,
        approval: code_approval(
            row.col("approved_at")?,
            row.col("approved_by")?,
            row.col("approved_key")?,
        ),
    })
}

pub(crate) fn publisher_key_from_row(row: &impl Columns) -> Result<PublisherKey, StoreError> {
    Ok(PublisherKey {
        id: row.col("key_id")?,
        public_key: row.col("public_key")?,
        comment: row.col("comment")?,
        pinned_by: row.col("pinned_by")?,
        pinned_at: row.col("pinned_at")?,
    })
}

pub(crate) fn job_from_row(row: &impl Columns) -> Result<Job, StoreError> {
    Ok(Job {
        id: row.col("id")?,
        name: row.col("name")?,
        module: row.col("module")?,
        job: row.col("job")?,
        schedule: row.col("schedule")?,
        schedule_source: {
            let source: String = row.col("schedule_source")?;
            ScheduleSource::parse(&source)
                .ok_or_else(|| corrupt("jobs.schedule_source", format!("`{source}`")))?
        },
        input: row.col_json("input")?,
        enabled: row.col("enabled")?,
        max_attempts: row.col_u32("max_attempts")?,
        timeout_ms: row.col_opt_u64("timeout_ms")?,
        fuel: row.col_opt_u64("fuel")?,
        memory_bytes: row.col_opt_u64("memory_bytes")?,
        on_event: row.col("on_event")?,
        retain_days: row.col_opt_u32("retain_days")?,
        retain_last: row.col_opt_u32("retain_last")?,
        config: row.col_config()?,
        next_run_at: row.col("next_run_at")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

pub(crate) fn execution_from_row(row: &impl Columns) -> Result<Execution, StoreError> {
    Ok(Execution {
        id: row.col("id")?,
        job_id: row.col("job_id")?,
        module: row.col("module")?,
        job: row.col("job")?,
        status: row.col_status()?,
        trigger: row.col_trigger()?,
        attempt: row.col_u32("attempt")?,
        retry_of: row.col("retry_of")?,
        input: row.col_json("input")?,
        result: row.col_opt_json("result")?,
        error: row.col("error")?,
        error_kind: row.col("error_kind")?,
        scheduled_at: row.col("scheduled_at")?,
        run_after: row.col("run_after")?,
        cron_tick: row.col("cron_tick")?,
        event_id: row.col("event_id")?,
        created_at: row.col("created_at")?,
        started_at: row.col("started_at")?,
        finished_at: row.col("finished_at")?,
        duration_ms: row.col("duration_ms")?,
        fuel_consumed: row.col_opt_u64("fuel_consumed")?,
        memory_peak_bytes: row.col_opt_u64("memory_peak_bytes")?,
        cpu_time_ms: row.col("cpu_time_ms")?,
        node_id: row.col("node_id")?,
        cancel_requested: row.col("cancel_requested")?,
    })
}

pub(crate) fn claimed_from_row(row: &impl Columns) -> Result<ClaimedExecution, StoreError> {
    Ok(ClaimedExecution {
        id: row.col("id")?,
        job_id: row.col("job_id")?,
        module: row.col("module")?,
        job: row.col("job")?,
        attempt: row.col_u32("attempt")?,
        trigger: row.col_trigger()?,
        retry_of: row.col("retry_of")?,
        input: row.col("input")?,
        scheduled_at: row.col("scheduled_at")?,
        run_after: row.col("run_after")?,
        job_revision: row.col("job_revision")?,
    })
}

pub(crate) fn log_from_row(row: &impl Columns) -> Result<LogEntry, StoreError> {
    let fields: Option<serde_json::Map<String, serde_json::Value>> = row.col_opt_json("fields")?;
    Ok(LogEntry {
        seq: row.col_u32("seq")?,
        ts_ms: row.col_u64("ts")?,
        level: parse_level(row.col("level")?)?,
        message: row.col("message")?,
        fields: fields.unwrap_or_default(),
    })
}

pub(crate) fn event_from_row(row: &impl Columns) -> Result<Event, StoreError> {
    Ok(Event {
        id: row.col("id")?,
        topic: row.col("topic")?,
        payload: row.col_json("payload")?,
        source: row.col("source")?,
        created_at: row.col("created_at")?,
        depth: row.col_u32("depth")?,
        caused_by: row.col("caused_by")?,
        refused: match row.col::<Option<String>>("refusals")? {
            None => Vec::new(),
            Some(text) => {
                serde_json::from_str(&text).map_err(|err| corrupt("events.refusals", err))?
            }
        },
    })
}

pub(crate) fn series_from_row(row: &impl Columns) -> Result<MetricSeries, StoreError> {
    let last_value: Option<f64> = row.col("last_value")?;
    let last_at: Option<Millis> = row.col("last_at")?;
    Ok(MetricSeries {
        id: row.col("id")?,
        name: row.col("name")?,
        labels: row.col_json("labels")?,
        created_at: row.col("created_at")?,
        last: last_value.zip(last_at),
    })
}

pub(crate) fn summary_from_row(row: &impl Columns) -> Result<ModuleMetricsSummary, StoreError> {
    Ok(ModuleMetricsSummary {
        module: row.col("module")?,
        series: row.col("series")?,
        refusals: MetricRefusals {
            samples: row.col("refused_samples")?,
            last_at: row.col("last_refused_at")?,
        },
    })
}

/// A rollup as `(series id, start, rollup)`.
pub(crate) fn rollup_from_row(row: &impl Columns) -> Result<(i64, Millis, Rollup), StoreError> {
    let rollup = Rollup {
        samples: row.col("samples")?,
        sum: row.col("sum_value")?,
        min: row.col("min_value")?,
        max: row.col("max_value")?,
        last: row.col("last_value")?,
        last_at: row.col("last_at")?,
    };
    Ok((row.col("series_id")?, row.col("t")?, rollup))
}

pub(crate) fn node_from_row(row: &impl Columns) -> Result<NodeHeartbeat, StoreError> {
    Ok(NodeHeartbeat {
        node_id: row.col("node_id")?,
        started_at: row.col("started_at")?,
        last_heartbeat_at: row.col("last_heartbeat_at")?,
        workers: row.col_u32("workers")?,
        running: row.col_u32("running")?,
        version: row.col("version")?,
    })
}
