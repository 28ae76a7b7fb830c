//! The `log` capability: structured lines into the execution's log.

use crate::domain::LogLevel;
use crate::runtime::bindings::log;

use super::HostContext;

impl log::Host for HostContext {
    async fn write(
        &mut self,
        level: log::Level,
        message: String,
        fields: Vec<log::Field>,
    ) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let fields = fields
            .into_iter()
            .map(|field| {
                let value = serde_json::from_str(&field.value)
                    .unwrap_or(serde_json::Value::String(field.value));
                (field.key, value)
            })
            .collect();
        self.logs.push(level, &message, fields);
        Ok(())
    }
}
