//! Snapshots and exports made by someone else: a layer whose qcow2 header names a host
//! file, crafted archives, two arrivals of one tag at once, refused imports, and two
//! snapshots racing for one tag. Each is refused with one line and leaves nothing
//! behind that thaw cannot list or remove.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::s3::S3Server;
use common::Env;
use serde_json::Value;

const REMOTE: &str = "s3://thaw/hostile";

/// Makes the qcow2 layer at `layer` name `target` as its backing file: the name is
/// written into the header cluster past qemu-img's extensions, and header bytes 8..20
/// (backing_file_offset, backing_file_size) point at it. The file's size is unchanged.
fn point_backing_at(layer: &Path, target: &str) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(layer)
        .unwrap();
    let len = f.metadata().unwrap().len();
    const AT: u64 = 4096;
    f.write_all_at(target.as_bytes(), AT).unwrap();
    f.write_all_at(&AT.to_be_bytes(), 8).unwrap();
    f.write_all_at(&(target.len() as u32).to_be_bytes(), 16)
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
}

/// Rewrites the snapshot's manifest so that it matches its (tampered) files again, as
/// someone crafting a snapshot would: every file hash and the manifest's checksum.
/// Then forgets the store's record, so export and push take the files as they are.
fn reseal(env: &Env, tag: &str) {
    let dir = env.path().join("snapshots").join(tag);
    let mpath = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let files: Vec<String> = m["files"].as_object().unwrap().keys().cloned().collect();
    for f in files {
        m["files"][&f]["blake3"] = thaw::fsutil::content_hash(&dir.join(&f), None)
            .unwrap()
            .into();
    }
    m.as_object_mut().unwrap().remove("checksum");
    m["checksum"] = thaw::snapshot::manifest_checksum(&m).into();
    std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    std::fs::remove_file(env.path().join(format!("store/manifests/{tag}.json"))).unwrap();
}

/// What the guest sees at the start of its disk, or the error of a restore that was
/// refused.
fn restore_and_read_disk(env: &Env, tag: &str, extra: &[&str]) -> Result<String, common::Run> {
    let mut args = vec!["restore", tag, "--name", "c"];
    args.extend_from_slice(extra);
    let r = env.run(&args);
    if r.code != 0 {
        return Err(r);
    }
    let seen = env.sh("c", "head -c 64 /dev/vda | tr -d '\\000'");
    env.ok(&["stop", "c"]);
    Ok(seen)
}

/// Asserts a home holds no snapshot, no record and a store that verifies.
fn assert_nothing_left(env: &Env) {
    assert!(env.snapshot_dirs().is_empty(), "{:?}", env.snapshot_dirs());
    let listed = env.json(&["snapshots"]);
    assert_eq!(listed, serde_json::json!([]), "{listed}");
    let records = common::dir_names(&env.path().join("store/manifests"));
    assert!(records.is_empty(), "records left: {records:?}");
    env.ok(&["store", "verify"]);
}

#[test]
fn a_layer_naming_a_host_file_is_refused_on_restore_import_and_pull() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("HOST-SECRET");
    std::fs::write(&secret, "HOST-SECRET-d0a1b2c3\n").unwrap();
    let base = outside.path().join("base.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    let server = S3Server::start();
    let mut a = Env::new();
    for (k, v) in server.env() {
        a = a.with_env(&k, &v);
    }
    a.boot(
        "vm",
        &["--profile", "default", "--disk", base.to_str().unwrap()],
    );
    // Pinned: the crafted snapshot is made of plain files (`reseal` hashes them).
    a.json(&["snapshot", "vm", "s", "--pin"]);
    a.ok(&["stop", "vm"]);
    let layer = a.path().join("snapshots/s/disks/d0.0.qcow2");
    point_backing_at(&layer, secret.to_str().unwrap());
    reseal(&a, "s");

    // Here, even with --verify: refused before QEMU starts, naming the layer.
    match restore_and_read_disk(&a, "s", &["--verify"]) {
        Ok(seen) => panic!("the clone read the host file through its disk: {seen:?}"),
        Err(r) => r.fails_with("disks/d0.0.qcow2"),
    }
    assert!(a.vm_dirs().is_empty(), "{:?}", a.vm_dirs());

    // Exported and imported into another home: refused at import, nothing left.
    let file = outside.path().join("s.thaw");
    a.json(&["export", "s", file.to_str().unwrap()]);
    let b = Env::new();
    let r = b.run(&["import", file.to_str().unwrap()]);
    if r.code == 0 {
        let seen = restore_and_read_disk(&b, "s", &["--verify"]);
        panic!(
            "the import was accepted; a restore gave {:?}",
            seen.map_err(|r| r.stderr)
        );
    }
    r.fails_with("disks/d0.0.qcow2");
    assert_nothing_left(&b);

    // Pushed and pulled: the same.
    a.json(&["push", "s", REMOTE]);
    let mut c = Env::new();
    for (k, v) in server.env() {
        c = c.with_env(&k, &v);
    }
    let r = c.run(&["pull", "s", REMOTE]);
    if r.code == 0 {
        let seen = restore_and_read_disk(&c, "s", &[]);
        panic!(
            "the pull was accepted; a restore gave {:?}",
            seen.map_err(|r| r.stderr)
        );
    }
    r.fails_with("disks/d0.0.qcow2");
    assert_nothing_left(&c);
    a.ok(&["stop", "--all"]);
}

