//! Issue 21: a request id per request, echoed in `x-request-id` (the client's own when
//! it sends one it can have back, else a new UUID), also on errors; with
//! `THAW_LOG_FORMAT=json` every log line is one JSON object, and the request's line
//! carries its id; another format is refused in one line. No VM is started.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A GET on its own connection: the status and the `x-request-id` of the answer.
fn get(socket: &Path, path: &str, id: Option<&str>) -> (u16, Option<String>) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let extra = id
        .map(|i| format!("x-request-id: {i}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: thawd\r\nConnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, _) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let echoed = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-request-id")
            .then(|| v.trim().to_owned())
    });
    (status, echoed)
}

#[test]
fn every_answer_carries_a_request_id_and_json_logs_carry_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let log = dir.path().join("thawd.log");
    let mut thawd = Command::new(common::THAWD)
        .env("THAW_HOME", &home)
        .env("THAW_LOG", "info")
        .env("THAW_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let socket = home.join("thawd.sock");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !socket.exists() {
        assert!(thawd.try_wait().unwrap().is_none(), "thawd exited");
        assert!(Instant::now() < deadline, "thawd did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (status, echoed) = get(&socket, "/v1/health", Some("ci-42/run-7"));
    assert_eq!((status, echoed.as_deref()), (200, Some("ci-42/run-7")));
    let (status, fresh) = get(&socket, "/v1/vms/nope", None);
    assert_eq!(status, 404);
    let fresh = fresh.expect("an id on an error too");
    assert_eq!(fresh.len(), 36, "a UUID: {fresh}");
    let (_, other) = get(&socket, "/no/such/route", Some("has space"));
    let other = other.expect("an id on an unknown route too");
    assert!(other != fresh && other.len() == 36, "{other}");

    let pid = rustix::process::Pid::from_raw(thawd.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(thawd.wait().unwrap().success());

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let answered = |id: &str| {
        lines
            .iter()
            .find(|l| l["span"]["id"] == id && l["fields"]["message"] == "answered")
    };
    let line = answered("ci-42/run-7").unwrap_or_else(|| panic!("no answered line: {text}"));
    assert_eq!(line["fields"]["status"], 200, "{line}");
    assert_eq!(line["fields"]["route"], "/v1/health", "{line}");
    let line = answered(&fresh).unwrap_or_else(|| panic!("no answered line: {text}"));
    assert_eq!(line["fields"]["status"], 404, "{line}");
    assert_eq!(line["fields"]["route"], "/v1/vms/{name}", "{line}");

    // Another format: one line, nothing started.
    let out = Command::new(common::THAWD)
        .env("THAW_HOME", &home)
        .env("THAW_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "thawd: error: THAW_LOG_FORMAT=\"xml\" is not text or json"
    );
    assert!(!socket.exists());
}
