//! What a request must pass before anything starts, beyond its shape (which serde
//! checks): the checks the handlers make first, and the same checks for the fuzzer.

use thaw::control::ExecOptions;
use thaw::pool::PoolConfig;
use thaw::profile::BootOptions;
use thaw::reset::ResetOptions;
use thaw::restore::RestoreOptions;
use thaw::snapshot::take::SnapshotOptions;
use thaw::{SnapshotTag, VmName};

use crate::error::ApiError;

type Answer<T> = Result<T, ApiError>;

fn absolute(what: &str, path: &std::path::Path) -> Answer<()> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} {} must be an absolute path (the daemon does not share your working directory)",
            path.display()
        )))
    }
}

/// What a boot request must pass before anything starts; returns the VM's name.
pub(crate) fn check_boot(body: &BootOptions) -> Answer<VmName> {
    let name: VmName = body.name.parse().map_err(ApiError::from_op)?;
    if body.profile.is_some() && body.kernel.is_some() {
        return Err(ApiError::bad_request(
            "profile and kernel exclude each other (a profile brings its own guest)",
        ));
    }
    if body.initrd.is_some() && body.kernel.is_none() {
        return Err(ApiError::bad_request(
            "initrd needs kernel (the default guest brings its own initrd)",
        ));
    }
    for (what, path) in [("kernel", &body.kernel), ("initrd", &body.initrd)] {
        if let Some(p) = path {
            absolute(what, p)?;
        }
    }
    for disk in &body.disks {
        absolute(
            "disk",
            std::path::Path::new(disk.split(',').next().unwrap_or("")),
        )?;
    }
    if body.ports.iter().any(|f| f.guest == 0) {
        return Err(ApiError::bad_request("a guest port cannot be 0"));
    }
    let firmware_boot = body.kernel.is_none() && body.profile.is_none() && body.firmware.is_some();
    if firmware_boot && body.disks.is_empty() {
        return Err(ApiError::bad_request(
            "a firmware boot without a kernel needs a disk to boot",
        ));
    }
    Ok(name)
}

pub(crate) fn check_exec(body: &ExecOptions) -> Answer<()> {
    if body.command.is_empty() {
        return Err(ApiError::bad_request("command must not be empty"));
    }
    Ok(())
}

/// For fuzzing the request bodies: decodes `body` (sent with the content type
/// `content_type`) as the body of endpoint `which` exactly as the handlers do, and
/// makes the checks they make before they start anything. `Err` is the refusal's
/// status and message. Not part of the API.
#[doc(hidden)]
pub fn check_request_body(
    which: u8,
    content_type: Option<&[u8]>,
    body: &[u8],
) -> Result<(), (u16, String)> {
    fn tag(t: &str) -> Answer<SnapshotTag> {
        t.parse().map_err(ApiError::from_op)
    }
    let json = crate::extract::is_json_type(content_type);
    let r: Answer<()> = (|| match which % 7 {
        0 => check_boot(&crate::extract::decode::<BootOptions>(json, body)?).map(drop),
        1 => check_exec(&crate::extract::decode::<ExecOptions>(json, body)?),
        2 => tag(&crate::extract::decode::<SnapshotOptions>(json, body)?.tag).map(drop),
        3 => {
            let b = crate::extract::decode::<ResetOptions>(json, body)?;
            b.to.as_deref().map(tag).transpose().map(drop)
        }
        4 => {
            let b = crate::extract::decode::<RestoreOptions>(json, body)?;
            b.name
                .map(|n| n.parse::<VmName>())
                .transpose()
                .map(drop)
                .map_err(ApiError::from_op)
        }
        5 => crate::extract::decode::<PoolConfig>(json, body).map(drop),
        _ => {
            // A path segment, as `Named` reads it.
            let text = String::from_utf8_lossy(body);
            text.parse::<VmName>().map(drop).map_err(ApiError::from_op)
        }
    })();
    r.map_err(|e| (e.status.as_u16(), e.message))
}

#[cfg(test)]
mod tests {
    use super::check_request_body;

    /// serde quotes an unknown field's name as is: a body with a newline in a key got
    /// a two-line error (and the CLI printed two lines).
    #[test]
    fn an_error_quoting_a_field_name_with_a_newline_is_one_line() {
        for (which, body) in [
            (1u8, &br#"{"com\nmand": ["true"]}"#[..]),
            (0, br#"{"name": "a", "x\r\ny": 1}"#),
            (2, br#"{"tag": "a\nb"}"#),
        ] {
            let (status, msg) = check_request_body(which, None, body).unwrap_err();
            assert!((400..500).contains(&status), "{status} {msg}");
            assert!(!msg.contains(['\n', '\r']), "{msg:?}");
        }
    }

    #[test]
    fn bodies_are_refused_with_the_handlers_statuses() {
        assert_eq!(
            check_request_body(1, None, b"{\"command\": [\"x\"]}"),
            Ok(())
        );
        assert_eq!(check_request_body(1, None, b"").unwrap_err().0, 422);
        assert_eq!(check_request_body(1, None, b"{\"comm").unwrap_err().0, 400);
        assert_eq!(
            check_request_body(1, Some(b"text/plain"), b"{}")
                .unwrap_err()
                .0,
            415
        );
        assert_eq!(
            check_request_body(1, None, b"{\"command\": []}")
                .unwrap_err()
                .0,
            400
        );
        assert_eq!(check_request_body(6, None, b"a\0b").unwrap_err().0, 400);
    }
}
