//! `thaw-clock` in the guests thaw builds: the guest side of the clock channel (see
//! [`crate::clockport`] and the `thaw_clock` crate). A binary of this workspace, found
//! next to the running thaw (or where the package installs it) and copied into every
//! guest. Its sources are part of each guest's recipe, so a changed one rebuilds them
//! (its sources, not its bytes: a debug and a release build of thaw share the guests).

use std::path::{Path, PathBuf};

use super::GuestBuildError;

/// Where the guests keep it.
pub(crate) const GUEST_PATH: &str = "usr/local/sbin/thaw-clock";

/// The binary's name.
const NAME: &str = "thaw-clock";

/// Where the Debian package installs it.
const PACKAGED: &str = "/usr/lib/thaw/thaw-clock";

/// The `thaw-clock` binary to put into guests: `$THAW_CLOCK_BIN`, else next to the
/// running executable (a cargo build puts it beside `thaw`), else the package's.
pub(crate) fn binary() -> Result<PathBuf, GuestBuildError> {
    let mut searched = Vec::new();
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("THAW_CLOCK_BIN") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_owned))
    {
        candidates.push(dir.join(NAME));
        // Test binaries run from target/<profile>/deps.
        if dir.ends_with("deps") {
            candidates.extend(dir.parent().map(|d| d.join(NAME)));
        }
    }
    candidates.push(PathBuf::from(PACKAGED));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        searched.push(c.display().to_string());
    }
    Err(GuestBuildError::ClockHelperMissing {
        searched: searched.join(", "),
    })
}

/// What the guest side is built from.
const SOURCES: &[&str] = &[
    include_str!("../../../thaw-clock/Cargo.toml"),
    include_str!("../../../thaw-clock/src/lib.rs"),
    include_str!("../../../thaw-clock/src/main.rs"),
];

/// Adds the guest side's sources to a guest's recipe hash.
pub(crate) fn fingerprint(h: &mut blake3::Hasher) {
    h.update(b"thaw-clock\0");
    for s in SOURCES {
        h.update(s.as_bytes());
        h.update(b"\0");
    }
}

/// The binary's contents, for copying into a guest.
pub(crate) fn read() -> Result<Vec<u8>, GuestBuildError> {
    let path = binary()?;
    use crate::fsutil::Context;
    Ok(std::fs::read(&path).at("read thaw-clock", &path)?)
}

/// `thaw-clock.service` in the Debian guests: started early (before the agent's own
/// unit, so a snapshot taken once the agent answers has it waiting on its port).
pub(crate) const UNIT: &str = "\
[Unit]
Description=thaw's clock channel (sets the clock of a clone thaw restores)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target qemu-guest-agent.service shutdown.target
Conflicts=shutdown.target

[Service]
ExecStart=/usr/local/sbin/thaw-clock-start
Restart=on-failure
RestartSec=1

[Install]
WantedBy=sysinit.target
";

/// Finds the port by name in sysfs (as the agent's script does: udev's link comes late
/// under TCG) and runs `thaw-clock` on it.
pub(crate) const START_SCRIPT_PATH: &str = "usr/local/sbin/thaw-clock-start";
pub(crate) const START_SCRIPT: &str = r#"#!/bin/sh
# Runs thaw-clock on the virtio-serial port named org.thaw.clock.0 (thaw-clock.service).
i=0
while [ "$i" -lt 50 ]; do
    for f in /sys/class/virtio-ports/*/name; do
        if [ "$(cat "$f" 2>/dev/null)" = org.thaw.clock.0 ]; then
            port=${f%/name}
            exec /usr/local/sbin/thaw-clock "/dev/${port##*/}"
        fi
    done
    sleep 0.1
    i=$((i + 1))
done
echo "no virtio-serial port named org.thaw.clock.0: thaw sets the clock through the agent"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_script_names_the_port_the_host_side_uses() {
        assert!(START_SCRIPT.contains(&format!("= {} ]", thaw_clock::PORT_NAME)));
        assert!(START_SCRIPT.contains(GUEST_PATH));
        assert!(UNIT.contains(&format!("/{START_SCRIPT_PATH}")));
    }
}
