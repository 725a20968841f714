//! `thaw bench`'s arguments (the same as before the benchmark left the CLI), the
//! benchmark each asks for, and running it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use thaw::qemu::Qemu;
use thaw::{Accel, Home, MachineSpec};
use thaw_bench::compare::{self, CompareConfig, CompareReport, ExternalMethod};
use thaw_bench::density::{self, DensityConfig, DensityReport};
use thaw_bench::restores::{self, BenchConfig, BenchReport};

use crate::{chart, emit, progress};
use thaw::profile::{profile_guest, Profile, REDIS_PORT};

/// Measure cold boot against restore (of the default guest, or --profile), both to the
/// same readiness; --pool takes the restores from a warm pool.
#[derive(Parser)]
#[command(name = "thaw-bench", args_override_self = true)]
pub struct BenchArgs {
    /// Print exactly one JSON document on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Runs of each measurement.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Cold boots and snapshots to measure (default: --runs), e.g. fewer when measuring
    /// many pooled restores.
    #[arg(long)]
    cold_runs: Option<u32>,
    /// Guest memory in MiB (default 256; 512 for debian); give it twice (e.g. --memory
    /// 256 --memory 2048) to compare restore times across RAM sizes in one run.
    #[arg(long)]
    memory: Vec<u32>,
    /// The guest: `default`, or `debian`, `debian-bios`, `debian-uefi`, `debian-vnc`
    /// (ready = redis answers PING).
    #[arg(long, default_value = "default")]
    profile: Profile,
    /// Take the restores from a warm pool of this many clones.
    #[arg(long, value_name = "K")]
    pool: Option<u32>,
    /// The warm pool's mode: paused (state loaded, vCPUs not resumed) or running
    /// (resumed, agent connected).
    #[arg(long, default_value = "running", requires = "pool")]
    pool_mode: thaw::pool::PoolMode,
    /// Running pools: warm up each clone's forwarded ports before it counts as ready
    /// (with --pool, and for the running pools of --compare).
    #[arg(long)]
    warm_ports: bool,
    /// Compare thaw with the methods people use today on the same guest, in one run:
    /// cold boot, QEMU savevm / -loadvm, migration to gzip and zstd files restored with
    /// -incoming exec, libvirt's virsh save / restore, and thaw without a pool, from a
    /// paused and a running pool (library and daemon).
    #[arg(long, conflicts_with_all = ["pool", "density"])]
    compare: bool,
    /// With --compare: only these methods (comma-separated): cold-boot, savevm,
    /// exec-gzip, exec-zstd, libvirt, thaw-bare (the mechanism alone: private RAM map,
    /// device state, agent ping), thaw, thaw-x3 (3 clones by one restore, the last one's
    /// times), thaw-pool-x3 (the same from a running pool of 3), thaw-pool-paused,
    /// thaw-pool-running,
    /// thawd-pool-running.
    #[arg(long, value_delimiter = ',', requires = "compare")]
    methods: Vec<String>,
    /// With --compare: also draw the charts, restore → ready per method into FILE
    /// (.svg or .png) and restore → running against RAM size into FILE-ram.EXT.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Draw --chart from this saved `bench --compare --json` report instead of
    /// measuring.
    #[arg(long, value_name = "REPORT.json", requires = "chart")]
    chart_from: Option<PathBuf>,
    /// Start N clones of one snapshot at once (no pool), check every agent answers and
    /// report the host memory they use.
    #[arg(long, value_name = "N", conflicts_with = "pool")]
    density: Option<u32>,
    /// With --density: each clone's TCG translation buffer in MiB (0: QEMU's default,
    /// 1 GiB). Overrides THAW_TCG_TB_SIZE.
    #[arg(long, value_name = "MIB", requires = "density",
          default_value_t = density::DENSITY_TB_SIZE_MIB)]
    tb_size: u32,
    /// Lazy restore (served from the store on first touch) against plain restores of
    /// the same snapshot: the write-out it saves, the disk a snapshot uses, and with
    /// --remote, restores from the bucket on a cold host, with and without the working set.
    #[arg(long, conflicts_with_all = ["pool", "density", "compare"])]
    lazy: bool,
    /// With --lazy: the bucket (s3://bucket/prefix; endpoint and keys from the
    /// environment) the snapshot is pushed to and restored from.
    #[arg(long, value_name = "URL", requires = "lazy")]
    remote: Option<String>,
}

