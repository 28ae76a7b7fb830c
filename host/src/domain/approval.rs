//! Whether a module version may run: its code must be approved (bound to its content
//! hash, never to the module's name) and what it asks for must be covered by what an
//! administrator decided on. What it may reach once it runs: the outbound hosts an
//! administrator granted, which may be fewer than it asks for or others. Who uploaded
//! each version, and the publisher keys that let a signed upload keep the approval, are
//! recorded here too.

use serde::Serialize;

use super::{
    Capabilities, Grants, Millis, ModuleRecord, ModuleVersion, Role, RouteAccess, topic_matches,
};

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

impl ModuleRecord {
    /// Why the current version may not run yet (see [`ModuleVersion::awaiting_approval`]),
    /// measured against everything the admin decided on: the request they reviewed and
    /// the hosts they granted. A version asking again for a host the admin withheld by
    /// narrowing does not wait for them: they decided on it, and it stays denied.
    pub fn awaiting_approval(&self) -> Vec<String> {
        let mut decided = self.approved.clone();
        if let Some(granted) = &self.outbound_grant {
            decided.outbound_hosts.extend(granted.iter().cloned());
        }
        self.current.awaiting_approval(&decided)
    }

    fn requested_hosts(&self) -> &[String] {
        &self.current.manifest.capabilities.outbound_hosts
    }

    /// The outbound host patterns the current version may reach: the admin's grant, or
    /// what it asks for when the admin granted that.
    pub fn granted_hosts(&self) -> &[String] {
        self.outbound_grant
            .as_deref()
            .unwrap_or(self.requested_hosts())
    }

    /// What the current version may use when it runs, once it may run: what it asks for
    /// (its approval covers that), except outbound hosts, which are what was granted.
    pub fn grants(&self) -> Grants {
        Grants {
            outbound_hosts: self.granted_hosts().to_vec(),
            ..Grants::as_requested(&self.current.manifest.capabilities)
        }
    }

    /// Granted hosts the current version does not ask for: an operator's extension.
    pub fn outbound_extensions(&self) -> Vec<String> {
        uncovered(self.granted_hosts(), self.requested_hosts())
    }

    /// Hosts the current version asks for that the grant does not cover in full: what
    /// the admin withheld by narrowing (a request for `*` narrowed to a few hosts is
    /// withheld, those hosts granted).
    pub fn withheld_hosts(&self) -> Vec<String> {
        uncovered(self.requested_hosts(), self.granted_hosts())
    }

    /// The outbound grant an approval of the current version leaves: `given`, if the
    /// admin gave one. Otherwise the admin approves what the version asks for on top of
    /// what they decided before: a module never narrowed nor extended is granted its
    /// request, and one that was keeps its grant plus the hosts it asks for that were
    /// never decided on (so approving a new version's code does not quietly undo a
    /// narrowing). A grant equal to the request is recorded as "the request" (`None`),
    /// which later versions follow, up or down, within what the admin decided on.
    pub fn grant_on_approval(&self, given: Option<Vec<String>>) -> Option<Vec<String>> {
        let grant = match (given, &self.outbound_grant) {
            (Some(given), _) => given,
            (None, None) => return None,
            (None, Some(standing)) => {
                let decided: Vec<String> = self
                    .approved
                    .outbound_hosts
                    .iter()
                    .chain(standing)
                    .cloned()
                    .collect();
                let mut grant = standing.clone();
                grant.extend(uncovered(self.requested_hosts(), &decided));
                grant
            }
        };
        (!same_hosts(&grant, self.requested_hosts())).then_some(grant)
    }
}

/// The entries of `hosts` that no pattern of `patterns` covers.
fn uncovered(hosts: &[String], patterns: &[String]) -> Vec<String> {
    hosts
        .iter()
        .filter(|host| !patterns.iter().any(|p| host_covered(p, host)))
        .cloned()
        .collect()
}

