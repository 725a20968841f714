//! The display's screen and keyboard: a screenshot of a VM's screen (QMP `screendump`,
//! PNG) and keys typed into the guest (QMP `send-key`, US layout). What a display is and
//! how QEMU serves it is [`crate::display`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thaw_qmp::Qmp;

use crate::fsutil::{Context, IoError};
use crate::home::{Home, VmName};
use crate::vm::{VmError, VmState};

/// `thaw type` sends at most this many characters at once (QEMU queues key events).
pub const MAX_TYPED_CHARS: usize = 256;
/// How long each key (or combination) is held down, in ms: shorter than the guest's
/// autorepeat delay (250 ms on Linux) by far.
const HOLD_MS: u64 = 30;

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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeysSent {
    pub name: VmName,
    /// Key presses (a combination counts once).
    pub keys: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error("VM {0} has no display (boot it with --display vnc)")]
    VmHasNoDisplay(VmName),
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
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("QEMU wrote a screenshot that is not a PNG image ({0})")]
    NotPng(PathBuf),
}

/// The running (or paused) VM `name`, which must have a display, and a QMP connection.
async fn connect(home: &Home, name: &VmName) -> Result<(VmState, Qmp), ScreenError> {
    let state = VmState::load_running(home, name)?;
    if state.spec.display.is_none() {
        return Err(ScreenError::VmHasNoDisplay(name.clone()));
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
) -> Result<Screenshot, ScreenError> {
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
        let bytes = std::fs::read(&tmp).at("read the screenshot", &tmp)?;
        let (width, height) = png_size(&bytes).ok_or_else(|| ScreenError::NotPng(tmp.clone()))?;
        move_file(&tmp, dest).at("write the screenshot to", dest)?;
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
pub async fn type_text(home: &Home, name: &VmName, text: &str) -> Result<KeysSent, ScreenError> {
    if text.chars().count() > MAX_TYPED_CHARS {
        return Err(ScreenError::TooLong);
    }
    let combos = text
        .chars()
        .map(|c| char_keys(c).ok_or(ScreenError::Untypable(c)))
        .collect::<Result<Vec<_>, _>>()?;
    send(home, name, &combos).await
}

/// Presses each combination (`ctrl-alt-f2`, `ret`, `shift-a`) in turn: the keys of one
/// combination together, then released.
pub async fn send_keys(
    home: &Home,
    name: &VmName,
    combos: &[String],
) -> Result<KeysSent, ScreenError> {
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
) -> Result<KeysSent, ScreenError> {
    if combos.is_empty() {
        return Err(ScreenError::NoKeys);
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
pub fn parse_combo(combo: &str) -> Result<Vec<&'static str>, ScreenError> {
    let keys = combo
        .split(['-', '+'])
        .map(|k| key_name(&k.to_ascii_lowercase()).ok_or_else(|| ScreenError::UnknownKey(k.into())))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err(ScreenError::NoKeys);
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
            Err(ScreenError::UnknownKey(k)) if k == "bogus"
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
}
