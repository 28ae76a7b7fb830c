//! `runcell build`: compiles a module project to a component with cargo, then checks the
//! result as a server would (the runtime loads it: a valid component, a world Runcell
//! provides, a readable manifest) and says what it built.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::Args;

use super::ExitStatus;
use super::local::{CacheArgs, load, local_runtime};
use crate::runtime::OutboundSettings;

const TARGET: &str = "wasm32-wasip2";

#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// The project's directory (the one holding its Cargo.toml) [default: .].
    #[arg(default_value = ".")]
    dir: PathBuf,
    #[command(flatten)]
    cache: CacheArgs,
}

pub(super) fn run(args: BuildArgs) -> ExitStatus {
    if !args.dir.join("Cargo.toml").is_file() {
        eprintln!(
            "error: {} holds no Cargo.toml; run `runcell build` in a module project (see `runcell new`)",
            args.dir.display()
        );
        return ExitStatus::Usage;
    }
    if let Err(missing) = check_toolchain(&args.dir) {
        eprintln!("error: {missing}");
        return ExitStatus::Environment;
    }
    let wasm = match cargo_build(&args.dir) {
        Ok(wasm) => wasm,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitStatus::Environment;
        }
    };
    check(&args.cache, &wasm)
}

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
pub(super) fn cargo_build(dir: &Path) -> Result<PathBuf, String> {
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

/// Loads `wasm` as the server would and prints its manifest and path.
fn check(cache: &CacheArgs, wasm: &Path) -> ExitStatus {
    super::tokio_runtime().block_on(async {
        let local = match local_runtime(cache, OutboundSettings::default()) {
            Ok(local) => local,
            Err(status) => return status,
        };
        let module = match load(&local.runtime, wasm).await {
            Ok(module) => module,
            Err(status) => return status,
        };
        let manifest = &module.manifest;
        println!(
            "{} {}: {}",
            manifest.name, manifest.version, manifest.description
        );
        for job in &manifest.jobs {
            let schedule = job
                .default_schedule
                .as_deref()
                .map(|s| format!(" [{s}]"))
                .unwrap_or_default();
            println!("  job {}{schedule}: {}", job.name, job.description);
        }
        let capabilities =
            serde_json::to_value(&manifest.capabilities).expect("capabilities serialize");
        let asked = super::push::capability_lines(&capabilities);
        println!(
            "asks for: {}",
            if asked.is_empty() {
                "nothing".to_owned()
            } else {
                asked.join(", ")
            }
        );
        let size = std::fs::metadata(wasm).map(|meta| meta.len()).unwrap_or(0);
        eprintln!(
            "built a valid component ({})",
            bytesize::ByteSize(size).display().iec()
        );
        println!("{}", wasm.display());
        ExitStatus::Success
    })
}
