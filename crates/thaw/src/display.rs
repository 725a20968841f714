//! The display: a standard VGA card whose screen QEMU serves over VNC on 127.0.0.1, a
//! screenshot of it (QMP `screendump`, PNG), and keys typed into the guest (QMP
//! `send-key`).
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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thaw_qmp::Qmp;

use crate::home::{Home, VmName};
use crate::vm::{VmError, VmState};

/// VNC display numbers count from this TCP port.
pub const VNC_BASE_PORT: u16 = 5900;
/// VNC authentication uses the first 8 characters of a password only.
pub const MAX_PASSWORD_LEN: usize = 8;
/// `thaw type` sends at most this many characters at once (QEMU queues key events).
pub const MAX_TYPED_CHARS: usize = 256;
/// How long each key (or combination) is held down, in ms: shorter than the guest's
/// autorepeat delay (250 ms on Linux) by far.
const HOLD_MS: u64 = 30;

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

/// The TCP ports (on 127.0.0.1) one VM's display listens on.
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

/// A screenshot that was written.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Screenshot {
    pub name: VmName,
    pub file: PathBuf,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// Keys that were sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysSent {
    pub name: VmName,
    /// Key presses (a combination counts once).
    pub keys: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    #[error("VNC port {0} is already in use")]
    PortInUse(u16),
    #[error("VNC port {0} is below {VNC_BASE_PORT}: QEMU numbers VNC displays from port {VNC_BASE_PORT}")]
    PortRange(u16),
    #[error("VNC options need a display (add --display vnc)")]
    NoDisplay,
    #[error("VM {0} has no display (boot it with --display vnc)")]
    VmHasNoDisplay(VmName),
    #[error("the display asks for a VNC password: give one (--vnc-password-file)")]
    PasswordNeeded,
    #[error("a VNC password was given, but the display does not ask for one")]
    PasswordUnused,
    #[error("a VNC password is at most {MAX_PASSWORD_LEN} characters (VNC authentication ignores the rest)")]
    PasswordTooLong,
    #[error("could not pick a free port")]
    FreePort(#[source] std::io::Error),
    #[error("cannot type {0:?}: only printable ASCII, tab and newline can be typed (use thaw key for other keys)")]
    Untypable(char),
    #[error(
        "unknown key {0:?} (use QEMU key names: a, ret, spc, tab, esc, f1, ctrl, alt, shift, ...)"
    )]
    UnknownKey(String),
    #[error("nothing to send")]
    NoKeys,
    #[error("type at most {MAX_TYPED_CHARS} characters at a time")]
    TooLong,
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("QEMU refused the display command")]
    Qmp(#[from] thaw_qmp::QmpError),
    #[error("could not {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU wrote a screenshot that is not a PNG image ({0})")]
    NotPng(PathBuf),
}

/// The QEMU options for a machine with `spec`'s display listening on `ports`.
pub fn argv(spec: &DisplaySpec, ports: &VncPorts) -> Vec<OsString> {
    let mut vnc = format!("127.0.0.1:{}", ports.port - VNC_BASE_PORT);
    if let Some(ws) = ports.websocket {
        vnc.push_str(&format!(",websocket=127.0.0.1:{ws}"));
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
        if p != 0 && !crate::ready::port_is_free(p) {
            return Err(DisplayError::PortInUse(p));
        }
    }
    let port = match req.port {
        0 => free_vnc_port()?,
        p => p,
    };
    let websocket = match (spec.websocket, req.websocket_port) {
        (false, _) => None,
        (true, 0) => Some(crate::ready::free_port().map_err(DisplayError::FreePort)?),
        (true, p) => Some(p),
    };
    Ok(Some(VncPorts { port, websocket }))
}

