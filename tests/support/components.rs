//! The Python and JavaScript modules: their toolchains (installed by `./dev test` under the
//! target directory, or found on PATH) and the examples in those languages, built once per
//! test process with `runcell build` into the guests' directory, where `./dev test` puts
//! them too, and rebuilt only when a source is newer than the build.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use crate::guests;

/// PATH with the toolchains `./dev test` installs in front.
pub(crate) fn toolchain_path() -> OsString {
    let toolchains = guests::guest_target_dir()
        .parent()
        .expect("the guests' directory has a parent")
        .join("toolchains");
    let mut dirs = vec![
        toolchains.join("python/bin"),
        toolchains.join("js/node_modules/.bin"),
    ];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("PATH entries hold no separator")
}

/// The built example `name` (a directory of `example-modules/` without a Cargo.toml).
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate sits in the workspace")
        .join("example-modules")
        .join(name);
    assert!(source.is_dir(), "no example {name}");
    let wasm = guests::guest_target_dir()
        .join("components")
        .join(format!("{name}.wasm"));
    let built_at = std::fs::metadata(&wasm)
        .and_then(|meta| meta.modified())
        .ok();
    if built_at.is_none_or(|built_at| newest(&source) > built_at) {
        let output = Command::new(env!("CARGO_BIN_EXE_runcell"))
            .arg("build")
            .arg(&source)
            .arg("--out")
            .arg(&wasm)
            .arg("--no-cache")
            .env("PATH", toolchain_path())
            .output()
            .expect("runcell starts");
        assert!(
            output.status.success(),
            "runcell build {}: {}",
            source.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    built.insert(name.to_owned(), wasm.clone());
    wasm
}

/// The newest modification time of the example's sources: every file but what its
/// toolchains and builds write.
fn newest(dir: &Path) -> SystemTime {
    let mut latest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let skipped = ["build", "node_modules", ".venv", "__pycache__"];
        if path
            .file_name()
            .is_some_and(|name| skipped.iter().any(|skip| name == *skip))
        {
            continue;
        }
        // Follows the `wit` link to the contract, whose change calls for a build too.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let at = if meta.is_dir() {
            newest(&path)
        } else {
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
        };
        latest = latest.max(at);
    }
    latest
}
