//! [`AuthStore`] on SQLite: the tables of `0010_auth.sql`.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, col, db, is_unique_violation, page, page_fetch};
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

fn col_role(row: &SqliteRow, name: &str) -> Result<Role, StoreError> {
    let text: String = col(row, name)?;
    Role::parse(&text).ok_or_else(|| StoreError::Corrupt(format!("{name}: unknown role `{text}`")))
}

fn user_from_row(row: &SqliteRow) -> Result<(User, String), StoreError> {
    let user = User {
        id: col(row, "id")?,
        username: col(row, "username")?,
        role: col_role(row, "role")?,
        disabled: col::<i64>(row, "disabled")? != 0,
        created_at: col(row, "created_at")?,
        updated_at: col(row, "updated_at")?,
    };
    Ok((user, col(row, "password_hash")?))
}

fn token_from_row(row: &SqliteRow) -> Result<ApiToken, StoreError> {
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

fn audit_from_row(row: &SqliteRow) -> Result<AuditEntry, StoreError> {
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
    executor: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    token: &RefreshToken,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family, user_id, token_hash, created_at, expires_at) \
         VALUES (?, ?, ?, ?, ?, ?)",
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
    executor: impl sqlx::Executor<'e, Database = sqlx::Sqlite>,
    family: &str,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE refresh_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL")
        .bind(now)
        .bind(family)
        .execute(executor)
        .await
        .map_err(db)?;
    Ok(())
}

#[async_trait::async_trait]
impl AuthStore for SqliteStore {
    async fn count_users(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.reader)
            .await
            .map_err(db)?;
        Ok(count.max(0) as u64)
    }

    async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        // One statement on the one writer: the check and the insert cannot interleave
        // with another's.
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, role, password_hash, disabled, created_at, updated_at) \
             SELECT ?, ?, ?, ?, ?, ?, ? \
             WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower(?))",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(user.role.as_str())
        .bind(password_hash)
        .bind(i64::from(user.disabled))
        .bind(user.created_at)
        .bind(user.updated_at)
        .bind(&user.username)
        .execute(&self.writer)
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
        Ok(())
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<(User, String)>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE lower(username) = lower(?) ORDER BY username = ? DESC, created_at, id LIMIT 1"
        ))
        .bind(username)
        .bind(username)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<(User, String)>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
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
        .fetch_all(&self.reader)
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
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE users SET role = ?, disabled = ?, updated_at = ?, \
                 password_hash = COALESCE(?, password_hash) \
             WHERE id = ?",
        )
        .bind(user.role.as_str())
        .bind(i64::from(user.disabled))
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
                "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
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
        let deleted = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn count_active_admins(&self) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0")
                .fetch_one(&self.reader)
                .await
                .map_err(db)?;
        Ok(count.max(0) as u64)
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError> {
        insert_refresh_token(&self.writer, token).await?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        successor: &NewRefreshToken,
        now: Millis,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query(
            "SELECT id, family, user_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_hash = ?",
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
        sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE id = ?")
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
        revoke_family(&self.writer, family, now).await?;
        Ok(())
    }

    async fn session_active(&self, family: &str, now: Millis) -> Result<bool, StoreError> {
        let active: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM refresh_tokens \
             WHERE family = ? AND revoked_at IS NULL AND expires_at > ? LIMIT 1",
        )
        .bind(family)
        .bind(now)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        Ok(active.is_some())
    }

    async fn insert_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens \
                 (id, name, user_id, role, token_hash, created_at, expires_at, revoked_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.user_id)
        .bind(token.role.as_str())
        .bind(token_hash)
        .bind(token.created_at)
        .bind(token.expires_at)
        .bind(token.revoked_at)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_hash = ?"
        ))
        .bind(token_hash)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?
        .map(|row| token_from_row(&row))
        .transpose()
    }

    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
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
                " FROM api_tokens WHERE user_id = ? ORDER BY id DESC"
            ))
            .bind(user_id)
            .fetch_all(&self.reader)
            .await
            .map_err(db)?,
            None => sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM api_tokens ORDER BY id DESC"
            ))
            .fetch_all(&self.reader)
            .await
            .map_err(db)?,
        };
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_api_token(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        let revoked =
            sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.writer)
                .await
                .map_err(db)?
                .rows_affected();
        Ok(revoked > 0)
    }

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, at, actor, action, target, details) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&entry.id)
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.details.to_string())
        .execute(&self.writer)
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
             WHERE ? IS NULL OR id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(cursor)
        .bind(cursor)
        .bind(fetch)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        let entries = rows.iter().map(audit_from_row).collect::<Result<_, _>>()?;
        Ok(page(entries, limit, |e: &AuditEntry| &e.id))
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO shared_secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        let row = sqlx::query("SELECT value FROM shared_secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.writer)
            .await
            .map_err(db)?;
        row.try_get("value").map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user row as an older version wrote it, when names still compared with case.
    async fn old_user(store: &SqliteStore, id: &str, username: &str, created_at: Millis) {
        sqlx::query(
            "INSERT INTO users (id, username, role, password_hash, disabled, created_at, updated_at) \
             VALUES (?, ?, 'viewer', 'hash', 0, ?, ?)",
        )
        .bind(id)
        .bind(username)
        .bind(created_at)
        .bind(created_at)
        .execute(&store.writer)
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn names_that_differ_only_in_case_from_before_keep_working_and_no_new_one_joins() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        old_user(&store, "u1", "Admin", 1).await;
        old_user(&store, "u2", "admin", 2).await;
        let found = |name: &'static str| {
            let store = store.clone();
            async move { store.user_by_name(name).await.unwrap().unwrap().0.id }
        };
        assert_eq!(found("Admin").await, "u1");
        assert_eq!(found("admin").await, "u2");
        // Another spelling reaches the oldest.
        assert_eq!(found("ADMIN").await, "u1");

        let user = User {
            id: "u3".into(),
            username: "aDmin".into(),
            role: Role::Viewer,
            disabled: false,
            created_at: 3,
            updated_at: 3,
        };
        let taken = store.insert_user(&user, "hash").await;
        assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
        assert_eq!(store.count_users().await.unwrap(), 2);
    }
}
