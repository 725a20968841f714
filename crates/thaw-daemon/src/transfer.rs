//! Snapshots as one file, through the API: `GET /v1/snapshots/{tag}/export` streams
//! the file `thaw export` writes, `POST /v1/snapshots/import` takes one as a streamed
//! body. So a remote client keeps a snapshot (a CI cache) on its side.
//!
//! The export is written into a private directory of `$THAW_HOME` first (the archive is
//! built by the store, which writes a file) and streamed from the open file, which is
//! unlinked before the first byte goes out: nothing stays behind, however the client
//! ends. The import is received into such a directory, bounded by
//! [`MAX_IMPORT_BYTES`] (its own limit, not the JSON bodies' 2 MiB), then imported as
//! `thaw import` does: every chunk checked before it enters the store, crafted or
//! oversized entries refused.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use thaw::store::StoreError;
use thaw::SnapshotTag;
use tokio::io::AsyncWriteExt;
use utoipa::ToSchema;

use crate::error::{one_line, ApiError};
use crate::extract::Named;
use crate::operations::Ctx;

/// The largest file `POST /v1/snapshots/import` takes.
pub const MAX_IMPORT_BYTES: u64 = 64 << 30;

/// `201`: the snapshot a file brought.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Imported {
    pub tag: SnapshotTag,
    /// The file's size.
    pub bytes: u64,
}

/// A private scratch directory in the daemon's home (same filesystem as the store).
fn scratch(c: &Ctx, what: &str) -> Result<tempfile::TempDir, ApiError> {
    tempfile::Builder::new()
        .prefix(&format!(".{what}-"))
        .tempdir_in(c.home.root())
        .map_err(|e| ApiError::internal(format!("could not make a scratch directory: {e}")))
}

fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Exists(_) => StatusCode::CONFLICT,
        StoreError::Check(thaw::snapshot::SnapshotCheckError::UnknownTag(_)) => {
            StatusCode::NOT_FOUND
        }
        StoreError::Import { .. } | StoreError::Corrupt { .. } | StoreError::Check(_) => {
            StatusCode::BAD_REQUEST
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Export a snapshot as one file
///
/// The file `thaw export` writes (a tar of the snapshot's record and every chunk it
/// needs), streamed with its length (and its number of chunks in `x-thaw-chunks`);
/// `thaw import` or `POST /v1/snapshots/import`
/// takes it back.
#[utoipa::path(
    get,
    path = "/v1/snapshots/{tag}/export",
    tag = "thawd",
    params(
        ("tag" = SnapshotTag, Path, description = "The snapshot's tag; anything else than a valid tag is a 400.")
    ),
    responses(
        (status = 200, description = "The export file.", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::Always
    )
)]
pub(crate) async fn export(
    State(c): State<Ctx>,
    Named(tag): Named<SnapshotTag>,
) -> Result<Response, ApiError> {
    thaw::snapshot::catalog::get(&c.home, &tag).map_err(ApiError::from_op)?;
    let dir = scratch(&c, "export")?;
    let home = c.home.clone();
    let (file, size, chunks) = tokio::task::spawn_blocking(move || {
        let path = dir.path().join("snapshot.thaw");
        let report = thaw::store::export(&home, &tag, &path, &mut thaw::store::NoProgress)
            .map_err(|e| ApiError::new(store_status(&e), one_line(&e)))?;
        let file = std::fs::File::open(&path)
            .map_err(|e| ApiError::internal(format!("could not open the export: {e}")))?;
        let size = file
            .metadata()
            .map_err(|e| ApiError::internal(format!("could not read the export: {e}")))?
            .len();
        // The directory goes now; the open file streams on.
        drop(dir);
        Ok::<_, ApiError>((file, size, report.chunks))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the export failed: {e}")))??;
    let stream =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20);
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::HeaderName::from_static("x-thaw-chunks"),
                chunks.to_string(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Import a snapshot from a file
///
/// The body is a file `thaw export` (or `GET /v1/snapshots/{tag}/export`) wrote,
/// streamed, at most 64 GiB. Every chunk is checked before it enters the store; a
/// crafted or damaged file is a 400 and leaves nothing behind; a tag that exists here
/// is a 409.
#[utoipa::path(
    post,
    path = "/v1/snapshots/import",
    tag = "thawd",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Imported: the snapshot is here, ready to restore.", body = Imported, example = json!({"tag": "base", "bytes": 31_457_280})),
        (status = 400, response = crate::responses::BadRequest),
        (status = 409, response = crate::responses::Conflict),
        (status = 413, description = "The file is over 64 GiB.", body = crate::answer::Error),
        crate::responses::Always
    )
)]
pub(crate) async fn import(
    State(c): State<Ctx>,
    body: Body,
) -> Result<(StatusCode, Json<Imported>), ApiError> {
    let dir = scratch(&c, "import")?;
    let path = dir.path().join("snapshot.thaw");
    let mut out = tokio::fs::File::create(&path)
        .await
        .map_err(|e| ApiError::internal(format!("could not receive the file: {e}")))?;
    let mut stream = body.into_data_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|e| ApiError::bad_request(format!("the file did not arrive whole: {e}")))?
    {
        bytes += chunk.len() as u64;
        if bytes > MAX_IMPORT_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the file is over {} GiB, the most an import takes",
                    MAX_IMPORT_BYTES >> 30
                ),
            ));
        }
        out.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("could not receive the file: {e}")))?;
    }
    out.flush()
        .await
        .map_err(|e| ApiError::internal(format!("could not receive the file: {e}")))?;
    drop(out);
    if bytes == 0 {
        return Err(ApiError::bad_request(
            "the body is empty: send the file `thaw export` wrote",
        ));
    }
    let home = c.home.clone();
    let tag = tokio::task::spawn_blocking(move || {
        let r = thaw::store::import(&home, &path, &mut thaw::store::NoProgress);
        drop(dir);
        r
    })
    .await
    .map_err(|e| ApiError::internal(format!("the import failed: {e}")))?
    .map_err(|e| ApiError::new(store_status(&e), import_line(&e)))?;
    if let Err(e) = c.db.put_snapshot(&tag) {
        tracing::error!(%tag, "{}", one_line(&e));
    }
    tracing::info!(%tag, bytes, "snapshot imported");
    Ok((StatusCode::CREATED, Json(Imported { tag, bytes })))
}

/// The import's error without the scratch file's path (the client sent a body, not a
/// file of the daemon's host).
fn import_line(e: &StoreError) -> String {
    match e {
        StoreError::Import { source, .. } => {
            format!("importing the file failed: {}", one_line(source.as_ref()))
        }
        e => one_line(e),
    }
}
