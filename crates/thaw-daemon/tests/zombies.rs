//! Issue 19, defect 11: the QEMU processes of stopped VMs stayed `<defunct>` children
//! of the daemon for minutes. Every VM process the daemon starts (restored, taken from
//! the pool, reset, booted) must be reaped when it exits, whoever ends it.

mod common;

use std::time::Duration;

use common::{eventually, kill9, zombie_children, Daemon};
use serde_json::json;

fn pid_of(report: &serde_json::Value) -> u32 {
    report["pid"].as_u64().expect("a pid") as u32
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_or_killed_vms_leave_no_zombie_under_the_daemon() {
    let d = Daemon::start(&[]).await;
    let booted = d.boot("booted", json!({"memory_mib": 128})).await;
    d.expect(
        "POST",
        "/v1/vms/booted/snapshot",
        Some(json!({"tag": "base"})),
        201,
    )
    .await;
    let restored = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"count": 3, "timeout_secs": 300})),
            201,
        )
        .await;
    let clones: Vec<(String, u32)> = restored
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_owned(), pid_of(c)))
        .collect();
    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 1, "mode": "running"})),
        200,
    )
    .await;
    d.wait_pool_ready("base", 1).await;
    let pooled = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "pooled", "timeout_secs": 300})),
            201,
        )
        .await;
    assert_eq!(pooled[0]["breakdown"]["source"], "pool", "{pooled}");
    let reset = d
        .expect("POST", &format!("/v1/vms/{}/reset", clones[0].0), None, 200)
        .await;

    // Ended in every way: through the API, and killed from outside (the daemon does not
    // hear of it).
    let mut ended = vec![pid_of(&booted), pid_of(&pooled[0]), clones[0].1];
    for name in ["booted", "pooled", &clones[0].0, &clones[1].0] {
        d.expect("DELETE", &format!("/v1/vms/{name}"), None, 200)
            .await;
    }
    ended.extend([pid_of(&reset), clones[1].1]);
    kill9(clones[2].1);
    ended.push(clones[2].1);

    // An ended QEMU leaves /proc once its parent, the daemon, has waited for it.
    let daemon = d.pid();
    let gone = |pid: &u32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
    eventually(
        "every ended VM process is reaped, and no zombie of the daemon is left",
        Duration::from_secs(60),
        || ended.iter().all(gone) && zombie_children(daemon).is_empty(),
    )
    .await;
    // The killed VM is dead, not gone: stopping it removes it.
    d.expect("DELETE", &format!("/v1/vms/{}", clones[2].0), None, 200)
        .await;
    assert!(d.vm_names().await.is_empty());
}
