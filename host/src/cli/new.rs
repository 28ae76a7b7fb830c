//! `runcell new`: writes a ready module project from the templates in `templates/`: a
//! Rust crate on `runcell-sdk`, or a Python or JavaScript package with Runcell's WIT (the
//! copy compiled into this binary) in its `wit/`, so that it builds offline. Owns the
//! project's layout and the checks on its name and directory; building it is `runcell
//! build`'s.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use super::ExitStatus;
use super::project::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION};

#[derive(Debug, Args)]
pub(super) struct NewArgs {
    /// The module's name: lowercase letters, digits and `-`, starting with a letter. The
    /// project is written to a directory of that name unless `--dir` says otherwise.
    name: String,
    /// The language of the module.
    #[arg(long, value_enum, default_value_t = Language::Rust)]
    lang: Language,
    /// `job`: one job. `routes`: the same job, and an HTTP route serving the same logic
    /// (Rust, Python and JavaScript).
    #[arg(long, value_enum, default_value_t = Template::Job)]
    template: Template,
    /// Depend on the SDK in this directory (e.g. `sdk/` of a Runcell checkout) instead of
    /// the published `runcell-sdk` (Rust; other languages use the WIT directly).
    #[arg(long, env = "RUNCELL_SDK_PATH")]
    sdk_path: Option<PathBuf>,
    /// Where to write the project [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Language {
    Rust,
    Python,
    Js,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Template {
    Job,
    Routes,
}

/// The SDK version a new project asks for: the workspace shares one version, so the
/// SDK of this release has this binary's version.
const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runcell's WIT as this binary was built with it, by path in a project.
const WIT_FILES: &[(&str, &str)] = &[
    ("wit/module.wit", include_str!("../../../wit/module.wit")),
    (
        "wit/deps/cli/cli.wit",
        include_str!("../../../wit/deps/cli/cli.wit"),
    ),
    (
        "wit/deps/clocks/clocks.wit",
        include_str!("../../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "wit/deps/filesystem/filesystem.wit",
        include_str!("../../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "wit/deps/http/http.wit",
        include_str!("../../../wit/deps/http/http.wit"),
    ),
    (
        "wit/deps/io/io.wit",
        include_str!("../../../wit/deps/io/io.wit"),
    ),
    (
        "wit/deps/random/random.wit",
        include_str!("../../../wit/deps/random/random.wit"),
    ),
    (
        "wit/deps/sockets/sockets.wit",
        include_str!("../../../wit/deps/sockets/sockets.wit"),
    ),
];

/// Longest module name a server accepts.
const MAX_NAME_BYTES: usize = 64;

pub(super) fn run(args: NewArgs) -> ExitStatus {
    match create(&args) {
        Ok(dir) => {
            println!("created {} in {}", args.name, dir.display());
            println!("next: cd {} && runcell build", dir.display());
            ExitStatus::Success
        }
        Err((status, message)) => {
            eprintln!("error: {message}");
            status
        }
    }
}

fn create(args: &NewArgs) -> Result<PathBuf, (ExitStatus, String)> {
    let usage = |message: String| (ExitStatus::Usage, message);
    if !is_valid_name(&args.name) {
        return Err(usage(format!(
            "`{}` is not a module name: use 1 to {MAX_NAME_BYTES} lowercase letters, digits and `-`, starting with a letter",
            args.name
        )));
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let not_empty = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if not_empty {
        return Err(usage(format!(
            "{} already exists and is not empty; choose another name or --dir",
            dir.display()
        )));
    }
    let files = match args.lang {
        Language::Rust => {
            let sdk = match &args.sdk_path {
                Some(path) => sdk_path_dependency(path).map_err(usage)?,
                None => format!("\"{SDK_VERSION}\""),
            };
            project_files(&args.name, args.template, &sdk, args.sdk_path.is_some())
        }
        Language::Python => python_files(&args.name, args.template),
        Language::Js => js_files(&args.name, args.template),
    };
    let environment = |err: std::io::Error| {
        (
            ExitStatus::Environment,
            format!("cannot write {}: {err}", dir.display()),
        )
    };
    for (relative, content) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(environment)?;
        }
        std::fs::write(&path, content).map_err(environment)?;
    }
    Ok(dir)
}

/// The same rule the server applies to module names.
fn is_valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_BYTES
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `{ path = "/abs/sdk" }` for an SDK directory, which must hold the `runcell-sdk` crate.
/// Absolute, so the project may move without breaking.
fn sdk_path_dependency(path: &Path) -> Result<String, String> {
    let manifest = std::fs::read_to_string(path.join("Cargo.toml")).map_err(|err| {
        format!(
            "--sdk-path {}: cannot read its Cargo.toml: {err}",
            path.display()
        )
    })?;
    if !manifest.contains("name = \"runcell-sdk\"") {
        return Err(format!(
            "--sdk-path {}: not the runcell-sdk crate",
            path.display()
        ));
    }
    let absolute = std::fs::canonicalize(path)
        .map_err(|err| format!("--sdk-path {}: {err}", path.display()))?;
    // TOML basic strings take the same escapes as JSON for a path's characters.
    let quoted = serde_json::to_string(&absolute.to_string_lossy()).expect("a string serializes");
    Ok(format!("{{ path = {quoted} }}"))
}

/// Every file of a new project, by path relative to its directory.
fn project_files(
    name: &str,
    template: Template,
    sdk: &str,
    from_checkout: bool,
) -> Vec<(&'static str, String)> {
    let routes = template == Template::Routes;
    let sdk_note = if from_checkout {
        "\nThe SDK is a path dependency on a Runcell checkout (`runcell new --sdk-path`); \
         replace it with `runcell-sdk = \"VERSION\"` to use the published crate.\n"
    } else {
        "\nTo work against a Runcell checkout instead of the published SDK, make it a path \
         dependency: `runcell-sdk = { path = \"../runcell/sdk\" }` (or create the project \
         with `runcell new --sdk-path`).\n"
    };
    let description = if routes {
        "Greets people, as a job and over HTTP."
    } else {
        "Greets people."
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{file}}", &name.replace('-', "_"))
            .replace("{{sdk}}", sdk)
            .replace("{{sdk_note}}", sdk_note)
            .replace("{{description}}", description)
            .replace(
                "{{routes_use}}",
                if routes { "\npub mod routes;\n\n" } else { "\n" },
            )
            .replace(
                "{{routes_entry}}",
                if routes {
                    "    routes: {\n        handler: routes::serve,\n        access: authenticated,\n    },\n"
                } else {
                    ""
                },
            )
    };
    let mut files = vec![
        ("Cargo.toml", fill(include_str!("templates/Cargo.toml.txt"))),
        ("src/lib.rs", fill(include_str!("templates/job.rs.txt"))),
        ("README.md", fill(include_str!("templates/README.md.txt"))),
        (
            ".gitignore",
            include_str!("templates/gitignore.txt").to_owned(),
        ),
    ];
    if routes {
        files.push((
            "src/routes.rs",
            fill(include_str!("templates/routes.rs.txt")),
        ));
    }
    files
}

/// A Python project: componentize-py builds `src/app.py` against `wit/`; with routes,
/// `src/app.py` also defines the `IncomingHandler` that serves them.
fn python_files(name: &str, template: Template) -> Vec<(&'static str, String)> {
    let fill = |text: &str| fill_package(text, name, PYTHON_TEMPLATE_PARTS, template);
    let mut files = vec![
        (
            "pyproject.toml",
            fill(include_str!("templates/pyproject.toml.txt")),
        ),
        ("src/app.py", fill(include_str!("templates/app.py.txt"))),
        (
            "README.md",
            fill(include_str!("templates/README-python.md.txt")),
        ),
        (
            ".gitignore",
            include_str!("templates/gitignore-python.txt").to_owned(),
        ),
    ];
    files.extend(wit_files());
    files
}

/// What differs between Python's job and routes templates: each placeholder, its text
/// in the job template, its text in the routes template.
const PYTHON_TEMPLATE_PARTS: &[(&str, &str, &str)] = &[
    (
        "{{world}}",
        "job-module-with-settings",
        "job-module-with-routes-and-settings",
    ),
    ("{{route_access}}", "NONE", "AUTHENTICATED"),
    (
        "{{routes_stdlib}}",
        "",
        "\nfrom urllib.parse import parse_qs, urlsplit",
    ),
    ("{{routes_ok}}", "", ", Ok"),
    ("{{routes_exports}}", "", "\nfrom wit_world import exports"),
    ("{{routes_imports}}", "", PYTHON_ROUTES_IMPORTS),
    ("{{routes_handler}}", "", PYTHON_ROUTES_HANDLER),
    ("{{routes_readme}}", "", PYTHON_ROUTES_README),
];

/// What `src/app.py` of the routes template imports besides the job's imports.
const PYTHON_ROUTES_IMPORTS: &str = "
from wit_world.imports.wasi_http_types import (
    Fields,
    IncomingRequest,
    Method_Get,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)";

/// The routes template's handler, at the end of `src/app.py`.
const PYTHON_ROUTES_HANDLER: &str = concat!("\n\n", include_str!("templates/routes.py.txt"));

/// The routes template's README section on the route.
const PYTHON_ROUTES_README: &str = include_str!("templates/README-python-routes.md.txt");

/// A JavaScript project: componentize-js builds `src/app.js` against `wit/`; with routes,
/// `src/app.js` also exports the `incomingHandler` that serves them.
fn js_files(name: &str, template: Template) -> Vec<(&'static str, String)> {
    let fill = |text: &str| fill_package(text, name, JS_TEMPLATE_PARTS, template);
    let mut files = vec![
        (
            "package.json",
            fill(include_str!("templates/package.json.txt")),
        ),
        ("src/app.js", fill(include_str!("templates/app.js.txt"))),
        (
            "README.md",
            fill(include_str!("templates/README-js.md.txt")),
        ),
        (
            ".gitignore",
            include_str!("templates/gitignore-js.txt").to_owned(),
        ),
    ];
    files.extend(wit_files());
    files
}

/// What differs between JavaScript's job and routes templates, as for Python.
const JS_TEMPLATE_PARTS: &[(&str, &str, &str)] = &[
    (
        "{{world}}",
        "job-module-with-settings",
        "job-module-with-routes-and-settings",
    ),
    ("{{route_access}}", "none", "authenticated"),
    ("{{routes_imports}}", "", JS_ROUTES_IMPORTS),
    ("{{routes_handler}}", "", JS_ROUTES_HANDLER),
    ("{{routes_readme}}", "", JS_ROUTES_README),
];

/// What `src/app.js` of the routes template imports besides the job's imports.
const JS_ROUTES_IMPORTS: &str = "
import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.12';";

/// The routes template's handler, at the end of `src/app.js`.
const JS_ROUTES_HANDLER: &str = concat!("\n", include_str!("templates/routes.js.txt"));

/// The routes template's README section on the route.
const JS_ROUTES_README: &str = include_str!("templates/README-js-routes.md.txt");

/// Fills a Python or JavaScript template: each of `parts` with its text for `template`
/// (the parts may hold the package's placeholders), then the package's placeholders.
fn fill_package(
    text: &str,
    name: &str,
    parts: &[(&str, &str, &str)],
    template: Template,
) -> String {
    let routes = template == Template::Routes;
    parts
        .iter()
        .fold(
            text.to_owned(),
            |filled, (placeholder, job, with_routes)| {
                filled.replace(placeholder, if routes { with_routes } else { job })
            },
        )
        .replace("{{name}}", name)
        .replace("{{description}}", "Greets people and counts the greetings.")
        .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION)
        .replace("{{componentize_js}}", COMPONENTIZE_JS_VERSION)
}

