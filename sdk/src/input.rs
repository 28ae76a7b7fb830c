//! Input types with no counterpart in serde.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The input of a job that takes none. Accepts empty input, `null` and `{}`, so the job
/// works both on a cron tick (no input) and from a form that always sends an object;
/// anything else is invalid input.
///
/// ```
/// use runcell_sdk::{Context, JobError, NoInput};
///
/// fn cleanup(_ctx: &Context, _input: NoInput) -> Result<(), JobError> {
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NoInput;

impl<'de> Deserialize<'de> for NoInput {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoInputVisitor)
    }
}

struct NoInputVisitor;

impl<'de> Visitor<'de> for NoInputVisitor {
    type Value = NoInput;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no input (nothing, null or {})")
    }

    fn visit_unit<E: de::Error>(self) -> Result<NoInput, E> {
        Ok(NoInput)
    }

    fn visit_none<E: de::Error>(self) -> Result<NoInput, E> {
        Ok(NoInput)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoInput, A::Error> {
        match map.next_key::<String>()? {
            None => Ok(NoInput),
            Some(key) => {
                map.next_value::<IgnoredAny>()?;
                Err(de::Error::custom(format_args!(
                    "unexpected field `{key}`: this job takes no input"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_null_and_an_empty_object() {
        assert_eq!(serde_json::from_str::<NoInput>("null").unwrap(), NoInput);
        assert_eq!(serde_json::from_str::<NoInput>(" { } ").unwrap(), NoInput);
    }

    #[test]
    fn rejects_anything_else() {
        let error = serde_json::from_str::<NoInput>(r#"{"a":1}"#).unwrap_err();
        assert!(
            error.to_string().contains("unexpected field `a`"),
            "{error}"
        );
        let error = serde_json::from_str::<NoInput>("[]").unwrap_err();
        assert!(error.to_string().contains("expected no input"), "{error}");
        serde_json::from_str::<NoInput>("0").unwrap_err();
    }
}
