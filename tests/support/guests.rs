//! Builds the example and fixture modules once per test process and says where they are.
//! The guests are the packages under `example-modules/` and `tests/fixtures/`, listed by
//! the host's build script; `tests/runtime.rs` must hold a test named after each one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every guest module, by package name.
pub(crate) const GUESTS: &[&str] = include!(concat!(env!("OUT_DIR"), "/guests.rs"));

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate sits in the workspace")
        .to_path_buf()
}

/// The directory guest builds go to; `./dev` uses the same one.
pub(crate) fn guest_target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("guests")
}

fn build_all() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--profile",
            "guest",
            "--target",
            "wasm32-wasip2",
        ])
        .arg("--target-dir")
        .arg(guest_target_dir());
    for package in GUESTS {
        command.args(["-p", package]);
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building the guest modules failed");
    guest_target_dir().join("wasm32-wasip2").join("guest")
}

/// Path of the built guest `package` (e.g. `data-sync`).
pub(crate) fn guest(package: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    assert!(GUESTS.contains(&package), "{package} is not a known guest");
    let dir = BUILT.get_or_init(build_all);
    dir.join(format!("{}.wasm", package.replace('-', "_")))
}

/// The bytes of the built guest `package`.
#[allow(dead_code, reason = "not every test binary reads bytes")]
pub(crate) fn guest_bytes(package: &str) -> Vec<u8> {
    std::fs::read(guest(package)).expect("a built guest is readable")
}
