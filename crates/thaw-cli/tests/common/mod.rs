//! Harness for end-to-end tests: the real `thaw` binary, real QEMU, the real default
//! guest, each test in its own `$THAW_HOME`. The default guest is built once (the
//! binary serialises concurrent builds with a lock) into the shared cache.

#![allow(dead_code)]

pub mod chaos;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const THAW: &str = env!("CARGO_BIN_EXE_thaw");

static GUEST: Once = Once::new();

/// A test's private thaw home. Dropping it stops every VM it still has.
pub struct Env {
    pub home: tempfile::TempDir,
    extra: Vec<(String, String)>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Runs `command` (stdin closed) and keeps its exit code and output.
    pub fn of(mut command: Command) -> Run {
        let out: Output = command.stdin(Stdio::null()).output().expect("run thaw");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", self.stdout))
    }

    /// Asserts failure with exactly one line on stderr mentioning `needle`.
    pub fn fails_with(&self, needle: &str) {
        assert_ne!(
            self.code, 0,
            "expected failure, got success: {}",
            self.stdout
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr, got: {:?}",
            self.stderr
        );
        assert!(
            lines[0].contains(needle),
            "stderr {:?} does not mention {needle:?}",
            lines[0]
        );
    }
}

impl Env {
    pub fn new() -> Env {
        GUEST.call_once(|| {
            let out = Command::new(THAW)
                .args(["guest", "build"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()
                .expect("run thaw guest build");
            assert!(
                out.success(),
                "building the default guest failed (run scripts/setup.sh)"
            );
        });
        Env {
            home: tempfile::Builder::new()
                .prefix("thaw-e2e-")
                .tempdir()
                .unwrap(),
            extra: Vec::new(),
        }
    }

    pub fn with_env(mut self, k: &str, v: &str) -> Env {
        self.extra.push((k.into(), v.into()));
        self
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(THAW);
        c.args(args)
            .env("THAW_HOME", self.path())
            .env_remove("THAW_LOG");
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::of(self.command(args))
    }

    /// Runs and asserts success.
    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.run(args);
        assert_eq!(r.code, 0, "thaw {args:?} failed: {}{}", r.stderr, r.stdout);
        r
    }

    /// Runs with --json, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        self.ok(&a).json()
    }

    /// A bench works in a private home under `$THAW_HOME` and removes it with
    /// everything it started: no QEMU runs and no `bench-*` directory is left.
    pub fn assert_no_bench_leftovers(&self) {
        assert!(self.processes().is_empty(), "bench left QEMU running");
        let left: Vec<String> = dir_names(self.path())
            .into_iter()
            .filter(|n| n.starts_with("bench-"))
            .collect();
        assert!(left.is_empty(), "bench left {left:?}");
    }

    /// Runs a shell command in the guest and returns its stdout.
    pub fn sh(&self, vm: &str, script: &str) -> String {
        let r = self.ok(&["exec", vm, "--", "/bin/sh", "-c", script]);
        r.stdout
    }

    pub fn boot(&self, name: &str, extra: &[&str]) -> Value {
        let mut a = vec!["boot", name];
        a.extend_from_slice(extra);
        self.json(&a)
    }

    /// Whether `thaw snapshots` lists `tag`.
    pub fn listed(&self, tag: &str) -> bool {
        self.json(&["snapshots"])
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["tag"] == tag)
    }

    /// Whether `tag` is listed with its directory here (not only in the store).
    pub fn listed_locally(&self, tag: &str) -> bool {
        self.json(&["snapshots"])
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["tag"] == tag && s["local"] != false)
    }

    /// The VM's state as `thaw ls` gives it, or "absent".
    pub fn state_of(&self, vm: &str) -> String {
        self.json(&["ls"])
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vm)
            .map(|v| v["state"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| "absent".into())
    }

    /// Pids of processes (QEMU) whose command line mentions this home.
    pub fn processes(&self) -> Vec<u32> {
        processes_mentioning(self.path())
    }

    /// Names under `$THAW_HOME/snapshots` (including temporary ones).
    pub fn snapshot_dirs(&self) -> Vec<String> {
        dir_names(&self.path().join("snapshots"))
    }

    pub fn vm_dirs(&self) -> Vec<String> {
        dir_names(&self.path().join("vms"))
    }
}

/// Sorted names of a directory's entries (none if it does not exist).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.command(&["stop", "--all"]).output();
        for pid in self.processes() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        end_lazy_server(self.path());
    }
}

/// Ends the lazy snapshot server of the home at `home`, if one runs, and detaches its
/// mount (it would otherwise go idle and exit by itself, after the home is removed).
pub fn end_lazy_server(home: &Path) {
    thaw::lazy::stop_server(&thaw::Home::new(home));
}

/// Whether the lazy server's mount of the home at `home` is there (in this mount
/// namespace).
pub fn lazy_mounted(home: &Path) -> bool {
    let mnt = home.join("lazy/mnt");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == mnt)
}

/// Starts the lazy server of `env`'s home unless it runs (as a restore would: a
/// snapshot kept once is read through it), and waits until its mount is there.
pub fn ensure_lazy_server(env: &Env) {
    if lazy_mounted(env.path()) {
        return;
    }
    let mut server = env
        .command(&["lazyfs"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start thaw lazyfs");
    // It runs until idle (or the Env's drop ends it); reaped when it ends.
    std::thread::spawn(move || server.wait());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !lazy_mounted(env.path()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the lazy server did not mount within 15 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_thaw_cli = cmd.starts_with(THAW.as_bytes());
            !zombie && !is_thaw_cli && cmd.windows(needle.len()).any(|w| w == needle.as_slice())
        })
        .collect()
}

pub fn host_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts the guest's clock is within 2 s of the host's.
pub fn assert_clock_close(env: &Env, vm: &str) {
    let before = host_now();
    let guest: u64 = env
        .sh(vm, "date +%s")
        .trim()
        .parse()
        .expect("date +%s prints a number");
    let after = host_now();
    assert!(
        guest + 2 >= before && guest <= after + 2,
        "{vm}: guest clock {guest} not within 2 s of host [{before}, {after}]"
    );
}

pub fn home_file(env: &Env, rel: &str) -> PathBuf {
    env.path().join(rel)
}

/// The host port forwarded to `guest` in a VM's JSON (`ports`).
pub fn host_port(vm: &Value, guest: u16) -> u16 {
    vm["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["guest"] == guest)
        .unwrap_or_else(|| panic!("no forward for guest port {guest}: {vm}"))["host"]
        .as_u64()
        .unwrap() as u16
}

/// The names in a list of clone reports.
pub fn names(clones: &Value) -> Vec<String> {
    clones
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A fresh 64 MiB ext4 image `name` in `dir`.
pub fn ext4_image(dir: &Path, name: &str) -> PathBuf {
    let base = dir.join(name);
    std::fs::File::create(&base)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&base)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "mkfs.ext4 (e2fsprogs, scripts/setup.sh --images) failed"
    );
    base
}
