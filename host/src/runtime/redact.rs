//! Keeps a job's secret values out of what its run leaves behind. A guest may print a
//! secret it read through `config` (on purpose or by a careless `{:?}`); every log line
//! (before it is streamed or stored) and the outcome's error, or output, is cleaned here,
//! so the execution's record does not hold the secret as it was given or in a common
//! encoding of it.
//!
//! What is found, and why no more:
//! - the value itself, where it stands whole: not inside a longer word, so that a secret
//!   that is also part of ordinary text (`true` in "construed") does not turn every
//!   appearance of that text into a mask that tells a reader what the secret is;
//! - its hex (either case), its base64 (standard and URL-safe alphabets, alone or inside a
//!   longer encoding such as a `Basic` credential, at each of the three byte alignments)
//!   and its URL encoding: the forms a careless log line or a debugging dump gives it.
//!
//! Masking is for accidents. A module that can read a secret can always send it out in a
//! form no list foresees (reversed, split, encrypted, over an approved outbound host),
//! which is why a module's code is approved before it is given secrets: the `hostile`
//! fixture's `leak-secret` job shows both sides.

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

use crate::domain::{Outcome, SECRET_MASK};

/// Values shorter than this are not redacted: replacing every `ab` in a log would mangle
/// it and, by where the mask appears, tell what the secret is.
pub(crate) const MIN_REDACTED_LEN: usize = 4;

/// Encoded forms found inside longer text must be at least this long, so that a few
/// characters of an unrelated hex or base64 string are not masked by chance (which would
/// again say something about the secret).
const MIN_EMBEDDED_LEN: usize = 8;

/// One form of a secret to look for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Form {
    text: String,
    /// Found only where it stands whole (not glued to letters, digits or `_`); otherwise
    /// found anywhere.
    whole: bool,
}

