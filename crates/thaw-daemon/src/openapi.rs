//! The OpenAPI document of the API, generated from the library's request and report
//! types and the routes' annotations in [`crate::api`]: `thawd openapi` prints it, and
//! docs/openapi.json is its output (a test fails when they differ).

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};
use utoipa::{OpenApi, ToSchema};

use crate::answer;

/// An error answer, `{"error": "..."}`, described as `description`.
fn error(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                answer::Error::name(),
            ))))
            .build(),
    )
}

/// The error answers the routes share, each a response component named like its type.
macro_rules! error_responses {
    ($($name:ident: $description:literal;)*) => {
        $(
            pub(crate) struct $name;

            impl<'s> utoipa::ToResponse<'s> for $name {
                fn response() -> (&'s str, RefOr<Response>) {
                    (stringify!($name), error($description).build().into())
                }
            }
        )*
    };
}

error_responses! {
    BadRequest: "The request is malformed: not JSON, an invalid name or tag (with '/' or '..'), or values that cannot work.";
    NotFound: "No such VM or snapshot.";
    Conflict: "The name or tag exists, the host port is taken, or the VM is in the wrong state (not running, a clone).";
    PayloadTooLarge: "The body is over 2 MiB.";
    UnsupportedMediaType: "The body is not sent as JSON (content-type must be application/json).";
    UnprocessableEntity: "The body is JSON of the wrong shape: a missing or unknown field, a wrong type.";
    InternalError: "The operation failed (QEMU, the guest agent, the disk ...); nothing it started is left running.";
    RequestTimeout: "The body did not arrive within the daemon's --header-timeout.";
    HeadersTooLarge: "The request's headers are too large or too many; answered before any endpoint runs, and the connection is closed.";
}

pub(crate) struct TooManyRequests;

impl<'s> utoipa::ToResponse<'s> for TooManyRequests {
    fn response() -> (&'s str, RefOr<Response>) {
        let seconds = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1));
        let retry_after = HeaderBuilder::new()
            .schema(seconds)
            .description(Some(
                "Seconds to wait before trying again (room comes back as VMs stop).",
            ))
            .build();
        let response = error(
            "Starting these VMs would exceed the daemon's --max-vms (VMs running plus those starting). Nothing was started.",
        )
        .header("Retry-After", retry_after);
        ("TooManyRequests", response.build().into())
    }
}

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
        crate::api::boot,
        crate::api::stop,
        crate::api::exec,
        crate::api::snapshot,
        crate::api::resume,
        crate::api::reset,
        crate::api::list_snapshots,
        crate::api::remove_snapshot,
        crate::api::restore,
        crate::api::pools,
        crate::api::set_pool,
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
