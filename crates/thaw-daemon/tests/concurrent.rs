//! Twenty restore requests at once: all succeed, with twenty names and processes, and
//! every clone runs commands.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::Daemon;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_restores_all_succeed() {
    let d = Arc::new(Daemon::start(&[]).await);
    d.boot("src", json!({"memory_mib": 128})).await;
    d.expect(
        "POST",
        "/v1/vms/src/snapshot",
        Some(json!({"tag": "base", "stop": true})),
        201,
    )
    .await;
    assert!(
        d.vm_names().await.is_empty(),
        "snapshot with stop ends the VM"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let d = d.clone();
        // Generous: twenty guests resume at once on a small machine under TCG.
        let body = json!({ "timeout_secs": 300 });
        tasks.spawn(async move {
            d.expect("POST", "/v1/snapshots/base/restore", Some(body), 201)
                .await
        });
    }
    let mut names = HashSet::new();
    let mut pids = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        let reports = r.unwrap();
        assert_eq!(reports.as_array().unwrap().len(), 1);
        names.insert(reports[0]["name"].as_str().unwrap().to_owned());
        pids.insert(reports[0]["pid"].as_u64().unwrap());
    }
    assert_eq!(names.len(), 20, "distinct names: {names:?}");
    assert_eq!(pids.len(), 20, "distinct processes");
    let listed: HashSet<String> = d.vm_names().await.into_iter().collect();
    assert_eq!(listed, names);

    let mut tasks = tokio::task::JoinSet::new();
    for name in names.clone() {
        let d = d.clone();
        tasks.spawn(async move { (d.sh(&name, "echo $((6 * 7))").await, name) });
    }
    while let Some(r) = tasks.join_next().await {
        let (out, name) = r.unwrap();
        assert_eq!(out, "42\n", "{name}");
    }

    let mut tasks = tokio::task::JoinSet::new();
    for name in names {
        let d = d.clone();
        tasks.spawn(async move {
            d.expect("DELETE", &format!("/v1/vms/{name}"), None, 200)
                .await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert!(d.vm_names().await.is_empty());
    assert_eq!(d.expect("GET", "/v1/health", None, 200).await["vms"], 0);
    assert!(d.processes().is_empty(), "a QEMU was left running");
}

/// Regression: unnamed restores racing for a pool that has fewer clones than requests.
/// Each saw a clone ready and claimed a derived name (`base-<i>`) before taking; the
/// losers of the take fell back to spawning and tried to claim their name a second
/// time, answering 409 "a VM named base-5 already exists" (seen once in CI's load
/// test; the window is narrow, so this test does not hit it on every run).
#[tokio::test(flavor = "multi_thread")]
async fn restores_racing_for_a_small_pool_all_succeed() {
    let d = Arc::new(Daemon::start(&[]).await);
    d.boot("src", json!({"memory_mib": 128})).await;
    d.expect(
        "POST",
        "/v1/vms/src/snapshot",
        Some(json!({"tag": "base", "stop": true})),
        201,
    )
    .await;
    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 1, "mode": "running"})),
        200,
    )
    .await;
    d.wait_pool_ready("base", 1).await;

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let d = d.clone();
        let body = json!({ "timeout_secs": 300 });
        tasks.spawn(async move {
            d.expect("POST", "/v1/snapshots/base/restore", Some(body), 201)
                .await
        });
    }
    let mut names = HashSet::new();
    let mut sources = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let reports = r.unwrap();
        names.insert(reports[0]["name"].as_str().unwrap().to_owned());
        sources.push(
            reports[0]["breakdown"]["source"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(names.len(), 8, "distinct names: {names:?}");
    assert!(
        sources.iter().any(|s| s == "pool") && sources.iter().any(|s| s == "spawn"),
        "the pool of one served a clone and the rest spawned: {sources:?}"
    );
    for name in &names {
        assert_eq!(d.sh(name, "echo ok").await, "ok\n", "{name}");
    }
}
