//! `thaw exec` end to end: output byte for byte, output too large for the guest agent,
//! and an agent that stops answering while a command runs.

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Env;

/// Runs `thaw ARGS` and returns its raw output (stdout not decoded as text).
fn raw(env: &Env, args: &[&str]) -> Output {
    env.command(args)
        .stdin(Stdio::null())
        .output()
        .expect("run thaw")
}

/// The bytes of a guest file, read through `od` (text only, so independent of how
/// exec carries binary output).
fn guest_file(env: &Env, vm: &str, path: &str) -> Vec<u8> {
    env.sh(vm, &format!("od -An -v -tx1 {path}"))
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).expect("od prints hex bytes"))
        .collect()
}

#[test]
fn binary_exec_output_is_not_altered() {
    let env = Env::new();
    env.boot("bin", &[]);
    let script = "head -c 100000 /dev/urandom | tee /tmp/x";
    let out = raw(&env, &["exec", "bin", "--", "/bin/sh", "-c", script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = guest_file(&env, "bin", "/tmp/x");
    assert_eq!(written.len(), 100_000);
    assert!(
        out.stdout == written,
        "thaw exec printed {} bytes, not the 100000 the guest wrote",
        out.stdout.len()
    );

    let doc = env
        .ok(&["exec", "--json", "bin", "--", "cat", "/tmp/x"])
        .json();
    let b64 = doc["stdout_base64"].as_str().expect("stdout_base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert!(bytes == written, "--json carried {} bytes", bytes.len());
    assert!(
        doc.get("stdout").is_none(),
        "binary stdout has no text form"
    );
    // Text output keeps its text field.
    let doc = env
        .ok(&["exec", "--json", "bin", "--", "echo", "hi"])
        .json();
    assert_eq!(doc["stdout"], "hi\n");
    assert_eq!(doc["stdout_base64"], "aGkK");
}

#[test]
fn exec_output_beyond_what_the_agent_captures_is_an_error() {
    let env = Env::new();
    env.boot("big", &[]);
    let r = env.run(&["exec", "big", "--", "head", "-c", "17825792", "/dev/zero"]);
    r.fails_with("exceeded what the guest agent captures");
    // Within the cap, the whole output arrives.
    let out = raw(
        &env,
        &["exec", "big", "--", "head", "-c", "1048576", "/dev/zero"],
    );
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 1_048_576);
}

#[test]
fn exec_returns_when_the_guest_agent_stops_answering() {
    let env = Env::new();
    env.boot("hang", &[]);
    // The agent serves one connection at a time, so the stop is set up first, in the
    // guest: qemu-ga is stopped as soon as the command below runs.
    env.sh(
        "hang",
        "(until pidof sleep; do usleep 50000; done; kill -STOP $(pidof qemu-ga)) \
         >/dev/null 2>&1 &",
    );
    let timeout_secs = 20;
    let first = env
        .command(&[
            "exec",
            "hang",
            "--timeout",
            &timeout_secs.to_string(),
            "--",
            "sleep",
            "30",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = first;
    // Deadlock guard only: the exec must end by itself.
    let guard = Instant::now() + Duration::from_secs(timeout_secs + 120);
    while first.try_wait().unwrap().is_none() {
        if Instant::now() > guard {
            let _ = first.kill();
            panic!("thaw exec did not return after the guest agent stopped answering");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = first.wait_with_output().unwrap();
    let r = common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    r.fails_with("the guest agent stopped answering");
}
