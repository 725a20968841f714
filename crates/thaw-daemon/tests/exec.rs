//! `POST /v1/vms/{name}/exec` carries binary output byte for byte (answers checked
//! against docs/openapi.json by the harness) and refuses output the agent cut.

mod common;

use base64::Engine as _;
use common::Daemon;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn exec_through_the_api_carries_binary_output_unaltered() {
    let d = Daemon::start(&[]).await;
    d.boot("bin", json!({})).await;
    let out = d
        .expect(
            "POST",
            "/v1/vms/bin/exec",
            Some(json!({"command": ["/bin/sh", "-c", "head -c 100000 /dev/urandom | tee /tmp/x"]})),
            200,
        )
        .await;
    assert_eq!(out["exit_code"], 0);
    let got = base64::engine::general_purpose::STANDARD
        .decode(out["stdout_base64"].as_str().expect("stdout_base64"))
        .unwrap();
    // The guest's own reading of the file, as text.
    let hex = d.sh("bin", "od -An -v -tx1 /tmp/x").await;
    let written: Vec<u8> = hex
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(written.len(), 100_000);
    assert!(got == written, "the API carried {} bytes", got.len());

    let big = json!({"command": ["head", "-c", "17825792", "/dev/zero"]});
    let answer = d.expect("POST", "/v1/vms/bin/exec", Some(big), 500).await;
    let msg = answer["error"].as_str().expect("an error message");
    assert!(
        !msg.contains('\n') && msg.contains("exceeded what the guest agent captures"),
        "{msg:?}"
    );
}
