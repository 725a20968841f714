//! Disks and user networking through snapshot and clone, on the default guest.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{host_port, names, Env};

fn blake3_of(path: &Path) -> String {
    blake3::hash(&std::fs::read(path).unwrap())
        .to_hex()
        .to_string()
}

/// A file written to the disk before the snapshot is in every clone; a file written in
/// one clone is in no other clone, not in the original, and not in the base image,
/// whose BLAKE3 never changes. Two vCPUs and a disk together.
#[test]
fn disk_writes_stay_in_their_clone_and_the_base_is_never_written() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let base = common::ext4_image(dir.path(), "base.raw");
    let hash = blake3_of(&base);
    let disk = base.to_str().unwrap();

    env.boot(
        "orig",
        &["--profile", "default", "--cpus", "2", "--disk", disk],
    );
    env.sh(
        "orig",
        "mkdir -p /mnt && mount /dev/vda /mnt && echo before > /mnt/before && sync",
    );
    env.json(&["snapshot", "orig", "s"]);
    let clones = names(&env.json(&["restore", "s", "--count", "3"]));

    for (i, n) in clones.iter().enumerate() {
        assert_eq!(env.sh(n, "cat /mnt/before"), "before\n", "{n}");
        assert_eq!(env.sh(n, "grep -c ^processor /proc/cpuinfo"), "2\n");
        env.sh(n, &format!("echo mine > /mnt/clone-{i} && sync"));
    }
    // Read through the disk, not the page cache.
    let probe = "echo 3 > /proc/sys/vm/drop_caches; ls /mnt | grep clone- | tr '\\n' ' '";
    for (i, n) in clones.iter().enumerate() {
        assert_eq!(
            env.sh(n, probe).trim(),
            format!("clone-{i}"),
            "{n} sees other clones' files"
        );
    }
    assert_eq!(
        env.sh("orig", probe).trim(),
        "",
        "the original sees clones' files"
    );
    assert_eq!(blake3_of(&base), hash, "the base image was written");

    // The clones' overlays are theirs: stopping them removes them; the snapshot stays.
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
    assert_eq!(blake3_of(&base), hash, "the base image was written");
    let layer = env.path().join("snapshots/s/disks/d0.0.qcow2");
    assert!(layer.exists());
    // A clone of the snapshot after everything stopped still sees the pre-snapshot file.
    let c = env.json(&["restore", "s", "--name", "late"]);
    assert_eq!(c[0]["name"], "late");
    assert_eq!(env.sh("late", "cat /mnt/before"), "before\n");
}

fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.rsplit("\r\n\r\n").next().unwrap_or("").to_owned()
}

/// Host → guest through a forwarded port and guest → host through the gateway, before
/// and after restore; every clone has its own host port.
#[test]
fn network_works_in_every_clone_through_its_own_port() {
    let env = Env::new();
    let orig = env.boot("orig", &["--port", "0:8080"]);
    let orig_port = host_port(&orig, 8080);
    env.sh(
        "orig",
        "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www",
    );
    assert_eq!(http_get(orig_port), "hello\n");

    // Guest → host: a listener on the host's loopback is the guest's 10.0.2.2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..3 {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhost\n")
                .unwrap();
        }
    });
    let fetch = format!("wget -q -O- http://10.0.2.2:{lport}/");
    assert_eq!(env.sh("orig", &fetch), "host\n");

    env.json(&["snapshot", "orig", "s"]);
    let clones = env.json(&["restore", "s", "--count", "2"]);
    let ls = env.json(&["ls"]);
    let mut ports = vec![orig_port];
    for c in clones.as_array().unwrap() {
        let n = c["name"].as_str().unwrap();
        let p = host_port(c, 8080);
        let listed = ls
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap();
        assert_eq!(
            host_port(listed, 8080),
            p,
            "thaw ls --json lists the clone's ports"
        );
        assert_eq!(http_get(p), "hello\n", "{n} through host port {p}");
        assert_eq!(env.sh(n, &fetch), "host\n", "{n} reaching the host");
        ports.push(p);
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "every VM has its own host port");

    // A change in one clone is seen through its port only.
    let first = clones[0]["name"].as_str().unwrap();
    env.sh(first, "echo changed > /www/index.html");
    assert_eq!(http_get(host_port(&clones[0], 8080)), "changed\n");
    assert_eq!(http_get(host_port(&clones[1], 8080)), "hello\n");
    assert_eq!(http_get(orig_port), "hello\n");
    server.join().unwrap();
}

/// `--ready-port`: boot and restore return only once the guest's port answers.
#[test]
fn ready_port_and_ready_serial() {
    let env = Env::new();
    env.boot(
        "a",
        &["--port", "0:8080", "--ready-serial", "THAW-GUEST-READY"],
    );
    env.sh(
        "a",
        "mkdir -p /www && echo hi > /www/index.html && httpd -p 8080 -h /www",
    );
    env.json(&["snapshot", "a", "s", "--stop"]);
    let c = env.json(&["restore", "s", "--ready-port", "8080"]);
    assert_eq!(http_get(host_port(&c[0], 8080)), "hi\n");
    // A port nothing listens on never becomes ready: a clear error, nothing left.
    env.run(&["restore", "s", "--ready-port", "9999", "--timeout", "3"])
        .fails_with("guest port 9999 is not forwarded");
    let before = env.processes().len();
    env.run(&[
        "restore",
        "s",
        "--ready-serial",
        "never-printed",
        "--timeout",
        "3",
    ])
    .fails_with("did not match");
    assert_eq!(env.processes().len(), before);
}
