//! `thaw bench --density N`: N clones of one snapshot running at once (no pool), every
//! one's guest agent answering, and what they cost the host: memory used (MemAvailable
//! before the first clone and after the last) and each clone's PSS
//! (`/proc/PID/smaps_rollup`: its private pages plus its share of the pages it shares
//! with the others, such as the snapshot's RAM image in the page cache).

use std::time::{Duration, Instant};

use serde::Serialize;

use thaw::agent::Agent;
use thaw::boot::{self, BootRequest};
use thaw::control;
use thaw::qemu::Qemu;
use thaw::ready::ReadySpec;
use thaw::restore::{self, RestoreRequest};
use thaw::snapshot::take;
use thaw::spec::{MachineSpec, PortForward};
use thaw::vm::{VmPaths, VmState};
use thaw::{Accel, Home, SnapshotTag, VmName};

use crate::sample::{loadavg, machine, round2, Machine, Stats};

#[derive(Debug, Clone)]
pub struct DensityConfig {
    pub clones: u32,
    pub spec: MachineSpec,
    pub forwards: Vec<PortForward>,
    pub ready: ReadySpec,
    pub guest_name: String,
    pub accel: Accel,
    /// Each clone's TCG translation buffer in MiB (`None`: QEMU's default, 1 GiB).
    pub tcg_tb_size_mib: Option<u32>,
}

/// The translation buffer `thaw bench --density` gives each clone unless told: with
/// QEMU's 1 GiB default a clone keeps every translation it ever made, and a hundred of
/// them outgrow this benchmark's budget (6 GiB on a 24 GiB host); 32 MiB holds what a
/// restored guest translates to answer its agent.
pub const DENSITY_TB_SIZE_MIB: u32 = 32;

