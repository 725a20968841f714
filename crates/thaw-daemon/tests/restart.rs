//! kill -9 of the daemon while VMs and pooled processes run: its keeper ends the pooled
//! processes, the VMs (also a clone taken from the pool) run on; the next daemon
//! answers for them, leaves no QEMU unaccounted for, and refills the pool.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, parent_of, Daemon};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_then_restart_adopts_vms_and_refills_the_pool() {
    let mut d = Daemon::start(&[]).await;
    d.boot("web", json!({"memory_mib": 128})).await;
    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base"})),
        201,
    )
    .await;
    d.expect(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"count": 2})),
        201,
    )
    .await;
    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 2, "mode": "running"})),
        200,
    )
    .await;
    d.wait_pool_ready("base", 2).await;
    let taken = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "pooled"})),
            201,
        )
        .await;
    assert_eq!(taken[0]["breakdown"]["source"], "pool");
    d.wait_pool_ready("base", 2).await;
    let vm_pids: HashSet<u32> = d
        .vms()
        .await
        .iter()
        .map(|v| v["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(vm_pids.len(), 4);
    assert_eq!(d.pool_processes().len(), 2);

    assert_eq!(d.keepers().len(), 1, "the daemon has a pool keeper");

    d.kill9();
    eventually(
        "the keeper ends the pooled processes of the killed daemon",
        Duration::from_secs(10),
        || d.pool_processes().is_empty() && d.keepers().is_empty(),
    )
    .await;
    let running: HashSet<u32> = d.processes().into_iter().collect();
    assert!(vm_pids.is_subset(&running), "a VM died with the daemon");

    d.restart().await;
    let vms = d.vms().await;
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-1", "base-2", "pooled", "web"]);
    for v in &vms {
        assert_eq!(v["state"], "running", "{v}");
        let name = v["name"].as_str().unwrap();
        assert_eq!(d.sh(name, "echo alive").await, "alive\n", "{name}");
    }
    assert_eq!(d.expect("GET", "/v1/health", None, 200).await["vms"], 4);
    d.wait_pool_ready("base", 2).await;

    // Every QEMU of this home is a listed VM or a pooled process of the new daemon.
    let listed: HashSet<u32> = d
        .vms()
        .await
        .iter()
        .map(|v| v["pid"].as_u64().unwrap() as u32)
        .collect();
    let pool_dir = d.home().join("pool");
    for pid in d.processes() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let pooled = cmdline.contains(pool_dir.to_str().unwrap());
        assert!(
            listed.contains(&pid) || (pooled && parent_of(pid) == Some(d.pid())),
            "QEMU {pid} is neither a listed VM nor the new daemon's pool: {cmdline}"
        );
    }

    // And the restored pool serves restores.
    let taken = d
        .expect("POST", "/v1/snapshots/base/restore", None, 201)
        .await;
    assert_eq!(taken[0]["breakdown"]["source"], "pool");
}
