//! Module uploads being followed (`module_uploads`), for both databases: one row written
//! when an upload arrives, finished once with its outcome, read by any node.

use super::super::StoreError;
use super::super::convert::{corrupt, db, int};
use super::super::sql::{Bind, Columns, Run};
use super::{Backend, read, write};
use crate::domain::upload::{UPLOAD_KEPT_FOR_MS, UploadOutcome, UploadRecord};

/// Records `upload` and forgets uploads made longer ago than they are kept.
pub(super) async fn create<B: Backend>(
    backend: &B,
    upload: &UploadRecord,
) -> Result<(), StoreError> {
    let mut tx = backend.begin().await?;
    sqlx::query::<B::Db>("DELETE FROM module_uploads WHERE created_at < $1")
        .arg(upload.created_at - UPLOAD_KEPT_FOR_MS)
        .run(&mut tx)
        .await?;
    sqlx::query::<B::Db>(
        "INSERT INTO module_uploads (id, content_hash, size_bytes, uploaded_by, node_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .arg(upload.id.as_str())
    .arg(upload.content_hash.as_str())
    .arg(int(upload.size_bytes))
    .arg(upload.uploaded_by.as_str())
    .arg(upload.node_id.as_str())
    .arg(upload.created_at)
    .run(&mut tx)
    .await?;
    tx.commit().await.map_err(db)
}

/// Records how upload `id` ended; `false` if it is unknown or already finished.
pub(super) async fn finish<B: Backend>(
    backend: &B,
    id: &str,
    outcome: &UploadOutcome,
) -> Result<bool, StoreError> {
    let changed = sqlx::query::<B::Db>(
        "UPDATE module_uploads SET finished_at = $1, outcome_status = $2, outcome = $3 \
         WHERE id = $4 AND finished_at IS NULL",
    )
    .arg(outcome.at)
    .arg(i32::from(outcome.http_status))
    .arg(outcome.body.to_string())
    .arg(id)
    .run(&mut *write(backend).await?)
    .await?;
    Ok(changed > 0)
}

pub(super) async fn get<B: Backend>(
    backend: &B,
    id: &str,
) -> Result<Option<UploadRecord>, StoreError> {
    let row = sqlx::query::<B::Db>(
        "SELECT id, content_hash, size_bytes, uploaded_by, node_id, created_at, finished_at, \
         outcome_status, outcome FROM module_uploads WHERE id = $1",
    )
    .arg(id)
    .optional(&mut *read(backend).await?)
    .await?;
    row.as_ref().map(upload_from_row).transpose()
}

fn upload_from_row(row: &impl Columns) -> Result<UploadRecord, StoreError> {
    let finished_at: Option<i64> = row.col("finished_at")?;
    let finished = match finished_at {
        None => None,
        Some(at) => {
            let status = row.col_opt_u32("outcome_status")?.unwrap_or_default();
            Some(UploadOutcome {
                at,
                http_status: u16::try_from(status)
                    .map_err(|_| corrupt("outcome_status", format!("status {status}")))?,
                body: row.col_opt_json("outcome")?.unwrap_or_default(),
            })
        }
    };
    Ok(UploadRecord {
        id: row.col("id")?,
        content_hash: row.col("content_hash")?,
        size_bytes: row.col_opt_u64("size_bytes")?.unwrap_or_default(),
        uploaded_by: row.col("uploaded_by")?,
        node_id: row.col("node_id")?,
        created_at: row.col("created_at")?,
        finished,
    })
}
