//! SIGINT and SIGTERM (Ctrl-C, a service manager's stop) during `thaw snapshot` (with
//! and without `--stop`), `restore --count 3`, `reset` and `boot`: each finishes or rolls
//! back where it is safe, says which in one line and exits 130 / 143. Sent at seeded
//! moments (the kill tests' harness, `common::chaos`) and at known steps (the test hook
//! `THAW_TEST_HANG_AT`). After every signal, besides the kill tests' invariants: no
//! clone of an interrupted restore is left, a VM whose `snapshot --stop` was interrupted
//! either runs (no snapshot) or is in the snapshot, and the retry succeeds.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::chaos::{
    assert_nothing_lost, assert_vm_usable, qemus, rounds, wait_ended, Chaos, Ended, Sig,
};
use common::Env;

/// `thaw snapshot` (plain and `--stop`), `restore --count 3` and `reset` sent SIGINT or
/// SIGTERM at seeded moments: each finishes or rolls back, says which in one line and
/// exits 130 / 143; nothing is lost (see the module docs) and the retry succeeds.
#[test]
fn sigint_and_sigterm_at_random_moments_of_snapshot_restore_and_reset() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");
    let n = rounds(3);

    // snapshot: the VM runs on, the snapshot is whole or absent.
    let mut chaos = Chaos::new("snapshot-signal");
    chaos.retry(&env, &["snapshot", "vm", "base"]);
    for i in 0..n {
        let tag = format!("s{i}");
        let ctx = format!("snapshot interrupted (round {i})");
        let ended = chaos.interrupt(env.command(&["snapshot", "vm", &tag]), Sig::nth(i), &ctx);
        assert_vm_usable(&env, "vm", &ctx);
        assert_nothing_lost(&env, &ctx, false);
        assert_eq!(
            env.listed(&tag),
            ended.completed(),
            "{ctx}: {}",
            ended.stderr
        );
        if !env.listed(&tag) {
            chaos.retry(&env, &["snapshot", "vm", &tag]);
        }
        assert!(
            !env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")),
            "{ctx}: {:?}",
            env.snapshot_dirs()
        );
        env.json(&["rm", &tag]);
    }
    chaos.report();

    // snapshot --stop: either the snapshot is whole and the VM gone, or the VM runs
    // and there is no snapshot. The VM comes back from the snapshot (a clone from
    // then on, whose RAM QEMU writes live: the other way of saving it).
    let mut chaos = Chaos::new("snapshot-stop-signal");
    chaos.retry(&env, &["snapshot", "vm", "stopped", "--stop"]);
    env.json(&["restore", "stopped", "--name", "vm"]);
    for i in 0..n {
        let tag = format!("t{i}");
        let ctx = format!("snapshot --stop interrupted (round {i})");
        let args = ["snapshot", "vm", &tag, "--stop"];
        let ended = chaos.interrupt(env.command(&args), Sig::nth(i + 1), &ctx);
        assert_nothing_lost(&env, &ctx, false);
        if env.listed(&tag) {
            assert!(ended.completed(), "{ctx}: {}", ended.stderr);
            assert_eq!(env.state_of("vm"), "absent", "{ctx}");
        } else {
            assert!(!ended.completed(), "{ctx}: {}", ended.stderr);
            assert_vm_usable(&env, "vm", &ctx);
            chaos.retry(&env, &args);
        }
        env.json(&["restore", &tag, "--name", "vm"]);
        assert_eq!(env.sh("vm", "cat /tmp/m"), "marker\n", "{ctx}");
    }
    chaos.report();

    // restore --count 3: all three clones, or none of them.
    let mut chaos = Chaos::new("restore-signal");
    chaos.retry(&env, &["restore", "base", "--count", "3", "--name", "w"]);
    env.ok(&["stop", "w-1", "w-2", "w-3"]);
    for i in 0..n {
        let name = format!("q{i}");
        let ctx = format!("restore --count 3 interrupted (round {i})");
        let args = ["restore", "base", "--count", "3", "--name", &name];
        let ended = chaos.interrupt(env.command(&args), Sig::nth(i), &ctx);
        assert_nothing_lost(&env, &ctx, false);
        let clones: Vec<String> = env
            .vm_dirs()
            .into_iter()
            .filter(|d| d.starts_with(&format!("{name}-")))
            .collect();
        if ended.completed() {
            assert_eq!(clones.len(), 3, "{ctx}: {clones:?}");
            for c in &clones {
                env.ok(&["stop", c]);
            }
        } else {
            assert!(clones.is_empty(), "{ctx}: clones left: {clones:?}");
            assert!(
                ended.stderr.contains("3 clone(s) removed"),
                "{ctx}: {}",
                ended.stderr
            );
        }
        chaos.retry(&env, &args);
        assert_eq!(
            env.sh(&format!("{name}-2"), "cat /tmp/m"),
            "marker\n",
            "{ctx}"
        );
        env.ok(&[
            "stop",
            &format!("{name}-1"),
            &format!("{name}-2"),
            &format!("{name}-3"),
        ]);
    }
    chaos.report();

    // reset: the VM runs, reset or as it was.
    let mut chaos = Chaos::new("reset-signal");
    env.json(&["restore", "base", "--name", "c"]);
    chaos.retry(&env, &["reset", "c"]);
    for i in 0..n {
        env.sh("c", "echo changed > /tmp/m");
        let ctx = format!("reset interrupted (round {i})");
        let ended = chaos.interrupt(env.command(&["reset", "c"]), Sig::nth(i + 1), &ctx);
        assert_eq!(env.state_of("c"), "running", "{ctx}: {}", ended.stderr);
        let expected = if ended.completed() {
            "marker\n"
        } else {
            "changed\n"
        };
        assert_eq!(
            env.sh("c", "cat /tmp/m"),
            expected,
            "{ctx}: {}",
            ended.stderr
        );
        assert_nothing_lost(&env, &ctx, false);
        chaos.retry(&env, &["reset", "c"]);
        assert_eq!(env.sh("c", "cat /tmp/m"), "marker\n", "{ctx}: the retry");
        let stray: Vec<String> = env
            .vm_dirs()
            .into_iter()
            .filter(|d| d.starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{ctx}: {stray:?}");
    }
    chaos.report();
    env.ok(&["stop", "--all"]);
    assert!(qemus(env.path()).is_empty());
}

