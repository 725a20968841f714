//! The display: a standard VGA card whose screen QEMU serves over VNC on the VM's bind
//! address (127.0.0.1 unless `--bind` says otherwise, see [`crate::ports`]; its
//! spec, QEMU options, ports and password). Screenshots and keys are [`crate::screen`].
//!
//! Whether a machine has a display (and whether its VNC server asks for a password or
//! also serves a websocket for browser clients) is part of the [`DisplaySpec`]: the VGA
//! card is in the migration stream, so a snapshot's clones have exactly the device its VM
//! had. The ports are per process, like the host side of port forwards: every VM and
//! every clone listens on its own free ones ([`VncPorts`], in the VM's record and in
//! `thaw ls`). A password is never written anywhere: it is set over QMP
//! (`set_password`) right after QEMU starts (and before the first VNC client can
//! authenticate), and a clone of a password-protected snapshot needs one given again.

use std::ffi::OsString;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use thaw_qmp::Qmp;

/// VNC display numbers count from this TCP port.
pub const VNC_BASE_PORT: u16 = 5900;
/// VNC authentication uses the first 8 characters of a password only.
pub const MAX_PASSWORD_LEN: usize = 8;

/// The machine has a display: a standard VGA card (`-device VGA`; Linux drives it with
/// `bochs`) served over VNC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisplaySpec {
    /// VNC clients must authenticate with a password (set per VM, never stored).
    #[serde(default)]
    pub password: bool,
    /// Also serve VNC over a websocket (for browser clients such as noVNC).
    #[serde(default)]
    pub websocket: bool,
}

/// The TCP ports (on the VM's bind address) one VM's display listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VncPorts {
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<u16>,
}

/// What a boot asks of the display's ports and password; 0 picks a free port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VncRequest {
    pub port: u16,
    pub websocket_port: u16,
    pub password: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("VNC port {0} is already in use")]
    PortInUse(u16),
    #[error("VNC port {0} is below {VNC_BASE_PORT}: QEMU numbers VNC displays from port {VNC_BASE_PORT}")]
    PortRange(u16),
    #[error("VNC options need a display (add --display vnc)")]
    NoDisplay,
    #[error("the display asks for a VNC password: give one (--vnc-password-file)")]
    PasswordNeeded,
    #[error("a VNC password was given, but the display does not ask for one")]
    PasswordUnused,
    #[error("a VNC password is at most {MAX_PASSWORD_LEN} characters (VNC authentication ignores the rest)")]
    PasswordTooLong,
    #[error("could not pick a free port")]
    FreePort(#[source] std::io::Error),
}

/// The QEMU options for a machine with `spec`'s display listening on `ports` of `bind`.
pub fn argv(spec: &DisplaySpec, ports: &VncPorts, bind: Ipv4Addr) -> Vec<OsString> {
    let mut vnc = format!("{bind}:{}", ports.port - VNC_BASE_PORT);
    if let Some(ws) = ports.websocket {
        vnc.push_str(&format!(",websocket={bind}:{ws}"));
    }
    if spec.password {
        vnc.push_str(",password=on");
    }
    ["-device", "VGA,id=video0", "-vnc", &vnc]
        .into_iter()
        .map(OsString::from)
        .collect()
}

/// Checks a boot's display request against the spec before anything starts, and picks
/// the ports: asked-for ports must be free now (and VNC ports at or above 5900).
pub fn ports_for_boot(
    spec: Option<&DisplaySpec>,
    req: &VncRequest,
    bind: Ipv4Addr,
) -> Result<Option<VncPorts>, DisplayError> {
    let Some(spec) = spec else {
        if req.port != 0 || req.websocket_port != 0 || req.password.is_some() {
            return Err(DisplayError::NoDisplay);
        }
        return Ok(None);
    };
    check_password(Some(spec), req.password.as_deref())?;
    if req.websocket_port != 0 && !spec.websocket {
        return Err(DisplayError::NoDisplay);
    }
    if req.port != 0 && req.port < VNC_BASE_PORT {
        return Err(DisplayError::PortRange(req.port));
    }
    for p in [req.port, req.websocket_port] {
        if p != 0 && !crate::ports::is_free_on(bind, p) {
            return Err(DisplayError::PortInUse(p));
        }
    }
    let port = match req.port {
        0 => free_vnc_port(bind)?,
        p => p,
    };
    let websocket = match (spec.websocket, req.websocket_port) {
        (false, _) => None,
        (true, 0) => Some(crate::ports::free_on(bind).map_err(DisplayError::FreePort)?),
        (true, p) => Some(p),
    };
    Ok(Some(VncPorts { port, websocket }))
}

/// Free ports for a clone's display (the snapshot's VM may still hold its own).
pub fn ports_for_clone(
    spec: Option<&DisplaySpec>,
    bind: Ipv4Addr,
) -> std::io::Result<Option<VncPorts>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let port = free_vnc_port(bind).map_err(|e| match e {
        DisplayError::FreePort(e) => e,
        other => std::io::Error::other(other.to_string()),
    })?;
    let websocket = spec
        .websocket
        .then(|| crate::ports::free_on(bind))
        .transpose()?;
    Ok(Some(VncPorts { port, websocket }))
}

