//! The module's key-value store: shared by every job of the module, invisible to other
//! modules. Needs `key_value: true` in the module's capabilities.
//!
//! [`get`] and [`set`] store values as JSON; [`get_bytes`] and [`set_bytes`] store raw
//! bytes.
//!
//! ```
//! # fn job() -> Result<(), runcell_sdk::JobError> {
//! use runcell_sdk::kv;
//! let seen: Option<u64> = kv::get("counter")?;
//! kv::set("counter", &(seen.unwrap_or(0) + 1))?;
//! for key in kv::list_keys("record/", 100)? {
//!     kv::delete(&key)?;
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__bindings::runcell::module::kv as wit;
use crate::JobError;

/// Why a key-value call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum KvError {
    /// The module did not declare `key_value: true`, or it was not approved.
    Denied,
    /// The key or value is over the host's size limit (the message gives the limit).
    TooLarge(String),
    /// Storage is temporarily unreachable; worth retrying.
    Unavailable(String),
    /// The value could not be serialized to JSON.
    Encode {
        /// The key being written.
        key: String,
        /// What serde reported.
        source: serde_json::Error,
    },
    /// The stored value is not JSON of the requested type.
    Decode {
        /// The key being read.
        key: String,
        /// What serde reported.
        source: serde_json::Error,
    },
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Denied => f.write_str(
                "key-value access denied: declare `key_value: true` in the module's \
                 capabilities and have the module approved",
            ),
            Self::TooLarge(message) => write!(f, "key-value size limit exceeded: {message}"),
            Self::Unavailable(message) => write!(f, "key-value store unavailable: {message}"),
            Self::Encode { key, source } => {
                write!(f, "could not encode the value for key `{key}`: {source}")
            }
            Self::Decode { key, source } => {
                write!(
                    f,
                    "the value under key `{key}` has an unexpected shape: {source}"
                )
            }
        }
    }
}

impl std::error::Error for KvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Encode { source, .. } | Self::Decode { source, .. } => Some(source),
            Self::Denied | Self::TooLarge(_) | Self::Unavailable(_) => None,
        }
    }
}

/// Unavailable storage is transient (the run is retried); everything else is permanent,
/// since the same code would fail the same way again.
impl From<KvError> for JobError {
    fn from(error: KvError) -> Self {
        match error {
            KvError::Unavailable(_) => Self::transient(error),
            _ => Self::permanent(error),
        }
    }
}

impl From<wit::Error> for KvError {
    fn from(error: wit::Error) -> Self {
        match error {
            wit::Error::Denied => Self::Denied,
            wit::Error::TooLarge(message) => Self::TooLarge(message),
            wit::Error::Unavailable(message) => Self::Unavailable(message),
        }
    }
}

/// The JSON value stored under `key`, parsed as `T`, or `None` if the key is not set.
pub fn get<T: DeserializeOwned>(key: &str) -> Result<Option<T>, KvError> {
    let Some(bytes) = get_bytes(key)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| KvError::Decode {
            key: key.to_owned(),
            source,
        })
}

/// Stores `value` as JSON under `key`, replacing any previous value.
pub fn set<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<(), KvError> {
    let bytes = serde_json::to_vec(value).map_err(|source| KvError::Encode {
        key: key.to_owned(),
        source,
    })?;
    set_bytes(key, &bytes)
}

/// The bytes stored under `key`, or `None` if the key is not set.
pub fn get_bytes(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    wit::get(key).map_err(Into::into)
}

/// Stores `value` under `key`, replacing any previous value.
pub fn set_bytes(key: &str, value: &[u8]) -> Result<(), KvError> {
    wit::set(key, value).map_err(Into::into)
}

/// Removes `key`; removing a missing key is not an error.
pub fn delete(key: &str) -> Result<(), KvError> {
    wit::delete(key).map_err(Into::into)
}

/// Keys that start with `prefix`, in lexicographic order, at most `limit` of them.
pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
    wit::list_keys(prefix, limit).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_storage_is_transient() {
        let error = JobError::from(KvError::from(wit::Error::Unavailable("db down".to_owned())));
        assert_eq!(
            error,
            JobError::transient("key-value store unavailable: db down")
        );
    }

    #[test]
    fn denied_and_too_large_are_permanent() {
        assert!(matches!(
            JobError::from(KvError::from(wit::Error::Denied)),
            JobError::Permanent(m) if m.contains("key_value: true")
        ));
        assert!(matches!(
            JobError::from(KvError::from(wit::Error::TooLarge("max 1 MiB".to_owned()))),
            JobError::Permanent(m) if m.ends_with("max 1 MiB")
        ));
    }

    #[test]
    fn decode_failures_name_the_key_and_keep_the_source() {
        let source = serde_json::from_str::<u32>("\"x\"").unwrap_err();
        let error = KvError::Decode {
            key: "sync/cursor".to_owned(),
            source,
        };
        assert!(error.to_string().contains("`sync/cursor`"));
        assert!(std::error::Error::source(&error).is_some());
        assert!(matches!(JobError::from(error), JobError::Permanent(_)));
    }
}
