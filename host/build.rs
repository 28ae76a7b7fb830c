//! Rebuild when a migration is added: `sqlx::migrate!` embeds the folder at compile time.
//!
//! And write down the guest modules, which are the packages under `example-modules/` and
//! `tests/fixtures/` (the workspace takes every one of them as a member): the code and
//! its tests read the list from here, `./dev` finds the same directories, so the list
//! exists once. `OUT_DIR/guests.rs` is the package names, `OUT_DIR/foreach_guest.rs` a
//! macro that names each guest's test, `guest_<name>`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where guests live, relative to the workspace root.
const GUEST_DIRS: &[&str] = &["example-modules", "tests/fixtures"];

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate sits in the workspace");
    // A guest added, removed or renamed changes the workspace's members, hence the lock
    // file. Watching the guest directories instead would rebuild the host at every edit
    // of a guest's source.
    println!("cargo:rerun-if-changed=../Cargo.toml");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let guests = guests(root);

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut names = String::from("&[\n");
    let mut tests = String::from(
        "/// Calls `$mac!(guest_<name>)` for every guest module, its package name's `-` as `_`.\n\
         macro_rules! foreach_guest {\n    ($mac:ident) => {\n",
    );
    for guest in &guests {
        writeln!(names, "    {guest:?},").expect("writing to a string");
        writeln!(tests, "        $mac!(guest_{});", guest.replace('-', "_"))
            .expect("writing to a string");
    }
    names.push(']');
    tests.push_str("    };\n}\n");
    write(&out.join("guests.rs"), &names);
    write(&out.join("foreach_guest.rs"), &tests);
}

/// The package names of the guests, sorted. Each directory is named after its package,
/// so that `./dev`, which reads only directory names, builds the same packages.
fn guests(root: &Path) -> Vec<String> {
    let mut guests = Vec::new();
    for dir in GUEST_DIRS {
        let entries = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|err| panic!("cannot list {dir}: {err}"));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let manifest = path.join("Cargo.toml");
            if !manifest.exists() {
                continue;
            }
            let dir_name = path
                .file_name()
                .and_then(|name| name.to_str())
                .expect("a guest directory's name is UTF-8")
                .to_owned();
            let text = std::fs::read_to_string(&manifest)
                .unwrap_or_else(|err| panic!("cannot read {}: {err}", manifest.display()));
            let package = package_name(&text)
                .unwrap_or_else(|| panic!("{} names no package", manifest.display()));
            assert_eq!(
                package,
                dir_name,
                "{}: a guest's directory is named after its package",
                manifest.display()
            );
            guests.push(dir_name);
        }
    }
    guests.sort();
    guests
}

/// `name` of the `[package]` table of a Cargo manifest.
fn package_name(manifest: &str) -> Option<&str> {
    let package = manifest.split("[package]").nth(1)?;
    let table = package.split("\n[").next()?;
    table.lines().find_map(|line| {
        let value = line
            .trim()
            .strip_prefix("name")?
            .trim_start()
            .strip_prefix('=')?;
        Some(value.trim().trim_matches('"'))
    })
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}
