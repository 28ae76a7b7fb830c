//! Whether what a module asks for is covered by what an administrator approved. A new
//! version asking for no more than the approved set runs at once; one asking for more
//! waits for a new approval.

use super::{Capabilities, RouteAccess, topic_matches};

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
    /// Whether the module asks for anything at all (a module that does needs approval).
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
