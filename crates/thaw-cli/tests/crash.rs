//! kill -9 of `thaw snapshot` at each step leaves either no snapshot or a complete one
//! that restores, and a VM that `thaw ls` reports truthfully and that can be resumed
//! or stopped.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::Env;
use serde_json::Value;

/// Starts `thaw snapshot` with the test hook that hangs at `step`, waits until it is
/// there, and kills it with SIGKILL.
fn kill_snapshot_at(env: &Env, vm: &str, tag: &str, step: &str, stop: bool) {
    let mut args = vec!["snapshot", vm, tag];
    if stop {
        args.push("--stop");
    }
    let mut child = env
        .command(&args)
        .env("THAW_TEST_HANG_AT", step)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().expect("thaw printed nothing").unwrap();
    assert!(
        line.contains(&format!("hanging at {step}")),
        "unexpected: {line}"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn vm_state(env: &Env, vm: &str) -> String {
    let ls = env.json(&["ls"]);
    ls.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm)
        .map(|v| v["state"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| "absent".into())
}

fn snapshot_listed(env: &Env, tag: &str) -> bool {
    let snaps: Value = env.json(&["snapshots"]);
    snaps.as_array().unwrap().iter().any(|s| s["tag"] == tag)
}

#[test]
fn kill_during_snapshot_of_a_running_vm() {
    let env = Env::new();
    env.boot("vm", &[]);
    env.sh("vm", "echo kept > /tmp/marker");
    for (step, paused_after) in [
        ("paused", true),
        ("state-saved", true),
        ("ram-copied", false),
        ("manifest-written", false),
    ] {
        let tag = format!("t-{step}");
        kill_snapshot_at(&env, "vm", &tag, step, false);
        let state = vm_state(&env, "vm");
        let expected = if paused_after { "paused" } else { "running" };
        assert_eq!(state, expected, "after kill at {step}");
        assert!(
            !snapshot_listed(&env, &tag),
            "a half-written snapshot is listed after kill at {step}"
        );
        if paused_after {
            env.ok(&["resume", "vm"]);
            assert_eq!(vm_state(&env, "vm"), "running");
        }
        assert_eq!(
            env.sh("vm", "cat /tmp/marker"),
            "kept\n",
            "VM unusable after kill at {step}"
        );
        // The interrupted tag can be taken again, and that snapshot restores.
        env.json(&["snapshot", "vm", &tag]);
        assert!(
            !env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")),
            "stale temp dirs not cleaned: {:?}",
            env.snapshot_dirs()
        );
    }
    // Killed after publishing: the snapshot is whole and restores.
    kill_snapshot_at(&env, "vm", "t-published", "published", false);
    assert!(snapshot_listed(&env, "t-published"));
    assert_eq!(vm_state(&env, "vm"), "running");
    let clone = env.json(&["restore", "t-published", "--name", "c"]);
    assert_eq!(clone[0]["name"], "c");
    assert_eq!(env.sh("c", "cat /tmp/marker"), "kept\n");
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}

#[test]
fn kill_during_snapshot_with_stop() {
    let env = Env::new();
    env.boot("a", &[]);
    // Killed while the state is saved but QEMU not yet told to quit: paused, resumable.
    kill_snapshot_at(&env, "a", "s1", "state-saved", true);
    assert_eq!(vm_state(&env, "a"), "paused");
    assert!(!snapshot_listed(&env, "s1"));
    env.ok(&["resume", "a"]);
    assert_eq!(env.sh("a", "echo alive"), "alive\n");

    // Killed after QEMU quit and the RAM moved: the VM is reported dead, stop cleans.
    kill_snapshot_at(&env, "a", "s2", "ram-copied", true);
    assert_eq!(vm_state(&env, "a"), "dead");
    assert!(!snapshot_listed(&env, "s2"));
    env.run(&["exec", "a", "--", "true"])
        .fails_with("VM a is not running");
    env.ok(&["stop", "a"]);
    assert_eq!(vm_state(&env, "a"), "absent");

    // Killed after publishing: complete snapshot; the dead VM's leftovers stop cleanly.
    env.boot("b", &[]);
    env.sh("b", "echo from-b > /tmp/m");
    kill_snapshot_at(&env, "b", "s3", "published", true);
    assert!(snapshot_listed(&env, "s3"));
    assert_eq!(vm_state(&env, "b"), "dead");
    env.ok(&["stop", "b"]);
    let c = env.json(&["restore", "s3"]);
    assert_eq!(
        env.sh(c[0]["name"].as_str().unwrap(), "cat /tmp/m"),
        "from-b\n"
    );
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
    // A later snapshot removed the interrupted attempts' temp dirs.
    env.boot("d", &[]);
    env.json(&["snapshot", "d", "s4", "--stop"]);
    assert!(
        !env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")),
        "{:?}",
        env.snapshot_dirs()
    );
}

/// The same for a restored clone, whose snapshot is a live mapped-ram migration: at
/// every step the clone is left running or resumable, no half snapshot is listed, and
/// the snapshot taken again afterwards restores with the clone's state. Then with
/// `--stop`.
#[test]
fn kill_during_snapshot_of_a_clone() {
    let env = Env::new();
    env.boot("vm", &[]);
    env.sh("vm", "echo base > /tmp/marker");
    env.json(&["snapshot", "vm", "base"]);
    env.ok(&["stop", "vm"]);
    env.json(&["restore", "base", "--name", "c"]);
    env.sh("c", "echo clone > /tmp/marker");
    for (step, paused_after) in [
        ("paused", true),
        ("state-saved", true),
        ("ram-copied", false),
        ("manifest-written", false),
    ] {
        let tag = format!("k-{step}");
        kill_snapshot_at(&env, "c", &tag, step, false);
        let state = vm_state(&env, "c");
        let expected = if paused_after { "paused" } else { "running" };
        assert_eq!(state, expected, "after kill at {step}");
        assert!(
            !snapshot_listed(&env, &tag),
            "half snapshot after kill at {step}"
        );
        if paused_after {
            env.ok(&["resume", "c"]);
            assert_eq!(vm_state(&env, "c"), "running");
        }
        assert_eq!(
            env.sh("c", "cat /tmp/marker"),
            "clone\n",
            "clone unusable after {step}"
        );
        env.json(&["snapshot", "c", &tag]);
        let r = env.json(&["restore", &tag]);
        let name = r[0]["name"].as_str().unwrap();
        assert_eq!(env.sh(name, "cat /tmp/marker"), "clone\n");
        env.ok(&["stop", name]);
    }
    assert!(
        !env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")),
        "{:?}",
        env.snapshot_dirs()
    );
    // With --stop: killed while paused, the clone resumes; killed after publishing,
    // the snapshot is whole and the dead clone is reported dead.
    kill_snapshot_at(&env, "c", "k-stop1", "state-saved", true);
    assert_eq!(vm_state(&env, "c"), "paused");
    assert!(!snapshot_listed(&env, "k-stop1"));
    env.ok(&["resume", "c"]);
    kill_snapshot_at(&env, "c", "k-stop2", "published", true);
    assert!(snapshot_listed(&env, "k-stop2"));
    assert_eq!(vm_state(&env, "c"), "dead");
    env.ok(&["stop", "c"]);
    let r = env.json(&["restore", "k-stop2"]);
    assert_eq!(
        env.sh(r[0]["name"].as_str().unwrap(), "cat /tmp/marker"),
        "clone\n"
    );
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}
