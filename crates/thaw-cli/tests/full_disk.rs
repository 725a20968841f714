//! Full and read-only disks: `$THAW_HOME` on a small tmpfs that runs out of space
//! during a snapshot (at many points: while QEMU writes the RAM, while the store takes
//! the chunks, while the record is written), while a snapshot is written out from the
//! store, and during a pull; and remounted read-only. Each failure is one line; no
//! snapshot is listed or left half-written, the store verifies, the VM keeps running,
//! and the same command succeeds once there is room.
//!
//! A booted VM's RAM is a shared file in its directory: on a full filesystem, a guest
//! touching a page for the first time gets SIGBUS. The VM here has its RAM file
//! allocated up front (fallocate), so that what is tested is thaw, not that.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::s3::S3Server;
use common::Env;
use serde_json::Value;

/// A tmpfs mounted on a directory for the test's life; unmounted on drop (also when
/// the test panics).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test mounts a tmpfs: run it as root"
        );
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs on {} failed", dir.display());
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "remount {opts} of {} failed",
            self.dir.display()
        );
    }

    /// Bytes free.
    fn free(&self) -> u64 {
        let s = rustix::fs::statvfs(&self.dir).unwrap();
        s.f_bavail * s.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for pid in common::processes_mentioning(&self.dir) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A thaw home on its own tmpfs. Fields drop in order: the VMs end, then the tmpfs
/// is unmounted.
struct DiskEnv {
    env: Env,
    fs: Tmpfs,
    ballast: PathBuf,
}

impl DiskEnv {
    fn new(size: &str) -> DiskEnv {
        let env = Env::new();
        let fs = Tmpfs::mount(env.path(), size);
        let ballast = env.path().join("ballast");
        DiskEnv { env, fs, ballast }
    }

    /// Leaves `bytes` free on the tmpfs by allocating the rest to a ballast file.
    fn leave_free(&self, bytes: u64) {
        self.clear_ballast();
        let take = self.fs.free().saturating_sub(bytes);
        if take > 0 {
            let st = Command::new("fallocate")
                .args(["-l", &take.to_string()])
                .arg(&self.ballast)
                .status()
                .unwrap();
            assert!(st.success());
        }
    }

    fn clear_ballast(&self) {
        let _ = std::fs::remove_file(&self.ballast);
    }
}

/// Every temporary file or directory under `dir` (thaw's `.tmp-*`, `.<name>.tmp-*`).
fn temp_entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") || name.contains(".tmp-") {
                out.push(e.path().display().to_string());
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// Asserts a failure was one line saying the disk is full (or read-only).
fn one_line_about(r: &common::Run, what: &str, words: &[&str]) {
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        r.code != 0
            && lines.len() == 1
            && words.iter().any(|w| lines[0].to_lowercase().contains(w)),
        "{what}: want one line about {words:?}, got {} {:?}",
        r.code,
        r.stderr
    );
}

const FULL: &[&str] = &["no space left", "is full"];
const READ_ONLY: &[&str] = &["read-only file system"];

/// Boots the test VM with its RAM file allocated, so the guest never needs new space.
fn boot_preallocated(d: &DiskEnv) {
    d.env.boot("vm", &["--memory", "128"]);
    let ram = d.env.path().join("vms/vm/ram");
    let st = Command::new("fallocate")
        .args(["-l", &(128u64 << 20).to_string()])
        .arg(&ram)
        .status()
        .unwrap();
    assert!(st.success());
    d.env.sh("vm", "echo marker > /tmp/m");
}

