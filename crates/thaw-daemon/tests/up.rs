//! `POST /v1/up`: the boot cache as an operation. The first boots into the cache, the
//! second restores from it; both are the daemon's VMs; the operation's record and the
//! events say how it went; what cannot work is refused before it starts.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

/// Polls the operation until it ends; its record.
async fn finished(d: &Daemon, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let op = d
            .expect("GET", &format!("/v1/operations/{id}"), None, 200)
            .await;
        if op["state"] != "running" {
            return op;
        }
        assert!(Instant::now() < deadline, "{op}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn up(d: &Daemon, name: &str) -> Value {
    let started = d
        .expect(
            "POST",
            "/v1/up",
            Some(json!({"boot": {"name": name, "memory_mib": 128}})),
            202,
        )
        .await;
    let op = finished(d, started["operation"].as_str().unwrap()).await;
    assert_eq!(op["kind"], "up", "{op}");
    assert_eq!(op["state"], "done", "{op}\n{}", d.log());
    op
}

#[tokio::test(flavor = "multi_thread")]
async fn up_boots_into_the_cache_then_restores_from_it() {
    let d = Daemon::start(&[]).await;
    let first = up(&d, "a").await;
    let report = &first["report"];
    assert_eq!(report["name"], "a", "{first}");
    assert_eq!(report["path"], "booted", "{first}");
    assert_eq!(first["tag"], report["tag"], "{first}");
    let second = up(&d, "b").await;
    assert_eq!(second["report"]["path"], "restored", "{second}");
    assert_eq!(second["report"]["tag"], report["tag"], "{second}");
    let mut names = d.vm_names().await;
    names.sort();
    assert_eq!(names, ["a", "b"]);
    let b = d.expect("GET", "/v1/vms/b", None, 200).await;
    assert_eq!(b["state"], "running", "{b}");
    assert_eq!(d.sh("b", "echo restored by up").await, "restored by up\n");
    let tag = report["tag"].as_str().unwrap();
    assert!(d.snapshot_tags().await.contains(&tag.to_owned()));

    // Refused before anything starts: a name in use, a bad name, a bad remote, a bad
    // bind address, an unknown field.
    let before = d.processes();
    d.refused(
        "POST",
        "/v1/up",
        Some(json!({"boot": {"name": "a"}})),
        409,
        "already exists",
    )
    .await;
    d.refused(
        "POST",
        "/v1/up",
        Some(json!({"boot": {"name": "../x"}})),
        400,
        "",
    )
    .await;
    d.refused(
        "POST",
        "/v1/up",
        Some(json!({"boot": {"name": "c"}, "remote": "ftp://x/y"})),
        400,
        "s3://",
    )
    .await;
    d.refused(
        "POST",
        "/v1/up",
        Some(json!({"boot": {"name": "c", "bind": "203.0.113.7"}})),
        400,
        "not an address of this host",
    )
    .await;
    d.refused(
        "POST",
        "/v1/up",
        Some(json!({"boot": {"name": "c"}, "extra": 1})),
        422,
        "extra",
    )
    .await;
    assert_eq!(d.processes(), before, "no QEMU started");
}
