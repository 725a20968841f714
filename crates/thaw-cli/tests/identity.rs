//! Clones of one snapshot must not share RNG state: a fresh VM Generation ID per clone
//! makes the guest kernel reseed.

mod common;

use common::{assert_clock_close, Env};

/// Restores 3 clones and returns the 16 bytes (as hex) each read from /dev/urandom
/// right after restore (in `--exec-after`, before the clone is reported ready), with the
/// kernel's CRNG reseeds each clone's trace buffer holds.
fn urandom_of_three_clones(env: &Env, tag: &str, extra: &[&str]) -> Vec<(String, String)> {
    // One process reads: a pipeline's processes would each draw kernel randomness
    // (address space layout, stack canary) in an order the scheduler picks.
    let mut args = vec![
        "restore",
        tag,
        "--count",
        "3",
        "--exec-after",
        "head -c 16 /dev/urandom > /tmp/rand",
    ];
    args.extend_from_slice(extra);
    let clones = env.json(&args);
    let names: Vec<String> = clones
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let mut out = Vec::new();
    for n in &names {
        let bytes = env.sh(n, "od -An -tx1 /tmp/rand | tr -d ' \\n'");
        assert_eq!(bytes.len(), 32, "{n}: {bytes:?}");
        let reseeds = env.sh(n, &format!("grep -c crng_reseed {TRACE}/trace || true"));
        assert_clock_close(env, n);
        out.push((bytes, reseeds.trim().to_owned()));
    }
    for n in &names {
        env.ok(&["stop", n]);
    }
    out
}

const TRACE: &str = "/sys/kernel/tracing";

/// Snapshots `vm` (and ends it) right after the guest kernel reseeded its CRNG.
///
/// The kernel reseeds periodically from its input pool (every uptime/2 seconds in the
/// first two minutes, every minute after), and a reseed mixes in the CPU's cycle
/// counter, which differs in every clone. A reseed between restore and the read would
/// make clones differ whatever their VM Generation ID, and the control below would
/// prove nothing. Right after a reseed at an uptime of 20 s or more, the next one is at
/// least 10 s of guest time away, far more than restore to read takes. The reseeds are
/// seen through the kernel's `workqueue_execute_start` trace event.
fn snapshot_right_after_a_reseed(env: &Env, vm: &str, tag: &str) {
    env.sh(
        vm,
        &format!(
            "mount -t tracefs nodev {TRACE} && \
             echo 1 > {TRACE}/events/workqueue/workqueue_execute_start/enable && \
             while [ $(cut -d. -f1 /proc/uptime) -lt 20 ]; do usleep 200000; done && \
             echo > {TRACE}/trace && \
             until grep -q crng_reseed {TRACE}/trace; do usleep 20000; done"
        ),
    );
    env.json(&["snapshot", vm, tag, "--stop"]);
}

#[test]
fn fresh_vm_generation_id_gives_each_clone_its_own_randomness() {
    let env = Env::new();
    // No NIC: the network stack draws randomness on its own timers (neighbour
    // reachable times, IPv6 address and multicast report delays), at points in guest
    // time that differ per clone, and would blur the control below.
    env.boot("seed", &["--no-net"]);
    // The RNG is initialised before the snapshot: the guest's init waits for it.
    snapshot_right_after_a_reseed(&env, "seed", "s");

    // Control: clones that keep the snapshot's VM Generation ID share the kernel's RNG
    // state and read the same bytes. So the difference below is the fresh id's doing.
    let kept = urandom_of_three_clones(&env, "s", &["--keep-vmgenid"]);
    for (bytes, reseeds) in &kept {
        assert_eq!(
            reseeds, "1",
            "a periodic reseed ran after restore: {kept:?}"
        );
        assert_eq!(
            bytes, &kept[0].0,
            "clones that kept the VM Generation ID read different bytes: {kept:?}"
        );
    }

    let fresh = urandom_of_three_clones(&env, "s", &[]);
    let fresh: Vec<&String> = fresh.iter().map(|(b, _)| b).collect();
    assert!(
        fresh[0] != fresh[1] && fresh[1] != fresh[2] && fresh[0] != fresh[2],
        "clones with fresh VM Generation IDs read equal bytes: {fresh:?}"
    );
    assert!(
        !fresh.contains(&&kept[0].0),
        "a fresh clone read the kept clones' bytes: {fresh:?}"
    );
}

#[test]
fn exec_after_runs_in_each_clone_before_ready() {
    let env = Env::new();
    env.boot("seed", &[]);
    env.json(&["snapshot", "seed", "s", "--stop"]);
    let clones = env.json(&[
        "restore",
        "s",
        "--count",
        "2",
        "--exec-after",
        "hostname > /tmp/hook-ran",
    ]);
    for c in clones.as_array().unwrap() {
        let n = c["name"].as_str().unwrap();
        assert!(!env.sh(n, "cat /tmp/hook-ran").trim().is_empty());
    }
    // A failing hook fails the restore and leaves nothing behind.
    let before = env.processes().len();
    env.run(&["restore", "s", "--exec-after", "exit 3"])
        .fails_with("--exec-after exited with 3");
    assert_eq!(env.processes().len(), before);
    assert_eq!(env.vm_dirs().len(), 2, "{:?}", env.vm_dirs());
}
