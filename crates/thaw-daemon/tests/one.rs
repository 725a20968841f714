//! Issue 21, API completeness: one VM (`GET /v1/vms/{name}`), one snapshot
//! (`GET /v1/snapshots/{tag}`), pause and resume through the API, 404 JSON for what is
//! not there, `Retry-After` on the 429s of both routes that start VMs, and `GET
//! /metrics` whose counters moved with what was done. One boot, one snapshot, one
//! restore; every JSON answer is checked against docs/openapi.json.

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

/// `GET /metrics` over the socket: its content type and text.
fn scrape(socket: &std::path::Path) -> (String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: thawd\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (content_type, body.to_owned())
}

/// The value of the sample `series` (name and labels as printed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_vm_one_snapshot_pause_and_resume() {
    let d = Daemon::start(&["--max-vms", "2"]).await;
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

    // A warm pool, then one clone: from the pool if it was ready, else a miss.
    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 1, "mode": "paused"})),
        200,
    )
    .await;
    let clones = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"count": 1})),
            201,
        )
        .await;
    let clone = clones[0]["name"].as_str().unwrap().to_owned();
    let source = clones[0]["breakdown"]["source"]
        .as_str()
        .unwrap()
        .to_owned();

    // The metrics moved with all of that.
    let (content_type, text) = scrape(&d.socket());
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("thaw_"), "{line}");
    }
    assert_eq!(sample(&text, "thaw_vms_running"), 2.0, "{text}");
    assert_eq!(
        sample(&text, "thaw_snapshot_pause_seconds_count"),
        1.0,
        "{text}"
    );
    assert!(
        sample(&text, "thaw_snapshot_pause_seconds_sum") > 0.0,
        "{text}"
    );
    let by = |name: &str, source: &str| sample(&text, &format!("{name}{{source=\"{source}\"}}"));
    assert_eq!(by("thaw_restores_total", &source), 1.0, "{source}: {text}");
    assert_eq!(by("thaw_restore_seconds_count", &source), 1.0, "{text}");
    assert!(by("thaw_restore_seconds_sum", &source) > 0.0, "{text}");
    let other = if source == "pool" { "spawn" } else { "pool" };
    assert_eq!(by("thaw_restores_total", other), 0.0, "{text}");
    let missed = if source == "spawn" { 1.0 } else { 0.0 };
    assert_eq!(
        sample(&text, "thaw_pool_misses_total{tag=\"base\"}"),
        missed,
        "{source}: {text}"
    );
    assert_eq!(sample(&text, "thaw_pool_size{tag=\"base\"}"), 1.0, "{text}");
    let requests = |method: &str, route: &str, status: u16| {
        sample(
            &text,
            &format!("thaw_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(requests("GET", "/v1/vms/{name}", 200), 3.0, "{text}");
    assert_eq!(requests("GET", "/v1/vms/{name}", 404), 1.0, "{text}");
    assert_eq!(requests("GET", "/v1/vms/{name}", 400), 1.0, "{text}");
    assert_eq!(requests("POST", "/v1/vms/{name}/pause", 200), 2.0, "{text}");
    assert_eq!(
        requests("POST", "/v1/snapshots/{tag}/restore", 201),
        1.0,
        "{text}"
    );

    // The daemon is full (--max-vms 2): both routes that start VMs say when to retry.
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

    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 0})),
        200,
    )
    .await;
    d.expect("DELETE", &format!("/v1/vms/{clone}"), None, 200)
        .await;
    d.expect("DELETE", "/v1/vms/web", None, 200).await;
    d.refused("GET", "/v1/vms/web", None, 404, "web").await;
}
