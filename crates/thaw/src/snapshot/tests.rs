use super::*;

fn manifest(tag: &str) -> Manifest {
    Manifest {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        tag: tag.parse().unwrap(),
        created_unix_ms: 5,
        qemu_version: "10.0.2".parse().unwrap(),
        accel: Accel::Tcg,
        spec: MachineSpec {
            machine: "pc".into(),
            memory_mib: 16,
            cpus: 1,
            kernel: Some("/bin/sh".into()),
            initrd: None,
            cmdline: String::new(),
            accel: Accel::Tcg,
            firmware: crate::firmware::Firmware::Bios,
            display: None,
            disks: vec![],
            net: None,
            clock_port: false,
        },
        vmgenid: Uuid::nil(),
        source_vm: "web".parse().unwrap(),
        parent: None,
        memory: Memory::Raw,
        files: BTreeMap::new(),
        disks: vec![],
        checksum: None,
    }
}

/// Writes a small but complete snapshot by hand.
fn write_snapshot(home: &Home, tag: &str) -> Snapshot {
    let mut m = manifest(tag);
    let dir = home.snapshot_dir(&m.tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(STATE_FILE), b"device state").unwrap();
    let ram = std::fs::File::create(dir.join(RAM_FILE)).unwrap();
    ram.set_len(16 << 20).unwrap();
    for f in [STATE_FILE, RAM_FILE] {
        let p = dir.join(f);
        m.files.insert(
            f.into(),
            FileEntry {
                size: std::fs::metadata(&p).unwrap().len(),
                blake3: fsutil::content_hash(&p, None).unwrap(),
            },
        );
    }
    std::fs::write(dir.join(MANIFEST_FILE), m.to_bytes()).unwrap();
    Snapshot::open(home, &m.tag).unwrap()
}

fn v10() -> QemuVersion {
    "10.0.2".parse().unwrap()
}

#[test]
fn manifest_round_trips() {
    let m = manifest("base");
    let bytes = m.to_bytes();
    let back = parse_manifest(&m.tag, &bytes).unwrap();
    assert!(back.checksum.is_some());
    assert_eq!(
        Manifest {
            checksum: None,
            ..back
        },
        m
    );
}

/// Format 2.0 had no checksum: a byte changed in a field no other check covers
/// (the kernel command line, the vmgenid, the source VM) was accepted as is.
#[test]
fn a_changed_byte_anywhere_in_the_manifest_is_found() {
    let tag: SnapshotTag = "base".parse().unwrap();
    let mut m = manifest("base");
    m.spec.cmdline = "console=ttyS0 quiet".into();
    let bytes = m.to_bytes();
    parse_manifest(&tag, &bytes).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    for (from, to) in [
        ("quiet", "quieu"),
        ("\"memory_mib\": 16", "\"memory_mib\": 17"),
        ("\"minor\": 1", "\"minor\": 0"),
        ("\"source_vm\": \"web\"", "\"source_vm\": \"wec\""),
    ] {
        assert!(text.contains(from), "{from}");
        let changed = text.replacen(from, to, 1);
        let err = parse_manifest(&tag, changed.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("checksum does not match"),
            "{from} -> {to}: {err}"
        );
    }
    // Layout does not matter: the same manifest compact still checks out.
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    parse_manifest(&tag, &serde_json::to_vec(&v).unwrap()).unwrap();
    // A 2.1 manifest without its checksum is refused; a 2.0 one is read.
    let mut bare = v.clone();
    bare.as_object_mut().unwrap().remove("checksum");
    let err = parse_manifest(&tag, &serde_json::to_vec(&bare).unwrap()).unwrap_err();
    assert!(err.to_string().contains("checksum is missing"), "{err}");
    bare["version"]["minor"] = 0.into();
    parse_manifest(&tag, &serde_json::to_vec(&bare).unwrap()).unwrap();
}

#[test]
fn a_whole_snapshot_passes_every_check() {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path());
    let s = write_snapshot(&home, "base");
    s.check(v10(), Accel::Tcg, true).unwrap();
}

