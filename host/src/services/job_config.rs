//! A job's settings between the API and its runs: checks what a client gives, seals
//! secrets before they are stored, and opens them for a run. Plaintext secrets exist only
//! in a request being handled and in a run's memory; no message written here quotes a
//! value.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::secrets::SecretBox;
use super::{ServiceError, Services};
use crate::domain::{
    Job, JobConfig, MAX_SETTING_NAME_BYTES, MAX_SETTINGS, SECRET_MASK, SecretValue, Setting,
    SettingValue, is_valid_setting_name,
};
use crate::runtime::Redactor;

/// Longest setting value, in bytes: room for a certificate or a list of endpoints.
pub(crate) const MAX_SETTING_VALUE_BYTES: usize = 64 * 1024;

/// The settings of one run, secrets opened, and what to mask in what the run leaves.
#[derive(Debug, Clone, Default)]
pub struct OpenedConfig {
    pub values: Arc<BTreeMap<String, String>>,
    pub redactor: Redactor,
}

/// Why a job's stored secret cannot be opened for a run. Retrying cannot help: the node
/// needs the key the secret was sealed under.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigOpenError {
    #[error(
        "setting `{key}` is a secret, and this node has no secret key to open it: set \
         RUNCELL_SECRET_KEY, the same on every node, and restart"
    )]
    NoKey { key: String },
    #[error(
        "secret setting `{key}` does not open with this node's secret key: it was set \
         under another key (give every node the same RUNCELL_SECRET_KEY) or the stored \
         value is damaged (set the secret again)"
    )]
    DoesNotOpen { key: String },
}

impl Services {
    /// What to store for the settings a client gave, replacing `stored` (the job's
    /// settings before; empty for a new job). `{"secret": "***"}` keeps the secret stored
    /// under that name.
    pub(crate) fn settle_config(
        &self,
        job_id: &str,
        given: BTreeMap<String, SettingValue>,
        stored: &JobConfig,
    ) -> Result<JobConfig, ServiceError> {
        settle(job_id, given, stored, self.secrets.as_ref())
    }

    /// The settings a run of `job` gets, secrets opened with this node's key.
    pub fn open_config(&self, job: &Job) -> Result<OpenedConfig, ConfigOpenError> {
        open(job, self.secrets.as_ref())
    }
}

fn settle(
    job_id: &str,
    given: BTreeMap<String, SettingValue>,
    stored: &JobConfig,
    sealer: Option<&SecretBox>,
) -> Result<JobConfig, ServiceError> {
    if given.len() > MAX_SETTINGS {
        return Err(ServiceError::unprocessable(
            "config",
            format!(
                "{} settings, above the limit of {MAX_SETTINGS}",
                given.len()
            ),
        ));
    }
    let mut settled = BTreeMap::new();
    for (name, value) in given {
        let field = format!("config.{name}");
        if !is_valid_setting_name(&name) {
            return Err(ServiceError::bad(
                field,
                format!(
                    "`{name}` is not a valid setting name: 1 to {MAX_SETTING_NAME_BYTES} letters, digits, `-`, `_` or `.`"
                ),
            ));
        }
        let text = match &value {
            SettingValue::Plain(text) | SettingValue::Secret(SecretValue { secret: text }) => text,
        };
        if text.len() > MAX_SETTING_VALUE_BYTES {
            return Err(ServiceError::unprocessable(
                field,
                format!(
                    "the value has {} bytes, above the limit of {MAX_SETTING_VALUE_BYTES}",
                    text.len()
                ),
            ));
        }
        let seal = sealer.map(|sealer| |secret: &str| sealer.seal(job_id, &name, secret));
        let setting = settle_value(&field, &name, value, stored.get(&name), seal)?;
        settled.insert(name, setting);
    }
    Ok(JobConfig::new(settled))
}

