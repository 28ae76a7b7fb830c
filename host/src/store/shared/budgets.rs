//! Consumption budgets for both databases: a module's list of budgets (a column of
//! `modules`, so it travels with the module to every node) and the counters of their
//! windows, which every node charges through one conditional upsert each.
//!
//! A charge is `INSERT ... ON CONFLICT DO UPDATE SET used = used + n WHERE used < limit`:
//! the row's lock (PostgreSQL) or the single writer (SQLite) makes the test and the
//! increment one step, so concurrent charges from any number of nodes never take more
//! than the limit.

use super::super::StoreError;
use super::super::convert::{corrupt, db, json_text};
use super::super::sql::{Bind, Columns, Run, Sql};
use super::{Backend, fetch_module, read, write};
use crate::domain::budget::{Budget, BudgetCounter, BudgetMetric, BudgetPeriod};
use crate::domain::{Millis, ModuleRecord};

pub(super) async fn set<B: Backend>(
    backend: &B,
    module: &str,
    budgets: &[Budget],
    now: Millis,
) -> Result<Option<ModuleRecord>, StoreError> {
    let mut tx = backend.begin().await?;
    let changed =
        sqlx::query::<B::Db>("UPDATE modules SET budgets = $1, updated_at = $2 WHERE name = $3")
            .arg(json_text("budgets", budgets)?)
            .arg(now)
            .arg(module)
            .run(&mut tx)
            .await?;
    if changed == 0 {
        return Ok(None);
    }
    let record = fetch_module::<B::Db>(&mut tx, module).await?;
    tx.commit().await.map_err(db)?;
    Ok(record)
}

/// Adds `amount` to `counter` unless it already reached its limit; whether it did.
async fn charge_one<DB: Sql>(
    conn: &mut DB::Connection,
    counter: &BudgetCounter,
    amount: i64,
) -> Result<bool, StoreError> {
    let changed = sqlx::query::<DB>(
        "INSERT INTO budget_counters (module, metric, host, per, window_start, used) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (module, metric, host, per, window_start) \
         DO UPDATE SET used = budget_counters.used + $6 WHERE budget_counters.used < $7",
    )
    .arg(counter.module.as_str())
    .arg(counter.metric.as_str())
    .arg(counter.host.as_str())
    .arg(counter.per.as_str())
    .arg(counter.window_start)
    .arg(amount)
    .arg(counter.limit)
    .run(conn)
    .await?;
    Ok(changed > 0)
}

/// Charges every `(counter, amount)` if none of them has reached its limit, and none if
/// one has: the index of the first that refused. An amount of 0 only checks.
pub(super) async fn charge<B: Backend>(
    backend: &B,
    charges: &[(BudgetCounter, i64)],
) -> Result<Option<usize>, StoreError> {
    if let [(counter, amount)] = charges {
        // One statement is atomic by itself; no transaction needed.
        let taken = charge_one::<B::Db>(&mut *write(backend).await?, counter, *amount).await?;
        return Ok((!taken).then_some(0));
    }
    let mut tx = backend.begin().await?;
    for (index, (counter, amount)) in charges.iter().enumerate() {
        if !charge_one::<B::Db>(&mut tx, counter, *amount).await? {
            // Dropping the transaction rolls back the charges already made.
            return Ok(Some(index));
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(None)
}

/// Adds each amount to its counter, whatever the limit: what was used is used (a run's
/// fuel, known only once it ended).
pub(super) async fn add<B: Backend>(
    backend: &B,
    amounts: &[(BudgetCounter, i64)],
) -> Result<(), StoreError> {
    let mut tx = backend.begin().await?;
    for (counter, amount) in amounts {
        sqlx::query::<B::Db>(
            "INSERT INTO budget_counters (module, metric, host, per, window_start, used) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (module, metric, host, per, window_start) \
             DO UPDATE SET used = budget_counters.used + $6",
        )
        .arg(counter.module.as_str())
        .arg(counter.metric.as_str())
        .arg(counter.host.as_str())
        .arg(counter.per.as_str())
        .arg(counter.window_start)
        .arg(*amount)
        .run(&mut tx)
        .await?;
    }
    tx.commit().await.map_err(db)
}

/// What each of `counters` (all of one module) used so far, in their order; 0 for a
/// window nothing was counted in.
pub(super) async fn used<B: Backend>(
    backend: &B,
    counters: &[BudgetCounter],
) -> Result<Vec<u64>, StoreError> {
    let Some(first) = counters.first() else {
        return Ok(Vec::new());
    };
    let since = counters.iter().map(|c| c.window_start).min().unwrap_or(0);
    let rows = sqlx::query::<B::Db>(
        "SELECT metric, host, per, window_start, used FROM budget_counters \
         WHERE module = $1 AND window_start >= $2",
    )
    .arg(first.module.as_str())
    .arg(since)
    .all(&mut *read(backend).await?)
    .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let metric: &str = row.col("metric")?;
        let per: &str = row.col("per")?;
        let used: i64 = row.col("used")?;
        found.push((
            BudgetMetric::parse(metric).ok_or_else(|| corrupt("metric", metric))?,
            row.col::<String>("host")?,
            BudgetPeriod::parse(per).ok_or_else(|| corrupt("per", per))?,
            row.col::<i64>("window_start")?,
            u64::try_from(used).unwrap_or(0),
        ));
    }
    Ok(counters
        .iter()
        .map(|counter| {
            found
                .iter()
                .find(|(metric, host, per, start, _)| {
                    *metric == counter.metric
                        && *host == counter.host
                        && *per == counter.per
                        && *start == counter.window_start
                })
                .map_or(0, |found| found.4)
        })
        .collect())
}

/// Removes the counters of windows that started before `before`; how many.
pub(super) async fn prune<B: Backend>(backend: &B, before: Millis) -> Result<u64, StoreError> {
    sqlx::query::<B::Db>("DELETE FROM budget_counters WHERE window_start < $1")
        .arg(before)
        .run(&mut *write(backend).await?)
        .await
}
