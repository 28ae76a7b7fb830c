//! The smallest Runcell module: a greeting, and a job that does nothing at all (the
//! baseline for measuring the runtime's per-execution overhead).

use runcell_sdk::{Context, JobError};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// Input of `greet`: `{"name": "..."}`, every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GreetInput {
    /// Who to greet; `world` when missing.
    #[serde(default)]
    pub name: Option<String>,
}

/// Output of `greet`.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Greeting {
    /// `Hello, <name>!`
    pub greeting: String,
}

/// Greets `name` (default `world`) and logs one line.
pub fn greet(_ctx: &Context, input: Option<GreetInput>) -> Result<Greeting, JobError> {
    let name = input
        .and_then(|input| input.name)
        .unwrap_or_else(|| "world".to_owned());
    runcell_sdk::info!("greeting", name);
    Ok(Greeting {
        greeting: format!("Hello, {name}!"),
    })
}

/// Accepts any input, returns `null`, and calls nothing on the host.
pub fn noop(_ctx: &Context, _input: IgnoredAny) -> Result<(), JobError> {
    Ok(())
}

runcell_sdk::module! {
    name: "hello",
    version: env!("CARGO_PKG_VERSION"),
    description: "Says hello; the smallest possible Runcell module.",
    jobs: [
        greet => {
            name: "greet",
            description: "Returns {\"greeting\": \"Hello, <name>!\"} for input {\"name\": ...} (default: world).",
            input_schema: r#"{"type":["object","null"],"properties":{"name":{"type":"string"}},"additionalProperties":false}"#,
            timeout_ms: 1_000,
        },
        noop => {
            name: "noop",
            description: "Does nothing and returns null; the baseline for measuring overhead.",
            timeout_ms: 1_000,
        },
    ],
}

#[cfg(test)]
mod tests {
    use runcell_sdk::Trigger;

    use super::*;

    #[test]
    fn noop_accepts_anything() {
        let ctx = Context::new("exec-1", Trigger::Manual, 0);
        assert_eq!(noop(&ctx, IgnoredAny), Ok(()));
    }

    #[test]
    fn greet_input_name_is_optional() {
        let input: GreetInput = serde_json::from_str("{}").unwrap();
        assert_eq!(input.name, None);
        let input: GreetInput = serde_json::from_str(r#"{"name":"Ada"}"#).unwrap();
        assert_eq!(input.name.as_deref(), Some("Ada"));
    }
}
