//! What a module is and offers, as returned by `describe`. Built by [`module!`](crate::module!);
//! readable in unit tests.

use crate::__bindings::runcell::module::types as wit;

/// Longest module or job name the contract accepts, in bytes.
const MAX_NAME_LEN: usize = 64;

/// What a module is and offers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Manifest {
    /// Unique module name: lowercase letters, digits and `-`, at most 64 bytes.
    pub name: String,
    /// The module's own version (semver).
    pub version: String,
    /// One or two sentences for operators.
    pub description: String,
    /// The jobs the module offers.
    pub jobs: Vec<JobSpec>,
    /// What the module asks to be allowed to do.
    pub capabilities: Capabilities,
    /// The settings its jobs read through [`config`](crate::config).
    pub settings: Vec<SettingSpec>,
}

impl Manifest {
    /// A manifest with no jobs and no capabilities.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            jobs: Vec::new(),
            capabilities: Capabilities::new(),
            settings: Vec::new(),
        }
    }

    /// Declares a setting its jobs read.
    #[must_use]
    pub fn setting(mut self, setting: SettingSpec) -> Self {
        self.settings.push(setting);
        self
    }

    /// Replaces the requested capabilities.
    #[must_use]
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Adds a job.
    #[must_use]
    pub fn job(mut self, job: JobSpec) -> Self {
        self.jobs.push(job);
        self
    }
}

/// One job a module offers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobSpec {
    /// Unique within the module: lowercase letters, digits and `-`, at most 64 bytes.
    pub name: String,
    /// One sentence for operators.
    pub description: String,
    /// Cron expression (UTC, optional seconds field) the job runs on by default.
    pub schedule: Option<String>,
    /// JSON Schema (as JSON text) of the accepted input.
    pub input_schema: Option<String>,
    /// Usual upper bound of a run's wall time, in milliseconds.
    pub timeout_ms: Option<u32>,
    /// Usual upper bound of a run's fuel.
    pub fuel: Option<u64>,
}

impl JobSpec {
    /// A job with only a name and a description.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            schedule: None,
            input_schema: None,
            timeout_ms: None,
            fuel: None,
        }
    }

    /// Sets the default cron schedule (UTC, optional seconds field), e.g. `0 * * * *`.
    #[must_use]
    pub fn schedule(mut self, cron: impl Into<String>) -> Self {
        self.schedule = Some(cron.into());
        self
    }

    /// Sets the JSON Schema (as JSON text) of the input, for documentation and dashboards.
    #[must_use]
    pub fn input_schema(mut self, schema: impl Into<String>) -> Self {
        self.input_schema = Some(schema.into());
        self
    }

    /// Sets how long a run usually needs at most; the host's default wall-clock limit.
    #[must_use]
    pub fn timeout_ms(mut self, timeout_ms: u32) -> Self {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    /// Sets how much fuel a run usually needs at most; the host's default fuel limit.
    #[must_use]
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }
}

/// A setting the module's jobs read through [`config`](crate::config). The server checks
/// jobs against it: a job missing a required setting, or given a secret one as plain
/// text, is refused when it is created or changed, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SettingSpec {
    /// The name jobs' settings use: 1 to 128 letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// What it is and what to put in it, for operators.
    pub description: String,
    /// Whether a job cannot be created or changed without it.
    pub required: bool,
    /// Whether its value is a secret, to be given as one (never as plain text).
    pub secret: bool,
    /// The jobs (by name) that read it; empty: every job of the module.
    pub jobs: Vec<String>,
}

impl SettingSpec {
    /// An optional, plain setting read by every job.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            required: false,
            secret: false,
            jobs: Vec::new(),
        }
    }

    /// Whether a job needs it.
    #[must_use]
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }

    /// Whether its value is a secret.
    #[must_use]
    pub fn secret(mut self, secret: bool) -> Self {
        self.secret = secret;
        self
    }

    /// Only these jobs (by name) read it.
    #[must_use]
    pub fn jobs<I>(mut self, jobs: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.jobs = jobs.into_iter().map(Into::into).collect();
        self
    }
}

impl From<SettingSpec> for wit::SettingSpec {
    fn from(setting: SettingSpec) -> Self {
        Self {
            name: setting.name,
            description: setting.description,
            required: setting.required,
            secret: setting.secret,
            jobs: setting.jobs,
        }
    }
}

/// What a module asks to be allowed to do. Nothing is granted by default; an administrator
/// approves the request, and a call outside the grant fails with a `denied` error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Hosts the module may call over outbound HTTP (`api.example.com`, `*.example.com`,
    /// `api.example.com:8443`, or `*` for any host).
    pub outbound_hosts: Vec<String>,
    /// Event topics the module publishes (`report.generated`, `sync.*`).
    pub publishes: Vec<String>,
    /// Whether the module uses its key-value store.
    pub key_value: bool,
    /// Whether and to whom the module serves HTTP routes. Set by the `routes` entry of
    /// [`module!`](crate::module!), which also exports the handler, so that the two
    /// always agree.
    pub routes: RouteAccess,
}

/// Whether a module serves HTTP routes under `/m/{module}/`, and to whom.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum RouteAccess {
    /// The module serves no routes.
    #[default]
    None,
    /// Callers need the same credentials as for Runcell's API.
    Authenticated,
    /// Anyone may call the routes, once an administrator approves it.
    Public,
}

impl Capabilities {
    /// Asks for nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for the module's key-value store (or not).
    #[must_use]
    pub fn key_value(mut self, key_value: bool) -> Self {
        self.key_value = key_value;
        self
    }

