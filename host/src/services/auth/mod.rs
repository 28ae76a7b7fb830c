//! Who is asking and what they may do: logins, rotating refresh tokens with reuse
//! detection, access tokens, API tokens, users and the audit trail. Owns every rule
//! about credentials; the API only carries them in and out. Secrets (passwords, tokens,
//! the signing key) never reach a log line, an error message or a response, except the
//! one response that hands a new secret to its owner.

pub(crate) mod jwt;
pub(crate) mod password;
pub(crate) mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::domain::{
    ApiToken, AuditEntry, Credential, Millis, Page, Principal, RefreshToken, Role, User, new_id,
    now_millis,
};
use crate::store::AuthStore;
use crate::store::auth::{NewRefreshToken, Rotation};

use super::ServiceError;
use jwt::{SigningKey, TokenCodec};
use password::{HashCost, HashGate, HashLimits};
use throttle::{Attempt, Throttle, ThrottleLimits};

/// Where API token secrets start: lets the server tell them from JWTs at a glance, and
/// lets secret scanners recognise a leaked one.
pub(crate) const API_TOKEN_PREFIX: &str = "rct_";
/// Where refresh token secrets start.
pub(crate) const REFRESH_TOKEN_PREFIX: &str = "rcr_";

/// How long what a credential check learned from the store is reused. Bounds how long a
/// logout, a revoked token or a disabled user takes to bite on every node, and saves a
/// database read per request in between.
const PRINCIPAL_CACHE_MS: Millis = 2_000;
/// Entries kept before the cache is emptied, so it cannot grow without bound.
const PRINCIPAL_CACHE_MAX: usize = 10_000;

/// The service's idea of now; tests move it.
pub(crate) type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// The rules of one deployment.
#[derive(Debug, Clone)]
pub(crate) struct AuthSettings {
    pub access_ttl_ms: Millis,
    pub refresh_ttl_ms: Millis,
    pub issuer: String,
    pub audience: String,
    pub hash_cost: HashCost,
    /// How many password hashes run and wait at once (each holds 19 MiB while it runs).
    pub hash_limits: HashLimits,
    pub throttle: ThrottleLimits,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            access_ttl_ms: 15 * 60 * 1000,
            refresh_ttl_ms: 14 * 24 * 60 * 60 * 1000,
            issuer: "runcell".to_owned(),
            audience: "runcell-api".to_owned(),
            hash_cost: HashCost::default(),
            hash_limits: HashLimits::for_this_machine(),
            throttle: ThrottleLimits::default(),
        }
    }
}

impl AuthSettings {
    /// The defaults with hashing cheap enough for tests that log in many times; never for
    /// a server.
    #[cfg(test)]
    pub(crate) fn cheap_for_tests() -> Self {
        Self {
            hash_cost: HashCost {
                memory_kib: 64,
                passes: 1,
            },
            // Fixed, so tests of bursts answer alike on any machine.
            hash_limits: HashLimits {
                running: 2,
                waiting: 8,
            },
            throttle: ThrottleLimits {
                account_delay_ms: 10,
                account_delay_max_ms: 40,
                ..ThrottleLimits::default()
            },
            ..Self::default()
        }
    }
}

/// What a login or a refresh hands back. `refresh_token` is the only copy of the secret.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub access_token: String,
    /// How long the access token lives, in seconds (what OAuth calls `expires_in`).
    pub access_ttl_secs: i64,
    pub refresh_token: String,
    pub refresh_expires_at: Millis,
    pub user: User,
}

/// A new user, as an admin or the CLI asks for it.
#[derive(Debug, Clone)]
pub(crate) struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
}

/// Changes to a user; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub(crate) struct UserPatch {
    pub role: Option<Role>,
    pub password: Option<String>,
    pub disabled: Option<bool>,
}

/// A new API token, as its creator asks for it.
#[derive(Debug, Clone)]
pub(crate) struct NewApiToken {
    pub name: String,
    pub role: Role,
    pub expires_at: Option<Millis>,
}

/// The audit trail's name for changes made by the server itself.
pub(crate) const SYSTEM_ACTOR: &str = "system";

