//! The `kv` capability: key-value storage scoped to one module. Owns the guest-facing
//! rules (grant, sizes), the port its backends implement, and the in-memory backend.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::runtime::bindings::kv;

use super::{BackendError, HostContext};

/// Keys are short identifiers; a bound keeps index rows small in every backend.
pub(crate) const MAX_KEY_BYTES: usize = 512;
/// One value at most; larger state belongs in several keys.
pub(crate) const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Upper bound of one `list-keys` answer.
pub(crate) const MAX_LIST_KEYS: u32 = 10_000;

/// Storage behind the `kv` import. Every call is scoped by module name; a backend must
/// never let one module see another's keys.
#[async_trait::async_trait]
pub trait KeyValueStore: Send + Sync + 'static {
    /// Called on every guest `get`.
    async fn get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Called on every guest `set`, after the size checks passed.
    async fn set(&self, module: &str, key: &str, value: &[u8]) -> Result<(), BackendError>;
    /// Called on every guest `delete`; a missing key is not an error.
    async fn delete(&self, module: &str, key: &str) -> Result<(), BackendError>;
    /// Keys starting with `prefix`, sorted, at most `limit`.
    async fn list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, BackendError>;
}

/// Keeps every module's keys in this process.
#[derive(Debug, Default)]
pub struct MemoryKeyValue {
    entries: Mutex<BTreeMap<(String, String), Vec<u8>>>,
}

impl MemoryKeyValue {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<u8>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl KeyValueStore for MemoryKeyValue {
    async fn get(&self, module: &str, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.entries().get(&(module.into(), key.into())).cloned())
    }

    async fn set(&self, module: &str, key: &str, value: &[u8]) -> Result<(), BackendError> {
        self.entries()
            .insert((module.into(), key.into()), value.to_vec());
        Ok(())
    }

    async fn delete(&self, module: &str, key: &str) -> Result<(), BackendError> {
        self.entries().remove(&(module.into(), key.into()));
        Ok(())
    }

    async fn list_keys(
        &self,
        module: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, BackendError> {
        let entries = self.entries();
        let start = (module.to_owned(), prefix.to_owned());
        Ok(entries
            .range(start..)
            .take_while(|((m, k), _)| m == module && k.starts_with(prefix))
            .take(limit as usize)
            .map(|((_, k), _)| k.clone())
            .collect())
    }
}

/// A kv call's failure: either an error the guest receives, or a trap that ends the run.
#[derive(Debug)]
pub(crate) enum KvFailure {
    Refused(kv::Error),
    Trap(wasmtime::Error),
}

impl From<wasmtime::Error> for KvFailure {
    fn from(err: wasmtime::Error) -> Self {
        KvFailure::Trap(err)
    }
}

impl From<BackendError> for KvFailure {
    fn from(err: BackendError) -> Self {
        tracing::warn!(error = %err, "key-value backend failed");
        KvFailure::Refused(kv::Error::Unavailable(
            "key-value storage is unavailable".into(),
        ))
    }
}

impl HostContext {
    fn check_kv_grant(&self, call: &str) -> Result<(), KvFailure> {
        if self.grants.key_value {
            return Ok(());
        }
        self.log_denial(&format!(
            "kv.{call}: the module has no key-value grant; declare `key-value` in its capabilities and have it approved"
        ));
        Err(KvFailure::Refused(kv::Error::Denied))
    }

    fn check_key(key: &str) -> Result<(), KvFailure> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(KvFailure::Refused(kv::Error::TooLarge(format!(
                "keys must be 1 to {MAX_KEY_BYTES} bytes, this one is {} bytes",
                key.len()
            ))));
        }
        Ok(())
    }
}

impl kv::Host for HostContext {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvFailure> {
        self.check_kv_grant("get")?;
        Self::check_key(&key)?;
        let store = self.services.kv.clone();
        Ok(self
            .bounded("kv.get", store.get(&self.module, &key))
            .await??)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), KvFailure> {
        self.check_kv_grant("set")?;
        Self::check_key(&key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvFailure::Refused(kv::Error::TooLarge(format!(
                "values are limited to {MAX_VALUE_BYTES} bytes, this one is {} bytes",
                value.len()
            ))));
        }
        let store = self.services.kv.clone();
        Ok(self
            .bounded("kv.set", store.set(&self.module, &key, &value))
            .await??)
    }

    async fn delete(&mut self, key: String) -> Result<(), KvFailure> {
        self.check_kv_grant("delete")?;
        Self::check_key(&key)?;
        let store = self.services.kv.clone();
        Ok(self
            .bounded("kv.delete", store.delete(&self.module, &key))
            .await??)
    }

    async fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, KvFailure> {
        self.check_kv_grant("list-keys")?;
        if prefix.len() > MAX_KEY_BYTES {
            return Err(KvFailure::Refused(kv::Error::TooLarge(format!(
                "prefixes are limited to {MAX_KEY_BYTES} bytes"
            ))));
        }
        let limit = limit.min(MAX_LIST_KEYS);
        let store = self.services.kv.clone();
        Ok(self
            .bounded(
                "kv.list-keys",
                store.list_keys(&self.module, &prefix, limit),
            )
            .await??)
    }

    fn convert_error(&mut self, err: KvFailure) -> wasmtime::Result<kv::Error> {
        match err {
            KvFailure::Refused(error) => Ok(error),
            KvFailure::Trap(trap) => Err(trap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_backend_keeps_modules_apart() {
        let kv = MemoryKeyValue::default();
        kv.set("a", "k", b"1").await.unwrap();
        kv.set("b", "k", b"2").await.unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.list_keys("a", "", 10).await.unwrap(), ["k"]);
        kv.delete("a", "k").await.unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), None);
        assert_eq!(kv.get("b", "k").await.unwrap(), Some(b"2".to_vec()));
    }

    #[tokio::test]
    async fn memory_backend_lists_by_prefix_in_order_up_to_the_limit() {
        let kv = MemoryKeyValue::default();
        for key in ["record/b", "record/a", "sync/cursor", "record/c"] {
            kv.set("m", key, b"x").await.unwrap();
        }
        assert_eq!(
            kv.list_keys("m", "record/", 2).await.unwrap(),
            ["record/a", "record/b"]
        );
        assert_eq!(kv.list_keys("m", "zzz", 10).await.unwrap().len(), 0);
    }
}