/// Whether two lists name the same host patterns, in any order or case.
fn same_hosts(a: &[String], b: &[String]) -> bool {
    let set = |hosts: &[String]| -> std::collections::BTreeSet<String> {
        hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    };
    set(a) == set(b)
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

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_owned()).collect()
    }

    /// Module `sync` whose current version (its code approved) asks for `requested`,
    /// after an admin reviewed `reviewed` and granted `grant`.
    fn record(requested: &[&str], reviewed: &[&str], grant: Option<&[&str]>) -> ModuleRecord {
        let mut current = version(
            None,
            Some(CodeApproval {
                by: "admin".into(),
                at: 1,
                key: None,
            }),
        );
        current.manifest.capabilities = caps(requested, &[], false, RouteAccess::None);
        ModuleRecord {
            name: "sync".into(),
            status: crate::domain::ModuleStatus::Enabled,
            current,
            approved: caps(reviewed, &[], false, RouteAccess::None),
            outbound_grant: grant.map(hosts),
            budgets: Vec::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn without_a_grant_of_its_own_a_module_reaches_what_it_asks_for() {
        let plain = record(&["api.example.com"], &["api.example.com"], None);
        assert_eq!(plain.granted_hosts(), ["api.example.com"]);
        assert_eq!(plain.grants().outbound_hosts, ["api.example.com"]);
        assert!(plain.outbound_extensions().is_empty());
        assert!(plain.withheld_hosts().is_empty());
        assert!(plain.awaiting_approval().is_empty());
    }

    #[test]
    fn a_narrowed_grant_withholds_hosts_the_module_asks_for() {
        let monitor = record(
            &["*"],
            &["*"],
            Some(&["status.example.com", "*.example.org"]),
        );
        assert_eq!(
            monitor.grants().outbound_hosts,
            ["status.example.com", "*.example.org"]
        );
        assert_eq!(monitor.withheld_hosts(), ["*"]);
        assert!(monitor.outbound_extensions().is_empty());
        assert!(monitor.awaiting_approval().is_empty());

        let narrowed = record(
            &["a.example.com", "b.example.com"],
            &["a.example.com", "b.example.com"],
            Some(&["a.example.com"]),
        );
        assert_eq!(narrowed.withheld_hosts(), ["b.example.com"]);
        assert_eq!(narrowed.grants().outbound_hosts, ["a.example.com"]);
    }

    #[test]
    fn an_extended_grant_names_the_hosts_the_module_did_not_ask_for() {
        let extended = record(
            &["api.example.com", "*.cdn.net"],
            &["api.example.com", "*.cdn.net"],
            Some(&[
                "api.example.com",
                "img.cdn.net",
                "hooks.slack.com",
                "api.example.com:8443",
            ]),
        );
        assert_eq!(
            extended.outbound_extensions(),
            ["hooks.slack.com", "api.example.com:8443"]
        );
        assert_eq!(extended.withheld_hosts(), ["*.cdn.net"]);
        assert!(extended.awaiting_approval().is_empty());
    }

    #[test]
    fn a_new_version_waits_only_for_hosts_the_admin_never_decided_on() {
        let reviewed = ["a.example.com", "b.example.com"];
        let grant: &[&str] = &["a.example.com", "ext.example.net"];
        // Asking again for the withheld host, or for the extension: decided on, runs
        // under the same grant (the withheld host stays denied).
        let again = record(&["a.example.com", "b.example.com"], &reviewed, Some(grant));
        assert!(again.awaiting_approval().is_empty());
        assert_eq!(again.grants().outbound_hosts, grant);
        let extension = record(&["ext.example.net"], &reviewed, Some(grant));
        assert!(extension.awaiting_approval().is_empty());
        // A host nobody looked at waits.
        let new_host = record(&["a.example.com", "c.example.com"], &reviewed, Some(grant));
        assert_eq!(
            new_host.awaiting_approval(),
            ["outbound host `c.example.com`"]
        );
        let without_grant = record(&["c.example.com"], &reviewed, None);
        assert_eq!(
            without_grant.awaiting_approval(),
            ["outbound host `c.example.com`"]
        );
    }

    #[test]
    fn an_approval_without_hosts_keeps_an_admin_s_grant_and_adds_what_is_new() {
        let requested = ["a.example.com", "b.example.com", "c.example.com"];
        let reviewed = ["a.example.com", "b.example.com"];
        // Never narrowed nor extended: the request, which later versions follow.
        assert_eq!(
            record(&requested, &reviewed, None).grant_on_approval(None),
            None
        );
        // Narrowed before: stays narrowed; the host never decided on is granted.
        let narrowed = record(&requested, &reviewed, Some(&["a.example.com"]));
        assert_eq!(
            narrowed.grant_on_approval(None),
            Some(hosts(&["a.example.com", "c.example.com"]))
        );
        // Extended before: the extension stays.
        let extended = record(
            &["a.example.com"],
            &reviewed,
            Some(&["a.example.com", "x.example.net"]),
        );
        assert_eq!(
            extended.grant_on_approval(None),
            Some(hosts(&["a.example.com", "x.example.net"]))
        );
        // A grant given is recorded; one equal to the request, in any order or case, is
        // the request.
        assert_eq!(
            narrowed.grant_on_approval(Some(hosts(&["b.example.com"]))),
            Some(hosts(&["b.example.com"]))
        );
        assert_eq!(
            narrowed.grant_on_approval(Some(hosts(&[
                "C.example.com",
                "b.example.com",
                "a.example.com"
            ]))),
            None
        );
        assert_eq!(
            narrowed.grant_on_approval(Some(Vec::new())),
            Some(Vec::new()),
            "nothing at all is a narrowing too"
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
