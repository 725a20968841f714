//! Boot the default guest, snapshot it, restore clones, and check what each clone sees.

mod common;

use common::{assert_clock_close, Env};
use serde_json::Value;

/// Boots `base`, writes a file in its tmpfs, snapshots it (with `snapshot_args`),
/// restores 3 clones and checks: the file is in every clone, every clone resumed the
/// same boot (same boot_id), a file written in one clone is in no other clone nor the
/// original, every clone's clock is within 2 s of the host's. Then stops everything
/// and checks no QEMU is left and only the snapshot remains.
fn snapshot_and_three_clones(env: &Env, boot_args: &[&str], snapshot_args: &[&str]) {
    env.boot("orig", boot_args);
    env.sh("orig", "echo before-snapshot > /tmp/marker");
    let boot_id = env.sh("orig", "cat /proc/sys/kernel/random/boot_id");
    assert_eq!(boot_id.trim().len(), 36, "boot_id: {boot_id:?}");

    let mut args = vec!["snapshot", "orig", "base"];
    args.extend_from_slice(snapshot_args);
    let snap = env.json(&args);
    assert_eq!(snap["tag"], "base");
    assert!(snap["pause_ms"].as_f64().unwrap() > 0.0);
    assert!(snap["state_bytes"].as_u64().unwrap() > 1000);
    assert_eq!(snap["ram_bytes"].as_u64().unwrap(), 256 << 20);
    let keeps_running = !snapshot_args.contains(&"--stop");

    let clones = env.json(&["restore", "base", "--count", "3"]);
    let clones = clones.as_array().expect("a list of clones");
    assert_eq!(clones.len(), 3);
    let names: Vec<String> = clones
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["base-1", "base-2", "base-3"]);
    for c in clones {
        let (restore, ready) = (
            c["restore_ms"].as_f64().unwrap(),
            c["ready_ms"].as_f64().unwrap(),
        );
        assert!(restore > 0.0 && ready >= restore, "{c}");
        assert!(c["pid"].as_u64().unwrap() > 0);
    }

    for name in &names {
        assert_eq!(
            env.sh(name, "cat /tmp/marker"),
            "before-snapshot\n",
            "{name}"
        );
        assert_eq!(
            env.sh(name, "cat /proc/sys/kernel/random/boot_id"),
            boot_id,
            "{name} resumed another boot"
        );
        assert_clock_close(env, name);
    }
    // A write in one clone is seen nowhere else.
    env.sh("base-1", "echo only-in-clone-1 > /tmp/private");
    let check = "test -e /tmp/private && echo present || echo absent";
    assert_eq!(env.sh("base-1", check), "present\n");
    for other in ["base-2", "base-3"] {
        assert_eq!(
            env.sh(other, check),
            "absent\n",
            "{other} sees clone 1's file"
        );
    }
    if keeps_running {
        assert_eq!(
            env.sh("orig", check),
            "absent\n",
            "the original sees clone 1's file"
        );
        assert_eq!(env.sh("orig", "cat /tmp/marker"), "before-snapshot\n");
    } else {
        let ls = env.json(&["ls"]);
        assert!(
            ls.as_array().unwrap().iter().all(|v| v["name"] != "orig"),
            "--stop ends the VM: {ls}"
        );
    }

    let ls = env.json(&["ls"]);
    for v in ls.as_array().unwrap() {
        assert_eq!(v["state"], "running", "{v}");
    }

    env.ok(&["stop", "--all"]);
    assert!(
        env.processes().is_empty(),
        "QEMU left running: {:?}",
        env.processes()
    );
    assert_eq!(env.snapshot_dirs(), ["base"]);
    assert!(
        env.vm_dirs().is_empty(),
        "VM state left: {:?}",
        env.vm_dirs()
    );
    for entry in std::fs::read_dir(env.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            // lazy/: the lazy server's state (snapshots are kept once, in the store).
            ["snapshots", "vms", "store", "lazy"].contains(&name.as_str()),
            "unexpected {name} in THAW_HOME"
        );
    }
    let snaps: Value = env.json(&["snapshots"]);
    assert_eq!(snaps[0]["tag"], "base");
    assert!(snaps[0]["problem"].is_null(), "{snaps}");
}

#[test]
fn snapshot_of_running_vm_gives_independent_clones() {
    let env = Env::new();
    snapshot_and_three_clones(&env, &[], &[]);
}

#[test]
fn snapshot_with_stop_moves_ram_and_gives_independent_clones() {
    let env = Env::new();
    snapshot_and_three_clones(&env, &[], &["--stop"]);
}

/// Two vCPUs (multi-threaded TCG). This one also saves and loads device state through
/// a passed file descriptor (`getfd` + `fd:`), the path used by QEMU < 8.2.
#[test]
fn two_vcpus_through_fd_migration() {
    let env = Env::new().with_env("THAW_MIGRATION", "fd");
    snapshot_and_three_clones(&env, &["--cpus", "2"], &[]);
    let clone = env.json(&["restore", "base"]);
    let name = clone[0]["name"].as_str().unwrap();
    assert_eq!(env.sh(name, "grep -c ^processor /proc/cpuinfo"), "2\n");
}
