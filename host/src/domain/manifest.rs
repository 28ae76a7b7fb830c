//! What a module says about itself, and the rules that say whether the host accepts it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{MAX_SETTING_NAME_BYTES, MAX_SETTINGS, is_valid_setting_name};

/// A module's self-description, as returned by its `describe` export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub jobs: Vec<JobSpec>,
    pub capabilities: Capabilities,
    /// The settings its jobs read (contract 0.1.1); empty for a module that declares
    /// none, whose jobs may have any settings.
    #[serde(default)]
    pub settings: Vec<SettingSpec>,
}

/// A setting a module's jobs read through `config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SettingSpec {
    pub name: String,
    pub description: String,
    /// A job that reads it cannot be created or changed without it.
    pub required: bool,
    /// Its value must be given as a secret (`{"secret": "..."}`), never as plain text.
    pub secret: bool,
    /// The module's jobs that read it; empty: every job.
    pub jobs: Vec<String>,
}

impl SettingSpec {
    /// Whether module job `job` reads it.
    pub fn applies_to(&self, job: &str) -> bool {
        self.jobs.is_empty() || self.jobs.iter().any(|name| name == job)
    }
}

/// One job a module offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    pub name: String,
    pub description: String,
    pub default_schedule: Option<String>,
    /// JSON Schema of the input, parsed so API clients receive an object, not a string.
    pub input_schema: Option<serde_json::Value>,
    pub timeout_ms: Option<u32>,
    pub fuel: Option<u64>,
}

/// What a module asks to be allowed to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Hosts the module may send HTTP requests to.
    pub outbound_hosts: Vec<String>,
    /// Topics (or `prefix.*` patterns) the module may publish events on.
    pub publishes: Vec<String>,
    /// Whether the module uses its key-value store.
    pub key_value: bool,
    pub routes: RouteAccess,
}

/// Whether a module serves HTTP routes, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RouteAccess {
    #[default]
    None,
    Authenticated,
    Public,
}

