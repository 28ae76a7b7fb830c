//! Deciding whether a file is something Runcell can run, before anything of it runs.
//! Each way a file can be wrong has its own error, worded for the module's author.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("not a WebAssembly file: it does not start with the `\\0asm` magic bytes")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build it with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("not a valid component: {0}")]
    Malformed(String),
    #[error(
        "the component does not export `{0}`, which the `runcell:module/job-module` world \
         requires; build it against the runcell:module WIT (runcell-sdk does this)"
    )]
    MissingExport(&'static str),
    #[error(
        "the component imports `{0}`, which Runcell does not offer; modules may import \
         runcell:module/{{log,kv,events,config,metrics}}, wasi:http/outgoing-handler and \
         the WASI 0.2 interfaces of their toolchain"
    )]
    UnknownImport(String),
    #[error("the component does not fit the runcell:module contract: {0}")]
    ContractMismatch(String),
}

/// The byte-level check: is this wasm at all, and a component rather than a core module?
pub(crate) fn check_header(bytes: &[u8]) -> Result<(), ValidationError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(ValidationError::NotWasm);
    }
    // Version 1 is a core module; components use version 0x0d with layer 1.
    match &bytes[4..8] {
        [1, 0, 0, 0] => Err(ValidationError::CoreModule),
        [_, _, 1, 0] => Ok(()),
        other => Err(ValidationError::Malformed(format!(
            "unknown binary version {other:02x?}"
        ))),
    }
}

/// Interfaces a module may import, by `namespace:package/interface`, any 0.x version
/// the linker can satisfy.
fn is_offered_import(name: &str) -> bool {
    let unversioned = name.split('@').next().unwrap_or(name);
    let Some((package, interface)) = unversioned.split_once('/') else {
        return false;
    };
    match package {
        "runcell:module" => matches!(
            interface,
            "types" | "log" | "kv" | "events" | "config" | "metrics"
        ),
        "wasi:http" => matches!(interface, "types" | "outgoing-handler"),
        "wasi:io" | "wasi:clocks" | "wasi:random" | "wasi:cli" | "wasi:filesystem"
        | "wasi:sockets" => true,
        _ => false,
    }
}

/// The component-level check: exports and imports against the contract.
pub(crate) fn check_contract(
    engine: &Engine,
    component: &Component,
) -> Result<(), ValidationError> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine) {
        if !is_offered_import(name) {
            return Err(ValidationError::UnknownImport(name.to_owned()));
        }
    }
    for required in ["describe", "run"] {
        let exported = ty.exports(engine).any(|(name, item)| {
            name == required && matches!(item.ty, ComponentItem::ComponentFunc(_))
        });
        if !exported {
            return Err(ValidationError::MissingExport(required));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_not_wasm() {
        assert_eq!(check_header(b"hello world"), Err(ValidationError::NotWasm));
        assert_eq!(check_header(b""), Err(ValidationError::NotWasm));
    }

    #[test]
    fn a_core_module_is_told_apart_from_a_component() {
        assert_eq!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(ValidationError::CoreModule)
        );
        assert_eq!(check_header(b"\0asm\x0d\0\x01\0"), Ok(()));
    }

    #[test]
    fn offered_imports_are_recognised_across_patch_versions() {
        assert!(is_offered_import("runcell:module/kv@0.1.0"));
        assert!(is_offered_import("runcell:module/log@0.1.3"));
        assert!(is_offered_import("wasi:cli/stdout@0.2.6"));
        assert!(is_offered_import("wasi:http/outgoing-handler@0.2.12"));
        assert!(!is_offered_import("wasi:http/incoming-handler@0.2.12"));
        assert!(!is_offered_import("evil:thing/backdoor"));
        assert!(!is_offered_import("runcell:module/secrets@0.1.0"));
        assert!(!is_offered_import("bare-function"));
    }
}
