//! The error answers the routes share, as OpenAPI response components: the routes'
//! annotations ([`crate::api`]) name them, the document ([`crate::openapi`]) lists them.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};
use utoipa::ToSchema;

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

/// References to the response components `names` (each a [`utoipa::ToResponse`] above),
/// by status code.
fn refs(names: &[(&str, &str)]) -> std::collections::BTreeMap<String, RefOr<Response>> {
    names
        .iter()
        .map(|(status, name)| {
            let r = utoipa::openapi::Ref::new(format!("#/components/responses/{name}"));
            (status.to_string(), RefOr::Ref(r))
        })
        .collect()
}

/// What every route may answer: headers too large (hyper's own answer) and a failed
/// operation.
pub(crate) struct Always;

impl utoipa::IntoResponses for Always {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        refs(&[("431", "HeadersTooLarge"), ("500", "InternalError")])
    }
}

/// What every route with a JSON body may answer about the body: too slow, too large,
/// not JSON, the wrong shape.
pub(crate) struct BodyErrors;

impl utoipa::IntoResponses for BodyErrors {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        refs(&[
            ("408", "RequestTimeout"),
            ("413", "PayloadTooLarge"),
            ("415", "UnsupportedMediaType"),
            ("422", "UnprocessableEntity"),
        ])
    }
}
