//! A warm pool: per snapshot, K clones prepared before anyone asks for them.
//!
//! Without a pool, a restore waits for a QEMU process to start (tens of ms); the state
//! load itself takes a few. A pool keeps K QEMU processes with the snapshot's RAM
//! image mapped and its state loaded, in one of two modes:
//!
//! - **paused**: vCPUs not yet resumed, so a taken clone starts exactly at the
//!   snapshot point; taking it costs `cont`, the agent's first answer (slow under TCG,
//!   where the translation cache starts empty) and the clock.
//! - **running**: already resumed, the agent connection open and warm. Every second
//!   the pool asks each such clone's agent the guest time (setting it if it drifted):
//!   a clone that stopped answering is replaced before anyone takes it, and taking one
//!   asks the agent nothing again (its last answer is at most [`clone::AGENT_FRESH`]
//!   old and it has run since).
//!
//! Whatever must be unique per clone is set when the pooled process is built (VM
//! Generation ID, host ports, disk overlays) or when it is taken (name, clock). What
//! ends the pooled processes never taken when the owner dies is the owner's choice
//! ([`Orphans`]).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::clone::{self, CloneError, CloneReport, FinishOptions, Prepared};
use crate::fsutil::Context;
use crate::home::{Home, SnapshotTag, VmName};
use crate::qemu::Qemu;
use crate::snapshot::{Snapshot, SnapshotCheckError};
use crate::vm::VmPaths;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Paused,
    #[default]
    Running,
}

impl std::str::FromStr for PoolMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paused" => Ok(PoolMode::Paused),
            "running" => Ok(PoolMode::Running),
            other => Err(format!(
                "unknown pool mode {other:?} (use paused or running)"
            )),
        }
    }
}

/// What ends the pooled processes never taken if the pool's owner dies without
/// [`Pool::shutdown`] (killed, or crashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Orphans {
    /// The kernel: pooled QEMUs get `PR_SET_PDEATHSIG` (SIGKILL when the thread that
    /// spawned them ends), which no one can clear from outside. So a clone taken from
    /// the pool dies with the owner too: for owners whose clones never outlive them
    /// (the benchmark).
    DieWithOwner,
    /// The owner's own watchdog (the daemon's keeper process, which ends whatever still
    /// runs from `pool/`): taken clones outlive the owner like any other VM.
    OwnerCleansUp,
}

/// What the user sets per snapshot (`PUT /v1/snapshots/{tag}/pool`'s body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"size": 4, "mode": "running", "warm_ports": false})))]
pub struct PoolConfig {
    pub size: u32,
    /// Default: running.
    #[serde(default)]
    pub mode: PoolMode,
    /// Running pools only: before a clone counts as ready, connect once to each of its
    /// forwarded ports and send a `PING` line (Redis answers it; other services see
    /// one short request), so the guest's network and service code paths have run
    /// once in this QEMU (under TCG, the first run of a code path is translated first:
    /// tens of ms).
    #[serde(default)]
    pub warm_ports: bool,
    /// The host address the pooled clones' forwards and displays listen on (default
    /// 127.0.0.1): only restores asking for this address take them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "127.0.0.1"))]
    pub bind: Option<std::net::Ipv4Addr>,
}

impl PoolConfig {
    /// A pool of `size` in `mode`, without port warm-up, on the default address.
    pub fn new(size: u32, mode: PoolMode) -> PoolConfig {
        PoolConfig {
            size,
            mode,
            warm_ports: false,
            bind: None,
        }
    }

    /// Where the pool's clones listen.
    pub fn bind(&self) -> std::net::Ipv4Addr {
        self.bind.unwrap_or(crate::ports::DEFAULT_BIND)
    }
}