#[derive(Debug, Clone, Serialize)]
pub struct DensityReport {
    pub machine: Machine,
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub guest: String,
    pub memory_mib: u32,
    pub clones: u32,
    /// Clones whose agent answered `guest-ping` once all of them ran.
    pub answered: u32,
    /// MemAvailable before the first clone minus after the last, in MiB.
    pub host_used_mib: f64,
    pub host_used_per_clone_mib: f64,
    /// Per clone, in MiB.
    pub pss_mib: Stats,
    pub pss_total_mib: f64,
    pub rss_mib: Stats,
    /// Anonymous memory per clone (what it alone costs: its copies of guest pages it
    /// wrote, QEMU's heap, the translation buffer), in MiB.
    pub anon_mib: Stats,
    /// Restore → ready of each clone, started `batch` at a time.
    pub ready_ms: Stats,
    pub batch: u32,
    /// The TCG translation buffer each QEMU was given (`-accel tcg,tb-size=`), if set.
    pub tb_size_mib: Option<u32>,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum DensityError {
    #[error("the number of clones must be at least 1")]
    Clones,
    #[error("could not create the benchmark's directory")]
    Io(#[from] std::io::Error),
    #[error("boot failed")]
    Boot(#[from] boot::BootError),
    #[error("snapshot failed")]
    Snapshot(#[from] take::SnapshotError),
    #[error("restoring clone {done} of {total} failed")]
    Restore {
        done: u32,
        total: u32,
        #[source]
        source: restore::RestoreError,
    },
}

/// Clones started at once: as many as there are cores, so the host stays busy without
/// the clones' agents timing out behind each other.
fn batch() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (PSS, RSS, anonymous) of a process in KiB.
fn pss_rss_kib(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"), field("Anonymous:"))
}

pub async fn run(
    home: &Home,
    qemu: &Qemu,
    cfg: &DensityConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<DensityReport, DensityError> {
    if cfg.clones == 0 {
        return Err(DensityError::Clones);
    }
    let started = Instant::now();
    let load_before = loadavg();
    let bench_home = Home::new(home.root().join(format!("bench-{}", std::process::id())));
    bench_home.ensure()?;
    let qemu = &Qemu {
        tcg_tb_size_mib: cfg.tcg_tb_size_mib,
        ..qemu.clone()
    };
    let result = run_in(&bench_home, qemu, cfg, progress).await;
    progress("stopping the clones");
    for name in thaw::vm::list_names(&bench_home) {
        let _ = control::stop(&bench_home, &name).await;
    }
    // A snapshot served lazily keeps the home's lazy server (and its mount) up.
    thaw::lazy::stop_server(&bench_home);
    let _ = std::fs::remove_dir_all(bench_home.root());
    let mut report = result?;
    report.machine = machine(qemu, cfg.accel);
    report.load_before = load_before;
    report.seconds = round2(started.elapsed().as_secs_f64());
    Ok(report)
}

async fn run_in(
    home: &Home,
    qemu: &Qemu,
    cfg: &DensityConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<DensityReport, DensityError> {
    let source: VmName = "density-source".parse().expect("valid name");
    let tag: SnapshotTag = "density".parse().expect("valid tag");
    progress("booting the source VM");
    boot::boot(
        home,
        qemu,
        &BootRequest {
            lifetime: Default::default(),
            bind: thaw::ports::DEFAULT_BIND,
            name: source.clone(),
            spec: cfg.spec.clone(),
            forwards: cfg.forwards.clone(),
            ready: cfg.ready.clone(),
            timeout: Duration::from_secs(300),
            vnc: thaw::display::VncRequest::default(),
        },
    )
    .await?;
    take::take(
        home,
        &take::SnapshotRequest {
            name: source,
            tag: tag.clone(),
            stop: true,
            pin: true,
        },
    )
    .await?;
    // Let the ended source's memory return before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let available_before = meminfo_kib("MemAvailable:");
    let batch = batch();
    let mut ready = Vec::new();
    let mut started = 0;
    while started < cfg.clones {
        let count = batch.min(cfg.clones - started);
        progress(&format!(
            "clones {}-{} of {}",
            started + 1,
            started + count,
            cfg.clones
        ));
        let req = RestoreRequest {
            lifetime: Default::default(),
            from: None,
            bind: thaw::ports::DEFAULT_BIND,
            tag: tag.clone(),
            count,
            name: Some(format!("d{started}").parse().expect("valid name")),
            accel: Some(cfg.accel),
            verify: false,
            timeout: Duration::from_secs(300),
            keep_vmgenid: false,
            ready: cfg.ready.clone(),
            exec_after: None,
            paused: false,
            vnc_password: None,
        };
        let reports =
            restore::restore(home, qemu, &req)
                .await
                .map_err(|source| DensityError::Restore {
                    done: started,
                    total: cfg.clones,
                    source,
                })?;
        ready.extend(reports.iter().map(|r| r.ready_ms));
        started += count;
    }
    progress("checking that every clone's agent answers");
    let names: Vec<VmName> = thaw::vm::list_names(home);
    let mut answered = 0;
    let (mut pss, mut rss, mut anon) = (Vec::new(), Vec::new(), Vec::new());
    let mut tb_size_mib = None;
    for name in &names {
        let Ok(state) = VmState::load(home, name) else {
            continue;
        };
        let paths = VmPaths::new(home, name);
        let ok = async {
            let mut a = Agent::connect(&paths.agent(), Duration::from_secs(60)).await?;
            a.ping().await
        };
        if tokio::time::timeout(Duration::from_secs(60), ok)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            answered += 1;
        }
        let (p, r, an) = pss_rss_kib(state.pid);
        pss.push(p as f64 / 1024.0);
        rss.push(r as f64 / 1024.0);
        anon.push(an as f64 / 1024.0);
        if tb_size_mib.is_none() {
            tb_size_mib = tb_size_of(state.pid);
        }
    }
    let available_after = meminfo_kib("MemAvailable:");
    let used_mib = (available_before as f64 - available_after as f64) / 1024.0;
    let n = names.len().max(1) as f64;
    Ok(DensityReport {
        machine: machine(qemu, cfg.accel),
        load_before: [0.0; 3],
        load_after: loadavg(),
        guest: cfg.guest_name.clone(),
        memory_mib: cfg.spec.memory_mib,
        clones: names.len() as u32,
        answered,
        host_used_mib: round2(used_mib),
        host_used_per_clone_mib: round2(used_mib / n),
        pss_mib: round_stats(Stats::of(&pss)),
        pss_total_mib: round2(pss.iter().sum()),
        rss_mib: round_stats(Stats::of(&rss)),
        anon_mib: round_stats(Stats::of(&anon)),
        ready_ms: Stats::of(&ready),
        batch,
        tb_size_mib,
        seconds: 0.0,
    })
}

fn round_stats(s: Stats) -> Stats {
    Stats {
        min: round2(s.min),
        median: round2(s.median),
        max: round2(s.max),
    }
}

/// The `tb-size=` a QEMU was started with, from its command line.
fn tb_size_of(pid: u32) -> Option<u32> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline
        .split(|&b| b == 0)
        .filter_map(|a| std::str::from_utf8(a).ok())
        .flat_map(|a| a.split(','))
        .find_map(|kv| kv.strip_prefix("tb-size=")?.parse().ok())
}

impl DensityReport {
    pub fn table(&self) -> String {
        let m = &self.machine;
        format!(
            "thaw bench --density: {clones} clones of the {guest} ({mem} MiB), {accel} on QEMU {qemu}{tb}\n\
             machine: {cpu} ({cores} cores, {gib} GiB), Linux {kernel}; load average {:.2} {:.2} {:.2} at the start, {:.2} {:.2} {:.2} at the end\n\n\
             clones running at once: {clones}, agents answering: {answered}\n\
             host memory used (MemAvailable before - after): {used:.0} MiB, {per:.1} MiB per clone\n\
             PSS per clone, MiB (min / median / max): {:.1} / {:.1} / {:.1}; sum {pss:.0} MiB\n\
             RSS per clone, MiB (min / median / max): {:.1} / {:.1} / {:.1}\n\
             anonymous memory per clone, MiB (min / median / max): {:.1} / {:.1} / {:.1}\n\
             restore → ready, ms ({batch} at a time; min / median / max): {:.0} / {:.0} / {:.0}\n\
             took {secs:.0} s\n",
            self.load_before[0], self.load_before[1], self.load_before[2],
            self.load_after[0], self.load_after[1], self.load_after[2],
            self.pss_mib.min, self.pss_mib.median, self.pss_mib.max,
            self.rss_mib.min, self.rss_mib.median, self.rss_mib.max,
            self.anon_mib.min, self.anon_mib.median, self.anon_mib.max,
            self.ready_ms.min, self.ready_ms.median, self.ready_ms.max,
            clones = self.clones,
            guest = self.guest,
            mem = self.memory_mib,
            accel = m.accel,
            qemu = m.qemu,
            tb = self.tb_size_mib.map(|t| format!(", tb-size {t} MiB")).unwrap_or_default(),
            cpu = m.cpu,
            cores = m.cores,
            gib = m.memory_gib,
            kernel = m.kernel,
            answered = self.answered,
            used = self.host_used_mib,
            per = self.host_used_per_clone_mib,
            pss = self.pss_total_mib,
            batch = self.batch,
            secs = self.seconds,
        )
    }
}