/// A password is given exactly when the display asks for one, and fits VNC's 8 bytes.
pub fn check_password(
    spec: Option<&DisplaySpec>,
    password: Option<&str>,
) -> Result<(), DisplayError> {
    match (spec, password) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(DisplayError::NoDisplay),
        (Some(s), None) if s.password => Err(DisplayError::PasswordNeeded),
        (Some(s), Some(_)) if !s.password => Err(DisplayError::PasswordUnused),
        (Some(_), Some(p)) if p.chars().count() > MAX_PASSWORD_LEN || p.is_empty() => {
            Err(DisplayError::PasswordTooLong)
        }
        _ => Ok(()),
    }
}

/// Sets the VNC password of a QEMU started with `password=on` (until it is set, every
/// client is refused).
pub async fn set_password(qmp: &Qmp, password: &str) -> Result<(), thaw_qmp::QmpError> {
    qmp.execute(
        "set_password",
        Some(serde_json::json!({ "protocol": "vnc", "password": password })),
    )
    .await
    .map(|_| ())
}

/// An ephemeral port, which is above 5900 on any usual system; asked again otherwise.
fn free_vnc_port(bind: Ipv4Addr) -> Result<u16, DisplayError> {
    for _ in 0..100 {
        let p = crate::ports::free_on(bind).map_err(DisplayError::FreePort)?;
        if p >= VNC_BASE_PORT {
            return Ok(p);
        }
    }
    Err(DisplayError::FreePort(std::io::Error::other(
        "no free port at or above 5900",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(v: &[OsString]) -> String {
        v.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn argv_serves_vnc_on_loopback_by_display_number() {
        let ports = VncPorts {
            port: 5901,
            websocket: None,
        };
        assert_eq!(
            joined(&argv(
                &DisplaySpec::default(),
                &ports,
                crate::ports::DEFAULT_BIND
            )),
            "-device VGA,id=video0 -vnc 127.0.0.1:1"
        );
        let all = DisplaySpec {
            password: true,
            websocket: true,
        };
        let ports = VncPorts {
            port: 40000,
            websocket: Some(40001),
        };
        assert_eq!(
            joined(&argv(&all, &ports, crate::ports::DEFAULT_BIND)),
            "-device VGA,id=video0 -vnc 127.0.0.1:34100,websocket=127.0.0.1:40001,password=on"
        );
        assert_eq!(
            joined(&argv(&all, &ports, Ipv4Addr::UNSPECIFIED)),
            "-device VGA,id=video0 -vnc 0.0.0.0:34100,websocket=0.0.0.0:40001,password=on"
        );
    }

    #[test]
    fn asked_ports_are_checked_before_anything_starts() {
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let spec = DisplaySpec::default();
        let req = VncRequest {
            port,
            ..VncRequest::default()
        };
        let err = ports_for_boot(Some(&spec), &req, crate::ports::DEFAULT_BIND).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("VNC port {port} is already in use")
        );
        let low = VncRequest {
            port: 1,
            ..VncRequest::default()
        };
        assert!(matches!(
            ports_for_boot(Some(&spec), &low, crate::ports::DEFAULT_BIND),
            Err(DisplayError::PortRange(1))
        ));
        assert!(matches!(
            ports_for_boot(None, &req, crate::ports::DEFAULT_BIND),
            Err(DisplayError::NoDisplay)
        ));
        let picked = ports_for_boot(
            Some(&spec),
            &VncRequest::default(),
            crate::ports::DEFAULT_BIND,
        )
        .unwrap()
        .unwrap();
        assert!(picked.port >= VNC_BASE_PORT && picked.websocket.is_none());
        let ws = DisplaySpec {
            websocket: true,
            ..DisplaySpec::default()
        };
        assert!(ports_for_clone(Some(&ws), crate::ports::DEFAULT_BIND)
            .unwrap()
            .unwrap()
            .websocket
            .is_some());
        assert_eq!(
            ports_for_clone(None, crate::ports::DEFAULT_BIND).unwrap(),
            None
        );
    }

    #[test]
    fn passwords_are_given_exactly_when_asked_for() {
        let open = DisplaySpec::default();
        let locked = DisplaySpec {
            password: true,
            ..DisplaySpec::default()
        };
        check_password(Some(&open), None).unwrap();
        check_password(Some(&locked), Some("secret")).unwrap();
        assert!(matches!(
            check_password(Some(&locked), None),
            Err(DisplayError::PasswordNeeded)
        ));
        assert!(matches!(
            check_password(Some(&open), Some("x")),
            Err(DisplayError::PasswordUnused)
        ));
        assert!(matches!(
            check_password(Some(&locked), Some("123456789")),
            Err(DisplayError::PasswordTooLong)
        ));
        assert!(matches!(
            check_password(None, Some("x")),
            Err(DisplayError::NoDisplay)
        ));
    }

    #[test]
    fn spec_round_trips() {
        let s = DisplaySpec {
            password: true,
            websocket: false,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DisplaySpec>(&j).unwrap(), s);
        assert_eq!(
            serde_json::from_str::<DisplaySpec>("{}").unwrap(),
            DisplaySpec::default()
        );
    }
}