/// Free ports for a clone's display (the snapshot's VM may still hold its own).
pub fn ports_for_clone(spec: Option<&DisplaySpec>) -> std::io::Result<Option<VncPorts>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let port = free_vnc_port().map_err(|e| match e {
        DisplayError::FreePort(e) => e,
        other => std::io::Error::other(other.to_string()),
    })?;
    let websocket = spec.websocket.then(crate::ready::free_port).transpose()?;
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
fn free_vnc_port() -> Result<u16, DisplayError> {
    for _ in 0..100 {
        let p = crate::ready::free_port().map_err(DisplayError::FreePort)?;
        if p >= VNC_BASE_PORT {
            return Ok(p);
        }
    }
    Err(DisplayError::FreePort(std::io::Error::other(
        "no free port at or above 5900",
    )))
}

/// The running (or paused) VM `name`, which must have a display, and a QMP connection.
async fn connect(home: &Home, name: &VmName) -> Result<(VmState, Qmp), DisplayError> {
    let state = VmState::load_running(home, name)?;
    if state.spec.display.is_none() {
        return Err(DisplayError::VmHasNoDisplay(name.clone()));
    }
    let qmp = Qmp::connect(&state.paths(home).qmp())
        .await
        .map_err(VmError::from)?;
    Ok((state, qmp))
}

