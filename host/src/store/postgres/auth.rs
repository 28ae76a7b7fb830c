//! [`AuthStore`] on PostgreSQL: the tables of `0010_auth.sql`.

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::super::convert::{db, is_unique_violation, page, page_fetch};
use super::{PostgresStore, col};
use crate::domain::{ApiToken, AuditEntry, Millis, Page, RefreshToken, Role, User};
use crate::store::StoreError;
use crate::store::auth::{AuthStore, NewRefreshToken, Rotation, username_taken};

macro_rules! user_columns {
    () => {
        "id, username, role, disabled, created_at, updated_at, password_hash"
    };
}

macro_rules! token_columns {
    () => {
        "id, name, user_id, role, created_at, expires_at, revoked_at"
    };
}

fn col_role(row: &PgRow, name: &str) -> Result<Role, StoreError> {
    let text: String = col(row, name)?;
    Role::parse(&text).ok_or_else(|| StoreError::Corrupt(format!("{name}: unknown role `{text}`")))
}

fn user_from_row(row: &PgRow) -> Result<(User, String), StoreError> {
    let user = User {
        id: col(row, "id")?,
        username: col(row, "username")?,
        role: col_role(row, "role")?,
        disabled: col::<bool>(row, "disabled")?,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    };
    Ok((user, col(row, "password_hash")?))
}

fn token_from_row(row: &PgRow) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: col(row, "id")?,
        name: col(row, "name")?,
        user_id: col(row, "user_id")?,
        role: col_role(row, "role")?,
        created_at: col(row, "created_at")?,
        expires_at: col(row, "expires_at")?,
        revoked_at: col(row, "revoked_at")?,
    })
}

fn audit_from_row(row: &PgRow) -> Result<AuditEntry, StoreError> {
    let details: String = col(row, "details")?;
    Ok(AuditEntry {
        id: col(row, "id")?,
        at: col(row, "at")?,
        actor: col(row, "actor")?,
        action: col(row, "action")?,
        target: col(row, "target")?,
        details: serde_json::from_str(&details)
            .map_err(|err| StoreError::Corrupt(format!("details: {err}")))?,
    })
}

/// Stores one refresh token, inside the caller's transaction or on its own.
async fn insert_refresh_token<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    token: &RefreshToken,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family, user_id, token_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&token.id)
    .bind(&token.family)
    .bind(&token.user_id)
    .bind(&token.token_hash)
    .bind(token.created_at)
    .bind(token.expires_at)
    .execute(executor)
    .await
    .map_err(db)?;
    Ok(())
}

/// Revokes every token of a session that is not revoked yet.
async fn revoke_family<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Postgres>,
    family: &str,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(family)
    .execute(executor)
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait::async_trait]
impl AuthStore for PostgresStore {
    async fn count_users(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(count.max(0) as u64)
    }

    async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // Two creators of `Admin` and `ADMIN` at once would both see neither: the lock,
        // held to the commit, makes the second wait and then see the first.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('runcell.username:' || lower($1)))")
            .bind(&user.username)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, role, password_hash, disabled, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($2))",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(password_hash)
        .bind(user.disabled)
        .bind(user.created_at)
        .bind(user.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|err| {
            if is_unique_violation(&err) {
                StoreError::Conflict(format!("a user with id `{}` already exists", user.id))
            } else {
                db(err)
            }
        })?;
        if inserted.rows_affected() == 0 {
            return Err(username_taken(&user.username));
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<(User, String)>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE lower(username) = lower($1) ORDER BY username = $1 DESC, created_at, id LIMIT 1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<(User, String)>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|row| user_from_row(row).map(|(user, _)| user))
        .collect()
    }

    async fn update_user(
        &self,
        user: &User,
        password_hash: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let updated = sqlx::query(
            "UPDATE users SET role = $1, disabled = $2, updated_at = $3, \
                 password_hash = COALESCE($4, password_hash) \
             WHERE id = $5",
        )
        .bind(user.role.as_str())
        .bind(user.disabled)
        .bind(user.updated_at)
        .bind(password_hash)
        .bind(&user.id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        if password_hash.is_some() || user.disabled {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(&user.id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        // Sessions and tokens go with the user (ON DELETE CASCADE).
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn count_active_admins(&self) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND NOT disabled")
                .fetch_one(&self.pool)
                .await
                .map_err(db)?;
        Ok(count.max(0) as u64)
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError> {
        insert_refresh_token(&self.pool, token).await?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        successor: &NewRefreshToken,
        now: Millis,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let Some(row) = sqlx::query(
            "SELECT id, family, user_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(presented_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        else {
            return Ok(Rotation::Invalid);
        };
        let id: String = col(&row, "id")?;
        let family: String = col(&row, "family")?;
        let user_id: String = col(&row, "user_id")?;
        let expires_at: Millis = col(&row, "expires_at")?;
        let used_at: Option<Millis> = col(&row, "used_at")?;
        let revoked_at: Option<Millis> = col(&row, "revoked_at")?;
        if revoked_at.is_some() || expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        if used_at.is_some() {
            revoke_family(&mut *tx, &family, now).await?;
            tx.commit().await.map_err(db)?;
            return Ok(Rotation::Reused { family, user_id });
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let successor = RefreshToken {
            id: successor.id.clone(),
            family,
            user_id,
            token_hash: successor.token_hash.clone(),
            created_at: now,
            expires_at: successor.expires_at,
        };
        insert_refresh_token(&mut *tx, &successor).await?;
        tx.commit().await.map_err(db)?;
        Ok(Rotation::Rotated { successor })
    }

    async fn revoke_session(&self, family: &str, now: Millis) -> Result<(), StoreError> {
        revoke_family(&self.pool, family, now).await?;
        Ok(())
    }

    async fn session_active(&self, family: &str, now: Millis) -> Result<bool, StoreError> {
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM refresh_tokens \
             WHERE family = $1 AND revoked_at IS NULL AND expires_at > $2 LIMIT 1",
        )
        .bind(family)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(active.is_some())
    }

    async fn insert_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens \
                 (id, name, user_id, role, token_hash, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.user_id)
        .bind(token.role.as_str())
        .bind(token_hash)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .map(|row| token_from_row(&row))
        .transpose()
    }

    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .map(|row| token_from_row(&row))
        .transpose()
    }

    async fn list_api_tokens(&self, user_id: Option<&str>) -> Result<Vec<ApiToken>, StoreError> {
        let rows = match user_id {
            Some(user_id) => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens WHERE user_id = $1 ORDER BY id DESC"
            ))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?,
            None => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens ORDER BY id DESC"
            ))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?,
        };
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_api_token(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        let revoked = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(revoked > 0)
    }

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, target, details) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&entry.id)
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.details.to_string())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_audit(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, details FROM audit_log \
             WHERE $1::TEXT IS NULL OR id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(cursor)
        .bind(cursor)
        .bind(fetch)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let entries = rows.iter().map(audit_from_row).collect::<Result<_, _>>()?;
        Ok(page(entries, limit, |e: &AuditEntry| &e.id))
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO shared_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        let row = sqlx::query("SELECT value FROM shared_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        row.try_get("value").map_err(db)
    }
}