    /// Asks to publish on these topics (exact, or with a trailing `*` wildcard segment).
    #[must_use]
    pub fn publishes<I>(mut self, topics: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.publishes = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Asks to call these hosts over outbound HTTP: an exact host (`api.example.com`), a
    /// wildcard subdomain (`*.example.com`), either with a port (`api.example.com:8443`),
    /// or `*` for any host. An administrator approves the list; `*` is for modules whose
    /// targets are configured by operators (a monitor, a webhook relay), and even then the
    /// server's address policy decides which addresses are reachable.
    #[must_use]
    pub fn outbound_hosts<I>(mut self, hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.outbound_hosts = hosts.into_iter().map(Into::into).collect();
        self
    }
}

impl From<Manifest> for wit::Manifest {
    fn from(manifest: Manifest) -> Self {
        Self {
            name: manifest.name,
            version: manifest.version,
            description: manifest.description,
            jobs: manifest.jobs.into_iter().map(Into::into).collect(),
            capabilities: manifest.capabilities.into(),
        }
    }
}

impl From<JobSpec> for wit::JobSpec {
    fn from(job: JobSpec) -> Self {
        Self {
            name: job.name,
            description: job.description,
            default_schedule: job.schedule,
            input_schema: job.input_schema,
            timeout_ms: job.timeout_ms,
            fuel: job.fuel,
        }
    }
}

impl From<Capabilities> for wit::Capabilities {
    fn from(capabilities: Capabilities) -> Self {
        Self {
            outbound_hosts: capabilities.outbound_hosts,
            publishes: capabilities.publishes,
            key_value: capabilities.key_value,
            routes: match capabilities.routes {
                RouteAccess::None => wit::RouteAccess::None,
                RouteAccess::Authenticated => wit::RouteAccess::Authenticated,
                RouteAccess::Public => wit::RouteAccess::Public,
            },
        }
    }
}

/// Whether `name` is a valid module or job name: 1 to 64 bytes of lowercase ASCII letters,
/// digits and `-`.
pub(crate) const fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_NAME_LEN {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if !(byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-') {
            return false;
        }
        i += 1;
    }
    true
}

/// `a == b`, usable in constants.
pub(crate) const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_letters_digits_and_dashes() {
        assert!(is_valid_name("data-sync"));
        assert!(is_valid_name("job2"));
        assert!(is_valid_name(&"a".repeat(64)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name(&"a".repeat(65)));
        assert!(!is_valid_name("Data-Sync"));
        assert!(!is_valid_name("data_sync"));
        assert!(!is_valid_name("data sync"));
    }

    #[test]
    fn builders_fill_the_manifest() {
        let manifest = Manifest::new("data-sync", "1.2.3", "Syncs.")
            .capabilities(
                Capabilities::new()
                    .key_value(true)
                    .publishes(["report.generated"]),
            )
            .job(
                JobSpec::new("hourly-sync", "Stores records.")
                    .schedule("0 * * * *")
                    .timeout_ms(5_000),
            )
            .job(JobSpec::new("daily-report", "Reports.").fuel(10));

        assert_eq!(manifest.jobs.len(), 2);
        assert_eq!(manifest.jobs[0].schedule.as_deref(), Some("0 * * * *"));
        assert_eq!(manifest.jobs[0].timeout_ms, Some(5_000));
        assert_eq!(manifest.jobs[1].schedule, None);
        assert_eq!(manifest.jobs[1].fuel, Some(10));
        assert!(manifest.capabilities.key_value);
        assert_eq!(manifest.capabilities.publishes, ["report.generated"]);
        assert!(manifest.capabilities.outbound_hosts.is_empty());
    }

    #[test]
    fn settings_are_optional_plain_and_for_every_job_unless_said_otherwise() {
        let manifest = Manifest::new("m", "1.0.0", "d")
            .setting(SettingSpec::new("source", "Where records come from."))
            .setting(
                SettingSpec::new("api-key", "The upstream's key.")
                    .required(true)
                    .secret(true)
                    .jobs(["sync"]),
            );
        let wit: Vec<wit::SettingSpec> = manifest.settings.into_iter().map(Into::into).collect();
        assert_eq!(
            (wit[0].required, wit[0].secret, wit[0].jobs.len()),
            (false, false, 0)
        );
        assert_eq!(wit[1].name, "api-key");
        assert_eq!((wit[1].required, wit[1].secret), (true, true));
        assert_eq!(wit[1].jobs, ["sync"]);
    }

    #[test]
    fn route_access_converts_into_the_wit_enum() {
        let mut manifest = Manifest::new("m", "0.1.0", "d").job(JobSpec::new("j", "d"));
        for (access, expected) in [
            (RouteAccess::Authenticated, wit::RouteAccess::Authenticated),
            (RouteAccess::Public, wit::RouteAccess::Public),
            (RouteAccess::None, wit::RouteAccess::None),
        ] {
            manifest.capabilities.routes = access;
            let wit = wit::Manifest::from(manifest.clone());
            assert_eq!(wit.capabilities.routes, expected);
        }
    }

    #[test]
    fn converts_into_the_wit_manifest_without_routes() {
        let wit = wit::Manifest::from(
            Manifest::new("m", "0.1.0", "d")
                .capabilities(Capabilities::new().outbound_hosts(["api.example.com"]))
                .job(
                    JobSpec::new("j", "d")
                        .schedule("@hourly")
                        .input_schema("{}"),
                ),
        );
        assert_eq!(wit.jobs[0].default_schedule.as_deref(), Some("@hourly"));
        assert_eq!(wit.jobs[0].input_schema.as_deref(), Some("{}"));
        assert_eq!(wit.capabilities.outbound_hosts, ["api.example.com"]);
        assert!(matches!(wit.capabilities.routes, wit::RouteAccess::None));
    }
}
