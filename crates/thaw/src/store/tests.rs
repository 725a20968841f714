use std::collections::BTreeMap;

use super::*;
use crate::snapshot::{FormatVersion, Manifest, Memory, Snapshot};

/// A store record whose guest file "hash" is a path: a hostile export or bucket
/// could make the snapshot's kernel link to (or be written as) any file on the
/// host. Refused before anything is written or linked.
#[test]
fn a_guest_file_hash_that_is_a_path_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path().join("home"));
    home.ensure().unwrap();
    std::fs::create_dir_all(files_dir(&home)).unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"host secret").unwrap();
    // From $THAW_HOME/files/ up to / and down to the victim, padded with '/' to
    // the 64 characters of a hash.
    let depth = files_dir(&home).components().count();
    let mut evil = "../".repeat(depth);
    evil.push_str(victim.to_str().unwrap().trim_start_matches('/'));
    while evil.len() < 64 {
        evil.insert(3, '/');
    }
    assert_eq!(evil.len(), 64, "{evil}");
    assert!(
        files_dir(&home).join(&evil).is_file(),
        "the path reaches the victim"
    );

    let tag: SnapshotTag = "evil".parse().unwrap();
    let mut manifest = test_manifest(&tag, BTreeMap::new());
    manifest.version = FormatVersion { major: 2, minor: 0 };
    manifest.created_unix_ms = 1;
    manifest.spec.memory_mib = 16;
    manifest.spec.kernel = Some("/k".into());
    let record = StoredSnapshot {
        manifest: String::from_utf8(manifest.to_bytes()).unwrap(),
        files: BTreeMap::from([(
            "guest/kernel".to_owned(),
            FileIndex {
                size: 11,
                chunk_size: 65536,
                blake3: evil,
                chunks: vec![None],
            },
        )]),
        ..StoredSnapshot::default()
    };
    let err = materialize(&home, &tag, &record, &mut NoProgress).unwrap_err();
    assert!(
        err.to_string().contains("bad guest file entry"),
        "{}",
        crate::one_line(&err)
    );
    assert!(!home.snapshot_dir(&tag).exists(), "nothing was published");
    assert_eq!(std::fs::read(&victim).unwrap(), b"host secret");
}

fn sample_record() -> StoredSnapshot {
    let id = ChunkId::from(blake3::hash(b"chunk"));
    StoredSnapshot {
        manifest: "{\"format\": \"thaw-snapshot\"}".into(),
        files: BTreeMap::from([(
            "ram".to_owned(),
            FileIndex {
                size: 3 << 20,
                chunk_size: 1 << 20,
                blake3: "ab".repeat(32),
                chunks: vec![Some(id), None, Some(id)],
            },
        )]),
        ..StoredSnapshot::default()
    }
}

#[test]
fn stored_record_round_trips_and_reads_todays_unversioned_bytes() {
    let s = sample_record();
    crate::record::tests::round_trip(&s);
    assert_eq!(decode("t", &s.to_bytes()).unwrap(), s);
    // What thaw wrote before records had a version.
    let before = serde_json::to_vec(&s).unwrap();
    assert_eq!(decode("t", &before).unwrap(), s);
}

#[test]
fn a_stored_record_of_a_newer_thaw_is_refused_in_one_line() {
    let mut v = serde_json::to_value(sample_record()).unwrap();
    v["record_version"] = 2.into();
    let err = decode("base", &serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(
        matches!(err, StoreError::NewerRecord { found: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade thaw"), "{err}");
}

/// A manifest of a machine without disks whose kernel is /bin/sh.
fn test_manifest(tag: &SnapshotTag, files: BTreeMap<String, snapshot::FileEntry>) -> Manifest {
    Manifest {
        format: snapshot::FORMAT_NAME.into(),
        version: snapshot::FORMAT_VERSION,
        tag: tag.clone(),
        created_unix_ms: 5,
        qemu_version: "10.0.2".parse().unwrap(),
        accel: crate::Accel::Tcg,
        spec: crate::MachineSpec {
            machine: "pc".into(),
            memory_mib: 4,
            cpus: 1,
            kernel: Some("/bin/sh".into()),
            initrd: None,
            cmdline: String::new(),
            accel: crate::Accel::Tcg,
            firmware: Default::default(),
            display: None,
            disks: vec![],
            net: None,
            clock_port: false,
        },
        vmgenid: uuid::Uuid::nil(),
        source_vm: "web".parse().unwrap(),
        parent: None,
        memory: Memory::Raw,
        files,
        disks: vec![],
        checksum: None,
    }
}

/// A small snapshot written by hand (no disks; the kernel is /bin/sh).
fn write_snapshot(home: &Home, tag: &SnapshotTag) {
    let dir = home.snapshot_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(snapshot::STATE_FILE), b"device state").unwrap();
    let ram = std::fs::File::create(dir.join(snapshot::RAM_FILE)).unwrap();
    ram.set_len(4 << 20).unwrap();
    let mut files = BTreeMap::new();
    for f in [snapshot::STATE_FILE, snapshot::RAM_FILE] {
        let p = dir.join(f);
        files.insert(
            f.to_owned(),
            snapshot::FileEntry {
                size: std::fs::metadata(&p).unwrap().len(),
                blake3: crate::fsutil::content_hash(&p, None).unwrap(),
            },
        );
    }
    let m = test_manifest(tag, files);
    std::fs::write(dir.join(snapshot::MANIFEST_FILE), m.to_bytes()).unwrap();
}

/// The store's steps run on a current-thread runtime too: `block_in_place` panicked
/// there ("can call blocking only when running on the multi-threaded runtime"). A
/// snapshot is stored, evicted, written out again and the store collected, in one.
#[tokio::test(flavor = "current_thread")]
async fn store_steps_work_on_a_current_thread_runtime() {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path().join("home"));
    home.ensure().unwrap();
    let tag: SnapshotTag = "base".parse().unwrap();
    write_snapshot(&home, &tag);
    let store = open(&home).unwrap();
    let s = ingest(&store, &home.snapshot_dir(&tag), None, &mut NoProgress).unwrap();
    name(&store, &tag, &s).unwrap();
    // The stored record also has its stored size (kept when it was named).
    assert!(evict(&home, &tag).unwrap().same_snapshot(&s));
    assert!(!home.snapshot_dir(&tag).exists());
    // Written out plainly (a lazy write-out needs the `thaw lazyfs` server: the
    // end-to-end tests run it).
    write_out(&home, &tag, &s, &WriteOut::Plain, &mut NoProgress).unwrap();
    let back = Snapshot::open(&home, &tag).unwrap();
    assert_eq!(
        std::fs::read(back.dir.join(snapshot::STATE_FILE)).unwrap(),
        b"device state"
    );
    assert_eq!(gc(&home).unwrap().chunks_removed, 0);
    let report = verify(&home, &mut NoProgress).unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
}
