//! Issue 21, API completeness: one VM (`GET /v1/vms/{name}`), one snapshot
//! (`GET /v1/snapshots/{tag}`), pause and resume through the API, 404 JSON for what is
//! not there, and `Retry-After` on the 429s of both routes that start VMs. One boot,
//! one snapshot; every answer is checked against docs/openapi.json.

mod common;

use std::io::{Read, Write};

use common::Daemon;
use serde_json::{json, Value};

/// A POST on its own connection: the status, the `Retry-After` header, the body.
fn post(socket: &std::path::Path, path: &str, body: &Value) -> (u16, Option<String>, Value) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: thawd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, rest) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry_after = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_owned())
    });
    (status, retry_after, serde_json::from_str(rest).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_vm_one_snapshot_pause_and_resume() {
    let d = Daemon::start(&["--max-vms", "1"]).await;
    d.expect(
        "POST",
        "/v1/vms",
        Some(json!({"name": "web", "memory_mib": 128})),
        201,
    )
    .await;

    // One VM: what the list says about it.
    let one = d.expect("GET", "/v1/vms/web", None, 200).await;
    let listed = d.expect("GET", "/v1/vms", None, 200).await;
    assert_eq!(one["name"], "web");
    assert_eq!(one["state"], "running", "{one}");
    assert_eq!(one["pid"], listed[0]["pid"], "{one} vs {listed}");
    d.refused("GET", "/v1/vms/nope", None, 404, "nope").await;
    d.refused("GET", "/v1/vms/a..b", None, 400, "a..b").await;

    // Pause and resume through the API; GET shows each state.
    let paused = d.expect("POST", "/v1/vms/web/pause", None, 200).await;
    assert_eq!(paused, json!({"paused": "web"}));
    assert_eq!(
        d.expect("GET", "/v1/vms/web", None, 200).await["state"],
        "paused"
    );
    // Twice is harmless.
    d.expect("POST", "/v1/vms/web/pause", None, 200).await;
    d.expect("POST", "/v1/vms/web/resume", None, 200).await;
    assert_eq!(
        d.expect("GET", "/v1/vms/web", None, 200).await["state"],
        "running"
    );
    let out = d
        .expect(
            "POST",
            "/v1/vms/web/exec",
            Some(json!({"command": ["/bin/echo", "after resume"]})),
            200,
        )
        .await;
    assert_eq!(out["stdout"], "after resume\n", "{out}");
    d.refused("POST", "/v1/vms/nope/pause", None, 404, "nope")
        .await;

    // One snapshot: what the list says about it.
    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base"})),
        201,
    )
    .await;
    let snap = d.expect("GET", "/v1/snapshots/base", None, 200).await;
    let all = d.expect("GET", "/v1/snapshots", None, 200).await;
    assert_eq!(snap, all[0], "{snap} vs {all}");
    assert_eq!(snap["tag"], "base");
    assert_eq!(snap["source_vm"], "web");
    d.refused(
        "GET",
        "/v1/snapshots/nope",
        None,
        404,
        "no snapshot tagged nope",
    )
    .await;
    d.refused("GET", "/v1/snapshots/a..b", None, 400, "a..b")
        .await;

    // The daemon is full (--max-vms 1): both routes that start VMs say when to retry.
    for (path, body) in [
        ("/v1/vms", json!({"name": "second", "memory_mib": 128})),
        ("/v1/snapshots/base/restore", json!({"count": 1})),
    ] {
        let (status, retry_after, answer) = post(&d.socket(), path, &body);
        assert_eq!(status, 429, "{path}: {answer}");
        let secs: u64 = retry_after
            .unwrap_or_else(|| panic!("{path}: a 429 without Retry-After"))
            .parse()
            .unwrap();
        assert!(secs >= 1, "{path}: Retry-After {secs}");
        assert!(answer["error"].as_str().unwrap().contains("--max-vms"));
    }

    d.expect("DELETE", "/v1/vms/web", None, 200).await;
    d.refused("GET", "/v1/vms/web", None, 404, "web").await;
}
