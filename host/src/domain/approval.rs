//! Whether a module version may run: its code must be approved (bound to its content
//! hash, never to the module's name) and what it asks for must be covered by what an
//! administrator approved. Who uploaded each version, and the publisher keys that let a
//! signed upload keep the approval, are recorded here too.

use serde::Serialize;

use super::{Capabilities, Millis, ModuleVersion, Role, RouteAccess, topic_matches};

/// Who uploaded a version of a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Uploader {
    pub username: String,
    /// The effective role of the upload (the token's, when a token was used).
    pub role: Role,
    /// The name of the API token used, if one was.
    pub token: Option<String>,
}

impl std::fmt::Display for Uploader {
    /// `operator `ci`` or `operator `alice` (API token `deploy`)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} `{}`", self.role, self.username)?;
        if let Some(token) = &self.token {
            write!(f, " (API token `{token}`)")?;
        }
        Ok(())
    }
}

/// Why a version's code may run: who or what vouched for its bytes, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeApproval {
    /// The admin who approved or uploaded it, or `publisher key `<id>``.
    pub by: String,
    /// Milliseconds since the Unix epoch.
    #[schema(value_type = i64)]
    pub at: Millis,
    /// The pinned publisher key whose signature approved it; unpinning that key
    /// withdraws the approval.
    pub key: Option<String>,
}

/// An Ed25519 public key an admin pinned to a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherKey {
    /// The first 16 hex digits of the SHA-256 of [`Self::public_key`].
    pub id: String,
    /// The 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// What the admin said the key is for.
    pub comment: String,
    /// The admin who pinned it (as the audit trail names them).
    pub pinned_by: String,
    pub pinned_at: Millis,
}

impl PublisherKey {
    /// The identity of a public key: the first 16 hex digits of its SHA-256. Short
    /// enough to read out and type, long enough that no two keys of one module collide.
    pub fn id_of(public_key: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(public_key)[..8])
    }
}

impl ModuleVersion {
    /// Why this version may not run yet, one readable item each: its code, if nobody
    /// approved these bytes, then what it asks for beyond `approved`. Empty when it may
    /// run.
    pub fn awaiting_approval(&self, approved: &Capabilities) -> Vec<String> {
        let mut why = Vec::new();
        if self.approval.is_none() {
            why.push(self.unapproved_code());
        }
        why.extend(self.manifest.capabilities.beyond(approved));
        why
    }

    /// "new code by operator `ci`", and why a signature it carried did not count.
    fn unapproved_code(&self) -> String {
        let mut reason = match &self.uploaded_by {
            Some(uploader) => format!("new code by {uploader}"),
            None => "new code uploaded before approvals were bound to code".to_owned(),
        };
        if let Some(key) = &self.signed_by {
            reason.push_str(&format!(
                " (signed by key `{key}`, which is not pinned to the module)"
            ));
        }
        reason
    }
}

/// Whether an approved outbound host pattern covers a requested one: the same pattern,
/// `*` (any host), or a wildcard whose domain contains the requested host or wildcard.
fn host_covered(approved: &str, requested: &str) -> bool {
    let (approved, requested) = (
        approved.to_ascii_lowercase(),
        requested.to_ascii_lowercase(),
    );
    if approved == "*" || approved == requested {
        return true;
    }
    let Some(domain) = approved.strip_prefix("*.") else {
        return false;
    };
    // Ports must agree: `*.example.com` covers `api.example.com`, not `api.example.com:8443`.
    let requested_host = requested.strip_prefix("*.").unwrap_or(&requested);
    requested_host.ends_with(&format!(".{domain}"))
}

fn route_rank(access: RouteAccess) -> u8 {
    match access {
        RouteAccess::None => 0,
        RouteAccess::Authenticated => 1,
        RouteAccess::Public => 2,
    }
}

impl Capabilities {
    /// Whether the module asks for no capability at all (its code still needs approval:
    /// it reads its jobs' settings and secrets).
    pub fn is_empty(&self) -> bool {
        self == &Capabilities::default()
    }