/// Why a manifest was refused. Each message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "{field}: `{value}` is not a valid name (lowercase letters, digits and `-`, 1 to 64 bytes, starting with a letter)"
    )]
    BadName { field: String, value: String },
    #[error("version: must not be empty")]
    EmptyVersion,
    #[error("jobs: the module offers no job")]
    NoJobs,
    #[error("jobs: the module offers {count} jobs, more than the limit of {max}")]
    TooManyJobs { count: usize, max: usize },
    #[error("jobs: `{0}` is declared twice")]
    DuplicateJob(String),
    #[error("jobs[{job}].inputSchema: not valid JSON: {reason}")]
    BadInputSchema { job: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

const MAX_NAME_BYTES: usize = 64;
const MAX_JOBS: usize = 100;
const MAX_TEXT_BYTES: usize = 4096;
const MAX_CAPABILITY_ENTRIES: usize = 64;

/// Whether `name` is an acceptable module or job name.
pub(super) fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    starts_with_letter
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl Manifest {
    /// Checks the structural rules a host relies on (unique, well-formed names; bounded
    /// sizes). Schedules are checked where cron expressions are understood.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !is_valid_name(&self.name) {
            return Err(ManifestError::BadName {
                field: "name".into(),
                value: self.name.clone(),
            });
        }
        if self.version.trim().is_empty() {
            return Err(ManifestError::EmptyVersion);
        }
        check_text("version", &self.version, MAX_NAME_BYTES)?;
        check_text("description", &self.description, MAX_TEXT_BYTES)?;
        if self.jobs.is_empty() {
            return Err(ManifestError::NoJobs);
        }
        if self.jobs.len() > MAX_JOBS {
            return Err(ManifestError::TooManyJobs {
                count: self.jobs.len(),
                max: MAX_JOBS,
            });
        }
        let mut seen = std::collections::HashSet::new();
        for job in &self.jobs {
            if !is_valid_name(&job.name) {
                return Err(ManifestError::BadName {
                    field: "jobs[].name".into(),
                    value: job.name.clone(),
                });
            }
            if !seen.insert(job.name.as_str()) {
                return Err(ManifestError::DuplicateJob(job.name.clone()));
            }
            check_text(
                &format!("jobs[{}].description", job.name),
                &job.description,
                MAX_TEXT_BYTES,
            )?;
        }
        let caps = &self.capabilities;
        let invalid = |field: &str, reason| ManifestError::Invalid {
            field: field.into(),
            reason,
        };
        check_host_patterns(&caps.outbound_hosts)
            .map_err(|reason| invalid("capabilities.outboundHosts", reason))?;
        let publishes = |reason| invalid("capabilities.publishes", reason);
        if caps.publishes.len() > MAX_CAPABILITY_ENTRIES {
            return Err(publishes(format!(
                "more than {MAX_CAPABILITY_ENTRIES} entries"
            )));
        }
        if let Some(empty) = caps.publishes.iter().find(|e| e.trim().is_empty()) {
            return Err(publishes(format!("entry `{empty}` is empty")));
        }
        self.validate_settings()
    }

    fn validate_settings(&self) -> Result<(), ManifestError> {
        if self.settings.len() > MAX_SETTINGS {
            return Err(ManifestError::Invalid {
                field: "settings".into(),
                reason: format!(
                    "{} settings, more than the limit of {MAX_SETTINGS}",
                    self.settings.len()
                ),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for setting in &self.settings {
            let invalid = |reason: String| ManifestError::Invalid {
                field: format!("settings[{}]", setting.name),
                reason,
            };
            if !is_valid_setting_name(&setting.name) {
                return Err(invalid(format!(
                    "`{}` is not a setting name: 1 to {MAX_SETTING_NAME_BYTES} letters, digits, `-`, `_` or `.`",
                    setting.name
                )));
            }
            if !seen.insert(setting.name.as_str()) {
                return Err(invalid("declared twice".into()));
            }
            check_text(
                &format!("settings[{}].description", setting.name),
                &setting.description,
                MAX_TEXT_BYTES,
            )?;
            if let Some(unknown) = setting.jobs.iter().find(|job| self.job(job).is_none()) {
                return Err(invalid(format!(
                    "names job `{unknown}`, which the module does not offer"
                )));
            }
        }
        Ok(())
    }

    /// The job called `name`, if the module offers it.
    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|job| job.name == name)
    }
}

/// Checks the entries of an outbound host list (a manifest's request, an admin's grant)
/// by one set of rules: at most [`MAX_CAPABILITY_ENTRIES`], none empty, each a
/// [`HostPattern`]. The error names the first bad entry and what is wrong with it.
pub(crate) fn check_host_patterns(entries: &[String]) -> Result<(), String> {
    if entries.len() > MAX_CAPABILITY_ENTRIES {
        return Err(format!("more than {MAX_CAPABILITY_ENTRIES} entries"));
    }
    for entry in entries {
        if entry.trim().is_empty() {
            return Err(format!("entry `{entry}` is empty"));
        }
        HostPattern::parse(entry).map_err(|err| format!("`{entry}`: {err}"))?;
    }
    Ok(())
}

/// The ports a host pattern without a port allows: plain HTTP and HTTPS. A grant for
/// `api.example.com` is a grant for its web API, not for every service that machine
/// runs (SSH, a database, an admin console on another port).
pub(crate) const DEFAULT_HTTP_PORTS: [u16; 2] = [80, 443];

/// Why an entry of `outboundHosts` (or a host a request names) was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    #[error("the host is empty")]
    Empty,
    #[error(
        "`{0}` is not a host name (letters, digits, `-` and `_` in dot-separated labels) or an IP address"
    )]
    BadHost(String),
    #[error("`{0}` is not a port (1 to 65535)")]
    BadPort(String),
    #[error("`*` may only stand alone or as the whole first label, as in `*.example.com`")]
    BadWildcard,
    #[error("an IPv6 address must be written in brackets, as in `[2001:db8::1]:8080`")]
    UnbracketedIpv6,
}

