//! The Debian package: `scripts/package.sh` builds it (here from this build's debug
//! binaries, `--bin-dir`: the release build is the script's default), apt installs it,
//! and the INSTALLED /usr/bin/thaw reports its version, builds the default guest (the
//! shared cache: cheap), boots, snapshots and restores in a temporary THAW_HOME; the
//! man pages and completions are at their installed paths, and `systemd-analyze
//! verify` passes on the installed thawd.service. The package is removed at the end,
//! also when the test fails (a drop guard). Needs root, and thawd and thaw-bench built
//! beside thaw (`cargo build --workspace`, as scripts/test.sh does).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const INSTALLED: &str = "/usr/bin/thaw";

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether dpkg knows the package at all (installed, or removed with its
/// configuration kept).
fn known() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "thaw"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "thaw"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Removes the package (after stopping the VMs the installed thaw started in `home`)
/// when the test ends, however it ends.
struct Installed {
    home: tempfile::TempDir,
}

impl Installed {
    fn thaw(&self, args: &[&str]) -> Output {
        run(Command::new(INSTALLED)
            .args(args)
            .env("THAW_HOME", self.home.path())
            .env_remove("THAW_LOG")
            .env("THAW_NO_DAEMON", "1"))
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.thaw(&a);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("thaw {args:?}: not JSON ({e}): {out:?}"))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if Path::new(INSTALLED).exists() {
            let _ = Command::new(INSTALLED)
                .args(["stop", "--all"])
                .env("THAW_HOME", self.home.path())
                .env("THAW_NO_DAEMON", "1")
                .output();
        }
        let removed = Command::new("dpkg").args(["--purge", "thaw"]).output();
        let ok = removed.as_ref().is_ok_and(|o| o.status.success());
        if !ok && !std::thread::panicking() {
            panic!("dpkg --purge thaw failed: {removed:?}");
        }
    }
}

#[test]
fn the_package_installs_and_runs() {
    assert!(
        rustix::process::geteuid().is_root(),
        "installing a package needs root"
    );
    assert!(
        !known(),
        "a thaw package is installed already: remove it (dpkg --purge thaw) first"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin_dir = Path::new(common::THAW).parent().unwrap();

    // Built twice: the script is idempotent and the second package replaces the first.
    let mut deb = PathBuf::new();
    for _ in 0..2 {
        let out = run(Command::new("bash")
            .arg("scripts/package.sh")
            .arg("--bin-dir")
            .arg(bin_dir)
            .current_dir(&root));
        let printed = String::from_utf8(out.stdout).unwrap();
        deb = root.join(printed.trim());
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.file_name().unwrap().to_str().unwrap(),
        format!("thaw_{version}_amd64.deb")
    );
    assert_eq!(deb.parent().unwrap(), root.join("target/debian"));
    let left: Vec<_> = std::fs::read_dir(root.join("target/debian"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left.len(),
        1,
        "target/debian holds more than the package: {left:?}"
    );

    let guard = Installed {
        home: tempfile::Builder::new()
            .prefix("thaw-pkg-")
            .tempdir()
            .unwrap(),
    };
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(installed());

    // The installed binary is this build, and finds QEMU.
    let about = guard.json(&["--version"]);
    let ours: Value = serde_json::from_slice(
        &run(Command::new(common::THAW).args(["--version", "--json"])).stdout,
    )
    .unwrap();
    assert_eq!(about["version"], version);
    assert_eq!(about["commit"], ours["commit"]);
    assert!(about["qemu"]["version"].is_string(), "{about}");

    // Guest, boot, snapshot, restore: all by /usr/bin/thaw.
    guard.thaw(&["guest", "build"]);
    let booted = guard.json(&["boot", "pkg"]);
    assert_eq!(booted["name"], "pkg");
    guard.thaw(&[
        "exec",
        "pkg",
        "--",
        "/bin/sh",
        "-c",
        "echo from-the-package > /tmp/mark",
    ]);
    guard.json(&["snapshot", "pkg", "base"]);
    let restored = guard.json(&["restore", "base", "--name", "clone"]);
    assert!(restored.to_string().contains("clone"), "{restored}");
    let mark = guard.thaw(&["exec", "clone", "--", "cat", "/tmp/mark"]);
    assert_eq!(
        String::from_utf8_lossy(&mark.stdout).trim(),
        "from-the-package"
    );
    guard.thaw(&["stop", "--all"]);
    assert!(
        common::processes_mentioning(guard.home.path()).is_empty(),
        "QEMU left running"
    );

    // The guests' clock helper where the installed thaw looks for it (the guest build
    // above copied it from there: no other copy is beside /usr/bin/thaw).
    assert!(std::path::Path::new("/usr/lib/thaw/thaw-clock").is_file());
    assert!(!std::path::Path::new("/usr/bin/thaw-clock").exists());

    // Man pages and completions where man, bash, zsh and fish look.
    for page in [
        "thaw",
        "thaw-boot",
        "thaw-restore",
        "thaw-completions",
        "thawd",
    ] {
        let path = format!("/usr/share/man/man1/{page}.1.gz");
        let roff = run(Command::new("gzip").args(["-dc", &path])).stdout;
        let roff = String::from_utf8(roff).unwrap();
        assert!(
            roff.lines()
                .any(|l| l.starts_with(&format!(".TH {page} 1"))),
            "{path} has no .TH {page} 1"
        );
    }
    let bash = "/usr/share/bash-completion/completions/thaw";
    run(Command::new("bash").args(["-n", bash]));
    for path in [
        bash,
        "/usr/share/zsh/vendor-completions/_thaw",
        "/usr/share/fish/vendor_completions.d/thaw.fish",
    ] {
        let script = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            script.contains("restore") && script.contains("snapshot"),
            "{path}"
        );
    }

    // The unit passes systemd's own checks (ExecStart, directives, its man pages).
    let unit = "/lib/systemd/system/thawd.service";
    let verify = run(Command::new("systemd-analyze").args(["verify", unit]));
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        !said.contains("thawd.service"),
        "systemd-analyze verify has something to say about the unit: {said}"
    );
    let text = std::fs::read_to_string(unit).unwrap();
    for line in [
        "ExecStart=/usr/bin/thawd --socket /run/thaw/thawd.sock",
        "RuntimeDirectory=thaw",
        "StateDirectory=thaw",
        "Environment=THAW_HOME=/var/lib/thaw",
        "Restart=on-failure",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line}");
    }

    drop(guard);
    assert!(!known(), "dpkg --purge left the package known to dpkg");
    assert!(!Path::new(INSTALLED).exists());
    assert!(!Path::new(unit).exists());
}
