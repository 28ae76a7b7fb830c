//! The `config` capability: the job's settings, secrets included, resolved by the caller
//! before the run. Reading them is the only way a secret leaves the host.

use crate::runtime::bindings::config;

use super::HostContext;

impl config::Host for HostContext {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.get(&key).cloned())
    }

    async fn get_all(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
