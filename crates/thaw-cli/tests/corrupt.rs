//! Corrupt files: every file of a snapshot (manifest, device state, RAM image, disk
//! layers, clone template) of both memory layouts, and the store's chunks, record and
//! format file, each truncated, with one byte flipped, overwritten with garbage, or
//! with a newer format version. Every one is refused with one line naming the file,
//! before QEMU starts; nothing is written out half; `thaw snapshots` and `thaw ls`
//! keep working.
//!
//! A plain restore reads the manifest, every file's size and the device state, not
//! the RAM image or the disk layers (that is what keeps it fast); a change that
//! keeps their size is found by `--verify`, which is what those cases use.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::Env;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Truncate,
    Flip,
    Garbage,
    Newer,
}

/// A small deterministic generator (xorshift), for garbage and flip positions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The offset of the first non-zero byte of `path` at or after `from`.
fn data_at(path: &Path, from: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < len {
        let n = f.read_at(&mut buf, at).unwrap();
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return at + i as u64;
        }
        at += n as u64;
    }
    panic!("{} has no data after {from}", path.display());
}

/// Replaces `file` by a corrupted copy (the original inode, which hard links share
/// with other snapshots and VMs, is never written) and returns what puts it back.
struct Swap {
    file: PathBuf,
    orig: PathBuf,
}

impl Swap {
    fn new(file: &Path, corrupt: impl FnOnce(&Path)) -> Swap {
        // Beside the home's directories (same filesystem), where thaw never looks.
        let aside = file
            .ancestors()
            .find(|a| a.join("snapshots").is_dir())
            .unwrap()
            .join("aside");
        std::fs::create_dir_all(&aside).unwrap();
        let orig = aside.join("orig");
        std::fs::hard_link(file, &orig).unwrap();
        let tmp = aside.join("corrupt");
        let st = std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(file)
            .arg(&tmp)
            .status()
            .unwrap();
        assert!(st.success());
        corrupt(&tmp);
        std::fs::rename(&tmp, file).unwrap();
        Swap {
            file: file.to_owned(),
            orig,
        }
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        std::fs::rename(&self.orig, &self.file).unwrap();
    }
}

fn flip_at(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
}

fn truncate(path: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 2).unwrap();
}

/// Overwrites the first and last 64 KiB (headers, and for a mapped-ram file the
/// device state) with random bytes, keeping the size.
fn garbage(path: &Path, rng: &mut Rng) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let n = len.min(64 << 10);
    f.write_all_at(&rng.bytes(n as usize), 0).unwrap();
    f.write_all_at(&rng.bytes(n as usize), len - n).unwrap();
}

/// The counts this test reports.
#[derive(Default)]
struct Tally {
    tried: u32,
    detected: u32,
    by_plain_restore: u32,
}

/// Runs `restore` on `tag` (with `--verify` when `verify`) and asserts a one-line
/// refusal mentioning `needle`, no QEMU started, no VM state and no temporary
/// snapshot left, and that listing still works.
fn refused(env: &Env, tag: &str, verify: bool, needle: &str, what: &str, tally: &mut Tally) {
    let evicted = !env.path().join("snapshots").join(tag).exists();
    tally.tried += 1;
    let mut args = vec!["restore", tag, "--name", "victim"];
    if verify {
        args.push("--verify");
    }
    let r = env.run(&args);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        r.code != 0 && lines.len() == 1 && lines[0].contains(needle),
        "{what}: restore {args:?} gave {} {:?}, want one line with {needle:?}",
        r.code,
        r.stderr
    );
    tally.detected += 1;
    if !verify {
        tally.by_plain_restore += 1;
    }
    assert!(env.processes().is_empty(), "{what}: QEMU started");
    assert!(env.vm_dirs().is_empty(), "{what}: {:?}", env.vm_dirs());
    assert!(
        !env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")),
        "{what}: half-written snapshot {:?}",
        env.snapshot_dirs()
    );
    if evicted {
        // Refused while being written out from the store: not written out at all.
        assert!(
            !env.snapshot_dirs().iter().any(|d| d == tag),
            "{what}: {tag} was written out"
        );
    }
    let snaps = env.json(&["snapshots"]);
    assert!(snaps.is_array(), "{what}: {snaps}");
    env.json(&["ls"]);
    println!(
        "  {what}: refused ({})",
        lines[0].trim_start_matches("thaw: error: ")
    );
}

