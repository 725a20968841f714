//! docs/openapi.json is what `thawd openapi` generates, the schema checker really
//! checks, and docs/api.md covers every endpoint.

mod common;

use common::openapi::spec;
use serde_json::json;

/// The committed document is the generated one: a request or report type that changed
/// without `thawd openapi > docs/openapi.json` fails here.
#[test]
fn the_committed_openapi_document_is_the_generated_one() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thawd"))
        .arg("openapi")
        .output()
        .expect("run thawd openapi");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("thawd openapi prints JSON");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        generated == committed,
        "docs/openapi.json differs from what thawd generates: run `thawd openapi > docs/openapi.json`"
    );
}

#[test]
fn the_validator_catches_drift() {
    let s = spec();
    s.check_response(
        "GET",
        "/v1/health",
        200,
        &json!({"status": "ok", "version": "0.1.0", "pid": 1, "vms": 0}),
    );
    let bad = std::panic::catch_unwind(|| {
        s.check_response(
            "GET",
            "/v1/health",
            200,
            &json!({"status": "ok", "extra": 1}),
        )
    });
    assert!(
        bad.is_err(),
        "a body with a missing and an unknown field passed"
    );
    let undocumented = std::panic::catch_unwind(|| {
        s.check_response("GET", "/v1/health", 418, &json!({"error": "teapot"}))
    });
    assert!(undocumented.is_err(), "an undocumented status passed");
    // nullable fields accept null
    s.check_response(
        "GET",
        "/v1/pools",
        200,
        &json!([{"tag": "t", "size": 1, "mode": "paused", "ready": 0, "filling": 1, "last_error": null}]),
    );
}

#[test]
fn the_guide_covers_every_endpoint() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let line = format!("{} {path}", method.to_uppercase());
            assert!(guide.contains(&line), "docs/api.md does not mention {line}");
        }
    }
}

/// Every JSON request body's schema carries an example, so that the document shows a body
/// that works (utoipa `example`), and the example is valid against its own schema.
#[test]
fn every_request_body_has_an_example() {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r.trim_start_matches("#/components/schemas/").to_owned());
                }
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let s = spec();
    let mut bodies = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(body) = op.get("requestBody") else {
                continue;
            };
            // A file's bytes (PUT /v1/vms/{name}/files) have no JSON schema to show.
            if body["content"].get("application/json").is_none() {
                continue;
            }
            let mut names = Vec::new();
            refs(body, &mut names);
            assert!(!names.is_empty(), "{method} {path}: no schema for the body");
            for name in names {
                let example = &doc["components"]["schemas"][&name]["example"];
                assert!(
                    example.is_object(),
                    "{method} {path}: the schema {name} has no example"
                );
                s.check_request(&method.to_uppercase(), path, example);
                bodies += 1;
            }
        }
    }
    assert!(bodies >= 6, "only {bodies} request bodies found");
}

/// `thawd man DIR` (hidden; scripts/package.sh runs it) writes thawd.1, naming the
/// options, and a page for `openapi`; not one for itself.
#[test]
fn thawd_man_writes_its_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thawd"))
        .arg("man")
        .arg(&dir)
        .output()
        .expect("run thawd man");
    assert!(out.status.success(), "{out:?}");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["thawd-openapi.1", "thawd.1"]);
    let roff = std::fs::read_to_string(dir.join("thawd.1")).unwrap();
    assert!(roff.lines().any(|l| l.starts_with(".TH thawd 1")), "{roff}");
    for option in ["\\-\\-socket", "\\-\\-max\\-vms", "\\-\\-listen"] {
        assert!(roff.contains(option), "thawd.1 does not name {option}");
    }
}