#[test]
fn each_defect_is_named() {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path());
    let tag: SnapshotTag = "base".parse().unwrap();

    assert!(matches!(
        Snapshot::open(&home, &tag),
        Err(SnapshotCheckError::UnknownTag(_))
    ));

    let s = write_snapshot(&home, "base");
    assert!(matches!(
        s.check("9.2.0".parse().unwrap(), Accel::Tcg, false),
        Err(SnapshotCheckError::QemuMismatch { .. })
    ));
    assert!(matches!(
        s.check(v10(), Accel::Kvm, false),
        Err(SnapshotCheckError::AccelMismatch { .. })
    ));

    // Truncated state.
    std::fs::write(s.state_path(), b"device").unwrap(); // truncated
    assert!(matches!(
        s.check(v10(), Accel::Tcg, false),
        Err(SnapshotCheckError::FileSize { .. })
    ));
    // Same size, other bytes.
    std::fs::write(s.state_path(), b"DEVICE state").unwrap();
    assert!(matches!(
        s.check(v10(), Accel::Tcg, false),
        Err(SnapshotCheckError::StateHash { .. })
    ));
    std::fs::write(s.state_path(), b"device state").unwrap();

    // RAM image of the wrong size.
    std::fs::File::options()
        .write(true)
        .open(s.dir.join(RAM_FILE))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    assert!(matches!(
        s.check(v10(), Accel::Tcg, false),
        Err(SnapshotCheckError::RamSize { .. })
    ));
    std::fs::File::options()
        .write(true)
        .open(s.dir.join(RAM_FILE))
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    // RAM content changed: only --verify notices.
    std::fs::write(s.dir.join(RAM_FILE), vec![1u8; 16 << 20]).unwrap();
    s.check(v10(), Accel::Tcg, false).unwrap();
    assert!(matches!(
        s.check(v10(), Accel::Tcg, true),
        Err(SnapshotCheckError::FileHash { .. })
    ));

    // Corrupt, missing and future manifests.
    let mpath = s.dir.join(MANIFEST_FILE);
    std::fs::write(&mpath, b"{\"format\": \"thaw-snap").unwrap();
    assert!(matches!(
        Snapshot::open(&home, &tag),
        Err(SnapshotCheckError::ManifestCorrupt { .. })
    ));
    let mut older = serde_json::to_value(manifest("base")).unwrap();
    older["version"] = serde_json::json!({"major": 1, "minor": 1});
    std::fs::write(&mpath, serde_json::to_vec(&older).unwrap()).unwrap();
    let err = Snapshot::open(&home, &tag).unwrap_err();
    assert!(
        err.to_string()
            .contains("format version 1.1 is not supported"),
        "{err}"
    );
    let mut future = serde_json::to_value(manifest("base")).unwrap();
    future["version"]["major"] = 3.into();
    std::fs::write(&mpath, serde_json::to_vec(&future).unwrap()).unwrap();
    let err = Snapshot::open(&home, &tag).unwrap_err();
    assert!(
        matches!(
            err,
            SnapshotCheckError::UnsupportedVersion { found_major: 3, .. }
        ),
        "{err}"
    );
    std::fs::remove_file(&mpath).unwrap();
    assert!(matches!(
        Snapshot::open(&home, &tag),
        Err(SnapshotCheckError::ManifestMissing { .. })
    ));
    std::fs::write(&mpath, vec![b' '; (MANIFEST_MAX_BYTES + 1) as usize]).unwrap();
    assert!(matches!(
        Snapshot::open(&home, &tag),
        Err(SnapshotCheckError::ManifestCorrupt { .. })
    ));
}

#[test]
fn stale_temp_dirs_are_removed_live_ones_kept() {
    let d = tempfile::tempdir().unwrap();
    let home = Home::new(d.path());
    home.ensure().unwrap();
    let live = temp_dir(&home, &"a".parse().unwrap());
    let dead = home.snapshots_dir().join(".tmp-b-999999999");
    std::fs::create_dir(&live).unwrap();
    std::fs::create_dir(&dead).unwrap();
    remove_stale_temp_dirs(&home);
    assert!(live.exists());
    assert!(!dead.exists());
    assert!(list_tags(&home).is_empty(), "temp dirs are not snapshots");
}
