//! How the core's errors become HTTP answers: a status code chosen from what went
//! wrong, and a body `{"error": "<one line>"}` carrying the whole chain of causes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use thaw::agent::AgentError;
use thaw::boot::BootError;
use thaw::clone::CloneError;
use thaw::control::{ExecError, ResumeError};
use thaw::disk::DiskError;
use thaw::home::NameError;
use thaw::pool::PoolError;
use thaw::ready::ReadyError;
use thaw::reset::ResetError;
use thaw::restore::RestoreError;
use thaw::snapshot::catalog::{RemoveSnapshotError, UnknownSnapshot};
use thaw::snapshot::inuse::RemovalLockError;
use thaw::snapshot::take::SnapshotError;
use thaw::snapshot::SnapshotCheckError;
use thaw::vm::VmError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// A `Retry-After` header, in seconds (429).
    pub retry_after_secs: Option<u32>,
}

/// What a 429 says in `Retry-After`: room comes back as VMs stop or fail to start, which
/// the daemon cannot foresee; a client that retries at this pace costs it little (a
/// refusal is a count and an answer).
pub const RETRY_AFTER_SECS: u32 = 1;

impl ApiError {
    /// An answer; control characters in `message` (a newline in a field name serde
    /// quotes, say) are escaped, so that the error stays one line.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let message: String = message.into();
        let message = if message.chars().any(char::is_control) {
            message
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        } else {
            message
        };
        ApiError {
            status,
            message,
            retry_after_secs: None,
        }
    }

    /// A 429: the request would take the daemon over a limit; try again later.
    pub fn too_many(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_secs: Some(RETRY_AFTER_SECS),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// An error of a core operation, with the status its kind calls for.
    pub fn from_op<E: HttpStatus + std::error::Error>(e: E) -> ApiError {
        ApiError::new(e.status(), one_line(&e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}", self.message);
        }
        let mut answer = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs {
            answer
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        answer
    }
}

pub use thaw::one_line;

/// The HTTP status an error of the core calls for.
pub trait HttpStatus {
    fn status(&self) -> StatusCode;
}

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const MISSING: StatusCode = StatusCode::NOT_FOUND;
const CONFLICT: StatusCode = StatusCode::CONFLICT;
const FAILED: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;

impl HttpStatus for NameError {
    fn status(&self) -> StatusCode {
        BAD
    }
}

impl HttpStatus for thaw::lifetime::LifetimeError {
    fn status(&self) -> StatusCode {
        BAD
    }
}

impl HttpStatus for thaw::restore::RestoreOptionsError {
    fn status(&self) -> StatusCode {
        BAD
    }
}

impl HttpStatus for VmError {
    fn status(&self) -> StatusCode {
        match self {
            VmError::NotFound(_) => MISSING,
            VmError::Exists(_) | VmError::NotRunning(_) => CONFLICT,
            _ => FAILED,
        }
    }
}

impl HttpStatus for thaw::screen::ScreenError {
    fn status(&self) -> StatusCode {
        use thaw::screen::ScreenError as E;
        match self {
            E::VmHasNoDisplay(_) => CONFLICT,
            E::Untypable(_) | E::UnknownKey(_) | E::NoKeys | E::TooLong => BAD,
            E::Vm(e) => e.status(),
            _ => FAILED,
        }
    }
}

impl HttpStatus for DiskError {
    fn status(&self) -> StatusCode {
        match self {
            DiskError::Missing(_)
            | DiskError::FormatMismatch { .. }
            | DiskError::UnsupportedFormat { .. }
            | DiskError::BadArg(..)
            | DiskError::QemuImg { .. } => BAD,
            _ => FAILED,
        }
    }
}

impl HttpStatus for ReadyError {
    fn status(&self) -> StatusCode {
        match self {
            ReadyError::NotForwarded(_) | ReadyError::Regex(_) => BAD,
            _ => FAILED,
        }
    }
}

impl HttpStatus for AgentError {
    fn status(&self) -> StatusCode {
        FAILED
    }
}

impl HttpStatus for BootError {
    fn status(&self) -> StatusCode {
        match self {
            BootError::Spec(_) | BootError::NoNet | BootError::Bind(_) => BAD,
            BootError::Vm(e) => e.status(),
            BootError::Disk(e) => e.status(),
            BootError::Ready(e) => e.status(),
            BootError::PortInUse(_) => CONFLICT,
            BootError::Display(e) => e.status(),
            _ => FAILED,
        }
    }
}

impl HttpStatus for thaw::profile::ResolveBootError {
    fn status(&self) -> StatusCode {
        use thaw::profile::ResolveBootError as E;
        match self {
            E::Name(_)
            | E::AppendWithoutKernel
            | E::Spec(_)
            | E::GuestPortZero
            | E::Lifetime(_)
            | E::Bind(_) => BAD,
            E::Disk(e) => e.status(),
            E::Display(e) => e.status(),
            E::Guest { .. } | E::Firmware(_) => FAILED,
        }
    }
}

impl HttpStatus for thaw::firmware::FirmwareError {
    fn status(&self) -> StatusCode {
        FAILED
    }
}

impl HttpStatus for thaw::display::DisplayError {
    fn status(&self) -> StatusCode {
        use thaw::display::DisplayError as E;
        match self {
            E::PortInUse(_) => CONFLICT,
            E::PortRange(_)
            | E::NoDisplay
            | E::PasswordNeeded
            | E::PasswordUnused
            | E::PasswordTooLong => BAD,
            E::FreePort(_) => FAILED,
        }
    }
}

impl HttpStatus for ExecError {
    fn status(&self) -> StatusCode {
        match self {
            ExecError::Vm(e) => e.status(),
            ExecError::Agent(e) => e.status(),
        }
    }
}

impl HttpStatus for ResumeError {
    fn status(&self) -> StatusCode {
        match self {
            ResumeError::Vm(e) => e.status(),
            ResumeError::Migration(_) => FAILED,
        }
    }
}

impl HttpStatus for ResetError {
    fn status(&self) -> StatusCode {
        match self {
            ResetError::Vm(e) => e.status(),
            ResetError::NoSnapshot(_) => BAD,
            ResetError::Check(e) => e.status(),
            ResetError::Store(_) => FAILED,
            ResetError::Clone { source, .. } => source.status(),
            // The daemon never interrupts an operation (it runs them detached).
            ResetError::Interrupted(_) => FAILED,
        }
    }
}

impl HttpStatus for SnapshotError {
    fn status(&self) -> StatusCode {
        match self {
            SnapshotError::Vm(e) => e.status(),
            SnapshotError::TagExists(_) | SnapshotError::Busy(_) => CONFLICT,
            SnapshotError::CloneNeedsMappedRam { .. } | SnapshotError::UnknownLayer { .. } => BAD,
            _ => FAILED,
        }
    }
}

impl HttpStatus for SnapshotCheckError {
    fn status(&self) -> StatusCode {
        match self {
            SnapshotCheckError::UnknownTag(_) => MISSING,
            _ => FAILED,
        }
    }
}

impl HttpStatus for RestoreError {
    fn status(&self) -> StatusCode {
        match self {
            RestoreError::Check(e) => e.status(),
            RestoreError::Vm(e) => e.status(),
            RestoreError::Count | RestoreError::PausedReady | RestoreError::Bind(_) => BAD,
            RestoreError::Display(e) => e.status(),
            RestoreError::Ready(e) => e.status(),
            RestoreError::Clone { source, .. } => source.status(),
            RestoreError::Store(_) | RestoreError::Interrupted(_) => FAILED,
            // A bad URL is the client's; a snapshot the remote lacks is not found.
            RestoreError::Arrive(e)
                if matches!(**e, thaw::lazy_restore::ArriveError::Remote(_)) =>
            {
                BAD
            }
            RestoreError::Arrive(e)
                if matches!(
                    **e,
                    thaw::lazy_restore::ArriveError::Pull {
                        source: thaw::store::PullError::ManifestNotFound { .. },
                        ..
                    }
                ) =>
            {
                MISSING
            }
            RestoreError::Arrive(_)
            | RestoreError::Lazy(_)
            | RestoreError::LazyRead { .. }
            | RestoreError::LazySnapshot { .. } => FAILED,
        }
    }
}

impl HttpStatus for CloneError {
    fn status(&self) -> StatusCode {
        match self {
            CloneError::Check(e) => e.status(),
            CloneError::Vm(e) | CloneError::Claim(e) => e.status(),
            CloneError::Ready(e) => e.status(),
            _ => FAILED,
        }
    }
}

impl HttpStatus for UnknownSnapshot {
    fn status(&self) -> StatusCode {
        MISSING
    }
}

impl HttpStatus for RemoveSnapshotError {
    fn status(&self) -> StatusCode {
        match self {
            RemoveSnapshotError::UnknownTag(_) => MISSING,
            RemoveSnapshotError::HasChildren { .. } => CONFLICT,
            RemoveSnapshotError::Lock(RemovalLockError::UnknownTag(_)) => MISSING,
            RemoveSnapshotError::Lock(RemovalLockError::InUse(_)) => CONFLICT,
            _ => FAILED,
        }
    }
}

impl HttpStatus for PoolError {
    fn status(&self) -> StatusCode {
        match self {
            PoolError::Check(e) => e.status(),
            PoolError::Size(_) | PoolError::Bind(_) => BAD,
            PoolError::Store(_) | PoolError::Lazy(_) => FAILED,
        }
    }
}

impl HttpStatus for thaw::guest::GuestBuildError {
    fn status(&self) -> StatusCode {
        FAILED
    }
}

impl HttpStatus for crate::db::DbError {
    fn status(&self) -> StatusCode {
        FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_said_once_on_one_line() {
        let e = VmError::Io(thaw::fsutil::IoError::new(
            "create",
            "/h/vms/x",
            std::io::Error::other("disk full"),
        ));
        assert_eq!(one_line(&e), "cannot create /h/vms/x: disk full");
        let e = BootError::Exited {
            why: "bad kernel".into(),
            console: thaw::boot::ConsoleNote {
                log: "/h/logs/x.console.log".into(),
                empty: false,
                firmware_boot: false,
            },
        };
        assert_eq!(
            one_line(&e),
            "QEMU exited before the guest was ready: bad kernel; its serial console is kept in /h/logs/x.console.log"
        );
    }

    #[test]
    fn a_429_says_when_to_retry_and_other_errors_do_not() {
        let answer = ApiError::too_many("full").into_response();
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry = answer.headers().get(axum::http::header::RETRY_AFTER);
        assert_eq!(retry.unwrap(), &RETRY_AFTER_SECS.to_string());
        let answer = ApiError::bad_request("no").into_response();
        assert!(answer
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .is_none());
    }

    #[test]
    fn statuses_follow_what_went_wrong() {
        let name: thaw::VmName = "web".parse().unwrap();
        let tag: thaw::SnapshotTag = "base".parse().unwrap();
        assert_eq!(VmError::NotFound(name.clone()).status(), MISSING);
        assert_eq!(
            BootError::Vm(VmError::Exists(name.clone())).status(),
            CONFLICT
        );
        assert_eq!(
            RestoreError::Check(SnapshotCheckError::UnknownTag(tag.clone())).status(),
            MISSING
        );
        let nested = RestoreError::Clone {
            name: name.clone(),
            source: CloneError::Vm(VmError::Exists(name)),
        };
        assert_eq!(nested.status(), CONFLICT);
        assert_eq!(RemoveSnapshotError::UnknownTag(tag).status(), MISSING);
        assert_eq!(PoolError::Size(1000).status(), BAD);
        assert_eq!("a/b".parse::<thaw::VmName>().unwrap_err().status(), BAD);
    }
}
