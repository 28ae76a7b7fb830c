//! An upload of a module file, followed from its arrival until it is installed or refused:
//! compiling a large component takes seconds, so the upload can be answered before it is
//! done and the client asks again.

use super::Millis;

/// How long an upload is remembered after it was made.
pub(crate) const UPLOAD_KEPT_FOR_MS: Millis = 24 * 60 * 60 * 1000;

/// One upload, as every node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadRecord {
    pub id: String,
    /// SHA-256 of the uploaded bytes, hex.
    pub content_hash: String,
    pub size_bytes: u64,
    /// How the audit trail names the uploader.
    pub uploaded_by: String,
    /// The node compiling it: the upload is abandoned if that node stops.
    pub node_id: String,
    pub created_at: Millis,
    /// `None` while it compiles.
    pub finished: Option<UploadOutcome>,
}

/// The answer an upload would have given at once, kept for whoever asks.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadOutcome {
    pub at: Millis,
    /// `201` when installed, the error's status otherwise.
    pub http_status: u16,
    /// The installed module or the error body, as the upload answers them.
    pub body: serde_json::Value,
}

impl UploadOutcome {
    pub fn installed(&self) -> bool {
        (200..300).contains(&self.http_status)
    }
}