/// The secret values of one run; cheap to clone, and free when there are none.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a form that contains another is replaced whole.
    forms: Arc<[Form]>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} forms)", self.forms.len())
    }
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut forms: Vec<Form> = secrets
            .into_iter()
            .filter(|secret| secret.len() >= MIN_REDACTED_LEN)
            .flat_map(|secret| forms_of(&secret))
            .collect();
        // Longest first; of two equal texts the one found anywhere (`whole: false`)
        // sorts first and is kept.
        forms.sort_unstable_by(|a, b| {
            b.text
                .len()
                .cmp(&a.text.len())
                .then_with(|| a.text.cmp(&b.text))
                .then_with(|| a.whole.cmp(&b.whole))
        });
        forms.dedup_by(|later, earlier| later.text == earlier.text);
        Self {
            forms: forms.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// `text` with every occurrence of a secret's forms replaced by `***`.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut redacted = Cow::Borrowed(text);
        for form in self.forms.iter() {
            if !redacted.contains(form.text.as_str()) {
                continue;
            }
            if !form.whole {
                redacted = Cow::Owned(redacted.replace(form.text.as_str(), SECRET_MASK));
            } else if let Some(masked) = mask_whole(&redacted, &form.text) {
                redacted = Cow::Owned(masked);
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

/// Every form of `secret` a redactor looks for.
fn forms_of(secret: &str) -> Vec<Form> {
    let whole = |text: String| Form { text, whole: true };
    let anywhere = |text: String| Form { text, whole: false };
    let bytes = secret.as_bytes();
    let mut forms = vec![whole(secret.to_owned()), whole(percent_encoded(bytes))];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        forms.push(whole(engine.encode(bytes)));
    }
    for hex in [hex::encode(bytes), hex::encode_upper(bytes)] {
        forms.push(if hex.len() >= MIN_EMBEDDED_LEN {
            anywhere(hex)
        } else {
            whole(hex)
        });
    }
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        forms.extend(base64_cores(bytes, &engine).into_iter().map(anywhere));
    }
    forms
}

/// The base64 characters that `secret` alone decides, wherever it starts in a longer
/// encoded text: one string for each of the three byte alignments, the partial characters
/// at both ends (shared with the neighbouring bytes) left out.
fn base64_cores(secret: &[u8], engine: &impl Engine) -> Vec<String> {
    (0..3_usize)
        .filter_map(|offset| {
            let mut bytes = vec![0_u8; offset];
            bytes.extend_from_slice(secret);
            let encoded = engine.encode(&bytes);
            let start = (8 * offset).div_ceil(6);
            let end = (8 * (offset + secret.len())) / 6;
            (end >= start + MIN_EMBEDDED_LEN).then(|| encoded[start..end].to_owned())
        })
        .collect()
}

/// `bytes` as a URL encodes them: every byte but the unreserved ones as `%XX`.
fn percent_encoded(bytes: &[u8]) -> String {
    let mut encoded = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with each occurrence of `secret` that stands whole replaced, if there is one.
/// An end of the secret that is itself a word character must not be glued to another.
fn mask_whole(text: &str, secret: &str) -> Option<String> {
    let starts_in_word = secret.chars().next().is_some_and(is_word);
    let ends_in_word = secret.chars().next_back().is_some_and(is_word);
    let mut masked = String::with_capacity(text.len());
    let mut kept_up_to = 0;
    for (start, _) in text.match_indices(secret) {
        let end = start + secret.len();
        let glued_before = starts_in_word && text[..start].chars().next_back().is_some_and(is_word);
        let glued_after = ends_in_word && text[end..].chars().next().is_some_and(is_word);
        if glued_before || glued_after {
            continue;
        }
        masked.push_str(&text[kept_up_to..start]);
        masked.push_str(SECRET_MASK);
        kept_up_to = end;
    }
    if kept_up_to == 0 {
        return None;
    }
    masked.push_str(&text[kept_up_to..]);
    Some(masked)
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
    fn a_secret_inside_a_longer_word_is_left_alone_so_the_mask_tells_nothing() {
        let redactor = Redactor::new(["true".to_owned()]);
        assert_eq!(
            redactor.text("construed, untrue, true_ly"),
            "construed, untrue, true_ly"
        );
        assert_eq!(redactor.text("flag=true;"), "flag=***;");
        assert_eq!(redactor.text("true"), "***");
        // A secret that ends in punctuation is found before a letter too.
        let redactor = Redactor::new(["p@ss!".to_owned()]);
        assert_eq!(redactor.text("x p@ss!y"), "x ***y");
    }

    #[test]
    fn common_encodings_of_a_secret_are_masked_too() {
        let secret = "correct horse/battery+staple?";
        let redactor = Redactor::new([secret.to_owned()]);
        let basic = STANDARD.encode(format!("user:{secret}"));
        for leaked in [
            hex::encode(secret),
            hex::encode_upper(secret),
            STANDARD.encode(secret),
            STANDARD_NO_PAD.encode(secret),
            URL_SAFE.encode(secret),
            URL_SAFE_NO_PAD.encode(secret),
            "correct%20horse%2Fbattery%2Bstaple%3F".to_owned(),
        ] {
            assert_eq!(
                redactor.text(&format!("leak: {leaked}")),
                "leak: ***",
                "{leaked}"
            );
        }
        // Inside a longer encoding, only the characters the secret alone decides go.
        let masked = redactor.text(&basic).into_owned();
        assert!(masked.contains(SECRET_MASK), "{masked}");
        assert!(masked.len() < basic.len() / 2, "{masked}");
        // A transformation nobody uses by accident is beyond masking.
        let reversed: String = secret.chars().rev().collect();
        assert_eq!(redactor.text(&reversed), reversed);
    }

    #[test]
    fn base64_cores_match_the_secret_at_every_alignment() {
        let secret = b"0123456789abcdef";
        for prefix in ["", "x", "xy", "xyz"] {
            let mut bytes = prefix.as_bytes().to_vec();
            bytes.extend_from_slice(secret);
            let encoded = STANDARD_NO_PAD.encode(&bytes);
            assert!(
                base64_cores(secret, &STANDARD_NO_PAD)
                    .iter()
                    .any(|core| encoded.contains(core.as_str())),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn no_secrets_means_nothing_to_do() {
        let none = Redactor::new(Vec::new());
        assert!(none.is_empty());
        assert_eq!(none.text("hunter2"), "hunter2");
    }
}
