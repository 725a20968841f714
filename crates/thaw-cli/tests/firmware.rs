//! Disk images that boot through firmware: the Debian image with GRUB, booted by SeaBIOS
//! and by UEFI (OVMF) with no `-kernel`, snapshots and three clones that each have what
//! was written before the snapshot; under UEFI the variable store is part of the
//! snapshot and every clone writes its own. And what goes wrong: no OVMF, a disk without
//! a bootloader.

mod common;

use common::{names, Env};
use serde_json::Value;

/// Builds the firmware-booted image (once; the binary serialises builds with a lock).
fn build_image(env: &Env) {
    let build = env.run(&["guest", "build", "--profile", "debian-bios"]);
    assert_eq!(
        build.code, 0,
        "building the firmware-booted debian image failed (run scripts/setup.sh --images): {}",
        build.stderr
    );
}

/// Boots `profile`, writes a file, snapshots, restores three clones and checks that each
/// has the file, and that a write in one clone stays there. Returns the clones' names.
fn three_clones_keep_the_state(
    env: &Env,
    profile: &str,
    stop: bool,
    before_snapshot: impl Fn(&Env),
) -> Vec<String> {
    env.boot("orig", &["--profile", profile, "--timeout", "300"]);
    let console = env.ok(&["logs", "orig"]).stdout;
    assert!(
        console.contains("GRUB") && console.contains("is starting Linux"),
        "GRUB did not say on the serial console that it started Linux: {console}"
    );
    // No -kernel: the guest's own kernel, from its /boot, on partition 3.
    let cmdline = env.sh("orig", "cat /proc/cmdline");
    assert!(
        cmdline.starts_with("BOOT_IMAGE=/boot/vmlinuz root=/dev/vda3"),
        "{cmdline}"
    );
    env.sh(
        "orig",
        "echo written-before-the-snapshot > /root/state && sync",
    );
    before_snapshot(env);
    let mut snap = vec!["snapshot", "orig", "s"];
    if stop {
        snap.push("--stop");
    }
    env.json(&snap);
    let clones = names(&env.json(&["restore", "s", "--count", "3", "--timeout", "120"]));
    assert_eq!(clones.len(), 3);
    for c in &clones {
        assert_eq!(
            env.sh(c, "cat /root/state").trim(),
            "written-before-the-snapshot",
            "{c}"
        );
        common::assert_clock_close(env, c);
    }
    env.sh(&clones[0], "echo mine > /root/only-here && sync");
    for c in &clones[1..] {
        assert!(!env.sh(c, "ls /root").contains("only-here"), "{c}");
    }
    clones
}

#[test]
fn bios_boots_the_disk_through_grub_and_three_clones_keep_the_state() {
    let env = Env::new();
    build_image(&env);
    let clones = three_clones_keep_the_state(&env, "debian-bios", false, |_| {});
    // SeaBIOS: no UEFI variable store anywhere.
    assert!(!env.path().join("snapshots/s/efivars.fd").exists());
    assert!(!env.sh(&clones[0], "ls /sys/firmware").contains("efi"));
    // The original kept running after the snapshot.
    assert_eq!(
        env.sh("orig", "cat /root/state").trim(),
        "written-before-the-snapshot"
    );
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}

/// The name of a UEFI variable as the variable store holds it (UTF-16LE).
fn in_store(file: &std::path::Path, name: &str) -> bool {
    let bytes = std::fs::read(file).unwrap();
    let needle: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    bytes.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// Writes a UEFI variable from inside the guest (efivarfs: 4 bytes of attributes, then
/// the value, in one write).
fn set_uefi_var(env: &Env, vm: &str, name: &str) {
    env.sh(
        vm,
        &format!(
            "printf '\\007\\000\\000\\000x' > /tmp/v && \
             cat /tmp/v > /sys/firmware/efi/efivars/{name}-3a9d0e3c-4b1f-4c52-9d7e-7468617700aa"
        ),
    );
}

#[test]
fn uefi_boots_the_disk_and_each_clone_gets_its_own_uefi_variables() {
    let env = Env::new();
    build_image(&env);
    // A variable the VM writes before the snapshot goes into its store, and the store
    // into the snapshot (moved: --stop) ...
    let clones = three_clones_keep_the_state(&env, "debian-uefi", true, |env| {
        set_uefi_var(env, "orig", "ThawBeforeSnapshot");
        assert!(in_store(
            &env.path().join("vms/orig/efivars.fd"),
            "ThawBeforeSnapshot"
        ));
    });
    let snap_vars = env.path().join("snapshots/s/efivars.fd");
    assert!(in_store(&snap_vars, "ThawBeforeSnapshot"));
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(env.path().join("snapshots/s/manifest.json")).unwrap(),
    )
    .unwrap();
    assert!(
        manifest["files"]["efivars.fd"]["blake3"].is_string(),
        "{manifest}"
    );
    for c in &clones {
        let listed = env.sh(c, "ls /sys/firmware/efi/efivars");
        assert!(listed.contains("ThawBeforeSnapshot"), "{c}: {listed}");
    }
    // ... and what a clone writes goes to its own copy only.
    set_uefi_var(&env, &clones[0], "ThawInCloneOne");
    let store = |vm: &str| env.path().join(format!("vms/{vm}/efivars.fd"));
    assert!(in_store(&store(&clones[0]), "ThawInCloneOne"));
    for c in &clones[1..] {
        assert!(!in_store(&store(c), "ThawInCloneOne"), "{c}");
        assert!(!env
            .sh(c, "ls /sys/firmware/efi/efivars")
            .contains("ThawInCloneOne"));
    }
    assert!(
        !in_store(&snap_vars, "ThawInCloneOne"),
        "the snapshot is never written"
    );
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}

#[test]
fn no_ovmf_names_the_package_and_a_disk_without_bootloader_names_the_serial_log() {
    let env = Env::new().with_env("THAW_OVMF_DIR", "/nonexistent/ovmf");
    let img = tempfile::tempdir().unwrap();
    let blank = img.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let blank = blank.to_str().unwrap();

    env.run(&["boot", "u", "--disk", blank, "--firmware", "uefi"])
        .fails_with("install the Debian package ovmf");
    assert!(env.vm_dirs().is_empty() && env.processes().is_empty());

    let r = env.run(&["boot", "nb", "--disk", blank, "--timeout", "15"]);
    let kept = env.path().join("logs/nb.console.log");
    r.fails_with(&format!("serial console, kept in {}", kept.display()));
    assert!(r.stderr.contains("bootloader"), "{}", r.stderr);
    assert!(kept.is_file(), "the serial log the error names exists");
    assert!(env.processes().is_empty(), "nothing left running");
    assert!(
        env.vm_dirs().is_empty(),
        "stray VM state: {:?}",
        env.vm_dirs()
    );
}
