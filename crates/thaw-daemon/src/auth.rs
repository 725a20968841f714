//! Bearer tokens on the TCP listener: every request but `GET /healthz` must carry
//! `Authorization: Bearer <token>` naming a token of the tokens file ([`Tokens`]).
//! A missing or wrong one gets 401 with one JSON line and nothing else. The Unix
//! socket has no tokens: its 0600 mode is its authentication.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::tokens::Tokens;

/// The route that answers without a token (load balancers' health checks).
pub const HEALTHZ: &str = "/healthz";

/// The router with every route but [`HEALTHZ`] behind `tokens`.
pub fn require_tokens(router: axum::Router, tokens: Arc<Tokens>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(tokens, check))
}

async fn check(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    if req.uri().path() == HEALTHZ {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|t| tokens.check(t)) {
        Some(name) => {
            tracing::debug!(token = %name, "authenticated");
            next.run(req).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({ "error": "a valid token is needed (Authorization: Bearer TOKEN)" })),
        )
            .into_response(),
    }
}