/// Runs the benchmark the arguments ask for and prints its report.
pub async fn run(args: BenchArgs) -> Result<()> {
    let json = args.json;
    let home = Home::from_env();
    if args.chart_from.is_some() || args.chart.is_some() && !args.compare {
        return chart_from(&args);
    }
    let qemu = Qemu::find(&thaw::guest::cache_dir())?;
    let cfg = bench_config(&args)?;
    if args.compare {
        let daemon = thaw_bench::daemon::DaemonRestores {
            warm_ports: args.warm_ports,
            ready: cfg.ready.clone(),
        };
        let ccfg = CompareConfig {
            runs: cfg.runs,
            cold_runs: cfg.cold_runs,
            memory_mib: cfg.memory_mib,
            spec: cfg.spec,
            forwards: cfg.forwards,
            ready: cfg.ready,
            guest_name: cfg.guest_name,
            accel: cfg.accel,
            pool_size: 1,
            warm_ports: args.warm_ports,
            only: args.methods.clone(),
        };
        let external: [&dyn ExternalMethod; 1] = [&daemon];
        let report = compare::run(&home, &qemu, &ccfg, &external, &mut progress(json)).await?;
        // The report first: a chart that cannot be drawn must not lose the figures.
        emit(json, &report, CompareReport::table)?;
        if let Some(path) = &args.chart {
            for written in chart::draw(&report, path)? {
                progress(json)(&format!("wrote {}", written.display()));
            }
        }
    } else if args.lazy {
        let report = thaw_bench::lazy::run(
            &home,
            &qemu,
            &cfg,
            args.remote.as_deref(),
            &mut progress(json),
        )
        .await?;
        emit(json, &report, thaw_bench::lazy::LazyReport::table)?;
    } else if let Some(clones) = args.density {
        let dcfg = DensityConfig {
            clones,
            spec: MachineSpec {
                memory_mib: cfg.memory_mib[0],
                ..cfg.spec
            },
            forwards: cfg.forwards,
            ready: cfg.ready,
            guest_name: cfg.guest_name,
            accel: cfg.accel,
            tcg_tb_size_mib: (args.tb_size > 0).then_some(args.tb_size),
        };
        let report = density::run(&home, &qemu, &dcfg, &mut progress(json)).await?;
        emit(json, &report, DensityReport::table)?;
    } else {
        let report = restores::run(&home, &qemu, &cfg, &mut progress(json)).await?;
        emit(json, &report, BenchReport::table)?;
    }
    Ok(())
}

/// `--chart-from REPORT.json --chart FILE`: the charts of a saved report, and its table.
fn chart_from(args: &BenchArgs) -> Result<()> {
    let json = args.json;
    let (Some(from), Some(path)) = (&args.chart_from, &args.chart) else {
        anyhow::bail!("--chart needs --compare (or --chart-from REPORT.json)");
    };
    let text = std::fs::read_to_string(from)
        .with_context(|| format!("could not read {}", from.display()))?;
    let report: CompareReport = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a bench --compare --json report", from.display()))?;
    for written in chart::draw(&report, path)? {
        progress(json)(&format!("wrote {}", written.display()));
    }
    // The saved report's table, as the run printed it.
    emit(json, &report, CompareReport::table)
}

/// The benchmark's machine and readiness for the arguments (building the profile's
/// guest if needed).
fn bench_config(args: &BenchArgs) -> Result<BenchConfig> {
    let g = profile_guest(args.profile, &mut progress(args.json))?;
    let debian = args.profile.has_redis();
    let memory = if args.memory.is_empty() {
        vec![args.profile.memory_mib()]
    } else {
        args.memory.clone()
    };
    let redis = thaw::spec::PortForward {
        host: 0,
        guest: REDIS_PORT,
    };
    Ok(BenchConfig {
        runs: args.runs,
        cold_runs: args.cold_runs.unwrap_or(args.runs),
        memory_mib: memory,
        spec: MachineSpec {
            machine: "pc".into(),
            memory_mib: 0,
            cpus: 1,
            kernel: g.kernel,
            initrd: g.initrd,
            cmdline: g.cmdline,
            accel: Accel::detect(),
            firmware: thaw::firmware::resolve(g.firmware)?,
            display: g.display.then(thaw::display::DisplaySpec::default),
            disks: g.disks,
            net: Some(thaw::spec::NetSpec::default()),
            clock_port: true,
        },
        forwards: if debian { vec![redis] } else { Vec::new() },
        ready: thaw::ready::ReadySpec {
            port: debian.then_some(REDIS_PORT),
            redis_ping: debian,
            serial: None,
        },
        guest_name: args.profile.name().into(),
        accel: Accel::detect(),
        pool: args.pool.map(|size| thaw::pool::PoolConfig {
            size,
            mode: args.pool_mode,
            warm_ports: args.warm_ports,
            bind: None,
        }),
    })
}
