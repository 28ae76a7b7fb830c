//! Endpoint monitors and their checks, for both databases: definitions, the checker's
//! fenced claim of due checks, the checks it records (at most one per endpoint and due
//! time), and the reads of the API (a page of checks, uptime over windows).

use sqlx::QueryBuilder;

use super::super::convert::{corrupt, db, is_unique_violation, json_text, page, page_fetch};
use super::super::sql::{Bind, Columns, Run, Sql, push_arg};
use super::super::{LeaseToken, StoreError};
use super::{Backend, Write, dynamic, lease_held, read, write};
use crate::domain::endpoint::{Endpoint, EndpointCheck, UptimeCount};
use crate::domain::{JobConfig, Millis, Page};

/// Columns of `endpoints` read into [`Endpoint`].
const ENDPOINT_COLUMNS: &str = "id, name, url, method, headers, body, interval_ms, timeout_ms, \
                                conditions, enabled, next_check_at, created_at, updated_at";

/// Columns of `endpoint_checks` read into [`EndpointCheck`].
const CHECK_COLUMNS: &str = "endpoint_id, due_at, checked_at, up, status_code, latency_ms, \
                             failed_condition, error, node_id";

fn endpoint_from_row(row: &impl Columns) -> Result<Endpoint, StoreError> {
    let interval_ms: i64 = row.col("interval_ms")?;
    let timeout_ms: i64 = row.col("timeout_ms")?;
    // The error names the column, never the text: it holds sealed secrets.
    let headers =
        JobConfig::from_stored_json(row.col("headers")?).map_err(|err| corrupt("headers", err))?;
    Ok(Endpoint {
        id: row.col("id")?,
        name: row.col("name")?,
        url: row.col("url")?,
        method: row.col("method")?,
        headers,
        body: row.col("body")?,
        interval_seconds: u32::try_from(interval_ms / 1000)
            .map_err(|_| corrupt("interval_ms", interval_ms))?,
        timeout_ms: u32::try_from(timeout_ms).map_err(|_| corrupt("timeout_ms", timeout_ms))?,
        conditions: row.col_json("conditions")?,
        enabled: row.col("enabled")?,
        next_check_at: row.col("next_check_at")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

fn check_from_row(row: &impl Columns) -> Result<EndpointCheck, StoreError> {
    let status_code: Option<i64> = row.col("status_code")?;
    let latency_ms: Option<i64> = row.col("latency_ms")?;
    Ok(EndpointCheck {
        endpoint_id: row.col("endpoint_id")?,
        due_at: row.col("due_at")?,
        checked_at: row.col("checked_at")?,
        up: row.col("up")?,
        status_code: status_code
            .map(|code| u16::try_from(code).map_err(|_| corrupt("status_code", code)))
            .transpose()?,
        latency_ms: latency_ms.map(|ms| u32::try_from(ms).unwrap_or(u32::MAX)),
        failed_condition: row.col("failed_condition")?,
        error: row.col("error")?,
        node_id: row.col("node_id")?,
    })
}

/// Runs an insert or update of `endpoint`, telling a taken name from a taken id.
async fn write_endpoint<DB: Sql>(
    query: sqlx::query::Query<'_, DB, DB::Arguments>,
    conn: &mut DB::Connection,
    endpoint: &Endpoint,
) -> Result<u64, StoreError> {
    let err = match DB::execute(query, conn).await {
        Ok(changed) => return Ok(changed),
        Err(err) if is_unique_violation(&err) => err,
        Err(err) => return Err(db(err)),
    };
    // PostgreSQL names the constraint; SQLite only says which column in its message.
    let name_taken = match &err {
        sqlx::Error::Database(e) => {
            e.constraint() == Some("endpoints_name_unique")
                || e.message().contains("endpoints.name")
        }
        _ => false,
    };
    Err(StoreError::Conflict(if name_taken {
        format!("an endpoint named `{}` already exists", endpoint.name)
    } else {
        format!("an endpoint with id `{}` already exists", endpoint.id)
    }))
}

pub(super) async fn insert<B: Backend>(backend: &B, endpoint: &Endpoint) -> Result<(), StoreError> {
    let conditions = json_text("conditions", &endpoint.conditions)?;
    let query = dynamic::<B::Db>(format!(
        "INSERT INTO endpoints ({ENDPOINT_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .arg(endpoint.id.as_str())
    .arg(endpoint.name.as_str())
    .arg(endpoint.url.as_str())
    .arg(endpoint.method.as_str())
    .arg(endpoint.headers.to_stored_json())
    .arg(endpoint.body.as_deref())
    .arg(i64::from(endpoint.interval_seconds) * 1000)
    .arg(i64::from(endpoint.timeout_ms))
    .arg(conditions)
    .arg(endpoint.enabled)
    .arg(endpoint.next_check_at)
    .arg(endpoint.created_at)
    .arg(endpoint.updated_at);
    write_endpoint(query, &mut *write(backend).await?, endpoint).await?;
    Ok(())
}

pub(super) async fn get<B: Backend>(backend: &B, id: &str) -> Result<Option<Endpoint>, StoreError> {
    dynamic::<B::Db>(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1"
    ))
    .arg(id)
    .optional(&mut *read(backend).await?)
    .await?
    .as_ref()
    .map(endpoint_from_row)
    .transpose()
}

pub(super) async fn list<B: Backend>(
    backend: &B,
    cursor: Option<&str>,
    limit: u32,
) -> Result<Page<Endpoint>, StoreError> {
    let (limit, fetch) = page_fetch(limit);
    let mut query = QueryBuilder::<B::Db>::new(format!("SELECT {ENDPOINT_COLUMNS} FROM endpoints"));
    if let Some(cursor) = cursor {
        query.push(" WHERE id > ");
        push_arg(&mut query, cursor);
    }
    query.push(" ORDER BY id LIMIT ");
    push_arg(&mut query, fetch);
    let rows = query.build().all(&mut *read(backend).await?).await?;
    let endpoints = rows
        .iter()
        .map(endpoint_from_row)
        .collect::<Result<_, _>>()?;
    Ok(page(endpoints, limit, |endpoint: &Endpoint| &endpoint.id))
}

pub(super) async fn update<B: Backend>(
    backend: &B,
    endpoint: &Endpoint,
) -> Result<bool, StoreError> {
    let conditions = json_text("conditions", &endpoint.conditions)?;
    let query = sqlx::query::<B::Db>(
        "UPDATE endpoints SET name = $1, url = $2, method = $3, headers = $4, body = $5, \
             interval_ms = $6, timeout_ms = $7, conditions = $8, enabled = $9, \
             next_check_at = $10, updated_at = $11 \
         WHERE id = $12",
    )
    .arg(endpoint.name.as_str())
    .arg(endpoint.url.as_str())
    .arg(endpoint.method.as_str())
    .arg(endpoint.headers.to_stored_json())
    .arg(endpoint.body.as_deref())
    .arg(i64::from(endpoint.interval_seconds) * 1000)
    .arg(i64::from(endpoint.timeout_ms))
    .arg(conditions)
    .arg(endpoint.enabled)
    .arg(endpoint.next_check_at)
    .arg(endpoint.updated_at)
    .arg(endpoint.id.as_str());
    Ok(write_endpoint(query, &mut *write(backend).await?, endpoint).await? > 0)
}

pub(super) async fn delete<B: Backend>(backend: &B, id: &str) -> Result<bool, StoreError> {
    let mut write = Write::new(backend, 2).await?;
    sqlx::query::<B::Db>("DELETE FROM endpoint_checks WHERE endpoint_id = $1")
        .arg(id)
        .run(write.conn())
        .await?;
    let deleted = sqlx::query::<B::Db>("DELETE FROM endpoints WHERE id = $1")
        .arg(id)
        .run(write.conn())
        .await?;
    write.commit().await?;
    Ok(deleted > 0)
}

pub(super) async fn due<B: Backend>(
    backend: &B,
    now: Millis,
    limit: u32,
) -> Result<Vec<Endpoint>, StoreError> {
    dynamic::<B::Db>(format!(
        "SELECT {ENDPOINT_COLUMNS} FROM endpoints \
         WHERE next_check_at <= $1 AND enabled = $2 ORDER BY next_check_at LIMIT $3"
    ))
    .arg(now)
    .arg(true)
    .arg(i64::from(limit))
    .all(&mut *read(backend).await?)
    .await?
    .iter()
    .map(endpoint_from_row)
    .collect()
}

/// See [`crate::store::Store::claim_endpoint_checks`].
pub(super) async fn claim<B: Backend>(
    backend: &B,
    claims: &[(String, Millis, Millis)],
    lease: &str,
    holder: &str,
    token: LeaseToken,
    now: Millis,
) -> Result<Option<Vec<String>>, StoreError> {
    let mut tx = backend.begin().await?;
    if !lease_held::<B::Db>(&mut tx, lease, holder, token, now).await? {
        return Ok(None);
    }
    let mut claimed = Vec::new();
    for (id, due, next) in claims {
        let moved = sqlx::query::<B::Db>(
            "UPDATE endpoints SET next_check_at = $1 \
             WHERE id = $2 AND next_check_at = $3 AND enabled = $4",
        )
        .arg(*next)
        .arg(id.as_str())
        .arg(*due)
        .arg(true)
        .run(&mut tx)
        .await?;
        if moved > 0 {
            claimed.push(id.clone());
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(Some(claimed))
}

pub(super) async fn record_check<B: Backend>(
    backend: &B,
    check: &EndpointCheck,
) -> Result<bool, StoreError> {
    // Only for an endpoint that still exists: one deleted while its check was under way
    // leaves no row behind.
    let inserted = sqlx::query::<B::Db>(
        "INSERT INTO endpoint_checks (endpoint_id, due_at, checked_at, up, status_code, \
             latency_ms, failed_condition, error, node_id) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 \
         WHERE EXISTS (SELECT 1 FROM endpoints WHERE id = $1) \
         ON CONFLICT (endpoint_id, due_at) DO NOTHING",
    )
    .arg(check.endpoint_id.as_str())
    .arg(check.due_at)
    .arg(check.checked_at)
    .arg(check.up)
    .arg(check.status_code.map(i64::from))
    .arg(check.latency_ms.map(i64::from))
    .arg(
        check
            .failed_condition
            .as_deref()
            .map(B::Db::text)
            .as_deref(),
    )
    .arg(check.error.as_deref().map(B::Db::text).as_deref())
    .arg(check.node_id.as_str())
    .run(&mut *write(backend).await?)
    .await?;
    Ok(inserted > 0)
}

/// See [`crate::store::Store::endpoint_checks`].
pub(super) async fn checks<B: Backend>(
    backend: &B,
    endpoint_id: &str,
    from: Millis,
    to: Millis,
    cursor: Option<Millis>,
    limit: u32,
) -> Result<Page<EndpointCheck>, StoreError> {
    let (limit, fetch) = page_fetch(limit);
    let to = cursor.map_or(to, |cursor| cursor.min(to));
    let rows = dynamic::<B::Db>(format!(
        "SELECT {CHECK_COLUMNS} FROM endpoint_checks \
         WHERE endpoint_id = $1 AND due_at >= $2 AND due_at < $3 \
         ORDER BY due_at DESC LIMIT $4"
    ))
    .arg(endpoint_id)
    .arg(from)
    .arg(to)
    .arg(fetch)
    .all(&mut *read(backend).await?)
    .await?;
    let mut items = rows
        .iter()
        .map(check_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|check| check.due_at.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// See [`crate::store::Store::endpoint_uptime`].
pub(super) async fn uptime<B: Backend>(
    backend: &B,
    endpoint_id: &str,
    since: &[Millis],
) -> Result<Vec<UptimeCount>, StoreError> {
    let Some(earliest) = since.iter().min() else {
        return Ok(Vec::new());
    };
    let mut query = QueryBuilder::<B::Db>::new("SELECT ");
    for (i, at) in since.iter().enumerate() {
        if i > 0 {
            query.push(", ");
        }
        query.push("SUM(CASE WHEN due_at >= ");
        push_arg(&mut query, *at);
        query.push(format!(" THEN 1 ELSE 0 END) AS checks_{i}, "));
        query.push("SUM(CASE WHEN due_at >= ");
        push_arg(&mut query, *at);
        query.push(format!(" AND up THEN 1 ELSE 0 END) AS up_{i}"));
    }
    query.push(" FROM endpoint_checks WHERE endpoint_id = ");
    push_arg(&mut query, endpoint_id);
    query.push(" AND due_at >= ");
    push_arg(&mut query, *earliest);
    let row = query.build().one(&mut *read(backend).await?).await?;
    (0..since.len())
        .map(|i| {
            let checks: Option<i64> = row.col(&format!("checks_{i}"))?;
            let up: Option<i64> = row.col(&format!("up_{i}"))?;
            Ok(UptimeCount {
                checks: checks.unwrap_or(0),
                up: up.unwrap_or(0),
            })
        })
        .collect()
}

/// Deletes up to `limit` checks due before `before`.
pub(super) async fn prune<B: Backend>(
    backend: &B,
    before: Millis,
    limit: i64,
) -> Result<u64, StoreError> {
    sqlx::query::<B::Db>(
        "DELETE FROM endpoint_checks WHERE (endpoint_id, due_at) IN \
             (SELECT endpoint_id, due_at FROM endpoint_checks WHERE due_at < $1 LIMIT $2)",
    )
    .arg(before)
    .arg(limit)
    .run(&mut *write(backend).await?)
    .await
}
