//! Park and wake (see `thaw::park`): `POST /v1/vms/{name}/park` ends the VM into a
//! snapshot tagged with its name and, with a remote, uploads it as an operation of
//! kind `park` (202; with `wait`, 200 once uploaded); `POST /v1/wake` restores a parked
//! VM under its name, fetched from `from` when it is not here.

use super::*;
use serde::Serialize;
use thaw::park::{self, ParkError, ParkOptions, ParkRecord, ParkRequest, WakeOptions, WakeRequest};
use utoipa::ToSchema;

use crate::error::HttpStatus;
use crate::operations::Ctx;

impl HttpStatus for ParkError {
    fn status(&self) -> StatusCode {
        match self {
            ParkError::Name(_) | ParkError::Remote(_) => StatusCode::BAD_REQUEST,
            ParkError::Vm(e) => e.status(),
            ParkError::Snapshot { source, .. } => source.status(),
            ParkError::Restore(e) => e.status(),
            ParkError::TagExists(_)
            | ParkError::AlreadyParked(_)
            | ParkError::Busy(_)
            | ParkError::NoRemote(_) => StatusCode::CONFLICT,
            ParkError::NotParked(_) | ParkError::NotFound { .. } => StatusCode::NOT_FOUND,
            ParkError::Store(_)
            | ParkError::Record(_)
            | ParkError::Io(_)
            | ParkError::Spawn { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The answer to a park.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Parked {
    pub name: VmName,
    /// The snapshot taken with the VM stopped (`pause_ms`: the park's pause).
    pub snapshot: SnapshotReport,
    /// The park record: `pushing` while the operation uploads, `parked` when done.
    pub park: ParkRecord,
    /// The upload's operation (`GET /v1/operations/{id}`), when one runs.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub operation: Option<String>,
}

/// Park a VM
///
/// Snapshots the VM with it stopped (the vCPUs pause only for the device state), tagged
/// with its name; the VM ends. With `remote`, the snapshot is then uploaded as an
/// operation of kind `park` (202, poll `GET /v1/operations/{id}`; the park record in
/// `GET /v1/parked` follows it too), or, with `wait`, before the answer (200). Without
/// `remote` it stays on this host (200).
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/park",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body = ParkOptions,
    responses(
        (status = 200, description = "Parked (and uploaded, with a remote and wait).", body = Parked),
        (status = 202, description = "Parked here; the upload runs as the operation named.", body = Parked),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn park(
    State(d): Shared,
    State(c): State<Ctx>,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<ParkOptions>,
) -> Answer<(StatusCode, Json<Parked>)> {
    let req = ParkRequest {
        name: name.clone(),
        remote: body.remote.clone(),
    };
    let report = detached(async move {
        d.reaper.expect_exit(&name);
        let cancel = thaw::cancel::CancellationToken::new();
        let report = park::park(&d.home, &req, &cancel)
            .await
            .map_err(ApiError::from_op)?;
        d.snapshot_taken(&name, &report.snapshot.tag, report.snapshot.pause_ms);
        d.forget(&name);
        d.stopped(&name, "park");
        Ok(report)
    })
    .await?;
    let mut answer = Parked {
        name: report.name.clone(),
        snapshot: report.snapshot,
        park: report.park,
        operation: None,
    };
    let Some(url) = body.remote else {
        return Ok((StatusCode::OK, Json(answer)));
    };
    let tag = answer.snapshot.tag.clone();
    let started = crate::operations::start_park(c.clone(), answer.name.clone(), tag, url)?;
    if !body.wait {
        answer.operation = Some(started.operation);
        return Ok((StatusCode::ACCEPTED, Json(answer)));
    }
    let op = crate::operations::finished(&c, &started.operation).await;
    if let Some(e) = op.and_then(|o| o.error) {
        return Err(ApiError::internal(e));
    }
    answer.park = park::get(&c.home, &answer.name)
        .map_err(|e| ApiError::internal(crate::error::one_line(&e)))?
        .unwrap_or(answer.park);
    Ok((StatusCode::OK, Json(answer)))
}

/// Parked VMs
#[utoipa::path(
    get,
    path = "/v1/parked",
    tag = "thawd",
    responses(
        (status = 200, description = "Every VM parked on this host and where its upload is.", body = Vec<ParkRecord>),
        crate::responses::Always
    )
)]
pub(crate) async fn list_parked(State(d): Shared) -> Json<Vec<ParkRecord>> {
    Json(park::list(&d.home))
}

/// Wake a parked VM
///
/// Restores the VM parked under `name` with that name (its RAM and disks as parked,
/// the clock set, a fresh VM Generation ID): from this host, or else fetched from
/// `from` (`s3://BUCKET/PREFIX`, the S3 server of the daemon's environment). Its park
/// record is then cleared.
#[utoipa::path(
    post,
    path = "/v1/wake",
    tag = "thawd",
    request_body = WakeOptions,
    responses(
        (status = 201, description = "The VM runs again: its clone report.", body = Vec<CloneReport>),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        (status = 429, response = crate::responses::TooManyRequests),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn wake(
    State(d): Shared,
    ApiJson(body): ApiJson<WakeOptions>,
) -> Answer<(StatusCode, Json<Vec<CloneReport>>)> {
    let name: VmName = body.name.parse().map_err(ApiError::from_op)?;
    let req = WakeRequest {
        name,
        from: body.from,
        timeout: std::time::Duration::from_secs(body.timeout_secs.unwrap_or(60)),
    };
    let held = d.reserve(1)?;
    let daemon = d.clone();
    // The fetch reports progress through a `&mut dyn Progress`, which is not `Send`:
    // the wake runs on a runtime of its own, as the operations do.
    let woke = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ApiError::internal(format!("could not start the wake: {e}")))?;
        rt.block_on(park::wake(
            &daemon.home,
            &daemon.qemu,
            &req,
            &thaw::cancel::CancellationToken::new(),
        ))
        .map_err(ApiError::from_op)
    })
    .await
    .map_err(|e| ApiError::internal(format!("the wake failed: {e}")))??;
    let tag: SnapshotTag = woke.name.as_str().parse().map_err(ApiError::from_op)?;
    if let Err(e) = d.db.put_snapshot(&tag) {
        tracing::error!(%tag, "{}", crate::error::one_line(&e));
    }
    d.started(
        &woke.name,
        woke.pid,
        Some(&tag),
        &woke.breakdown.source,
        woke.ready_ms,
    );
    drop(held);
    Ok((StatusCode::CREATED, Json(vec![woke])))
}