/// A host as the network sees it: a domain name in lowercase ASCII (international
/// names in their `xn--` form, no trailing dot), or an IP address. Two spellings of the
/// same host compare equal, so `API.Example.com.` cannot slip past a grant for
/// `api.example.com`, and `0x7f.1` is the address 127.0.0.1, not a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostName {
    Domain(String),
    Ip(IpAddr),
}

/// Longest domain name DNS can carry, and longest label.
const MAX_DOMAIN_BYTES: usize = 253;
const MAX_LABEL_BYTES: usize = 63;

impl HostName {
    /// Normalises `text`, the host part of a URL (an IPv6 address in brackets).
    pub fn parse(text: &str) -> Result<Self, HostPatternError> {
        let bad = || HostPatternError::BadHost(text.to_owned());
        let trimmed = text.strip_suffix('.').unwrap_or(text);
        if trimmed.is_empty() {
            return Err(HostPatternError::Empty);
        }
        if !trimmed.starts_with('[') && trimmed.contains(':') {
            return Err(HostPatternError::UnbracketedIpv6);
        }
        match url::Host::parse(trimmed).map_err(|_| bad())? {
            url::Host::Ipv4(ip) => Ok(HostName::Ip(ip.into())),
            url::Host::Ipv6(ip) => Ok(HostName::Ip(ip.into())),
            url::Host::Domain(domain) => {
                let well_formed = domain.len() <= MAX_DOMAIN_BYTES
                    && domain.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= MAX_LABEL_BYTES
                            && label.bytes().all(|b| {
                                b.is_ascii_lowercase()
                                    || b.is_ascii_digit()
                                    || b == b'-'
                                    || b == b'_'
                            })
                    });
                if well_formed {
                    Ok(HostName::Domain(domain))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostName::Domain(domain) => f.write_str(domain),
            HostName::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            HostName::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// One entry of `capabilities.outboundHosts`: which hosts, on which ports.
///
/// - `api.example.com`: that host only (any spelling of it, see [`HostName`]);
/// - `*.example.com`: every host one or more labels below `example.com`, not
///   `example.com` itself;
/// - `*`: any host, on any port (a monitor of arbitrary endpoints; the address policy
///   and the admin's approval still apply);
/// - a suffix `:8443` allows that port only; without one, ports 80 and 443
///   ([`DEFAULT_HTTP_PORTS`]), except for `*` alone.
///
/// An IP address is written as in a URL: `10.0.0.5:8080`, `[2001:db8::1]:8080`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPattern {
    hosts: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(HostName),
    /// A domain, matched by the hosts strictly below it.
    Below(String),
}

impl HostPattern {
    pub(crate) fn parse(text: &str) -> Result<Self, HostPatternError> {
        let text = text.trim();
        let (host, port) = split_port(text)?;
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| HostPatternError::BadPort(p.to_owned()))
            })
            .transpose()?;
        let hosts = if host == "*" {
            HostMatch::Any
        } else if let Some(parent) = host.strip_prefix("*.") {
            if parent.contains('*') {
                return Err(HostPatternError::BadWildcard);
            }
            match HostName::parse(parent)? {
                HostName::Domain(domain) => HostMatch::Below(domain),
                HostName::Ip(_) => return Err(HostPatternError::BadWildcard),
            }
        } else if host.contains('*') {
            return Err(HostPatternError::BadWildcard);
        } else {
            HostMatch::Exact(HostName::parse(host)?)
        };
        Ok(Self { hosts, port })
    }

    /// Whether a request to `host` on `port` is within this pattern.
    pub(crate) fn matches(&self, host: &HostName, port: u16) -> bool {
        let port_allowed = match (self.port, &self.hosts) {
            (Some(allowed), _) => port == allowed,
            (None, HostMatch::Any) => true,
            (None, _) => DEFAULT_HTTP_PORTS.contains(&port),
        };
        let host_allowed = match (&self.hosts, host) {
            (HostMatch::Any, _) => true,
            (HostMatch::Exact(allowed), host) => allowed == host,
            (HostMatch::Below(parent), HostName::Domain(domain)) => domain
                .strip_suffix(parent.as_str())
                .is_some_and(|below| below.len() > 1 && below.ends_with('.')),
            (HostMatch::Below(_), HostName::Ip(_)) => false,
        };
        port_allowed && host_allowed
    }
}

