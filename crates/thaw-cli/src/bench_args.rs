//! `thaw bench`: its arguments, its configuration and how it runs, kept together (the
//! benchmark is moving into a crate of its own).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use thaw::profile::{Profile, REDIS_PORT};
use thaw::qemu::Qemu;
use thaw::{Accel, Home, MachineSpec};

use crate::print::emit;
use crate::{chart, progress};

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Runs of each measurement.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Cold boots and snapshots to measure (default: --runs), e.g. fewer when measuring
    /// many pooled restores.
    #[arg(long)]
    pub cold_runs: Option<u32>,
    /// Guest memory in MiB (default 256; 512 for debian); give it twice (e.g. --memory
    /// 256 --memory 2048) to compare restore times across RAM sizes in one run.
    #[arg(long)]
    pub memory: Vec<u32>,
    /// The guest: `default`, or `debian`, `debian-bios`, `debian-uefi`, `debian-vnc`
    /// (ready = redis answers PING).
    #[arg(long, default_value = "default")]
    pub profile: Profile,
    /// Take the restores from a warm pool of this many clones.
    #[arg(long, value_name = "K")]
    pub pool: Option<u32>,
    /// The warm pool's mode: paused (state loaded, vCPUs not resumed) or running
    /// (resumed, agent connected).
    #[arg(long, default_value = "running", requires = "pool")]
    pub pool_mode: thaw::pool::PoolMode,
    /// Running pools: warm up each clone's forwarded ports before it counts as ready
    /// (with --pool, and for the running pools of --compare).
    #[arg(long)]
    pub warm_ports: bool,
    /// Compare thaw with the methods people use today on the same guest, in one run:
    /// cold boot, QEMU savevm / -loadvm, migration to gzip and zstd files restored with
    /// -incoming exec, libvirt's virsh save / restore, and thaw without a pool, from a
    /// paused and a running pool (library and daemon).
    #[arg(long, conflicts_with_all = ["pool", "density"])]
    pub compare: bool,
    /// With --compare: only these methods (comma-separated): cold-boot, savevm,
    /// exec-gzip, exec-zstd, libvirt, thaw-bare (the mechanism alone: private RAM map,
    /// device state, agent ping), thaw, thaw-pool-paused, thaw-pool-running,
    /// thawd-pool-running.
    #[arg(long, value_delimiter = ',', requires = "compare")]
    pub methods: Vec<String>,
    /// With --compare: also draw the charts, restore → ready per method into FILE
    /// (.svg or .png) and restore → running against RAM size into FILE-ram.EXT.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Draw --chart from this saved `bench --compare --json` report instead of
    /// measuring.
    #[arg(long, value_name = "REPORT.json", requires = "chart")]
    pub chart_from: Option<PathBuf>,
    /// Start N clones of one snapshot at once (no pool), check every agent answers and
    /// report the host memory they use.
    #[arg(long, value_name = "N", conflicts_with = "pool")]
    pub density: Option<u32>,
    /// With --density: each clone's TCG translation buffer in MiB (0: QEMU's default,
    /// 1 GiB). Overrides THAW_TCG_TB_SIZE.
    #[arg(long, value_name = "MIB", requires = "density",
          default_value_t = thaw::bench::density::DENSITY_TB_SIZE_MIB)]
    pub tb_size: u32,
}

/// The profile's guest, built if missing (progress on stderr).
fn profile_guest(profile: Profile, json: bool) -> Result<thaw::profile::ProfileGuest> {
    Ok(thaw::profile::profile_guest(profile, &mut progress(json))?)
}

/// The benchmark's machine and readiness for `thaw bench`'s arguments (building the
/// profile's guest if needed); also whether it is the debian profile.
fn bench_config(args: &BenchArgs, json: bool) -> Result<(thaw::bench::BenchConfig, bool)> {
    let g = profile_guest(args.profile, json)?;
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
    let cfg = thaw::bench::BenchConfig {
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
        }),
    };
    Ok((cfg, debian))
}

/// Runs `thaw bench` with `args`.
pub(crate) async fn run(args: BenchArgs, home: &Home, json: bool) -> Result<()> {
    let home = home.clone();
    if args.chart_from.is_some() || args.chart.is_some() && !args.compare {
        let (Some(from), Some(path)) = (&args.chart_from, &args.chart) else {
            anyhow::bail!("--chart needs --compare (or --chart-from REPORT.json)");
        };
        let text = std::fs::read_to_string(from)
            .with_context(|| format!("could not read {}", from.display()))?;
        let report: thaw::bench::compare::CompareReport = serde_json::from_str(&text)
            .with_context(|| {
                format!("{} is not a bench --compare --json report", from.display())
            })?;
        for written in chart::draw(&report, path)? {
            progress(json)(&format!("wrote {}", written.display()));
        }
        // The saved report's table, as the run printed it.
        emit(json, &report, thaw::bench::compare::CompareReport::table)?;
    } else if args.compare {
        let qemu = Qemu::find(&thaw::guest::cache_dir())?;
        let (cfg, _) = bench_config(&args, json)?;
        let daemon = thaw_daemon::bench::DaemonRestores {
            warm_ports: args.warm_ports,
            ready: cfg.ready.clone(),
        };
        let ccfg = thaw::bench::compare::CompareConfig {
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
        let external: [&dyn thaw::bench::compare::ExternalMethod; 1] = [&daemon];
        let report =
            thaw::bench::compare::run(&home, &qemu, &ccfg, &external, &mut progress(json)).await?;
        // The report first: a chart that cannot be drawn must not lose the figures.
        emit(json, &report, thaw::bench::compare::CompareReport::table)?;
        if let Some(path) = &args.chart {
            for written in chart::draw(&report, path)? {
                progress(json)(&format!("wrote {}", written.display()));
            }
        }
    } else if args.density.is_some() {
        let qemu = Qemu::find(&thaw::guest::cache_dir())?;
        let (cfg, _) = bench_config(&args, json)?;
        let dcfg = thaw::bench::density::DensityConfig {
            clones: args.density.unwrap_or(0),
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
        let report = thaw::bench::density::run(&home, &qemu, &dcfg, &mut progress(json)).await?;
        emit(json, &report, thaw::bench::density::DensityReport::table)?;
    } else {
        let qemu = Qemu::find(&thaw::guest::cache_dir())?;
        let (cfg, _) = bench_config(&args, json)?;
        let report = thaw::bench::run(&home, &qemu, &cfg, &mut progress(json)).await?;
        emit(json, &report, thaw::bench::BenchReport::table)?;
    }
    Ok(())
}