/// `thaw args` started with the test hook `THAW_TEST_HANG_AT=step` (it waits there
/// until interrupted), once it says it is there; and its stderr from then on.
fn hanging_at(
    env: &Env,
    args: &[&str],
    step: &str,
) -> (Child, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead;
    let mut child = env
        .command(args)
        .env("THAW_TEST_HANG_AT", step)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains(&format!("hanging at {step}")), "{line}");
    (child, err)
}

/// Waits for a child started by [`hanging_at`].
fn wait_hung(
    child: Child,
    mut err: std::io::BufReader<std::process::ChildStderr>,
    ctx: &str,
) -> Ended {
    use std::io::Read;
    let mut ended = wait_ended(child, ctx);
    err.read_to_string(&mut ended.stderr).unwrap();
    ended
}

/// Ctrl-C during `thaw snapshot VM TAG --stop`, after the VM had ended and its RAM
/// file had moved into the temporary snapshot: thaw died there, the VM was lost and
/// the next snapshot deleted what was left. The snapshot is now finished (and a second
/// signal changes nothing). Before the pause, an interrupt leaves the VM running and
/// no snapshot.
#[test]
fn sigint_during_snapshot_stop_keeps_the_vm_or_the_snapshot() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");

    // While RAM is copied, the VM still running: rolled back.
    let (child, err) = hanging_at(&env, &["snapshot", "vm", "early"], "migrating");
    Sig::Term.send(&child);
    let ended = wait_hung(child, err, "snapshot interrupted while copying RAM");
    assert_eq!(ended.code, 143, "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .trim_end()
            .ends_with("thaw: interrupted: no snapshot was taken, VM vm runs as before"),
        "{}",
        ended.stderr
    );
    assert!(!env.listed("early"));
    assert_eq!(env.state_of("vm"), "running");
    assert_nothing_lost(&env, "snapshot interrupted while copying RAM", false);

    // The VM ended, its RAM in the temporary snapshot: finished.
    let (child, err) = hanging_at(&env, &["snapshot", "vm", "t", "--stop"], "ram-copied");
    Sig::Int.send(&child);
    Sig::Int.send(&child);
    let ended = wait_hung(child, err, "snapshot --stop interrupted");
    assert_eq!(ended.code, 130, "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .trim_end()
            .ends_with("thaw: interrupted: the snapshot was completed"),
        "{}",
        ended.stderr
    );
    assert!(env.listed("t"), "{:?}", env.snapshot_dirs());
    assert_eq!(env.state_of("vm"), "absent");
    assert_nothing_lost(&env, "snapshot --stop interrupted", false);
    env.json(&["restore", "t", "--name", "vm"]);
    assert_eq!(env.sh("vm", "cat /tmp/m"), "marker\n");
    env.ok(&["stop", "--all"]);
}

