//! `thaw completions bash|zsh|fish` prints a completion script naming the subcommands
//! (bash's parses with `bash -n`); the hidden `thaw man DIR` writes thaw.1 and one page
//! per subcommand. scripts/package.sh installs both.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use common::THAW;

fn thaw(args: &[&str]) -> Output {
    Command::new(THAW)
        .args(args)
        .env_remove("THAW_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run thaw")
}

/// Some of the subcommands every script must know (`completions` too).
const SUBCOMMANDS: &[&str] = &[
    "boot",
    "exec",
    "snapshot",
    "restore",
    "reset",
    "stop",
    "guest",
    "serve",
    "completions",
];

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = thaw(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(out.stderr.is_empty(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "the {shell} script lacks {sub}");
        }
        // The hidden `man` is not offered.
        assert!(
            !script.contains("thaw__man"),
            "{shell} offers the hidden man"
        );
        // --json wraps the same script.
        let doc: serde_json::Value =
            serde_json::from_slice(&thaw(&["completions", shell, "--json"]).stdout).unwrap();
        assert_eq!(doc["shell"], shell);
        assert_eq!(doc["script"], script.as_str());
        if shell == "bash" {
            let check = Command::new("bash")
                .args(["-n", "-c", &script])
                .output()
                .expect("run bash -n");
            assert!(check.status.success(), "bash -n: {check:?}");
            assert!(script.contains("complete -F _thaw"), "no complete line");
        }
    }
    let bad = thaw(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stdout.is_empty());
    let err = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
}

#[test]
fn man_writes_a_page_per_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man/man1");
    let out = thaw(&["man", dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = doc["pages"].as_array().unwrap().len();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), listed, "{names:?}");
    for page in [
        "thaw.1",
        "thaw-boot.1",
        "thaw-guest-build.1",
        "thaw-store-verify.1",
    ] {
        assert!(names.iter().any(|n| n == page), "no {page} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n == "thaw-man.1"),
        "the hidden man has a page"
    );
    for name in &names {
        let path = dir.join(name);
        let roff = std::fs::read_to_string(&path).unwrap();
        let title = name.trim_end_matches(".1");
        assert!(
            roff.lines()
                .any(|l| l.starts_with(&format!(".TH {title} 1"))),
            "{name} has no .TH {title} 1"
        );
        assert!(roff.contains(".SH NAME"), "{name} has no NAME section");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{name}");
    }
    let top = std::fs::read_to_string(dir.join("thaw.1")).unwrap();
    for sub in SUBCOMMANDS {
        assert!(
            top.contains(&format!("thaw\\-{sub}(1)")),
            "thaw.1 does not name {sub}"
        );
    }
    // A second run replaces the pages (same names), and a directory that cannot be
    // made fails in one line.
    assert!(thaw(&["man", dir.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), names.len());
    let file = tmp.path().join("file");
    std::fs::write(&file, "").unwrap();
    let bad = thaw(&["man", file.join("x").to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("could not create"), "{err}");
}
