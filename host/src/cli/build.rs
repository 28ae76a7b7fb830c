//! `runcell build`: compiles a module project to a component with its language's
//! toolchain (see `project`), then checks the result as a server would (the runtime loads
//! it: a valid component, a world Runcell provides, a readable manifest) and says what it
//! built.

use std::path::{Path, PathBuf};

use clap::Args;

use super::ExitStatus;
use super::local::{CacheArgs, load, local_runtime};
use super::project::Project;
use crate::runtime::OutboundSettings;

#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// The project's directory (the one holding its Cargo.toml, pyproject.toml or
    /// package.json) [default: .].
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Copy the component to this file, and name it in the output, instead of leaving it
    /// only where the toolchain wrote it.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    cache: CacheArgs,
}

pub(super) fn run(args: BuildArgs) -> ExitStatus {
    let project = match Project::detect(&args.dir) {
        Ok(project) => project,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitStatus::Usage;
        }
    };
    if let Err(missing) = project.check_toolchain(&args.dir) {
        eprintln!("error: {missing}");
        return ExitStatus::Environment;
    }
    let built = project.build(&args.dir).and_then(|wasm| match &args.out {
        Some(out) => copy(&wasm, out).map(|()| out.clone()),
        None => Ok(wasm),
    });
    match built {
        Ok(wasm) => check(&args.cache, &wasm),
        Err(message) => {
            eprintln!("error: {message}");
            ExitStatus::Environment
        }
    }
}

fn copy(wasm: &Path, out: &Path) -> Result<(), String> {
    if let Some(parent) = out.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    }
    std::fs::copy(wasm, out)
        .map(drop)
        .map_err(|err| format!("cannot copy {} to {}: {err}", wasm.display(), out.display()))
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
