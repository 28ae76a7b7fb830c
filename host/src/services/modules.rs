//! Module lifecycle: upload (validate, describe, store), approval of code and
//! capabilities, publisher keys, versions, enable/disable, delete; and the catalog
//! workers and module routes use to find a module's runnable code, which refuses code
//! nobody approved.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::budgets::ModuleBudgets;
use super::publishers::{Signature, parse_public_key};
use super::schedule::Schedule;
use super::{ServiceError, Services};
use crate::domain::{
    CodeApproval, Grants, ModuleRecord, ModuleStatus, ModuleVersion, PublisherKey, Role, Uploader,
    check_host_patterns, now_millis,
};
use crate::runtime::{LoadedModule, Runtime};
use crate::store::{Store, VersionUpload};

/// How long a worker trusts what it learnt about a module before asking the database
/// again. Local changes invalidate at once; this bounds what other nodes see.
const CATALOG_TTL: Duration = Duration::from_secs(1);

/// How often a node looks for enabled modules it has not loaded yet (installed through
/// another node, or before it started).
const PRELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why a module's job cannot run now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrunnable {
    #[error("module `{0}` does not exist (it was deleted)")]
    Missing(String),
    #[error("module `{0}` is disabled; enable it to run its jobs")]
    Disabled(String),
    #[error("module `{module}` could not be loaded: {reason}")]
    Broken { module: String, reason: String },
    #[error(
        "module `{module}` version {version} waits for an admin's approval ({}); an admin must approve it (POST /api/v1/modules/{module}/capabilities/approve) before it runs",
        missing.join(", ")
    )]
    Unapproved {
        module: String,
        version: String,
        /// Why, one item each: its code if nobody approved it, then each capability
        /// beyond the approval.
        missing: Vec<String>,
    },
    #[error("{0}")]
    Unavailable(String),
}

/// Who uploads a module, as the caller authenticated them.
#[derive(Debug, Clone)]
pub struct ModuleUpload {
    pub uploader: Uploader,
    /// How the audit trail names the uploader; recorded as the approver of the code
    /// when the uploader is an admin.
    pub actor: String,
    /// The signature the upload carried (`ed25519:<key id>:<base64>`), as sent.
    pub signature: Option<String>,
}

/// A module's current version, ready to run, and what its runs may use.
#[derive(Debug, Clone)]
pub struct Runnable {
    pub module: Arc<LoadedModule>,
    /// What an admin granted it (outbound hosts narrowed or extended, or as requested).
    pub grants: Arc<Grants>,
    /// Its consumption budgets; `None` when it has none.
    pub(crate) budgets: Option<Arc<ModuleBudgets>>,
}

/// What the catalog learnt about a module, and when.
type CatalogEntry = (Instant, Result<Runnable, Unrunnable>);

/// Modules by name, resolved to runnable code, cached briefly.
#[derive(Clone)]
pub struct ModuleCatalog {
    store: Arc<dyn Store>,
    runtime: Runtime,
    entries: Arc<Mutex<HashMap<String, CatalogEntry>>>,
}

impl std::fmt::Debug for ModuleCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCatalog").finish_non_exhaustive()
    }
}

