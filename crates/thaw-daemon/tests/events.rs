//! Issue 21, events: `GET /v1/events` streams what happens, in order, with the VMs'
//! names. A real daemon, real QEMU: boot, snapshot, a warm pool that fills, a restore
//! from it (and the pool filling again), a stop through the API, a QEMU killed with
//! SIGKILL from outside (noticed by the daemon's reaper), a snapshot removed. Then the
//! stream ends when the daemon stops.

mod common;

use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};
use thaw_daemon::client::Client;
use tokio::sync::mpsc;

/// Follows the daemon's events on its own task; they arrive on the receiver. The
/// sender is dropped when the stream ends.
fn follow(d: &Daemon) -> mpsc::UnboundedReceiver<Value> {
    let client = Client::unix(&d.socket());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = client.events(|e| tx.send(e).is_ok()).await;
    });
    rx
}

/// The next event, within 180 s (a pooled clone is prepared under TCG meanwhile).
async fn next(rx: &mut mpsc::UnboundedReceiver<Value>, d: &Daemon) -> Value {
    match tokio::time::timeout(Duration::from_secs(180), rx.recv()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the event stream ended\n{}", d.log()),
        Err(_) => panic!("no event within 180 s\n{}", d.log()),
    }
}

/// The event's type and the one field that names what it is about.
fn short(e: &Value) -> (String, String) {
    let about = ["tag", "vm"]
        .iter()
        .find_map(|k| e[*k].as_str())
        .unwrap_or_default();
    (e["type"].as_str().unwrap().to_owned(), about.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_arrive_in_order_with_the_vms_names() {
    let mut d = Daemon::start(&[]).await;
    // The first event comes at the end of a boot (seconds): the subscription is in
    // place long before.
    let mut rx = follow(&d);

    let mut seen = Vec::new();
    let expect = |seen: &mut Vec<Value>, e: Value, kind: &str, about: &str| {
        assert_eq!(short(&e), (kind.to_owned(), about.to_owned()), "{e}");
        seen.push(e);
    };

    let booted = d.boot("web", json!({"memory_mib": 128})).await;
    let e = next(&mut rx, &d).await;
    assert_eq!(e["pid"], booted["pid"], "{e}");
    expect(&mut seen, e, "vm.created", "web");
    let e = next(&mut rx, &d).await;
    assert_eq!(e["source"], "boot", "{e}");
    expect(&mut seen, e, "vm.ready", "web");

    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base"})),
        201,
    )
    .await;
    let e = next(&mut rx, &d).await;
    assert_eq!(e["vm"], "web", "{e}");
    expect(&mut seen, e, "snapshot.taken", "base");

    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 1})),
        200,
    )
    .await;
    let e = next(&mut rx, &d).await;
    assert_eq!(
        (e["ready"].clone(), e["size"].clone()),
        (json!(1), json!(1))
    );
    expect(&mut seen, e, "pool.refilled", "base");

    let restored = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "clone"})),
            201,
        )
        .await;
    let e = next(&mut rx, &d).await;
    assert_eq!(e["snapshot"], "base", "{e}");
    assert_eq!(e["pid"], restored[0]["pid"], "{e}");
    expect(&mut seen, e, "vm.created", "clone");
    let e = next(&mut rx, &d).await;
    assert_eq!(e["source"], "pool", "{e}");
    expect(&mut seen, e, "vm.ready", "clone");
    // The pool fills again.
    let e = next(&mut rx, &d).await;
    expect(&mut seen, e, "pool.refilled", "base");

    d.expect("DELETE", "/v1/vms/clone", None, 200).await;
    let e = next(&mut rx, &d).await;
    assert_eq!(e["reason"], "stopped", "{e}");
    expect(&mut seen, e, "vm.stopped", "clone");

    // A QEMU killed from outside: the daemon notices and says how it ended.
    common::kill9(booted["pid"].as_u64().unwrap() as u32);
    let e = next(&mut rx, &d).await;
    assert_eq!(e["pid"], booted["pid"], "{e}");
    assert_eq!(e["status"], "killed by signal 9", "{e}");
    expect(&mut seen, e, "vm.died", "web");

    d.expect("DELETE", "/v1/snapshots/base", None, 200).await;
    let e = next(&mut rx, &d).await;
    expect(&mut seen, e, "snapshot.removed", "base");

    // Sequence numbers go up by one: nothing came in between.
    let ids: Vec<u64> = seen.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    assert!(seen.iter().all(|e| e["time_unix_ms"].as_u64().unwrap() > 0));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "an event nothing caused"
    );

    // The stream ends when the daemon stops (and does not keep it from stopping).
    assert!(d.terminate().success(), "{}", d.log());
    let end = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
}

/// `GET /v1/events` is an SSE stream: `event:` is the type, `id:` the sequence number,
/// `data:` the JSON.
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_is_server_sent_events() {
    use std::io::{BufRead, BufReader, Write};
    let d = Daemon::start(&[]).await;
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    s.write_all(b"GET /v1/events HTTP/1.1\r\nHost: thawd\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(r.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    // A snapshot of a VM that is not there changes nothing; a VM that boots does.
    d.refused(
        "POST",
        "/v1/vms/nope/snapshot",
        Some(json!({"tag": "x"})),
        404,
        "nope",
    )
    .await;
    let booted = d.boot("sse", json!({"memory_mib": 128})).await;
    let mut lines = Vec::new();
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("data:"))
        .count()
        < 2
    {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0);
        let line = line.trim_end().to_owned();
        // Chunk sizes of the chunked encoding are lines of hex digits.
        if !line.is_empty() && !line.chars().all(|c| c.is_ascii_hexdigit()) {
            lines.push(line);
        }
    }
    assert_eq!(lines[0], "event: vm.created", "{lines:?}");
    let data = lines[2].strip_prefix("data:").unwrap().trim();
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(lines[1], format!("id: {}", data["id"]), "{lines:?}");
    assert_eq!(data["vm"], "sse");
    assert_eq!(data["pid"], booted["pid"]);
}
