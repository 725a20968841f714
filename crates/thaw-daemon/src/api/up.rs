//! `POST /v1/up`: the boot cache (`thaw up`) as a long-running operation. The body is
//! checked and the boot resolved at once (400 for what cannot work, 409 for a name in
//! use, 429 over `--max-vms`), its cache key computed, and the answer is 202
//! `{"operation": id}`; `GET /v1/operations/{id}` then gives the phase (a pull or push
//! reports bytes) and, once done, `thaw up --json`'s report: the VM's name and the path
//! taken (`restored`, `pulled`, `booted`). The VM is the daemon's like any it booted.

use thaw::up::{UpOptions, UpReport, UpRequest};

use super::*;
use crate::error::one_line;
use crate::operations::{run, Started};

/// Bring a VM up through the boot cache
///
/// Restores the snapshot of exactly this boot if there is one (here, else pulled from
/// `remote`), otherwise cold-boots, snapshots into the cache (and pushes), and hands
/// the VM over, as `thaw up` does. Runs in the background: poll `GET
/// /v1/operations/{id}` (its `report` is `thaw up --json`'s) or follow `GET
/// /v1/events`.
#[utoipa::path(
    post,
    path = "/v1/up",
    tag = "thawd",
    request_body = UpOptions,
    responses(
        (status = 202, description = "Started.", body = Started, example = json!({"operation": "op-3f2a9c1b7d4e"})),
        (status = 400, response = crate::responses::BadRequest),
        (status = 409, response = crate::responses::Conflict),
        (status = 429, response = crate::responses::TooManyRequests),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn up(
    State(d): Shared,
    ApiJson(body): ApiJson<UpOptions>,
) -> Answer<(StatusCode, Json<Started>)> {
    let name = check_boot(&body.boot)?;
    if d.home.vm_dir(&name).exists() {
        return Err(ApiError::from_op(thaw::vm::VmError::Exists(name)));
    }
    let url = body.remote.clone().unwrap_or_default();
    let remote = body
        .remote
        .as_deref()
        .map(thaw::store::Remote::from_env)
        .transpose()
        .map_err(|e| ApiError::bad_request(one_line(&e)))?;
    let held = d.reserve(1)?;
    let (accel, qemu) = (d.accel, d.qemu.clone());
    // Resolution may build the profile's guest and the key hashes the guest's files:
    // both block.
    let (req, tag) = tokio::task::spawn_blocking(move || {
        let boot = profile::resolve(body.boot, accel, &mut |line| {
            tracing::info!("guest: {line}")
        })
        .map_err(ApiError::from_op)?;
        let key = thaw::up::cache_key(&boot, &qemu, &thaw::guest::cache_dir())
            .map_err(|e| ApiError::bad_request(one_line(&e)))?;
        Ok::<_, ApiError>((UpRequest { boot, remote }, key.tag))
    })
    .await
    .map_err(|e| ApiError::internal(format!("resolving the boot failed: {e}")))??;
    let (operations, events) = (Arc::clone(&d.operations), Arc::clone(&d.events));
    let started = run(
        &operations,
        &events,
        "up",
        tag,
        url,
        move |mut progress| async move {
            let result = thaw::up::up(
                &d.home,
                &d.qemu,
                &thaw::guest::cache_dir(),
                &req,
                &mut progress,
                &thaw::cancel::CancellationToken::new(),
            )
            .await
            .map_err(|e| one_line(&e));
            if let Ok(r) = &result {
                handed_over(&d, r);
            }
            drop(held);
            result.map(|r| serde_json::to_value(r).expect("a report serializes"))
        },
    );
    Ok((StatusCode::ACCEPTED, Json(started)))
}

/// Records the VM `up` handed over as the daemon's, and the snapshot it made.
fn handed_over(d: &Daemon, r: &UpReport) {
    let (from, source) = match r.path.as_str() {
        "booted" => (None, "boot"),
        _ => (Some(&r.tag), "spawn"),
    };
    if r.path != "restored" {
        if let Err(e) = d.db.put_snapshot(&r.tag) {
            tracing::error!(tag = %r.tag, "{}", one_line(&e));
        }
    }
    d.started(&r.name, r.pid, from, source, r.ready_ms);
    tracing::info!(vm = %r.name, path = %r.path, "up done");
}
