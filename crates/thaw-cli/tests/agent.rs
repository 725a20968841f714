//! The guest clock and agent at restore: the clock set through the clock channel, a
//! guest without `thaw-clock` or `hwclock` (the agent sets it), and a snapshot taken
//! while the agent was stopped.

mod common;

use std::time::{Duration, Instant};

use common::Env;

/// The snapshot's clock is seconds behind when the clone resumes: a clock left as it
/// was fails `assert_clock_close`.
const SNAPSHOT_AGE: Duration = Duration::from_secs(4);

#[test]
fn a_restored_clone_has_its_clock_set_through_the_clock_channel() {
    let env = Env::new();
    env.boot("src", &[]);
    assert!(
        env.sh("src", "pidof thaw-clock")
            .trim()
            .parse::<u32>()
            .is_ok(),
        "thaw-clock runs in the default guest"
    );
    env.ok(&["snapshot", "src", "base", "--stop"]);
    std::thread::sleep(SNAPSHOT_AGE);
    let r = env.json(&["restore", "base", "--count", "2"]);
    for c in r.as_array().unwrap() {
        assert_eq!(c["breakdown"]["clock_via"], "port", "{c}");
        common::assert_clock_close(&env, c["name"].as_str().unwrap());
    }
}

#[test]
fn a_guest_without_thaw_clock_or_hwclock_restores_with_a_correct_clock() {
    let env = Env::new();
    env.boot("nohw", &[]);
    // Nothing answers on the clock channel, so the agent sets the clock; qemu-ga runs
    // /sbin/hwclock -w after setting it, and without one every guest-set-time is
    // refused although the clock was set.
    env.sh(
        "nohw",
        "rm /sbin/hwclock && ! test -e /sbin/hwclock && kill $(pidof thaw-clock)",
    );
    env.ok(&["snapshot", "nohw", "base", "--stop"]);
    std::thread::sleep(SNAPSHOT_AGE);
    let r = env.json(&["restore", "base", "--name", "clone"]);
    assert_eq!(r[0]["breakdown"]["clock_via"], "agent", "{r}");
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
        "(until [ -e /tmp/stop-agent ]; do usleep 50000; done; kill -STOP $(pidof qemu-ga)) \
         >/dev/null 2>&1 &",
    );
    let probe = env.run(&[
        "exec",
        "--timeout",
        "10",
        "mute",
        "--",
        "/bin/sh",
        "-c",
        "touch /tmp/stop-agent; sleep 30",
    ]);
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

#[test]
fn ls_reads_the_state_of_a_vm_whose_monitor_another_command_holds() {
    let env = Env::new();
    env.boot("held", &[]);
    // QEMU serves one client per monitor: a restore, snapshot or exec in progress
    // holds the VM's monitor, and `thaw ls` asks a second one.
    let qmp = common::home_file(&env, "vms/held/qmp.sock");
    let _holder = std::os::unix::net::UnixStream::connect(&qmp).unwrap();
    assert_eq!(env.state_of("held"), "running");
}