/// Waits until `thaw` (`child`) has started QEMU for every one of `names` (their
/// records are written), or ended; returns whether it still runs.
fn wait_records(env: &Env, child: &mut Child, names: &[String]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if names
            .iter()
            .all(|n| env.path().join("vms").join(n).join("vm.json").exists())
        {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU did not start for {names:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGINT/SIGTERM to `thaw restore TAG --count 3` once its clones' QEMUs ran: the
/// clones were left behind, paused or running. Every clone of the request is now
/// stopped and removed.
#[test]
fn an_interrupted_restore_removes_every_clone() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.json(&["snapshot", "vm", "base", "--stop"]);
    let names: Vec<String> = (1..=3).map(|k| format!("r-{k}")).collect();
    let mut interrupted = 0;
    for attempt in 0..6 {
        let sig = Sig::nth(attempt);
        let mut child = env
            .command(&["restore", "base", "--count", "3", "--name", "r"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let running = wait_records(&env, &mut child, &names);
        if running {
            sig.send(&child);
        }
        let ctx = format!("restore, {sig:?} (attempt {attempt})");
        let ended = wait_ended(child, &ctx);
        if ended.code == 0 {
            // Ready before the signal could be sent.
            env.ok(&["stop", "r-1", "r-2", "r-3"]);
            continue;
        }
        interrupted += 1;
        assert_eq!(ended.code, sig.exit_code(), "{ctx}: {}", ended.stderr);
        assert_eq!(
            ended.stderr.trim_end(),
            "thaw: interrupted: 3 clone(s) removed",
            "{ctx}"
        );
        assert!(env.vm_dirs().is_empty(), "{ctx}: {:?}", env.vm_dirs());
        assert!(
            qemus(env.path()).is_empty(),
            "{ctx}: {:?}",
            qemus(env.path())
        );
        if interrupted == 2 {
            break;
        }
    }
    assert!(interrupted > 0, "every restore was ready before the signal");
    env.json(&["restore", "base", "--count", "3", "--name", "r"]);
    env.ok(&["stop", "--all"]);
}

/// A boot interrupted while the guest boots: QEMU ran on without thaw. It is now
/// stopped and the VM removed.
#[test]
fn an_interrupted_boot_leaves_no_half_booted_vm() {
    let env = Env::new();
    let mut child = env
        .command(&["boot", "b", "--memory", "128"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_records(&env, &mut child, &["b".to_owned()]),
        "the boot ended before its guest could be interrupted"
    );
    Sig::Term.send(&child);
    let ended = wait_ended(child, "boot interrupted");
    assert_eq!(ended.code, 143, "{}", ended.stderr);
    assert_eq!(
        ended.stderr.trim_end(),
        "thaw: interrupted: the boot was rolled back, VM b removed"
    );
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
    assert!(qemus(env.path()).is_empty(), "{:?}", qemus(env.path()));
}

/// Through a running daemon the operation is the daemon's: it finishes it whatever the
/// client does. The interrupted command waits for the answer, says the restore was
/// completed and exits 130; SIGTERM then ends the daemon cleanly (exit 0), its VMs
/// running on.
#[test]
fn an_interrupted_restore_through_the_daemon_is_completed_by_it() {
    /// The daemon, ended on drop (a failed assertion must not leave it running).
    struct Serving(Child);
    impl Drop for Serving {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let env = Env::new();
    let mut serve = Serving(
        env.command(&["serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.run(&["pools"]).code != 0 {
        assert!(Instant::now() < deadline, "the daemon did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    env.boot("vm", &["--memory", "128"]);
    env.json(&["snapshot", "vm", "base", "--stop"]);
    let names: Vec<String> = (1..=3).map(|k| format!("d-{k}")).collect();
    let mut child = env
        .command(&["restore", "base", "--count", "3", "--name", "d"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The clones' QEMUs run, their guests not yet answering.
    assert!(
        wait_records(&env, &mut child, &names),
        "the restore was over before its clones were seen"
    );
    Sig::Int.send(&child);
    let ended = wait_ended(child, "restore through the daemon");
    assert_eq!(ended.code, 130, "{}", ended.stderr);
    assert_eq!(
        ended.stderr.trim_end(),
        "thaw: interrupted: the restore was completed"
    );
    for n in &names {
        assert_eq!(env.state_of(n), "running", "{n}");
    }
    Sig::Term.send(&serve.0);
    assert!(
        serve.0.wait().unwrap().success(),
        "the daemon's SIGTERM exit"
    );
    for n in &names {
        assert_eq!(env.state_of(n), "running", "{n}");
    }
    env.ok(&["stop", "--all"]);
}
