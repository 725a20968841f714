//! A request id per request: the client's own `x-request-id` when it sends a sensible
//! one (up to 128 visible ASCII characters), else a new UUID. It is echoed in the
//! answer's `x-request-id` header, and every log line of the request (also of an
//! operation that outlives its connection) carries it in the `request` span, with one
//! `answered` line per request (method, path, route template, status, ms).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header that carries it, both ways.
pub const HEADER: &str = "x-request-id";

/// The longest client-given id kept; a longer one is replaced.
const MAX_LEN: usize = 128;

/// `router` with a request id on every request and answer.
pub fn layer(router: axum::Router) -> axum::Router {
    router.layer(axum::middleware::from_fn(tag))
}

/// The client's id when it is one we can echo, else a new one.
fn id_of(req: &Request) -> String {
    req.headers()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_LEN && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

async fn tag(req: Request, next: Next) -> Response {
    let id = id_of(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let span = tracing::info_span!("request", id = %id);
    let started = Instant::now();
    let mut answer = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            %method,
            path,
            route,
            status = answer.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "answered"
        );
    });
    answer.headers_mut().insert(
        HEADER,
        HeaderValue::from_str(&id).expect("a request id is visible ASCII"),
    );
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> Request {
        Request::builder()
            .header(HEADER, value)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn a_sensible_client_id_is_kept_and_others_replaced() {
        assert_eq!(id_of(&with("ci-42/run-7")), "ci-42/run-7");
        for bad in ["", "two words", &"x".repeat(MAX_LEN + 1)] {
            let id = id_of(&with(bad));
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        }
        let none = Request::builder().body(axum::body::Body::empty()).unwrap();
        assert!(uuid::Uuid::parse_str(&id_of(&none)).is_ok());
    }
}
