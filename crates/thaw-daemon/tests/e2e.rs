//! Through the socket only: boot, snapshot, restore three clones, run a command in
//! each, hit the VM limit, stop everything.

mod common;

use std::collections::HashSet;

use common::Daemon;
use serde_json::json;

const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";

#[tokio::test(flavor = "multi_thread")]
async fn boot_snapshot_restore_exec_and_stop_through_the_socket() {
    let d = Daemon::start(&["--max-vms", "4"]).await;

    let booted = d.boot("web", json!({})).await;
    assert_eq!(booted["name"], "web");
    let boot_id = d.sh("web", BOOT_ID).await;
    assert_eq!(boot_id.trim().len(), 36, "a boot id: {boot_id:?}");

    let snap = d
        .expect(
            "POST",
            "/v1/vms/web/snapshot",
            Some(json!({"tag": "base"})),
            201,
        )
        .await;
    assert_eq!(snap["tag"], "base");
    assert_ne!(snap["ram_copy"], "moved", "the VM keeps running");
    // Kept once, in the store, by default: the RAM image is the lazy server's file.
    assert_eq!(snap["pinned"], false, "{snap}");
    let memory = d.home().join("snapshots/base/memory");
    assert!(
        std::fs::read_link(&memory).is_ok_and(|t| t.starts_with(d.home().join("lazy/mnt"))),
        "{} is not a link to the lazy server's file",
        memory.display()
    );
    assert_eq!(d.snapshot_tags().await, ["base"]);
    // `pin` keeps the plain file as well.
    let pinned = d
        .expect(
            "POST",
            "/v1/vms/web/snapshot",
            Some(json!({"tag": "pinned", "pin": true})),
            201,
        )
        .await;
    assert_eq!(pinned["pinned"], true, "{pinned}");
    assert!(
        std::fs::symlink_metadata(d.home().join("snapshots/pinned/memory"))
            .unwrap()
            .is_file()
    );
    d.expect("DELETE", "/v1/snapshots/pinned", None, 200).await;
    assert_eq!(d.snapshot_tags().await, ["base"]);

    // Requests that cannot work change nothing, also with a VM and a snapshot around.
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "web"})),
        409,
        "already exists",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base"})),
        409,
        "already exists",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "a/b"})),
        400,
        "contains '/'",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"name": "x/.."})),
        400,
        "invalid VM name",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/other/restore",
        None,
        404,
        "no snapshot tagged other",
    )
    .await;
    d.raw_refused(
        "POST",
        "/v1/snapshots/base/restore",
        Some("application/json"),
        "{\"count\": 3",
        400,
        "invalid request body",
    );
    assert_eq!(d.vm_names().await, ["web"]);
    assert_eq!(d.snapshot_tags().await, ["base"]);

    let clones = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"count": 3})),
            201,
        )
        .await;
    let clones = clones.as_array().unwrap();
    let names: Vec<&str> = clones.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-1", "base-2", "base-3"]);
    let pids: HashSet<u64> = clones.iter().map(|c| c["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 3, "three processes");
    for c in clones {
        assert_eq!(c["breakdown"]["source"], "spawn", "no pool configured: {c}");
    }
    for name in &names {
        // Clones resume the snapshot's guest: same boot, separate processes.
        assert_eq!(d.sh(name, BOOT_ID).await, boot_id, "{name}");
    }
    let vms = d.vms().await;
    assert_eq!(vms.len(), 4);
    assert!(vms.iter().all(|v| v["state"] == "running"), "{vms:?}");

    // At the limit (4): more is refused at once, and nothing starts.
    d.refused(
        "POST",
        "/v1/snapshots/base/restore",
        None,
        429,
        "at most 4 VMs",
    )
    .await;
    d.refused(
        "POST",
        "/v1/vms",
        Some(json!({"name": "more"})),
        429,
        "--max-vms",
    )
    .await;
    d.refused(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"count": 100})),
        429,
        "at most 4 VMs",
    )
    .await;
    assert_eq!(d.vm_names().await, ["base-1", "base-2", "base-3", "web"]);
    assert_eq!(d.expect("GET", "/v1/health", None, 200).await["vms"], 4);

    // A VM stopped behind the daemon's back (its QEMU ended and its directory removed,
    // as `thaw stop` without the daemon does) is found gone once the limit is reached,
    // and stops counting.
    let base3 = d.home().join("vms/base-3");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base3.join("vm.json")).unwrap()).unwrap();
    let pid = rustix::process::Pid::from_raw(record["pid"].as_i64().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    std::fs::remove_dir_all(&base3).unwrap();
    let behind = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "behind"})),
            201,
        )
        .await;
    assert_eq!(behind[0]["name"], "behind");
    assert_eq!(d.vm_names().await, ["base-1", "base-2", "behind", "web"]);

    // Stopping one makes room again; a failed request holds none.
    let stopped = d.expect("DELETE", "/v1/vms/base-1", None, 200).await;
    assert_eq!(stopped, json!({"stopped": "base-1"}));
    d.refused(
        "POST",
        "/v1/snapshots/other/restore",
        None,
        404,
        "no snapshot tagged other",
    )
    .await;
    let again = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "again"})),
            201,
        )
        .await;
    assert_eq!(again[0]["name"], "again");
    assert_eq!(d.sh("again", "echo hi").await, "hi\n");

    for name in d.vm_names().await {
        d.expect("DELETE", &format!("/v1/vms/{name}"), None, 200)
            .await;
    }
    assert!(d.vm_names().await.is_empty());
    let removed = d.expect("DELETE", "/v1/snapshots/base", None, 200).await;
    assert_eq!(removed, json!({"removed": ["base"]}));
    assert!(d.snapshot_tags().await.is_empty());
    assert!(d.processes().is_empty(), "a QEMU was left running");
}