/// A tar header block for an entry `name` of `size` bytes and type `kind`.
fn tar_header(name: &str, size: u64, kind: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Peak RSS in KiB and the result of running `thaw args` under /usr/bin/time.
fn peak_rss(env: &Env, args: &[&str]) -> (u64, common::Run) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let mut time_args = vec!["-f", "%M", "-o", out.path().to_str().unwrap(), common::THAW];
    time_args.extend_from_slice(args);
    let o = std::process::Command::new("/usr/bin/time")
        .args(&time_args)
        .env("THAW_HOME", env.path())
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/time (package time)");
    let kib = std::fs::read_to_string(out.path())
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let run = common::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    (kib, run)
}

#[test]
fn an_oversized_long_name_or_pax_entry_is_refused_in_little_memory() {
    const CLAIMED: u64 = 1 << 30;
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    // GNU long name, GNU long link name, PAX local and global headers.
    for kind in [b'L', b'K', b'x', b'g'] {
        // One pseudo-entry claiming 1 GiB, its data a hole, then a regular entry.
        let path = dir.path().join(format!("crafted-{}.thaw", kind as char));
        let f = std::fs::File::create(&path).unwrap();
        f.write_all_at(&tar_header("././@LongLink", CLAIMED, kind), 0)
            .unwrap();
        let next = 512 + CLAIMED;
        f.write_all_at(&tar_header("thaw-export.json", 2, b'0'), next)
            .unwrap();
        f.write_all_at(b"{}", next + 512).unwrap();
        f.set_len(next + 2048).unwrap();
        let (kib, r) = peak_rss(&env, &["import", path.to_str().unwrap()]);
        println!("type {}: peak RSS {kib} KiB", kind as char);
        r.fails_with("not a thaw export");
        assert!(
            r.stderr.len() < 512,
            "a long error line: {} bytes",
            r.stderr.len()
        );
        // The claimed entry is 1 GiB; reading it whole used 2.6 GB.
        assert!(
            kib * 1024 < CLAIMED / 8,
            "import of a {} MiB pseudo-entry peaked at {kib} KiB",
            CLAIMED >> 20
        );
        assert!(env.snapshot_dirs().is_empty());
    }
}

/// Boots a VM, writes `marker`, takes `tag`, exports it to `file`, and removes it.
fn export_with_marker(env: &Env, tag: &str, marker: &str, file: &Path) {
    env.sh("vm", &format!("echo {marker} > /tmp/marker"));
    env.json(&["snapshot", "vm", tag]);
    env.json(&["export", tag, file.to_str().unwrap()]);
    env.ok(&["rm", tag]);
}

/// Reads a tar archive's entries as (name, bytes) (thaw's exports: plain ustar).
fn read_tar(file: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(file).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at] != 0 {
        let h = &bytes[at..at + 512];
        let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let name = String::from_utf8(h[..name_end].to_vec()).unwrap();
        let size_text = std::str::from_utf8(&h[124..136]).unwrap();
        let size = u64::from_str_radix(size_text.trim_matches(['\0', ' ']), 8).unwrap() as usize;
        out.push((name, bytes[at + 512..at + 512 + size].to_vec()));
        at += 512 + size.div_ceil(512) * 512;
    }
    out
}

