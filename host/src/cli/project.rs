//! What kind of module project a directory holds, and how its toolchain turns it into a
//! component: a Cargo crate (cargo), a Python package (componentize-py) or a JavaScript
//! package (componentize-js). `build`, `dev` and `push` share this one detection; checking
//! the component is `build`'s.

mod cargo;
mod js;
mod python;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(super) use js::COMPONENTIZE_JS_VERSION;
pub(super) use python::COMPONENTIZE_PY_VERSION;

/// The directory, beside the project's sources, where Python and JavaScript builds leave
/// `NAME.wasm` (cargo keeps its own `target/`).
pub(super) const BUILD_DIR: &str = "build";

/// A module project, by the file that marks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Project {
    /// A `Cargo.toml`.
    Rust,
    /// A `pyproject.toml` with a `[tool.runcell]` table.
    Python(Package),
    /// A `package.json` with a `runcell` field.
    Js(Package),
}

/// What `runcell build` needs to know of a Python or JavaScript project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Package {
    /// The package's name, which names the built file.
    pub(super) name: String,
    pub(super) version: String,
    /// The world of `wit/` the component targets.
    pub(super) world: String,
    /// Python: the module (under `src/`) defining `WitWorld`. JavaScript: the entry file.
    pub(super) entry: String,
}

impl Project {
    /// The project in `dir`, or what is wrong with it.
    pub(super) fn detect(dir: &Path) -> Result<Self, String> {
        if dir.join("Cargo.toml").is_file() {
            return Ok(Self::Rust);
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("pyproject.toml")) {
            return python::package(&text)
                .map(Self::Python)
                .map_err(|problem| format!("{}: {problem}", dir.join("pyproject.toml").display()));
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("package.json")) {
            return js::package(&text)
                .map(Self::Js)
                .map_err(|problem| format!("{}: {problem}", dir.join("package.json").display()));
        }
        Err(format!(
            "{} holds no Cargo.toml, pyproject.toml or package.json; run this in a module project (see `runcell new`)",
            dir.display()
        ))
    }

    /// Whether the toolchain is there, each failure as the one thing to install.
    pub(super) fn check_toolchain(&self, dir: &Path) -> Result<(), String> {
        match self {
            Self::Rust => cargo::check_toolchain(dir),
            Self::Python(_) => python::componentize_py(dir).map(drop),
            Self::Js(_) => js::componentize_js(dir).map(drop),
        }
    }

    /// Builds the component, the toolchain's output passed through to stderr, and answers
    /// its path.
    pub(super) fn build(&self, dir: &Path) -> Result<PathBuf, String> {
        // Absolute: the toolchains run in the project's directory, where a path relative
        // to ours (the output, a local `.venv/bin`) would point elsewhere.
        let dir = std::fs::canonicalize(dir)
            .map_err(|err| format!("cannot find {}: {err}", dir.display()))?;
        match self {
            Self::Rust => cargo::build(&dir),
            Self::Python(package) => python::build(&dir, package),
            Self::Js(package) => js::build(&dir, package),
        }
    }

    /// `name version` for messages: the package's, else the built file's name.
    pub(super) fn label(&self, dir: &Path, wasm: &Path) -> String {
        let package = match self {
            Self::Rust => std::fs::read_to_string(dir.join("Cargo.toml"))
                .ok()
                .map(|manifest| toml_strings(&manifest, "package"))
                .and_then(|mut table| Some((table.remove("name")?, table.remove("version")?))),
            Self::Python(package) | Self::Js(package) => {
                Some((package.name.clone(), package.version.clone()))
            }
        };
        package.map_or_else(
            || {
                wasm.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            },
            |(name, version)| format!("{name} {version}"),
        )
    }

    /// The files and directories whose change calls for a new build: the manifest and
    /// `src/` (every template keeps its sources there).
    pub(super) fn sources(&self, dir: &Path) -> Vec<PathBuf> {
        let manifest = match self {
            Self::Rust => "Cargo.toml",
            Self::Python(_) => "pyproject.toml",
            Self::Js(_) => "package.json",
        };
        vec![dir.join(manifest), dir.join("src")]
    }
}

/// The plain string values (`key = "value"`) of table `[name]` of a TOML document. Enough
/// for the few keys read here, without a TOML parser in the binary.
pub(super) fn toml_strings(manifest: &str, name: &str) -> BTreeMap<String, String> {
    let header = format!("[{name}]");
    let mut inside = false;
    let mut strings = BTreeMap::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        if let Some(text) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            strings.insert(key.trim().to_owned(), text.to_owned());
        }
    }
    strings
}

/// `program` in the project's own tool directory (`.venv/bin`, `node_modules/.bin`), else
/// on PATH.
fn find_program(local: &Path, program: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    std::iter::once(local.to_path_buf())
        .chain(on_path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Runs a toolchain command whose output is all diagnostics: its stdout goes to stderr,
/// so that `runcell build` keeps stdout for what it built.
fn run_tool(command: &mut std::process::Command, what: &str) -> Result<(), String> {
    let status = command
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr())
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(|err| format!("cannot start {what}: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed (see above)"))
    }
}

/// `dir/build/NAME.wasm`, its directory created.
fn output_path(dir: &Path, package: &Package) -> Result<PathBuf, String> {
    let out = dir.join(BUILD_DIR);
    std::fs::create_dir_all(&out)
        .map_err(|err| format!("cannot create {}: {err}", out.display()))?;
    Ok(out.join(format!("{}.wasm", package.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_reads_one_table() {
        let manifest = "[project]\nname = \"demo\"\nversion = \"0.1.0\"\nlist = [\"a\"]\n\n[tool.runcell]\nworld = \"w\"\n";
        let project = toml_strings(manifest, "project");
        assert_eq!(project.get("name").map(String::as_str), Some("demo"));
        assert_eq!(project.get("version").map(String::as_str), Some("0.1.0"));
        assert!(!project.contains_key("list"));
        assert!(!project.contains_key("world"));
        assert_eq!(toml_strings(manifest, "tool.runcell")["world"], "w");
    }
}
