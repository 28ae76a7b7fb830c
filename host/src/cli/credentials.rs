//! The stored login of the server-facing commands: one server and its tokens, in
//! `credentials.json` under the user's config directory, readable by its owner only.
//! Owns where that file lives and how it is written; never prints what it holds.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::client::Failure;

/// The file name under the config directory.
const FILE_NAME: &str = "credentials.json";

/// A login, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct Credentials {
    /// The server's address, without a trailing `/`.
    pub(super) server: String,
    /// Who logged in (for messages only).
    #[serde(default)]
    pub(super) username: Option<String>,
    pub(super) access_token: String,
    /// When the access token expires (ms since the epoch); absent for an API token,
    /// which the server alone knows the expiry of.
    #[serde(default)]
    pub(super) access_expires_at: Option<i64>,
    /// The session's refresh token; absent for an API token.
    #[serde(default)]
    pub(super) refresh_token: Option<String>,
}

impl Credentials {
    /// Whether the access token has expired, or will within `margin_ms`.
    pub(super) fn access_expired(&self, now_ms: i64, margin_ms: i64) -> bool {
        self.access_expires_at
            .is_some_and(|expires| now_ms + margin_ms >= expires)
    }
}

/// Where the credentials file is: `$RUNCELL_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/runcell`, else `~/.config/runcell`.
pub(super) fn config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("RUNCELL_CONFIG_DIR") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .map(|dir| dir.join("runcell"))
}

/// The credentials file, or a failure saying no config directory could be found.
pub(super) fn credentials_path() -> Result<PathBuf, Failure> {
    config_dir().map(|dir| dir.join(FILE_NAME)).ok_or_else(|| {
        Failure::environment(
            "no config directory: set HOME, XDG_CONFIG_HOME or RUNCELL_CONFIG_DIR".to_owned(),
        )
    })
}

/// The stored login, `None` if there is none.
pub(super) fn load(path: &Path) -> Result<Option<Credentials>, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(Failure::environment(format!(
                "cannot read {}: {err}",
                path.display()
            )));
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|err| {
        Failure::environment(format!(
            "{} is not a credentials file ({err}); run `runcell login` again",
            path.display()
        ))
    })
}

/// Writes `credentials` to `path`, mode 0600 from the start (the tokens are never
/// readable by others, not even for an instant), replacing the old file atomically so a
/// rotated refresh token is never lost half-written.
pub(super) fn save(path: &Path, credentials: &Credentials) -> Result<(), Failure> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |what: &str, err: std::io::Error| {
        Failure::environment(format!("cannot {what} {}: {err}", path.display()))
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| fail("create the directory of", err))?;
    }
    let partial = path.with_extension("json.partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|err| fail("write", err))?;
    let text = serde_json::to_string_pretty(credentials).expect("credentials serialize");
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| fail("write", err))?;
    std::fs::rename(&partial, path).map_err(|err| fail("write", err))
}

/// Removes the stored login; `false` if there was none.
pub(super) fn remove(path: &Path) -> Result<bool, Failure> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(Failure::environment(format!(
            "cannot remove {}: {err}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn session() -> Credentials {
        Credentials {
            server: "http://127.0.0.1:4000".to_owned(),
            username: Some("ada".to_owned()),
            access_token: "access".to_owned(),
            access_expires_at: Some(10_000),
            refresh_token: Some("refresh".to_owned()),
        }
    }

    #[test]
    fn credentials_are_written_for_their_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join(FILE_NAME);
        save(&path, &session()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load(&path).unwrap(), Some(session()));
        let mut rotated = session();
        rotated.refresh_token = Some("rotated".to_owned());
        save(&path, &rotated).unwrap();
        assert_eq!(load(&path).unwrap(), Some(rotated));
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert_eq!(load(&path).unwrap(), None);
    }

    #[test]
    fn an_access_token_expires_a_margin_early_and_an_api_token_never() {
        let credentials = session();
        assert!(!credentials.access_expired(1_000, 5_000));
        assert!(credentials.access_expired(5_000, 5_000));
        let api_token = Credentials {
            access_expires_at: None,
            refresh_token: None,
            ..session()
        };
        assert!(!api_token.access_expired(i64::MAX / 2, 0));
    }

    #[test]
    fn a_corrupt_file_says_to_log_in_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, "{").unwrap();
        let failure = load(&path).unwrap_err();
        assert!(failure.message.contains("runcell login"), "{failure:?}");
    }
}
