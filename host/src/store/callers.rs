//! A store method nothing calls is code to maintain twice over (once per database, in
//! the shared layer and its tests) that serves nobody; it goes, or it gets a caller.

use std::path::{Path, PathBuf};

/// The methods `trait_name` declares in `source`, except those compiled only for tests.
fn declared_methods(source: &str, trait_name: &str) -> Vec<String> {
    let start = source
        .find(&format!(" trait {trait_name}:"))
        .unwrap_or_else(|| panic!("no trait {trait_name}"));
    let body = &source[start..];
    let end = body.find("\n}\n").expect("the trait ends");
    let mut methods = Vec::new();
    let mut test_only = false;
    for line in body[..end].lines() {
        let line = line.trim();
        if line == "#[cfg(test)]" {
            test_only = true;
        } else if let Some(rest) = line.strip_prefix("async fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !test_only {
                methods.push(name);
            }
            test_only = false;
        }
    }
    methods
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_store_method_is_called_outside_the_store() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let store_dir = crate_dir.join("src/store");
    let mut methods = declared_methods(
        &std::fs::read_to_string(store_dir.join("mod.rs")).unwrap(),
        "Store",
    );
    methods.extend(declared_methods(
        &std::fs::read_to_string(store_dir.join("auth.rs")).unwrap(),
        "AuthStore",
    ));
    assert!(
        methods.len() > 50,
        "the parser lost the traits: {methods:?}"
    );
    // Callers are the rest of the crate; the store's own code and tests do not count.
    let mut files = Vec::new();
    rust_files(&crate_dir.join("src"), &mut files);
    let callers: String = files
        .iter()
        .filter(|path| !path.starts_with(&store_dir))
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    let uncalled: Vec<&String> = methods
        .iter()
        .filter(|method| !callers.contains(&format!(".{method}(")))
        .collect();
    assert!(
        uncalled.is_empty(),
        "store methods nothing outside the store calls: {uncalled:?}"
    );
}