/// What a setting `name` given as `value` becomes: plain text as it is; a secret sealed
/// by `seal` (`None`: this server has no key, and refuses); the mask `***` the secret
/// `kept` already holds (refused when there is none to keep). Errors name `field`. Job
/// settings and endpoint monitors' headers are settled alike.
pub(crate) fn settle_value(
    field: &str,
    name: &str,
    value: SettingValue,
    kept: Option<&Setting>,
    seal: Option<impl FnOnce(&str) -> String>,
) -> Result<Setting, ServiceError> {
    match value {
        SettingValue::Plain(text) => Ok(Setting::Plain(text)),
        SettingValue::Secret(SecretValue { secret }) if secret == SECRET_MASK => match kept {
            Some(kept @ Setting::Sealed(_)) => Ok(kept.clone()),
            _ => Err(ServiceError::unprocessable(
                field,
                format!(
                    "{{\"secret\": \"{SECRET_MASK}\"}} keeps the stored secret, but `{name}` has none; give its value"
                ),
            )),
        },
        SettingValue::Secret(SecretValue { secret }) => match seal {
            Some(seal) => Ok(Setting::Sealed(seal(&secret))),
            None => Err(ServiceError::unprocessable(
                field,
                "this server has no secret key, so it cannot store secrets: set \
                 RUNCELL_SECRET_KEY (base64 of 32 random bytes, the same on every node) \
                 and restart, or give the value as plain text",
            )),
        },
    }
}

