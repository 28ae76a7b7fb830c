//! Who may do what: users, their roles, API tokens and the audit trail. Pure types; the
//! rules that use them live in `services::auth`.

use serde::{Deserialize, Serialize};

use super::Millis;

/// What a user or token may do. Ordered: each role may do everything the roles before
/// it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Runs the platform day to day: jobs (create, edit, execute, cancel), module upload,
    /// enable and disable, events.
    Operator,
    /// Everything: users, module removal, capability approval, the audit trail.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether this role may do what `required` may.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A person (or the first-start `admin`) who logs in with a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct User {
    pub id: String,
    pub username: String,
    pub role: Role,
    /// A disabled user can neither log in nor use tokens issued before.
    pub disabled: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A long-lived credential for CI and scripts. The secret itself is shown once, at
/// creation; only its hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiToken {
    pub id: String,
    pub name: String,
    /// The user who created it; the token never outranks them.
    pub user_id: String,
    pub role: Role,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

impl ApiToken {
    /// Whether the token may be used at `now`.
    pub(crate) fn is_active(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

/// One rotating refresh token of a login session. Tokens of one login share a `family`:
/// presenting a token that was already rotated means it leaked, and revokes the family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefreshToken {
    pub id: String,
    pub family: String,
    pub user_id: String,
    /// SHA-256 of the secret, hex.
    pub token_hash: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// Who made a request: a logged-in user or an API token acting for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub user_id: String,
    pub username: String,
    /// The effective role: the user's, or the token's (never above its user's).
    pub role: Role,
    pub via: Credential,
}

/// How a request proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    /// A JWT access token of login session `session` (its refresh-token family).
    Session { session: String },
    /// An API token.
    ApiToken { token_id: String },
}

impl Principal {
    /// How the audit trail names this principal: `alice`, or `alice (token ci-deploy)`.
    pub(crate) fn actor(&self) -> String {
        match &self.via {
            Credential::Session { .. } => self.username.clone(),
            Credential::ApiToken { token_id } => format!("{} (token {token_id})", self.username),
        }
    }
}

/// One recorded change: who did what to what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditEntry {
    pub id: String,
    pub at: Millis,
    /// The user (and token) who acted, or `system`.
    pub actor: String,
    /// A dotted verb: `module.install`, `user.create`, `token.revoke`,
    /// `security.refresh_reuse`, ...
    pub action: String,
    /// What was acted on (a module name, a user name, a token id).
    pub target: String,
    /// Anything else worth keeping, never a secret.
    pub details: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_viewer_operator_admin() {
        assert!(Role::Admin.allows(Role::Operator));
        assert!(Role::Operator.allows(Role::Viewer));
        assert!(Role::Operator.allows(Role::Operator));
        assert!(!Role::Viewer.allows(Role::Operator));
        assert!(!Role::Operator.allows(Role::Admin));
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn a_token_is_active_until_it_expires_or_is_revoked() {
        let mut token = ApiToken {
            id: "t".into(),
            name: "ci".into(),
            user_id: "u".into(),
            role: Role::Viewer,
            created_at: 0,
            expires_at: Some(100),
            revoked_at: None,
        };
        assert!(token.is_active(99));
        assert!(!token.is_active(100));
        token.expires_at = None;
        assert!(token.is_active(i64::MAX));
        token.revoked_at = Some(5);
        assert!(!token.is_active(6));
    }
}
