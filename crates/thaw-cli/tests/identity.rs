//! Clones of one snapshot must not share RNG state: a fresh VM Generation ID per clone
//! makes the guest kernel reseed.

mod common;

use common::{assert_clock_close, Env};

/// Restores 3 clones and returns the 16 bytes each read from /dev/urandom right after
/// restore (in `--exec-after`, before the clone is reported ready).
fn urandom_of_three_clones(env: &Env, tag: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "restore",
        tag,
        "--count",
        "3",
        "--exec-after",
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /tmp/rand",
    ];
    args.extend_from_slice(extra);
    let clones = env.json(&args);
    let names: Vec<String> = clones
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    let bytes: Vec<String> = names.iter().map(|n| env.sh(n, "cat /tmp/rand")).collect();
    for (n, b) in names.iter().zip(&bytes) {
        assert_eq!(b.len(), 32, "{n}: {b:?}");
        assert_clock_close(env, n);
    }
    for n in &names {
        env.ok(&["stop", n]);
    }
    bytes
}

#[test]
fn fresh_vm_generation_id_gives_each_clone_its_own_randomness() {
    let env = Env::new();
    env.boot("seed", &[]);
    // The RNG is initialised before the snapshot: the guest's init waits for it.
    env.json(&["snapshot", "seed", "s", "--stop"]);
    let fresh = urandom_of_three_clones(&env, "s", &[]);
    assert!(
        fresh[0] != fresh[1] && fresh[1] != fresh[2] && fresh[0] != fresh[2],
        "clones with fresh VM Generation IDs read equal bytes: {fresh:?}"
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
