//! `thaw bench --compare`: the same guest restored by each method people use today and
//! by thaw, in one run on one machine, to the same readiness (the guest agent answers
//! `guest-ping`, plus the profile's check).
//!
//! Methods, per RAM size: a cold boot (the first size only); QEMU's internal snapshot
//! (`savevm` / `-loadvm` on qcow2); migration to a gzip and to a zstd file restored with
//! `-incoming exec:`; libvirt's `virsh save` / `virsh restore`; the bare mechanism thaw
//! is built on (private RAM map, device state, agent ping: no check, identity or
//! clock); thaw without a pool,
//! from a paused and from a running warm pool; and whatever [`ExternalMethod`]s the
//! caller adds (the CLI adds restores through a real `thawd` socket). Each reports the
//! save time, restore → vCPUs running, restore → ready (min / median / max over the
//! runs) and its ratios to thaw.
//!
//! Everything runs in a private home under `$THAW_HOME/bench-<pid>`, removed
//! afterwards with every process the methods started, also when one fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use thaw::boot::{self, BootRequest};
use thaw::control;
use thaw::pool::{Orphans, Pool, PoolConfig, PoolMode};
use thaw::qemu::Qemu;
use thaw::ready::ReadySpec;
use thaw::restore::{self, RestoreRequest};
use thaw::snapshot::{catalog, take};
use thaw::spec::{MachineSpec, PortForward};
use thaw::{Accel, Home, SnapshotTag, VmName};

pub use crate::method::{CompareError, ExternalMethod, ExternalRun, MethodReport, Sample};
use crate::sample::{loadavg, machine, ready_label, round2, wait_pool_full, Machine, Stats};
use crate::{bare, libvirt, peer};

#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Saves and restores measured per method.
    pub runs: u32,
    /// Cold boots measured (first size only).
    pub cold_runs: u32,
    /// RAM sizes; the first is the headline (and the only one with cold boots).
    pub memory_mib: Vec<u32>,
    /// The machine; its memory is replaced by each of `memory_mib`.
    pub spec: MachineSpec,
    /// Port forwards of the booted VMs (the profile's guest ports).
    pub forwards: Vec<PortForward>,
    pub ready: ReadySpec,
    pub guest_name: String,
    pub accel: Accel,
    /// Size of the warm pools (paused and running).
    pub pool_size: u32,
    /// Warm up the forwarded ports of running pools' clones.
    pub warm_ports: bool,
    /// Only these methods (ids, see [`METHODS`]); empty: all of them.
    pub only: Vec<String>,
}

