//! `thaw bench`: cold boot against restore of a guest (the default one, or a profile),
//! to the same readiness (the guest agent answers, plus the profile's own check, e.g.
//! Redis answering PING), measured in one run on one machine.
//!
//! For each RAM size: `runs` cold boots, `runs` snapshots of a running VM (pause
//! time), and `runs` restores of one snapshot (request → vCPUs running, and request →
//! agent answers). Everything runs in a private home under `$THAW_HOME/bench-<pid>`
//! that is removed afterwards.
//!
//! [`crate::compare`] measures the same guest restored by the methods people use today and
//! by thaw; [`crate::density`] runs many clones at once and reports the memory they cost.

use std::time::Duration;

use serde::Serialize;

use thaw::boot::{self, BootRequest};
use thaw::control;
use thaw::pool::{Orphans, Pool, PoolConfig};
use thaw::qemu::Qemu;
use thaw::ready::ReadySpec;
use thaw::reset::{self, ResetRequest};
use thaw::restore::{self, RestoreRequest};
use thaw::snapshot::{catalog, take};
use thaw::spec::{MachineSpec, PortForward};
use thaw::{Accel, Home, SnapshotTag, VmName};

use crate::sample::{
    breakdown_stats, machine, ready_label, round2, wait_pool_full, Machine, PoolFillError, Stats,
};

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
    #[error("the remote: {0}")]
    Remote(String),
    #[error("cold boot failed")]
    Boot(#[from] boot::BootError),
    #[error("snapshot failed")]
    Snapshot(#[from] take::SnapshotError),
    #[error("restore failed")]
    Restore(#[from] restore::RestoreError),
    #[error("reset failed")]
    Reset(#[from] reset::ResetError),
    #[error("the store failed")]
    Store(#[from] thaw::store::StoreError),
    #[error("could not create the benchmark's directory")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Pool(#[from] PoolFillError),
    #[error(transparent)]
    PoolConfig(#[from] thaw::pool::PoolError),
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
    for name in thaw::vm::list_names(&bench_home) {
        let _ = control::stop(&bench_home, &name).await;
    }
    // A snapshot served lazily keeps the home's lazy server (and its mount) up.
    thaw::lazy::stop_server(&bench_home);
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
        let size = Size {
            home,
            qemu,
            cfg,
            mem,
        };
        sizes.push(size.measure(progress).await?);
    }
    Ok(sizes)
}

/// One RAM size's measurements, in the benchmark's home.
struct Size<'a> {
    home: &'a Home,
    qemu: &'a Qemu,
    cfg: &'a BenchConfig,
    mem: u32,
}

/// Restores of one snapshot: request → running, → ready, and where the time went.
#[derive(Default)]
struct Restores {
    running: Vec<f64>,
    ready: Vec<f64>,
    from_pool: u32,
    breakdowns: Vec<serde_json::Value>,
    /// Restores that started a QEMU (none come from a pool): the baseline for the
    /// restores from the store.
    plain: Vec<f64>,
}

/// `thaw reset` of one clone against stopping it and restoring it under its name.
#[derive(Default)]
struct Resets {
    running: Vec<f64>,
    ready: Vec<f64>,
    from_pool: u32,
    stop_restore: Vec<f64>,
}

impl Size<'_> {
    fn name(&self, kind: &str, i: u32) -> VmName {
        format!("m{}-{kind}-{i}", self.mem)
            .parse()
            .expect("valid name")
    }

    fn tag(&self, i: u32) -> SnapshotTag {
        format!("m{}-snap-{i}", self.mem)
            .parse()
            .expect("valid tag")
    }

    fn restore_as(&self, name: VmName) -> RestoreRequest {
        RestoreRequest {
            lifetime: Default::default(),
            from: None,
            bind: thaw::ports::DEFAULT_BIND,
            tag: self.tag(0),
            count: 1,
            name: Some(name),
            accel: Some(self.cfg.accel),
            verify: false,
            timeout: Duration::from_secs(60),
            keep_vmgenid: false,
            ready: self.cfg.ready.clone(),
            exec_after: None,
            paused: false,
            vnc_password: None,
        }
    }

    async fn measure(&self, progress: &mut dyn FnMut(&str)) -> Result<SizeReport, BenchError> {
        let (home, cfg) = (self.home, self.cfg);
        let cold = self.cold_boots(progress).await?;
        let pause = self.snapshots(progress).await?;
        let pool = match cfg.pool {
            Some(pc) => {
                let pool = Pool::new(
                    home.clone(),
                    self.qemu.clone(),
                    cfg.accel,
                    None,
                    Orphans::DieWithOwner,
                );
                pool.configure(&self.tag(0), pc)?;
                Some((pool, pc))
            }
            None => None,
        };
        let restores = self.restores(pool.as_ref(), progress).await;
        let resets = match &restores {
            Ok(_) => self.resets(pool.as_ref().map(|(p, _)| p), progress).await,
            Err(_) => Ok(Resets::default()),
        };
        if let Some((pool, _)) = pool {
            pool.shutdown().await;
        }
        let (restores, resets) = (restores?, resets?);
        let (materialize_ms, stored) = self.restores_from_the_store(progress).await?;
        let _ = catalog::remove(home, &self.tag(0), false);
        let cold_boot_ms = Stats::of(&cold);
        let ready_ms = Stats::of(&restores.ready);
        let reset_ready_ms = Stats::of(&resets.ready);
        let stop_restore_ms = Stats::of(&resets.stop_restore);
        let store_restore_ms = Stats::of(&stored.running);
        Ok(SizeReport {
            memory_mib: self.mem,
            cold_boot_ms,
            pause_ms: Stats::of(&pause),
            restore_ms: Stats::of(&restores.running),
            ready_ms,
            cold_to_ready_ratio: round2(cold_boot_ms.median / ready_ms.median),
            from_pool: restores.from_pool,
            reset_ms: Stats::of(&resets.running),
            reset_ready_ms,
            stop_restore_ms,
            stop_restore_to_reset_ratio: round2(stop_restore_ms.median / reset_ready_ms.median),
            resets_from_pool: resets.from_pool,
            materialize_ms,
            store_restore_ms,
            store_ready_ms: Stats::of(&stored.ready),
            store_to_plain_restore_ratio: round2(
                store_restore_ms.median / Stats::of(&restores.plain).median,
            ),
            breakdown_median_ms: breakdown_stats(&restores.breakdowns)
                .into_iter()
                .map(|(k, s)| (k, s.median))
                .collect(),
        })
    }

    /// Cold boots; the first VM keeps running (the snapshots' source).
    async fn cold_boots(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<f64>, BenchError> {
        let (cfg, mem) = (self.cfg, self.mem);
        let spec = MachineSpec {
            memory_mib: mem,
            ..cfg.spec.clone()
        };
        let mut cold = Vec::new();
        for i in 0..cfg.cold_runs {
            progress(&format!("{mem} MiB: cold boot {}/{}", i + 1, cfg.cold_runs));
            let req = BootRequest {
                lifetime: Default::default(),
                bind: thaw::ports::DEFAULT_BIND,
                name: self.name("cold", i),
                spec: spec.clone(),
                forwards: cfg.forwards.clone(),
                ready: cfg.ready.clone(),
                timeout: Duration::from_secs(300),
                vnc: thaw::display::VncRequest::default(),
            };
            let r = boot::boot(self.home, self.qemu, &req).await?;
            cold.push(r.boot_ms);
            if i > 0 {
                let _ = control::stop(self.home, &req.name).await;
            }
        }
        Ok(cold)
    }

    /// Snapshots of the running source (their pause times); the first is kept, the
    /// source ends.
    async fn snapshots(&self, progress: &mut dyn FnMut(&str)) -> Result<Vec<f64>, BenchError> {
        let (home, cfg, mem) = (self.home, self.cfg, self.mem);
        let source = self.name("cold", 0);
        let mut pause = Vec::new();
        for i in 0..cfg.cold_runs {
            progress(&format!("{mem} MiB: snapshot {}/{}", i + 1, cfg.cold_runs));
            let r = take::take(
                home,
                &take::SnapshotRequest {
                    name: source.clone(),
                    tag: self.tag(i),
                    stop: false,
                    // The plain mechanism (`--lazy` measures the lazily served).
                    pin: true,
                },
            )
            .await?;
            pause.push(r.pause_ms);
            if i > 0 {
                let _ = catalog::remove(home, &self.tag(i), false);
            }
        }
        let _ = control::stop(home, &source).await;
        Ok(pause)
    }

    /// Restores of the first snapshot, each from a full pool when there is one.
    async fn restores(
        &self,
        pool: Option<&(std::sync::Arc<Pool>, PoolConfig)>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Restores, BenchError> {
        let (home, cfg, mem) = (self.home, self.cfg, self.mem);
        let mut out = Restores::default();
        for i in 0..cfg.runs {
            if let Some((pool, pc)) = pool {
                // Every restore is taken from a full pool.
                progress(&format!(
                    "{mem} MiB: filling the pool ({} {:?})",
                    pc.size, pc.mode
                ));
                wait_pool_full(pool).await?;
            }
            progress(&format!("{mem} MiB: restore {}/{}", i + 1, cfg.runs));
            let req = self.restore_as(self.name("clone", i));
            let r = restore::restore_from(home, self.qemu, &req, pool.map(|(p, _)| p)).await?;
            out.running.push(r[0].restore_ms);
            out.ready.push(r[0].ready_ms);
            out.breakdowns
                .push(serde_json::to_value(&r[0].breakdown).unwrap_or_default());
            if r[0].breakdown.source == "spawn" {
                out.plain.push(r[0].restore_ms);
            }
            out.from_pool += u32::from(r[0].breakdown.source == "pool");
            let _ = control::stop(home, &r[0].name).await;
        }
        Ok(out)
    }

    /// Reset against stop + restore, on one clone, the same number of times.
    async fn resets(
        &self,
        pool: Option<&std::sync::Arc<Pool>>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Resets, BenchError> {
        let (home, qemu, cfg, mem) = (self.home, self.qemu, self.cfg, self.mem);
        let target = self.name("reset", 0);
        restore::restore(home, qemu, &self.restore_as(target.clone())).await?;
        let mut out = Resets::default();
        for i in 0..cfg.runs {
            if let Some(pool) = pool {
                wait_pool_full(pool).await?;
            }
            progress(&format!("{mem} MiB: reset {}/{}", i + 1, cfg.runs));
            let req = ResetRequest {
                name: target.clone(),
                to: None,
                timeout: Duration::from_secs(60),
                accel: Some(cfg.accel),
            };
            let r = reset::reset(home, qemu, &req, pool).await?;
            out.running.push(r.clone.restore_ms);
            out.ready.push(r.clone.ready_ms);
            out.from_pool += u32::from(r.clone.breakdown.source == "pool");
        }
        for i in 0..cfg.runs {
            progress(&format!("{mem} MiB: stop + restore {}/{}", i + 1, cfg.runs));
            let t = std::time::Instant::now();
            let _ = control::stop(home, &target).await;
            restore::restore(home, qemu, &self.restore_as(target.clone())).await?;
            out.stop_restore.push(thaw::ms(t.elapsed()));
        }
        let _ = control::stop(home, &target).await;
        Ok(out)
    }

    /// From the store: the snapshot's files go, then are written out of the store
    /// once (timed), then restored from like any directory.
    async fn restores_from_the_store(
        &self,
        progress: &mut dyn FnMut(&str),
    ) -> Result<(f64, Restores), BenchError> {
        let (home, cfg, mem) = (self.home, self.cfg, self.mem);
        progress(&format!("{mem} MiB: evict and write out from the store"));
        thaw::store::evict(home, &self.tag(0))?;
        let t = std::time::Instant::now();
        thaw::store::ensure_materialized(home, &self.tag(0), &mut thaw::store::NoProgress)?;
        let materialize_ms = thaw::ms(t.elapsed());
        let mut out = Restores::default();
        for i in 0..cfg.runs {
            progress(&format!(
                "{mem} MiB: restore from the store {}/{}",
                i + 1,
                cfg.runs
            ));
            let req = self.restore_as(self.name("stored", i));
            let r = restore::restore(home, self.qemu, &req).await?;
            out.running.push(r[0].restore_ms);
            out.ready.push(r[0].ready_ms);
            let _ = control::stop(home, &r[0].name).await;
        }
        Ok((materialize_ms, out))
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
