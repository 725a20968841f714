//! A real distribution guest: Debian bookworm with systemd and redis, booted from a disk
//! image; redis keeps its keys through snapshot and restore, and each clone answers on
//! its own forwarded host port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::Env;
use serde_json::Value;

/// Sends one inline Redis command and returns the reply line(s).
fn redis(port: u16, cmd: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
    let mut buf = [0u8; 512];
    let mut out = Vec::new();
    // A reply is complete at CRLF (simple/status) or after the bulk payload.
    loop {
        let n = s.read(&mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        let done = match text.chars().next() {
            Some('$') if text.starts_with("$-1") => text.ends_with("\r\n"),
            Some('$') => text.matches("\r\n").count() >= 2,
            Some(_) => text.ends_with("\r\n"),
            None => n == 0,
        };
        if done || n == 0 {
            return text.trim_end().to_owned();
        }
    }
}

fn redis_port(vm: &Value) -> u16 {
    common::host_port(vm, 6379)
}

#[test]
fn redis_keeps_its_keys_in_every_clone_and_clones_do_not_share_writes() {
    let env = Env::new();
    let build = env.run(&["guest", "build", "--profile", "debian"]);
    assert_eq!(
        build.code, 0,
        "building the debian guest failed: {}",
        build.stderr
    );

    let db = env.boot(
        "db",
        &[
            "--profile",
            "debian",
            "--ready-port",
            "6379",
            "--timeout",
            "300",
        ],
    );
    let port = redis_port(&db);
    assert_eq!(redis(port, "PING"), "+PONG");
    assert_eq!(redis(port, "SET before snapshot"), "+OK");
    assert_eq!(redis(port, "SET answer 42"), "+OK");

    env.json(&["snapshot", "db", "s"]);
    let clones = env.json(&[
        "restore",
        "s",
        "--count",
        "3",
        "--ready-port",
        "6379",
        "--timeout",
        "120",
    ]);
    let clones = clones.as_array().unwrap();
    assert_eq!(clones.len(), 3);
    let mut ports = vec![port];
    for c in clones {
        let p = redis_port(c);
        ports.push(p);
        assert_eq!(redis(p, "GET before"), "$8\r\nsnapshot", "clone {c}");
        assert_eq!(redis(p, "GET answer"), "$2\r\n42");
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4, "every VM has its own host port");

    // A SET in one clone is seen by no other clone and not by the original.
    let first = redis_port(&clones[0]);
    assert_eq!(redis(first, "SET only-here 1"), "+OK");
    assert_eq!(redis(first, "GET only-here"), "$1\r\n1");
    for c in &clones[1..] {
        assert_eq!(redis(redis_port(c), "GET only-here"), "$-1");
    }
    assert_eq!(redis(port, "GET only-here"), "$-1");

    // The clones' clocks were set from the host.
    for c in clones {
        common::assert_clock_close(&env, c["name"].as_str().unwrap());
    }
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}

/// Layered snapshots on a real distribution: boot → SET a → s1 → clone → SET b → s2
/// (of the clone) → clone → SET c → s3: clones of s3 answer all three keys and have the
/// file written to the root disk at each layer; a clone of s1 has only the first.
#[test]
fn redis_keys_set_at_each_layer_answer_in_clones_of_the_deepest() {
    let env = Env::new();
    let ready = ["--ready-port", "6379", "--timeout", "300"];
    let mut args = vec!["--profile", "debian"];
    args.extend_from_slice(&ready);
    let db = env.boot("db", &args);
    let mut vm = ("db".to_owned(), redis_port(&db));
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        let (name, port) = &vm;
        assert_eq!(redis(*port, &format!("SET {key} {i}")), "+OK");
        env.sh(name, &format!("echo {key} > /root/layer-{key} && sync"));
        let tag = format!("s{}", i + 1);
        let snap = env.json(&["snapshot", name, &tag]);
        if i > 0 {
            assert_eq!(snap["parent"], format!("s{i}"), "{snap}");
        }
        if i < 2 {
            let c = env.json(&[
                "restore",
                &tag,
                "--name",
                &format!("c{}", i + 1),
                "--ready-port",
                "6379",
            ]);
            vm = (c[0]["name"].as_str().unwrap().to_owned(), redis_port(&c[0]));
        }
    }
    let clones = env.json(&["restore", "s3", "--count", "2", "--ready-port", "6379"]);
    for c in clones.as_array().unwrap() {
        let p = redis_port(c);
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(redis(p, &format!("GET {key}")), format!("$1\r\n{i}"), "{c}");
        }
        let files = env.sh(
            c["name"].as_str().unwrap(),
            "echo 3 > /proc/sys/vm/drop_caches; cat /root/layer-a /root/layer-b /root/layer-c",
        );
        assert_eq!(files, "a\nb\nc\n");
    }
    let first = env.json(&["restore", "s1", "--name", "at-s1", "--ready-port", "6379"]);
    let p = redis_port(&first[0]);
    assert_eq!(redis(p, "GET a"), "$1\r\n0");
    assert_eq!(redis(p, "GET b"), "$-1");
    assert_eq!(
        env.sh("at-s1", "ls /root | grep layer- | tr '\\n' ' '"),
        "layer-a "
    );
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}
