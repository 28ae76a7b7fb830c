//! Structured logging into the execution's log.
//!
//! Use the macros [`trace!`](crate::trace!), [`debug!`](crate::debug!),
//! [`info!`](crate::info!), [`warn!`](crate::warn!) and [`error!`](crate::error!):
//!
//! ```no_run
//! let records = 12;
//! let source = "api";
//! runcell_sdk::info!("synced", records = records, source);
//! runcell_sdk::warn!(format!("slow page {}", 3), "http.status" = 429);
//! ```
//!
//! The message is anything that derefs to `&str`; each field is `key = value` (the key an
//! identifier or a string literal), or just `name` for `name = name`. Values are any
//! [`Serialize`] type and are recorded as JSON. Writing never fails: past the
//! per-execution cap the host drops lines and says how many.

use serde::Serialize;

use crate::__bindings::runcell::module::log as wit;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Fine-grained detail.
    Trace,
    /// Detail useful while developing a module.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that the job handled.
    Warn,
    /// Something failed.
    Error,
}

impl From<Level> for wit::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => Self::Trace,
            Level::Debug => Self::Debug,
            Level::Info => Self::Info,
            Level::Warn => Self::Warn,
            Level::Error => Self::Error,
        }
    }
}

/// One structured field of a log line: a key and its value as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    key: String,
    value: String,
}

impl Field {
    /// A field whose value is `value` serialized to JSON. A value that cannot be serialized
    /// (e.g. a map with non-string keys) is recorded as a string describing the failure.
    pub fn new<T: Serialize + ?Sized>(key: impl Into<String>, value: &T) -> Self {
        let value = serde_json::to_string(value).unwrap_or_else(|error| {
            serde_json::Value::String(format!("<unserializable: {error}>")).to_string()
        });
        Self {
            key: key.into(),
            value,
        }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value, as JSON text.
    pub fn value_json(&self) -> &str {
        &self.value
    }
}

/// Appends one line to the execution's log. The macros are the usual way to call this.
pub fn write(level: Level, message: &str, fields: Vec<Field>) {
    let fields: Vec<wit::Field> = fields
        .into_iter()
        .map(|field| wit::Field {
            key: field.key,
            value: field.value,
        })
        .collect();
    wit::write(level.into(), message, &fields);
}

/// Logs at a [`Level`] given as the first argument: `log!(Level::Info, "message", key = value)`.
/// See [`log`](mod@crate::log) for the field syntax.
#[macro_export]
macro_rules! log {
    ($level:expr, $message:expr $(, $key:tt $(= $value:expr)?)* $(,)?) => {
        $crate::log::write(
            $level,
            &$message,
            ::std::vec![$($crate::__log_field!($key $(= $value)?)),*],
        )
    };
}

/// Logs at trace level: `trace!("message", key = value, ...)`.
#[macro_export]
macro_rules! trace {
    ($($arguments:tt)+) => { $crate::log!($crate::log::Level::Trace, $($arguments)+) };
}

/// Logs at debug level: `debug!("message", key = value, ...)`.
#[macro_export]
macro_rules! debug {
    ($($arguments:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arguments)+) };
}

/// Logs at info level: `info!("message", key = value, ...)`.
#[macro_export]
macro_rules! info {
    ($($arguments:tt)+) => { $crate::log!($crate::log::Level::Info, $($arguments)+) };
}

/// Logs at warn level: `warn!("message", key = value, ...)`.
#[macro_export]
macro_rules! warn {
    ($($arguments:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arguments)+) };
}

/// Logs at error level: `error!("message", key = value, ...)`.
#[macro_export]
macro_rules! error {
    ($($arguments:tt)+) => { $crate::log!($crate::log::Level::Error, $($arguments)+) };
}

/// One field of a log macro. Not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __log_field {
    ($key:ident) => {
        $crate::log::Field::new(::core::stringify!($key), &$key)
    };
    ($key:ident = $value:expr) => {
        $crate::log::Field::new(::core::stringify!($key), &$value)
    };
    ($key:literal = $value:expr) => {
        $crate::log::Field::new($key, &$value)
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn field_values_are_json() {
        assert_eq!(Field::new("n", &42).value_json(), "42");
        assert_eq!(Field::new("s", "api").value_json(), "\"api\"");
        assert_eq!(
            Field::new("m", &BTreeMap::from([("a", 1)])).value_json(),
            r#"{"a":1}"#
        );
        assert_eq!(Field::new("f", &f64::NAN).value_json(), "null");
    }

    #[test]
    fn unserializable_values_become_a_json_string() {
        let field = Field::new("bad", &BTreeMap::from([((1, 2), 3)]));
        let value: String = serde_json::from_str(field.value_json()).unwrap();
        assert!(value.starts_with("<unserializable: "), "{value}");
    }

    #[test]
    fn the_field_macro_accepts_shorthand_identifiers_and_string_keys() {
        let records = 3;
        assert_eq!(crate::__log_field!(records), Field::new("records", &3));
        assert_eq!(
            crate::__log_field!(count = records + 1),
            Field::new("count", &4)
        );
        assert_eq!(
            crate::__log_field!("http.status" = 429),
            Field::new("http.status", &429)
        );
    }
}
