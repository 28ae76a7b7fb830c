//! [`AuthStore`] for every [`Backend`]: the tables of `0010_auth.sql`, written once.

use super::{Backend, dynamic, read, write};
use crate::domain::{ApiToken, AuditEntry, Millis, Page, RefreshToken, Role, User};
use crate::store::StoreError;
use crate::store::auth::{AuthStore, NewRefreshToken, Rotation, username_taken};
use crate::store::convert::{db, is_unique_violation, page, page_fetch};
use crate::store::sql::{Bind, Columns, Run, Sql};

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

fn col_role(row: &impl Columns, name: &str) -> Result<Role, StoreError> {
    let text: &str = row.col(name)?;
    Role::parse(text).ok_or_else(|| StoreError::Corrupt(format!("{name}: unknown role `{text}`")))
}

fn user_from_row(row: &impl Columns) -> Result<(User, String), StoreError> {
    let user = User {
        id: row.col("id")?,
        username: row.col("username")?,
        role: col_role(row, "role")?,
        disabled: row.col("disabled")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
    };
    Ok((user, row.col("password_hash")?))
}

fn token_from_row(row: &impl Columns) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: row.col("id")?,
        name: row.col("name")?,
        user_id: row.col("user_id")?,
        role: col_role(row, "role")?,
        created_at: row.col("created_at")?,
        expires_at: row.col("expires_at")?,
        revoked_at: row.col("revoked_at")?,
    })
}

fn audit_from_row(row: &impl Columns) -> Result<AuditEntry, StoreError> {
    let details: &str = row.col("details")?;
    Ok(AuditEntry {
        id: row.col("id")?,
        at: row.col("at")?,
        actor: row.col("actor")?,
        action: row.col("action")?,
        target: row.col("target")?,
        details: serde_json::from_str(details)
            .map_err(|err| StoreError::Corrupt(format!("details: {err}")))?,
    })
}

