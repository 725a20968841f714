//! Issue 21, the screen through the API: a screenshot of a VM with a display is a PNG
//! (its size from its header), typed text and key combinations are counted as QEMU
//! queued them; a VM without a display (409), a key that does not exist and text that
//! cannot be typed (400), and no such VM (404) are refused in one JSON line.

mod common;

use std::io::{Read, Write};

use common::Daemon;
use serde_json::json;

/// `GET path` over the socket: the status, the content type, the body's bytes.
fn get_bytes(d: &Daemon, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: thawd\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (status, content_type, all[end + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn screenshot_type_and_key_through_the_api() {
    let d = Daemon::start(&[]).await;
    d.boot("screen", json!({"memory_mib": 128, "display": {}}))
        .await;

    let (status, content_type, png) = get_bytes(&d, "/v1/vms/screen/screenshot");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&png));
    assert_eq!(content_type, "image/png");
    let (w, h) = thaw::screen::png_size(&png).expect("a PNG");
    assert!(w >= 640 && h >= 200, "{w}x{h}");

    let sent = d
        .expect(
            "POST",
            "/v1/vms/screen/type",
            Some(json!({"text": "echo hi\n"})),
            200,
        )
        .await;
    assert_eq!(sent, json!({"name": "screen", "keys": 8}));
    let sent = d
        .expect(
            "POST",
            "/v1/vms/screen/key",
            Some(json!({"keys": ["ctrl-l", "ret"]})),
            200,
        )
        .await;
    assert_eq!(sent, json!({"name": "screen", "keys": 2}));

    d.refused(
        "POST",
        "/v1/vms/screen/key",
        Some(json!({"keys": ["hyper-q"]})),
        400,
        "hyper",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms/screen/type",
        Some(json!({"text": "é"})),
        400,
        "cannot type",
    )
    .await;
    d.refused("GET", "/v1/vms/nope/screenshot", None, 404, "nope")
        .await;
    d.boot("dark", json!({"memory_mib": 128})).await;
    d.refused("GET", "/v1/vms/dark/screenshot", None, 409, "no display")
        .await;
    d.refused(
        "POST",
        "/v1/vms/dark/type",
        Some(json!({"text": "x"})),
        409,
        "no display",
    )
    .await;
}
