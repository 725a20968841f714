//! Layered snapshots and reset through the API: a reset takes its clone from the
//! snapshot's warm pool and keeps the VM's name and host port; snapshots of clones
//! form a tree whose parents cannot be removed while they have children.

mod common;

use common::Daemon;
use serde_json::json;

fn port_of(vm: &serde_json::Value) -> u64 {
    vm["ports"][0]["host"].as_u64().expect("a forwarded port")
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_from_a_warm_pool_keeps_name_and_port() {
    let d = Daemon::start(&[]).await;
    d.boot("web", json!({"ports": [{"host": 0, "guest": 80}]}))
        .await;
    d.sh("web", "echo kept > /tmp/kept").await;
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
    let c = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "c"})),
            201,
        )
        .await;
    let port = port_of(&c[0]);
    d.sh("c", "echo scratch > /tmp/scratch").await;
    d.wait_pool_ready("base", 1).await;

    let r = d.expect("POST", "/v1/vms/c/reset", None, 200).await;
    assert_eq!(r["snapshot"], "base");
    assert_eq!(r["name"], "c");
    assert_eq!(r["breakdown"]["source"], "pool", "{r}");
    assert_eq!(port_of(&r), port, "the host port is kept");
    assert_eq!(
        d.sh("c", "test -e /tmp/scratch && echo present || echo gone")
            .await,
        "gone\n"
    );
    assert_eq!(d.sh("c", "cat /tmp/kept").await, "kept\n");
    let vms = d.vms().await;
    let c = vms.iter().find(|v| v["name"] == "c").unwrap();
    assert_eq!(port_of(c), port);

    // Without a pool (none for this tag), and to another snapshot.
    d.expect(
        "POST",
        "/v1/vms/c/snapshot",
        Some(json!({"tag": "child"})),
        201,
    )
    .await;
    let r = d
        .expect(
            "POST",
            "/v1/vms/web/reset",
            Some(json!({"to": "child"})),
            200,
        )
        .await;
    assert_eq!(r["breakdown"]["source"], "spawn");
    d.refused(
        "POST",
        "/v1/vms/web/reset",
        Some(json!({"to": "../x"})),
        400,
        "invalid snapshot tag",
    )
    .await;
    d.refused("POST", "/v1/vms/nope/reset", None, 404, "no VM named nope")
        .await;

    // The tree: base has a child, so it cannot go alone.
    let snaps = d.expect("GET", "/v1/snapshots", None, 200).await;
    let child = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tag"] == "child")
        .unwrap();
    assert_eq!(child["parent"], "base");
    d.refused(
        "DELETE",
        "/v1/snapshots/base",
        None,
        409,
        "has children (child)",
    )
    .await;
    let removed = d
        .expect("DELETE", "/v1/snapshots/base?recursive=true", None, 200)
        .await;
    assert_eq!(removed, json!({"removed": ["child", "base"]}));
    for name in d.vm_names().await {
        d.expect("DELETE", &format!("/v1/vms/{name}"), None, 200)
            .await;
    }
}
