//! Compiled components on disk, keyed by the component's content hash and the engine's
//! compatibility hash, so a component is compiled once per engine configuration and every
//! later load is a map of the artifact, not a compilation.
//!
//! Only this module turns bytes into code without compiling them; it reads artifacts it
//! wrote itself, under a directory the operator owns.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component came to be in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadSource {
    /// Compiled from the wasm bytes (first time for this hash and engine).
    Compiled,
    /// Mapped from a precompiled artifact.
    Cached,
}

#[derive(Debug)]
pub(crate) struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
    compilations: AtomicU64,
}

impl ArtifactCache {
    /// `dir` of `None` keeps nothing on disk: every load compiles.
    pub(crate) fn new(dir: Option<PathBuf>, engine_key: String) -> Self {
        Self {
            dir,
            engine_key,
            compilations: AtomicU64::new(0),
        }
    }

    /// Compilations this process performed; cached loads do not count.
    pub(crate) fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// Whether a compiled artifact of `content_hash` is on disk for this engine.
    pub(crate) fn has_artifact(&self, content_hash: &str) -> bool {
        self.artifact_path(content_hash)
            .is_some_and(|path| path.exists())
    }

    fn artifact_path(&self, content_hash: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|dir| dir.join(format!("{content_hash}-{}.cwasm", self.engine_key)))
    }

    /// Loads `wasm` (already known to be a component) as compiled code.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        wasm: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, LoadSource)> {
        let path = self.artifact_path(content_hash);
        if let Some(path) = path.as_deref().filter(|p| p.exists()) {
            match deserialize(engine, path) {
                Ok(component) => return Ok((component, LoadSource::Cached)),
                Err(err) => {
                    // An artifact from another wasmtime build or a damaged file: compile
                    // again and replace it.
                    tracing::warn!(path = %path.display(), error = %err, "discarding unusable compiled artifact");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        self.compilations.fetch_add(1, Ordering::Relaxed);
        let component = Component::new(engine, wasm)?;
        if let Some(path) = path
            && let Err(err) = store(&component, &path)
        {
            tracing::warn!(path = %path.display(), error = %err, "could not cache compiled artifact");
        }
        Ok((component, LoadSource::Compiled))
    }

    /// Loads `wasm` into each of `engines`, which share one configuration: compiled (or
    /// mapped from the cache) once, then mapped into the others without compiling again.
    pub(crate) fn load_into_each(
        &self,
        engines: &[Engine],
        wasm: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Vec<Component>, LoadSource)> {
        let compiled_before = self.compilations();
        let loaded = self.load_into_each_engine(engines, wasm, content_hash);
        // Also after a compilation that failed: it may have got far.
        if self.compilations() != compiled_before {
            release_compiler_memory();
        }
        loaded
    }

    fn load_into_each_engine(
        &self,
        engines: &[Engine],
        wasm: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Vec<Component>, LoadSource)> {
        let (first, rest) = engines
            .split_first()
            .ok_or_else(|| wasmtime::format_err!("a runtime has at least one engine"))?;
        let (component, source) = self.load(first, wasm, content_hash)?;
        let mut components = vec![component];
        let artifact = self
            .artifact_path(content_hash)
            .filter(|path| path.exists());
        let mut own_bytes: Option<Vec<u8>> = None;
        for engine in rest {
            let mapped = artifact
                .as_deref()
                .and_then(|path| deserialize(engine, path).ok());
            if let Some(copy) = mapped {
                components.push(copy);
                continue;
            }
            // No cache directory, or the artifact could not be written: copy the code
            // compiled a moment ago.
            let bytes = match &mut own_bytes {
                Some(bytes) => bytes,
                None => own_bytes.insert(components[0].serialize()?),
            };
            components.push(deserialize_own_bytes(engine, bytes)?);
        }
        Ok((components, source))
    }
}

/// Hands what the compiler freed back to the system. Cranelift allocates hundreds of MiB
/// for a large component on the compiling thread and the pool threads, and mimalloc keeps
/// freed pages in each thread's heap for reuse: without this, the process stays that
/// much larger for seconds to minutes after an upload.
fn release_compiler_memory() {
    #[expect(
        unsafe_code,
        reason = "`mi_collect` only walks the calling thread's own heap; it is safe to call \
                  at any time, and a no-op where mimalloc is not the allocator in use"
    )]
    fn collect() {
        // SAFETY: no arguments to uphold; see the reason above.
        unsafe { libmimalloc_sys::mi_collect(true) }
    }
    rayon_core::broadcast(|_| collect());
    collect();
}

fn store(component: &Component, path: &Path) -> wasmtime::Result<()> {
    let bytes = component.serialize()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written aside and renamed, so a reader never maps a half-written artifact.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[expect(
    unsafe_code,
    reason = "mapping precompiled code is inherently unchecked; the artifact was written by \
              `store` above into the operator's cache directory, and wasmtime still rejects \
              artifacts from an incompatible engine"
)]
fn deserialize(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: the file was produced by `Component::serialize` in `store`, renamed into
    // place atomically, and lives in a directory only the operator controls.
    unsafe { Component::deserialize_file(engine, path) }
}

#[expect(
    unsafe_code,
    reason = "the bytes are what `Component::serialize` produced in this process a moment \
              ago, for an engine of the same configuration"
)]
fn deserialize_own_bytes(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `bytes` come straight from `Component::serialize` in `load_into_each`; they
    // never left this process.
    unsafe { Component::deserialize(engine, bytes) }
}

/// Hex SHA-256 of a component's bytes: its identity everywhere in Runcell.
pub(crate) fn content_hash(wasm: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(wasm))
}
