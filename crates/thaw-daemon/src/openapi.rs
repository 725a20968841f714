//! The OpenAPI document of the API, generated from the library's request and report
//! types and the routes' annotations in [`crate::api`]: `thawd openapi` prints it, and
//! docs/openapi.json is its output (a test fails when they differ).

use utoipa::OpenApi;

use crate::answer;
use crate::responses::{
    BadRequest, Conflict, HeadersTooLarge, InternalError, NotFound, PayloadTooLarge,
    RequestTimeout, TooManyRequests, UnprocessableEntity, UnsupportedMediaType,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "thawd API",
        version = "1",
        description = "thaw's operations over HTTP/1.1 + JSON on a Unix socket ($THAW_HOME/thawd.sock, mode 0600). Every error is {\"error\": \"<one line>\"} with a 4xx/5xx status. An unknown path answers 404 and a known path with another method 405, both with that error body. See docs/api.md.",
    ),
    servers((
        url = "http://localhost",
        description = "Over the Unix socket, e.g. curl --unix-socket $THAW_HOME/thawd.sock http://localhost/v1/health"
    )),
    paths(
        crate::api::health,
        crate::api::list_vms,
        crate::api::get_vm,
        crate::api::boot,
        crate::api::stop,
        crate::api::exec,
        crate::streams::exec_stream,
        crate::streams::put_file,
        crate::streams::get_file,
        crate::api::snapshot,
        crate::api::pause,
        crate::api::resume,
        crate::api::reset,
        crate::api::set_ttl,
        crate::api::snapshots::list_snapshots,
        crate::api::snapshots::get_snapshot,
        crate::api::snapshots::remove_snapshot,
        crate::api::snapshots::restore,
        crate::api::snapshots::pools,
        crate::api::snapshots::set_pool,
        crate::api::metrics,
        crate::events::stream,
        crate::operations::push,
        crate::operations::pull,
        crate::operations::get,
        crate::api::park::park,
        crate::api::park::list_parked,
        crate::api::park::wake,
        crate::logs::logs,
        crate::screen::screenshot,
        crate::screen::type_text,
        crate::screen::key,
        crate::transfer::export,
        crate::transfer::import,
        crate::api::up::up,
    ),
    components(
        schemas(answer::Error),
        responses(
        BadRequest,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        UnprocessableEntity,
        TooManyRequests,
        InternalError,
        RequestTimeout,
        HeadersTooLarge,
        )
    )
)]
struct ApiDoc;

/// The document, as `thawd openapi` prints it.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}
