//! A job's settings: what its module reads through the `config` interface. Plain values
//! are kept as given; secret ones only sealed (encrypted by the services, which alone hold
//! the key). This module owns how settings are written to the database and how the API
//! shows them, and makes sure no path prints a sealed value: `Serialize` is the API's
//! masked view, `Debug` masks too, and storage goes through [`JobConfig::to_stored_json`].

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

/// Settings per job: configuration for a module, not a data store.
pub(crate) const MAX_SETTINGS: usize = 64;
/// Longest setting name, in bytes.
pub(crate) const MAX_SETTING_NAME_BYTES: usize = 128;

/// Whether `name` may name a setting: 1 to [`MAX_SETTING_NAME_BYTES`] letters, digits,
/// `-`, `_` or `.`.
pub(crate) fn is_valid_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SETTING_NAME_BYTES
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// What the API shows in place of a secret's value. In a request, `{"secret": "***"}`
/// keeps the stored secret of that key, so this text can never be a secret's value.
pub(crate) const SECRET_MASK: &str = "***";

/// One setting as the server keeps it.
#[derive(Clone, PartialEq, Eq)]
pub enum Setting {
    Plain(String),
    /// A secret, sealed for this job and key (`v1:...`); only the services open it.
    Sealed(String),
}

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(value) => f.debug_tuple("Plain").field(value).finish(),
            Self::Sealed(_) => f.write_str("Sealed(***)"),
        }
    }
}

/// A job's settings by name. Serializes as the API shows them: plain values as they are,
/// secrets as `{"secret": "***"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobConfig(BTreeMap<String, Setting>);

/// The database's form of one setting: plain text, or `{"sealed": "v1:..."}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredSetting {
    Plain(String),
    Sealed { sealed: String },
}

impl JobConfig {
    pub fn new(settings: BTreeMap<String, Setting>) -> Self {
        Self(settings)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.0.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Setting)> {
        self.0.iter().map(|(key, setting)| (key.as_str(), setting))
    }

    /// The JSON text the database keeps, sealed values included.
    pub fn to_stored_json(&self) -> String {
        let stored: BTreeMap<&str, StoredSetting> = self
            .iter()
            .map(|(key, setting)| {
                let stored = match setting {
                    Setting::Plain(value) => StoredSetting::Plain(value.clone()),
                    Setting::Sealed(sealed) => StoredSetting::Sealed {
                        sealed: sealed.clone(),
                    },
                };
                (key, stored)
            })
            .collect();
        serde_json::to_string(&stored).expect("a map of strings always serializes")
    }

    /// Reads what [`JobConfig::to_stored_json`] wrote.
    pub fn from_stored_json(text: &str) -> Result<Self, serde_json::Error> {
        let stored: BTreeMap<String, StoredSetting> = serde_json::from_str(text)?;
        Ok(Self(
            stored
                .into_iter()
                .map(|(key, stored)| {
                    let setting = match stored {
                        StoredSetting::Plain(value) => Setting::Plain(value),
                        StoredSetting::Sealed { sealed } => Setting::Sealed(sealed),
                    };
                    (key, setting)
                })
                .collect(),
        ))
    }
}

impl Serialize for JobConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter().map(|(key, setting)| {
            let shown = match setting {
                Setting::Plain(value) => SettingValue::Plain(value.clone()),
                Setting::Sealed(_) => SettingValue::Secret(SecretValue {
                    secret: SECRET_MASK.to_owned(),
                }),
            };
            (key, shown)
        }))
    }
}

/// A setting's value on the wire: a string, or `{"secret": "..."}` for a secret. Responses
/// always show a secret as `{"secret": "***"}`; in a request, `{"secret": "***"}` keeps the
/// secret stored under that key.
#[derive(Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SettingValue {
    /// A plain value, readable by anyone who may read the job.
    Plain(String),
    /// A secret: encrypted at rest, readable only by the job's module.
    Secret(SecretValue),
}

/// A secret setting: its value in a request; `***` in every response.
#[derive(Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SecretValue {
    /// The secret's value (a string), or `***` to keep the stored one.
    #[schema(example = "***")]
    pub secret: String,
}

impl std::fmt::Debug for SettingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(value) => f.debug_tuple("Plain").field(value).finish(),
            Self::Secret(_) => f.write_str("Secret(***)"),
        }
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// What a value of the wrong shape is told. It never quotes the value: it may be a secret.
const EXPECTED_SETTING: &str =
    "a setting's value is a string, or {\"secret\": \"...\"} (a string) for a secret";

impl<'de> Deserialize<'de> for SettingValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(value) => Ok(Self::Plain(value)),
            serde_json::Value::Object(mut object) if object.len() == 1 => {
                match object.remove("secret") {
                    Some(serde_json::Value::String(secret)) => {
                        Ok(Self::Secret(SecretValue { secret }))
                    }
                    _ => Err(de::Error::custom(EXPECTED_SETTING)),
                }
            }
            _ => Err(de::Error::custom(EXPECTED_SETTING)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JobConfig {
        JobConfig::new(BTreeMap::from([
            ("region".to_owned(), Setting::Plain("eu-west".to_owned())),
            (
                "apiKey".to_owned(),
                Setting::Sealed("v1:c2VhbGVk".to_owned()),
            ),
        ]))
    }

    #[test]
    fn the_api_view_masks_secrets_and_the_stored_form_keeps_them_sealed() {
        let shown = serde_json::to_value(config()).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({"apiKey": {"secret": "***"}, "region": "eu-west"})
        );
        let stored = config().to_stored_json();
        assert_eq!(
            stored,
            r#"{"apiKey":{"sealed":"v1:c2VhbGVk"},"region":"eu-west"}"#
        );
        assert_eq!(JobConfig::from_stored_json(&stored).unwrap(), config());
        assert!(!format!("{:?}", config()).contains("c2VhbGVk"));
    }

    #[test]
    fn a_setting_is_a_string_or_a_secret_object_and_errors_never_quote_the_value() {
        let parse = |json: &str| serde_json::from_str::<SettingValue>(json);
        assert_eq!(
            parse(r#""eu""#).unwrap(),
            SettingValue::Plain("eu".to_owned())
        );
        assert_eq!(
            parse(r#"{"secret": "hunter2"}"#).unwrap(),
            SettingValue::Secret(SecretValue {
                secret: "hunter2".to_owned()
            })
        );
        for bad in [
            "12345",
            "true",
            "null",
            r#"["x"]"#,
            r#"{"secret": 98765}"#,
            r#"{"secret": "x", "other": 1}"#,
            r#"{"value": "x"}"#,
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("is a string"), "{bad}: {err}");
            assert!(!err.contains("98765") && !err.contains("12345"), "{err}");
        }
        let secret = parse(r#"{"secret": "hunter2"}"#).unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
