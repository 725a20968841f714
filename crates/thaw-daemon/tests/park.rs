//! Park and wake through the API (real QEMU, s3s-fs): a VM parked through one daemon
//! with a remote (202 and an operation of kind `park`, or 200 with `wait`) wakes through
//! another daemon with an empty home, with what it had in RAM; bad input is a 4xx with
//! one line, and leaves the VM as it was.

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::{json, Value};

/// s3s-fs on 127.0.0.1 with a bucket `thaw` (scripts/setup-s3.sh installs it).
struct S3 {
    child: Child,
    env: Vec<(String, String)>,
    _data: tempfile::TempDir,
}

impl S3 {
    fn start() -> S3 {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(data.path().join("thaw")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "k", "--secret-key", "s"])
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (scripts/setup-test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let env = [
            ("THAW_S3_ENDPOINT", format!("http://127.0.0.1:{port}")),
            ("AWS_ACCESS_KEY_ID", "k".into()),
            ("AWS_SECRET_ACCESS_KEY", "s".into()),
            ("AWS_REGION", "us-east-1".into()),
        ];
        S3 {
            child,
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            _data: data,
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operation `id` once it ended (guard only).
async fn ended(d: &Daemon, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let op = d
            .expect("GET", &format!("/v1/operations/{id}"), None, 200)
            .await;
        if op["state"] != "running" {
            return op;
        }
        assert!(Instant::now() < deadline, "{op}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn park_through_one_daemon_and_wake_through_another() {
    let s3 = S3::start();
    let a = Daemon::start_with_env(&[], &s3.env).await;
    a.boot("web", json!({"memory_mib": 128})).await;
    a.sh("web", "echo api-ram > /tmp/word").await;

    // Bad input first: the VM is left running, nothing parked.
    a.refused(
        "POST",
        "/v1/vms/web/park",
        Some(json!({"remote": "ftp://x/y"})),
        400,
        "ftp://x/y",
    )
    .await;
    a.refused(
        "POST",
        "/v1/vms/nope/park",
        Some(json!({"remote": "s3://thaw/api"})),
        404,
        "nope",
    )
    .await;
    a.refused(
        "POST",
        "/v1/wake",
        Some(json!({"name": "nope"})),
        404,
        "nope",
    )
    .await;
    a.refused(
        "POST",
        "/v1/wake",
        Some(json!({"name": "nope", "from": "ftp://x"})),
        400,
        "ftp://x",
    )
    .await;
    assert_eq!(a.vm_names().await, vec!["web"]);
    let parked = a.expect("GET", "/v1/parked", None, 200).await;
    assert_eq!(parked, json!([]));

    let answer = a
        .expect(
            "POST",
            "/v1/vms/web/park",
            Some(json!({"remote": "s3://thaw/api"})),
            202,
        )
        .await;
    assert_eq!(answer["snapshot"]["tag"], "web", "{answer}");
    let op = ended(&a, answer["operation"].as_str().unwrap()).await;
    assert_eq!(
        (&op["kind"], &op["state"]),
        (&"park".into(), &"done".into()),
        "{op}"
    );
    assert!(op["report"]["chunks_moved"].as_u64().unwrap() > 0, "{op}");
    let parked = a.expect("GET", "/v1/parked", None, 200).await;
    assert_eq!(parked[0]["name"], "web", "{parked}");
    assert_eq!(parked[0]["state"], "parked", "{parked}");
    assert!(a.vm_names().await.is_empty(), "the VM ended");

    // With wait: 200 once uploaded.
    a.boot("db", json!({"memory_mib": 128})).await;
    let answer = a
        .expect(
            "POST",
            "/v1/vms/db/park",
            Some(json!({"remote": "s3://thaw/api", "wait": true})),
            200,
        )
        .await;
    assert_eq!(answer["park"]["state"], "parked", "{answer}");
    assert!(answer.get("operation").is_none(), "{answer}");

    // Another daemon, another (empty) home: the VM wakes from the bucket.
    let b = Daemon::start_with_env(&[], &s3.env).await;
    let woke = b
        .expect(
            "POST",
            "/v1/wake",
            Some(json!({"name": "web", "from": "s3://thaw/api"})),
            201,
        )
        .await;
    assert_eq!(woke[0]["name"], "web", "{woke}");
    assert_eq!(b.sh("web", "cat /tmp/word").await, "api-ram\n");
    assert_eq!(b.vm_names().await, vec!["web"]);
    b.refused(
        "POST",
        "/v1/wake",
        Some(json!({"name": "web", "from": "s3://thaw/api"})),
        409,
        "web",
    )
    .await;
}
