//! Python projects: a `pyproject.toml` whose `[tool.runcell]` table names the world and the
//! module under `src/` that defines `WitWorld`, built by componentize-py against the
//! project's `wit/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Package, find_program, output_path, run_tool, toml_strings};

/// The componentize-py release the templates are written and tested against.
pub(in crate::cli) const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The package `pyproject.toml` describes, or what it lacks.
pub(super) fn package(pyproject: &str) -> Result<Package, String> {
    let mut project = toml_strings(pyproject, "project");
    let mut runcell = toml_strings(pyproject, "tool.runcell");
    if runcell.is_empty() {
        return Err(
            "no [tool.runcell] table (world = \"...\", module = \"...\"), so not a Runcell module (see `runcell new --lang python`)"
                .to_owned(),
        );
    }
    Ok(Package {
        name: take(&mut project, "project", "name")?,
        version: take(&mut project, "project", "version")?,
        world: take(&mut runcell, "tool.runcell", "world")?,
        entry: take(&mut runcell, "tool.runcell", "module")?,
    })
}

fn take(table: &mut BTreeMap<String, String>, name: &str, key: &str) -> Result<String, String> {
    table
        .remove(key)
        .ok_or_else(|| format!("[{name}] has no `{key}` string"))
}

/// componentize-py from the project's `.venv`, else from PATH.
pub(super) fn componentize_py(dir: &Path) -> Result<PathBuf, String> {
    find_program(&dir.join(".venv/bin"), "componentize-py").ok_or_else(|| {
        format!(
            "componentize-py is not installed; install it in a venv: `python3 -m venv .venv && .venv/bin/pip install componentize-py=={COMPONENTIZE_PY_VERSION}`"
        )
    })
}

/// `componentize-py -d wit -w WORLD componentize -p src MODULE -o build/NAME.wasm`.
pub(super) fn build(dir: &Path, package: &Package) -> Result<PathBuf, String> {
    let program = componentize_py(dir)?;
    let wasm = output_path(dir, package)?;
    run_tool(
        Command::new(program)
            .current_dir(dir)
            .args([
                "-d",
                "wit",
                "-w",
                &package.world,
                "componentize",
                "-p",
                "src",
            ])
            .arg(&package.entry)
            .arg("-o")
            .arg(&wasm),
        "componentize-py",
    )?;
    Ok(wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pyproject_without_the_runcell_table_is_not_a_module() {
        let plain = "[project]\nname = \"tool\"\nversion = \"1.0\"\n";
        assert!(
            package(plain)
                .unwrap_err()
                .contains("no [tool.runcell] table")
        );
        let module = format!("{plain}\n[tool.runcell]\nworld = \"w\"\nmodule = \"app\"\n");
        assert_eq!(
            package(&module).unwrap(),
            Package {
                name: "tool".to_owned(),
                version: "1.0".to_owned(),
                world: "w".to_owned(),
                entry: "app".to_owned(),
            }
        );
        let no_module = format!("{plain}\n[tool.runcell]\nworld = \"w\"\n");
        assert!(package(&no_module).unwrap_err().contains("`module`"));
    }
}