impl ModuleCatalog {
    pub fn new(store: Arc<dyn Store>, runtime: Runtime) -> Self {
        Self {
            store,
            runtime,
            entries: Arc::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, CatalogEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn invalidate(&self, name: &str) {
        self.entries().remove(name);
    }

    /// The current, enabled version of module `name`, ready to run, with its grants.
    pub async fn resolve(&self, name: &str) -> Result<Runnable, Unrunnable> {
        if let Some((at, entry)) = self.entries().get(name)
            && at.elapsed() < CATALOG_TTL
        {
            return entry.clone();
        }
        let resolved = self.resolve_uncached(name).await;
        if !matches!(resolved, Err(Unrunnable::Unavailable(_))) {
            self.entries()
                .insert(name.to_owned(), (Instant::now(), resolved.clone()));
        }
        resolved
    }

    async fn resolve_uncached(&self, name: &str) -> Result<Runnable, Unrunnable> {
        let record = self
            .store
            .get_module(name)
            .await
            .map_err(|err| Unrunnable::Unavailable(err.to_string()))?
            .ok_or_else(|| Unrunnable::Missing(name.to_owned()))?;
        if record.status == ModuleStatus::Disabled {
            return Err(Unrunnable::Disabled(name.to_owned()));
        }
        // Code nobody approved never runs, whatever it asks for: it would get the jobs'
        // settings and secrets through `config`, and its results and logs are readable.
        let missing = record.awaiting_approval();
        if !missing.is_empty() {
            return Err(Unrunnable::Unapproved {
                module: name.to_owned(),
                version: record.current.version.clone(),
                missing,
            });
        }
        let grants = Arc::new(record.grants());
        let budgets = ModuleBudgets::of(name, &record.budgets);
        let hash = &record.current.content_hash;
        if let Some(module) = self.runtime.loaded_module(hash) {
            return Ok(Runnable {
                module,
                grants,
                budgets,
            });
        }
        let wasm = self
            .store
            .module_wasm(hash)
            .await
            .map_err(|err| Unrunnable::Unavailable(err.to_string()))?
            .ok_or_else(|| Unrunnable::Broken {
                module: name.to_owned(),
                reason: format!("its code ({hash}) is missing from the database"),
            })?;
        let module =
            self.runtime
                .load(Arc::from(wasm))
                .await
                .map_err(|err| Unrunnable::Broken {
                    module: name.to_owned(),
                    reason: err.to_string(),
                })?;
        Ok(Runnable {
            module,
            grants,
            budgets,
        })
    }
}

impl Services {
    /// Keeps the current version of every enabled module loaded on this node until
    /// `stop`, so that a module's first run here does not wait for its compilation:
    /// without it, a node compiles a module installed through another node only when a
    /// batch of its runs has already been claimed here, and holds them meanwhile.
    pub async fn keep_modules_loaded(&self, mut stop: watch::Receiver<bool>) {
        let mut unloadable = HashSet::new();
        loop {
            if let Err(err) = self.load_enabled_modules(&mut unloadable).await {
                tracing::debug!(error = %err, "cannot list modules to preload; retrying");
            }
            tokio::select! {
                () = tokio::time::sleep(PRELOAD_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Loads the enabled modules whose current version this node has not loaded, except
    /// those in `unloadable`, to which it adds the versions that fail to load: a load
    /// that failed once fails again, and a compilation every pass would waste a core.
    /// Returns how many it loaded.
    pub async fn load_enabled_modules(
        &self,
        unloadable: &mut HashSet<String>,
    ) -> Result<usize, ServiceError> {
        let mut loaded = 0;
        for record in self.store.list_modules().await? {
            let hash = &record.current.content_hash;
            if record.status != ModuleStatus::Enabled
                || unloadable.contains(hash)
                || self.runtime.loaded_module(hash).is_some()
            {
                continue;
            }
            match self.modules.resolve(&record.name).await {
                Ok(_) => loaded += 1,
                Err(Unrunnable::Broken { reason, .. }) => {
                    tracing::warn!(module = %record.name, %hash, %reason, "module cannot be loaded on this node");
                    unloadable.insert(hash.clone());
                }
                // Not approved, changed or deleted meanwhile, or the database is away:
                // the next pass sees.
                Err(_) => {}
            }
        }
        Ok(loaded)
    }

    /// Installs a module file uploaded by the deployment itself (`--examples`, or a
    /// program embedding Runcell), which vouches for its code as an admin's upload does;
    /// what it asks for still needs [`Services::approve_module_capabilities`].
    pub async fn upload_module(&self, wasm: Vec<u8>) -> Result<ModuleRecord, ServiceError> {
        self.upload_module_as(
            wasm,
            ModuleUpload {
                uploader: Uploader {
                    username: "system".to_owned(),
                    role: Role::Admin,
                    token: None,
                },
                actor: "system".to_owned(),
                signature: None,
            },
        )
        .await
    }

    /// Refuses at once what cannot be a module, before anything compiles: a file over the
    /// size limit, or one that is not a component at all.
    pub(crate) fn check_module_file(&self, wasm: &[u8]) -> Result<(), ServiceError> {
        if wasm.len() > self.settings.max_module_bytes {
            return Err(ServiceError::unprocessable(
                "module",
                format!(
                    "the file is {} bytes, above the limit of {} bytes",
                    wasm.len(),
                    self.settings.max_module_bytes
                ),
            ));
        }
        crate::runtime::check_header(wasm)
            .map_err(|err| ServiceError::InvalidModule(crate::runtime::LoadError::Invalid(err)))
    }

    /// Validates and installs a module file; a new version of an existing module becomes
    /// its current version, the old ones stay listed. Its code is approved at once when
    /// the uploader is an admin, when the bytes were approved before, or when the upload
    /// carries a valid signature by a key pinned to the module; otherwise it waits for an
    /// admin. A signature naming a pinned key that does not verify refuses the upload; one
    /// naming a key not pinned counts for nothing (the version says so while it waits).
    pub async fn upload_module_as(
        &self,
        wasm: Vec<u8>,
        upload: ModuleUpload,
    ) -> Result<ModuleRecord, ServiceError> {
        self.check_module_file(&wasm)?;
        let signature = upload
            .signature
            .as_deref()
            .map(Signature::parse)
            .transpose()
            .map_err(|err| ServiceError::bad("signature", err.to_string()))?;
        let bytes: Arc<[u8]> = Arc::from(wasm);
        let module = self.runtime.load(bytes.clone()).await?;
        for job in &module.manifest.jobs {
            if let Some(schedule) = &job.default_schedule {
                Schedule::parse(schedule).map_err(|reason| {
                    ServiceError::InvalidModule(crate::runtime::LoadError::Manifest(
                        crate::domain::ManifestError::Invalid {
                            field: format!("jobs[{}].defaultSchedule", job.name),
                            reason,
                        },
                    ))
                })?;
            }
        }
        let now = now_millis();
        let name = &module.manifest.name;
        let mut approval = None;
        if let Some(signature) = &signature {
            let keys = self.store.publisher_keys(name).await?;
            if let Some(key) = keys.iter().find(|key| key.id == signature.key_id) {
                if !signature.verifies(key, &module.hash) {
                    return Err(ServiceError::unprocessable(
                        "signature",
                        format!(
                            "the signature is not valid for this file under key `{}` pinned to module `{name}`: sign the exact bytes you upload (`runcell sign --key <file> module.wasm`)",
                            key.id
                        ),
                    ));
                }
                approval = Some(CodeApproval {
                    by: format!("publisher key `{}`", key.id),
                    at: now,
                    key: Some(key.id.clone()),
                });
            }
        }
        if upload.uploader.role == Role::Admin {
            // An admin may approve: uploading the code is vouching for it. Capabilities
            // beyond the approved set still wait for an explicit approval.
            approval = Some(CodeApproval {
                by: upload.actor.clone(),
                at: now,
                key: None,
            });
        }
        let version_upload = VersionUpload {
            uploaded_by: Some(upload.uploader),
            signed_by: signature.map(|s| s.key_id),
            approval,
        };
        let record = self
            .store
            .install_module_version(&module.manifest, &module.hash, &bytes, &version_upload, now)
            .await?;
        self.modules.invalidate(&record.name);
        self.follow_default_schedules(&record).await?;
        tracing::info!(
            module = %record.name,
            version = %record.current.version,
            hash = %record.current.content_hash,
            approved = record.current.approval.is_some(),
            "module installed"
        );
        Ok(record)
    }

    /// Approves, on the deployment's own behalf, what the module's current version asks
    /// for and its code (see [`Services::approve_module`]).
    pub async fn approve_module_capabilities(
        &self,
        name: &str,
    ) -> Result<ModuleRecord, ServiceError> {
        self.approve_module(name, None, None, "system").await
    }

    /// Approves the module's current version: its code and what it asks for. Its jobs
    /// run from now on, and so do those of later versions whose code is approved (an
    /// admin's upload, a pinned key's signature) and that ask for nothing the admin has
    /// not decided on. With `content_hash`, approves only if that is still the current
    /// version, so an admin never approves code other than what they looked at.
    ///
    /// `outbound_hosts` is what it may reach from now on, if the admin says so: fewer
    /// hosts than it asks for, or others. Without it, see
    /// [`ModuleRecord::grant_on_approval`].
    pub async fn approve_module(
        &self,
        name: &str,
        content_hash: Option<&str>,
        outbound_hosts: Option<Vec<String>>,
        approver: &str,
    ) -> Result<ModuleRecord, ServiceError> {
        let outbound_hosts = outbound_hosts
            .map(|hosts| {
                check_host_patterns(&hosts)
                    .map(|()| hosts.iter().map(|h| h.trim().to_owned()).collect())
                    .map_err(|reason| ServiceError::unprocessable("outboundHosts", reason))
            })
            .transpose()?;
        let record = self.get_module(name).await?;
        let current = &record.current.content_hash;
        if let Some(expected) = content_hash
            && expected != current
        {
            return Err(ServiceError::Conflict(format!(
                "module `{name}`'s current version is {current}, not {expected}: look at it again and approve what you see"
            )));
        }
        let requested = record.current.manifest.capabilities.clone();
        let grant = record.grant_on_approval(outbound_hosts);
        let approved = self
            .store
            .approve_module_version(
                name,
                current,
                &requested,
                grant.as_deref(),
                approver,
                now_millis(),
            )
            .await?
            .ok_or_else(|| ServiceError::not_found("module", name))?;
        self.modules.invalidate(name);
        Ok(approved)
    }

    /// The publisher keys pinned to module `name`.
    pub async fn publisher_keys(&self, name: &str) -> Result<Vec<PublisherKey>, ServiceError> {
        self.get_module(name).await?;
        Ok(self.store.publisher_keys(name).await?)
    }

    /// Pins the Ed25519 public key `public_key` (PEM or base64) to module `name`:
    /// uploads signed by it keep the approval as long as they ask for no more.
    pub async fn pin_publisher_key(
        &self,
        name: &str,
        public_key: &str,
        comment: &str,
        actor: &str,
    ) -> Result<PublisherKey, ServiceError> {
        let public_key = parse_public_key(public_key)
            .map_err(|err| ServiceError::bad("publicKey", err.to_string()))?;
        let key = PublisherKey {
            id: PublisherKey::id_of(&public_key),
            public_key,
            comment: comment.to_owned(),
            pinned_by: actor.to_owned(),
            pinned_at: now_millis(),
        };
        self.store
            .pin_publisher_key(name, &key)
            .await?
            .ok_or_else(|| ServiceError::not_found("module", name))
    }

    /// Unpins key `key_id` from module `name`. The versions its signatures approved wait
    /// for an admin again: a key removed because it leaked must not leave what it signed
    /// running.
    pub async fn unpin_publisher_key(&self, name: &str, key_id: &str) -> Result<(), ServiceError> {
        self.get_module(name).await?;
        if !self.store.unpin_publisher_key(name, key_id).await? {
            return Err(ServiceError::not_found("publisher key", key_id));
        }
        self.modules.invalidate(name);
        Ok(())
    }

    pub async fn list_modules(&self) -> Result<Vec<ModuleRecord>, ServiceError> {
        Ok(self.store.list_modules().await?)
    }

    pub async fn get_module(&self, name: &str) -> Result<ModuleRecord, ServiceError> {
        self.store
            .get_module(name)
            .await?
            .ok_or_else(|| ServiceError::not_found("module", name))
    }

    pub async fn module_versions(&self, name: &str) -> Result<Vec<ModuleVersion>, ServiceError> {
        self.get_module(name).await?;
        Ok(self.store.list_module_versions(name).await?)
    }

    pub async fn set_module_status(
        &self,
        name: &str,
        status: ModuleStatus,
    ) -> Result<ModuleRecord, ServiceError> {
        let record = self
            .store
            .set_module_status(name, status, now_millis())
            .await?
            .ok_or_else(|| ServiceError::not_found("module", name))?;
        self.modules.invalidate(name);
        tracing::info!(module = %name, status = status.as_str(), "module status changed");
        Ok(record)
    }

    /// Deletes a module. Refused while jobs use it, unless `force`, which deletes them too.
    pub async fn delete_module(&self, name: &str, force: bool) -> Result<(), ServiceError> {
        let record = self.get_module(name).await?;
        let users: Vec<String> = (self.store.jobs_using_module(name).await?)
            .into_iter()
            .map(|job| job.name)
            .collect();
        if !users.is_empty() && !force {
            return Err(ServiceError::Conflict(format!(
                "module `{name}` is used by {} job(s): {}; delete them first or pass ?force=true to delete them with it",
                users.len(),
                users.join(", ")
            )));
        }
        self.store.delete_module(name, force).await?;
        self.modules.invalidate(name);
        self.runtime.unload(&record.current.content_hash);
        // Its budgets went with it; so do the rules that watched them.
        self.keep_budget_rules(name, &[]).await?;
        tracing::info!(module = %name, jobs_deleted = users.len(), "module deleted");
        Ok(())
    }
}
