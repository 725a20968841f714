//! `thaw bench --compare` end to end: every method really runs on the default guest
//! (libvirt included: the benchmark starts libvirtd itself when none runs) and
//! everything it started is gone afterwards. What is asserted is the report's shape,
//! never a timing.

mod common;

use common::Env;
use serde_json::Value;

const METHODS: &[&str] = &[
    "cold-boot",
    "savevm",
    "exec-gzip",
    "exec-zstd",
    "libvirt",
    "thaw-bare",
    "thaw",
    "thaw-x3",
    "thaw-pool-x3",
    "thaw-pool-paused",
    "thaw-pool-running",
    "thawd-pool-running",
];

/// Methods that save a state (the pools and the daemon reuse thaw's snapshot).
const SAVING: &[&str] = &["savevm", "exec-gzip", "exec-zstd", "libvirt", "thaw"];

fn stats(m: &Value, key: &str) -> (f64, f64, f64) {
    let s = &m[key];
    let get = |k: &str| {
        s[k].as_f64()
            .unwrap_or_else(|| panic!("{}: {key}.{k} missing: {m}", m["method"]))
    };
    let (min, median, max) = (get("min"), get("median"), get("max"));
    assert!(
        0.0 < min && min <= median && median <= max,
        "{}: {key} {s}",
        m["method"]
    );
    (min, median, max)
}

/// Live (not zombie) libvirtd and virtlogd processes.
fn libvirt_processes() -> usize {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let Some((comm, state)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
            else {
                return false;
            };
            ["libvirtd", "virtlogd"].contains(&comm) && !state.starts_with(['Z', 'X'])
        })
        .count()
}

fn domains() -> String {
    std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "list", "--all", "--name"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn compare_runs_every_method_on_one_guest_and_cleans_up() {
    let env = Env::new();
    let libvirt_before = libvirt_processes();
    let charts = tempfile::tempdir().unwrap();
    let chart = charts.path().join("c.png");
    let r = env.run(&[
        "bench",
        "--compare",
        "--runs",
        "1",
        "--chart",
        chart.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        r.code, 0,
        "bench --compare failed (what it needs comes from scripts/setup-test.sh): {}{}",
        r.stderr, r.stdout
    );
    let r = r.json();
    assert!(
        r["failed"].as_array().is_some_and(|f| f.is_empty()),
        "methods did not run: {}",
        r["failed"]
    );
    assert_eq!(r["guest"], "default guest");
    assert_eq!(r["ready"], "agent");
    assert_eq!(r["memory_mib"], 256);
    for k in ["load_before", "load_after"] {
        assert_eq!(r[k].as_array().map(Vec::len), Some(3), "{k}: {}", r[k]);
    }
    let methods = r["methods"].as_array().unwrap();
    let ids: Vec<&str> = methods
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert_eq!(ids, METHODS, "every method, in the table's order");
    for m in methods {
        let id = m["method"].as_str().unwrap();
        assert!(m.get("error").is_none(), "{id}: {}", m["error"]);
        assert_eq!(m["restores"], 1, "{id}");
        let (_, ready, _) = stats(m, "ready_ms");
        if id != "cold-boot" {
            let (_, running, _) = stats(m, "running_ms");
            assert!(running <= ready, "{id}: running {running} > ready {ready}");
        }
        if SAVING.contains(&id) {
            stats(m, "save_ms");
            assert_eq!(m["saves"], 1, "{id}");
            assert!(m["save_bytes"].as_u64().unwrap_or(0) > 0, "{id}: {m}");
        }
        assert!(m["ready_vs_thaw"].as_f64().unwrap_or(0.0) > 0.0, "{id}");
        assert!(m["ready_vs_pool"].as_f64().unwrap_or(0.0) > 0.0, "{id}");
    }
    let by_id = |id: &str| methods.iter().find(|m| m["method"] == id).unwrap();
    assert_eq!(by_id("thaw")["ready_vs_thaw"], 1.0);
    for pooled in [
        "thaw-pool-paused",
        "thaw-pool-running",
        "thawd-pool-running",
    ] {
        assert_eq!(by_id(pooled)["detail"]["from_pool"], 1, "{pooled}");
    }
    // One restore of three clones, all three from the pool.
    assert_eq!(by_id("thaw-pool-x3")["detail"]["from_pool"], 3);
    let breakdown = &by_id("thawd-pool-running")["detail"]["breakdown"];
    for part in [
        "connect_ms",
        "http_ms",
        "admit_ms",
        "restore_ms",
        "record_ms",
    ] {
        assert!(breakdown[part]["median"].is_number(), "{part}: {breakdown}");
    }
    // The charts: two PNG files.
    for f in [chart.clone(), charts.path().join("c-ram.png")] {
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            f.display()
        );
    }
    // Nothing left: no QEMU, no bench home, no libvirt domain, and libvirtd only if it
    // ran before.
    env.assert_no_bench_leftovers();
    assert!(
        !domains().contains("thaw-bench-"),
        "a libvirt domain was left: {}",
        domains()
    );
    if libvirt_before == 0 {
        assert_eq!(
            libvirt_processes(),
            0,
            "the libvirtd the bench started still runs"
        );
    }
}

#[test]
fn compare_refuses_a_pool_or_density_alongside() {
    let env = Env::new();
    env.run(&["bench", "--compare", "--pool", "1"])
        .fails_with("cannot be used with");
    env.run(&["bench", "--chart", "x.png"])
        .fails_with("--compare");
}

/// `bench --density`: every clone runs at once and answers its agent, each QEMU gets
/// the density translation buffer (not QEMU's 1 GiB default), the memory figures are
/// measured, and nothing is left afterwards.
#[test]
fn density_runs_every_clone_with_a_small_translation_buffer_and_cleans_up() {
    let env = Env::new();
    let j = env.json(&["bench", "--density", "2"]);
    assert_eq!(j["clones"], 2, "{j}");
    assert_eq!(j["answered"], 2, "{j}");
    assert_eq!(j["tb_size_mib"], 32, "{j}");
    let (pss, _, _) = stats(&j, "pss_mib");
    let (rss, _, _) = stats(&j, "rss_mib");
    assert!(pss <= rss, "PSS counts shared pages once: {j}");
    assert!(j["host_used_mib"].as_f64().is_some(), "{j}");
    env.assert_no_bench_leftovers();
    // QEMU's own default when asked for it.
    let j = env.json(&["bench", "--density", "1", "--tb-size", "0"]);
    assert_eq!(j["answered"], 1, "{j}");
    assert!(j["tb_size_mib"].is_null(), "{j}");
}