fn wit_files() -> impl Iterator<Item = (&'static str, String)> {
    WIT_FILES
        .iter()
        .map(|(path, text)| (*path, (*text).to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_servers_rule() {
        for good in ["demo", "data-sync", "a1", &"a".repeat(64)] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in [
            "",
            "Demo",
            "1demo",
            "-demo",
            "de_mo",
            "de mo",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for template in [Template::Job, Template::Routes] {
            for (path, content) in project_files("my-mod", template, "\"0.1.0\"", false) {
                assert!(!content.contains("{{"), "{path} of {template:?}");
            }
        }
    }

    #[test]
    fn every_placeholder_of_the_python_and_js_templates_is_filled() {
        let python = [Template::Job, Template::Routes].map(|t| python_files("my-mod", t));
        let js = [Template::Job, Template::Routes].map(|t| js_files("my-mod", t));
        for files in python.into_iter().chain(js) {
            for (path, content) in files {
                assert!(!content.contains("{{"), "{path}");
            }
        }
    }

    /// Every file of the repository's `wit/` is embedded, and nothing else.
    #[test]
    fn the_embedded_wit_is_the_whole_wit_directory() {
        fn walk(dir: &Path, root: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, found);
                } else {
                    let relative = path.strip_prefix(root).unwrap();
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut found = Vec::new();
        walk(&root.join("wit"), root, &mut found);
        found.sort();
        let mut embedded: Vec<String> = WIT_FILES
            .iter()
            .map(|(path, _)| (*path).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(embedded, found);
        for (path, text) in WIT_FILES {
            assert_eq!(
                std::fs::read_to_string(root.join(path)).unwrap(),
                *text,
                "{path}"
            );
        }
    }

    #[test]
    fn the_routes_template_declares_its_handler() {
        let files = project_files("demo", Template::Routes, "\"0.1.0\"", false);
        let lib = &files
            .iter()
            .find(|(path, _)| *path == "src/lib.rs")
            .unwrap()
            .1;
        assert!(lib.contains("pub mod routes;"));
        assert!(lib.contains("handler: routes::serve"));
        assert!(files.iter().any(|(path, _)| *path == "src/routes.rs"));
        let job_only = project_files("demo", Template::Job, "\"0.1.0\"", false);
        assert!(!job_only.iter().any(|(path, _)| *path == "src/routes.rs"));
    }

    #[test]
    fn the_python_routes_template_exports_the_handler_and_asks_for_routes() {
        let file = |template, path| {
            python_files("demo", template)
                .into_iter()
                .find(|(found, _)| *found == path)
                .unwrap()
                .1
        };
        let app = file(Template::Routes, "src/app.py");
        assert!(app.contains("class IncomingHandler(exports.IncomingHandler):"));
        assert!(app.contains("routes=RouteAccess.AUTHENTICATED"));
        assert!(
            file(Template::Routes, "pyproject.toml")
                .contains("world = \"job-module-with-routes-and-settings\"")
        );
        let job_only = file(Template::Job, "src/app.py");
        assert!(!job_only.contains("IncomingHandler"));
        assert!(job_only.contains("routes=RouteAccess.NONE"));
        assert!(
            file(Template::Job, "pyproject.toml").contains("world = \"job-module-with-settings\"")
        );
    }

    #[test]
    fn the_js_routes_template_exports_the_handler_and_asks_for_routes() {
        let file = |template, path| {
            js_files("demo", template)
                .into_iter()
                .find(|(found, _)| *found == path)
                .unwrap()
                .1
        };
        let app = file(Template::Routes, "src/app.js");
        assert!(app.contains("export const incomingHandler = {"));
        assert!(app.contains("from 'wasi:http/types@0.2.12';"));
        assert!(app.contains("routes: 'authenticated'"));
        let package: serde_json::Value =
            serde_json::from_str(&file(Template::Routes, "package.json")).unwrap();
        assert_eq!(
            package["runcell"]["world"],
            "job-module-with-routes-and-settings"
        );
        assert!(
            package["scripts"]["build"]
                .as_str()
                .unwrap()
                .contains("-n job-module-with-routes-and-settings ")
        );
        let job_only = file(Template::Job, "src/app.js");
        assert!(!job_only.contains("incomingHandler"));
        assert!(!job_only.contains("wasi:http"));
        assert!(job_only.contains("routes: 'none'"));
        let package: serde_json::Value =
            serde_json::from_str(&file(Template::Job, "package.json")).unwrap();
        assert_eq!(package["runcell"]["world"], "job-module-with-settings");
    }
}
