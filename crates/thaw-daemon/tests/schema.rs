//! The live daemon against its own description, and against names that are not names.
//!
//! - schemathesis (PyPI; `scripts/setup-test.sh` installs it) generates requests from
//!   docs/openapi.json — valid and invalid — and checks that every answer matches the
//!   document and none is a 5xx. The daemon speaks HTTP on a Unix socket only, so the
//!   test puts a small TCP → Unix socket forwarder in front of it. `GET /v1/events`
//!   (an endless stream) is left out; tests/events.rs covers it. It runs with
//!   `--max-vms 0`, so that no generated request boots or restores anything.
//! - VM names and snapshot tags in paths and bodies with `/`, `..`, NUL, 300
//!   characters, unicode, a leading `-`: each a 400 (or 404 when the path no longer
//!   names an endpoint) with one line, and nothing created outside `$THAW_HOME`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Daemon;
use serde_json::json;

/// Accepts TCP connections on 127.0.0.1 and relays each to the Unix socket. Each
/// direction is shut down for writing when its source ends, so that a "Connection:
/// close" answer reaches the client as the end of the stream.
fn forward(socket: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let Ok(unix) = UnixStream::connect(&socket) else {
                continue;
            };
            let (mut tcp_in, mut unix_out) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_in, &mut unix_out);
                let _ = unix_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut unix_in, mut tcp_out) = (unix, tcp);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_in, &mut tcp_out);
                let _ = tcp_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    port
}

fn schemathesis() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("schemathesis"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "schemathesis is not installed: run scripts/setup-test.sh (pip install schemathesis)"
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_every_answer_as_documented_and_no_5xx() {
    let d = Daemon::start(&["--max-vms", "0"]).await;
    let port = forward(d.socket());
    // Through the forwarder, as schemathesis will see it.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let examples = std::env::var("THAW_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".into());
    let report = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis())
            .arg("run")
            .arg(&spec)
            .args(["--url", &format!("http://127.0.0.1:{port}")])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
            .args(["--max-examples", &examples])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--seed", "12"])
            .args(["--workers", "1"])
            .args(["--generation-database", "none"])
            .args(["--request-timeout", "30"])
            // An endless stream (Server-Sent Events): it never completes as a request
            // does. Its framing and events are tested in tests/events.rs.
            .args(["--exclude-path", "/v1/events"])
            .args(["--report-dir"])
            .arg(report.path())
            .arg("--no-color")
            // It keeps a cache in its working directory.
            .current_dir(report.path())
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.contains("passed")
                || l.contains("failed")
                || l.contains("cases")
                || l.contains("errors")
        })
        .collect();
    println!("schemathesis: {}", summary.join(" | "));
    assert!(
        out.status.success(),
        "schemathesis found answers that do not match docs/openapi.json:\n{stdout}\n{}\n--- thawd log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert!(
        d.processes().is_empty(),
        "a generated request started a QEMU"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn names_in_paths_and_bodies_are_refused_with_one_line() {
    let d = Daemon::start(&["--max-vms", "0"]).await;
    let long = "x".repeat(300);
    let mut tried = 0;
    // Path segments, percent-encoded as a client would send them.
    for seg in [
        "%2e%2e",
        "a%2Fb",
        "..%2F..%2Fetc",
        "a%00b",
        long.as_str(),
        "%C3%A9",
        "%E5%90%8D",
        "-x",
        ".hidden",
        "sp%20ace",
        "new%0Aline",
    ] {
        for (method, path, body) in [
            (
                "POST",
                format!("/v1/vms/{seg}/exec"),
                r#"{"command": ["true"]}"#,
            ),
            ("POST", format!("/v1/vms/{seg}/snapshot"), r#"{"tag": "t"}"#),
            ("POST", format!("/v1/vms/{seg}/resume"), ""),
            ("POST", format!("/v1/vms/{seg}/reset"), ""),
            ("DELETE", format!("/v1/vms/{seg}"), ""),
            ("POST", format!("/v1/snapshots/{seg}/restore"), ""),
            ("DELETE", format!("/v1/snapshots/{seg}"), ""),
            ("PUT", format!("/v1/snapshots/{seg}/pool"), r#"{"size": 0}"#),
        ] {
            let (status, answer) = d.raw(method, &path, Some("application/json"), body);
            let msg = answer["error"].as_str().unwrap_or("");
            assert!(
                status == 400 && msg.contains("invalid") && !msg.contains('\n'),
                "{method} {path}: {status} {answer}"
            );
            tried += 1;
        }
    }
    // Names in bodies, NUL and control characters included.
    for name in ["a/b", "..", "a\u{0}b", &long, "é", "-x", ".h", "", "a\nb"] {
        for (path, body) in [
            ("/v1/vms".to_owned(), json!({ "name": name })),
            ("/v1/vms/vm/snapshot".to_owned(), json!({ "tag": name })),
            ("/v1/vms/vm/reset".to_owned(), json!({ "to": name })),
            (
                "/v1/snapshots/base/restore".to_owned(),
                json!({ "name": name }),
            ),
        ] {
            let (status, answer) = d.call("POST", &path, Some(body.clone())).await;
            let msg = answer["error"].as_str().unwrap_or("");
            assert!(
                status == 400 && msg.contains("invalid") && !msg.contains('\n'),
                "POST {path} {body}: {status} {answer}"
            );
            tried += 1;
        }
    }
    let home = d.home();
    let outside: Vec<_> = std::fs::read_dir(home.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        outside.iter().all(|n| n == "home" || n == "thawd.log"),
        "created outside $THAW_HOME: {outside:?}"
    );
    assert!(!home.join("vms").read_dir().unwrap().any(|_| true));
    println!("daemon names: {tried} bad names in paths and bodies, {tried} refused with one line");
}

/// A query string the daemon cannot read was answered by axum in text/plain, not with
/// the JSON error every other refusal is (found by schemathesis).
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_query_string_gets_a_json_error() {
    let d = Daemon::start(&["--max-vms", "0"]).await;
    for q in [
        "recursive=null",
        "recursive=maybe",
        "recursive=1&recursive=0",
        "other=1",
    ] {
        d.raw_refused(
            "DELETE",
            &format!("/v1/snapshots/t?{q}"),
            None,
            "",
            400,
            "query string",
        );
    }
}
