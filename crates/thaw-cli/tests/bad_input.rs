//! Every bad input gets a non-zero exit and one clear line naming the problem; no QEMU
//! is left running and no snapshot directory is left half-written.

mod common;

use std::path::Path;

use common::Env;

/// Copies a snapshot directory, keeping its RAM image sparse.
fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .args(["-r", "--sparse=always"])
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp {} {}", from.display(), to.display());
}

/// A manifest edited by a test, with its checksum made right again.
fn reseal(mut m: serde_json::Value) -> Vec<u8> {
    m["checksum"] = thaw::snapshot::manifest_checksum(&m).into();
    serde_json::to_vec_pretty(&m).unwrap()
}

/// Checks the invariants after a refused command: the same QEMU processes as before,
/// no temporary snapshot directories.
fn assert_clean(env: &Env, qemus_before: &[u32]) {
    let mut now = env.processes();
    now.sort();
    let mut before = qemus_before.to_vec();
    before.sort();
    assert_eq!(now, before, "QEMU processes changed");
    for d in env.snapshot_dirs() {
        assert!(!d.starts_with(".tmp"), "half-written snapshot left: {d}");
    }
}

#[test]
fn bad_names_unknown_things_and_broken_snapshots_are_refused() {
    let env = Env::new();
    env.boot("vm", &[]);
    // Pinned: the broken copies below edit its plain files.
    env.json(&["snapshot", "vm", "good", "--pin"]);
    let qemus = env.processes();
    assert_eq!(qemus.len(), 1);

    // Unknown tag, unknown VM.
    env.run(&["restore", "nope"])
        .fails_with("no snapshot tagged nope");
    assert_clean(&env, &qemus);
    env.run(&["exec", "ghost", "--", "true"])
        .fails_with("no VM named ghost");
    env.run(&["snapshot", "ghost", "t"])
        .fails_with("no VM named ghost");
    env.run(&["stop", "ghost"]).fails_with("no VM named ghost");
    env.run(&["logs", "ghost"]).fails_with("no VM named ghost");
    env.run(&["rm", "nope"])
        .fails_with("no snapshot tagged nope");

    // Duplicate names: boot, restore, snapshot tag.
    env.run(&["boot", "vm"])
        .fails_with("a VM named vm already exists");
    env.run(&["restore", "good", "--name", "vm"])
        .fails_with("a VM named vm already exists");
    env.run(&["snapshot", "vm", "good"])
        .fails_with("a snapshot tagged good already exists");
    assert_clean(&env, &qemus);

    // Names with '/' or '..', for every kind of name.
    env.run(&["boot", "a/b"])
        .fails_with("invalid VM name \"a/b\": it contains '/'");
    env.run(&["boot", ".."]).fails_with("it contains '..'");
    env.run(&["snapshot", "vm", "../x"])
        .fails_with("invalid snapshot tag");
    env.run(&["restore", "good", "--name", "x/..", "--json"])
        .fails_with("invalid VM name");
    env.run(&["restore", "../../etc"])
        .fails_with("invalid snapshot tag");
    assert!(
        !env.path().join("x").exists()
            && !env
                .path()
                .parent()
                .unwrap()
                .join("etc")
                .join("manifest.json")
                .exists()
    );

    // Broken snapshots: each a copy of the good one with one defect.
    let snaps = env.path().join("snapshots");
    let good = snaps.join("good");
    copy_dir(&good, &snaps.join("corrupt-manifest"));
    std::fs::write(
        snaps.join("corrupt-manifest/manifest.json"),
        b"{\"format\": \"thaw-snapshot\", \"vers",
    )
    .unwrap();
    env.run(&["restore", "corrupt-manifest"])
        .fails_with("manifest is corrupt");

    copy_dir(&good, &snaps.join("no-manifest"));
    std::fs::remove_file(snaps.join("no-manifest/manifest.json")).unwrap();
    env.run(&["restore", "no-manifest"])
        .fails_with("manifest is missing");

    // The good snapshot is of a running VM: one mapped-ram file, "memory".
    let manifest = std::fs::read_to_string(snaps.join("good/manifest.json")).unwrap();
    // An edited manifest gets its checksum again: these cases are about one defect
    // each, not about the checksum (corrupt.rs is).
    let retag = |to: &str| {
        reseal(
            serde_json::from_str(
                &manifest.replace("\"tag\": \"good\"", &format!("\"tag\": \"{to}\"")),
            )
            .unwrap(),
        )
    };
    copy_dir(&good, &snaps.join("truncated"));
    let memory = snaps.join("truncated/memory");
    let len = std::fs::metadata(&memory).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&memory)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    std::fs::write(snaps.join("truncated/manifest.json"), retag("truncated")).unwrap();
    env.run(&["restore", "truncated"])
        .fails_with("snapshot truncated: memory is");

    // One flipped byte in the device state (at the end of the file).
    copy_dir(&good, &snaps.join("flipped"));
    let memory = snaps.join("flipped/memory");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&memory)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, len - 100).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], len - 100).unwrap();
    std::fs::write(snaps.join("flipped/manifest.json"), retag("flipped")).unwrap();
    env.run(&["restore", "flipped"])
        .fails_with("the device state in memory does not match its BLAKE3 hash");

    let mut wrong_ram: serde_json::Value = serde_json::from_slice(&retag("wrong-ram")).unwrap();
    wrong_ram["memory"]["len"] = (128u64 << 20).into();
    copy_dir(&good, &snaps.join("wrong-ram"));
    std::fs::write(snaps.join("wrong-ram/manifest.json"), reseal(wrong_ram)).unwrap();
    env.run(&["restore", "wrong-ram"])
        .fails_with("RAM image is 134217728 bytes, expected 268435456");

    let mut future: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    future["version"] = serde_json::json!({"major": 3, "minor": 0});
    future["tag"] = "future".into();
    copy_dir(&good, &snaps.join("future"));
    std::fs::write(
        snaps.join("future/manifest.json"),
        serde_json::to_vec(&future).unwrap(),
    )
    .unwrap();
    env.run(&["restore", "future"])
        .fails_with("format version 3.0 is not supported");

    let mut other_qemu: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    other_qemu["qemu_version"] = serde_json::json!({"major": 7, "minor": 2, "micro": 0});
    other_qemu["tag"] = "old-qemu".into();
    copy_dir(&good, &snaps.join("old-qemu"));
    std::fs::write(snaps.join("old-qemu/manifest.json"), reseal(other_qemu)).unwrap();
    env.run(&["restore", "old-qemu"])
        .fails_with("was taken with QEMU 7.2.0");
    env.run(&["restore", "good", "--accel", "kvm"])
        .fails_with("taken under tcg");
    assert_clean(&env, &qemus);
    assert!(
        env.vm_dirs() == ["vm"],
        "restores that failed left VM state: {:?}",
        env.vm_dirs()
    );

    // Missing kernel; QEMU binary not found.
    env.run(&[
        "boot",
        "k",
        "--kernel",
        "/nonexistent/vmlinuz",
        "--initrd",
        "/nonexistent/initrd",
    ])
    .fails_with("kernel /nonexistent/vmlinuz not found");
    let no_qemu = Env::new().with_env("THAW_QEMU", "/nonexistent/qemu-system-x86_64");
    no_qemu
        .run(&["boot", "q"])
        .fails_with("QEMU binary /nonexistent/qemu-system-x86_64 not found");
    let no_qemu_for_restore = Env::new().with_env("THAW_QEMU", "qemu-system-none");
    no_qemu_for_restore
        .run(&["restore", "good"])
        .fails_with("QEMU binary qemu-system-none not found");
    assert_clean(&env, &qemus);
    assert!(env.vm_dirs() == ["vm"], "{:?}", env.vm_dirs());

    // A VM whose QEMU is gone: snapshot is refused and says so; stop cleans up.
    for pid in &qemus {
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    for _ in 0..200 {
        if env.processes().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    env.run(&["snapshot", "vm", "late"])
        .fails_with("VM vm is not running");
    env.run(&["exec", "vm", "--", "true"])
        .fails_with("VM vm is not running");
    let ls = env.json(&["ls"]);
    assert_eq!(ls[0]["state"], "dead", "{ls}");
    assert_clean(&env, &[]);
    env.ok(&["stop", "vm"]);
    assert!(env.vm_dirs().is_empty());
}

/// The JSON error document: `--json` failures still print exactly one JSON document.
#[test]
fn json_errors_are_one_document() {
    let env = Env::new();
    let r = env.run(&["restore", "nope", "--json"]);
    assert_ne!(r.code, 0);
    let v = r.json();
    assert_eq!(v["error"], "no snapshot tagged nope");
}

/// Disks and ports: a missing disk, a format that does not match, a host port in use,
/// a snapshot whose base disk changed. Each one line, nothing running, no stray overlay.
#[test]
fn bad_disks_and_ports_are_refused() {
    let env = Env::new();
    let img = tempfile::tempdir().unwrap();
    let base = img.path().join("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let base_s = base.to_str().unwrap().to_owned();
    let qcow = img.path().join("base.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "32M"])
        .status()
        .unwrap();
    assert!(st.success());

    env.run(&["boot", "a", "--disk", "/nonexistent/disk.img"])
        .fails_with("disk image /nonexistent/disk.img not found");
    env.run(&["boot", "a", "--disk", &format!("{base_s},format=qcow2")])
        .fails_with("is raw, not qcow2");
    env.run(&[
        "boot",
        "a",
        "--disk",
        &format!("{},format=raw", qcow.display()),
    ])
    .fails_with("is qcow2, not raw");
    env.run(&["boot", "a", "--disk", &format!("{base_s},format=vmdk")])
        .fails_with("unknown disk format");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    env.run(&["boot", "a", "--port", &format!("{port}:22")])
        .fails_with(&format!("host port {port} is already in use"));
    env.run(&["boot", "a", "--port", "22"])
        .fails_with("is not HOSTPORT:GUESTPORT");
    assert!(env.processes().is_empty());
    assert!(
        env.vm_dirs().is_empty(),
        "stray VM state: {:?}",
        env.vm_dirs()
    );
    let stray: Vec<_> = std::fs::read_dir(img.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(stray.len(), 2, "stray files beside the images: {stray:?}");

    // A snapshot whose base disk changed afterwards.
    env.boot("a", &["--profile", "default", "--disk", &base_s]);
    env.json(&["snapshot", "a", "s", "--stop"]);
    let hash_before = std::fs::read(&base).unwrap();
    env.json(&["restore", "s", "--name", "ok"]);
    env.ok(&["stop", "ok"]);
    assert_eq!(
        std::fs::read(&base).unwrap(),
        hash_before,
        "the base image was written"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&base)
        .and_then(|f| {
            use std::os::unix::fs::FileExt;
            f.write_at(b"changed", 4096)
        })
        .unwrap();
    // Make sure the mtime moves even on coarse-timestamp filesystems.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&base)
        .unwrap()
        .set_modified(later)
        .unwrap();
    env.run(&["restore", "s"]).fails_with("base disk");
    assert!(env.processes().is_empty());
    assert!(
        env.vm_dirs().is_empty(),
        "stray clone state: {:?}",
        env.vm_dirs()
    );
}

/// A reader that goes away (`thaw ... --json | grep -q`) is not an error of thaw's:
/// it ends quietly, without a panic about printing to stdout.
#[test]
fn a_closed_stdout_ends_thaw_quietly() {
    let env = Env::new();
    for args in [&["ls", "--json"][..], &["snapshots", "--json"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = env
            .command(args)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

/// A missing argument is named on the one line, not only in clap's usage text.
#[test]
fn a_missing_argument_is_named() {
    let env = Env::new();
    env.run(&["restore"])
        .fails_with("required arguments were not provided: <TAG> (see --help)");
    env.run(&["bench", "--tb-size", "8"])
        .fails_with("required arguments were not provided: --density <N>");
}
