//! What a module says about itself, and the rules that say whether the host accepts it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A module's self-description, as returned by its `describe` export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub jobs: Vec<JobSpec>,
    pub capabilities: Capabilities,
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
pub fn is_valid_name(name: &str) -> bool {
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
        for (field, entries) in [
            ("capabilities.outboundHosts", &caps.outbound_hosts),
            ("capabilities.publishes", &caps.publishes),
        ] {
            if entries.len() > MAX_CAPABILITY_ENTRIES {
                return Err(ManifestError::Invalid {
                    field: field.into(),
                    reason: format!("more than {MAX_CAPABILITY_ENTRIES} entries"),
                });
            }
            if let Some(empty) = entries.iter().find(|e| e.trim().is_empty()) {
                return Err(ManifestError::Invalid {
                    field: field.into(),
                    reason: format!("entry `{empty}` is empty"),
                });
            }
        }
        Ok(())
    }

    /// The job called `name`, if the module offers it.
    pub fn job(&self, name: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|job| job.name == name)
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
}
