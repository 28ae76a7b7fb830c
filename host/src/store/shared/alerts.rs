//! Alerting's storage, for both databases: rules, channels and silences; a transition
//! written whole under the lease; the history; and the notification outbox.

use std::collections::BTreeMap;

use sqlx::QueryBuilder;

use super::super::StoreError;
use super::super::alerts::{AlertStore, AttemptOutcome, Fence};
use super::super::convert::{corrupt, db, is_unique_violation, json_text, page, page_fetch};
use super::super::sql::{Bind, Columns, Run, Sql, push_arg};
use super::{Backend, Write, dynamic, lease_held, read, write};
use crate::domain::alert::{
    AlertCondition, AlertQuery, AlertRule, AlertState, Attempt, Change, Channel, ChannelKind,
    HistoryEntry, Notification, NotificationStatus, Severity, Silence, Transition,
};
use crate::domain::{Millis, Page};

const RULE_COLUMNS: &str = "id, name, query, condition, for_ms, severity, labels, channels, \
                            description, enabled, state, since, value, created_at, updated_at";
const CHANNEL_COLUMNS: &str = "id, name, kind, url, secret, topic, created_at, updated_at";
const SILENCE_COLUMNS: &str = "id, rule_id, matchers, until, comment, created_by, created_at";
const HISTORY_COLUMNS: &str = "id, rule_id, rule, change, severity, value, labels, silenced, at";
const NOTIFICATION_COLUMNS: &str = "id, rule_id, channel_id, kind, payload, status, attempts, \
                                    next_attempt_at, expires_at, delivered_at, created_at";

fn named<T>(column: &str, text: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(text).ok_or_else(|| corrupt(column, format!("unknown value `{text}`")))
}

