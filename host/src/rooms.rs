//! The rooms of the crate and the one direction imports between them go, checked against
//! the sources. One crate gives the compiler no layers to enforce, so this test reads
//! every `crate::…` path (and every `super::…` that climbs to the crate root) and fails
//! on any that points at a room on the same floor or above. Comments count too: a doc
//! link upward is a dependency on the higher room's names.

use std::path::{Path, PathBuf};

/// Each room with its floor. A room may use the rooms on lower floors, never one on its
/// own floor or above (DESIGN.md, "Dependency direction inside `host`"): `domain` uses
/// nothing; `store`, `queue`, `runtime` and `telemetry` only `domain`; nothing but
/// `app` (the composition root) and `cli` (the binary's edge) starts `api`, `worker`,
/// `scheduler`, `monitor`, `alerter` or `reconciler`.
const FLOORS: &[(&str, u8)] = &[
    ("domain", 0),
    ("store", 1),
    ("queue", 1),
    ("runtime", 1),
    ("telemetry", 1),
    ("services", 2),
    ("api", 3),
    ("worker", 3),
    ("scheduler", 3),
    ("monitor", 3),
    ("alerter", 3),
    ("reconciler", 3),
    ("app", 4),
    ("cli", 5),
];

fn floor(room: &str) -> Option<u8> {
    FLOORS
        .iter()
        .find(|(name, _)| *name == room)
        .map(|&(_, floor)| floor)
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("the source directory is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_at(text: &str) -> &str {
    let end = text.find(|c| !is_ident_char(c)).unwrap_or(text.len());
    &text[..end]
}

/// The first name of each path in a `{…}` use group that starts `text`.
fn group_heads(text: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (at, c) in text.char_indices() {
        match c {
            '{' => {
                depth += 1;
                item_start = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            c if item_start && depth == 1 && is_ident_char(c) => {
                heads.push(ident_at(&text[at..]));
                item_start = false;
            }
            _ => {}
        }
    }
    heads
}

/// The rooms named after a path prefix that ends at `text`'s start: one name, or each
/// head of a use group.
fn heads(text: &str) -> Vec<&str> {
    let text = text.trim_start();
    if text.starts_with('{') {
        group_heads(text)
    } else {
        vec![ident_at(text)]
    }
}

/// Every top-level name the file's text reaches through the crate root, with its line:
/// `crate::name`, `crate::{a, b}`, and `super::…` chains as long as the file is deep
/// (`depth` modules below the root). A chain inside an inline module climbs less than
/// that; only the names of rooms count from it, so `use super::*` in a test module of a
/// top-level file is no reference.
fn references(text: &str, depth: usize) -> Vec<(usize, String)> {
    let line = |at: usize| text[..at].matches('\n').count() + 1;
    let starts_path =
        |at: usize| !text[..at].ends_with(is_ident_char) && !text[..at].ends_with("::");
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        if starts_path(at) {
            for head in heads(&text[at + "crate::".len()..]) {
                found.push((line(at), head.to_owned()));
            }
        }
    }
    for (at, _) in text.match_indices("super::") {
        if !starts_path(at) {
            continue;
        }
        let mut rest = &text[at..];
        let mut climbed = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            climbed += 1;
            rest = after;
        }
        if climbed == depth {
            for head in heads(rest) {
                if floor(head).is_some() {
                    found.push((line(at), head.to_owned()));
                }
            }
        }
    }
    found
}

/// How many modules below the crate root the file `relative` (to `src/`) is.
fn depth(relative: &Path) -> usize {
    let components = relative.components().count();
    if relative.file_name().is_some_and(|name| name == "mod.rs") {
        components - 1
    } else {
        components
    }
}

#[test]
fn every_module_of_the_crate_root_is_a_room_with_a_floor() {
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).expect("lib.rs is readable");
    let modules: Vec<&str> = lib
        .lines()
        .filter_map(|line| line.trim().strip_suffix(';'))
        .filter_map(|line| {
            line.strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
        })
        .filter(|module| *module != "rooms")
        .collect();
    assert!(modules.len() >= FLOORS.len(), "modules found: {modules:?}");
    for module in modules {
        assert!(
            floor(module).is_some(),
            "`{module}` has no floor: add it to FLOORS where DESIGN.md's direction puts it"
        );
    }
}

#[test]
fn no_room_imports_a_room_on_its_floor_or_above() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut seen = 0;
    for path in &files {
        let relative = path.strip_prefix(&src).expect("below src/");
        let Some(room) = relative
            .components()
            .next()
            .and_then(|first| first.as_os_str().to_str())
            .map(|first| first.trim_end_matches(".rs"))
        else {
            continue;
        };
        if matches!(room, "lib" | "main" | "rooms") {
            continue;
        }
        let own =
            floor(room).unwrap_or_else(|| panic!("{}: `{room}` is no room", relative.display()));
        let text = std::fs::read_to_string(path).expect("a source file is readable");
        for (line, target) in references(&text, depth(relative)) {
            seen += 1;
            match floor(&target) {
                Some(_) if target == room => {}
                Some(floor) if floor < own => {}
                Some(_) => upward.push(format!(
                    "{}:{line}: {room} uses {target}",
                    relative.display()
                )),
                None => upward.push(format!(
                    "{}:{line}: `crate::{target}` is no room",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        seen > 100,
        "only {seen} references found in {}",
        src.display()
    );
    assert!(
        upward.is_empty(),
        "imports against the direction of the rooms:\n{}",
        upward.join("\n")
    );
}

#[test]
fn references_are_found_in_paths_groups_and_climbs_to_the_root() {
    let text = "use crate::{\n    domain::Job,\n    services::{a, b},\n};\n\
                use super::super::api::State;\nlet x = crate::queue::Delivery;\n\
                use super::*;\n// see [`X`](crate::app::X)\n";
    let found: Vec<(usize, String)> = references(text, 2);
    let expected = [
        (1, "domain"),
        (1, "services"),
        (6, "queue"),
        (8, "app"),
        (5, "api"),
    ];
    assert_eq!(
        found,
        expected.map(|(line, room)| (line, room.to_owned())),
        "{text}"
    );
    assert!(references("use super::*;\nmod x { use super::super::helper; }", 1).is_empty());
}
