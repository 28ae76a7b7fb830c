//! The JSON file `runcell run --kv` keeps a module's key-value store in: loaded into the
//! in-memory backend before a local run and written back from it afterwards.
//!
//! The file is one JSON object, key → value. The SDK stores JSON, so a value is the JSON
//! the job wrote (read back as the same JSON, though not necessarily with the same spacing
//! or key order); bytes that are not JSON are kept as `{"$base64": "..."}` so that nothing
//! a job stores is lost by a round trip.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use crate::runtime::host::{KeyValueStore, MemoryKeyValue};

/// The key of the one-entry object standing for bytes that are not JSON.
const BYTES_KEY: &str = "$base64";

/// Fills `kv` with the entries of `path` under `module`; a missing file is an empty store.
pub(super) async fn load(path: &Path, module: &str, kv: &MemoryKeyValue) -> Result<(), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(format!("--kv: cannot read {}: {err}", path.display())),
    };
    let entries: BTreeMap<String, Value> = serde_json::from_str(&text).map_err(|err| {
        format!(
            "--kv: {} is not a JSON object of keys and values: {err}",
            path.display()
        )
    })?;
    for (key, value) in entries {
        let bytes = to_bytes(&value)
            .map_err(|reason| format!("--kv: {}: key `{key}`: {reason}", path.display()))?;
        kv.set(module, &key, &bytes)
            .await
            .map_err(|err| format!("--kv: {err}"))?;
    }
    Ok(())
}

/// Writes every key of `module` in `kv` to `path`, replacing the file in one step so an
/// interrupted write never leaves half a store.
pub(super) async fn save(path: &Path, module: &str, kv: &MemoryKeyValue) -> Result<(), String> {
    let mut entries = serde_json::Map::new();
    let keys = kv
        .list_keys(module, "", u32::MAX)
        .await
        .map_err(|err| format!("--kv: {err}"))?;
    for key in keys {
        if let Some(bytes) = kv
            .get(module, &key)
            .await
            .map_err(|err| format!("--kv: {err}"))?
        {
            entries.insert(key, from_bytes(&bytes));
        }
    }
    let mut text = serde_json::to_string_pretty(&Value::Object(entries)).expect("JSON serializes");
    text.push('\n');
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|err| format!("--kv: cannot write {}: {err}", path.display()))
}

fn is_bytes_marker(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|object| object.len() == 1 && object.contains_key(BYTES_KEY))
}

fn to_bytes(value: &Value) -> Result<Vec<u8>, String> {
    match value.as_object() {
        Some(object) if is_bytes_marker(value) => {
            let encoded = object[BYTES_KEY]
                .as_str()
                .ok_or_else(|| format!("`{BYTES_KEY}` must be a base64 string"))?;
            BASE64
                .decode(encoded)
                .map_err(|err| format!("`{BYTES_KEY}` is not base64: {err}"))
        }
        _ => Ok(serde_json::to_vec(value).expect("JSON serializes")),
    }
}

fn from_bytes(bytes: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(bytes) {
        // JSON that looks like the bytes marker would be decoded as bytes on reading.
        Ok(value) if !is_bytes_marker(&value) => value,
        _ => serde_json::json!({ BYTES_KEY: BASE64.encode(bytes) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_are_kept_as_json_and_other_bytes_as_base64() {
        assert_eq!(from_bytes(br#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(
            from_bytes(b"\xff\x00"),
            serde_json::json!({"$base64": "/wA="})
        );
        for bytes in [
            &b"\xff\x00"[..],
            br#"{"a":1}"#,
            b"42",
            br#""text""#,
            b"not json",
        ] {
            assert_eq!(to_bytes(&from_bytes(bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn json_that_looks_like_the_bytes_marker_survives_as_bytes() {
        let bytes = br#"{"$base64":"AA=="}"#;
        assert_eq!(to_bytes(&from_bytes(bytes)).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_store_survives_a_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.json");
        let kv = MemoryKeyValue::default();
        load(&path, "m", &kv).await.unwrap();
        kv.set("m", "count", b"3").await.unwrap();
        kv.set("other", "hidden", b"1").await.unwrap();
        save(&path, "m", &kv).await.unwrap();
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written, serde_json::json!({"count": 3}));

        let reloaded = MemoryKeyValue::default();
        load(&path, "m", &reloaded).await.unwrap();
        assert_eq!(
            reloaded.get("m", "count").await.unwrap(),
            Some(b"3".to_vec())
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_an_object_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.json");
        std::fs::write(&path, "[1, 2]").unwrap();
        let err = load(&path, "m", &MemoryKeyValue::default())
            .await
            .unwrap_err();
        assert!(err.contains("is not a JSON object"), "{err}");
    }
}
