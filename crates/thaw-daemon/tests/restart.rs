//! kill -9 of the daemon while VMs and pooled processes run: the pooled processes die
//! with it, the VMs do not; the next daemon answers for the VMs, leaves no QEMU
//! unaccounted for, and refills the pool.

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
    let vm_pids: HashSet<u32> = d
        .vms()
        .await
        .iter()
        .map(|v| v["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(vm_pids.len(), 3);

    d.kill9();
    eventually(
        "pooled processes die with the daemon",
        Duration::from_secs(10),
        || d.pool_processes().is_empty(),
    )
    .await;
    let running: HashSet<u32> = d.processes().into_iter().collect();
    assert!(vm_pids.is_subset(&running), "a VM died with the daemon");

    d.restart().await;
    let vms = d.vms().await;
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-1", "base-2", "web"]);
    for v in &vms {
        assert_eq!(v["state"], "running", "{v}");
        let name = v["name"].as_str().unwrap();
        assert_eq!(d.sh(name, "echo alive").await, "alive\n", "{name}");
    }
    assert_eq!(d.expect("GET", "/v1/health", None, 200).await["vms"], 3);
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
        let pooled = String::from_utf8_lossy(&cmdline).contains(pool_dir.to_str().unwrap());
        assert!(
            listed.contains(&pid) || (pooled && parent_of(pid) == Some(d.pid())),
            "QEMU {pid} is neither a listed VM nor the new daemon's pool: {}",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
    }

    // And the restored pool serves restores.
    let taken = d
        .expect("POST", "/v1/snapshots/base/restore", None, 201)
        .await;
    assert_eq!(taken[0]["breakdown"]["source"], "pool");
}
