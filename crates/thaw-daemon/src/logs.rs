//! `GET /v1/vms/{name}/logs`: a VM's serial console, whole or followed.
//!
//! Without `follow`, what `thaw logs` prints (the newest 1-2 MiB the console keeper
//! kept). With `follow=true`, the same and then what the guest writes, streamed as it
//! comes (looked for every 200 ms), until the VM ends or the daemon stops.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use thaw::console::Follow;
use thaw::vm::{VmPaths, VmState};
use thaw::VmName;

use crate::error::ApiError;
use crate::extract::{ApiQuery, Named};
use crate::operations::Ctx;

/// How often a followed console is looked at.
const POLL: Duration = Duration::from_millis(200);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

/// A VM's console output
///
/// The bytes the guest wrote on its serial console (the newest 1-2 MiB), as they are.
/// With `follow=true` the answer goes on with what the guest writes until the VM ends
/// (or the daemon stops); `thaw logs -f` through THAW_HOST reads it.
#[utoipa::path(
    get,
    path = "/v1/vms/{name}/logs",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400."),
        ("follow" = Option<bool>, Query, description = "Stream what the guest writes next, until the VM ends.")
    ),
    responses(
        (status = 200, description = "The console output (streamed with follow).", body = String, content_type = "text/plain",
         example = "[    0.000000] Linux version 6.12.95 ...\nthaw guest ready\n"),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::Always
    )
)]
pub(crate) async fn logs(
    State(c): State<Ctx>,
    Named(name): Named<VmName>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let vm = VmState::load(&c.home, &name).map_err(ApiError::from_op)?;
    let path = VmPaths::new(&c.home, &name).console();
    let headers = [("content-type", "text/plain")];
    if !q.follow {
        let text = tokio::task::spawn_blocking(move || thaw::console::read(&path))
            .await
            .map_err(|e| ApiError::internal(format!("reading the console failed: {e}")))?;
        return Ok((headers, text).into_response());
    }
    let state = (Follow::new(&path), vm, c.events.closed(), false);
    let stream = futures_util::stream::unfold(state, |(mut f, vm, mut closed, done)| async move {
        if done {
            return None;
        }
        loop {
            let alive = vm.is_alive();
            let text = match f.read_new() {
                Ok(t) => t,
                Err(e) => return Some((Err(e), (f, vm, closed, true))),
            };
            if !text.is_empty() {
                return Some((Ok(Bytes::from(text)), (f, vm, closed, !alive)));
            }
            if !alive || *closed.borrow() {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                _ = closed.changed() => return None,
            }
        }
    });
    Ok((headers, Body::from_stream(stream)).into_response())
}
