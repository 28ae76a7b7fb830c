//! JavaScript projects: a `package.json` whose `runcell` field names the world and whose
//! `main` is the entry module, built by componentize-js against the project's `wit/`.
//!
//! componentize-js is the engine `jco componentize` wraps; it is called directly because
//! `jco componentize` (1.35) cannot read a WIT directory with `deps/` ("failed to get path
//! metadata").

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use super::{Package, find_program, output_path, run_tool};

/// The componentize-js release the templates are written and tested against.
pub(in crate::cli) const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The package `package.json` describes, or what it lacks.
pub(super) fn package(package_json: &str) -> Result<Package, String> {
    let manifest: Value =
        serde_json::from_str(package_json).map_err(|err| format!("not JSON: {err}"))?;
    if manifest.get("runcell").is_none() {
        return Err(
            "no `runcell` field ({\"world\": \"...\"}), so not a Runcell module (see `runcell new --lang js`)"
                .to_owned(),
        );
    }
    let text = |value: &Value, path: &str| {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("`{path}` is not a string"))
    };
    Ok(Package {
        name: text(&manifest["name"], "name")?,
        version: text(&manifest["version"], "version")?,
        world: text(&manifest["runcell"]["world"], "runcell.world")?,
        entry: text(&manifest["main"], "main")?,
    })
}

/// componentize-js from the project's `node_modules`, else from PATH.
pub(super) fn componentize_js(dir: &Path) -> Result<PathBuf, String> {
    find_program(&dir.join("node_modules/.bin"), "componentize-js").ok_or_else(|| {
        "componentize-js is not installed; run `npm install` in the project (needs Node.js)"
            .to_owned()
    })
}

/// `componentize-js MAIN --wit wit -n WORLD -o build/NAME.wasm`.
pub(super) fn build(dir: &Path, package: &Package) -> Result<PathBuf, String> {
    let program = componentize_js(dir)?;
    let wasm = output_path(dir, package)?;
    run_tool(
        Command::new(program)
            .current_dir(dir)
            .arg(&package.entry)
            .args(["--wit", "wit", "-n", &package.world, "-o"])
            .arg(&wasm),
        "componentize-js",
    )?;
    Ok(wasm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_json_without_the_runcell_field_is_not_a_module() {
        let plain = r#"{"name": "tool", "version": "1.0.0", "main": "src/app.js"}"#;
        assert!(package(plain).unwrap_err().contains("no `runcell` field"));
        let module = r#"{"name": "tool", "version": "1.0.0", "main": "src/app.js", "runcell": {"world": "w"}}"#;
        assert_eq!(
            package(module).unwrap(),
            Package {
                name: "tool".to_owned(),
                version: "1.0.0".to_owned(),
                world: "w".to_owned(),
                entry: "src/app.js".to_owned(),
            }
        );
        let no_main = r#"{"name": "tool", "version": "1.0.0", "runcell": {"world": "w"}}"#;
        assert!(package(no_main).unwrap_err().contains("`main`"));
    }
}
