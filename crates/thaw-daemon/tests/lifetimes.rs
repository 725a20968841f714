//! Lifetimes and labels through thawd: labels on boot and restore, `GET
//! /v1/vms?label=K=V`, `POST /v1/vms/{name}/ttl`; a VM whose time to live passes is
//! stopped and removed by the running daemon, and one that expires while no daemon
//! runs is gone as soon as the next daemon starts; a reset keeps both. Bad ttls,
//! labels and filters are refused with one line (400). One boot, one snapshot, its
//! clones.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, processes_mentioning, Daemon};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn names(vms: &Value) -> Vec<&str> {
    vms.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn labels_filters_ttl_extension_and_expiry_across_a_restart() {
    let mut d = Daemon::start(&[]).await;

    // Bad input first: nothing is built or started for it.
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "x", "ttl": "soon"})),
        400,
        "bad ttl",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "x", "labels": {"a b": "1"}})),
        400,
        "bad label key",
    )
    .await;
    d.refused("GET", "/v1/vms?label=novalue", None, 400, "KEY=VALUE")
        .await;
    d.refused(
        "GET",
        "/v1/vms?colour=red",
        None,
        400,
        "unknown query parameter",
    )
    .await;
    assert!(d.vm_names().await.is_empty());

    let web = d
        .boot(
            "web",
            json!({"memory_mib": 128, "labels": {"role": "base"}, "ttl": "1h"}),
        )
        .await;
    assert_eq!(web["name"], "web");
    let listed = d.expect("GET", "/v1/vms/web", None, 200).await;
    assert_eq!(listed["labels"], json!({"role": "base"}));
    let left = listed["expires_in_secs"].as_u64().unwrap();
    assert!(left > 0 && left <= 3600, "{listed}");
    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base", "stop": true})),
        201,
    )
    .await;

    d.refused(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"ttl": "0s"})),
        400,
        "more than 0",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"labels": {"k": "x y"}})),
        400,
        "bad label value",
    )
    .await;
    d.expect(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"name": "a", "count": 2, "labels": {"team": "a", "ci": "1"}, "ttl": "10m"})),
        201,
    )
    .await;
    d.expect(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"name": "b", "labels": {"team": "b", "ci": "1"}})),
        201,
    )
    .await;

    // Filters: every label asked for must match.
    let a = d.expect("GET", "/v1/vms?label=team=a", None, 200).await;
    assert_eq!(names(&a), ["a-1", "a-2"]);
    let ci = d.expect("GET", "/v1/vms?label=ci%3D1", None, 200).await;
    assert_eq!(names(&ci), ["a-1", "a-2", "b"]);
    let none = d
        .expect("GET", "/v1/vms?label=team=a&label=team=b", None, 200)
        .await;
    assert!(names(&none).is_empty());
    for v in a.as_array().unwrap() {
        let left = v["expires_in_secs"].as_u64().unwrap();
        assert!(left > 0 && left <= 600, "{v}");
    }
    let b = d.expect("GET", "/v1/vms/b", None, 200).await;
    assert!(b.get("expires_in_secs").is_none(), "b has no ttl: {b}");

    // Extension (and a ttl for a VM without one).
    d.refused(
        "POST",
        "/v1/vms/b/ttl",
        Some(json!({"ttl": "forever"})),
        400,
        "bad ttl",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms/nope/ttl",
        Some(json!({"ttl": "1m"})),
        404,
        "nope",
    )
    .await;
    let b = d
        .expect("POST", "/v1/vms/b/ttl", Some(json!({"ttl": "2h"})), 200)
        .await;
    assert!(b["expires_in_secs"].as_u64().unwrap() > 3600, "{b}");
    // A reset keeps them.
    d.expect("POST", "/v1/vms/b/reset", None, 200).await;
    let reset = d.expect("GET", "/v1/vms/b", None, 200).await;
    assert_eq!(reset["labels"], b["labels"]);
    assert_eq!(reset["expires_unix_ms"], b["expires_unix_ms"]);

    // Expiry with the daemon running: its reaper stops and removes the VM (the
    // directory is watched, not listed: a listing would reap it too).
    d.expect("POST", "/v1/vms/a-1/ttl", Some(json!({"ttl": "1s"})), 200)
        .await;
    let a1_dir = d.home().join("vms/a-1");
    eventually(
        "thawd's reaper removes a-1",
        Duration::from_secs(60),
        || !a1_dir.exists(),
    )
    .await;
    assert!(
        processes_mentioning(&a1_dir).is_empty(),
        "a-1's QEMU still runs"
    );

    // Expiry while no daemon runs: a-2 gets a short ttl and the daemon dies at once.
    let a2 = d
        .expect("POST", "/v1/vms/a-2/ttl", Some(json!({"ttl": "5s"})), 200)
        .await;
    d.kill9();
    let expires = a2["expires_unix_ms"].as_u64().unwrap();
    while now_ms() <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a2_dir = d.home().join("vms/a-2");
    assert!(a2_dir.exists(), "a-2 was removed before its ttl passed");
    assert!(
        !processes_mentioning(&a2_dir).is_empty(),
        "a-2's QEMU died with the daemon"
    );
    d.restart().await;
    // Right after the start, before any listing: gone, QEMU included.
    assert!(!a2_dir.exists(), "a-2 outlived its ttl across the restart");
    assert!(processes_mentioning(&a2_dir).is_empty(), "a-2's QEMU runs");
    assert_eq!(d.vm_names().await, ["b"]);
    assert_eq!(d.expect("GET", "/v1/health", None, 200).await["vms"], 1);
    assert_eq!(d.sh("b", "echo alive").await, "alive\n");
    d.expect("DELETE", "/v1/vms/b", None, 200).await;
    assert!(d.processes().is_empty(), "QEMU left running");
}
