//! `thaw bench --lazy`: restores of a snapshot served lazily (see `thaw::lazy`) against
//! plain restores of the same snapshot, in one run: from this host's store (the write-out
//! a lazy restore saves, the disk a snapshot uses), and with `--remote`, from a bucket on
//! a cold host (an empty home each time), with and without the recorded working set.

use std::time::{Duration, Instant};

use serde::Serialize;
use thaw::boot::{self, BootRequest};
use thaw::control;
use thaw::qemu::Qemu;
use thaw::restore::{self, RestoreRequest};
use thaw::snapshot::take;
use thaw::spec::MachineSpec;
use thaw::store::{self, WriteOut};
use thaw::{Home, SnapshotTag, VmName};

use crate::restores::{BenchConfig, BenchError};
use crate::sample::{machine, round2, Machine, Stats};

#[derive(Debug, Clone, Serialize)]
pub struct LazyReport {
    pub machine: Machine,
    pub runs: u32,
    pub guest: String,
    pub remote: Option<String>,
    pub sizes: Vec<LazySize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LazySize {
    pub memory_mib: u32,
    /// Restores of a snapshot as taken (its plain directory; a second snapshot of
    /// the same VM), → ready, each followed by a lazy one.
    pub plain_ready_ms: Stats,
    /// Writing the snapshot out of the store (what a lazy restore does not do).
    pub write_out_ms: f64,
    /// Making it restorable lazily instead: its manifest and links.
    pub link_ms: f64,
    /// The first lazy restore from the store (nothing of it in the page cache yet).
    pub lazy_first_ready_ms: f64,
    /// Lazy restores from the store after the first, → ready (alternating with the
    /// plain ones).
    pub lazy_ready_ms: Stats,
    /// Median lazy / median plain, → ready.
    pub lazy_to_plain_ready_ratio: f64,
    /// The snapshot's chunks as stored, each once.
    pub stored_bytes: u64,
    /// What its directory takes besides (manifest and links), as taken: kept once.
    pub dir_bytes: u64,
    /// (stored + directory) / stored.
    pub disk_to_store_ratio: f64,
    /// What the directory of the pinned snapshot of the same VM takes (its plain RAM
    /// image, besides the store's copy).
    pub pinned_dir_bytes: u64,
    /// (stored + pinned directory) / stored.
    pub pinned_disk_to_store_ratio: f64,
    pub remote: Option<RemoteFigures>,
}

/// Restores from the bucket on a cold host (an empty home and store each run).
#[derive(Debug, Clone, Serialize)]
pub struct RemoteFigures {
    pub no_working_set: ColdRestores,
    pub working_set: ColdRestores,
    /// Plain local restores, one after each cold one with the working set, → ready.
    pub local_ready_ms: Stats,
    /// Median with the working set / median of those local restores, → ready.
    pub cold_to_local_ready_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdRestores {
    pub ready_ms: Stats,
    /// Bytes fetched before ready (median) and that as a share of the stored bytes.
    pub fetched_bytes: u64,
    pub fetched_share: f64,
}

pub async fn run(
    home: &Home,
    qemu: &Qemu,
    cfg: &BenchConfig,
    remote: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<LazyReport, BenchError> {
    if cfg.runs == 0 || cfg.memory_mib.is_empty() {
        return Err(BenchError::Runs);
    }
    let bench = Home::new(home.root().join(format!("bench-{}", std::process::id())));
    bench.ensure()?;
    let mut sizes = Vec::new();
    let mut result = Ok(());
    for &mem in &cfg.memory_mib {
        match one_size(&bench, qemu, cfg, mem, remote, progress).await {
            Ok(s) => sizes.push(s),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    for name in thaw::vm::list_names(&bench) {
        let _ = control::stop(&bench, &name).await;
    }
    thaw::lazy::stop_server(&bench);
    thaw::lazy_restore::set_prefetch(true);
    let _ = std::fs::remove_dir_all(bench.root());
    result?;
    Ok(LazyReport {
        machine: machine(qemu, cfg.accel),
        runs: cfg.runs,
        guest: cfg.guest_name.clone(),
        remote: remote.map(str::to_owned),
        sizes,
    })
}

fn req(tag: &SnapshotTag, name: &str, cfg: &BenchConfig, from: Option<&str>) -> RestoreRequest {
    RestoreRequest {
        lifetime: Default::default(),
        from: from.map(str::to_owned),
        bind: thaw::ports::DEFAULT_BIND,
        tag: tag.clone(),
        count: 1,
        name: Some(name.parse().expect("a valid name")),
        accel: Some(cfg.accel),
        verify: false,
        timeout: Duration::from_secs(300),
        keep_vmgenid: false,
        ready: cfg.ready.clone(),
        exec_after: None,
        paused: false,
        vnc_password: None,
    }
}

/// One restore of `tag` in `home` (stopped after): its report.
async fn restore_once(
    home: &Home,
    qemu: &Qemu,
    cfg: &BenchConfig,
    tag: &SnapshotTag,
    name: &str,
) -> Result<thaw::clone::CloneReport, BenchError> {
    let mut r = restore::restore(home, qemu, &req(tag, name, cfg, None)).await?;
    let _ = control::stop(home, &r[0].name).await;
    Ok(r.swap_remove(0))
}

async fn one_size(
    home: &Home,
    qemu: &Qemu,
    cfg: &BenchConfig,
    mem: u32,
    remote: Option<&str>,
    progress: &mut dyn FnMut(&str),
) -> Result<LazySize, BenchError> {
    let tag: SnapshotTag = format!("lazy-{mem}").parse().expect("a valid tag");
    let source: VmName = format!("lazy-src-{mem}").parse().expect("a valid name");
    progress(&format!("{mem} MiB: cold boot and snapshot"));
    boot::boot(
        home,
        qemu,
        &BootRequest {
            lifetime: Default::default(),
            bind: thaw::ports::DEFAULT_BIND,
            name: source.clone(),
            spec: MachineSpec {
                memory_mib: mem,
                ..cfg.spec.clone()
            },
            forwards: cfg.forwards.clone(),
            ready: cfg.ready.clone(),
            timeout: Duration::from_secs(300),
            vnc: thaw::display::VncRequest::default(),
        },
    )
    .await?;
    // Two snapshots of the one VM, a moment apart: `plain` is pinned (its RAM image
    // stays a plain file), `tag` is kept once, in the store, as every snapshot is by
    // default, and served from there. Their restores alternate, so that the machine's
    // noise (it is shared) falls on both alike.
    let plain_tag: SnapshotTag = format!("plain-{mem}").parse().expect("a valid tag");
    for t in [&plain_tag, &tag] {
        take::take(
            home,
            &take::SnapshotRequest {
                name: source.clone(),
                tag: t.clone(),
                stop: false,
                pin: t == &plain_tag,
            },
        )
        .await?;
    }
    let _ = control::stop(home, &source).await;
    // Disk use as taken: `tag` kept once, `plain_tag` pinned.
    let dir_bytes = own_bytes(&home.snapshot_dir(&tag));
    let pinned_dir_bytes = own_bytes(&home.snapshot_dir(&plain_tag));
    let mut say = |s: &str| progress(&format!("{mem} MiB: {s}"));
    // The write-out a lazy restore saves, and what it does instead.
    let record = store::evict(home, &tag)?;
    let t = Instant::now();
    store::write_out(
        home,
        &tag,
        &record,
        &WriteOut::Plain,
        &mut store::NoProgress,
    )?;
    let write_out_ms = thaw::ms(t.elapsed());
    store::evict(home, &tag)?;
    let t = Instant::now();
    store::write_out(
        home,
        &tag,
        &record,
        &WriteOut::Lazy { remote: None },
        &mut store::NoProgress,
    )?;
    let link_ms = thaw::ms(t.elapsed());
    // The first lazy restore records the working set (reported on its own).
    say("first lazy restore");
    let r = restore_once(home, qemu, cfg, &tag, "lazy-first").await?;
    let (lazy_first_ready_ms, stored_bytes) = (r.ready_ms, r.stored_bytes.unwrap_or(0));
    let (mut plain, mut lazy) = (Vec::new(), Vec::new());
    for i in 0..cfg.runs {
        say(&format!("plain and lazy {}/{}", i + 1, cfg.runs));
        plain.push(
            restore_once(home, qemu, cfg, &plain_tag, &format!("plain-{i}"))
                .await?
                .ready_ms,
        );
        lazy.push(
            restore_once(home, qemu, cfg, &tag, &format!("lazy-{i}"))
                .await?
                .ready_ms,
        );
    }
    let remote = match remote {
        Some(url) => Some(from_remote(home, qemu, cfg, &tag, &plain_tag, url, &mut say).await?),
        None => None,
    };
    Ok(LazySize {
        memory_mib: mem,
        plain_ready_ms: Stats::of(&plain),
        write_out_ms,
        link_ms,
        lazy_first_ready_ms,
        lazy_ready_ms: Stats::of(&lazy),
        lazy_to_plain_ready_ratio: round2(Stats::of(&lazy).median / Stats::of(&plain).median),
        stored_bytes,
        dir_bytes,
        disk_to_store_ratio: round2((stored_bytes + dir_bytes) as f64 / stored_bytes.max(1) as f64),
        pinned_dir_bytes,
        pinned_disk_to_store_ratio: round2(
            (stored_bytes + pinned_dir_bytes) as f64 / stored_bytes.max(1) as f64,
        ),
        remote,
    })
}

async fn from_remote(
    home: &Home,
    qemu: &Qemu,
    cfg: &BenchConfig,
    tag: &SnapshotTag,
    plain_tag: &SnapshotTag,
    url: &str,
    say: &mut dyn FnMut(&str),
) -> Result<RemoteFigures, BenchError> {
    say(&format!("push to {url}"));
    let r = store::Remote::from_env(url).map_err(|e| BenchError::Remote(e.to_string()))?;
    store::push(home, tag, &r, &mut store::NoProgress)
        .await
        .map_err(|e| BenchError::Remote(thaw::one_line(&e)))?;
    let mut out = Vec::new();
    let mut local = Vec::new();
    for ws in [false, true] {
        thaw::lazy_restore::set_prefetch(ws);
        let (mut ready, mut bytes) = (Vec::new(), Vec::new());
        for i in 0..cfg.runs {
            let host = Home::new(home.root().join(format!("cold-{i}")));
            host.ensure()?;
            let what = if ws {
                "cold host, working set"
            } else {
                "cold host"
            };
            say(&format!("{what} {}/{}", i + 1, cfg.runs));
            let r = restore::restore(&host, qemu, &req(tag, "cold", cfg, Some(url))).await;
            thaw::lazy::stop_server(&host);
            if let Ok(r) = &r {
                let _ = control::stop(&host, &r[0].name).await;
            }
            thaw::lazy::stop_server(&host);
            let _ = std::fs::remove_dir_all(host.root());
            let r = r?;
            if ws {
                // A local plain restore beside each: what the cold host is measured
                // against, under the same load.
                local.push(
                    restore_once(home, qemu, cfg, plain_tag, "local")
                        .await?
                        .ready_ms,
                );
            }
            ready.push(r[0].ready_ms);
            bytes.push((
                r[0].fetched_bytes.unwrap_or(0),
                r[0].stored_bytes.unwrap_or(0),
            ));
        }
        let mut fetched: Vec<u64> = bytes.iter().map(|b| b.0).collect();
        fetched.sort_unstable();
        let median = fetched[fetched.len() / 2];
        let stored = bytes[0].1.max(1);
        out.push(ColdRestores {
            ready_ms: Stats::of(&ready),
            fetched_bytes: median,
            fetched_share: round2(median as f64 / stored as f64),
        });
    }
    thaw::lazy_restore::set_prefetch(true);
    let working_set = out.pop().expect("two");
    let no_working_set = out.pop().expect("two");
    Ok(RemoteFigures {
        cold_to_local_ready_ratio: round2(working_set.ready_ms.median / Stats::of(&local).median),
        local_ready_ms: Stats::of(&local),
        no_working_set,
        working_set,
    })
}

impl LazyReport {
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut s = format!(
            "thaw bench --lazy: {} runs, {}, {} on QEMU {}\nmachine: {} ({} cores, {} GiB), Linux {}\n\n",
            self.runs, self.guest, m.accel, m.qemu, m.cpu, m.cores, m.memory_gib, m.kernel
        );
        for z in &self.sizes {
            s.push_str(&format!("{} MiB\n", z.memory_mib));
            let row = |s: &mut String, what: &str, st: &Stats| {
                s.push_str(&format!(
                    "  {what:<44} {:>9.1} {:>9.1} {:>9.1}\n",
                    st.min, st.median, st.max
                ))
            };
            row(&mut s, "plain restore -> ready (ms)", &z.plain_ready_ms);
            row(
                &mut s,
                "lazy restore from the store -> ready (ms)",
                &z.lazy_ready_ms,
            );
            s.push_str(&format!(
                "  first lazy restore {:.1} ms; lazy/plain {:.2}x\n  write-out {:.1} ms, \
                 replaced by linking {:.1} ms\n  disk: {} stored + {} directory bytes = {:.2}x the store's \
                 (pinned: + {} = {:.2}x)\n",
                z.lazy_first_ready_ms,
                z.lazy_to_plain_ready_ratio,
                z.write_out_ms,
                z.link_ms,
                z.stored_bytes,
                z.dir_bytes,
                z.disk_to_store_ratio,
                z.pinned_dir_bytes,
                z.pinned_disk_to_store_ratio
            ));
            if let Some(r) = &z.remote {
                row(
                    &mut s,
                    "cold host from the bucket -> ready (ms)",
                    &r.no_working_set.ready_ms,
                );
                row(
                    &mut s,
                    "  ... with the working set (ms)",
                    &r.working_set.ready_ms,
                );
                row(
                    &mut s,
                    "  plain local restores beside them (ms)",
                    &r.local_ready_ms,
                );
                s.push_str(&format!(
                    "  fetched before ready: {} bytes ({:.0}%), with the working set {} ({:.0}%)\n  cold host with working set / plain local: {:.2}x\n",
                    r.no_working_set.fetched_bytes,
                    r.no_working_set.fetched_share * 100.0,
                    r.working_set.fetched_bytes,
                    r.working_set.fetched_share * 100.0,
                    r.cold_to_local_ready_ratio
                ));
            }
        }
        s
    }
}

/// Bytes allocated to `dir`'s own entries: its files and links, not what the links
/// point at (the lazy server's files, which are the store's chunks).
fn own_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}
