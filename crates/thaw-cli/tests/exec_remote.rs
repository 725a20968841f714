//! `thaw exec` and `thaw cp` through thawd (`thaw serve`, THAW_HOST=unix://…): the
//! streaming route carries output as it comes (first line before the end), binary
//! bytes, stdin, exit codes (the guest's, 124, 125); the file routes copy both ways
//! with the mode and refuse a missing path in one line.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Env;

/// `thaw serve` in the test's home; SIGTERM when dropped.
struct Serve(Child);

impl Serve {
    fn start(env: &Env) -> Serve {
        let socket = env.path().join("thawd.sock");
        let child = env
            .command(&["serve"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut serve = Serve(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !socket.exists() {
            assert!(serve.0.try_wait().unwrap().is_none(), "thaw serve exited");
            assert!(Instant::now() < deadline, "thaw serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.0.wait();
    }
}

fn md5(bytes: &[u8]) -> String {
    let mut c = std::process::Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn exec_and_cp_through_thawd() {
    let env = Env::new();
    let _serve = Serve::start(&env);
    let host = format!("unix://{}", env.path().join("thawd.sock").display());
    let env = env.with_env("THAW_HOST", &host);
    env.boot("far", &[]);

    // Streams: the first line arrives while the command still runs.
    let mut child = env
        .command(&[
            "exec",
            "far",
            "--",
            "/bin/sh",
            "-c",
            "echo first; sleep 2; echo second",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line came at the end"
    );
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "second\n");
    assert!(child.wait().unwrap().success());

    // Binary output, byte for byte (checked against the guest's own digest).
    let got = env
        .command(&[
            "exec",
            "far",
            "--",
            "/bin/sh",
            "-c",
            "head -c 300000 /dev/urandom | tee /tmp/r",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(got.status.success());
    assert_eq!(got.stdout.len(), 300_000);
    let guest = env.sh("far", "md5sum /tmp/r");
    assert_eq!(guest.split_whitespace().next().unwrap(), md5(&got.stdout));

    // Stdin, env, workdir.
    let mut child = env
        .command(&[
            "exec",
            "-i",
            "-e",
            "K=v",
            "-w",
            "/proc",
            "far",
            "--",
            "/bin/sh",
            "-c",
            "cat; echo \"$K $PWD\"",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from the host\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the host\nv /proc\n"
    );

    // Exit codes.
    assert_eq!(
        env.run(&["exec", "far", "--", "/bin/sh", "-c", "exit 7"])
            .code,
        7
    );
    let r = env.run(&["exec", "--timeout", "2", "far", "--", "sleep", "100"]);
    r.fails_with("timed out after 2 s; the guest process was killed");
    assert_eq!(r.code, 124);
    assert_eq!(
        env.sh("far", "pidof sleep | wc -w").trim(),
        "1",
        "only init's sleep is left"
    );
    let r = env.run(&["exec", "nosuch", "--", "true"]);
    r.fails_with("no VM named");
    assert_eq!(r.code, 125);

    // cp both ways with the mode.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("data.bin");
    let data: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    env.ok(&["cp", src.to_str().unwrap(), "far:/tmp"]);
    assert_eq!(env.sh("far", "stat -c %a /tmp/data.bin").trim(), "640");
    let back = dir.path().join("back.bin");
    env.ok(&["cp", "far:/tmp/data.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data);
    assert_eq!(
        std::fs::metadata(&back).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    env.run(&["cp", "far:/no/such", back.to_str().unwrap()])
        .fails_with("no such file in the guest: /no/such");
    assert!(
        Path::new(&back).exists(),
        "a failed copy does not remove an older file"
    );
}
