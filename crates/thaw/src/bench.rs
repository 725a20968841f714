//! `thaw bench`: cold boot against restore of a guest (the default one, or a profile),
//! to the same readiness (the guest agent answers, plus the profile's own check, e.g.
//! Redis answering PING), measured in one run on one machine.
//!
//! For each RAM size: `runs` cold boots, `runs` snapshots of a running VM (pause
//! time), and `runs` restores of one snapshot (request → vCPUs running, and request →
//! agent answers). Everything runs in a private home under `$THAW_HOME/bench-<pid>`
//! that is removed afterwards.
//!
//! [`compare`] measures the same guest restored by the methods people use today and
//! by thaw; [`density`] runs many clones at once and reports the memory they cost.

mod bare;
pub mod compare;
pub mod density;
mod libvirt;
mod peer;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::boot::{self, BootRequest};
use crate::control;
use crate::home::{Home, SnapshotTag, VmName};
use crate::pool::{Orphans, Pool, PoolConfig};
use crate::qemu::Qemu;
use crate::ready::ReadySpec;
use crate::reset::{self, ResetRequest};
use crate::restore::{self, RestoreRequest};
use crate::snapshot::{catalog, take};
use crate::spec::{MachineSpec, PortForward};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Restores measured.
    pub runs: u32,
    /// Cold boots and snapshots measured.
    pub cold_runs: u32,
    /// One row of figures per size; the first is the headline.
    pub memory_mib: Vec<u32>,
    /// The machine to boot; its memory is replaced by each of `memory_mib`.
    pub spec: MachineSpec,
    /// Port forwards for the cold boots (clones get their own host ports).
    pub forwards: Vec<PortForward>,
    /// Readiness besides the agent, for cold boots and restores alike.
    pub ready: ReadySpec,
    /// What the table calls the guest ("default guest", "debian").
    pub guest_name: String,
    pub accel: Accel,
    /// Take restores from a warm pool of this size and mode.
    pub pool: Option<PoolConfig>,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub memory_mib: u32,
    pub cold_boot_ms: Stats,
    pub pause_ms: Stats,
    pub restore_ms: Stats,
    pub ready_ms: Stats,
    /// Median cold boot / median ready.
    pub cold_to_ready_ratio: f64,
    /// Restores that were taken from the warm pool (the others spawned a QEMU).
    pub from_pool: u32,
    /// `thaw reset` of a clone: request → vCPUs running, and → ready (from the pool
    /// when there is one).
    pub reset_ms: Stats,
    pub reset_ready_ms: Stats,
    /// The same by hand: `thaw stop` of the clone, then `thaw restore` under its name,
    /// → ready.
    pub stop_restore_ms: Stats,
    /// Median stop + restore / median reset, both to ready.
    pub stop_restore_to_reset_ratio: f64,
    /// Resets whose clone came from the warm pool.
    pub resets_from_pool: u32,
    /// Writing the snapshot out of the store into a plain directory again (after its
    /// files were evicted), once.
    pub materialize_ms: f64,
    /// Restores (no pool) of the snapshot written out from the store: request → vCPUs
    /// running, and → ready.
    pub store_restore_ms: Stats,
    pub store_ready_ms: Stats,
    /// Median restore from the store / median restore from the directory it was taken
    /// into (both → vCPUs running, no pool).
    pub store_to_plain_restore_ratio: f64,
    /// Where a restore's time goes: the median of each part of the restores'
    /// breakdowns (check, spawn, state load, resume, agent sync, clock, ...), in ms.
    #[serde(default)]
    pub breakdown_median_ms: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: u64,
    pub kernel: String,
    pub qemu: String,
    pub accel: Accel,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub runs: u32,
    pub cold_runs: u32,
    pub guest: String,
    /// What "ready" meant: "agent", or "agent + <check>".
    pub ready: String,
    /// The warm pool restores were taken from, if any.
    pub pool: Option<PoolConfig>,
    pub memory_mib: u32,
    pub cold_boot_ms: Stats,
    pub pause_ms: Stats,
    pub restore_ms: Stats,
    pub ready_ms: Stats,
    pub cold_to_ready_ratio: f64,
    /// Every RAM size measured (the first is the one above).
    pub sizes: Vec<SizeReport>,
    /// Median restore_ms of the largest size / of the smallest (when several).
    pub restore_ratio_largest_to_smallest: Option<f64>,
    /// Median snapshot pause of the largest size / of the smallest (when several).
    #[serde(default)]
    pub pause_ratio_largest_to_smallest: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("runs must be at least 1")]
    Runs,
    #[error("cold boot failed")]
    Boot(#[from] boot::BootError),
    #[error("snapshot failed")]
    Snapshot(#[from] take::SnapshotError),
    #[error("restore failed")]
    Restore(#[from] restore::RestoreError),
    #[error("reset failed")]
    Reset(#[from] reset::ResetError),
    #[error("the store failed")]
    Store(#[from] crate::store::StoreError),
    #[error("could not create the benchmark's directory")]
    Io(#[from] std::io::Error),
    #[error("the warm pool did not fill: {0}")]
    Pool(String),
    #[error(transparent)]
    PoolConfig(#[from] crate::pool::PoolError),
}

/// Runs the benchmark. `progress` gets one line per step.
pub async fn run(
    home: &Home,
    qemu: &Qemu,
    cfg: &BenchConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<BenchReport, BenchError> {
    if cfg.runs == 0 || cfg.cold_runs == 0 || cfg.memory_mib.is_empty() {
        return Err(BenchError::Runs);
    }
    let bench_home = Home::new(home.root().join(format!("bench-{}", std::process::id())));
    bench_home.ensure()?;
    let result = run_in(&bench_home, qemu, cfg, progress).await;
    for name in crate::vm::list_names(&bench_home) {
        let _ = control::stop(&bench_home, &name).await;
    }
    let _ = std::fs::remove_dir_all(bench_home.root());
    let sizes = result?;
    let first = sizes[0].clone();
    let largest_to_smallest = |of: fn(&SizeReport) -> f64| {
        (sizes.len() > 1).then(|| {
            let largest = sizes
                .iter()
                .max_by_key(|s| s.memory_mib)
                .expect("non-empty");
            let smallest = sizes
                .iter()
                .min_by_key(|s| s.memory_mib)
                .expect("non-empty");
            round2(of(largest) / of(smallest))
        })
    };
    let restore_ratio = largest_to_smallest(|s| s.restore_ms.median);
    let pause_ratio = largest_to_smallest(|s| s.pause_ms.median);
    Ok(BenchReport {
        machine: machine(qemu, cfg.accel),
        runs: cfg.runs,
        cold_runs: cfg.cold_runs,
        guest: cfg.guest_name.clone(),
        ready: ready_label(&cfg.ready),
        pool: cfg.pool,
        memory_mib: first.memory_mib,
        cold_boot_ms: first.cold_boot_ms,
        pause_ms: first.pause_ms,
        restore_ms: first.restore_ms,
        ready_ms: first.ready_ms,
        cold_to_ready_ratio: first.cold_to_ready_ratio,
        sizes,
        restore_ratio_largest_to_smallest: restore_ratio,
        pause_ratio_largest_to_smallest: pause_ratio,
    })
}

async fn run_in(
    home: &Home,
    qemu: &Qemu,
    cfg: &BenchConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<SizeReport>, BenchError> {
    let mut sizes = Vec::new();
    for &mem in &cfg.memory_mib {
        let spec = MachineSpec {
            memory_mib: mem,
            ..cfg.spec.clone()
        };
        let name = |kind: &str, i: u32| -> VmName {
            format!("m{mem}-{kind}-{i}").parse().expect("valid name")
        };
        let tag =
            |i: u32| -> SnapshotTag { format!("m{mem}-snap-{i}").parse().expect("valid tag") };

        let mut cold = Vec::new();
        for i in 0..cfg.cold_runs {
            progress(&format!("{mem} MiB: cold boot {}/{}", i + 1, cfg.cold_runs));
            let req = BootRequest {
                name: name("cold", i),
                spec: spec.clone(),
                forwards: cfg.forwards.clone(),
                ready: cfg.ready.clone(),
                timeout: Duration::from_secs(300),
                vnc: crate::display::VncRequest::default(),
            };
            let r = boot::boot(home, qemu, &req).await?;
            cold.push(r.boot_ms);
            if i > 0 {
                let _ = control::stop(home, &req.name).await;
            }
        }
        let source = name("cold", 0);
        let mut pause = Vec::new();
        for i in 0..cfg.cold_runs {
            progress(&format!("{mem} MiB: snapshot {}/{}", i + 1, cfg.cold_runs));
            let r = take::take(
                home,
                &take::SnapshotRequest {
                    name: source.clone(),
                    tag: tag(i),
                    stop: false,
                },
            )
            .await?;
            pause.push(r.pause_ms);
            if i > 0 {
                let _ = catalog::remove(home, &tag(i), false);
            }
        }
        let _ = control::stop(home, &source).await;
        let (mut restore, mut ready, mut from_pool) = (Vec::new(), Vec::new(), 0);
        let mut breakdowns = Vec::new();
        // Restores that started a QEMU (none come from a pool): the baseline for the
        // restores from the store.
        let mut plain = Vec::new();
        let pool = match cfg.pool {
            Some(pc) => {
                let pool = Pool::new(
                    home.clone(),
                    qemu.clone(),
                    cfg.accel,
                    None,
                    Orphans::DieWithOwner,
                );
                pool.configure(&tag(0), pc)?;
                Some((pool, pc))
            }
            None => None,
        };
        for i in 0..cfg.runs {
            if let Some((pool, pc)) = &pool {
                // Every restore is taken from a full pool.
                progress(&format!(
                    "{mem} MiB: filling the pool ({} {:?})",
                    pc.size, pc.mode
                ));
                wait_pool_full(pool).await?;
            }
            progress(&format!("{mem} MiB: restore {}/{}", i + 1, cfg.runs));
            let req = RestoreRequest {
                tag: tag(0),
                count: 1,
                name: Some(name("clone", i)),
                accel: Some(cfg.accel),
                verify: false,
                timeout: Duration::from_secs(60),
                keep_vmgenid: false,
                ready: cfg.ready.clone(),
                exec_after: None,
                paused: false,
                vnc_password: None,
            };
            let r = restore::restore_from(home, qemu, &req, pool.as_ref().map(|(p, _)| p)).await?;
            restore.push(r[0].restore_ms);
            ready.push(r[0].ready_ms);
            breakdowns.push(serde_json::to_value(&r[0].breakdown).unwrap_or_default());
            if r[0].breakdown.source == "spawn" {
                plain.push(r[0].restore_ms);
            }
            from_pool += u32::from(r[0].breakdown.source == "pool");
            let _ = control::stop(home, &r[0].name).await;
        }
        // Reset against stop + restore, on one clone, the same number of times.
        let target = name("reset", 0);
        let restore_as = |name: VmName| RestoreRequest {
            tag: tag(0),
            count: 1,
            name: Some(name),
            accel: Some(cfg.accel),
            verify: false,
            timeout: Duration::from_secs(60),
            keep_vmgenid: false,
            ready: cfg.ready.clone(),
            exec_after: None,
            paused: false,
            vnc_password: None,
        };
        restore::restore(home, qemu, &restore_as(target.clone())).await?;
        let (mut reset_run, mut reset_ready, mut stop_restore) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut resets_from_pool = 0;
        for i in 0..cfg.runs {
            if let Some((pool, _)) = &pool {
                wait_pool_full(pool).await?;
            }
            progress(&format!("{mem} MiB: reset {}/{}", i + 1, cfg.runs));
            let req = ResetRequest {
                name: target.clone(),
                to: None,
                timeout: Duration::from_secs(60),
                accel: Some(cfg.accel),
            };
            let r = reset::reset(home, qemu, &req, pool.as_ref().map(|(p, _)| p)).await?;
            reset_run.push(r.clone.restore_ms);
            reset_ready.push(r.clone.ready_ms);
            resets_from_pool += u32::from(r.clone.breakdown.source == "pool");
        }
        for i in 0..cfg.runs {
            progress(&format!("{mem} MiB: stop + restore {}/{}", i + 1, cfg.runs));
            let t = std::time::Instant::now();
            let _ = control::stop(home, &target).await;
            restore::restore(home, qemu, &restore_as(target.clone())).await?;
            stop_restore.push(crate::ms(t.elapsed()));
        }
        let _ = control::stop(home, &target).await;
        if let Some((pool, _)) = pool {
            pool.shutdown().await;
        }
        // From the store: the snapshot's files go, then are written out of the store
        // once, then restored from like any directory.
        progress(&format!("{mem} MiB: evict and write out from the store"));
        crate::store::evict(home, &tag(0))?;
        let t = std::time::Instant::now();
        crate::store::ensure_materialized(home, &tag(0), &mut crate::store::NoProgress)?;
        let materialize_ms = crate::ms(t.elapsed());
        let (mut store_restore, mut store_ready) = (Vec::new(), Vec::new());
        for i in 0..cfg.runs {
            progress(&format!(
                "{mem} MiB: restore from the store {}/{}",
                i + 1,
                cfg.runs
            ));
            let r = restore::restore(home, qemu, &restore_as(name("stored", i))).await?;
            store_restore.push(r[0].restore_ms);
            store_ready.push(r[0].ready_ms);
            let _ = control::stop(home, &r[0].name).await;
        }
        let _ = catalog::remove(home, &tag(0), false);
        let cold_boot_ms = Stats::of(&cold);
        let ready_ms = Stats::of(&ready);
        let plain_restore = Stats::of(&plain);
        sizes.push(SizeReport {
            memory_mib: mem,
            cold_boot_ms,
            pause_ms: Stats::of(&pause),
            restore_ms: Stats::of(&restore),
            ready_ms,
            cold_to_ready_ratio: round2(cold_boot_ms.median / ready_ms.median),
            from_pool,
            reset_ms: Stats::of(&reset_run),
            reset_ready_ms: Stats::of(&reset_ready),
            stop_restore_ms: Stats::of(&stop_restore),
            stop_restore_to_reset_ratio: round2(
                Stats::of(&stop_restore).median / Stats::of(&reset_ready).median,
            ),
            resets_from_pool,
            materialize_ms,
            store_restore_ms: Stats::of(&store_restore),
            store_ready_ms: Stats::of(&store_ready),
            store_to_plain_restore_ratio: round2(
                Stats::of(&store_restore).median / plain_restore.median,
            ),
            breakdown_median_ms: breakdown_stats(&breakdowns)
                .into_iter()
                .map(|(k, s)| (k, s.median))
                .collect(),
        });
    }
    Ok(sizes)
}

/// Min / median / max of each `*_ms` part of restore breakdowns (as JSON objects).
pub(crate) fn breakdown_stats(
    breakdowns: &[serde_json::Value],
) -> std::collections::BTreeMap<String, Stats> {
    let mut parts = std::collections::BTreeMap::new();
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
pub(crate) fn ready_label(ready: &ReadySpec) -> String {
    match (ready.port, ready.redis_ping) {
        (Some(p), true) => format!("agent + redis PING on guest port {p}"),
        (Some(p), false) => format!("agent + guest port {p}"),
        _ => "agent".into(),
    }
}

/// Waits until every configured pool is full; fails if preparing clones keeps failing.
pub(crate) async fn wait_pool_full(pool: &std::sync::Arc<Pool>) -> Result<(), BenchError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let status = pool.status();
        if status.iter().all(|s| s.ready == s.size) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let why = status
                .iter()
                .find_map(|s| s.last_error.clone())
                .unwrap_or_else(|| "timed out".into());
            return Err(BenchError::Pool(why));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn machine(qemu: &Qemu, accel: Accel) -> Machine {
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

impl BenchReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let pool = match &self.pool {
            Some(p) => {
                format!(", restores from a warm pool of {} ({:?})", p.size, p.mode).to_lowercase()
            }
            None => String::new(),
        };
        let mut s = format!(
            "thaw bench: {} restores, {} cold boots, {} (ready = {}), {} on QEMU {}{pool}\nmachine: {} ({} cores, {} GiB), Linux {}\n\n",
            self.runs, self.cold_runs, self.guest, self.ready, m.accel, m.qemu, m.cpu, m.cores, m.memory_gib, m.kernel
        );
        s.push_str(&format!(
            "{:>7}  {:<32} {:>10} {:>10} {:>10}\n",
            "memory", "measure (ms)", "min", "median", "max"
        ));
        for size in &self.sizes {
            let rows = [
                ("cold boot → ready", size.cold_boot_ms),
                ("snapshot pause (VM keeps running)", size.pause_ms),
                ("restore → vCPUs running", size.restore_ms),
                ("restore → ready", size.ready_ms),
                ("reset → vCPUs running", size.reset_ms),
                ("reset → ready", size.reset_ready_ms),
                ("stop + restore → ready", size.stop_restore_ms),
                ("restore from the store → running", size.store_restore_ms),
                ("restore from the store → ready", size.store_ready_ms),
            ];
            for (i, (label, st)) in rows.iter().enumerate() {
                let mem = if i == 0 {
                    format!("{}M", size.memory_mib)
                } else {
                    String::new()
                };
                s.push_str(&format!(
                    "{mem:>7}  {label:<32} {:>10.1} {:>10.1} {:>10.1}\n",
                    st.min, st.median, st.max
                ));
            }
            s.push_str(&format!(
                "{:>7}  cold boot / ready (medians): {:.1}x; stop + restore / reset: {:.1}x\n",
                "", size.cold_to_ready_ratio, size.stop_restore_to_reset_ratio
            ));
            s.push_str(&format!(
                "{:>7}  written out from the store once in {:.0} ms; from the store / plain (restore → running): {:.2}x\n",
                "", size.materialize_ms, size.store_to_plain_restore_ratio
            ));
            if !size.breakdown_median_ms.is_empty() {
                let parts: Vec<String> = size
                    .breakdown_median_ms
                    .iter()
                    .map(|(k, v)| format!("{} {v:.1}", k.trim_end_matches("_ms")))
                    .collect();
                s.push_str(&format!(
                    "{:>7}  where a restore's time goes (medians, ms): {}\n",
                    "",
                    parts.join(", ")
                ));
            }
            if self.pool.is_some() {
                s.push_str(&format!(
                    "{:>7}  restores taken from the pool: {} of {}\n",
                    "", size.from_pool, self.runs
                ));
            }
        }
        if let Some(r) = self.restore_ratio_largest_to_smallest {
            s.push_str(&format!(
                "\nrestore → running, largest / smallest RAM (medians): {r:.2}x\n"
            ));
        }
        if let Some(r) = self.pause_ratio_largest_to_smallest {
            s.push_str(&format!(
                "snapshot pause, largest / smallest RAM (medians): {r:.2}x\n"
            ));
        }
        s
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