/// Splits `host[:port]`, where an IPv6 host is in brackets.
fn split_port(text: &str) -> Result<(&str, Option<&str>), HostPatternError> {
    if text.starts_with('[') {
        let end = text
            .find(']')
            .ok_or_else(|| HostPatternError::BadHost(text.to_owned()))?;
        let (host, rest) = text.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(HostPatternError::BadHost(text.to_owned())),
            },
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => Ok(text
            .split_once(':')
            .map(|(host, port)| (host, Some(port)))
            .expect("one colon")),
        _ => Err(HostPatternError::UnbracketedIpv6),
    }
}

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hosts {
            HostMatch::Any => f.write_str("*")?,
            HostMatch::Exact(host) => write!(f, "{host}")?,
            HostMatch::Below(parent) => write!(f, "*.{parent}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), ManifestError> {
    if text.len() > max {
        return Err(ManifestError::Invalid {
            field: field.into(),
            reason: format!("longer than {max} bytes"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            name: "data-sync".into(),
            version: "1.0.0".into(),
            description: "Syncs data".into(),
            jobs: vec![JobSpec {
                name: "hourly-sync".into(),
                description: "Syncs".into(),
                default_schedule: Some("0 * * * *".into()),
                input_schema: None,
                timeout_ms: None,
                fuel: None,
            }],
            capabilities: Capabilities::default(),
            settings: Vec::new(),
        }
    }

    #[test]
    fn a_well_formed_manifest_is_accepted() {
        assert_eq!(manifest().validate(), Ok(()));
    }

    #[test]
    fn names_must_be_lowercase_words() {
        assert!(is_valid_name("data-sync2"));
        assert!(!is_valid_name("Data"));
        assert!(!is_valid_name("2fast"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(&"a".repeat(65)));
    }

    #[test]
    fn duplicate_jobs_are_refused() {
        let mut m = manifest();
        m.jobs.push(m.jobs[0].clone());
        assert_eq!(
            m.validate(),
            Err(ManifestError::DuplicateJob("hourly-sync".into()))
        );
    }

    #[test]
    fn a_module_without_jobs_is_refused() {
        let mut m = manifest();
        m.jobs.clear();
        assert_eq!(m.validate(), Err(ManifestError::NoJobs));
    }

    #[test]
    fn a_bad_module_name_names_the_field() {
        let mut m = manifest();
        m.name = "Bad Name".into();
        let err = m.validate().unwrap_err().to_string();
        assert!(err.starts_with("name: `Bad Name`"), "{err}");
    }

    fn host(text: &str) -> HostName {
        HostName::parse(text).unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    fn pattern(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    #[test]
    fn host_names_are_compared_in_one_canonical_spelling() {
        assert_eq!(host("API.Example.COM"), host("api.example.com"));
        assert_eq!(host("api.example.com."), host("api.example.com"));
        assert_eq!(
            host("bücher.example"),
            HostName::Domain("xn--bcher-kva.example".into())
        );
        assert_eq!(host("127.0.0.1"), HostName::Ip([127, 0, 0, 1].into()));
        // Spellings of an IPv4 address that resolvers accept are addresses, not names.
        assert_eq!(host("0x7f.1"), host("127.0.0.1"));
        assert_eq!(host("2130706433"), host("127.0.0.1"));
        assert_eq!(
            host("[::1]"),
            HostName::Ip(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert_eq!(host("[::1]").to_string(), "[::1]");
    }

    #[test]
    fn malformed_hosts_are_refused() {
        for bad in [
            "",
            ".",
            "a..b",
            "exa mple.com",
            "a/b",
            "1.2.3.256",
            "[::1",
            "ex!.com",
        ] {
            assert!(HostName::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            HostName::parse("::1"),
            Err(HostPatternError::UnbracketedIpv6)
        );
        assert!(HostName::parse(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn an_exact_pattern_matches_its_host_on_the_web_ports_only() {
        let p = pattern("api.example.com");
        assert!(p.matches(&host("api.example.com"), 80));
        assert!(p.matches(&host("API.example.com."), 443));
        assert!(!p.matches(&host("api.example.com"), 8080));
        assert!(!p.matches(&host("example.com"), 443));
        assert!(!p.matches(&host("evil-api.example.com"), 443));
        assert!(!p.matches(&host("api.example.com.evil.net"), 443));
    }

    #[test]
    fn a_pattern_with_a_port_allows_that_port_only() {
        let p = pattern("api.example.com:8443");
        assert!(p.matches(&host("api.example.com"), 8443));
        assert!(!p.matches(&host("api.example.com"), 443));
        assert!(!p.matches(&host("api.example.com"), 80));
        let p = pattern("127.0.0.1:3000");
        assert!(p.matches(&host("127.0.0.1"), 3000));
        assert!(!p.matches(&host("127.0.0.2"), 3000));
        let p = pattern("[::1]:3000");
        assert!(p.matches(&host("[::1]"), 3000));
        assert!(!p.matches(&host("127.0.0.1"), 3000));
    }

    #[test]
    fn a_wildcard_matches_hosts_below_its_domain_but_not_the_domain() {
        let p = pattern("*.example.com");
        assert!(p.matches(&host("api.example.com"), 443));
        assert!(p.matches(&host("a.b.example.com"), 443));
        assert!(p.matches(&host("A.Example.Com."), 80));
        assert!(!p.matches(&host("example.com"), 443));
        assert!(!p.matches(&host("badexample.com"), 443));
        assert!(!p.matches(&host("api.example.com"), 8080));
        assert!(!p.matches(&host("127.0.0.1"), 80));
        let any = pattern("*");
        assert!(any.matches(&host("anything.example"), 443));
        assert!(any.matches(&host("10.0.0.1"), 80));
        assert!(any.matches(&host("anything.example"), 8443));
        assert!(pattern("*:8080").matches(&host("x.example"), 8080));
    }

    #[test]
    fn malformed_patterns_say_what_is_wrong() {
        let cases = [
            ("api.*.com", HostPatternError::BadWildcard),
            ("*api.com", HostPatternError::BadWildcard),
            ("*.*.com", HostPatternError::BadWildcard),
            ("*.10.0.0.1", HostPatternError::BadWildcard),
            ("api.example.com:0", HostPatternError::BadPort("0".into())),
            (
                "api.example.com:http",
                HostPatternError::BadPort("http".into()),
            ),
            ("api.example.com:", HostPatternError::BadPort(String::new())),
            ("2001:db8::1", HostPatternError::UnbracketedIpv6),
            (":80", HostPatternError::Empty),
        ];
        for (text, expected) in cases {
            assert_eq!(HostPattern::parse(text), Err(expected), "{text}");
        }
        assert!(HostPattern::parse("[::1]x").is_err());
    }

    #[test]
    fn patterns_print_in_canonical_form() {
        assert_eq!(
            pattern("API.Example.com:8443").to_string(),
            "api.example.com:8443"
        );
        assert_eq!(pattern("*.Example.com").to_string(), "*.example.com");
        assert_eq!(pattern("[::1]:80").to_string(), "[::1]:80");
        assert_eq!(pattern("*").to_string(), "*");
    }

    #[test]
    fn a_manifest_with_a_malformed_outbound_host_is_refused() {
        let mut m = manifest();
        m.capabilities.outbound_hosts = vec!["api.example.com".into(), "api.*.com".into()];
        let err = m.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("capabilities.outboundHosts: `api.*.com`: `*` may only"),
            "{err}"
        );
        m.capabilities.outbound_hosts = vec!["api.example.com".into(), "*.example.org:8443".into()];
        assert_eq!(m.validate(), Ok(()));
    }
}
