//! The screen of a VM with a display, through the API: a screenshot (PNG), typed text
//! and key combinations — what `thaw screenshot`, `thaw type` and `thaw key` do.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use thaw::screen::KeysSent;
use thaw::VmName;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::extract::{ApiJson, Named};
use crate::operations::Ctx;

/// Text to type.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"text": "root\n"}))]
pub struct TypeOptions {
    /// Printable ASCII, tab and newline (US layout).
    pub text: String,
}

/// Key combinations to press, in turn.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"keys": ["ctrl-alt-f2", "ret"]}))]
pub struct KeyOptions {
    /// QEMU key names, a combination joined with `-`.
    pub keys: Vec<String>,
}

/// A screenshot of a VM's display
#[utoipa::path(
    get,
    path = "/v1/vms/{name}/screenshot",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    responses(
        (status = 200, description = "The screen as a PNG image (paused VMs too).", body = Vec<u8>, content_type = "image/png"),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::Always
    )
)]
pub(crate) async fn screenshot(
    State(c): State<Ctx>,
    Named(name): Named<VmName>,
) -> Result<Response, ApiError> {
    let file = c
        .home
        .root()
        .join(format!(".screenshot-{}.png", uuid::Uuid::new_v4().simple()));
    let shot = thaw::screen::screenshot(&c.home, &name, &file).await;
    let bytes = shot.map(|_| std::fs::read(&file));
    let _ = std::fs::remove_file(&file);
    let bytes = bytes
        .map_err(ApiError::from_op)?
        .map_err(|e| ApiError::internal(format!("reading the screenshot failed: {e}")))?;
    Ok(([("content-type", "image/png")], bytes).into_response())
}

/// Type text on a VM's keyboard
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/type",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body = TypeOptions,
    responses(
        (status = 200, description = "QEMU queued the keys.", body = KeysSent),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn type_text(
    State(c): State<Ctx>,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<TypeOptions>,
) -> Result<Json<KeysSent>, ApiError> {
    thaw::screen::type_text(&c.home, &name, &body.text)
        .await
        .map(Json)
        .map_err(ApiError::from_op)
}

/// Press key combinations on a VM's keyboard
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/key",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body = KeyOptions,
    responses(
        (status = 200, description = "QEMU queued the keys.", body = KeysSent),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn key(
    State(c): State<Ctx>,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<KeyOptions>,
) -> Result<Json<KeysSent>, ApiError> {
    thaw::screen::send_keys(&c.home, &name, &body.keys)
        .await
        .map(Json)
        .map_err(ApiError::from_op)
}
