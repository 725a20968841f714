//! A profile gives the same machine through the daemon as through the CLI: both
//! resolve it with `thaw::profile::resolve`.
//!
//! For each profile, one VM is booted with `thaw boot --profile P` in this process
//! (THAW_NO_DAEMON) and one with `POST /v1/vms {"name", "profile": P}` sent to
//! `thaw serve` as raw HTTP (no field but the name and the profile). Both are real
//! boots to a ready guest agent; what is compared is the machine spec recorded in each
//! VM's `vm.json` when its QEMU started (the spec its argv is rendered from) and the
//! guest ports it forwards. The debian guests must be built (`thaw guest build
//! --profile debian` / `debian-bios`).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use serde_json::{json, Value};

const PROFILES: [&str; 5] = [
    "default",
    "debian",
    "debian-bios",
    "debian-uefi",
    "debian-vnc",
];

/// `thaw serve` for the test's home; ended with SIGTERM on drop.
struct Serve(Child);

impl Serve {
    fn start(env: &Env) -> Serve {
        let child = env
            .command(&["serve"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let serve = Serve(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !env.path().join("thawd.sock").exists() {
            assert!(Instant::now() < deadline, "thaw serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.0.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request on the daemon's socket: the status and the JSON body.
fn post(env: &Env, path: &str, body: &Value) -> (u16, Value) {
    let mut s = UnixStream::connect(env.path().join("thawd.sock")).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// The spec a VM's QEMU was started with, and the guest ports it forwards.
fn machine(env: &Env, vm: &str) -> (Value, Vec<u64>) {
    let path = env.path().join("vms").join(vm).join("vm.json");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut guest_ports: Vec<u64> = state["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["guest"].as_u64().unwrap())
        .collect();
    guest_ports.sort();
    (state["spec"].clone(), guest_ports)
}

#[test]
fn every_profile_boots_the_same_machine_through_the_daemon_as_through_the_cli() {
    let env = Env::new();
    let serve = Serve::start(&env);
    for profile in PROFILES {
        let local = format!("cli-{profile}");
        let out = env
            .command(&["boot", &local, "--profile", profile, "--timeout", "900"])
            .env("THAW_NO_DAEMON", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "thaw boot --profile {profile}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let remote = format!("api-{profile}");
        let (status, report) = post(
            &env,
            "/v1/vms",
            &json!({ "name": remote, "profile": profile, "timeout_secs": 900 }),
        );
        assert_eq!(status, 201, "POST /v1/vms with profile {profile}: {report}");

        let (cli_spec, cli_ports) = machine(&env, &local);
        let (api_spec, api_ports) = machine(&env, &remote);
        assert_eq!(
            cli_spec, api_spec,
            "profile {profile}: the daemon's machine differs from the CLI's"
        );
        assert_eq!(
            cli_ports, api_ports,
            "profile {profile}: forwarded guest ports"
        );
        // What the profile is about made it into the spec (not two equal defaults).
        let expected_memory = if profile == "default" { 256 } else { 512 };
        assert_eq!(
            cli_spec["memory_mib"], expected_memory,
            "{profile}: {cli_spec}"
        );
        if profile != "default" {
            assert_eq!(cli_ports, [6379], "{profile}: redis is forwarded");
        }
        env.ok(&["stop", &local, &remote]);
    }
    drop(serve);
}