fn rule_from_row(row: &impl Columns) -> Result<AlertRule, StoreError> {
    let query: serde_json::Value = row.col_json("query")?;
    let condition: serde_json::Value = row.col_json("condition")?;
    Ok(AlertRule {
        id: row.col("id")?,
        name: row.col("name")?,
        query: AlertQuery::parse(&query).map_err(|err| corrupt("query", err.message))?,
        condition: AlertCondition::parse(&condition)
            .map_err(|err| corrupt("condition", err.message))?,
        for_ms: row.col("for_ms")?,
        severity: named("severity", row.col("severity")?, Severity::parse)?,
        labels: row.col_json("labels")?,
        channels: row.col_json("channels")?,
        description: row.col("description")?,
        enabled: row.col("enabled")?,
        state: named("state", row.col("state")?, AlertState::parse)?,
        since: row.col("since")?,
        value: row.col("value")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

fn channel_from_row(row: &impl Columns) -> Result<Channel, StoreError> {
    Ok(Channel {
        id: row.col("id")?,
        name: row.col("name")?,
        kind: named("kind", row.col("kind")?, ChannelKind::parse)?,
        url: row.col("url")?,
        secret: row.col("secret")?,
        topic: row.col("topic")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    })
}

fn silence_from_row(row: &impl Columns) -> Result<Silence, StoreError> {
    Ok(Silence {
        id: row.col("id")?,
        rule_id: row.col("rule_id")?,
        matchers: row.col_opt_json("matchers")?,
        until: row.col("until")?,
        comment: row.col("comment")?,
        created_by: row.col("created_by")?,
        created_at: row.col("created_at")?,
    })
}

fn history_from_row(row: &impl Columns) -> Result<HistoryEntry, StoreError> {
    Ok(HistoryEntry {
        id: row.col("id")?,
        rule_id: row.col("rule_id")?,
        rule: row.col("rule")?,
        change: named("change", row.col("change")?, Change::parse)?,
        severity: named("severity", row.col("severity")?, Severity::parse)?,
        value: row.col("value")?,
        labels: row.col_json("labels")?,
        silenced: row.col("silenced")?,
        at: row.col("at")?,
    })
}

fn notification_from_row(row: &impl Columns) -> Result<Notification, StoreError> {
    Ok(Notification {
        id: row.col("id")?,
        rule_id: row.col("rule_id")?,
        channel_id: row.col("channel_id")?,
        kind: row.col("kind")?,
        payload: row.col_json("payload")?,
        status: named("status", row.col("status")?, NotificationStatus::parse)?,
        attempts: row.col_json("attempts")?,
        next_attempt_at: row.col("next_attempt_at")?,
        expires_at: row.col("expires_at")?,
        delivered_at: row.col("delivered_at")?,
        created_at: row.col("created_at")?,
    })
}

/// Runs a write of a named thing, telling a taken name (`what` named `name`) apart.
async fn write_named<DB: Sql>(
    query: sqlx::query::Query<'_, DB, DB::Arguments>,
    conn: &mut DB::Connection,
    what: &str,
    name: &str,
) -> Result<u64, StoreError> {
    match DB::execute(query, conn).await {
        Ok(changed) => Ok(changed),
        Err(err) if is_unique_violation(&err) => Err(StoreError::Conflict(format!(
            "an alert {what} named `{name}` already exists"
        ))),
        Err(err) => Err(db(err)),
    }
}

async fn insert_notification_on<DB: Sql>(
    conn: &mut DB::Connection,
    notification: &Notification,
) -> Result<(), StoreError> {
    dynamic::<DB>(format!(
        "INSERT INTO alert_notifications ({NOTIFICATION_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .arg(notification.id.as_str())
    .arg(notification.rule_id.as_deref())
    .arg(notification.channel_id.as_str())
    .arg(notification.kind.as_str())
    .arg(json_text("payload", &notification.payload)?)
    .arg(notification.status.as_str())
    .arg(json_text("attempts", &notification.attempts)?)
    .arg(notification.next_attempt_at)
    .arg(notification.expires_at)
    .arg(notification.delivered_at)
    .arg(notification.created_at)
    .run(conn)
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl<B: Backend> AlertStore for B {
    async fn insert_rule(&self, rule: &AlertRule) -> Result<(), StoreError> {
        let query = dynamic::<B::Db>(format!(
            "INSERT INTO alert_rules ({RULE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        ))
        .arg(rule.id.as_str())
        .arg(rule.name.as_str())
        .arg(json_text("query", &rule.query.to_json())?)
        .arg(json_text("condition", &rule.condition.to_json())?)
        .arg(rule.for_ms)
        .arg(rule.severity.as_str())
        .arg(json_text("labels", &rule.labels)?)
        .arg(json_text("channels", &rule.channels)?)
        .arg(rule.description.as_deref())
        .arg(rule.enabled)
        .arg(rule.state.as_str())
        .arg(rule.since)
        .arg(rule.value)
        .arg(rule.created_at)
        .arg(rule.updated_at);
        write_named(query, &mut *write(self).await?, "rule", &rule.name).await?;
        Ok(())
    }

    async fn get_rule(&self, id: &str) -> Result<Option<AlertRule>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules WHERE id = $1"
        ))
        .arg(id)
        .optional(&mut *read(self).await?)
        .await?
        .as_ref()
        .map(rule_from_row)
        .transpose()
    }

    async fn list_rules(&self) -> Result<Vec<AlertRule>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules ORDER BY id"
        ))
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(rule_from_row)
        .collect()
    }

    async fn update_rule(&self, rule: &AlertRule) -> Result<bool, StoreError> {
        let query = sqlx::query::<B::Db>(
            "UPDATE alert_rules SET name = $1, query = $2, condition = $3, for_ms = $4, \
                 severity = $5, labels = $6, channels = $7, description = $8, enabled = $9, \
                 updated_at = $10 \
             WHERE id = $11",
        )
        .arg(rule.name.as_str())
        .arg(json_text("query", &rule.query.to_json())?)
        .arg(json_text("condition", &rule.condition.to_json())?)
        .arg(rule.for_ms)
        .arg(rule.severity.as_str())
        .arg(json_text("labels", &rule.labels)?)
        .arg(json_text("channels", &rule.channels)?)
        .arg(rule.description.as_deref())
        .arg(rule.enabled)
        .arg(rule.updated_at)
        .arg(rule.id.as_str());
        Ok(write_named(query, &mut *write(self).await?, "rule", &rule.name).await? > 0)
    }

    async fn delete_rule(&self, id: &str) -> Result<bool, StoreError> {
        let mut write = Write::new(self, 2).await?;
        sqlx::query::<B::Db>("DELETE FROM alert_notifications WHERE rule_id = $1 AND status = $2")
            .arg(id)
            .arg(NotificationStatus::Pending.as_str())
            .run(write.conn())
            .await?;
        let deleted = sqlx::query::<B::Db>("DELETE FROM alert_rules WHERE id = $1")
            .arg(id)
            .run(write.conn())
            .await?;
        write.commit().await?;
        Ok(deleted > 0)
    }

    async fn record_transition(
        &self,
        transition: &Transition,
        fence: Fence<'_>,
    ) -> Result<Option<bool>, StoreError> {
        let mut tx = self.begin().await?;
        if !lease_held::<B::Db>(&mut tx, fence.lease, fence.holder, fence.token, fence.now).await? {
            return Ok(None);
        }
        let moved = sqlx::query::<B::Db>(
            "UPDATE alert_rules SET state = $1, since = $2, value = $3 \
             WHERE id = $4 AND state = $5 AND since = $6",
        )
        .arg(transition.to.0.as_str())
        .arg(transition.to.1)
        .arg(transition.value)
        .arg(transition.rule_id.as_str())
        .arg(transition.from.0.as_str())
        .arg(transition.from.1)
        .run(&mut tx)
        .await?;
        if moved == 0 {
            return Ok(Some(false));
        }
        let entry = &transition.entry;
        dynamic::<B::Db>(format!(
            "INSERT INTO alert_history ({HISTORY_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ))
        .arg(entry.id.as_str())
        .arg(entry.rule_id.as_str())
        .arg(entry.rule.as_str())
        .arg(entry.change.as_str())
        .arg(entry.severity.as_str())
        .arg(entry.value)
        .arg(json_text("labels", &entry.labels)?)
        .arg(entry.silenced)
        .arg(entry.at)
        .run(&mut tx)
        .await?;
        for notification in &transition.notifications {
            insert_notification_on::<B::Db>(&mut tx, notification).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Some(true))
    }

    async fn history(
        &self,
        from: Millis,
        to: Millis,
        rule_id: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<HistoryEntry>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let mut query = QueryBuilder::<B::Db>::new(format!(
            "SELECT {HISTORY_COLUMNS} FROM alert_history WHERE at >= "
        ));
        push_arg(&mut query, from);
        query.push(" AND at < ");
        push_arg(&mut query, to);
        if let Some(rule_id) = rule_id {
            query.push(" AND rule_id = ");
            push_arg(&mut query, rule_id);
        }
        if let Some(cursor) = cursor {
            query.push(" AND id < ");
            push_arg(&mut query, cursor);
        }
        query.push(" ORDER BY id DESC LIMIT ");
        push_arg(&mut query, fetch);
        let rows = query.build().all(&mut *read(self).await?).await?;
        let entries = rows
            .iter()
            .map(history_from_row)
            .collect::<Result<_, _>>()?;
        Ok(page(entries, limit, |entry: &HistoryEntry| &entry.id))
    }

    async fn insert_channel(&self, channel: &Channel) -> Result<(), StoreError> {
        let query = dynamic::<B::Db>(format!(
            "INSERT INTO alert_channels ({CHANNEL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .arg(channel.id.as_str())
        .arg(channel.name.as_str())
        .arg(channel.kind.as_str())
        .arg(channel.url.as_deref())
        .arg(channel.secret.as_deref())
        .arg(channel.topic.as_deref())
        .arg(channel.created_at)
        .arg(channel.updated_at);
        write_named(query, &mut *write(self).await?, "channel", &channel.name).await?;
        Ok(())
    }

    async fn get_channel(&self, id: &str) -> Result<Option<Channel>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT {CHANNEL_COLUMNS} FROM alert_channels WHERE id = $1"
        ))
        .arg(id)
        .optional(&mut *read(self).await?)
        .await?
        .as_ref()
        .map(channel_from_row)
        .transpose()
    }

    async fn list_channels(&self) -> Result<Vec<Channel>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT {CHANNEL_COLUMNS} FROM alert_channels ORDER BY id"
        ))
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(channel_from_row)
        .collect()
    }

    async fn update_channel(&self, channel: &Channel) -> Result<bool, StoreError> {
        let query = sqlx::query::<B::Db>(
            "UPDATE alert_channels SET name = $1, url = $2, secret = $3, topic = $4, \
                 updated_at = $5 \
             WHERE id = $6",
        )
        .arg(channel.name.as_str())
        .arg(channel.url.as_deref())
        .arg(channel.secret.as_deref())
        .arg(channel.topic.as_deref())
        .arg(channel.updated_at)
        .arg(channel.id.as_str());
        Ok(write_named(query, &mut *write(self).await?, "channel", &channel.name).await? > 0)
    }

    async fn delete_channel(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query::<B::Db>("DELETE FROM alert_channels WHERE id = $1")
            .arg(id)
            .run(&mut *write(self).await?)
            .await?;
        Ok(deleted > 0)
    }

    async fn insert_silence(&self, silence: &Silence) -> Result<(), StoreError> {
        let matchers = silence
            .matchers
            .as_ref()
            .map(|m: &BTreeMap<String, String>| json_text("matchers", m))
            .transpose()?;
        dynamic::<B::Db>(format!(
            "INSERT INTO alert_silences ({SILENCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .arg(silence.id.as_str())
        .arg(silence.rule_id.as_deref())
        .arg(matchers)
        .arg(silence.until)
        .arg(silence.comment.as_str())
        .arg(silence.created_by.as_str())
        .arg(silence.created_at)
        .run(&mut *write(self).await?)
        .await?;
        Ok(())
    }

    async fn list_silences(&self) -> Result<Vec<Silence>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT {SILENCE_COLUMNS} FROM alert_silences ORDER BY id DESC"
        ))
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(silence_from_row)
        .collect()
    }

    async fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query::<B::Db>("DELETE FROM alert_silences WHERE id = $1")
            .arg(id)
            .run(&mut *write(self).await?)
            .await?;
        Ok(deleted > 0)
    }

    async fn insert_notification(&self, notification: &Notification) -> Result<(), StoreError> {
        insert_notification_on::<B::Db>(&mut *write(self).await?, notification).await
    }

    async fn due_notifications(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM alert_notifications \
             WHERE status = $1 AND next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3"
        ))
        .arg(NotificationStatus::Pending.as_str())
        .arg(now)
        .arg(i64::from(limit))
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(notification_from_row)
        .collect()
    }

    async fn record_attempt(
        &self,
        id: &str,
        attempt: &Attempt,
        outcome: AttemptOutcome,
        fence: Fence<'_>,
    ) -> Result<Option<bool>, StoreError> {
        let mut tx = self.begin().await?;
        if !lease_held::<B::Db>(&mut tx, fence.lease, fence.holder, fence.token, fence.now).await? {
            return Ok(None);
        }
        let row = dynamic::<B::Db>(format!(
            "SELECT attempts FROM alert_notifications WHERE id = $1 AND status = $2{}",
            B::Db::FOR_UPDATE
        ))
        .arg(id)
        .arg(NotificationStatus::Pending.as_str())
        .optional(&mut tx)
        .await?;
        let Some(row) = row else {
            return Ok(Some(false));
        };
        let mut attempts: Vec<Attempt> = row.col_json("attempts")?;
        attempts.push(attempt.clone());
        let (status, next, delivered_at) = match outcome {
            AttemptOutcome::Delivered => (NotificationStatus::Delivered, None, Some(attempt.at)),
            AttemptOutcome::RetryAt(at) => (NotificationStatus::Pending, Some(at), None),
            AttemptOutcome::Expired => (NotificationStatus::Expired, None, None),
        };
        sqlx::query::<B::Db>(
            "UPDATE alert_notifications SET status = $1, attempts = $2, \
                 next_attempt_at = COALESCE($3, next_attempt_at), delivered_at = $4 \
             WHERE id = $5",
        )
        .arg(status.as_str())
        .arg(json_text("attempts", &attempts)?)
        .arg(next)
        .arg(delivered_at)
        .arg(id)
        .run(&mut tx)
        .await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(true))
    }

    async fn get_notification(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        dynamic::<B::Db>(format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM alert_notifications WHERE id = $1"
        ))
        .arg(id)
        .optional(&mut *read(self).await?)
        .await?
        .as_ref()
        .map(notification_from_row)
        .transpose()
    }

    async fn notifications(
        &self,
        rule_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut query = QueryBuilder::<B::Db>::new(format!(
            "SELECT {NOTIFICATION_COLUMNS} FROM alert_notifications"
        ));
        if let Some(rule_id) = rule_id {
            query.push(" WHERE rule_id = ");
            push_arg(&mut query, rule_id);
        }
        query.push(" ORDER BY id DESC LIMIT ");
        push_arg(&mut query, i64::from(limit));
        query
            .build()
            .all(&mut *read(self).await?)
            .await?
            .iter()
            .map(notification_from_row)
            .collect()
    }

    async fn prune_alerts(&self, before: Millis, limit: i64) -> Result<u64, StoreError> {
        let mut conn = write(self).await?;
        let history = sqlx::query::<B::Db>(
            "DELETE FROM alert_history WHERE id IN \
                 (SELECT id FROM alert_history WHERE at < $1 LIMIT $2)",
        )
        .arg(before)
        .arg(limit)
        .run(&mut conn)
        .await?;
        let notifications = sqlx::query::<B::Db>(
            "DELETE FROM alert_notifications WHERE id IN \
                 (SELECT id FROM alert_notifications \
                  WHERE created_at < $1 AND status <> $2 LIMIT $3)",
        )
        .arg(before)
        .arg(NotificationStatus::Pending.as_str())
        .arg(limit)
        .run(&mut conn)
        .await?;
        let silences = sqlx::query::<B::Db>(
            "DELETE FROM alert_silences WHERE id IN \
                 (SELECT id FROM alert_silences WHERE until < $1 LIMIT $2)",
        )
        .arg(before)
        .arg(limit)
        .run(&mut conn)
        .await?;
        Ok(history + notifications + silences)
    }
}