/// Every method's id, in the table's order.
pub const METHODS: &[&str] = &[
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

impl CompareConfig {
    fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == id)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SizeComparison {
    pub memory_mib: u32,
    pub methods: Vec<MethodReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareReport {
    pub machine: Machine,
    /// /proc/loadavg (1, 5, 15 min) when the run started and when it ended: the machine
    /// may be shared.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
    pub runs: u32,
    pub cold_runs: u32,
    pub guest: String,
    pub ready: String,
    pub pool_size: u32,
    /// The headline size and its methods (the first of `sizes`).
    pub memory_mib: u32,
    pub methods: Vec<MethodReport>,
    pub sizes: Vec<SizeComparison>,
    /// Methods that did not run (with why); empty when every one ran.
    pub failed: Vec<String>,
    pub seconds: f64,
}

/// The programs the peer methods need, checked before anything starts.
fn check_tools() -> Result<(), CompareError> {
    for (tool, what) in [
        ("qemu-img", "qemu-img (qemu-utils)"),
        ("gzip", "gzip"),
        ("zstd", "zstd"),
        ("virsh", "virsh (libvirt-clients)"),
        ("libvirtd", "libvirtd (libvirt-daemon-system)"),
    ] {
        if which(tool).is_none() {
            return Err(CompareError::Missing(what));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs the comparison. `progress` gets one line per step.
pub async fn run(
    home: &Home,
    qemu: &Qemu,
    cfg: &CompareConfig,
    external: &[&dyn ExternalMethod],
    progress: &mut dyn FnMut(&str),
) -> Result<CompareReport, CompareError> {
    if cfg.runs == 0 || cfg.cold_runs == 0 || cfg.memory_mib.is_empty() {
        return Err(CompareError::Runs);
    }
    if let Some(bad) = cfg.only.iter().find(|o| !METHODS.contains(&o.as_str())) {
        return Err(CompareError::UnknownMethod(bad.clone()));
    }
    if cfg.wants("savevm")
        || cfg.wants("exec-gzip")
        || cfg.wants("exec-zstd")
        || cfg.wants("libvirt")
    {
        check_tools()?;
    }
    let started = Instant::now();
    let load_before = loadavg();
    let bench_home = Home::new(home.root().join(format!("bench-{}", std::process::id())));
    bench_home
        .ensure()
        .map_err(|e| CompareError::io("create", bench_home.root(), e))?;
    let result = async {
        let daemons = match cfg.wants("libvirt") {
            true => Some(libvirt::ensure_daemon(progress).await?),
            false => None,
        };
        let mut sizes = Vec::new();
        for (i, &mem) in cfg.memory_mib.iter().enumerate() {
            sizes.push(run_size(&bench_home, qemu, cfg, mem, i == 0, external, progress).await?);
        }
        drop(daemons);
        Ok::<_, CompareError>(sizes)
    }
    .await;
    for name in thaw::vm::list_names(&bench_home) {
        let _ = control::stop(&bench_home, &name).await;
    }
    // A snapshot served lazily keeps the home's lazy server (and its mount) up.
    thaw::lazy::stop_server(&bench_home);
    let _ = std::fs::remove_dir_all(bench_home.root());
    let sizes = result?;
    let failed = sizes
        .iter()
        .flat_map(|s| s.methods.iter())
        .filter_map(|m| {
            m.error
                .as_ref()
                .map(|e| format!("{} at {} MiB: {e}", m.method, m.memory_mib))
        })
        .collect();
    Ok(CompareReport {
        machine: machine(qemu, cfg.accel),
        load_before,
        load_after: loadavg(),
        runs: cfg.runs,
        cold_runs: cfg.cold_runs,
        guest: cfg.guest_name.clone(),
        ready: ready_label(&cfg.ready),
        pool_size: cfg.pool_size,
        memory_mib: sizes[0].memory_mib,
        methods: sizes[0].methods.clone(),
        sizes,
        failed,
        seconds: round2(started.elapsed().as_secs_f64()),
    })
}

async fn run_size(
    home: &Home,
    qemu: &Qemu,
    cfg: &CompareConfig,
    mem: u32,
    headline: bool,
    external: &[&dyn ExternalMethod],
    progress: &mut dyn FnMut(&str),
) -> Result<SizeComparison, CompareError> {
    let spec = MachineSpec {
        memory_mib: mem,
        ..cfg.spec.clone()
    };
    let mut spec_with_ports = spec.clone();
    if let Some(net) = &mut spec_with_ports.net {
        net.guest_ports = cfg.forwards.iter().map(|f| f.guest).collect();
    }
    let mut methods = Vec::new();
    if METHODS[5..].iter().any(|m| cfg.wants(m)) {
        methods.extend(thaw_methods(home, qemu, cfg, &spec, external, progress).await?);
    }
    if headline && cfg.wants("cold-boot") {
        methods.push(cold_boot(home, qemu, cfg, &spec, progress).await?);
    }
    if ["savevm", "exec-gzip", "exec-zstd"]
        .iter()
        .any(|m| cfg.wants(m))
    {
        let dir = home.root().join(format!("peer-{mem}"));
        let peers =
            peer::methods(qemu, cfg.runs, &cfg.ready, &spec_with_ports, &dir, progress).await;
        let _ = std::fs::remove_dir_all(&dir);
        methods.extend(peers);
    }
    if cfg.wants("libvirt") {
        let dir = home.root().join(format!("libvirt-{mem}"));
        let lv = libvirt::method(qemu, cfg.runs, &cfg.ready, &spec_with_ports, &dir, progress)
            .await
            .unwrap_or_else(|e| MethodReport::failed("libvirt", libvirt::LABEL, mem, &e));
        let _ = std::fs::remove_dir_all(&dir);
        methods.push(lv);
    }
    methods.retain(|m| cfg.wants(&m.method));
    ratios(&mut methods);
    // The order of the table: the peers, then thaw from slowest to fastest.
    let order = METHODS;
    methods.sort_by_key(|m| {
        order
            .iter()
            .position(|o| *o == m.method)
            .unwrap_or(order.len())
    });
    Ok(SizeComparison {
        memory_mib: mem,
        methods,
    })
}

fn ratios(methods: &mut [MethodReport]) {
    let median_of = |id: &str, f: fn(&MethodReport) -> Option<f64>| {
        methods
            .iter()
            .find(|m| m.method == id && m.error.is_none())
            .and_then(f)
    };
    let thaw_ready = median_of("thaw", |m| Some(m.ready_ms.median));
    let thaw_running = median_of("thaw", |m| m.running_ms.map(|s| s.median));
    let pool_ready = median_of("thaw-pool-running", |m| Some(m.ready_ms.median));
    for m in methods.iter_mut() {
        if m.error.is_some() {
            continue;
        }
        m.ready_vs_thaw = thaw_ready.map(|t| ratio(m.ready_ms.median / t));
        m.ready_vs_pool = pool_ready.map(|t| ratio(m.ready_ms.median / t));
        m.running_vs_thaw = match (m.running_ms, thaw_running) {
            (Some(r), Some(t)) => Some(ratio(r.median / t)),
            _ => None,
        };
    }
}

/// thaw through the library: snapshot of a running VM, restores without a pool, from a
/// paused and from a running pool; then the external methods on the same snapshot.
async fn thaw_methods(
    home: &Home,
    qemu: &Qemu,
    cfg: &CompareConfig,
    spec: &MachineSpec,
    external: &[&dyn ExternalMethod],
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<MethodReport>, CompareError> {
    let mem = spec.memory_mib;
    let source: VmName = format!("m{mem}-source").parse().expect("valid name");
    let tag = |i: u32| -> SnapshotTag { format!("m{mem}-snap-{i}").parse().expect("valid tag") };
    progress(&format!("{mem} MiB: thaw: booting the source VM"));
    boot::boot(
        home,
        qemu,
        &BootRequest {
            lifetime: Default::default(),
            bind: thaw::ports::DEFAULT_BIND,
            name: source.clone(),
            spec: spec.clone(),
            forwards: cfg.forwards.clone(),
            ready: cfg.ready.clone(),
            timeout: Duration::from_secs(300),
            vnc: thaw::display::VncRequest::default(),
        },
    )
    .await?;
    let mut saves = Vec::new();
    let mut save_bytes = 0;
    let snapshots = if cfg.wants("thaw") { cfg.runs } else { 1 };
    for i in 0..snapshots {
        progress(&format!("{mem} MiB: thaw: snapshot {}/{}", i + 1, cfg.runs));
        let t = Instant::now();
        let r = take::take(
            home,
            &take::SnapshotRequest {
                name: source.clone(),
                tag: tag(i),
                stop: false,
                // The plain mechanism (`--lazy` measures the lazily served).
                pin: true,
            },
        )
        .await?;
        saves.push(thaw::ms(t.elapsed()));
        save_bytes = r.state_bytes + allocated(&home.snapshot_dir(&tag(i)));
        if i > 0 {
            let _ = catalog::remove(home, &tag(i), false);
        }
    }
    let _ = control::stop(home, &source).await;
    let tag0 = tag(0);
    let mut out = Vec::new();
    let mut samples = Vec::new();
    let mut breakdowns = Vec::new();
    for i in 0..cfg.runs * u32::from(cfg.wants("thaw")) {
        progress(&format!("{mem} MiB: thaw: restore {}/{}", i + 1, cfg.runs));
        let name: VmName = format!("m{mem}-clone-{i}").parse().expect("valid name");
        let r = restore::restore(home, qemu, &restore_req(cfg, &tag0, name)).await?;
        samples.push(Sample {
            running_ms: Some(r[0].restore_ms),
            ready_ms: r[0].ready_ms,
        });
        breakdowns.push(serde_json::to_value(&r[0].breakdown).unwrap_or_default());
        let _ = control::stop(home, &r[0].name).await;
    }
    let mut thaw = MethodReport::new("thaw", "thaw, no pool", mem).with_samples(&saves, &samples);
    thaw.save_bytes = Some(save_bytes);
    if !breakdowns.is_empty() {
        thaw.detail =
            Some(serde_json::json!({ "breakdown": crate::sample::breakdown_stats(&breakdowns) }));
    }
    out.push(thaw);
    if cfg.wants("thaw-bare") {
        out.push(bare::method(home, qemu, cfg.runs, &cfg.ready, &tag0, mem, progress).await?);
    }
    if cfg.wants("thaw-x3") {
        out.push(at_once(home, qemu, cfg, (&tag0, mem), false, progress).await?);
    }
    if cfg.wants("thaw-pool-x3") {
        out.push(at_once(home, qemu, cfg, (&tag0, mem), true, progress).await?);
    }
    for mode in [PoolMode::Paused, PoolMode::Running] {
        out.extend(pooled(home, qemu, cfg, (&tag0, mem), mode, progress).await?);
    }
    for ext in external.iter().filter(|_| cfg.wants("thawd-pool-running")) {
        match ext.run(home, &tag0, mem, cfg.runs, progress).await {
            Ok(m) => out.push(m),
            Err(e) => {
                let mut m = MethodReport::new("thawd-pool-running", "thawd, running pool", mem);
                m.error = Some(e);
                out.push(m);
            }
        }
        for name in thaw::vm::list_names(home) {
            let _ = control::stop(home, &name).await;
        }
    }
    let _ = catalog::remove(home, &tag0, false);
    Ok(out)
}

/// Clones restored by one request at once, as a CI job that wants a few test devices
/// starts them: running and ready are the request's last clone's.
const AT_ONCE: u32 = 3;

/// [`AT_ONCE`] clones by one request, without a pool or from a full running pool of
/// as many.
async fn at_once(
    home: &Home,
    qemu: &Qemu,
    cfg: &CompareConfig,
    (tag0, mem): (&SnapshotTag, u32),
    pooled: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<MethodReport, CompareError> {
    let (id, label) = match pooled {
        false => (
            "thaw-x3",
            format!("thaw, {AT_ONCE} clones at once (last ready)"),
        ),
        true => (
            "thaw-pool-x3",
            format!("thaw, {AT_ONCE} at once, running pool of {AT_ONCE}"),
        ),
    };
    let pool = pooled.then(|| {
        Pool::new(
            home.clone(),
            qemu.clone(),
            cfg.accel,
            None,
            Orphans::DieWithOwner,
        )
    });
    if let Some(pool) = &pool {
        let pc = PoolConfig {
            size: AT_ONCE,
            mode: PoolMode::Running,
            warm_ports: cfg.warm_ports,
            bind: None,
        };
        pool.configure(tag0, pc)?;
    }
    let mut samples = Vec::new();
    let mut from_pool = 0;
    let result = async {
        for i in 0..cfg.runs {
            progress(&format!(
                "{mem} MiB: {label}: restore {}/{}",
                i + 1,
                cfg.runs
            ));
            if let Some(pool) = &pool {
                wait_pool_full(pool).await?;
            }
            let name: VmName = format!("m{mem}-{id}-{i}").parse().expect("valid name");
            let req = RestoreRequest {
                count: AT_ONCE,
                ..restore_req(cfg, tag0, name)
            };
            let clones = restore::restore_from(home, qemu, &req, pool.as_ref()).await?;
            let last =
                |f: fn(&thaw::clone::CloneReport) -> f64| clones.iter().map(f).fold(0.0, f64::max);
            samples.push(Sample {
                running_ms: Some(last(|c| c.restore_ms)),
                ready_ms: last(|c| c.ready_ms),
            });
            from_pool += clones
                .iter()
                .filter(|c| c.breakdown.source == "pool")
                .count();
            for c in &clones {
                let _ = control::stop(home, &c.name).await;
            }
        }
        Ok::<_, CompareError>(())
    }
    .await;
    if let Some(pool) = &pool {
        pool.shutdown().await;
    }
    result?;
    let mut m = MethodReport::new(id, &label, mem).with_samples(&[], &samples);
    if pooled {
        m.detail = Some(serde_json::json!({ "from_pool": from_pool, "pool_size": AT_ONCE }));
    }
    Ok(m)
}

/// Restores of `tag0` from a warm pool in `mode`, each from a full pool (`None` when
/// the method was not asked for).
async fn pooled(
    home: &Home,
    qemu: &Qemu,
    cfg: &CompareConfig,
    (tag0, mem): (&SnapshotTag, u32),
    mode: PoolMode,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<MethodReport>, CompareError> {
    let (id, label) = match mode {
        PoolMode::Paused => ("thaw-pool-paused", "thaw, paused pool"),
        PoolMode::Running => ("thaw-pool-running", "thaw, running pool"),
    };
    if !cfg.wants(id) {
        return Ok(None);
    }
    let pool = Pool::new(
        home.clone(),
        qemu.clone(),
        cfg.accel,
        None,
        Orphans::DieWithOwner,
    );
    let pc = PoolConfig {
        size: cfg.pool_size,
        mode,
        warm_ports: cfg.warm_ports,
        bind: None,
    };
    pool.configure(tag0, pc)?;
    let mut samples = Vec::new();
    let mut from_pool = 0;
    let result = async {
        for i in 0..cfg.runs {
            progress(&format!(
                "{mem} MiB: {label}: restore {}/{}",
                i + 1,
                cfg.runs
            ));
            wait_pool_full(&pool).await?;
            let name: VmName = format!("m{mem}-{id}-{i}").parse().expect("valid name");
            let r = restore::restore_from(home, qemu, &restore_req(cfg, tag0, name), Some(&pool))
                .await?;
            from_pool += u32::from(r[0].breakdown.source == "pool");
            samples.push(Sample {
                running_ms: Some(r[0].restore_ms),
                ready_ms: r[0].ready_ms,
            });
            let _ = control::stop(home, &r[0].name).await;
        }
        Ok::<_, CompareError>(())
    }
    .await;
    pool.shutdown().await;
    result?;
    let mut m = MethodReport::new(id, label, mem).with_samples(&[], &samples);
    m.detail = Some(serde_json::json!({ "from_pool": from_pool, "pool_size": cfg.pool_size }));
    Ok(Some(m))
}

/// One restore of `tag` as the thaw methods make it.
fn restore_req(cfg: &CompareConfig, tag: &SnapshotTag, name: VmName) -> RestoreRequest {
    RestoreRequest {
        lifetime: Default::default(),
        from: None,
        bind: thaw::ports::DEFAULT_BIND,
        tag: tag.clone(),
        count: 1,
        name: Some(name),
        accel: Some(cfg.accel),
        verify: false,
        timeout: Duration::from_secs(120),
        keep_vmgenid: false,
        ready: cfg.ready.clone(),
        exec_after: None,
        paused: false,
        vnc_password: None,
    }
}

/// Bytes allocated on disk under `dir` (a sparse RAM image counts what it holds).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata() {
            if m.is_dir() {
                total += allocated(&e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

async fn cold_boot(
    home: &Home,
    qemu: &Qemu,
    cfg: &CompareConfig,
    spec: &MachineSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<MethodReport, CompareError> {
    let mem = spec.memory_mib;
    let mut samples = Vec::new();
    for i in 0..cfg.cold_runs {
        progress(&format!("{mem} MiB: cold boot {}/{}", i + 1, cfg.cold_runs));
        let name: VmName = format!("m{mem}-cold-{i}").parse().expect("valid name");
        let r = boot::boot(
            home,
            qemu,
            &BootRequest {
                lifetime: Default::default(),
                bind: thaw::ports::DEFAULT_BIND,
                name: name.clone(),
                spec: spec.clone(),
                forwards: cfg.forwards.clone(),
                ready: cfg.ready.clone(),
                timeout: Duration::from_secs(300),
                vnc: thaw::display::VncRequest::default(),
            },
        )
        .await?;
        samples.push(Sample {
            running_ms: None,
            ready_ms: r.boot_ms,
        });
        let _ = control::stop(home, &name).await;
    }
    Ok(MethodReport::new("cold-boot", "cold boot", mem).with_samples(&[], &samples))
}

impl CompareReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "thaw bench --compare: {} runs, {} cold boots, {} (ready = {}), {} on QEMU {}\n\
             machine: {} ({} cores, {} GiB), Linux {}; load average {:.2} {:.2} {:.2} at the start, {:.2} {:.2} {:.2} at the end\n",
            self.runs, self.cold_runs, self.guest, self.ready, m.accel, m.qemu, m.cpu, m.cores,
            m.memory_gib, m.kernel, self.load_before[0], self.load_before[1], self.load_before[2],
            self.load_after[0], self.load_after[1], self.load_after[2],
        );
        for size in &self.sizes {
            s.push_str(&format!(
                "\n{} MiB, ms (min / median / max)\n{:<34} {:>21} {:>23} {:>23} {:>8} {:>8}\n",
                size.memory_mib,
                "method",
                "save",
                "restore → running",
                "restore → ready",
                "÷ thaw",
                "÷ pool"
            ));
            for me in &size.methods {
                if let Some(e) = &me.error {
                    s.push_str(&format!("{:<34} FAILED: {e}\n", me.label));
                    continue;
                }
                s.push_str(&format!(
                    "{:<34} {:>21} {:>23} {:>23} {:>8} {:>8}\n",
                    me.label,
                    fmt_stats(me.save_ms),
                    fmt_stats(me.running_ms),
                    fmt_stats(Some(me.ready_ms)),
                    fmt_ratio(me.ready_vs_thaw),
                    fmt_ratio(me.ready_vs_pool),
                ));
            }
        }
        s.push_str(
            "\n÷ thaw, ÷ pool: median restore → ready over thaw's without a pool, and over thaw's from a running pool.\n",
        );
        for me in &self.methods {
            let Some(b) = me.detail.as_ref().and_then(|d| d.get("breakdown")) else {
                continue;
            };
            let parts: Vec<String> = b
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let median = v["median"].as_f64()?;
                    Some(format!("{} {median:.2}", k.trim_end_matches("_ms")))
                })
                .collect();
            s.push_str(&format!(
                "{} at {} MiB, where the time goes (medians, ms): {}\n",
                me.label,
                me.memory_mib,
                parts.join(", ")
            ));
        }
        if !self.failed.is_empty() {
            s.push_str(&format!("\nnot measured: {}\n", self.failed.join("; ")));
        }
        s
    }
}

fn fmt_stats(s: Option<Stats>) -> String {
    match s {
        None => "—".into(),
        Some(s) => format!(
            "{} / {} / {}",
            fmt_ms(s.min),
            fmt_ms(s.median),
            fmt_ms(s.max)
        ),
    }
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A ratio to three significant digits (whole numbers from 100 up): a pooled
/// restore is hundreds of times faster than a spawned one, and two decimals made its
/// ratio 0.
fn ratio(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(decimals_for_three_digits(x) as i32);
    (x * scale).round() / scale
}

/// Decimal places that leave three significant digits of `x` (none from 100 up).
fn decimals_for_three_digits(x: f64) -> usize {
    (2 - x.abs().log10().floor() as i32).max(0) as usize
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "—".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}x"),
        Some(r) if r >= 0.1 || r == 0.0 => format!("{r:.2}x"),
        Some(r) => {
            let digits = decimals_for_three_digits(r);
            format!("{r:.digits$}x")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ratios_keep_three_significant_digits() {
        assert_eq!(ratio(2.4 / 500.0), 0.0048);
        assert_eq!(ratio(1.234567), 1.23);
        assert_eq!(ratio(293.4), 293.0);
        assert_eq!(fmt_ratio(Some(0.0048)), "0.00480x");
        assert_eq!(fmt_ratio(Some(0.84)), "0.84x");
        assert_eq!(fmt_ratio(Some(138.0)), "138x");
    }

    #[test]
    fn ratios_are_to_thaw_and_to_the_running_pool() {
        let s = |ready: f64| Sample {
            running_ms: Some(ready / 2.0),
            ready_ms: ready,
        };
        let mut v = vec![
            MethodReport::new("savevm", "a", 256).with_samples(&[1.0], &[s(400.0)]),
            MethodReport::new("thaw", "b", 256).with_samples(&[1.0], &[s(200.0)]),
            MethodReport::new("thaw-pool-running", "c", 256).with_samples(&[], &[s(4.0)]),
        ];
        ratios(&mut v);
        assert_eq!(v[0].ready_vs_thaw, Some(2.0));
        assert_eq!(v[0].ready_vs_pool, Some(100.0));
        assert_eq!(v[0].running_vs_thaw, Some(2.0));
        assert_eq!(v[2].ready_vs_thaw, Some(0.02));
    }

    #[test]
    fn table_cells_keep_three_significant_figures() {
        assert_eq!(fmt_ms(1234.4), "1234");
        assert_eq!(fmt_ms(12.34), "12.3");
        assert_eq!(fmt_ms(1.234), "1.23");
        assert_eq!(fmt_ratio(Some(123.4)), "123x");
        assert_eq!(fmt_ratio(None), "—");
    }
}