    /// What this request asks for beyond `approved`, one readable item each; empty when
    /// `approved` covers it all.
    pub fn beyond(&self, approved: &Capabilities) -> Vec<String> {
        let mut missing = Vec::new();
        for host in &self.outbound_hosts {
            if !approved
                .outbound_hosts
                .iter()
                .any(|a| host_covered(a, host))
            {
                missing.push(format!("outbound host `{host}`"));
            }
        }
        for topic in &self.publishes {
            if !approved.publishes.iter().any(|a| topic_matches(a, topic)) {
                missing.push(format!("publishing on `{topic}`"));
            }
        }
        if self.key_value && !approved.key_value {
            missing.push("key-value storage".to_owned());
        }
        if route_rank(self.routes) > route_rank(approved.routes) {
            missing.push(match self.routes {
                RouteAccess::Public => "public HTTP routes".to_owned(),
                _ => "HTTP routes".to_owned(),
            });
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Manifest;

    fn version(uploader: Option<Uploader>, approval: Option<CodeApproval>) -> ModuleVersion {
        ModuleVersion {
            module: "sync".into(),
            version: "2".into(),
            content_hash: "h".into(),
            size_bytes: 1,
            manifest: Manifest {
                name: "sync".into(),
                version: "2".into(),
                description: String::new(),
                jobs: Vec::new(),
                capabilities: Capabilities {
                    key_value: true,
                    ..Capabilities::default()
                },
                settings: Vec::new(),
            },
            uploaded_at: 0,
            uploaded_by: uploader,
            signed_by: None,
            approval,
        }
    }

    #[test]
    fn unapproved_code_waits_whatever_it_asks_for_and_says_who_uploaded_it() {
        let ci = Uploader {
            username: "ci".into(),
            role: Role::Operator,
            token: None,
        };
        let covering = caps(&[], &[], true, RouteAccess::None);
        let mut new_code = version(Some(ci.clone()), None);
        assert_eq!(
            new_code.awaiting_approval(&covering),
            ["new code by operator `ci`"]
        );
        new_code.signed_by = Some("0123456789abcdef".into());
        new_code.uploaded_by = Some(Uploader {
            token: Some("deploy".into()),
            ..ci.clone()
        });
        assert_eq!(
            new_code.awaiting_approval(&Capabilities::default()),
            [
                "new code by operator `ci` (API token `deploy`) (signed by key `0123456789abcdef`, which is not pinned to the module)",
                "key-value storage",
            ]
        );
        let approved = version(
            Some(ci),
            Some(CodeApproval {
                by: "admin".into(),
                at: 1,
                key: None,
            }),
        );
        assert!(approved.awaiting_approval(&covering).is_empty());
        assert_eq!(
            approved.awaiting_approval(&Capabilities::default()),
            ["key-value storage"]
        );
        assert_eq!(
            version(None, None).awaiting_approval(&covering),
            ["new code uploaded before approvals were bound to code"]
        );
    }

    fn caps(hosts: &[&str], topics: &[&str], kv: bool, routes: RouteAccess) -> Capabilities {
        Capabilities {
            outbound_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            publishes: topics.iter().map(|t| (*t).to_owned()).collect(),
            key_value: kv,
            routes,
        }
    }

    #[test]
    fn asking_for_the_same_or_less_is_covered() {
        let approved = caps(
            &["api.example.com", "*.cdn.net"],
            &["sync.*"],
            true,
            RouteAccess::Public,
        );
        assert!(approved.beyond(&approved).is_empty());
        let less = caps(
            &["img.cdn.net"],
            &["sync.done"],
            false,
            RouteAccess::Authenticated,
        );
        assert!(less.beyond(&approved).is_empty());
        assert!(
            Capabilities::default()
                .beyond(&Capabilities::default())
                .is_empty()
        );
    }

    #[test]
    fn asking_for_more_names_each_extra() {
        let approved = caps(
            &["api.example.com"],
            &["report.generated"],
            false,
            RouteAccess::None,
        );
        let more = caps(
            &["api.example.com", "evil.example.net", "*.example.com"],
            &["report.generated", "billing.*"],
            true,
            RouteAccess::Public,
        );
        assert_eq!(
            more.beyond(&approved),
            [
                "outbound host `evil.example.net`",
                "outbound host `*.example.com`",
                "publishing on `billing.*`",
                "key-value storage",
                "public HTTP routes",
            ]
        );
    }

    #[test]
    fn a_wildcard_covers_subdomains_but_not_its_apex_or_other_ports() {
        assert!(host_covered("*.example.com", "api.example.com"));
        assert!(host_covered("*.example.com", "*.eu.example.com"));
        assert!(host_covered("*", "anything.org:8443"));
        assert!(host_covered("API.example.com", "api.EXAMPLE.com"));
        assert!(!host_covered("*.example.com", "example.com"));
        assert!(!host_covered("*.example.com", "api.example.com:8443"));
        assert!(!host_covered("*.example.com", "badexample.com"));
        assert!(!host_covered("api.example.com", "*.example.com"));
    }
}