fn open(job: &Job, sealer: Option<&SecretBox>) -> Result<OpenedConfig, ConfigOpenError> {
    if job.config.is_empty() {
        return Ok(OpenedConfig::default());
    }
    let mut values = BTreeMap::new();
    let mut secrets = Vec::new();
    for (key, setting) in job.config.iter() {
        let value = match setting {
            Setting::Plain(value) => value.clone(),
            Setting::Sealed(sealed) => {
                let sealer = sealer.ok_or_else(|| ConfigOpenError::NoKey {
                    key: key.to_owned(),
                })?;
                let opened = sealer.open(&job.id, key, sealed).map_err(|_| {
                    ConfigOpenError::DoesNotOpen {
                        key: key.to_owned(),
                    }
                })?;
                secrets.push(opened.clone());
                opened
            }
        };
        values.insert(key.to_owned(), value);
    }
    Ok(OpenedConfig {
        values: Arc::new(values),
        redactor: Redactor::new(secrets),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::secrets::KEY_BYTES;

    fn sealer() -> SecretBox {
        SecretBox::new(&[9; KEY_BYTES]).unwrap()
    }

    fn given(pairs: &[(&str, SettingValue)]) -> BTreeMap<String, SettingValue> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), value.clone()))
            .collect()
    }

    fn plain(text: &str) -> SettingValue {
        SettingValue::Plain(text.to_owned())
    }

    fn secret(text: &str) -> SettingValue {
        SettingValue::Secret(SecretValue {
            secret: text.to_owned(),
        })
    }

    fn job_with(config: JobConfig) -> Job {
        Job {
            id: "job-1".into(),
            name: "j".into(),
            module: "m".into(),
            job: "j".into(),
            schedule: None,
            schedule_source: crate::domain::ScheduleSource::Job,
            input: serde_json::Value::Null,
            enabled: true,
            max_attempts: 1,
            timeout_ms: None,
            fuel: None,
            memory_bytes: None,
            on_event: None,
            retain_days: None,
            retain_last: None,
            config,
            next_run_at: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn field_of(err: &ServiceError) -> &str {
        match err {
            ServiceError::BadField { field, .. } | ServiceError::Unprocessable { field, .. } => {
                field
            }
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn secrets_are_sealed_for_their_job_and_open_for_a_run() {
        let config = settle(
            "job-1",
            given(&[("region", plain("eu")), ("apiKey", secret("hunter2-key"))]),
            &JobConfig::default(),
            Some(&sealer()),
        )
        .unwrap();
        assert_eq!(config.get("region"), Some(&Setting::Plain("eu".into())));
        let Some(Setting::Sealed(sealed)) = config.get("apiKey") else {
            panic!("the secret is sealed: {config:?}");
        };
        assert!(sealed.starts_with("v1:") && !sealed.contains("hunter2"));

        let opened = open(&job_with(config), Some(&sealer())).unwrap();
        assert_eq!(opened.values["apiKey"], "hunter2-key");
        assert_eq!(opened.values["region"], "eu");
        assert_eq!(opened.redactor.text("key hunter2-key, eu"), "key ***, eu");
    }

    #[test]
    fn the_mask_keeps_a_stored_secret_and_a_left_out_setting_is_removed() {
        let stored = settle(
            "job-1",
            given(&[("apiKey", secret("hunter2-key")), ("old", plain("x"))]),
            &JobConfig::default(),
            Some(&sealer()),
        )
        .unwrap();
        // What a client that read the job sends back with one plain value edited.
        let shown: BTreeMap<String, SettingValue> =
            serde_json::from_value(serde_json::to_value(&stored).unwrap()).unwrap();
        let mut edited = shown.clone();
        edited.insert("region".into(), plain("us"));
        edited.remove("old");
        let updated = settle("job-1", edited, &stored, Some(&sealer())).unwrap();
        assert_eq!(updated.get("apiKey"), stored.get("apiKey"));
        assert_eq!(updated.get("old"), None);
        assert_eq!(updated.get("region"), Some(&Setting::Plain("us".into())));

        // Keeping works without the key: it copies the sealed value, it opens nothing.
        let kept = settle("job-1", shown, &stored, None).unwrap();
        assert_eq!(kept.get("apiKey"), stored.get("apiKey"));

        let err = settle("job-1", given(&[("other", secret("***"))]), &stored, None).unwrap_err();
        assert_eq!(field_of(&err), "config.other");
        assert!(err.to_string().contains("has none"), "{err}");
        let err = settle("job-1", given(&[("old", secret("***"))]), &stored, None).unwrap_err();
        assert_eq!(
            field_of(&err),
            "config.old",
            "a plain value is no secret to keep"
        );
    }

    #[test]
    fn a_secret_without_a_key_is_refused_naming_the_variable_and_plain_values_still_work() {
        let err = settle(
            "job-1",
            given(&[("apiKey", secret("hunter2-key"))]),
            &JobConfig::default(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, ServiceError::Unprocessable { .. }));
        assert_eq!(field_of(&err), "config.apiKey");
        let message = err.to_string();
        assert!(message.contains("RUNCELL_SECRET_KEY"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        settle(
            "job-1",
            given(&[("region", plain("eu"))]),
            &JobConfig::default(),
            None,
        )
        .unwrap();
    }

    #[test]
    fn names_counts_and_sizes_are_bounded() {
        let settle_plain = |pairs: BTreeMap<String, SettingValue>| {
            settle("job-1", pairs, &JobConfig::default(), Some(&sealer()))
        };
        for bad in ["", "has space", "slash/y", &"k".repeat(129)] {
            let err = settle_plain(given(&[(bad, plain("v"))])).unwrap_err();
            assert!(matches!(err, ServiceError::BadField { .. }), "{bad}: {err}");
            assert_eq!(field_of(&err), format!("config.{bad}"));
        }
        settle_plain(given(&[("ok_name-1.x", plain("v"))])).unwrap();
        settle_plain(given(&[(&"k".repeat(128), plain("v"))])).unwrap();

        let many: BTreeMap<String, SettingValue> = (0..=MAX_SETTINGS)
            .map(|i| (format!("k{i}"), plain("v")))
            .collect();
        let err = settle_plain(many).unwrap_err();
        assert!(matches!(err, ServiceError::Unprocessable { .. }));
        assert_eq!(field_of(&err), "config");

        let huge = "x".repeat(MAX_SETTING_VALUE_BYTES + 1);
        for value in [plain(&huge), secret(&huge)] {
            let err = settle_plain(given(&[("big", value)])).unwrap_err();
            assert!(matches!(err, ServiceError::Unprocessable { .. }));
            assert_eq!(field_of(&err), "config.big");
            assert!(err.to_string().len() < 200, "the value is not quoted");
        }
    }

    #[test]
    fn a_secret_opens_only_with_its_key_and_says_which_setting_failed() {
        let config = settle(
            "job-1",
            given(&[("apiKey", secret("hunter2-key"))]),
            &JobConfig::default(),
            Some(&sealer()),
        )
        .unwrap();
        let job = job_with(config);
        assert_eq!(
            open(&job, None).unwrap_err(),
            ConfigOpenError::NoKey {
                key: "apiKey".into()
            }
        );
        let other = SecretBox::new(&[1; KEY_BYTES]).unwrap();
        let err = open(&job, Some(&other)).unwrap_err();
        assert_eq!(
            err,
            ConfigOpenError::DoesNotOpen {
                key: "apiKey".into()
            }
        );
        assert!(err.to_string().contains("RUNCELL_SECRET_KEY"));
        // Moved onto another job, a sealed value does not open either.
        let moved = Job {
            id: "job-2".into(),
            ..job
        };
        assert!(open(&moved, Some(&sealer())).is_err());
        assert!(open(&job_with(JobConfig::default()), None).is_ok());
    }
}
