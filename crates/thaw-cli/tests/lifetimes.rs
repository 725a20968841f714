//! Lifetimes and labels without a daemon: `--label` and `--ttl` on boot and restore,
//! `thaw ls --filter label=K=V` (text and JSON), `thaw stop --filter`, `thaw ttl`, and
//! expiry enforced by the next `thaw ls` (nothing of the VM left, QEMU included). Bad
//! ttls, labels and filters: one line, non-zero, nothing started. One boot, one
//! snapshot, its clones.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{names, processes_mentioning, Env};
use serde_json::Value;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn listed(v: &Value) -> Vec<String> {
    names(v)
}

#[test]
fn labels_filters_ttl_and_expiry_without_a_daemon() {
    let env = Env::new().with_env("THAW_NO_DAEMON", "1");

    // Bad input: one line each, nothing started or left.
    for (args, needle) in [
        (vec!["boot", "x", "--ttl", "soon"], "bad ttl"),
        (vec!["boot", "x", "--ttl", "0s"], "more than 0"),
        (
            vec!["boot", "x", "--label", "novalue"],
            "expected KEY=VALUE",
        ),
        (vec!["boot", "x", "--label", "a b=1"], "bad label key"),
        (vec!["ls", "--filter", "team=a"], "expected label=KEY=VALUE"),
        (
            vec!["stop", "--filter", "label=team"],
            "expected label=KEY=VALUE",
        ),
        (vec!["ttl", "nope", "10m"], "nope"),
    ] {
        env.run(&args).fails_with(needle);
    }
    assert!(env.vm_dirs().is_empty() && env.processes().is_empty());

    env.boot("web", &["--memory", "128", "--label", "role=base"]);
    env.ok(&["snapshot", "web", "base", "--stop"]);
    env.run(&["restore", "base", "--ttl", "1.5m"])
        .fails_with("bad ttl");
    let a = env.json(&[
        "restore", "base", "--name", "a", "--count", "2", "--label", "team=a", "--label", "ci=1",
        "--ttl", "10m",
    ]);
    assert_eq!(names(&a), ["a-1", "a-2"]);
    env.json(&[
        "restore", "base", "--name", "b", "--label", "team=b", "--label", "ci=1",
    ]);

    // Filters, JSON: every label must match.
    let team_a = env.json(&["ls", "--filter", "label=team=a"]);
    assert_eq!(listed(&team_a), ["a-1", "a-2"]);
    for v in team_a.as_array().unwrap() {
        assert_eq!(v["labels"]["team"], "a");
        let left = v["expires_in_secs"].as_u64().unwrap();
        assert!(left > 0 && left <= 600, "{v}");
    }
    let both = env.json(&["ls", "--filter", "label=ci=1", "--filter", "label=team=b"]);
    assert_eq!(listed(&both), ["b"]);
    assert!(both[0].get("expires_in_secs").is_none());
    // Text: the labels and the time left.
    let text = env.ok(&["ls", "--filter", "label=ci=1"]).stdout;
    let a1 = text.lines().find(|l| l.starts_with("a-1 ")).unwrap();
    assert!(a1.contains("team=a") && a1.contains("ci=1"), "{text}");
    let time_left = |w: &str| {
        w.starts_with(|c: char| c.is_ascii_digit()) && w.contains('m') && w.ends_with('s')
    };
    assert!(
        a1.split_whitespace().any(time_left),
        "no time left shown: {text}"
    );
    assert!(text.lines().next().unwrap().contains("TTL"), "{text}");

    // Extension.
    env.run(&["ttl", "b", "forever"]).fails_with("bad ttl");
    let b = env.json(&["ttl", "b", "2h"]);
    assert!(b["expires_in_secs"].as_u64().unwrap() > 3600, "{b}");
    assert!(env.ok(&["ttl", "b", "3h"]).stdout.contains("b expires in "));

    // Expiry without a daemon: the next listing stops and removes the VM.
    let a1 = env.json(&["ttl", "a-1", "2s"]);
    let expires = a1["expires_unix_ms"].as_u64().unwrap();
    while now_ms() <= expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    let a1_dir = env.path().join("vms/a-1");
    assert!(
        !processes_mentioning(&a1_dir).is_empty(),
        "a-1 ended before anything listed it"
    );
    let all = env.json(&["ls"]);
    assert_eq!(listed(&all), ["a-2", "b"]);
    assert!(!a1_dir.exists(), "a-1's directory is left");
    assert!(processes_mentioning(&a1_dir).is_empty(), "a-1's QEMU runs");

    // stop --filter stops every match and nothing else.
    let stopped = env.json(&["stop", "--filter", "label=team=a"]);
    assert_eq!(stopped["stopped"], serde_json::json!(["a-2"]));
    assert_eq!(listed(&env.json(&["ls"])), ["b"]);
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty(), "QEMU left running");
}
