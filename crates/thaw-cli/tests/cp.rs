//! `thaw cp` end to end: 100 MiB both ways with equal BLAKE3 and the mode kept, into a
//! guest directory, and each error (a missing path on either side, a missing guest
//! directory, a full guest disk) as one line with nothing left behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::Env;

fn blake3_of(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize()
}

#[test]
fn cp_100_mib_both_ways_keeps_bytes_and_mode() {
    let env = Env::new();
    env.boot("files", &["--memory", "512"]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    {
        // Pseudo-random bytes (xorshift): no pattern that a lost chunk could repeat.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut data = vec![0u8; 100 << 20];
        for b in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        std::fs::write(&src, &data).unwrap();
    }
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o751)).unwrap();
    // Into a guest directory: the file keeps its name.
    let doc = env.json(&["cp", src.to_str().unwrap(), "files:/tmp"]);
    assert_eq!(doc["bytes"], 100 << 20);
    assert_eq!(env.sh("files", "stat -c %a /tmp/big.bin").trim(), "751");
    let guest_sum = env.sh("files", "md5sum < /tmp/big.bin");
    let host_md5 = std::process::Command::new("md5sum")
        .stdin(std::fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    assert_eq!(guest_sum, String::from_utf8_lossy(&host_md5.stdout));

    let back = dir.path().join("back.bin");
    env.ok(&["cp", "files:/tmp/big.bin", back.to_str().unwrap()]);
    assert_eq!(blake3_of(&src), blake3_of(&back));
    let mode = std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o751);
    // Into a host directory: the guest file's name.
    let into = dir.path().join("into");
    std::fs::create_dir(&into).unwrap();
    env.ok(&["cp", "files:/tmp/big.bin", into.to_str().unwrap()]);
    assert_eq!(blake3_of(&into.join("big.bin")), blake3_of(&src));
}

#[test]
fn cp_errors_are_one_line_and_leave_nothing() {
    let env = Env::new();
    env.boot("errs", &[]);
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, b"hello").unwrap();
    let small = small.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    env.run(&["cp", "errs:/no/such/file", out])
        .fails_with("no such file in the guest: /no/such/file");
    assert!(!Path::new(out).exists() && !dir.path().join("out.thaw-part").exists());
    env.run(&["cp", "/no/such/host/file", "errs:/tmp/x"])
        .fails_with("cannot read /no/such/host/file");
    env.run(&["cp", small, "errs:/no/dir/x"])
        .fails_with("no directory /no/dir in the guest");
    env.run(&["cp", small, "nosuchvm:/tmp/x"])
        .fails_with("no VM named");
    env.run(&["cp", small, out])
        .fails_with("one side of thaw cp must be VM:/path");
    env.run(&["cp", "errs:/proc", out])
        .fails_with("/proc is a directory in the guest");

    // A full guest disk: a 1 MiB tmpfs, 3 MiB to copy.
    env.sh(
        "errs",
        "mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small",
    );
    let big = dir.path().join("three");
    std::fs::write(&big, vec![7u8; 3 << 20]).unwrap();
    env.run(&["cp", big.to_str().unwrap(), "errs:/mnt/small/three"])
        .fails_with("the guest's disk is full writing /mnt/small/three");
    assert_eq!(
        env.sh("errs", "ls -A /mnt/small"),
        "",
        "a partial file was left"
    );
    // With room, the same copy works.
    env.sh("errs", "umount /mnt/small");
    env.ok(&["cp", big.to_str().unwrap(), "errs:/mnt/small/three"]);
    assert_eq!(env.sh("errs", "wc -c < /mnt/small/three").trim(), "3145728");
}
