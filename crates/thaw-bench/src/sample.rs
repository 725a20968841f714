//! What every benchmark measures with and reports in: a sample's [`Stats`], the
//! [`Machine`] the figures came from, the load average, and waiting for a warm pool
//! to be full before a restore is timed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thaw::pool::Pool;
use thaw::qemu::Qemu;
use thaw::ready::ReadySpec;
use thaw::Accel;

/// Minimum, median and maximum of a sample, in milliseconds. An empty sample has
/// NaN everywhere, written as JSON null (and read back from it).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub median: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut s = samples.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => s[n / 2],
            _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        };
        Stats {
            min: s.first().copied().unwrap_or(f64::NAN),
            median,
            max: s.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The host the figures came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: u64,
    pub kernel: String,
    pub qemu: String,
    pub accel: Accel,
}

/// This host, with `qemu` and `accel`.
pub fn machine(qemu: &Qemu, accel: Accel) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_gib: (mem_kib + (1 << 19)) >> 20,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        qemu: qemu.version.to_string(),
        accel,
    }
}

/// /proc/loadavg (1, 5, 15 min): the machine may be shared.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Min / median / max of each `*_ms` part of restore breakdowns (as JSON objects).
pub fn breakdown_stats(breakdowns: &[serde_json::Value]) -> BTreeMap<String, Stats> {
    let mut parts = BTreeMap::new();
    for b in breakdowns {
        for (k, v) in b.as_object().into_iter().flatten() {
            if let (true, Some(v)) = (k.ends_with("_ms"), v.as_f64()) {
                parts.entry(k.clone()).or_insert_with(Vec::new).push(v);
            }
        }
    }
    parts.into_iter().map(|(k, v)| (k, Stats::of(&v))).collect()
}

/// What "ready" means for `ready`, as the reports say it.
pub fn ready_label(ready: &ReadySpec) -> String {
    match (ready.port, ready.redis_ping) {
        (Some(p), true) => format!("agent + redis PING on guest port {p}"),
        (Some(p), false) => format!("agent + guest port {p}"),
        _ => "agent".into(),
    }
}

/// A warm pool that did not fill: why (its last error), or that it timed out.
#[derive(Debug, thiserror::Error)]
#[error("the warm pool did not fill: {0}")]
pub struct PoolFillError(pub String);

/// Waits until every configured pool is full; fails if preparing clones keeps failing.
pub async fn wait_pool_full(pool: &Arc<Pool>) -> Result<(), PoolFillError> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = pool.status();
        if status.iter().all(|s| s.ready == s.size) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let why = status
                .iter()
                .find_map(|s| s.last_error.clone())
                .unwrap_or_else(|| "timed out".into());
            return Err(PoolFillError(why));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_min_median_max() {
        assert_eq!(
            Stats::of(&[5.0, 1.0, 3.0]),
            Stats {
                min: 1.0,
                median: 3.0,
                max: 5.0
            }
        );
        assert_eq!(Stats::of(&[4.0, 1.0, 3.0, 2.0]).median, 2.5);
        assert!(Stats::of(&[]).median.is_nan());
    }
}
