//! Issue 21, console logs through the API: `GET /v1/vms/{name}/logs` is what the guest
//! wrote on its serial console; with `follow=true` the answer goes on with what it writes
//! next and ends when the VM is stopped. Bad input: no such VM (404), a bad query (400).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use common::Daemon;
use serde_json::json;

fn get(d: &Daemon, path: &str) -> BufReader<std::os::unix::net::UnixStream> {
    let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: thawd\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(r.read_line(&mut head).unwrap() > 0, "{head}");
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/plain"), "{head}");
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn console_logs_whole_and_followed() {
    let d = Daemon::start(&[]).await;
    d.boot("web", json!({"memory_mib": 128})).await;
    d.sh("web", "echo first-marker > /dev/console").await;

    let mut whole = String::new();
    get(&d, "/v1/vms/web/logs")
        .read_to_string(&mut whole)
        .unwrap();
    assert!(whole.contains("first-marker"), "{whole}");

    // Followed: what was there, then what the guest writes next.
    let mut follow = get(&d, "/v1/vms/web/logs?follow=true");
    follow
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut line = String::new();
        while follow.read_line(&mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            line.clear();
        }
        seen
    });
    d.sh("web", "echo second-marker > /dev/console").await;
    // Stopping the VM ends the stream.
    d.expect("DELETE", "/v1/vms/web", None, 200).await;
    let seen = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    let first = seen.find("first-marker").expect(&seen);
    let second = seen.find("second-marker").expect(&seen);
    assert!(first < second, "{seen}");

    d.refused("GET", "/v1/vms/web/logs", None, 404, "web").await;
    d.boot("again", json!({"memory_mib": 128})).await;
    d.refused(
        "GET",
        "/v1/vms/again/logs?follow=maybe",
        None,
        400,
        "follow",
    )
    .await;
    d.refused("GET", "/v1/vms/again/logs?tail=5", None, 400, "tail")
        .await;
}