/// The largest pool per snapshot.
pub const MAX_POOL_SIZE: u32 = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PoolStatus {
    pub tag: SnapshotTag,
    pub size: u32,
    pub mode: PoolMode,
    /// Whether the forwarded ports of pooled clones are warmed up.
    #[serde(default)]
    pub warm_ports: bool,
    /// The host address the pooled clones listen on.
    #[serde(default = "crate::ports::default_bind")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "127.0.0.1"))]
    pub bind: std::net::Ipv4Addr,
    /// Clones ready to be taken.
    pub ready: u32,
    /// Clones being prepared.
    pub filling: u32,
    /// The last preparation error, if the last attempt failed.
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    Check(#[from] SnapshotCheckError),
    #[error("pool size must be at most {MAX_POOL_SIZE}, not {0}")]
    Size(u32),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Lazy(#[from] crate::lazy::LazyError),
    #[error(transparent)]
    Bind(#[from] crate::ports::BindError),
}

/// Told about pooled processes as they come and go (the daemon records them).
pub trait PoolObserver: Send + Sync {
    fn created(&self, id: &VmName, tag: &SnapshotTag, pid: u32, dir: &Path);
    fn removed(&self, id: &VmName);
    /// A prepared clone joined the pool of `tag`: `ready` of `size` are ready now.
    fn ready(&self, _tag: &SnapshotTag, _ready: u32, _size: u32) {}
}

struct Slot {
    config: PoolConfig,
    ready: VecDeque<Prepared>,
    filling: u32,
    /// Bumped on every reconfiguration; a clone prepared for an older one is dropped.
    generation: u64,
    last_error: Option<String>,
    /// The snapshot as its clones were last prepared from it.
    snapshot: Option<Arc<Snapshot>>,
}

pub struct Pool {
    home: Home,
    qemu: Qemu,
    accel: Accel,
    slots: Mutex<HashMap<SnapshotTag, Slot>>,
    observer: Option<Arc<dyn PoolObserver>>,
    orphans: Orphans,
    closed: AtomicBool,
}

/// How long after a clone is handed over its replacement starts being prepared. The
/// caller's first use of the clone (a request to a guest service: under TCG its code
/// paths are translated anew in every QEMU) would otherwise share the CPUs with a new
/// QEMU starting and loading its state; measured on 2 cores, a Redis PING right after
/// a take took 46 ms median with a 20 ms delay.
const REFILL_DELAY: Duration = Duration::from_millis(250);

/// How long a pooled clone may take to be prepared.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the agent of each running pooled clone is checked (see the module doc).
const HEALTH_PERIOD: Duration = Duration::from_secs(1);

/// How long one health check may take before the clone counts as not answering.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

impl Pool {
    pub fn new(
        home: Home,
        qemu: Qemu,
        accel: Accel,
        observer: Option<Arc<dyn PoolObserver>>,
        orphans: Orphans,
    ) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            home,
            qemu,
            accel,
            slots: Mutex::new(HashMap::new()),
            observer,
            orphans,
            closed: AtomicBool::new(false),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(check_health(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Where pooled clones live until they are taken.
    pub fn dir(home: &Home) -> PathBuf {
        home.root().join("pool")
    }

    /// Sets the pool of a snapshot (size 0 empties it) and starts filling it.
    pub fn configure(
        self: &Arc<Self>,
        tag: &SnapshotTag,
        config: PoolConfig,
    ) -> Result<(), PoolError> {
        if config.size > MAX_POOL_SIZE {
            return Err(PoolError::Size(config.size));
        }
        if config.size > 0 {
            crate::ports::check_bind(config.bind())?;
            // A snapshot only in the store is served lazily (see `lazy`): linked now,
            // its working set prefetched for the clones the pool is about to start.
            crate::store::ensure_materialized(&self.home, tag, &mut crate::store::NoProgress)?;
            crate::lazy_restore::begin(&self.home, tag)?;
            let snap = Snapshot::open(&self.home, tag)?;
            snap.check(self.qemu.version, self.accel, false)?;
        }
        let mut doomed = Vec::new();
        {
            let mut slots = self.slots.lock().expect("pool lock");
            let slot = slots.entry(tag.clone()).or_insert_with(|| Slot {
                config,
                ready: VecDeque::new(),
                filling: 0,
                generation: 0,
                last_error: None,
                snapshot: None,
            });
            if slot.config.mode != config.mode
                || slot.config.warm_ports != config.warm_ports
                || slot.config.bind() != config.bind()
            {
                doomed.extend(slot.ready.drain(..));
            }
            slot.config = config;
            slot.generation += 1;
            while slot.ready.len() > config.size as usize {
                doomed.extend(slot.ready.pop_back());
            }
        }
        for p in doomed {
            self.discard(p);
        }
        self.refill(tag);
        Ok(())
    }

    /// The state of every configured pool.
    pub fn status(&self) -> Vec<PoolStatus> {
        let slots = self.slots.lock().expect("pool lock");
        let mut v: Vec<PoolStatus> = slots
            .iter()
            .map(|(tag, s)| PoolStatus {
                tag: tag.clone(),
                size: s.config.size,
                mode: s.config.mode,
                warm_ports: s.config.warm_ports,
                bind: s.config.bind(),
                ready: s.ready.len() as u32,
                filling: s.filling,
                last_error: s.last_error.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.tag.cmp(&b.tag));
        v
    }

    /// The address the clones of `tag`'s pool listen on (the default without a pool).
    pub fn bind_of(&self, tag: &SnapshotTag) -> std::net::Ipv4Addr {
        let slots = self.slots.lock().expect("pool lock");
        slots
            .get(tag)
            .map_or(crate::ports::DEFAULT_BIND, |s| s.config.bind())
    }

    /// How many clones of `tag` are ready to be taken.
    pub fn ready_count(&self, tag: &SnapshotTag) -> u32 {
        let slots = self.slots.lock().expect("pool lock");
        slots.get(tag).map_or(0, |s| s.ready.len() as u32)
    }

    /// The snapshot `tag`'s pool prepared its clones from, if it has `count` ready:
    /// a restore that takes them all need not read the manifest again.
    pub fn snapshot_if_ready(&self, tag: &SnapshotTag, count: u32) -> Option<Arc<Snapshot>> {
        let slots = self.slots.lock().expect("pool lock");
        let slot = slots.get(tag)?;
        if slot.ready.len() < count as usize {
            return None;
        }
        slot.snapshot.clone()
    }

    /// Takes a prepared clone of `tag`, names it `name` and finishes it. Unless the
    /// caller `claimed` the name (made its empty directory), moving the clone's
    /// directory there claims it: [`CloneError::Claim`] if it is taken. `None` when
    /// the pool has none ready.
    pub async fn take(
        self: &Arc<Self>,
        tag: &SnapshotTag,
        name: &VmName,
        claimed: bool,
        opts: &FinishOptions,
        t0: Instant,
    ) -> Option<Result<CloneReport, CloneError>> {
        let mut prepared = {
            let mut slots = self.slots.lock().expect("pool lock");
            slots.get_mut(tag)?.ready.pop_front()?
        };
        let pool_id = prepared.state.name.clone();
        let t_take = Instant::now();
        // vCPUs first (a paused clone is resumed now); naming it is host bookkeeping.
        if let Err(e) = prepared.resume().await {
            prepared.discard().await;
            self.removed(&pool_id);
            self.refill(tag);
            return Some(Err(e));
        }
        if let Err(e) = prepared.claim_name(&self.home, name, claimed) {
            prepared.discard().await;
            self.removed(&pool_id);
            self.refill(tag);
            return Some(Err(e));
        }
        self.removed(&pool_id);
        prepared.breakdown.source = "pool".into();
        prepared.breakdown.spawn_ms = 0.0;
        prepared.breakdown.state_load_ms = 0.0;
        prepared.breakdown.take_ms = (t_take.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let report = prepared.finish(opts, t0).await;
        // Refill once this clone is handed over, and a little later (REFILL_DELAY):
        // starting a QEMU competes for the CPUs with the caller's answer and its first
        // use of the clone.
        let this = self.clone();
        let tag = tag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REFILL_DELAY).await;
            this.refill(&tag);
        });
        Some(report)
    }

    /// Takes a prepared clone of `tag` out of the pool as it is (paused or running, with
    /// its placeholder name); the caller makes it a VM and then calls [`Pool::refill`].
    /// `None` when the pool has none ready.
    pub fn pop(&self, tag: &SnapshotTag) -> Option<Prepared> {
        let p = {
            let mut slots = self.slots.lock().expect("pool lock");
            slots.get_mut(tag)?.ready.pop_front()?
        };
        self.removed(&p.state.name);
        Some(p)
    }

    /// Ends every pooled process.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Clones still being prepared are discarded when they finish; wait for them.
        let deadline = Instant::now() + PREPARE_TIMEOUT;
        while Instant::now() < deadline
            && self
                .slots
                .lock()
                .expect("pool lock")
                .values()
                .any(|s| s.filling > 0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all: Vec<Prepared> = {
            let mut slots = self.slots.lock().expect("pool lock");
            slots.values_mut().flat_map(|s| s.ready.drain(..)).collect()
        };
        for p in all {
            let id = p.state.name.clone();
            p.discard().await;
            self.removed(&id);
        }
    }

    /// Takes the clone `id` out of `tag`'s pool (if it is still there), ends it and
    /// refills: its agent stopped answering.
    async fn evict(self: &Arc<Self>, tag: &SnapshotTag, id: &VmName, why: String) {
        let gone = {
            let mut slots = self.slots.lock().expect("pool lock");
            slots.get_mut(tag).and_then(|slot| {
                let i = slot.ready.iter().position(|p| &p.state.name == id)?;
                slot.ready.remove(i)
            })
        };
        if let Some(p) = gone {
            tracing::warn!(tag = %tag, clone = %id, "a pooled clone stopped answering, replacing it: {why}");
            p.discard().await;
            self.removed(id);
            self.refill(tag);
        }
    }

    fn removed(&self, id: &VmName) {
        if let Some(o) = &self.observer {
            o.removed(id);
        }
    }

    fn discard(self: &Arc<Self>, p: Prepared) {
        let this = self.clone();
        tokio::spawn(async move {
            let id = p.state.name.clone();
            p.discard().await;
            this.removed(&id);
        });
    }

    /// Starts preparing as many clones as the pool of `tag` lacks.
    pub fn refill(self: &Arc<Self>, tag: &SnapshotTag) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let (missing, config, generation) = {
            let mut slots = self.slots.lock().expect("pool lock");
            let Some(slot) = slots.get_mut(tag) else {
                return;
            };
            let have = slot.ready.len() as u32 + slot.filling;
            let missing = slot.config.size.saturating_sub(have);
            slot.filling += missing;
            (missing, slot.config, slot.generation)
        };
        for _ in 0..missing {
            let this = self.clone();
            let tag = tag.clone();
            tokio::spawn(async move {
                let result = this.prepare(&tag, config).await;
                let mut retry = false;
                let mut joined = None;
                let leftover = {
                    let mut slots = this.slots.lock().expect("pool lock");
                    match (slots.get_mut(&tag), result) {
                        (Some(slot), Ok(p))
                            if slot.generation == generation
                                && (slot.ready.len() as u32) < slot.config.size
                                && !this.closed.load(Ordering::SeqCst) =>
                        {
                            slot.last_error = None;
                            slot.ready.push_back(p);
                            slot.filling -= 1;
                            joined = Some((slot.ready.len() as u32, slot.config.size));
                            None
                        }
                        (_, Ok(p)) => Some(p),
                        (slot, Err(e)) => {
                            tracing::warn!(tag = %tag, "preparing a pooled clone failed: {e}");
                            if let Some(slot) = slot {
                                slot.last_error = Some(format!("{e}"));
                                slot.filling -= 1;
                            }
                            retry = true;
                            None
                        }
                    }
                };
                if let (Some((ready, size)), Some(o)) = (joined, &this.observer) {
                    o.ready(&tag, ready, size);
                }
                // Not wanted any more (reconfigured or shut down): end it before the
                // fill counts as done, so `shutdown` waits for it.
                if let Some(p) = leftover {
                    let id = p.state.name.clone();
                    p.discard().await;
                    this.removed(&id);
                    if let Some(slot) = this.slots.lock().expect("pool lock").get_mut(&tag) {
                        slot.filling -= 1;
                    }
                    // The refill of the new configuration counted this clone as filling
                    // and started none for it: start what is still missing now.
                    if !this.closed.load(Ordering::SeqCst) {
                        this.refill(&tag);
                    }
                }
                if retry && !this.closed.load(Ordering::SeqCst) {
                    // Back off, then try again (the snapshot may have been fixed).
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    this.refill(&tag);
                }
            });
        }
    }

    async fn prepare(&self, tag: &SnapshotTag, config: PoolConfig) -> Result<Prepared, CloneError> {
        let id: VmName = format!("pool-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
            .parse()
            .expect("a valid name");
        let paths = VmPaths {
            dir: Pool::dir(&self.home).join(id.as_str()),
        };
        std::fs::create_dir_all(&paths.dir)
            .at("create", &paths.dir)
            .map_err(crate::vm::VmError::from)?;
        // A lazily served snapshot's server may have ended while the pool was empty.
        crate::lazy_restore::ensure_for(&self.home, tag).map_err(|e| {
            CloneError::Vm(crate::vm::VmError::Io(crate::fsutil::IoError::new(
                "start the lazy snapshot server for",
                self.home.snapshot_dir(tag),
                std::io::Error::other(crate::one_line(&e)),
            )))
        })?;
        let snap = Arc::new(Snapshot::open(&self.home, tag)?);
        if let Some(slot) = self.slots.lock().expect("pool lock").get_mut(tag) {
            slot.snapshot = Some(snap.clone());
        }
        let result = async {
            let die_with_owner = self.orphans == Orphans::DieWithOwner;
            let mut p = clone::prepare(
                &self.qemu,
                &snap,
                paths.clone(),
                id.clone(),
                clone::StartOptions {
                    die_with_owner,
                    ..clone::StartOptions::default()
                },
                clone::Ports::Fresh(config.bind()),
            )
            .await?;
            if let Some(o) = &self.observer {
                o.created(&id, tag, p.pid(), &paths.dir);
            }
            if config.mode == PoolMode::Running {
                let mut warmed = p.warm_up(PREPARE_TIMEOUT).await;
                if warmed.is_ok() && config.warm_ports {
                    warmed = warm_ports(&p.state.ports, p.state.bind, PREPARE_TIMEOUT).await;
                }
                if let Err(e) = warmed {
                    p.discard().await;
                    self.removed(&id);
                    return Err(e);
                }
            }
            Ok(p)
        }
        .await;
        if result.is_err() {
            // The spawn path already ended QEMU if it failed; remove what is left.
            for pid in crate::vm::pids_using(&paths.dir) {
                crate::vm::kill(pid);
            }
            let _ = std::fs::remove_dir_all(&paths.dir);
        }
        result
    }
}

/// The health check of running pools (see the module doc), until the pool is
/// dropped or shut down.
async fn check_health(pool: Weak<Pool>) {
    loop {
        tokio::time::sleep(HEALTH_PERIOD).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if pool.closed.load(Ordering::SeqCst) {
            return;
        }
        let watched: Vec<_> = {
            let slots = pool.slots.lock().expect("pool lock");
            slots
                .iter()
                .filter(|(_, s)| s.config.mode == PoolMode::Running)
                .flat_map(|(tag, s)| {
                    s.ready
                        .iter()
                        .filter_map(|p| Some((tag.clone(), p.state.name.clone(), p.agent_watch()?)))
                })
                .collect()
        };
        for (tag, id, watch) in watched {
            // A clone taken meanwhile may be asked once more: harmless, and its failure
            // evicts nothing (it is no longer in the pool).
            if let Err(e) = watch.check(HEALTH_PERIOD / 2, HEALTH_TIMEOUT).await {
                pool.evict(&tag, &id, e.to_string()).await;
            }
        }
    }
}

/// Connects [`WARM_EXCHANGES`] times to each forwarded port of a running clone, sends
/// `PING\r\n` and waits for an answer each time: see [`PoolConfig::warm_ports`].
/// Retried until `timeout`, since a guest service may still be starting.
async fn warm_ports(
    ports: &[crate::spec::PortForward],
    bind: std::net::Ipv4Addr,
    timeout: Duration,
) -> Result<(), CloneError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + timeout;
    // Several exchanges, each on a new connection: the first one's paths (accept, the
    // service's first request) are not all that a later one runs.
    for f in ports
        .iter()
        .flat_map(|f| std::iter::repeat_n(f, WARM_EXCHANGES))
    {
        loop {
            let answered = async {
                let mut s = tokio::net::TcpStream::connect((crate::ports::reach(bind), f.host))
                    .await
                    .ok()?;
                s.write_all(b"PING\r\n").await.ok()?;
                let mut buf = [0u8; 64];
                // slirp accepts the host side at once; an answer means the guest did.
                match s.read(&mut buf).await {
                    Ok(n) if n > 0 => Some(()),
                    _ => None,
                }
            };
            match tokio::time::timeout(Duration::from_secs(1), answered).await {
                Ok(Some(())) => break,
                _ if Instant::now() >= deadline => {
                    return Err(CloneError::Ready(crate::ready::ReadyError::Port {
                        guest: f.guest,
                        host: f.host,
                        timeout,
                    }))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    Ok(())
}

/// Answered exchanges per forwarded port in [`warm_ports`].
const WARM_EXCHANGES: usize = 3;

/// Removes what a previous owner of the pool left behind (after a crash): kills any
/// process still running from `pool/` and removes the directories.
pub fn remove_leftovers(home: &Home) {
    let dir = Pool::dir(home);
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        for pid in crate::vm::pids_using(&entry.path()) {
            crate::vm::kill(pid);
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_config_without_warm_ports_reads_as_off() {
        let c: PoolConfig = serde_json::from_str(r#"{"size": 2, "mode": "running"}"#).unwrap();
        assert_eq!(c, PoolConfig::new(2, PoolMode::Running));
        let on = PoolConfig {
            warm_ports: true,
            ..c
        };
        let j = serde_json::to_string(&on).unwrap();
        assert_eq!(serde_json::from_str::<PoolConfig>(&j).unwrap(), on);
    }

    /// A fake service on a port: the warm-up sends its PING line on `WARM_EXCHANGES` new
    /// connections and takes any answer on each.
    #[tokio::test]
    async fn warm_ports_exchanges_a_line_on_each_new_connection() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for _ in 0..WARM_EXCHANGES {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 6];
                s.read_exact(&mut b).await.unwrap();
                assert_eq!(&b, b"PING\r\n");
                s.write_all(b"+PONG\r\n").await.unwrap();
            }
            listener
        });
        let ports = [crate::spec::PortForward { host, guest: 6379 }];
        warm_ports(&ports, crate::ports::DEFAULT_BIND, Duration::from_secs(5))
            .await
            .unwrap();
        // The server answered exactly WARM_EXCHANGES connections; no more are made.
        let listener = server.await.unwrap();
        let more = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(
            more.is_err(),
            "warm_ports connected more than {WARM_EXCHANGES} times"
        );
        let closed = [crate::spec::PortForward {
            host: crate::ports::free().unwrap(),
            guest: 80,
        }];
        assert!(warm_ports(
            &closed,
            crate::ports::DEFAULT_BIND,
            Duration::from_millis(100)
        )
        .await
        .is_err());
    }
}