/// Stores one refresh token, inside the caller's transaction or on its own.
async fn insert_refresh_token<DB: Sql>(
    conn: &mut DB::Connection,
    token: &RefreshToken,
) -> Result<(), StoreError> {
    sqlx::query::<DB>(
        "INSERT INTO refresh_tokens (id, family, user_id, token_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .arg(token.id.as_str())
    .arg(token.family.as_str())
    .arg(token.user_id.as_str())
    .arg(token.token_hash.as_str())
    .arg(token.created_at)
    .arg(token.expires_at)
    .run(conn)
    .await?;
    Ok(())
}

/// Revokes every token of a session that is not revoked yet.
async fn revoke_family<DB: Sql>(
    conn: &mut DB::Connection,
    family: &str,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query::<DB>(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
    )
    .arg(now)
    .arg(family)
    .run(conn)
    .await?;
    Ok(())
}

#[async_trait::async_trait]
impl<B: Backend> AuthStore for B {
    async fn count_users(&self) -> Result<u64, StoreError> {
        let row = sqlx::query::<B::Db>("SELECT COUNT(*) AS n FROM users")
            .one(&mut *read(self).await?)
            .await?;
        Ok(row.col::<i64>("n")?.max(0) as u64)
    }

    async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // Two creators of `Admin` and `ADMIN` at once would both see neither: where
        // writers run side by side, a lock on the lower-cased name, held to the commit,
        // makes the second wait and then see the first (SQLite's single writer already
        // runs one after the other).
        if let Some(lock) = B::Db::USERNAME_LOCK {
            sqlx::query::<B::Db>(lock)
                .arg(user.username.as_str())
                .run(&mut tx)
                .await?;
        }
        let inserted = sqlx::query::<B::Db>(
            "INSERT INTO users (id, username, role, password_hash, disabled, created_at, updated_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($2))",
        )
        .arg(user.id.as_str())
        .arg(user.username.as_str())
        .arg(user.role.as_str())
        .arg(password_hash)
        .arg(user.disabled)
        .arg(user.created_at)
        .arg(user.updated_at);
        let inserted = match B::Db::execute(inserted, &mut tx).await {
            Ok(inserted) => inserted,
            Err(err) if is_unique_violation(&err) => {
                return Err(StoreError::Conflict(format!(
                    "a user with id `{}` already exists",
                    user.id
                )));
            }
            Err(err) => return Err(db(err)),
        };
        if inserted == 0 {
            return Err(username_taken(&user.username));
        }
        tx.commit().await.map_err(db)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<(User, String)>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE lower(username) = lower($1) \
              ORDER BY username = $1 DESC, created_at, id LIMIT 1"
        ))
        .arg(username)
        .optional(&mut *read(self).await?)
        .await?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<(User, String)>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE id = $1"
        ))
        .arg(id)
        .optional(&mut *read(self).await?)
        .await?
        .map(|row| user_from_row(&row))
        .transpose()
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY username"
        ))
        .all(&mut *read(self).await?)
        .await?
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
        let mut tx = self.begin().await?;
        let updated = sqlx::query::<B::Db>(
            "UPDATE users SET role = $1, disabled = $2, updated_at = $3, \
                 password_hash = COALESCE($4, password_hash) \
             WHERE id = $5",
        )
        .arg(user.role.as_str())
        .arg(user.disabled)
        .arg(user.updated_at)
        .arg(password_hash)
        .arg(user.id.as_str())
        .run(&mut tx)
        .await?;
        if updated == 0 {
            return Ok(false);
        }
        if password_hash.is_some() || user.disabled {
            sqlx::query::<B::Db>(
                "UPDATE refresh_tokens SET revoked_at = $1 \
                 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .arg(now)
            .arg(user.id.as_str())
            .run(&mut tx)
            .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    async fn delete_user(&self, id: &str) -> Result<bool, StoreError> {
        // Sessions and tokens go with the user (ON DELETE CASCADE).
        let deleted = sqlx::query::<B::Db>("DELETE FROM users WHERE id = $1")
            .arg(id)
            .run(&mut *write(self).await?)
            .await?;
        Ok(deleted > 0)
    }

    async fn count_active_admins(&self) -> Result<u64, StoreError> {
        let row = sqlx::query::<B::Db>(
            "SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND NOT disabled",
        )
        .one(&mut *read(self).await?)
        .await?;
        Ok(row.col::<i64>("n")?.max(0) as u64)
    }

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError> {
        insert_refresh_token::<B::Db>(&mut *write(self).await?, token).await
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        successor: &NewRefreshToken,
        now: Millis,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.begin().await?;
        // Locked: of two presentations of one token at once, the second waits and then
        // finds it used.
        let Some(row) = dynamic::<B::Db>(format!(
            "SELECT id, family, user_id, expires_at, used_at, revoked_at \
             FROM refresh_tokens WHERE token_hash = $1{}",
            B::Db::FOR_UPDATE
        ))
        .arg(presented_hash)
        .optional(&mut tx)
        .await?
        else {
            return Ok(Rotation::Invalid);
        };
        let id: String = row.col("id")?;
        let family: String = row.col("family")?;
        let user_id: String = row.col("user_id")?;
        let expires_at: Millis = row.col("expires_at")?;
        let used_at: Option<Millis> = row.col("used_at")?;
        let revoked_at: Option<Millis> = row.col("revoked_at")?;
        if revoked_at.is_some() || expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        if used_at.is_some() {
            revoke_family::<B::Db>(&mut tx, &family, now).await?;
            tx.commit().await.map_err(db)?;
            return Ok(Rotation::Reused { family, user_id });
        }
        sqlx::query::<B::Db>("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2")
            .arg(now)
            .arg(id.as_str())
            .run(&mut tx)
            .await?;
        let successor = RefreshToken {
            id: successor.id.clone(),
            family,
            user_id,
            token_hash: successor.token_hash.clone(),
            created_at: now,
            expires_at: successor.expires_at,
        };
        insert_refresh_token::<B::Db>(&mut tx, &successor).await?;
        tx.commit().await.map_err(db)?;
        Ok(Rotation::Rotated { successor })
    }

    async fn revoke_session(&self, family: &str, now: Millis) -> Result<(), StoreError> {
        revoke_family::<B::Db>(&mut *write(self).await?, family, now).await
    }

    async fn session_active(&self, family: &str, now: Millis) -> Result<bool, StoreError> {
        let active = sqlx::query::<B::Db>(
            "SELECT 1 FROM refresh_tokens \
             WHERE family = $1 AND revoked_at IS NULL AND expires_at > $2 LIMIT 1",
        )
        .arg(family)
        .arg(now)
        .optional(&mut *read(self).await?)
        .await?;
        Ok(active.is_some())
    }

    async fn insert_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query::<B::Db>(
            "INSERT INTO api_tokens \
                 (id, name, user_id, role, token_hash, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .arg(token.id.as_str())
        .arg(token.name.as_str())
        .arg(token.user_id.as_str())
        .arg(token.role.as_str())
        .arg(token_hash)
        .arg(token.created_at)
        .arg(token.expires_at)
        .arg(token.revoked_at)
        .run(&mut *write(self).await?)
        .await?;
        Ok(())
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE token_hash = $1"
        ))
        .arg(token_hash)
        .optional(&mut *read(self).await?)
        .await?
        .map(|row| token_from_row(&row))
        .transpose()
    }

    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE id = $1"
        ))
        .arg(id)
        .optional(&mut *read(self).await?)
        .await?
        .map(|row| token_from_row(&row))
        .transpose()
    }

    async fn list_api_tokens(&self, user_id: Option<&str>) -> Result<Vec<ApiToken>, StoreError> {
        sqlx::query::<B::Db>(concat!(
            "SELECT ",
            token_columns!(),
            " FROM api_tokens WHERE $1 IS NULL OR user_id = $1 ORDER BY id DESC"
        ))
        .arg(user_id)
        .all(&mut *read(self).await?)
        .await?
        .iter()
        .map(token_from_row)
        .collect()
    }

    async fn revoke_api_token(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        let revoked = sqlx::query::<B::Db>(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .arg(now)
        .arg(id)
        .run(&mut *write(self).await?)
        .await?;
        Ok(revoked > 0)
    }

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query::<B::Db>(
            "INSERT INTO audit_log (id, at, actor, action, target, details) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .arg(entry.id.as_str())
        .arg(entry.at)
        .arg(entry.actor.as_str())
        .arg(entry.action.as_str())
        .arg(entry.target.as_str())
        .arg(entry.details.to_string())
        .run(&mut *write(self).await?)
        .await?;
        Ok(())
    }

    async fn list_audit(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError> {
        let (limit, fetch) = page_fetch(limit);
        let rows = sqlx::query::<B::Db>(
            "SELECT id, at, actor, action, target, details FROM audit_log \
             WHERE $1 IS NULL OR id < $1 ORDER BY id DESC LIMIT $2",
        )
        .arg(cursor)
        .arg(fetch)
        .all(&mut *read(self).await?)
        .await?;
        let entries = rows.iter().map(audit_from_row).collect::<Result<_, _>>()?;
        Ok(page(entries, limit, |e: &AuditEntry| &e.id))
    }

    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        let mut conn = write(self).await?;
        sqlx::query::<B::Db>(
            "INSERT INTO shared_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .arg(name)
        .arg(candidate)
        .run(&mut conn)
        .await?;
        let row = sqlx::query::<B::Db>("SELECT value FROM shared_secrets WHERE name = $1")
            .arg(name)
            .one(&mut conn)
            .await?;
        row.col("value")
    }
}
