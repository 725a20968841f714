//! The guest agent at restore: a guest that cannot run `hwclock`, and a snapshot taken
//! while the agent was stopped.

mod common;

use std::time::{Duration, Instant};

use common::Env;

#[test]
fn a_guest_without_hwclock_restores_with_a_correct_clock() {
    let env = Env::new();
    env.boot("nohw", &[]);
    // qemu-ga runs /sbin/hwclock -w after setting the clock; without it every
    // guest-set-time is refused although the clock was set.
    env.sh("nohw", "rm /sbin/hwclock && ! test -e /sbin/hwclock");
    env.ok(&["snapshot", "nohw", "base", "--stop"]);
    env.json(&["restore", "base", "--name", "clone"]);
    assert_eq!(env.state_of("clone"), "running");
    common::assert_clock_close(&env, "clone");
}

#[test]
fn a_restore_from_a_snapshot_with_a_stopped_agent_fails_early() {
    let env = Env::new();
    env.boot("mute", &[]);
    // qemu-ga is stopped as soon as the command below runs (the agent serves one
    // connection at a time, so the stop is set up in the guest first).
    env.sh(
        "mute",
        "(until pidof sleep; do usleep 50000; done; kill -STOP $(pidof qemu-ga)) \
         >/dev/null 2>&1 &",
    );
    let probe = env.run(&["exec", "--timeout", "10", "mute", "--", "sleep", "30"]);
    probe.fails_with("stopped answering");
    env.ok(&["snapshot", "mute", "base", "--stop"]);
    let t0 = Instant::now();
    let r = env.run(&["restore", "base", "--name", "clone"]);
    let took = t0.elapsed();
    r.fails_with("stopped, dead or hung in the snapshot");
    // The default timeout is 60 s; the agent's first answer is bounded well below it.
    assert!(took < Duration::from_secs(45), "the restore took {took:?}");
    assert_eq!(
        env.state_of("clone"),
        "absent",
        "a failed restore leaves nothing"
    );
}