/// Every file of snapshot `tag`, each way it can be damaged.
fn corrupt_each_file(env: &Env, tag: &str, rng: &mut Rng, tally: &mut Tally) {
    let dir = env.path().join("snapshots").join(tag);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let ram_region = manifest["memory"]["offset"].as_u64();
    let mut files: Vec<String> = manifest["files"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    files.insert(0, "manifest.json".into());
    for file in &files {
        let path = dir.join(file);
        let kinds: &[Kind] = if file == "manifest.json" {
            &[Kind::Truncate, Kind::Flip, Kind::Garbage, Kind::Newer]
        } else {
            &[Kind::Truncate, Kind::Flip, Kind::Garbage]
        };
        for &kind in kinds {
            let what = format!("{tag}/{file} {kind:?}");
            // Where a flip lands, and whether a plain restore can see it.
            let (flip_offset, plain) = match (file.as_str(), kind) {
                ("memory", Kind::Flip) => {
                    // One flip in the device state (the end of the file) and one in
                    // the RAM image, below.
                    let len = std::fs::metadata(&path).unwrap().len();
                    (len - 100, true)
                }
                (_, Kind::Truncate | Kind::Newer) => (0, true),
                ("manifest.json", _) => (std::fs::metadata(&path).unwrap().len() / 2, true),
                ("state", _) => (data_at(&path, 0), true),
                ("memory", Kind::Garbage) => (0, true),
                // The RAM image and the disk layers: their size is unchanged.
                _ => (data_at(&path, 0), false),
            };
            let _swap = Swap::new(&path, |p| match kind {
                Kind::Truncate => truncate(p),
                Kind::Flip => flip_at(p, flip_offset),
                Kind::Garbage => garbage(p, rng),
                Kind::Newer => {
                    let mut m: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                    m["version"]["major"] = 3.into();
                    std::fs::write(p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
                }
            });
            let needle = match (file.as_str(), kind) {
                (_, Kind::Newer) => "is not supported (this thaw reads 2.x)",
                ("manifest.json", _) => "manifest is corrupt",
                ("ram", Kind::Truncate) => "RAM image is",
                (f, _) => f,
            };
            refused(env, tag, !plain, needle, &what, tally);
        }
        if file == "memory" {
            let offset = ram_region.expect("a mapped snapshot");
            let at = data_at(&path, offset);
            let _swap = Swap::new(&path, |p| flip_at(p, at));
            let what = format!("{tag}/{file} Flip in the RAM image");
            refused(env, tag, true, "memory does not match", &what, tally);
        }
    }
}

#[test]
fn every_damaged_file_is_refused_naming_it() {
    let env = Env::new();
    let mut rng = Rng(0x5eed_c0de_1234_5678);
    let mut tally = Tally::default();
    let img = tempfile::tempdir().unwrap();
    let base = img.path().join("data.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    env.boot(
        "vm",
        &[
            "--profile",
            "default",
            "--memory",
            "128",
            "--disk",
            base.to_str().unwrap(),
        ],
    );
    env.sh("vm", "echo data > /dev/vda; sync");
    // Both memory layouts: mapped (the VM keeps running), raw (--stop).
    // Pinned: their plain files are what is damaged here (a snapshot kept once is
    // only in the store, whose damaged chunks are below).
    env.json(&["snapshot", "vm", "m", "--pin"]);
    env.json(&["snapshot", "vm", "r", "--stop", "--pin"]);
    assert!(env.processes().is_empty());
    for tag in ["m", "r"] {
        println!("snapshot {tag}:");
        corrupt_each_file(&env, tag, &mut rng, &mut tally);
    }

    // The store: m exists only there now. Its write-out (THAW_LAZY=off) must refuse a
    // damaged chunk before anything is published; served lazily (the default), see
    // below.
    println!("store:");
    let env = env.with_env("THAW_LAZY", "off");
    env.json(&["store", "evict", "m"]);
    let store = env.path().join("store");
    // A chunk of m's memory file (one r does not need would not stop m).
    let rec: Value =
        serde_json::from_slice(&std::fs::read(store.join("manifests/m.json")).unwrap()).unwrap();
    let id = rec["files"]["memory"]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .find(|id| {
            std::fs::metadata(store.join("chunks").join(&id[..2]).join(id))
                .unwrap()
                .len()
                > 1024
        })
        .expect("a stored chunk")
        .to_owned();
    let chunk = store.join("chunks").join(&id[..2]).join(&id);
    for kind in [Kind::Truncate, Kind::Flip, Kind::Garbage] {
        let what = format!("chunk {kind:?}");
        let _swap = Swap::new(&chunk, |p| match kind {
            Kind::Truncate => truncate(p),
            Kind::Flip => {
                let len = std::fs::metadata(p).unwrap().len();
                flip_at(p, len / 2)
            }
            _ => garbage(p, &mut rng),
        });
        refused(&env, "m", false, &id, &what, &mut tally);
        env.run(&["store", "verify"]).fails_with(&id);
    }
    // Served lazily, a damaged chunk is found when it is read: a --verify restore reads
    // them all, and is refused in one line naming it; nothing runs.
    {
        let _swap = Swap::new(&chunk, |p| {
            let len = std::fs::metadata(p).unwrap().len();
            flip_at(p, len / 2)
        });
        let out = env
            .command(&["restore", "m", "--verify", "--name", "victim"])
            .env("THAW_LAZY", "on")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            !out.status.success() && lines.len() == 1 && lines[0].contains(&id),
            "lazy --verify: {stderr:?}, want one line naming {id}"
        );
        assert!(env.processes().is_empty(), "lazy --verify: QEMU started");
        assert!(
            env.vm_dirs().is_empty(),
            "lazy --verify: {:?}",
            env.vm_dirs()
        );
        tally.tried += 1;
        tally.detected += 1;
        println!(
            "  chunk Flip, served lazily, --verify: refused ({})",
            lines[0]
        );
        // Back to the store only (the lazily served directory is links).
        env.json(&["store", "evict", "m"]);
    }
    let record = store.join("manifests/m.json");
    for kind in [Kind::Truncate, Kind::Flip, Kind::Garbage, Kind::Newer] {
        let what = format!("store record {kind:?}");
        let _swap = Swap::new(&record, |p| {
            let text = std::fs::read_to_string(p).unwrap();
            let changed = match kind {
                Kind::Truncate => text[..text.len() / 2].to_owned(),
                // A digit of the RAM size inside the record's copy of manifest.json:
                // still JSON, still a manifest, but not the one that was taken.
                Kind::Flip => {
                    text.replacen("\\\"memory_mib\\\": 128", "\\\"memory_mib\\\": 129", 1)
                }
                Kind::Garbage => String::from_utf8_lossy(&rng.bytes(text.len())).into_owned(),
                Kind::Newer => text.replacen("\\\"major\\\": 2", "\\\"major\\\": 3", 1),
            };
            assert_ne!(changed, text, "{what}: nothing changed");
            std::fs::write(p, changed).unwrap();
        });
        let needle = match kind {
            Kind::Flip => "manifest is corrupt",
            Kind::Newer => "is not supported (this thaw reads 2.x)",
            _ => "the store's record of m is corrupt",
        };
        refused(&env, "m", false, needle, &what, &mut tally);
    }
    let format = store.join("store.json");
    {
        let _swap = Swap::new(&format, |p| {
            std::fs::write(p, br#"{"format":"thaw-store","version":2}"#).unwrap()
        });
        refused(
            &env,
            "m",
            false,
            "version 2",
            "store.json Newer",
            &mut tally,
        );
    }
    // Put back, everything restores.
    env.ok(&["store", "verify"]);
    for tag in ["m", "r"] {
        let c = env.json(&["restore", tag]);
        let name = c[0]["name"].as_str().unwrap();
        assert_eq!(env.sh(name, "head -c 4 /dev/vda"), "data");
        env.ok(&["stop", name]);
    }
    println!(
        "corruptions: {} tried, {} detected ({} by a plain restore, the rest by --verify)",
        tally.tried, tally.detected, tally.by_plain_restore
    );
}
