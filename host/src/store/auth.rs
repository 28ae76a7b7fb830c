//! Durable state of authentication: users, login sessions (refresh-token families), API
//! tokens, the audit trail and generated shared secrets. Stores hashes, never secrets;
//! decides no policy (who may do what is `services::auth`'s job).

use crate::domain::{ApiToken, AuditEntry, Millis, Page, RefreshToken, User};

use super::StoreError;

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rotation {
    /// The token was current: it is now used, and `successor` replaces it.
    Rotated { successor: RefreshToken },
    /// The token had already been rotated: it leaked. Its whole family is now revoked.
    Reused { family: String, user_id: String },
    /// Unknown, expired or revoked: nothing changed.
    Invalid,
}

/// The successor of a rotated refresh token; the family and user are the old token's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewRefreshToken {
    pub id: String,
    pub token_hash: String,
    pub expires_at: Millis,
}

/// The answer to creating a user whose name is taken (in any letter case).
pub(crate) fn username_taken(username: &str) -> StoreError {
    StoreError::Conflict(format!(
        "a user named `{username}` already exists (usernames compare without letter case)"
    ))
}

#[async_trait::async_trait]
pub(crate) trait AuthStore: Send + Sync + 'static {
    // ---- users ---------------------------------------------------------------------

    async fn count_users(&self) -> Result<u64, StoreError>;

    /// Creates a user; `Conflict` if the username is taken, in any letter case (`Admin`
    /// cannot join `admin`).
    async fn insert_user(&self, user: &User, password_hash: &str) -> Result<(), StoreError>;

    /// A user and their password hash, by username in any letter case. A deployment
    /// that holds names differing only in case (created before names compared so) finds
    /// the exact spelling first, else the oldest of them.
    async fn user_by_name(&self, username: &str) -> Result<Option<(User, String)>, StoreError>;

    /// A user and their password hash, by id.
    async fn user_by_id(&self, id: &str) -> Result<Option<(User, String)>, StoreError>;

    /// All users, by username.
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;

    /// Replaces a user's role, state and, when given, password hash; `false` if the user
    /// does not exist. A new password or disabling the user also ends every session of
    /// the user in the same transaction, so no login outlives the change. (API tokens
    /// need nothing: their effective role is capped by their user's at each use.)
    async fn update_user(
        &self,
        user: &User,
        password_hash: Option<&str>,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Deletes a user with their sessions and API tokens; `false` if they did not exist.
    async fn delete_user(&self, id: &str) -> Result<bool, StoreError>;

    /// Enabled users with the admin role.
    async fn count_active_admins(&self) -> Result<u64, StoreError>;

    // ---- sessions ------------------------------------------------------------------

    /// Stores the first refresh token of a new login.
    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError>;

    /// Presents the refresh token with hash `presented_hash` at `now`, atomically: a
    /// current token is marked used and replaced by `successor`; a used one revokes its
    /// family.
    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        successor: &NewRefreshToken,
        now: Millis,
    ) -> Result<Rotation, StoreError>;

    /// Ends a session: every token of the family is revoked.
    async fn revoke_session(&self, family: &str, now: Millis) -> Result<(), StoreError>;

    /// Whether a session may still be used: one of its tokens is unrevoked and unexpired.
    async fn session_active(&self, family: &str, now: Millis) -> Result<bool, StoreError>;

    // ---- API tokens ----------------------------------------------------------------

    async fn insert_api_token(&self, token: &ApiToken, token_hash: &str) -> Result<(), StoreError>;

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, StoreError>;

    async fn get_api_token(&self, id: &str) -> Result<Option<ApiToken>, StoreError>;

    /// Tokens newest first, of one user or of everyone.
    async fn list_api_tokens(&self, user_id: Option<&str>) -> Result<Vec<ApiToken>, StoreError>;

    /// Revokes a token; `false` if it does not exist or was already revoked.
    async fn revoke_api_token(&self, id: &str, now: Millis) -> Result<bool, StoreError>;

    // ---- audit ---------------------------------------------------------------------

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;

    /// Entries newest first, `limit` after the one with id `cursor`.
    async fn list_audit(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError>;

    // ---- shared secrets ------------------------------------------------------------

    /// The stored secret `name`, storing `candidate` first if there is none: every node
    /// that asks gets the first writer's value.
    async fn shared_secret(&self, name: &str, candidate: &str) -> Result<String, StoreError>;
}
