//! Issue 21, operations: push and pull refuse at once what cannot work (a bad remote
//! URL, a snapshot that is not there, one that is there already for a pull), and an
//! unknown operation is a 404 — each one JSON line, nothing started. (Transfers that
//! run are in crates/thaw-cli/tests/two_hosts.rs: a push through A's thawd, a pull
//! through B's over TLS.)

mod common;

use common::Daemon;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn transfers_refuse_what_cannot_work() {
    let d = Daemon::start(&[]).await;
    let remote = json!({"remote": "s3://thaw/fleet"});
    d.refused(
        "POST",
        "/v1/snapshots/nope/push",
        Some(remote.clone()),
        404,
        "nope",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/base/pull",
        Some(json!({"remote": "s3://b", "extra": 1})),
        422,
        "extra",
    )
    .await;
    d.refused("GET", "/v1/operations/op-nope", None, 404, "op-nope")
        .await;

    // A snapshot that is here already is not pulled over.
    d.boot("web", json!({"memory_mib": 128})).await;
    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base", "stop": true})),
        201,
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/base/pull",
        Some(remote.clone()),
        409,
        "base",
    )
    .await;
    // The S3 settings are the daemon's: this one has none.
    d.refused(
        "POST",
        "/v1/snapshots/base/push",
        Some(json!({"remote": "ftp://x/y"})),
        400,
        "ftp://x/y",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/base/push",
        Some(remote),
        400,
        "credentials",
    )
    .await;
    assert!(d.vm_names().await.is_empty());
}
