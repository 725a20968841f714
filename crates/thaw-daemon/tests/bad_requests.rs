//! Requests that cannot work get a 4xx with one clear line and change nothing; the
//! socket is private; a second daemon is refused; a stale socket is replaced. No VM is
//! booted here.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::Daemon;
use serde_json::json;
use thaw_daemon::client::Client;

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let mut d = Daemon::start(&[]).await;
    assert!(
        Client::connect(&d.home().join("nothing.sock")).is_none(),
        "connect finds no daemon where none runs"
    );
    assert!(Client::connect(&d.socket()).is_some(), "blocking connect");
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is private");

    let health = d.expect("GET", "/v1/health", None, 200).await;
    assert_eq!(health["pid"], d.pid());
    assert_eq!(health["vms"], 0);

    // Not JSON, not sent as JSON, JSON of the wrong shape.
    let json_type = Some("application/json");
    d.raw_refused(
        "POST",
        "/v1/vms",
        json_type,
        "{not json",
        400,
        "invalid request body",
    );
    d.raw_refused(
        "POST",
        "/v1/vms",
        Some("text/plain"),
        r#"{"name":"x"}"#,
        415,
        "must be JSON",
    );
    d.raw_refused(
        "POST",
        "/v1/vms",
        json_type,
        "{}",
        422,
        "missing field `name`",
    );
    d.raw_refused(
        "POST",
        "/v1/vms",
        json_type,
        r#"{"name":"x","memroy":1}"#,
        422,
        "unknown field `memroy`",
    );
    d.raw_refused(
        "POST",
        "/v1/vms",
        json_type,
        r#"{"name":5}"#,
        422,
        "invalid type",
    );
    d.raw_refused(
        "POST",
        "/v1/vms/x/exec",
        json_type,
        "[1,",
        400,
        "invalid request body",
    );
    d.raw_refused(
        "PUT",
        "/v1/snapshots/x/pool",
        json_type,
        r#"{"size":1,"mode":"warm"}"#,
        422,
        "unknown variant `warm`",
    );

    // Names with '/' or '..', in bodies and in paths.
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "a/b"})),
        400,
        "contains '/'",
    )
    .await;
    d.refused("POST", "/v1/vms", Some(json!({"name": ".."})), 400, "'..'")
        .await;
    d.refused(
        "POST",
        "/v1/vms/a%2Fb/exec",
        Some(json!({"command": ["true"]})),
        400,
        "contains '/'",
    )
    .await;
    d.refused("DELETE", "/v1/vms/a..b", None, 400, "contains '..'")
        .await;
    d.refused(
        "POST",
        "/v1/vms/x/snapshot",
        Some(json!({"tag": "../etc"})),
        400,
        "invalid snapshot tag",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/..%2Fetc/restore",
        None,
        400,
        "invalid snapshot tag",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"name": "../x"})),
        400,
        "invalid VM name",
    )
    .await;
    d.refused(
        "PUT",
        "/v1/snapshots/a..b/pool",
        Some(json!({"size": 1})),
        400,
        "'..'",
    )
    .await;

    // Unknown VMs and snapshots.
    d.refused(
        "POST",
        "/v1/snapshots/nope/restore",
        Some(json!({"count": 2})),
        404,
        "no snapshot tagged nope",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/nope/restore",
        None,
        404,
        "no snapshot tagged nope",
    )
    .await;
    d.refused(
        "DELETE",
        "/v1/snapshots/nope",
        None,
        404,
        "no snapshot tagged nope",
    )
    .await;
    d.refused(
        "PUT",
        "/v1/snapshots/nope/pool",
        Some(json!({"size": 1, "mode": "paused"})),
        404,
        "no snapshot tagged nope",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms/nope/exec",
        Some(json!({"command": ["true"]})),
        404,
        "no VM named nope",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms/nope/snapshot",
        Some(json!({"tag": "t"})),
        404,
        "no VM named nope",
    )
    .await;
    d.refused("POST", "/v1/vms/nope/resume", None, 404, "no VM named nope")
        .await;
    d.refused("DELETE", "/v1/vms/nope", None, 404, "no VM named nope")
        .await;

    // Values that cannot work.
    d.refused(
        "POST",
        "/v1/snapshots/nope/restore",
        Some(json!({"count": 0})),
        400,
        "count must be at least 1",
    )
    .await;
    d.refused(
        "PUT",
        "/v1/snapshots/nope/pool",
        Some(json!({"size": 1000})),
        400,
        "at most 64",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms/x/exec",
        Some(json!({"command": []})),
        400,
        "command must not be empty",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "x", "kernel": "vmlinuz"})),
        400,
        "absolute path",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "x", "memory_mib": 1})),
        400,
        "memory must be between",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "x", "no_net": true, "ports": [{"host": 0, "guest": 80}]})),
        400,
        "need a network",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "x", "ready_port": 80})),
        400,
        "not forwarded",
    )
    .await;

    // Unknown endpoints and methods answer JSON too.
    d.refused("GET", "/v1/nothing", None, 404, "no endpoint /v1/nothing")
        .await;
    d.refused("DELETE", "/v1/health", None, 405, "DELETE is not allowed")
        .await;

    // Nothing changed.
    assert!(d.vm_names().await.is_empty());
    assert!(d.snapshot_tags().await.is_empty());
    assert_eq!(d.expect("GET", "/v1/pools", None, 200).await, json!([]));
    let vms_dir: Vec<_> = std::fs::read_dir(d.home().join("vms")).unwrap().collect();
    assert!(vms_dir.is_empty(), "a VM directory was left: {vms_dir:?}");
    assert!(d.processes().is_empty(), "a QEMU was left running");

    // A second daemon for the same home, or on the same socket, is refused.
    let out = d.command(&[]).stderr(Stdio::piped()).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another thawd already runs for"), "{err}");
    let other = tempfile::tempdir().unwrap();
    let socket = d.socket();
    let out = d
        .command(&["--socket", socket.to_str().unwrap()])
        .env("THAW_HOME", other.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another thawd already answers on"), "{err}");
    assert!(
        Client::connect(&d.socket()).is_some(),
        "the first daemon still answers"
    );

    // SIGTERM ends it and removes the socket; after kill -9 the stale socket is replaced.
    assert!(d.terminate().success());
    assert!(
        !d.socket().exists(),
        "the socket outlived a graceful shutdown"
    );
    common::eventually(
        "the pool keeper ends with the daemon",
        std::time::Duration::from_secs(10),
        || d.keepers().is_empty(),
    )
    .await;
    d.restart().await;
    d.kill9();
    assert!(d.socket().exists());
    d.restart().await;
    d.expect("GET", "/v1/health", None, 200).await;
}
