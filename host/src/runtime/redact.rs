//! Keeps a job's secret values out of what its run leaves behind. A guest may print a
//! secret it read through `config` (on purpose or by a careless `{:?}`); every log line
//! (before it is streamed or stored) and the outcome's error, or output, is cleaned here,
//! so the execution's record never holds the secret. Only exact occurrences are found: an
//! encoded or split value is beyond what a host can recognise.

use std::borrow::Cow;
use std::sync::Arc;

use crate::domain::{Outcome, SECRET_MASK};

/// Values shorter than this are not redacted: replacing every `ab` in a log would mangle
/// it and, by where the mask appears, tell what the secret is.
pub const MIN_REDACTED_LEN: usize = 4;

/// The secret values of one run; cheap to clone, and free when there are none.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Arc<[String]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|secret| secret.len() >= MIN_REDACTED_LEN)
            .collect();
        secrets.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Self {
            secrets: secrets.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `text` with every occurrence of a secret replaced by `***`.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut redacted = Cow::Borrowed(text);
        for secret in self.secrets.iter() {
            if redacted.contains(secret.as_str()) {
                redacted = Cow::Owned(redacted.replace(secret.as_str(), SECRET_MASK));
            }
        }
        redacted
    }

    /// Redacts every string in `value`, object keys included.
    pub fn json(&self, value: &mut serde_json::Value) {
        if self.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(text) => self.in_place(text),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|item| self.json(item)),
            serde_json::Value::Object(object) => self.object(object),
            serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            }
        }
    }

    /// Redacts the keys and values of `object`.
    pub fn object(&self, object: &mut serde_json::Map<String, serde_json::Value>) {
        if self.is_empty() {
            return;
        }
        let needs_new_keys = object
            .keys()
            .any(|key| matches!(self.text(key), Cow::Owned(_)));
        if needs_new_keys {
            *object = std::mem::take(object)
                .into_iter()
                .map(|(key, value)| (self.text(&key).into_owned(), value))
                .collect();
        }
        object.values_mut().for_each(|value| self.json(value));
    }

    fn in_place(&self, text: &mut String) {
        if let Cow::Owned(redacted) = self.text(text) {
            *text = redacted;
        }
    }

    /// The outcome with its error message or output redacted.
    pub fn outcome(&self, mut outcome: Outcome) -> Outcome {
        if self.is_empty() {
            return outcome;
        }
        match &mut outcome {
            Outcome::Completed { output } => self.json(output),
            Outcome::Failed { message, .. } => self.in_place(message),
            Outcome::TimedOut { .. } | Outcome::Cancelled => {}
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::FailureKind;

    fn redactor() -> Redactor {
        Redactor::new([
            "hunter2-long".to_owned(),
            "hunter2".to_owned(),
            "ab".to_owned(),
        ])
    }

    #[test]
    fn every_occurrence_is_masked_and_the_longest_secret_first() {
        assert_eq!(
            redactor().text("key=hunter2-long, again hunter2, ab stays"),
            "key=***, again ***, ab stays"
        );
        assert!(matches!(redactor().text("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn strings_in_json_are_masked_keys_included() {
        let mut value = json!({"token": "hunter2", "hunter2": [1, "x hunter2 y", {"n": true}]});
        redactor().json(&mut value);
        assert_eq!(
            value,
            json!({"token": "***", "***": [1, "x *** y", {"n": true}]})
        );
    }

    #[test]
    fn an_outcome_loses_the_secret_from_its_error_or_output() {
        let failed = Outcome::Failed {
            kind: FailureKind::Permanent,
            message: "login with hunter2 refused".to_owned(),
        };
        assert!(matches!(
            redactor().outcome(failed),
            Outcome::Failed { message, .. } if message == "login with *** refused"
        ));
        let completed = Outcome::Completed {
            output: json!({"echo": "hunter2"}),
        };
        assert!(matches!(
            redactor().outcome(completed),
            Outcome::Completed { output } if output == json!({"echo": "***"})
        ));
    }

    #[test]
    fn no_secrets_means_nothing_to_do() {
        let none = Redactor::new(Vec::new());
        assert!(none.is_empty());
        assert_eq!(none.text("hunter2"), "hunter2");
    }
}
