//! Per-job settings an operator configured, including secrets. A secret is readable here
//! and nowhere else, so never log what you read.
//!
//! ```no_run
//! let source = runcell_sdk::config::get("source").unwrap_or_else(|| "default".to_owned());
//! ```

use crate::__bindings::runcell::module::config as wit;

/// The value of setting `key`, or `None` if it is not set.
pub fn get(key: &str) -> Option<String> {
    wit::get(key)
}

/// Every setting of the job as `(key, value)` pairs, sorted by key.
pub fn all() -> Vec<(String, String)> {
    wit::get_all()
}
