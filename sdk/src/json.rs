//! Parsing JSON bodies into typed values with errors that name the offending path.

use serde::de::DeserializeOwned;

/// `bytes` parsed as JSON of type `T`, or what is wrong: `[1].id: invalid type: ...` (the
/// path is left out when the problem is at the root).
pub(crate) fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let error = error.into_inner();
        if path == "." {
            error.to_string()
        } else {
            format!("{path}: {error}")
        }
    })?;
    deserializer.end().map_err(|error| error.to_string())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_the_path_below_the_root() {
        assert_eq!(from_slice::<Vec<u8>>(b"[1, 2]").unwrap(), [1, 2]);
        let problem = from_slice::<Vec<u8>>(b"[1, 300]").unwrap_err();
        assert!(problem.starts_with("[1]: invalid value"), "{problem}");
        let problem = from_slice::<Vec<u8>>(b"{}").unwrap_err();
        assert!(problem.starts_with("invalid type: map"), "{problem}");
        let problem = from_slice::<Vec<u8>>(b"[] []").unwrap_err();
        assert!(problem.starts_with("trailing characters"), "{problem}");
    }
}