#[derive(Clone)]
pub(crate) struct AuthService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn AuthStore>,
    settings: AuthSettings,
    codec: TokenCodec,
    clock: Clock,
    throttle: Throttle,
    /// Every password hash and verification goes through it.
    hashes: HashGate,
    /// Verified against when the username is unknown, so that answer takes as long as a
    /// wrong password does and does not reveal which usernames exist.
    decoy_hash: String,
    principals: Mutex<HashMap<String, (Principal, Millis)>>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

/// Random bytes as URL-safe text, from the thread-local CSPRNG (ChaCha, seeded by the
/// operating system).
pub(crate) fn random_secret(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// The stored form of a high-entropy token secret.
fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn unauthenticated(message: &str) -> ServiceError {
    ServiceError::Unauthenticated(message.to_owned())
}

/// The longest username: what a login may name, logs show and the throttle keeps.
pub(crate) const MAX_USERNAME_BYTES: usize = 64;

/// A username as a log line may show it: at most [`MAX_USERNAME_BYTES`], with a mark
/// when cut, so a login naming megabytes cannot fill the log.
fn loggable(username: &str) -> String {
    if username.len() <= MAX_USERNAME_BYTES {
        return username.to_owned();
    }
    let mut end = MAX_USERNAME_BYTES;
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &username[..end], username.len())
}

/// Usernames are short, printable and unambiguous in logs and URLs; they compare
/// without letter case.
fn check_username(username: &str) -> Result<(), ServiceError> {
    let valid = !username.is_empty()
        && username.len() <= MAX_USERNAME_BYTES
        && username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if valid {
        Ok(())
    } else {
        Err(ServiceError::bad(
            "username",
            "username: use 1 to 64 letters, digits, `.`, `_`, `-` or `@`",
        ))
    }
}