fn write_tar(file: &Path, entries: &[(String, Vec<u8>)]) {
    let mut out = Vec::new();
    for (name, data) in entries {
        out.extend_from_slice(&tar_header(name, data.len() as u64, b'0'));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    std::fs::write(file, out).unwrap();
}

/// The export at `from`, renamed to record `to` (its manifest still says its own tag).
fn renamed_export(from: &Path, to_tag: &str, out: &Path) {
    let mut entries = read_tar(from);
    let mut header: Value = serde_json::from_slice(&entries[0].1).unwrap();
    header["manifest"] = to_tag.into();
    entries[0].1 = serde_json::to_vec(&header).unwrap();
    entries[1].0 = format!("manifests/{to_tag}.json");
    write_tar(out, &entries);
}

/// The BLAKE3 of the snapshot directory's manifest and of the one its record holds.
fn dir_and_record(env: &Env, tag: &str) -> (String, String) {
    let dir = std::fs::read(env.path().join(format!("snapshots/{tag}/manifest.json"))).unwrap();
    let record: Value = serde_json::from_slice(
        &std::fs::read(env.path().join(format!("store/manifests/{tag}.json"))).unwrap(),
    )
    .unwrap();
    let recorded = record["manifest"].as_str().unwrap().as_bytes().to_vec();
    (
        blake3::hash(&dir).to_hex().to_string(),
        blake3::hash(&recorded).to_hex().to_string(),
    )
}

#[test]
fn two_imports_of_one_tag_at_once_leave_one_whole_snapshot() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    env.boot("vm", &[]);
    let (one, two) = (dir.path().join("one.thaw"), dir.path().join("two.thaw"));
    export_with_marker(&env, "t", "first", &one);
    export_with_marker(&env, "t", "second", &two);
    env.ok(&["stop", "vm"]);

    for round in 0..4 {
        let there = Env::new();
        let spawn = |f: &PathBuf| {
            there
                .command(&["import", f.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (p1, p2) = (spawn(&one), spawn(&two));
        let outs = [
            p1.wait_with_output().unwrap(),
            p2.wait_with_output().unwrap(),
        ];
        let won: Vec<bool> = outs.iter().map(|o| o.status.success()).collect();
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one import wins: {outs:?}"
        );
        let loser = &outs[won.iter().position(|w| !w).unwrap()];
        let err = String::from_utf8_lossy(&loser.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("a snapshot tagged t already exists"), "{err}");
        let (d, r) = dir_and_record(&there, "t");
        assert_eq!(d, r, "round {round}: the directory and the record differ");
        let c = there.json(&["restore", "t"]);
        let name = c[0]["name"].as_str().unwrap();
        let expected = if won[0] { "first\n" } else { "second\n" };
        assert_eq!(there.sh(name, "cat /tmp/marker"), expected, "round {round}");
        there.ok(&["stop", "--all"]);
    }
}

#[test]
fn a_refused_import_leaves_nothing_and_a_stored_only_snapshot_is_listed_removed_and_collected() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    env.boot("vm", &[]);
    let file = dir.path().join("t.thaw");
    env.sh("vm", "echo kept > /tmp/marker");
    env.json(&["snapshot", "vm", "t"]);
    env.ok(&["stop", "vm"]);
    env.json(&["export", "t", file.to_str().unwrap()]);

    // A record named u whose manifest says t: refused, and no record u is left.
    let renamed = dir.path().join("u.thaw");
    renamed_export(&file, "u", &renamed);
    let there = Env::new();
    there
        .run(&["import", renamed.to_str().unwrap()])
        .fails_with("it names tag t");
    assert_nothing_left(&there);
    there.run(&["rm", "u"]).fails_with("no snapshot tagged u");
    // The real one still imports there afterwards.
    there.json(&["import", file.to_str().unwrap()]);

    // Evicted: in the store only, listed as such, restorable, removable, collected.
    env.json(&["store", "evict", "t"]);
    let listed = env.json(&["snapshots"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["tag"], "t", "{listed}");
    assert_eq!(listed[0]["local"], false, "{listed}");
    assert!(listed[0]["problem"].is_null(), "{listed}");
    let text = env.ok(&["snapshots"]).stdout;
    assert!(text.contains("in the store only"), "{text}");
    env.json(&["restore", "t", "--name", "c"]);
    assert_eq!(env.sh("c", "cat /tmp/marker"), "kept\n");
    env.ok(&["stop", "c"]);
    env.json(&["store", "evict", "t"]);
    env.json(&["rm", "t"]);
    assert_eq!(env.json(&["snapshots"]), serde_json::json!([]));
    let gc = env.json(&["gc"]);
    assert!(gc["bytes_freed"].as_u64().unwrap() > 0, "{gc}");
    assert_eq!(gc["stored_bytes"], 0, "{gc}");
    env.ok(&["store", "verify"]);
}

#[test]
fn the_loser_of_two_snapshots_of_one_tag_is_told_the_tag_exists() {
    let env = Env::new();
    env.boot("a", &[]);
    env.boot("b", &[]);
    for round in 0..4 {
        let spawn = |vm: &str| {
            env.command(&["snapshot", vm, "t"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (p1, p2) = (spawn("a"), spawn("b"));
        let outs = [
            p1.wait_with_output().unwrap(),
            p2.wait_with_output().unwrap(),
        ];
        let won = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(won, 1, "round {round}: {outs:?}");
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        let err = String::from_utf8_lossy(&loser.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("a snapshot tagged t already exists") && !err.contains("os error"),
            "round {round}: {err}"
        );
        let (d, r) = dir_and_record(&env, "t");
        assert_eq!(d, r, "round {round}");
        env.ok(&["rm", "t"]);
    }
    env.ok(&["stop", "--all"]);
}
