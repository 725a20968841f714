//! Clones taken from the warm pool must outlive the daemon like every other VM.
//!
//! The core starts pooled QEMU processes with `PR_SET_PDEATHSIG` (SIGKILL when the
//! thread that spawned them ends), and a process's parent-death signal cannot be
//! cleared from outside it: a clone taken from the pool would die whenever the daemon
//! exits, even gracefully. So the daemon hands the pool a QEMU "binary" that is a
//! two-line script: it execs `setpriv --pdeathsig clear` (util-linux), which execs the
//! real QEMU — the same pid, QEMU's own command line, no parent-death signal.
//!
//! Pooled processes that were never taken are ended by the daemon instead: at a
//! graceful shutdown (`Pool::shutdown`) and, after a crash, by the next daemon as it
//! starts (they are recorded in the database and run from `pool/`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thaw::qemu::Qemu;
use thaw::Home;

/// The script's name under `$THAW_HOME`.
const SCRIPT: &str = "pool-qemu";

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// `'...'` for the shell.
fn quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// The QEMU the pool should start: `real` behind the script, or `real` itself (with a
/// warning) when `setpriv --pdeathsig` is not available or the script cannot be written.
pub(crate) fn pool_qemu(home: &Home, real: &Qemu) -> Qemu {
    let setpriv = on_path("setpriv").filter(|s| {
        Command::new(s)
            .args(["--pdeathsig", "clear", "--", "true"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success())
    });
    let Some(setpriv) = setpriv else {
        tracing::warn!(
            "setpriv --pdeathsig is not available (install util-linux): \
             clones taken from the warm pool will end when the daemon ends"
        );
        return real.clone();
    };
    let script = home.root().join(SCRIPT);
    let text = format!(
        "#!/bin/sh\n\
         # Written by thawd: QEMU for the warm pool, without the parent-death signal.\n\
         exec {} --pdeathsig clear -- {} \"$@\"\n",
        quote(&setpriv),
        quote(&real.binary)
    );
    let tmp = home
        .root()
        .join(format!(".{SCRIPT}.{}", std::process::id()));
    let written = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)))
        .and_then(|()| std::fs::rename(&tmp, &script));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(
            "could not write {}: {e}; clones taken from the warm pool will end when the daemon ends",
            script.display()
        );
        return real.clone();
    }
    Qemu {
        binary: script,
        version: real.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_odd_paths() {
        assert_eq!(quote(Path::new("/usr/bin/qemu")), "'/usr/bin/qemu'");
        assert_eq!(quote(Path::new("/a'b")), r"'/a'\''b'");
    }

    #[test]
    fn the_script_runs_the_real_binary_without_a_parent_death_signal() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let real = Qemu {
            binary: on_path("echo").expect("echo on PATH"),
            version: "10.0.2".parse().unwrap(),
        };
        let q = pool_qemu(&home, &real);
        assert_ne!(
            q.binary, real.binary,
            "setpriv is part of util-linux, always installed on Debian"
        );
        assert_eq!(q.version, real.version);
        let out = Command::new(&q.binary)
            .args(["hello", "it's me"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello it's me\n");
    }
}
