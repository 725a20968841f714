//! `thaw bench` runs the `thaw-bench` binary found next to `thaw` (else on PATH) with
//! every argument as given: the benchmark is not linked into the CLI. These tests put
//! a copy of the real `thaw` (a hard link: `thaw` finds its neighbours through
//! /proc/self/exe) in a directory of their own, with a stand-in `thaw-bench` or none.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::THAW;

/// A directory holding `thaw` and, if `bench` is given, a `thaw-bench` script.
fn install(bench: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("thaw-bench-exec-")
        .tempdir()
        .unwrap();
    let thaw = dir.path().join("thaw");
    if std::fs::hard_link(THAW, &thaw).is_err() {
        std::fs::copy(THAW, &thaw).unwrap();
    }
    if let Some(script) = bench {
        let b = dir.path().join("thaw-bench");
        std::fs::write(&b, script).unwrap();
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir, thaw)
}

fn run(thaw: &Path, args: &[&str], path: &Path) -> Output {
    Command::new(thaw)
        .args(args)
        .env("PATH", path)
        .env("THAW_NO_DAEMON", "1")
        .output()
        .unwrap()
}

#[test]
fn bench_execs_thaw_bench_beside_thaw_with_every_argument() {
    // Prints how it was called, one argument a line, and exits 7.
    let (dir, thaw) = install(Some(
        "#!/bin/sh\necho \"0=$0\"\nfor a in \"$@\"; do echo \"$a\"; done\nexit 7\n",
    ));
    let empty = tempfile::tempdir().unwrap();
    let out = run(
        &thaw,
        &[
            "--json",
            "bench",
            "--runs",
            "3",
            "--memory=512",
            "-x",
            "--help",
            "two words",
        ],
        empty.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "the benchmark's exit status: {out:?}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[1..],
        [
            "--json",
            "--runs",
            "3",
            "--memory=512",
            "-x",
            "--help",
            "two words"
        ],
        "{stdout}"
    );
    assert!(lines[0].starts_with("0="), "{stdout}");
    drop(dir);
}

#[test]
fn bench_says_one_line_when_thaw_bench_is_not_installed() {
    let (_dir, thaw) = install(None);
    let empty = tempfile::tempdir().unwrap();
    let out = run(&thaw, &["bench", "--runs", "1"], empty.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(
        lines[0].contains("thaw-bench") && lines[0].contains("install"),
        "{stderr}"
    );
}

#[test]
fn bench_finds_thaw_bench_on_path_when_none_is_beside_thaw() {
    let (_dir, thaw) = install(None);
    let bin = tempfile::tempdir().unwrap();
    let b = bin.path().join("thaw-bench");
    std::fs::write(&b, "#!/bin/sh\necho \"on PATH: $*\"\n").unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&thaw, &["bench", "--density", "2"], bin.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "on PATH: --density 2"
    );
}

/// The real benchmark answers `thaw bench --help` with its own options, under the
/// name the user typed.
#[test]
fn bench_help_is_the_benchmarks_own() {
    let out = Command::new(THAW)
        .args(["bench", "--help"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "thaw bench --help failed (cargo build -p thaw-bench builds the benchmark): {out:?}"
    );
    assert!(stdout.contains("Usage: thaw bench [OPTIONS]"), "{stdout}");
    for flag in [
        "--compare",
        "--density",
        "--chart-from",
        "--pool-mode",
        "--json",
    ] {
        assert!(stdout.contains(flag), "{flag}: {stdout}");
    }
}
