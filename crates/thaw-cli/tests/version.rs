//! `thaw --version`: the version, the commit it was built from, the snapshot format it
//! writes and the QEMU it would run (null when none), as text or `--json`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Runs `thaw ARGS` with `env` set; asserts exit 0 and nothing on stderr.
fn thaw(args: &[&str], env: &[(&str, &Path)]) -> String {
    let mut c = Command::new(common::THAW);
    c.args(args).env_remove("THAW_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run thaw");
    assert!(out.status.success(), "thaw {args:?}: {out:?}");
    assert!(
        out.stderr.is_empty(),
        "thaw {args:?} wrote to stderr: {out:?}"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str], env: &[(&str, &Path)]) -> Value {
    let text = thaw(args, env);
    assert_eq!(text.lines().count(), 1, "one JSON line: {text:?}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The commit this checkout's HEAD is (what the build script saw), or `$THAW_COMMIT`
/// when the build was given one (cargo test passes its environment to the build).
fn expected_commit() -> String {
    if let Some(c) = std::env::var("THAW_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return c.trim().to_owned();
    }
    let out = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .expect("run git");
    assert!(out.status.success(), "git rev-parse: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `qemu-system-x86_64` on PATH and the version its `--version` prints.
fn system_qemu() -> (PathBuf, String) {
    let path = std::env::var_os("PATH").unwrap();
    let binary = std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .expect("qemu-system-x86_64 on PATH (scripts/setup.sh)");
    let out = Command::new(&binary).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let version = text
        .split("version ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a version in qemu --version")
        .to_owned();
    (binary, version)
}

#[test]
fn version_names_build_format_and_qemu() {
    let cache = tempfile::tempdir().unwrap();
    let env: &[(&str, &Path)] = &[("THAW_CACHE", cache.path())];
    let format = thaw::snapshot::FORMAT_VERSION;
    let format = format!("{}.{}", format.major, format.minor);
    let (qemu, qemu_version) = system_qemu();

    let doc = json(&["--version", "--json"], env);
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["commit", "qemu", "snapshot_format", "version"],
        "{doc}"
    );
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(doc["commit"], expected_commit());
    assert_eq!(doc["snapshot_format"], format);
    assert_eq!(doc["qemu"]["binary"], qemu.to_str().unwrap());
    assert_eq!(doc["qemu"]["version"], qemu_version);
    // The flags in either order, and -V.
    assert_eq!(json(&["--json", "--version"], env), doc);
    assert_eq!(json(&["--json", "-V"], env), doc);

    let text = thaw(&["--version"], env);
    assert_eq!(
        text,
        format!(
            "thaw {}\ncommit: {}\nsnapshot format: {format}\nqemu: {qemu_version} ({})\n",
            env!("CARGO_PKG_VERSION"),
            expected_commit(),
            qemu.display()
        )
    );
}

#[test]
fn version_reports_the_qemu_thaw_would_run() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // THAW_QEMU names another binary: that one is reported, with its version.
    let fake = dir.path().join("qemu-old");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'QEMU emulator version 8.2.1 (a test stand-in)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let doc = json(
        &["--version", "--json"],
        &[("THAW_CACHE", &cache), ("THAW_QEMU", &fake)],
    );
    assert_eq!(doc["qemu"]["binary"], fake.to_str().unwrap());
    assert_eq!(doc["qemu"]["version"], "8.2.1");

    // No QEMU at all: still exit 0, `qemu` is null, the text says why.
    let missing = dir.path().join("no-such-qemu");
    let env: &[(&str, &Path)] = &[("THAW_CACHE", &cache), ("THAW_QEMU", &missing)];
    let doc = json(&["--version", "--json"], env);
    assert_eq!(doc["qemu"], Value::Null, "{doc}");
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    let text = thaw(&["--version"], env);
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("qemu: none (") && last.contains("not found"),
        "{text}"
    );
}
