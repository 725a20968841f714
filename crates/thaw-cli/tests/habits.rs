//! The command line's habits: a usage error keeps clap's tip on its one line, `--json`
//! makes every error JSON (usage errors too), ranges are checked before anything is
//! fetched or built, `thaw inspect VM|TAG`, `thaw logs -f`, and the exit codes the README
//! documents (0 ok, 1 a thaw error, 2 usage).

mod common;

use std::io::BufRead;
use std::process::Stdio;
use std::time::Duration;

use common::Env;

#[test]
fn usage_errors_keep_clap_s_tip_on_their_one_line_and_exit_2() {
    let env = Env::new();
    let r = env.run(&["boto", "x"]);
    r.fails_with("unrecognized subcommand 'boto'; tip: a similar subcommand exists: 'boot'");
    assert_eq!(r.code, 2);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let r = env.run(&["boot", "x", "--memroy", "300"]);
    r.fails_with("tip: a similar argument exists: '--memory'");
    assert_eq!(r.code, 2);
    // The benchmark's own parser (`thaw bench` execs it) does the same.
    let r = env.run(&["bench", "--runz", "3"]);
    r.fails_with("tip: a similar argument exists: '--runs'");
    assert_eq!(r.code, 2);
}

#[test]
fn with_json_every_error_is_one_json_document_usage_errors_too() {
    let env = Env::new();
    for args in [
        &["--json", "boto", "x"][..],
        &["boot", "--json"],
        &["boot", "x", "--cpus", "many", "--json"],
        &["exec", "x", "--json"],
        &["inspect", "nothing-here", "--json"],
    ] {
        let r = env.run(args);
        assert_ne!(r.code, 0, "{args:?}");
        let doc = r.json();
        let error = doc["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: {doc}"));
        assert_eq!(doc.as_object().unwrap().len(), 1, "{doc}");
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains(error),
            "{args:?}: {} vs {error}",
            r.stderr
        );
    }
    let r = env.run(&["--json", "boto", "x"]);
    assert!(r.json()["error"].as_str().unwrap().contains("'boot'"));
    // `--json` after `--` is the guest command's, not thaw's.
    let r = env.run(&["exec", "--", "ls", "--json"]);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    // thaw exec's usage errors are its own failures: 125, apart from the guest's codes.
    assert_eq!(r.code, 125);
}

/// Out of range: refused at once, before the default guest is fetched or built (an empty
/// guest cache stays empty) and before anything is written in the home.
#[test]
fn ranges_are_checked_before_any_guest_is_fetched_or_built() {
    let cache = tempfile::tempdir().unwrap();
    let env = Env::new().with_env("THAW_CACHE", cache.path().to_str().unwrap());
    for (args, needle) in [
        (
            &["boot", "x", "--memory", "0"][..],
            "memory must be between 16 and",
        ),
        (
            &["boot", "x", "--memory", "99999999"],
            "memory must be between",
        ),
        (
            &["boot", "x", "--cpus", "0"],
            "cpus must be between 1 and 64, not 0",
        ),
        (
            &["boot", "x", "--cpus", "65"],
            "cpus must be between 1 and 64",
        ),
        (&["boot", "x", "--machine", "pc;rm"], "invalid machine type"),
        (&["boot", "x", "--ready-port", "0"], "guest port 0"),
        (
            &["boot", "x", "--port", "8080:0"],
            "the guest port cannot be 0",
        ),
        (&["up", "x", "--memory", "0"], "memory must be between"),
        (
            &["up", "x", "--cpus", "0", "--print-key"],
            "cpus must be between",
        ),
    ] {
        let r = env.run(args);
        r.fails_with(needle);
        assert_eq!(r.code, if needle.contains("cannot be 0") { 2 } else { 1 });
    }
    assert_eq!(common::dir_names(cache.path()), Vec::<String>::new());
    assert_eq!(common::dir_names(env.path()), Vec::<String>::new());
}

/// One boot: `inspect` shows the VM and its snapshot, `logs -f` follows the console
/// (what was there, then what the guest writes) and ends with the VM.
#[test]
fn inspect_shows_a_vm_or_a_snapshot_and_logs_follow_ends_with_the_vm() {
    let env = Env::new();
    env.boot("v", &["--ready-serial", "THAW-GUEST-READY"]);
    env.ok(&["snapshot", "v", "base"]);

    let vm = env.json(&["inspect", "v"]);
    assert_eq!(vm["kind"], "vm", "{vm}");
    assert_eq!(vm["record"]["name"], "v");
    assert_eq!(vm["record"]["spec"]["memory_mib"], vm["live"]["memory_mib"]);
    assert_eq!(vm["live"]["state"], "running");
    assert_eq!(vm["live"]["pid"], vm["record"]["pid"]);
    let snap = env.json(&["inspect", "base"]);
    assert_eq!(snap["kind"], "snapshot", "{snap}");
    assert_eq!(snap["tag"], "base");
    assert_eq!(snap["source_vm"], "v");
    let text = env.ok(&["inspect", "v"]).stdout;
    assert!(text.contains("running") && text.contains("MiB"), "{text}");
    let text = env.ok(&["inspect", "base"]).stdout;
    assert!(text.contains("base"), "{text}");
    let r = env.run(&["inspect", "nothing-here"]);
    r.fails_with("no VM or snapshot named \"nothing-here\"");
    assert_eq!(r.code, 1);

    let mut follow = env
        .command(&["logs", "v", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    env.sh("v", "echo FOLLOWED-LINE > /dev/ttyS0");
    // The deadline only guards against a hang.
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("FOLLOWED-LINE")) {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) => seen.push(line),
            Err(e) => panic!("logs -f did not show the new line ({e}): {seen:?}"),
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("THAW-GUEST-READY")),
        "the console from its start: {seen:?}"
    );
    env.ok(&["stop", "v"]);
    let status = follow.wait().unwrap();
    assert!(status.success(), "logs -f ends with its VM: {status}");
    assert!(env.processes().is_empty());
}
