//! `bind` in the API bodies: boots and restores through thawd listen on the address
//! asked for; a warm pool's clones listen on the pool's address (127.0.0.1 unless its
//! `bind` says), so a restore bound elsewhere starts a new clone (bound as asked) and
//! leaves the pool's alone; a bad address is a 400 with nothing started.
//!
//! 127.0.0.2 is an address of every Linux host other than 127.0.0.1 (the whole of
//! 127.0.0.0/8 is on `lo`).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn host_port(vm: &Value, guest: u16) -> u16 {
    vm["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["guest"] == guest)
        .unwrap_or_else(|| panic!("no forward for guest port {guest}: {vm}"))["host"]
        .as_u64()
        .unwrap() as u16
}

fn http_get(addr: Ipv4Addr, port: u16) -> String {
    let mut s = TcpStream::connect((addr, port))
        .unwrap_or_else(|e| panic!("connect to {addr}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.rsplit("\r\n\r\n").next().unwrap_or("").to_owned()
}

fn refused(addr: Ipv4Addr, port: u16) {
    let e = TcpStream::connect((addr, port))
        .map(drop)
        .expect_err(&format!("{addr}:{port} accepted a connection"));
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn boot_and_restore_bind_where_asked_and_the_pool_keeps_its_clones() {
    let d = Daemon::start(&[]).await;
    let web = d
        .boot(
            "web",
            json!({"bind": "127.0.0.2", "ports": [{"host": 0, "guest": 8080}]}),
        )
        .await;
    assert_eq!(web["bind"], "127.0.0.2", "{web}");
    let port = host_port(&web, 8080);
    d.sh(
        "web",
        "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www",
    )
    .await;
    assert_eq!(http_get(ELSEWHERE, port), "hello\n");
    refused(Ipv4Addr::LOCALHOST, port);
    let got = d.expect("GET", "/v1/vms/web", None, 200).await;
    assert_eq!(got["bind"], "127.0.0.2", "{got}");

    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base"})),
        201,
    )
    .await;
    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 1, "mode": "running"})),
        200,
    )
    .await;
    d.wait_pool_ready("base", 1).await;
    let pooled = d.pool_processes();
    assert_eq!(pooled.len(), 1);

    // Another address than the pool's: a new clone, bound as asked; the pool's stays.
    let far = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "far", "bind": "127.0.0.2", "ready_port": 8080})),
            201,
        )
        .await;
    assert_eq!(far[0]["breakdown"]["source"], "spawn", "{far}");
    assert_eq!(far[0]["bind"], "127.0.0.2", "{far}");
    let fport = host_port(&far[0], 8080);
    assert_eq!(http_get(ELSEWHERE, fport), "hello\n");
    refused(Ipv4Addr::LOCALHOST, fport);
    assert_eq!(d.pool_processes(), pooled, "the pool's clone was not taken");
    let listed = d.expect("GET", "/v1/vms/far", None, 200).await;
    assert_eq!(listed["bind"], "127.0.0.2", "{listed}");

    // The pool's own address: its clone, on 127.0.0.1.
    let near = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "near", "bind": "127.0.0.1"})),
            201,
        )
        .await;
    assert_eq!(near[0]["breakdown"]["source"], "pool", "{near}");
    assert_eq!(near[0]["bind"], "127.0.0.1", "{near}");
    let nport = host_port(&near[0], 8080);
    assert_eq!(http_get(Ipv4Addr::LOCALHOST, nport), "hello\n");
    refused(ELSEWHERE, nport);

    // A reset through the API keeps the address (a new clone: the pool's are on
    // 127.0.0.1).
    let reset = d
        .expect("POST", "/v1/vms/far/reset", Some(json!({})), 200)
        .await;
    assert_eq!(reset["bind"], "127.0.0.2", "{reset}");
    assert_eq!(host_port(&reset, 8080), fport, "{reset}");
    assert_eq!(http_get(ELSEWHERE, fport), "hello\n");
    refused(Ipv4Addr::LOCALHOST, fport);

    // A pool on 127.0.0.2: its clones serve restores asking for that address, and a
    // restore without one (127.0.0.1) starts a new clone.
    let status = d
        .expect(
            "PUT",
            "/v1/snapshots/base/pool",
            Some(json!({"size": 1, "mode": "running", "bind": "127.0.0.2"})),
            200,
        )
        .await;
    assert_eq!(status["bind"], "127.0.0.2", "{status}");
    d.wait_pool_ready("base", 1).await;
    let pooled = d.pool_processes();
    let near2 = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "near2"})),
            201,
        )
        .await;
    assert_eq!(near2[0]["breakdown"]["source"], "spawn", "{near2}");
    assert_eq!(near2[0]["bind"], "127.0.0.1", "{near2}");
    assert_eq!(d.pool_processes(), pooled, "the pool's clone was not taken");
    let far2 = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "far2", "bind": "127.0.0.2", "ready_port": 8080})),
            201,
        )
        .await;
    assert_eq!(far2[0]["breakdown"]["source"], "pool", "{far2}");
    assert_eq!(far2[0]["bind"], "127.0.0.2", "{far2}");
    let f2port = host_port(&far2[0], 8080);
    assert_eq!(http_get(ELSEWHERE, f2port), "hello\n");
    refused(Ipv4Addr::LOCALHOST, f2port);
    let listed = d.expect("GET", "/v1/vms/far2", None, 200).await;
    assert_eq!(listed["bind"], "127.0.0.2", "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_bind_address_is_a_400_and_starts_nothing() {
    let d = Daemon::start(&[]).await;
    d.boot("web", json!({})).await;
    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base", "stop": true})),
        201,
    )
    .await;
    let before = d.processes();
    for (bind, needle) in [
        ("nonsense", "not an IPv4 address"),
        ("::1", "not an IPv4 address"),
        ("203.0.113.7", "not an address of this host"),
    ] {
        d.refused(
            "POST",
            "/v1/vms",
            Some(json!({"name": "b", "bind": bind})),
            400,
            needle,
        )
        .await;
        d.refused(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "r", "bind": bind})),
            400,
            needle,
        )
        .await;
    }
    d.refused(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 1, "bind": "203.0.113.7"})),
        400,
        "not an address of this host",
    )
    .await;
    let (status, answer) = d
        .call(
            "PUT",
            "/v1/snapshots/base/pool",
            Some(json!({"size": 1, "bind": "nonsense"})),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(d.pool_processes().is_empty());
    assert_eq!(d.processes(), before, "no QEMU started");
    assert!(d.vm_names().await.is_empty(), "{:?}", d.vm_names().await);
}
