//! Uploads followed from arrival to outcome: a large component compiles for seconds, so
//! the API may answer before it is installed; the record lets any node say how it went.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ServiceError, Services};
use crate::domain::upload::{UploadOutcome, UploadRecord};
use crate::domain::{Millis, new_id, now_millis};
use crate::runtime::content_hash;

/// Uploads a node installs at once, compiling or waiting for their turn to: each holds its
/// file (up to the size limit) in memory until it is installed, so a burst past this is
/// told to retry rather than piling files up.
pub(crate) const UPLOADS_IN_FLIGHT: usize = 8;

/// How long a client told to retry an upload should wait.
const RETRY_UPLOAD_AFTER_SECS: i64 = 5;

/// The uploads a node is installing; see [`UPLOADS_IN_FLIGHT`].
pub(crate) fn upload_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(UPLOADS_IN_FLIGHT))
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum UploadState {
    Compiling,
    Finished(UploadOutcome),
    /// The node compiling it stopped (or restarted) before it finished: it never will.
    Abandoned {
        node_id: String,
    },
}

impl Services {
    /// Records the arrival of `wasm`, uploaded by `actor`, to be compiled on this node; the
    /// slot it holds until it is installed or refused. Refused when the node is installing
    /// as many uploads as it may.
    pub(crate) async fn begin_upload(
        &self,
        wasm: &[u8],
        actor: &str,
    ) -> Result<(UploadRecord, OwnedSemaphorePermit), ServiceError> {
        let slot = self.upload_slots.clone().try_acquire_owned().map_err(|_| {
            ServiceError::Throttled {
                message: format!(
                    "this node is installing {UPLOADS_IN_FLIGHT} uploads already; retry in a few seconds"
                ),
                retry_after_secs: RETRY_UPLOAD_AFTER_SECS,
            }
        })?;
        let upload = UploadRecord {
            id: new_id(),
            content_hash: content_hash(wasm),
            size_bytes: wasm.len() as u64,
            uploaded_by: actor.to_owned(),
            node_id: self.settings.node_id.clone(),
            created_at: now_millis(),
            finished: None,
        };
        self.store.create_upload(&upload).await?;
        Ok((upload, slot))
    }

    /// Records how upload `id` ended. A failure to record is logged, not returned: the
    /// module is installed (or refused) either way, and whoever follows the upload learns
    /// that its node stopped answering for it once the record stays unfinished.
    pub(crate) async fn finish_upload(&self, id: &str, http_status: u16, body: serde_json::Value) {
        let outcome = UploadOutcome {
            at: now_millis(),
            http_status,
            body,
        };
        if let Err(err) = self.store.finish_upload(id, &outcome).await {
            tracing::warn!(upload = %id, error = %err, "could not record how an upload ended");
        }
    }

    /// Upload `id` and where it stands.
    pub(crate) async fn upload(
        &self,
        id: &str,
    ) -> Result<(UploadRecord, UploadState), ServiceError> {
        let upload = self
            .store
            .get_upload(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                what: "upload",
                id: id.to_owned(),
            })?;
        let state = match &upload.finished {
            Some(outcome) => UploadState::Finished(outcome.clone()),
            None if self.compiles_still(&upload).await? => UploadState::Compiling,
            None => UploadState::Abandoned {
                node_id: upload.node_id.clone(),
            },
        };
        Ok((upload, state))
    }

    /// Whether the node compiling `upload` is the process that took it and still alive.
    async fn compiles_still(&self, upload: &UploadRecord) -> Result<bool, ServiceError> {
        if upload.node_id == self.settings.node_id {
            return Ok(upload.created_at >= self.started_at);
        }
        let now: Millis = now_millis();
        let nodes = self.store.list_nodes().await?;
        Ok(nodes.iter().any(|node| {
            node.node_id == upload.node_id
                && node.started_at <= upload.created_at
                && node.is_alive(now)
        }))
    }
}
