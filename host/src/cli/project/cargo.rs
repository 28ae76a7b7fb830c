//! Rust projects: `cargo build --release --target wasm32-wasip2`, the component being the
//! crate's `cdylib`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip2";

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Whether cargo runs and the standard library for the target is installed, each failure
/// as the one thing to install.
pub(super) fn check_toolchain(dir: &Path) -> Result<(), String> {
    let cargo_runs = Command::new(cargo())
        .arg("--version")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !cargo_runs {
        return Err("cargo is not installed; install Rust with rustup (https://rustup.rs), then `rustup target add wasm32-wasip2`".to_owned());
    }
    // The toolchain the project selects (a rust-toolchain file may pin one) decides.
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    match sysroot {
        Some(sysroot) if sysroot.join("lib/rustlib").join(TARGET).is_dir() => Ok(()),
        _ => Err(format!(
            "the {TARGET} target is not installed; install it with `rustup target add {TARGET}`"
        )),
    }
}

/// Runs `cargo build --release --target wasm32-wasip2`, passing cargo's progress and
/// diagnostics through to stderr, and answers the path of the `.wasm` it produced.
pub(super) fn build(dir: &Path) -> Result<PathBuf, String> {
    let mut child = Command::new(cargo())
        .args(["build", "--release", "--target", TARGET])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| format!("cannot start cargo: {err}"))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut wasm = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" {
            let files = message["filenames"].as_array().into_iter().flatten();
            wasm.extend(
                files
                    .filter_map(|file| file.as_str())
                    .filter(|file| file.ends_with(".wasm"))
                    .map(PathBuf::from),
            );
        }
    }
    let status = child
        .wait()
        .map_err(|err| format!("cargo did not finish: {err}"))?;
    if !status.success() {
        return Err("cargo build failed (see above)".to_owned());
    }
    match wasm.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(
            "cargo built no .wasm file; is the package a library with crate-type = [\"cdylib\"]?"
                .to_owned(),
        ),
        several => Err(format!(
            "cargo built several .wasm files ({}); build one module per project",
            several
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