/// Writes a PNG of the VM's screen to `dest` (paused VMs too: QEMU draws the screen from
/// the card's memory).
pub async fn screenshot(
    home: &Home,
    name: &VmName,
    dest: &Path,
) -> Result<Screenshot, DisplayError> {
    let (state, qmp) = connect(home, name).await?;
    // QEMU writes into the VM's directory; the file is then moved where it was asked.
    let tmp = state.paths(home).dir.join(".screendump.png");
    let _ = std::fs::remove_file(&tmp);
    let written = async {
        qmp.execute(
            "screendump",
            Some(serde_json::json!({ "filename": tmp, "format": "png" })),
        )
        .await?;
        let bytes = std::fs::read(&tmp).map_err(|source| DisplayError::Io {
            step: "read the screenshot",
            path: tmp.clone(),
            source,
        })?;
        let (width, height) = png_size(&bytes).ok_or_else(|| DisplayError::NotPng(tmp.clone()))?;
        move_file(&tmp, dest).map_err(|source| DisplayError::Io {
            step: "write the screenshot to",
            path: dest.to_owned(),
            source,
        })?;
        Ok(Screenshot {
            name: name.clone(),
            file: dest.to_owned(),
            width,
            height,
            bytes: bytes.len() as u64,
        })
    }
    .await;
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Types `text` on the VM's keyboard (US layout), one key (with shift where needed) at a
/// time. Returns once QEMU has queued the keys; the guest reads them as it runs.
pub async fn type_text(home: &Home, name: &VmName, text: &str) -> Result<KeysSent, DisplayError> {
    if text.chars().count() > MAX_TYPED_CHARS {
        return Err(DisplayError::TooLong);
    }
    let combos = text
        .chars()
        .map(|c| char_keys(c).ok_or(DisplayError::Untypable(c)))
        .collect::<Result<Vec<_>, _>>()?;
    send(home, name, &combos).await
}

/// Presses each combination (`ctrl-alt-f2`, `ret`, `shift-a`) in turn: the keys of one
/// combination together, then released.
pub async fn send_keys(
    home: &Home,
    name: &VmName,
    combos: &[String],
) -> Result<KeysSent, DisplayError> {
    let combos = combos
        .iter()
        .map(|c| parse_combo(c))
        .collect::<Result<Vec<_>, _>>()?;
    send(home, name, &combos).await
}

async fn send(
    home: &Home,
    name: &VmName,
    combos: &[Vec<&'static str>],
) -> Result<KeysSent, DisplayError> {
    if combos.is_empty() {
        return Err(DisplayError::NoKeys);
    }
    let (_, qmp) = connect(home, name).await?;
    for keys in combos {
        let keys: Vec<_> = keys
            .iter()
            .map(|k| serde_json::json!({ "type": "qcode", "data": k }))
            .collect();
        qmp.execute(
            "send-key",
            Some(serde_json::json!({ "keys": keys, "hold-time": HOLD_MS })),
        )
        .await?;
    }
    Ok(KeysSent {
        name: name.clone(),
        keys: combos.len(),
    })
}

/// Renames, or copies across file systems.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            std::fs::copy(from, to).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

/// The keys that type `c` on a US keyboard.
pub fn char_keys(c: char) -> Option<Vec<&'static str>> {
    const UNSHIFTED: &[(char, &str)] = &[
        (' ', "spc"),
        ('\n', "ret"),
        ('\t', "tab"),
        ('-', "minus"),
        ('=', "equal"),
        ('[', "bracket_left"),
        (']', "bracket_right"),
        (';', "semicolon"),
        ('\'', "apostrophe"),
        ('`', "grave_accent"),
        ('\\', "backslash"),
        (',', "comma"),
        ('.', "dot"),
        ('/', "slash"),
    ];
    const SHIFTED: &[(char, &str)] = &[
        ('!', "1"),
        ('@', "2"),
        ('#', "3"),
        ('$', "4"),
        ('%', "5"),
        ('^', "6"),
        ('&', "7"),
        ('*', "8"),
        ('(', "9"),
        (')', "0"),
        ('_', "minus"),
        ('+', "equal"),
        ('{', "bracket_left"),
        ('}', "bracket_right"),
        (':', "semicolon"),
        ('"', "apostrophe"),
        ('~', "grave_accent"),
        ('|', "backslash"),
        ('<', "comma"),
        ('>', "dot"),
        ('?', "slash"),
    ];
    if c.is_ascii_lowercase() || c.is_ascii_digit() {
        return key_name(&c.to_string()).map(|k| vec![k]);
    }
    if c.is_ascii_uppercase() {
        return key_name(&c.to_ascii_lowercase().to_string()).map(|k| vec!["shift", k]);
    }
    if let Some((_, k)) = UNSHIFTED.iter().find(|(ch, _)| *ch == c) {
        return Some(vec![k]);
    }
    SHIFTED
        .iter()
        .find(|(ch, _)| *ch == c)
        .map(|(_, k)| vec!["shift", *k])
}

/// `ctrl-alt-f2` → `["ctrl", "alt", "f2"]`, with friendly aliases (`enter`, `space`,
/// `esc`, `control`, `super`, ...).
pub fn parse_combo(combo: &str) -> Result<Vec<&'static str>, DisplayError> {
    let keys = combo
        .split(['-', '+'])
        .map(|k| {
            key_name(&k.to_ascii_lowercase()).ok_or_else(|| DisplayError::UnknownKey(k.into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(DisplayError::NoKeys);
    }
    Ok(keys)
}

/// QEMU's name (a `QKeyCode`) for a key, or for one of its aliases.
fn key_name(k: &str) -> Option<&'static str> {
    const ALIASES: &[(&str, &str)] = &[
        ("control", "ctrl"),
        ("lctrl", "ctrl"),
        ("rctrl", "ctrl_r"),
        ("lalt", "alt"),
        ("ralt", "alt_r"),
        ("altgr", "alt_r"),
        ("lshift", "shift"),
        ("rshift", "shift_r"),
        ("enter", "ret"),
        ("return", "ret"),
        ("escape", "esc"),
        ("space", "spc"),
        ("bksp", "backspace"),
        ("del", "delete"),
        ("ins", "insert"),
        ("pageup", "pgup"),
        ("pagedown", "pgdn"),
        ("super", "meta_l"),
        ("win", "meta_l"),
        ("meta", "meta_l"),
    ];
    const NAMES: &[&str] = &[
        "shift",
        "shift_r",
        "alt",
        "alt_r",
        "ctrl",
        "ctrl_r",
        "menu",
        "esc",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "8",
        "9",
        "0",
        "minus",
        "equal",
        "backspace",
        "tab",
        "q",
        "w",
        "e",
        "r",
        "t",
        "y",
        "u",
        "i",
        "o",
        "p",
        "bracket_left",
        "bracket_right",
        "ret",
        "a",
        "s",
        "d",
        "f",
        "g",
        "h",
        "j",
        "k",
        "l",
        "semicolon",
        "apostrophe",
        "grave_accent",
        "backslash",
        "z",
        "x",
        "c",
        "v",
        "b",
        "n",
        "m",
        "comma",
        "dot",
        "slash",
        "asterisk",
        "spc",
        "caps_lock",
        "f1",
        "f2",
        "f3",
        "f4",
        "f5",
        "f6",
        "f7",
        "f8",
        "f9",
        "f10",
        "f11",
        "f12",
        "num_lock",
        "scroll_lock",
        "kp_divide",
        "kp_multiply",
        "kp_subtract",
        "kp_add",
        "kp_enter",
        "kp_decimal",
        "sysrq",
        "kp_0",
        "kp_1",
        "kp_2",
        "kp_3",
        "kp_4",
        "kp_5",
        "kp_6",
        "kp_7",
        "kp_8",
        "kp_9",
        "less",
        "home",
        "pgup",
        "pgdn",
        "end",
        "left",
        "up",
        "down",
        "right",
        "insert",
        "delete",
        "meta_l",
        "meta_r",
        "print",
        "pause",
    ];
    let k = ALIASES
        .iter()
        .find(|(alias, _)| *alias == k)
        .map_or(k, |(_, name)| name);
    NAMES.iter().find(|n| **n == k).copied()
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
            joined(&argv(&DisplaySpec::default(), &ports)),
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
            joined(&argv(&all, &ports)),
            "-device VGA,id=video0 -vnc 127.0.0.1:34100,websocket=127.0.0.1:40001,password=on"
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
        let err = ports_for_boot(Some(&spec), &req).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("VNC port {port} is already in use")
        );
        let low = VncRequest {
            port: 1,
            ..VncRequest::default()
        };
        assert!(matches!(
            ports_for_boot(Some(&spec), &low),
            Err(DisplayError::PortRange(1))
        ));
        assert!(matches!(
            ports_for_boot(None, &req),
            Err(DisplayError::NoDisplay)
        ));
        let picked = ports_for_boot(Some(&spec), &VncRequest::default())
            .unwrap()
            .unwrap();
        assert!(picked.port >= VNC_BASE_PORT && picked.websocket.is_none());
        let ws = DisplaySpec {
            websocket: true,
            ..DisplaySpec::default()
        };
        assert!(ports_for_clone(Some(&ws))
            .unwrap()
            .unwrap()
            .websocket
            .is_some());
        assert_eq!(ports_for_clone(None).unwrap(), None);
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
    fn characters_map_to_us_keys() {
        assert_eq!(char_keys('a').unwrap(), ["a"]);
        assert_eq!(char_keys('Z').unwrap(), ["shift", "z"]);
        assert_eq!(char_keys('7').unwrap(), ["7"]);
        assert_eq!(char_keys('&').unwrap(), ["shift", "7"]);
        assert_eq!(char_keys(' ').unwrap(), ["spc"]);
        assert_eq!(char_keys('\n').unwrap(), ["ret"]);
        assert_eq!(char_keys('?').unwrap(), ["shift", "slash"]);
        assert_eq!(char_keys('"').unwrap(), ["shift", "apostrophe"]);
        assert!(char_keys('é').is_none());
        assert!(char_keys('\u{7}').is_none());
        // Every printable ASCII character can be typed.
        assert!((' '..='~').all(|c| char_keys(c).is_some()));
    }

    #[test]
    fn combos_parse_with_aliases() {
        assert_eq!(parse_combo("ctrl-alt-f2").unwrap(), ["ctrl", "alt", "f2"]);
        assert_eq!(parse_combo("Enter").unwrap(), ["ret"]);
        assert_eq!(parse_combo("ctrl+c").unwrap(), ["ctrl", "c"]);
        assert_eq!(parse_combo("shift-minus").unwrap(), ["shift", "minus"]);
        assert!(matches!(
            parse_combo("ctrl-bogus"),
            Err(DisplayError::UnknownKey(k)) if k == "bogus"
        ));
    }

    #[test]
    fn png_size_reads_the_header() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&1024u32.to_be_bytes());
        png.extend_from_slice(&768u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((1024, 768)));
        assert_eq!(png_size(b"GIF89a"), None);
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