/// Bytes a home's snapshots and store take (allocated).
fn used_by(env: &Env, tag: &str) -> u64 {
    let du = |p: PathBuf| {
        let out = Command::new("du").args(["-sb"]).arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    du(env.path().join("snapshots").join(tag)) + du(env.path().join("store"))
}

#[test]
fn a_full_disk_during_snapshot_restore_and_pull_leaves_nothing_half_written() {
    let d = DiskEnv::new("600m");
    let env = &d.env;
    boot_preallocated(&d);
    // How much a snapshot needs here, measured; then taken away again.
    let before = d.fs.free();
    env.json(&["snapshot", "vm", "probe"]);
    let need = before - d.fs.free();
    println!(
        "a snapshot of this VM takes {need} bytes ({} in snapshots/ and store/)",
        used_by(env, "probe")
    );
    env.ok(&["rm", "probe"]);
    env.json(&["gc"]);

    // Out of space at 6 points of the snapshot, from its first byte (QEMU writing the
    // RAM) to its last (the store taking the chunks).
    let mut tried = 0;
    let mut failed = 0;
    for (k, sixteenths) in [0u64, 4, 8, 12, 14, 15].into_iter().enumerate() {
        let free = need * sixteenths / 16 + 4096;
        let tag = format!("f{k}");
        d.leave_free(free);
        let r = env.run(&["snapshot", "vm", &tag]);
        tried += 1;
        if r.code == 0 {
            println!("  {free} bytes free: snapshot fit");
            env.ok(&["rm", &tag]);
        } else {
            failed += 1;
            one_line_about(&r, &format!("snapshot with {free} bytes free"), FULL);
            println!("  {free} bytes free: {}", r.stderr.trim());
            assert!(
                !env.listed(&tag),
                "a failed snapshot is listed ({free} free)"
            );
            assert!(
                !d.env
                    .path()
                    .join("store/manifests")
                    .join(format!("{tag}.json"))
                    .exists(),
                "a failed snapshot has a store record ({free} free)"
            );
            let temps = temp_entries(env.path());
            assert!(
                temps.is_empty(),
                "half-written files ({free} free): {temps:?}"
            );
        }
        d.clear_ballast();
        env.ok(&["store", "verify"]);
        assert_eq!(env.state_of("vm"), "running", "{free} bytes free");
        assert_eq!(env.sh("vm", "cat /tmp/m"), "marker\n");
        env.json(&["gc"]);
    }
    assert!(
        failed >= 6,
        "only {failed} of {tried} snapshots ran out of space"
    );
    // With room again, the same snapshot succeeds and restores.
    env.json(&["snapshot", "vm", "s"]);
    let c = env.json(&["restore", "s", "--name", "c"]);
    assert_eq!(
        env.sh(c[0]["name"].as_str().unwrap(), "cat /tmp/m"),
        "marker\n"
    );
    env.ok(&["stop", "c"]);

    // Written out from the store (after an evict; THAW_LAZY=off, else it is served
    // lazily, with nothing to write) with no room: refused, retried.
    env.json(&["store", "evict", "s"]);
    for free in [4096, need / 2] {
        d.leave_free(free);
        let mut restore = env.command(&["restore", "s", "--name", "c"]);
        restore.env("THAW_LAZY", "off");
        let r = common::Run::of(restore);
        one_line_about(&r, &format!("materialize with {free} free"), FULL);
        d.clear_ballast();
        // Still in the store only: listed as such, with no directory written out.
        assert!(env.listed("s") && !env.listed_locally("s"));
        assert!(env.vm_dirs() == ["vm"], "{:?}", env.vm_dirs());
        assert!(
            temp_entries(env.path()).is_empty(),
            "{:?}",
            temp_entries(env.path())
        );
        env.ok(&["store", "verify"]);
        tried += 1;
        failed += 1;
    }
    let c = env.json(&["restore", "s", "--name", "c"]);
    assert_eq!(
        env.sh(c[0]["name"].as_str().unwrap(), "cat /tmp/m"),
        "marker\n"
    );
    env.ok(&["stop", "c"]);

    // A pull with no room: refused, nothing listed, the store verifies; the retry
    // fetches the rest.
    let server = S3Server::start();
    let remote = "s3://thaw/full";
    // Written out as well (THAW_LAZY=off): a pull served lazily needs room for the
    // chunks alone, so half of what this snapshot needs would not run out.
    let with_s3 = |args: &[&str]| {
        let mut c = env.command(args);
        for (k, v) in server.env() {
            c.env(k, v);
        }
        c.env("THAW_LAZY", "off");
        common::Run::of(c)
    };
    assert_eq!(with_s3(&["push", "s", remote]).code, 0);
    env.ok(&["rm", "s"]);
    env.json(&["gc"]);
    for free in [4096, need / 2] {
        d.leave_free(free);
        let r = with_s3(&["pull", "s", remote]);
        one_line_about(&r, &format!("pull with {free} free"), FULL);
        d.clear_ballast();
        assert!(!env.listed("s"));
        assert!(
            temp_entries(env.path()).is_empty(),
            "{:?}",
            temp_entries(env.path())
        );
        env.ok(&["store", "verify"]);
        tried += 1;
        failed += 1;
    }
    let r = with_s3(&["pull", "s", remote, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pulled: Value = r.json();
    println!("the retried pull fetched {} chunks", pulled["chunks_moved"]);
    let c = env.json(&["restore", "s", "--name", "c"]);
    assert_eq!(
        env.sh(c[0]["name"].as_str().unwrap(), "cat /tmp/m"),
        "marker\n"
    );
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
    println!("full disk: {tried} operations tried, {failed} ran out of space, each refused with one line, nothing half-written");
}

/// A store record that cannot be written (here: its name is taken by a directory)
/// after the snapshot's directory was published: the snapshot failed but stayed
/// listed. It is now taken back.
#[test]
fn a_snapshot_whose_store_record_cannot_be_written_is_not_listed() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    std::fs::create_dir_all(env.path().join("store/manifests/t.json/in-the-way")).unwrap();
    let r = env.run(&["snapshot", "vm", "t"]);
    assert_ne!(r.code, 0, "the snapshot succeeded: {}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{:?}", r.stderr);
    assert!(lines[0].contains("t.json"), "{}", lines[0]);
    assert!(!env.listed("t"), "a failed snapshot is listed");
    assert!(!env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")));
    assert_eq!(env.state_of("vm"), "running");
    std::fs::remove_dir_all(env.path().join("store/manifests/t.json")).unwrap();
    env.json(&["snapshot", "vm", "t"]);
    assert!(env.listed("t"));
    env.ok(&["stop", "--all"]);
}

/// `$THAW_HOME` remounted read-only while a VM runs (its directory is on another,
/// writable mount: a shared RAM file keeps a filesystem from going read-only).
#[test]
fn a_read_only_home_refuses_writes_with_one_line_and_the_vm_keeps_running() {
    let d = DiskEnv::new("600m");
    let env = &d.env;
    // vms/ on its own tmpfs, mounted inside the home.
    let vms = env.path().join("vms");
    std::fs::create_dir(&vms).unwrap();
    let _vms = Tmpfs::mount(&vms, "300m");
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");
    // Pinned: a snapshot kept once (the default) is read through the lazy server, which
    // cannot start in a read-only home (it writes its pid); "evicted" is that case.
    env.json(&["snapshot", "vm", "s", "--pin"]);
    env.json(&["snapshot", "vm", "evicted"]);
    env.json(&["store", "evict", "evicted"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.thaw");
    env.json(&["export", "s", file.to_str().unwrap()]);
    let snaps_before = env.json(&["snapshots"]);

    d.fs.remount("ro");
    let mut tried = 0;
    for args in [
        vec!["snapshot", "vm", "t"],
        vec!["restore", "evicted"],
        // -r: "evicted" (in the store only) is a child of s.
        vec!["rm", "-r", "s"],
        vec!["gc"],
        vec!["import", file.to_str().unwrap()],
    ] {
        let r = env.run(&args);
        one_line_about(&r, &format!("{args:?} on a read-only home"), READ_ONLY);
        println!("  {args:?}: {}", r.stderr.trim());
        assert_eq!(env.state_of("vm"), "running", "{args:?}");
        tried += 1;
    }
    // Reading still works: listings, verify, and a restore of a snapshot that is there
    // (its clone lives in vms/, which is writable).
    assert_eq!(env.json(&["snapshots"]), snaps_before);
    env.ok(&["store", "verify"]);
    let c = env.json(&["restore", "s", "--name", "c"]);
    assert_eq!(
        env.sh(c[0]["name"].as_str().unwrap(), "cat /tmp/m"),
        "marker\n"
    );
    assert_eq!(env.sh("vm", "cat /tmp/m"), "marker\n");
    d.fs.remount("rw");
    assert!(
        temp_entries(env.path()).is_empty(),
        "{:?}",
        temp_entries(env.path())
    );
    env.json(&["snapshot", "vm", "t"]);
    env.json(&["restore", "evicted", "--name", "e"]);
    env.ok(&["stop", "--all"]);
    println!("read-only home: {tried} writes tried, {tried} refused with one line");
}
