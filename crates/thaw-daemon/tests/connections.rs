//! Issue 19, defect 12 (the daemon's connections): a connection that sends half a
//! request head, or sits idle after an answer, was held open for ever; hyper's own
//! answers (431 for a huge header) had an empty body though every error is
//! `{"error": ...}`. No VM is booted here.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;

/// Generous: only a guard against a daemon that never closes.
const GUARD: Duration = Duration::from_secs(60);

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s
}

/// Reads until the daemon closes the connection; panics if it is still open after
/// [`GUARD`]. Returns what it read.
fn read_until_closed(s: &mut UnixStream, what: &str) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("{what}: still open after {GUARD:?} ({e})"),
        }
    }
}

/// The status and JSON body of one answer.
fn answer(bytes: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let body: Value = serde_json::from_str(&body[..len])
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {text:?}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_and_idle_connections_are_closed_and_every_error_has_a_json_body() {
    let d = Daemon::start(&["--header-timeout", "2"]).await;

    let mut half = connect(&d);
    half.write_all(b"GET /v1/health HTTP/1.1\r\nHost: th")
        .unwrap();
    let mut idle = connect(&d);
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nHost: thawd\r\n\r\n")
        .unwrap();
    let mut body = connect(&d);
    body.write_all(
        b"POST /v1/vms/x/exec HTTP/1.1\r\nHost: thawd\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"comm",
    )
    .unwrap();
    let t0 = Instant::now();

    // Meanwhile the daemon answers others.
    let health = d.expect("GET", "/v1/health", None, 200).await;
    assert_eq!(health["status"], "ok");

    let (half_bytes, idle_bytes, body_bytes) = tokio::task::spawn_blocking(move || {
        (
            read_until_closed(&mut half, "a half-sent head"),
            read_until_closed(&mut idle, "an idle kept-alive connection"),
            read_until_closed(&mut body, "a half-sent body"),
        )
    })
    .await
    .unwrap();
    println!("closed within {:?} (header timeout 2 s)", t0.elapsed());
    assert!(
        half_bytes.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&half_bytes)
    );
    // The kept-alive connection got its one answer, then was closed.
    let (status, health) = answer(&idle_bytes);
    assert_eq!((status, &health["status"]), (200, &Value::from("ok")));
    let (status, err) = answer(&body_bytes);
    assert_eq!(status, 408, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("did not arrive"),
        "{err}"
    );

    // A header far over hyper's limit: hyper answers 431 before any handler runs.
    let mut big = connect(&d);
    let mut req = b"GET /v1/health HTTP/1.1\r\nHost: thawd\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 1 << 20));
    req.extend_from_slice(b"\r\n\r\n");
    // The daemon may close before it has read it all.
    let _ = big.write_all(&req);
    let (status, err) = answer(&read_until_closed(&mut big, "a huge header"));
    assert_eq!(status, 431, "{err}");
    let msg = err["error"].as_str().expect("an error message");
    assert!(msg.contains("headers are too large"), "{msg}");

    // Not HTTP at all: 400, with a body too.
    let mut junk = connect(&d);
    junk.write_all(b"\x01\x02 nonsense\r\n\r\n").unwrap();
    let (status, err) = answer(&read_until_closed(&mut junk, "junk"));
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].is_string(), "{err}");

    d.expect("GET", "/v1/health", None, 200).await;
}