impl AuthService {
    pub(crate) async fn new(
        store: Arc<dyn AuthStore>,
        key: SigningKey,
        settings: AuthSettings,
        clock: Clock,
    ) -> Result<Self, ServiceError> {
        let decoy_hash = password::hash(settings.hash_cost, random_secret(16)).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                codec: TokenCodec::new(key, &settings.issuer, &settings.audience),
                throttle: Throttle::new(settings.throttle),
                hashes: HashGate::new(settings.hash_limits),
                settings,
                clock,
                decoy_hash,
                principals: Mutex::default(),
            }),
        })
    }

    /// The system clock.
    pub(crate) fn system_clock() -> Clock {
        Arc::new(now_millis)
    }

    fn now(&self) -> Millis {
        (self.inner.clock)()
    }

    fn store(&self) -> &dyn AuthStore {
        self.inner.store.as_ref()
    }

    // ---- first start ---------------------------------------------------------------

    /// Creates the `admin` user if there is no user at all. Returns the password when it
    /// had to generate one (`password` was `None`), for the caller to show once.
    pub(crate) async fn ensure_first_admin(
        &self,
        password: Option<String>,
    ) -> Result<Option<String>, ServiceError> {
        if self.store().count_users().await? > 0 {
            return Ok(None);
        }
        let (password, generated) = match password {
            Some(password) => {
                password::check_policy("RUNCELL_ADMIN_PASSWORD", &password)?;
                (password, false)
            }
            None => (random_secret(18), true),
        };
        let created = self
            .create_user(
                SYSTEM_ACTOR,
                NewUser {
                    username: "admin".to_owned(),
                    password: password.clone(),
                    role: Role::Admin,
                },
            )
            .await;
        match created {
            Ok(_) => Ok(generated.then_some(password)),
            // Another node created it first.
            Err(ServiceError::Conflict(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    // ---- sessions ------------------------------------------------------------------

    /// Logs in with a password. Unknown users, wrong passwords and disabled users get
    /// the same answer after the same work. The attempt is counted against the throttle
    /// before its password is hashed (see [`throttle`]), and an account under attack
    /// makes each attempt wait a bounded delay first.
    pub(crate) async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<Session, ServiceError> {
        if username.is_empty() || username.len() > MAX_USERNAME_BYTES {
            // No such user can exist; not worth a hash, nor a throttle entry.
            tracing::info!(username = %loggable(username), "login failed");
            return Err(unauthenticated("invalid username or password"));
        }
        let attempt = Attempt::login(username, client);
        let delay_ms = self
            .inner
            .throttle
            .begin(&attempt, self.now())
            .map_err(|wait_ms| ServiceError::Throttled {
                message: "too many failed logins from this address; wait before trying again"
                    .to_owned(),
                retry_after_secs: (wait_ms + 999) / 1000,
            })?;
        if delay_ms > 0 {
            tracing::info!(
                username,
                delay_ms,
                "login delayed: the account is under attack"
            );
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms.unsigned_abs())).await;
        }
        let checked = self.check_login(username, password).await;
        let user = match checked {
            Ok(Some(user)) => user,
            Ok(None) => {
                self.inner.throttle.failed(&attempt);
                tracing::info!(username, "login failed");
                return Err(unauthenticated("invalid username or password"));
            }
            Err(err) => {
                self.inner.throttle.abandoned(&attempt);
                return Err(err);
            }
        };
        self.inner.throttle.succeeded(&attempt);
        let now = self.now();
        let refresh_token = format!("{REFRESH_TOKEN_PREFIX}{}", random_secret(32));
        let first = RefreshToken {
            id: new_id(),
            family: new_id(),
            user_id: user.id.clone(),
            token_hash: token_hash(&refresh_token),
            created_at: now,
            expires_at: now + self.inner.settings.refresh_ttl_ms,
        };
        self.store().insert_refresh_token(&first).await?;
        tracing::info!(username = %user.username, "logged in");
        Ok(self.session(user, &first, refresh_token, now))
    }

    /// The enabled user `username` names if `password` is theirs.
    async fn check_login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<User>, ServiceError> {
        let found = self.store().user_by_name(username).await?;
        let (hash, user) = match found {
            Some((user, hash)) => (hash, Some(user)),
            None => (self.inner.decoy_hash.clone(), None),
        };
        let matches = self.inner.hashes.verify(hash, password.to_owned()).await?;
        Ok(user.filter(|user| matches && !user.disabled))
    }

    /// How many password hashes and verifications this service has run.
    #[cfg(test)]
    pub(crate) fn hashes_started(&self) -> u64 {
        self.inner.hashes.started()
    }

    fn session(&self, user: User, refresh: &RefreshToken, secret: String, now: Millis) -> Session {
        let ttl = self.inner.settings.access_ttl_ms;
        let (access_token, _) = self.inner.codec.issue(&user.id, &refresh.family, now, ttl);
        Session {
            access_token,
            access_ttl_secs: ttl / 1000,
            refresh_token: secret,
            refresh_expires_at: refresh.expires_at,
            user,
        }
    }

    /// Trades a refresh token for a new pair. The presented token stops working; if it
    /// had already been traded, it leaked: the whole session is revoked and the event is
    /// logged and audited.
    pub(crate) async fn refresh(&self, refresh_token: &str) -> Result<Session, ServiceError> {
        let now = self.now();
        let secret = format!("{REFRESH_TOKEN_PREFIX}{}", random_secret(32));
        let successor = NewRefreshToken {
            id: new_id(),
            token_hash: token_hash(&secret),
            expires_at: now + self.inner.settings.refresh_ttl_ms,
        };
        let rotation = self
            .store()
            .rotate_refresh_token(&token_hash(refresh_token), &successor, now)
            .await?;
        match rotation {
            Rotation::Invalid => Err(unauthenticated(
                "the refresh token is invalid, expired or revoked; log in again",
            )),
            Rotation::Reused { family, user_id } => {
                let username = self
                    .store()
                    .user_by_id(&user_id)
                    .await?
                    .map_or(user_id.clone(), |(user, _)| user.username);
                tracing::warn!(
                    security = true,
                    username,
                    session = family,
                    "a refresh token was used twice; the session is revoked"
                );
                self.audit(
                    SYSTEM_ACTOR,
                    "security.refresh_reuse",
                    &username,
                    json!({"session": family}),
                )
                .await;
                self.forget_cached(&family);
                Err(unauthenticated(
                    "the refresh token was already used, so the session was revoked; log in again",
                ))
            }
            Rotation::Rotated { successor } => {
                let user = match self.store().user_by_id(&successor.user_id).await? {
                    Some((user, _)) if !user.disabled => user,
                    _ => {
                        self.store().revoke_session(&successor.family, now).await?;
                        return Err(unauthenticated("the account is disabled or gone"));
                    }
                };
                Ok(self.session(user, &successor, secret, now))
            }
        }
    }

    /// Ends the session an access token belongs to. API tokens are revoked instead.
    pub(crate) async fn logout(&self, principal: &Principal) -> Result<(), ServiceError> {
        match &principal.via {
            Credential::Session { session } => {
                self.store().revoke_session(session, self.now()).await?;
                self.forget_cached(session);
                Ok(())
            }
            Credential::ApiToken { .. } => Err(ServiceError::bad(
                "authorization",
                "an API token has no session to log out of; revoke it with DELETE /api/v1/tokens/{id}",
            )),
        }
    }

    // ---- authenticating requests ---------------------------------------------------

    /// Who presents `bearer` (an access token or an API token), with their current role.
    pub(crate) async fn authenticate(&self, bearer: &str) -> Result<Principal, ServiceError> {
        let now = self.now();
        if bearer.starts_with(API_TOKEN_PREFIX) {
            let hash = token_hash(bearer);
            if let Some(principal) = self.cached(&hash, now) {
                return Ok(principal);
            }
            let principal = self.api_token_principal(&hash, now).await?;
            self.cache(hash, principal.clone(), now);
            return Ok(principal);
        }
        let claims = self.inner.codec.verify(bearer, now).map_err(|err| {
            tracing::debug!(error = %err, "access token refused");
            match err {
                jwt::TokenError::Expired => {
                    unauthenticated("the access token has expired; refresh it or log in again")
                }
                _ => unauthenticated("the access token is invalid"),
            }
        })?;
        if let Some(principal) = self.cached(&claims.sid, now)
            && principal.user_id == claims.sub
        {
            return Ok(principal);
        }
        if !self.store().session_active(&claims.sid, now).await? {
            return Err(unauthenticated(
                "the session has ended (logged out or revoked); log in again",
            ));
        }
        let user = self.active_user(&claims.sub).await?;
        let principal = Principal {
            user_id: user.id,
            username: user.username,
            role: user.role,
            via: Credential::Session {
                session: claims.sid.clone(),
            },
        };
        self.cache(claims.sid, principal.clone(), now);
        Ok(principal)
    }

    /// Whether `text` (a header value) carries a Runcell credential: an API or refresh
    /// token (recognised by their prefixes), or an access token this deployment signed,
    /// expired or not. For keeping credentials from modules, which must not see them
    /// however a client sends them.
    pub(crate) fn carries_credential(&self, text: &str) -> bool {
        if text.contains(API_TOKEN_PREFIX) || text.contains(REFRESH_TOKEN_PREFIX) {
            return true;
        }
        // A JWT is three base64url parts joined by dots; anything else separates words.
        text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .filter(|word| word.len() > 20 && word.matches('.').count() == 2)
            .any(|word| self.inner.codec.signed_by_us(word))
    }

    async fn api_token_principal(
        &self,
        hash: &str,
        now: Millis,
    ) -> Result<Principal, ServiceError> {
        let token = self
            .store()
            .api_token_by_hash(hash)
            .await?
            .filter(|token| token.is_active(now))
            .ok_or_else(|| unauthenticated("the API token is invalid, expired or revoked"))?;
        let user = self.active_user(&token.user_id).await?;
        Ok(Principal {
            // A token never outranks its user, even one demoted after it was made.
            role: token.role.min(user.role),
            user_id: user.id,
            username: user.username,
            via: Credential::ApiToken { token_id: token.id },
        })
    }

    async fn active_user(&self, id: &str) -> Result<User, ServiceError> {
        match self.store().user_by_id(id).await? {
            Some((user, _)) if !user.disabled => Ok(user),
            _ => Err(unauthenticated("the account is disabled or gone")),
        }
    }

    fn principals(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Principal, Millis)>> {
        self.inner
            .principals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn cached(&self, key: &str, now: Millis) -> Option<Principal> {
        let principals = self.principals();
        let (principal, at) = principals.get(key)?;
        (now.saturating_sub(*at) < PRINCIPAL_CACHE_MS && now >= *at).then(|| principal.clone())
    }

    fn cache(&self, key: String, principal: Principal, now: Millis) {
        let mut principals = self.principals();
        if principals.len() >= PRINCIPAL_CACHE_MAX {
            principals.clear();
        }
        principals.insert(key, (principal, now));
    }

    /// Drops cached credential checks on this node after a change that must bite at
    /// once here (other nodes follow within [`PRINCIPAL_CACHE_MS`]).
    fn forget_cached(&self, key: &str) {
        self.principals().remove(key);
    }

    fn forget_all_cached(&self) {
        self.principals().clear();
    }

    // ---- users ---------------------------------------------------------------------

    pub(crate) async fn create_user(
        &self,
        actor: &str,
        new: NewUser,
    ) -> Result<User, ServiceError> {
        check_username(&new.username)?;
        password::check_policy("password", &new.password)?;
        let hash = self
            .inner
            .hashes
            .hash(self.inner.settings.hash_cost, new.password)
            .await?;
        let now = self.now();
        let user = User {
            id: new_id(),
            username: new.username,
            role: new.role,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.store().insert_user(&user, &hash).await?;
        self.audit(
            actor,
            "user.create",
            &user.username,
            json!({"role": user.role}),
        )
        .await;
        Ok(user)
    }

    pub(crate) async fn list_users(&self) -> Result<Vec<User>, ServiceError> {
        Ok(self.store().list_users().await?)
    }

    pub(crate) async fn get_user(&self, id: &str) -> Result<User, ServiceError> {
        self.store()
            .user_by_id(id)
            .await?
            .map(|(user, _)| user)
            .ok_or_else(|| ServiceError::not_found("user", id))
    }

    /// Changes a user. The last enabled admin can be neither demoted nor disabled, so the
    /// deployment always keeps someone who can manage it.
    pub(crate) async fn update_user(
        &self,
        actor: &str,
        id: &str,
        patch: UserPatch,
    ) -> Result<User, ServiceError> {
        let mut user = self.get_user(id).await?;
        let was_admin = user.role == Role::Admin && !user.disabled;
        if let Some(role) = patch.role {
            user.role = role;
        }
        if let Some(disabled) = patch.disabled {
            user.disabled = disabled;
        }
        let stays_admin = user.role == Role::Admin && !user.disabled;
        if was_admin && !stays_admin && self.store().count_active_admins().await? <= 1 {
            return Err(ServiceError::Conflict(format!(
                "`{}` is the last enabled admin; make another user admin first",
                user.username
            )));
        }
        let hash = match patch.password {
            Some(password) => {
                password::check_policy("password", &password)?;
                Some(
                    self.inner
                        .hashes
                        .hash(self.inner.settings.hash_cost, password)
                        .await?,
                )
            }
            None => None,
        };
        user.updated_at = self.now();
        if !self
            .store()
            .update_user(&user, hash.as_deref(), user.updated_at)
            .await?
        {
            return Err(ServiceError::not_found("user", id));
        }
        self.forget_all_cached();
        let mut changed = serde_json::Map::new();
        if let Some(role) = patch.role {
            changed.insert("role".into(), json!(role));
        }
        if let Some(disabled) = patch.disabled {
            changed.insert("disabled".into(), json!(disabled));
        }
        if hash.is_some() {
            changed.insert("passwordChanged".into(), json!(true));
        }
        self.audit(actor, "user.update", &user.username, changed.into())
            .await;
        Ok(user)
    }

    pub(crate) async fn delete_user(&self, actor: &str, id: &str) -> Result<(), ServiceError> {
        let user = self.get_user(id).await?;
        if user.role == Role::Admin
            && !user.disabled
            && self.store().count_active_admins().await? <= 1
        {
            return Err(ServiceError::Conflict(format!(
                "`{}` is the last enabled admin and cannot be deleted",
                user.username
            )));
        }
        if !self.store().delete_user(id).await? {
            return Err(ServiceError::not_found("user", id));
        }
        self.forget_all_cached();
        self.audit(actor, "user.delete", &user.username, json!({}))
            .await;
        Ok(())
    }

    /// A user changes their own password, proving they know the current one. Every
    /// session of theirs ends, this one included. Wrong guesses are throttled as logins
    /// are (per user, hard), so a stolen access token cannot be used to guess the
    /// password behind it.
    pub(crate) async fn change_own_password(
        &self,
        principal: &Principal,
        current: &str,
        new: String,
    ) -> Result<(), ServiceError> {
        let attempt = Attempt::password_check(&principal.user_id);
        self.inner
            .throttle
            .begin(&attempt, self.now())
            .map_err(|wait_ms| ServiceError::Throttled {
                message: "too many wrong current passwords; wait before trying again".to_owned(),
                retry_after_secs: (wait_ms + 999) / 1000,
            })?;
        let checked = match self.store().user_by_id(&principal.user_id).await {
            Ok(Some((_, hash))) => self.inner.hashes.verify(hash, current.to_owned()).await,
            Ok(None) => Err(unauthenticated("the account is gone")),
            Err(err) => Err(err.into()),
        };
        match checked {
            Ok(true) => self.inner.throttle.succeeded(&attempt),
            Ok(false) => {
                self.inner.throttle.failed(&attempt);
                return Err(ServiceError::Forbidden(
                    "currentPassword: does not match your password".to_owned(),
                ));
            }
            Err(err) => {
                self.inner.throttle.abandoned(&attempt);
                return Err(err);
            }
        }
        self.update_user(
            &principal.actor(),
            &principal.user_id,
            UserPatch {
                password: Some(new),
                ..UserPatch::default()
            },
        )
        .await
        .map(drop)
    }

    // ---- API tokens ----------------------------------------------------------------

    /// Creates an API token for the principal's user; returns it with its secret, which
    /// is never shown again.
    pub(crate) async fn create_api_token(
        &self,
        principal: &Principal,
        new: NewApiToken,
    ) -> Result<(ApiToken, String), ServiceError> {
        if matches!(principal.via, Credential::ApiToken { .. }) {
            return Err(ServiceError::Forbidden(
                "API tokens cannot create API tokens; log in as a user".to_owned(),
            ));
        }
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ServiceError::bad("name", "name: use 1 to 100 characters"));
        }
        if !principal.role.allows(new.role) {
            return Err(ServiceError::Forbidden(format!(
                "role: a {} cannot create a token with role {}",
                principal.role, new.role
            )));
        }
        let now = self.now();
        if new.expires_at.is_some_and(|at| at <= now) {
            return Err(ServiceError::unprocessable(
                "expiresAt",
                "expiresAt: must be in the future",
            ));
        }
        let secret = format!("{API_TOKEN_PREFIX}{}", random_secret(32));
        let token = ApiToken {
            id: new_id(),
            name: name.to_owned(),
            user_id: principal.user_id.clone(),
            role: new.role,
            created_at: now,
            expires_at: new.expires_at,
            revoked_at: None,
        };
        self.store()
            .insert_api_token(&token, &token_hash(&secret))
            .await?;
        self.audit(
            &principal.actor(),
            "token.create",
            &token.id,
            json!({"name": token.name, "role": token.role, "expiresAt": token.expires_at}),
        )
        .await;
        Ok((token, secret))
    }

    /// The principal's tokens; an admin sees everyone's.
    pub(crate) async fn list_api_tokens(
        &self,
        principal: &Principal,
    ) -> Result<Vec<ApiToken>, ServiceError> {
        let owner = (principal.role != Role::Admin).then_some(principal.user_id.as_str());
        Ok(self.store().list_api_tokens(owner).await?)
    }

    /// Revokes a token of the principal's (or any, for an admin). Someone else's token
    /// is reported missing, not forbidden, so token ids cannot be probed.
    pub(crate) async fn revoke_api_token(
        &self,
        principal: &Principal,
        id: &str,
    ) -> Result<ApiToken, ServiceError> {
        let token = self
            .store()
            .get_api_token(id)
            .await?
            .filter(|t| principal.role == Role::Admin || t.user_id == principal.user_id)
            .ok_or_else(|| ServiceError::not_found("token", id))?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        let now = self.now();
        self.store().revoke_api_token(id, now).await?;
        self.forget_all_cached();
        self.audit(
            &principal.actor(),
            "token.revoke",
            id,
            json!({"name": token.name}),
        )
        .await;
        Ok(ApiToken {
            revoked_at: Some(now),
            ..token
        })
    }

    // ---- audit ---------------------------------------------------------------------

    /// Records a change. The change has already happened, so a failure to record it is
    /// logged loudly rather than reported to the caller as if the change had failed.
    pub(crate) async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: serde_json::Value,
    ) {
        let entry = AuditEntry {
            id: new_id(),
            at: self.now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            details,
        };
        if let Err(err) = self.store().insert_audit(&entry).await {
            tracing::error!(error = %err, action, target, actor, "could not record an audit entry");
        }
    }

    pub(crate) async fn list_audit(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, ServiceError> {
        Ok(self.store().list_audit(cursor, limit).await?)
    }
}

#[cfg(test)]
mod tests;
