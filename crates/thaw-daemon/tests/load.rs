//! Issue 19, load: 50 restores at once through thawd, without and with a warm pool,
//! far beyond `--max-vms`. Every request succeeds or gets 429 with `Retry-After`;
//! nothing leaks once the clones are stopped (no QEMU, VM directory, database row,
//! zombie, or daemon file descriptor); the daemon keeps answering other requests
//! meanwhile (their latencies are printed, not asserted: the machine is shared).

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, zombie_children, Daemon};
use serde_json::{json, Value};
use thaw_daemon::client::Client;

const REQUESTS: usize = 50;
const MAX_VMS: usize = 8;

/// One request on its own connection; the status, the `Retry-After` header and the
/// body (checked against docs/openapi.json).
fn post(socket: &std::path::Path, path: &str, body: &Value) -> (u16, Option<String>, Value) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let body = body.to_string();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: thawd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, rest) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry_after = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("retry-after")
            .then(|| v.trim().to_owned())
    });
    let value: Value = serde_json::from_str(rest).unwrap_or_else(|e| panic!("{e}: {rest:?}"));
    common::openapi::spec().check_response("POST", path, status, &value);
    (status, retry_after, value)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Latencies of GET `path`, in ms, one request after another until `stop`.
async fn probe(socket: std::path::PathBuf, path: &'static str, stop: Arc<AtomicBool>) -> Vec<f64> {
    let client = Client::connect_async(&socket)
        .await
        .expect("daemon answers");
    let mut ms = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let (status, _) = client.request("GET", path, None).await.unwrap();
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "GET {path}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ms
}

/// Probes GET /v1/health and GET /v1/vms side by side, each on its own.
struct Probes {
    stop: Arc<AtomicBool>,
    health: tokio::task::JoinHandle<Vec<f64>>,
    vms: tokio::task::JoinHandle<Vec<f64>>,
}

impl Probes {
    fn start(d: &Daemon) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        Probes {
            health: tokio::spawn(probe(d.socket(), "/v1/health", stop.clone())),
            vms: tokio::spawn(probe(d.socket(), "/v1/vms", stop.clone())),
            stop,
        }
    }

    async fn finish(self) -> (Vec<f64>, Vec<f64>) {
        self.stop.store(true, Ordering::Relaxed);
        (self.health.await.unwrap(), self.vms.await.unwrap())
    }
}

fn summary(ms: &mut [f64]) -> String {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "median {:.2} ms, p95 {:.2} ms ({} requests)",
        at(0.5),
        at(0.95),
        ms.len()
    )
}

/// Latencies with nothing else going on.
async fn quiet_latencies(d: &Daemon) -> (Vec<f64>, Vec<f64>) {
    let probes = Probes::start(d);
    tokio::time::sleep(Duration::from_secs(3)).await;
    probes.finish().await
}

/// 50 restores at once; returns the names of the clones that started.
async fn burst(d: &Daemon, what: &str) -> Vec<String> {
    let (mut health_before, mut vms_before) = quiet_latencies(d).await;
    let probes = Probes::start(d);
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for _ in 0..REQUESTS {
        let socket = d.socket();
        // Generous: eight guests resume at once on a small, shared machine under TCG.
        let body = json!({ "timeout_secs": 300 });
        tasks.spawn_blocking(move || post(&socket, "/v1/snapshots/base/restore", &body));
    }
    let (mut names, mut refused) = (Vec::new(), 0);
    while let Some(r) = tasks.join_next().await {
        let (status, retry_after, answer) = r.unwrap();
        match status {
            201 => names.push(answer[0]["name"].as_str().unwrap().to_owned()),
            429 => {
                refused += 1;
                let secs: u64 = retry_after
                    .unwrap_or_else(|| panic!("a 429 without Retry-After: {answer}"))
                    .parse()
                    .expect("Retry-After in seconds");
                assert!(secs >= 1);
                assert!(answer["error"].as_str().unwrap().contains("--max-vms"));
            }
            _ => panic!("{what}: a restore answered {status}: {answer}\n{}", d.log()),
        }
    }
    let took = t0.elapsed();
    let (mut health, mut vms) = probes.finish().await;
    println!(
        "{what}: {REQUESTS} restores at once, --max-vms {MAX_VMS}: {} succeeded, {refused} got 429, in {took:.1?}",
        names.len()
    );
    println!("  GET /v1/health before: {}", summary(&mut health_before));
    println!("  GET /v1/health during: {}", summary(&mut health));
    println!("  GET /v1/vms    before: {}", summary(&mut vms_before));
    println!("  GET /v1/vms    during: {}", summary(&mut vms));
    assert_eq!(names.len() + refused, REQUESTS);
    assert!(
        (1..=MAX_VMS).contains(&names.len()),
        "{what}: {} clones started with --max-vms {MAX_VMS}",
        names.len()
    );
    names
}

/// Stops the clones and checks that nothing of them is left.
async fn stop_all_and_check(d: &Daemon, names: &[String], fds_before: usize, what: &str) {
    for name in names {
        d.expect("DELETE", &format!("/v1/vms/{name}"), None, 200)
            .await;
    }
    let health = d.expect("GET", "/v1/health", None, 200).await;
    assert_eq!(health["vms"], 0, "{what}: a database row was left");
    assert!(d.vm_names().await.is_empty(), "{what}: a VM was left");
    let dirs: Vec<_> = std::fs::read_dir(d.home().join("vms"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        dirs.is_empty(),
        "{what}: VM directories were left: {dirs:?}"
    );
    let pid = d.pid();
    eventually(
        &format!(
            "{what}: no QEMU but the pool's, no zombie, and the daemon's fds back to {fds_before}"
        ),
        Duration::from_secs(120),
        || {
            let pooled = d.pool_processes();
            d.processes().iter().all(|p| pooled.contains(p))
                && zombie_children(pid).is_empty()
                && fds(pid) <= fds_before
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_restores_beyond_max_vms_succeed_or_get_429_and_leak_nothing() {
    let max = MAX_VMS.to_string();
    let d = Daemon::start(&["--max-vms", &max]).await;
    d.boot("src", json!({"memory_mib": 128})).await;
    d.expect(
        "POST",
        "/v1/vms/src/snapshot",
        Some(json!({"tag": "base", "stop": true})),
        201,
    )
    .await;

    let fds_before = fds(d.pid());
    let names = burst(&d, "without a pool").await;
    stop_all_and_check(&d, &names, fds_before, "without a pool").await;

    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 4, "mode": "running"})),
        200,
    )
    .await;
    d.wait_pool_ready("base", 4).await;
    let fds_before = fds(d.pid());
    let names = burst(&d, "with a pool of 4").await;
    d.wait_pool_ready("base", 4).await;
    stop_all_and_check(&d, &names, fds_before, "with a pool of 4").await;
}
