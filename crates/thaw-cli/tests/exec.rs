//! `thaw exec` end to end: output streamed as the guest writes it and byte for byte,
//! 200 MiB of it in bounded memory, stdin, environment and working directory, a
//! timeout that kills the guest process, exit codes (the guest's, 124, 125), and an
//! agent that stops answering while a command runs.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
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
fn exec_returns_when_the_guest_agent_stops_answering() {
    let env = Env::new();
    env.boot("hang", &[]);
    // The agent serves one connection at a time, so the stop is set up first, in the
    // guest: qemu-ga is stopped as soon as the command below runs.
    env.sh(
        "hang",
        "(until [ -e /tmp/stop-agent ]; do usleep 50000; done; kill -STOP $(pidof qemu-ga)) \
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
            "/bin/sh",
            "-c",
            "touch /tmp/stop-agent; sleep 30",
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

/// The first line of a command that prints, sleeps and prints again arrives while the
/// command still runs (thaw has not exited), not at its end.
#[test]
fn exec_streams_output_as_the_guest_writes_it() {
    let env = Env::new();
    env.boot("stream", &[]);
    let script = "echo first; sleep 2; echo second >&2; sleep 1; echo third";
    let mut child = env
        .command(&["exec", "stream", "--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line came only when the command had ended"
    );
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut eline = String::new();
    err.read_line(&mut eline).unwrap();
    assert_eq!(eline, "second\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "stderr came only when the command had ended"
    );
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "third\n");
    assert!(child.wait().unwrap().success());
}

/// The high-water mark of a process's resident memory, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// 200 MiB of output pass through `thaw exec` whole while thaw's resident memory
/// stays under 64 MiB: it holds one chunk at a time, not the output.
#[test]
fn exec_streams_200_mib_in_bounded_memory() {
    let env = Env::new();
    env.boot("flood", &[]);
    let total: u64 = 200 << 20;
    let mut child = env
        .command(&[
            "exec",
            "flood",
            "--timeout",
            "3600",
            "--",
            "head",
            "-c",
            &total.to_string(),
            "/dev/zero",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut got, mut hwm, mut nonzero) = (0u64, 0u64, false);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        nonzero |= buf[..n].iter().any(|&b| b != 0);
        got += n as u64;
        hwm = hwm.max(vm_hwm_kib(pid).unwrap_or(0));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(got, total, "thaw exec passed {got} of {total} bytes");
    assert!(!nonzero, "the output was altered");
    assert!(hwm > 0, "VmHWM of thaw was never read");
    assert!(
        hwm < 64 * 1024,
        "thaw's resident memory peaked at {hwm} KiB for 200 MiB of output"
    );
}

/// `-i` sends stdin (binary, byte for byte); `-e` and `-w` reach the command.
#[test]
fn exec_takes_stdin_env_and_workdir() {
    let env = Env::new();
    env.boot("input", &[]);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut child = env
        .command(&["exec", "-i", "input", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&sent));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == data,
        "cat gave back {} bytes",
        out.stdout.len()
    );

    let r = env.ok(&[
        "exec",
        "-e",
        "GREETING=hello world",
        "-e",
        "EMPTY=",
        "-w",
        "/proc",
        "input",
        "--",
        "/bin/sh",
        "-c",
        "echo \"$GREETING|$EMPTY|$PWD\"",
    ]);
    assert_eq!(r.stdout, "hello world||/proc\n");
    // Without -i, stdin is empty.
    assert_eq!(
        env.ok(&["exec", "input", "--", "wc", "-c"]).stdout.trim(),
        "0"
    );
}

/// `--timeout` kills the guest command and what it started; thaw says so and exits 124.
#[test]
fn exec_timeout_kills_the_guest_process() {
    let env = Env::new();
    env.boot("slow", &[]);
    let script = "sleep 301 & echo $! > /tmp/child; echo $$ > /tmp/main; exec sleep 300";
    let r = env.run(&[
        "exec",
        "--timeout",
        "3",
        "slow",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    r.fails_with("timed out after 3 s; the guest process was killed");
    assert_eq!(r.code, 124);
    let left = env.sh(
        "slow",
        "for p in $(cat /tmp/main) $(cat /tmp/child); do [ -e /proc/$p ] && echo $p; done; true",
    );
    assert_eq!(left, "", "still running in the guest: {left}");
    // The only scratch directory left is the one of the exec that looks.
    let scratch = env.sh(
        "slow",
        "ls -a /var/tmp /tmp 2>/dev/null | grep -c '^.thaw-'",
    );
    assert_eq!(
        scratch.trim(),
        "1",
        "the timed-out exec left its scratch directory"
    );
}

/// The guest command's exit code passes through (a signal as 128 + it); thaw's own
/// failures are 125 with one line.
#[test]
fn exec_exit_codes_tell_the_guest_from_thaw() {
    let env = Env::new();
    env.boot("codes", &[]);
    assert_eq!(
        env.run(&["exec", "codes", "--", "/bin/sh", "-c", "exit 7"])
            .code,
        7
    );
    assert_eq!(
        env.run(&["exec", "codes", "--", "/bin/sh", "-c", "kill -9 $$"])
            .code,
        137
    );
    assert_eq!(env.run(&["exec", "codes", "--", "/no/such/cmd"]).code, 127);
    for (args, needle) in [
        (vec!["exec", "nosuch", "--", "true"], "no VM named"),
        (
            vec!["exec", "-w", "/no/dir", "codes", "--", "true"],
            "no directory /no/dir",
        ),
        (
            vec!["exec", "-e", "NOEQUALS", "codes", "--", "true"],
            "is not KEY=VALUE",
        ),
        (vec!["exec", "codes"], "required"),
    ] {
        let r = env.run(&args);
        r.fails_with(needle);
        assert_eq!(r.code, 125, "{args:?}: {}", r.stderr);
    }
}

/// SIGINT during an exec kills the guest command (nothing is left running in the
/// guest), and thaw says so in one line and exits 130.
#[test]
fn exec_interrupted_kills_the_guest_command() {
    let env = Env::new();
    env.boot("intr", &[]);
    let script = "echo $$ > /tmp/p; echo go; exec sleep 300";
    let mut child = env
        .command(&["exec", "intr", "--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "go\n");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let done = child.wait_with_output().unwrap();
    let r = common::Run {
        code: done.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
    };
    r.fails_with("interrupted: the guest command was killed");
    assert_eq!(r.code, 130);
    let left = env.sh(
        "intr",
        "[ -e /proc/$(cat /tmp/p) ] && echo alive || echo gone",
    );
    assert_eq!(left, "gone\n");
}
