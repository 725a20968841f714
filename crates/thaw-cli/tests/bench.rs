//! `thaw bench` end to end: it boots, snapshots and restores real guests and reports
//! figures with the machine they came from. What is asserted is the report's shape and
//! consistency, never a timing: this machine is shared and noisy.

mod common;

use common::Env;
use serde_json::Value;

/// min ≤ median ≤ max, all positive.
fn assert_stats(report: &Value, key: &str) {
    let s = &report[key];
    let (min, median, max) = (
        s["min"].as_f64().unwrap_or_else(|| panic!("{key}: {s}")),
        s["median"].as_f64().unwrap(),
        s["max"].as_f64().unwrap(),
    );
    assert!(0.0 < min && min <= median && median <= max, "{key}: {s}");
}

#[test]
fn bench_reports_each_step_per_ram_size_and_leaves_nothing_behind() {
    let env = Env::new();
    let r = env.json(&[
        "bench",
        "--runs",
        "2",
        "--cold-runs",
        "1",
        "--memory",
        "256",
        "--memory",
        "512",
    ]);
    // tcg on this machine class (its /dev/kvm cannot run a guest), kvm where it works.
    assert!(
        ["tcg", "kvm"].contains(&r["machine"]["accel"].as_str().unwrap_or("")),
        "{r}"
    );
    assert!(r["machine"]["cpu"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(r["machine"]["qemu"].as_str().is_some_and(|q| !q.is_empty()));
    assert_eq!(r["guest"], "default guest");
    assert_eq!(r["ready"], "agent");
    let sizes = r["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    for (size, mib) in sizes.iter().zip([256, 512]) {
        assert_eq!(size["memory_mib"], mib);
        for key in [
            "cold_boot_ms",
            "pause_ms",
            "restore_ms",
            "ready_ms",
            "reset_ms",
            "reset_ready_ms",
            "stop_restore_ms",
            "store_restore_ms",
            "store_ready_ms",
        ] {
            assert_stats(size, key);
        }
        // Ready comes after running.
        assert!(size["ready_ms"]["min"].as_f64() >= size["restore_ms"]["min"].as_f64());
        assert_eq!(size["from_pool"], 0);
        assert!(size["materialize_ms"].as_f64().unwrap() > 0.0);
        assert!(size["store_to_plain_restore_ratio"].as_f64().unwrap() > 0.0);
    }
    // The headline is the first size; the ratio compares the two.
    assert_eq!(r["restore_ms"], sizes[0]["restore_ms"]);
    assert!(r["restore_ratio_largest_to_smallest"].as_f64().unwrap() > 0.0);
    assert!(r["pause_ratio_largest_to_smallest"].as_f64().unwrap() > 0.0);
    env.assert_no_bench_leftovers();
}

#[test]
fn bench_with_a_pool_takes_every_restore_from_it() {
    let env = Env::new();
    let r = env.json(&[
        "bench",
        "--runs",
        "3",
        "--cold-runs",
        "1",
        "--pool",
        "1",
        "--pool-mode",
        "paused",
    ]);
    assert_eq!(r["pool"]["size"], 1);
    assert_eq!(r["pool"]["mode"], "paused");
    assert_eq!(r["sizes"][0]["from_pool"], 3, "{r}");
    assert_eq!(r["sizes"][0]["resets_from_pool"], 3, "{r}");
    assert_stats(&r, "restore_ms");
    assert_stats(&r, "ready_ms");
    env.assert_no_bench_leftovers();
}

/// `thaw bench --lazy` against a real bucket (s3s-fs): plain and lazy restores from the
/// store, the write-out it saves, the disk it uses, and cold-host restores from the
/// bucket with and without the working set.
#[test]
fn bench_lazy_reports_store_and_bucket_restores_and_leaves_nothing_behind() {
    let server = common::s3::S3Server::start();
    let mut env = Env::new();
    for (k, v) in server.env() {
        env = env.with_env(&k, &v);
    }
    let r = env.json(&[
        "bench",
        "--lazy",
        "--runs",
        "1",
        "--memory",
        "256",
        "--remote",
        "s3://thaw/bench",
    ]);
    let size = &r["sizes"][0];
    assert_eq!(size["memory_mib"], 256, "{r}");
    for key in ["plain_ready_ms", "lazy_ready_ms"] {
        assert_stats(size, key);
    }
    let stored = size["stored_bytes"].as_u64().unwrap();
    assert!(stored > 0, "{size}");
    // Kept once: the directory of a lazily served snapshot is a manifest and links.
    assert!(size["dir_bytes"].as_u64().unwrap() < 1 << 20, "{size}");
    // The pinned snapshot keeps its RAM image's data as a plain file besides.
    assert!(
        size["pinned_dir_bytes"].as_u64().unwrap() > stored / 2,
        "{size}"
    );
    let remote = &size["remote"];
    // The local restores the cold host is measured against, beside each cold one.
    assert_stats(remote, "local_ready_ms");
    for mode in ["no_working_set", "working_set"] {
        assert_stats(&remote[mode], "ready_ms");
        let fetched = remote[mode]["fetched_bytes"].as_u64().unwrap();
        assert!(0 < fetched && fetched < stored, "{mode}: {remote}");
    }
    env.assert_no_bench_leftovers();
}
