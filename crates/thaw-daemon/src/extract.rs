//! Request extractors whose rejections are JSON `{"error"}` answers like every other
//! error: a JSON body, and a VM name or snapshot tag from the path.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::conn::BodyTimeout;
use crate::error::ApiError;

/// A JSON request body. An empty body reads as `{}`, so endpoints whose fields are all
/// optional can be called without one.
///
/// Rejections: 415 when a body comes with a content type that is not JSON, 400 when it
/// is not JSON, 422 when it is JSON of the wrong shape (a missing or unknown field, a
/// wrong type), 408 when it does not arrive in time ([`BodyTimeout`]), and axum's own
/// status (e.g. 413) when the body cannot be read.
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json_type = is_json(req.headers());
        let limit = req.extensions().get::<BodyTimeout>().map(|t| t.0);
        let read = Bytes::from_request(req, state);
        let read = match limit {
            Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        limit.as_secs()
                    ),
                )
            })?,
            None => read.await,
        };
        let bytes = read.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        decode(json_type, &bytes).map(ApiJson)
    }
}

/// A body as [`ApiJson`] reads it, once its bytes are in: `json_type` says whether the
/// content type was JSON (or absent).
pub(crate) fn decode<T: DeserializeOwned>(json_type: bool, bytes: &[u8]) -> Result<T, ApiError> {
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the request body must be JSON (content-type: application/json)",
        ));
    } else {
        bytes
    };
    // Syntax first, shape second: a truncated body is a 400 whatever it held.
    let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid request body: {e}"),
        )
    })
}

/// Whether a content type header value is JSON (for [`decode`]).
pub(crate) fn is_json_type(value: Option<&[u8]>) -> bool {
    let mut h = HeaderMap::new();
    if let Some(v) = value.and_then(|v| axum::http::HeaderValue::from_bytes(v).ok()) {
        h.insert(CONTENT_TYPE, v);
    } else if value.is_some() {
        return false;
    }
    is_json(&h)
}

/// A query string, whose rejection is a JSON 400 like every other error (axum's own
/// answered in text/plain, which no client of this API expects and the API does not
/// document: found by schemathesis with `?recursive=null`).
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
    }
}

/// A typed name (`VmName`, `SnapshotTag`) from the path's one parameter; an invalid
/// one (with `/`, `..`, ...) is a 400.
pub struct Named<T>(pub T);

impl<S, T> FromRequestParts<S> for Named<T>
where
    S: Send + Sync,
    T: std::str::FromStr<Err = thaw::home::NameError>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        raw.parse().map(Named).map_err(ApiError::from_op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(is_json(&h), "no content type is taken as JSON");
        for (v, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_json(&h), ok, "{v}");
        }
    }
}
