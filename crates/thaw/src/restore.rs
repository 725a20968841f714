//! Restoring a snapshot: `count` clones, each a fresh QEMU on the snapshot's RAM image
//! mapped private (or a clone taken from a warm pool), checked before anything starts
//! (but for the device state's hash, computed while the QEMUs start and matched before
//! they load it) and all-or-nothing: a failed or interrupted restore stops and removes
//! every clone of the request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::accel::Accel;
use crate::cancel::{CancellationToken, Interrupted};
use crate::clone::{self, CloneError, CloneReport, FinishOptions, HashGate, HashOutcome};
use crate::home::{Home, SnapshotTag, VmName};
use crate::pool::Pool;
use crate::qemu::Qemu;
use crate::ready::{ReadyError, ReadySpec};
use crate::snapshot::inuse::InUse;
use crate::snapshot::{Snapshot, SnapshotCheckError};
use crate::vm::{self, VmError, VmPaths};

#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub tag: SnapshotTag,
    pub count: u32,
    /// The clone's name; with `count > 1`, clones are named `<name>-1`, `<name>-2`, ...
    pub name: Option<VmName>,
    /// The accelerator to restore under (default: what this host can use).
    pub accel: Option<Accel>,
    /// Hash the whole RAM image before restoring.
    pub verify: bool,
    /// How long each clone's guest agent may take to answer.
    pub timeout: Duration,
    /// Give clones the snapshot's VM Generation ID instead of a fresh one. Only for
    /// showing what the fresh id protects against: clones then share RNG state.
    pub keep_vmgenid: bool,
    /// What must answer besides the guest agent.
    pub ready: ReadySpec,
    /// A shell command run in each clone (through the agent) before it is reported
    /// ready; a non-zero exit fails the restore.
    pub exec_after: Option<String>,
    /// Leave the clones paused at the snapshot point: no `cont`, no readiness (and no
    /// pool). `thaw resume` continues them.
    pub paused: bool,
    /// The clones' VNC password, for a snapshot whose display asks for one.
    pub vnc_password: Option<String>,
    /// Every clone's labels and time to live.
    pub lifetime: crate::lifetime::Lifetime,
    /// Restore straight from this remote (`s3://bucket/prefix`) when this host does
    /// not have the snapshot: lazily, fetching chunks as the clones touch them.
    pub from: Option<String>,
    /// The host address the clones' forwards and displays listen on.
    pub bind: std::net::Ipv4Addr,
}

/// A restore as a client asks for it: `POST /v1/snapshots/{tag}/restore`'s body (the
/// tag is in the path). The accelerator, RAM verification and keeping the VM
/// Generation ID are the host's to decide, not a client's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"count": 3, "exec_after": "rm -f /etc/machine-id"})))]
pub struct RestoreOptions {
    /// How many clones (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The clone's name (with `count > 1`: NAME-1, NAME-2, ...). Default: TAG-N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A shell command run in each clone before it is reported ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_after: Option<String>,
    /// Also wait until this guest TCP port accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_port: Option<u16>,
    /// Also wait until the serial console matches this regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_serial: Option<String>,
    /// Seconds each clone's guest agent may take (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Hash the whole RAM image before restoring.
    #[serde(default)]
    pub verify: bool,
    /// Leave the clones paused at the snapshot point (no readiness, no pool).
    #[serde(default)]
    pub paused: bool,
    /// For a snapshot whose display asks for a VNC password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_password: Option<String>,
    /// Time to live: `30s`, `10m`, `2h`, `1d` or a bare number of seconds. When it
    /// passes, the VM is stopped and removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Labels (`KEY: VALUE`), shown by `GET /v1/vms` and matched by `?label=K=V`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = std::collections::BTreeMap<String, String>))]
    pub labels: crate::lifetime::Labels,
    /// Restore straight from this remote (`s3://bucket/prefix`) when the host does
    /// not have the snapshot: lazily, fetching chunks as the clones touch them (S3
    /// endpoint and credentials from the daemon's environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The host address the clones' port forwards and VNC displays listen on: an IPv4
    /// address of the daemon's host, or `0.0.0.0` for all (default `127.0.0.1`). A
    /// warm pool's clones listen on 127.0.0.1: a restore with another address starts
    /// new clones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
}

impl RestoreOptions {
    /// The options of `req` (what a client sends for it).
    pub fn of(req: &RestoreRequest) -> RestoreOptions {
        RestoreOptions {
            count: Some(req.count),
            name: req.name.as_ref().map(VmName::to_string),
            exec_after: req.exec_after.clone(),
            ready_port: req.ready.port,
            ready_serial: req.ready.serial.clone(),
            timeout_secs: Some(req.timeout.as_secs()),
            verify: req.verify,
            paused: req.paused,
            vnc_password: req.vnc_password.clone(),
            ttl: req.lifetime.ttl.map(|t| t.as_secs().to_string()),
            labels: req.lifetime.labels.clone(),
            from: req.from.clone(),
            bind: (req.bind != crate::ports::DEFAULT_BIND).then(|| req.bind.to_string()),
        }
    }

    /// The request for restoring `tag` under `accel`.
    pub fn into_request(
        self,
        tag: SnapshotTag,
        accel: Option<Accel>,
    ) -> Result<RestoreRequest, RestoreOptionsError> {
        let lifetime = crate::lifetime::Lifetime::from_wire(self.ttl.as_deref(), &self.labels)?;
        let bind = match self.bind.as_deref() {
            Some(b) => crate::ports::parse_bind(b)?,
            None => crate::ports::DEFAULT_BIND,
        };
        Ok(RestoreRequest {
            lifetime,
            bind,
            tag,
            count: self.count.unwrap_or(1),
            name: self.name.map(|n| n.parse()).transpose()?,
            accel,
            verify: self.verify,
            timeout: Duration::from_secs(self.timeout_secs.unwrap_or(60)),
            keep_vmgenid: false,
            ready: ReadySpec {
                port: self.ready_port,
                redis_ping: false,
                serial: self.ready_serial,
            },
            exec_after: self.exec_after,
            paused: self.paused,
            vnc_password: self.vnc_password,
            from: self.from,
        })
    }
}

/// [`RestoreOptions`] a restore cannot be made of.
#[derive(Debug, thiserror::Error)]
pub enum RestoreOptionsError {
    #[error(transparent)]
    Name(#[from] crate::home::NameError),
    #[error(transparent)]
    Lifetime(#[from] crate::lifetime::LifetimeError),
    #[error(transparent)]
    Bind(#[from] crate::ports::BindError),
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Check(#[from] SnapshotCheckError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("count must be at least 1")]
    Count,
    #[error(transparent)]
    Bind(#[from] crate::ports::BindError),
    #[error(transparent)]
    Display(#[from] crate::display::DisplayError),
    #[error("a paused clone is not ready yet: --exec-after and --ready-* need it running")]
    PausedReady,
    #[error(transparent)]
    Ready(#[from] ReadyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("restoring clone {name} failed")]
    Clone {
        name: VmName,
        #[source]
        source: CloneError,
    },
    #[error("interrupted")]
    Interrupted(#[from] Interrupted),
    #[error(transparent)]
    Arrive(Box<crate::lazy_restore::ArriveError>),
    #[error(transparent)]
    Lazy(#[from] crate::lazy::LazyError),
    #[error("snapshot {tag} could not be read: {why}")]
    LazySnapshot { tag: SnapshotTag, why: String },
    #[error("clone {name} could not read its lazily served snapshot: {why}")]
    LazyRead { name: VmName, why: String },
}

impl From<crate::lazy_restore::ArriveError> for RestoreError {
    fn from(e: crate::lazy_restore::ArriveError) -> RestoreError {
        RestoreError::Arrive(Box::new(e))
    }
}

/// Starts `count` clones of a snapshot. Everything is checked before QEMU starts; if
/// any clone fails, every clone of this request is stopped and removed.
pub async fn restore(
    home: &Home,
    qemu: &Qemu,
    req: &RestoreRequest,
) -> Result<Vec<CloneReport>, RestoreError> {
    restore_from(home, qemu, req, None).await
}

/// [`restore`], taking clones from `pool` while it has them ready (the rest spawn).
pub async fn restore_from(
    home: &Home,
    qemu: &Qemu,
    req: &RestoreRequest,
    pool: Option<&Arc<Pool>>,
) -> Result<Vec<CloneReport>, RestoreError> {
    restore_cancellable(home, qemu, req, pool, &CancellationToken::new()).await
}

/// [`restore_from`], rolled back if `cancel` fires before it returns: every clone of
/// the request is stopped and removed ([`Interrupted`]). Any moment is safe for that:
/// a clone's record is written the moment its QEMU starts, and [`vm::discard`] ends
/// what the record names.
pub async fn restore_cancellable(
    home: &Home,
    qemu: &Qemu,
    req: &RestoreRequest,
    pool: Option<&Arc<Pool>>,
    cancel: &CancellationToken,
) -> Result<Vec<CloneReport>, RestoreError> {
    let t0 = Instant::now();
    if req.count == 0 {
        return Err(RestoreError::Count);
    }
    if req.bind != crate::ports::DEFAULT_BIND {
        crate::ports::check_bind(req.bind)?;
    }
    let accel = req.accel.unwrap_or_else(Accel::detect);
    // A pool's clones have new identities and run, and listen on the pool's address:
    // not for these requests. (Moving a pooled clone's forwards to another address at
    // the take would cost monitor round trips per port, and its VNC websocket cannot
    // move at all: another address spawns instead.)
    let poolable =
        !req.keep_vmgenid && !req.paused && pool.is_none_or(|p| p.bind_of(&req.tag) == req.bind);
    if let Some(url) = &req.from {
        crate::lazy_restore::arrive(home, &req.tag, url)
            .await
            .map_err(|e| lazy_named(home, t0, &req.tag, e.into()))?;
    }
    let Opened {
        snap,
        all_pooled,
        in_use: _in_use,
        lazy,
        hashes,
    } = open_checked(home, qemu, req, pool, poolable, accel)
        .map_err(|e| lazy_named(home, t0, &req.tag, e))?;
    let (gate, hashed) = hashes.unzip();
    let check_ms = if all_pooled {
        0.0
    } else {
        crate::ms(t0.elapsed())
    };
    let guest_ports = snap
        .manifest
        .spec
        .net
        .as_ref()
        .map(|n| n.guest_ports.clone())
        .unwrap_or_default();
    req.ready.validate(&guest_ports)?;
    crate::display::check_password(
        snap.manifest.spec.display.as_ref(),
        req.vnc_password.as_deref(),
    )?;
    if req.paused && (req.exec_after.is_some() || req.ready != ReadySpec::default()) {
        return Err(RestoreError::PausedReady);
    }
    // A clone taken from the pool under the name asked for claims it by moving there
    // (one rename); the others claim theirs now, before any QEMU starts. Derived
    // names (`<tag>-<i>`) are claimed now even from the pool: two requests at once
    // would otherwise both pick the first free one, and the loser of the move fail
    // instead of taking the next.
    let claim = if all_pooled && req.name.is_some() && req.count == 1 {
        Claim::AtTake
    } else {
        Claim::Now
    };
    if cancel.is_cancelled() {
        return Err(Interrupted::Restore { removed: 0 }.into());
    }
    let names = pick_names(home, req, claim)?;

    let mut tasks = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (home, qemu, snap, name, req) = (
            home.clone(),
            qemu.clone(),
            snap.clone(),
            name.clone(),
            req.clone(),
        );
        let pool = pool.cloned();
        let cancel = cancel.clone();
        let hashes = gate.clone();
        tasks.spawn(async move {
            let spawned = one_clone(
                &home,
                &qemu,
                &snap,
                &name,
                &req,
                Source {
                    pool: pool.as_ref().filter(|_| poolable),
                    claim,
                    all_pooled,
                    accel,
                    hashes,
                },
                t0,
            );
            // Interrupted: the clone's name is held (claimed before the tasks start),
            // and the rollback below discards it. Names claimed at a pool's take are
            // held only once taken: those requests are rolled back when all are in.
            let r = tokio::select! {
                biased;
                _ = cancel.cancelled(), if claim == Claim::Now => None,
                r = spawned => Some(r),
            };
            (i, name, r)
        });
    }
    let mut reports = Vec::new();
    let mut first_err = None;
    // The names this request holds: all but those it failed to claim.
    let mut held = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, name, r) = joined.expect("restore task panicked");
        match r {
            None => held.push(name),
            Some(Ok(rep)) => {
                held.push(name);
                reports.push((i, rep));
            }
            Some(Err(CloneError::Claim(e))) => {
                first_err.get_or_insert(RestoreError::Vm(e));
            }
            Some(Err(e)) => {
                held.push(name.clone());
                first_err.get_or_insert(RestoreError::Clone { name, source: e });
            }
        }
    }
    // Looked at once every clone is in: an interrupt that came after the last one
    // still rolls the request back.
    if cancel.is_cancelled() {
        first_err = Some(
            Interrupted::Restore {
                removed: held.len(),
            }
            .into(),
        );
    }
    // Labels and time to live go into each record before the clones are reported.
    if first_err.is_none() {
        for (_, rep) in &reports {
            if let Err(e) = crate::vm::apply_lifetime(home, &rep.name, &req.lifetime) {
                first_err = Some(e.into());
                break;
            }
        }
    }
    if let (Some(RestoreError::Clone { name, .. }), Some(_)) = (&first_err, &lazy) {
        if let Some(why) = crate::lazy::failure_since(home, t0) {
            first_err = Some(RestoreError::LazyRead {
                name: name.clone(),
                why,
            });
        }
    }
    // The snapshot's hashes failed: that is the error, as when the check came first.
    // (Not waited for once interrupted: a lazily served device state may take long.)
    if let (Some(hashed), false) = (hashed, cancel.is_cancelled()) {
        if let Err(e) = hashed.await.expect("the snapshot's hashing panicked") {
            first_err = Some(lazy_named(home, t0, &req.tag, e.into()));
        }
    }
    if let Some(e) = first_err {
        for name in &held {
            vm::discard(home, name).await;
        }
        return Err(e);
    }
    reports.sort_by_key(|(i, _)| *i);
    let outcome = lazy.map(|l| {
        let names: Vec<VmName> = reports.iter().map(|(_, r)| r.name.clone()).collect();
        l.finish(home, &names)
    });
    Ok(reports
        .into_iter()
        .map(|(_, mut r)| {
            if r.breakdown.source == "spawn" {
                r.breakdown.check_ms = check_ms;
            }
            if let Some(o) = outcome {
                r.fetched_bytes = Some(o.fetched_bytes);
                r.stored_bytes = Some(o.stored_bytes);
            }
            r
        })
        .collect())
}

/// `e`, or, when reading the snapshot through the lazy server failed since `t0`, what
/// the server said (the chunk and why) instead of the reader's bare I/O error.
fn lazy_named(home: &Home, t0: Instant, tag: &SnapshotTag, e: RestoreError) -> RestoreError {
    match crate::lazy::failure_since(home, t0) {
        Some(why) => RestoreError::LazySnapshot {
            tag: tag.clone(),
            why,
        },
        None => e,
    }
}

/// A request's snapshot, opened by [`open_checked`].
struct Opened {
    snap: Arc<Snapshot>,
    /// The pool has every clone of the request ready: the snapshot was not checked.
    all_pooled: bool,
    /// Held against removal until the clones run.
    in_use: InUse,
    lazy: Option<crate::lazy_restore::Lazy>,
    /// Its hashes, being computed (unless `all_pooled`).
    hashes: Option<(HashGate, HashOutcome)>,
}

/// The snapshot, held against removal until the clones run ([`InUse`]), and checked
/// unless the pool has every clone of the request ready: checked to start QEMU now,
/// its hashes being computed meanwhile.
fn open_checked(
    home: &Home,
    qemu: &Qemu,
    req: &RestoreRequest,
    pool: Option<&Arc<Pool>>,
    poolable: bool,
    accel: Accel,
) -> Result<Opened, RestoreError> {
    // Clones the pool has ready were checked when the pool was configured and loaded
    // their state when prepared; the snapshot's files never change. Reading and
    // checking it again (its device state is hashed) is most of a pooled restore's
    // own time; that it is still there is looked at.
    let pooled_snapshot = (poolable && !req.verify && home.snapshot_dir(&req.tag).is_dir())
        .then(|| pool.and_then(|p| p.snapshot_if_ready(&req.tag, req.count)))
        .flatten();
    let all_pooled = pooled_snapshot.is_some();
    // Held until the clones run: the snapshot cannot be removed under them.
    let (snap, in_use, lazy, hashes) = match pooled_snapshot {
        Some(snap) => (snap, InUse::hold(home, &req.tag)?, None, None),
        None => {
            // A snapshot that is only in the store (pulled, evicted) is linked to the
            // lazy server's files (or written out, with THAW_LAZY=off) once.
            crate::store::ensure_materialized(home, &req.tag, &mut crate::store::NoProgress)?;
            let in_use = InUse::hold(home, &req.tag)?;
            let lazy = crate::lazy_restore::begin(home, &req.tag)?;
            let snap = Arc::new(Snapshot::open(home, &req.tag)?);
            let hashes = snap.check_to_start(qemu.version, accel, req.verify)?;
            let hashes = HashGate::start(Arc::clone(&snap), hashes);
            (snap, in_use, lazy, Some(hashes))
        }
    };
    Ok(Opened {
        snap,
        all_pooled,
        in_use,
        lazy,
        hashes,
    })
}

/// Where a clone of a request comes from.
struct Source<'a> {
    /// The warm pool to take it from, for a request a pool may serve.
    pool: Option<&'a Arc<Pool>>,
    claim: Claim,
    /// The request was checked against the pool's snapshot only (see
    /// [`restore_cancellable`]): a clone that spawns after all is checked first.
    all_pooled: bool,
    accel: Accel,
    /// The snapshot's hashes, being computed (none when all were to come from the pool).
    hashes: Option<HashGate>,
}

/// One clone of a request: taken from the pool while it has one, else spawned.
async fn one_clone(
    home: &Home,
    qemu: &Qemu,
    snap: &Snapshot,
    name: &VmName,
    req: &RestoreRequest,
    from: Source<'_>,
    t0: Instant,
) -> Result<CloneReport, CloneError> {
    if let Some(pool) = from.pool {
        let claimed = from.claim == Claim::Now;
        let taken = pool
            .take(&req.tag, name, claimed, &req.finish_options(), t0)
            .await;
        if let Some(r) = taken {
            return r;
        }
    }
    if from.all_pooled {
        // The pool ran out after all (another request took its clone): this clone
        // spawns, checked first like any other. A name claimed at the take is claimed
        // here instead; one claimed before the tasks started is this clone's already.
        if from.claim == Claim::AtTake {
            vm::create_dir(home, name).map_err(CloneError::Claim)?;
        }
        snap.check(qemu.version, from.accel, false)?;
    }
    restore_one(home, qemu, snap, name, req, from.hashes, t0).await
}

/// When a clone's name is claimed (its directory made).
#[derive(Clone, Copy, PartialEq)]
enum Claim {
    /// Before any QEMU starts.
    Now,
    /// When the clone is taken from the pool, by moving its directory there
    /// ([`vm::move_dir_to`]); until then the name is only checked to be free.
    AtTake,
}

impl Claim {
    fn claim(self, home: &Home, name: &VmName) -> Result<(), VmError> {
        if self == Claim::Now {
            return vm::create_dir(home, name).map(drop);
        }
        let dir = home.vm_dir(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(_) => Err(VmError::Exists(name.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(crate::fsutil::IoError::new("look up", &dir, e).into()),
        }
    }
}

/// Picks the clones' names: the one asked for, or `<base>-<i>` for several, skipping
/// taken ones unless the names were given; claims them now or at the take.
fn pick_names(
    home: &Home,
    req: &RestoreRequest,
    claim: Claim,
) -> Result<Vec<VmName>, RestoreError> {
    let mut claimed: Vec<VmName> = Vec::new();
    let release = |claimed: &[VmName]| {
        if claim == Claim::Now {
            for n in claimed {
                let _ = std::fs::remove_dir_all(home.vm_dir(n));
            }
        }
    };
    match (&req.name, req.count) {
        (Some(name), 1) => {
            claim.claim(home, name)?;
            claimed.push(name.clone());
        }
        (base, count) => {
            let base = base
                .as_ref()
                .map(|n| n.as_str())
                .unwrap_or(req.tag.as_str());
            let explicit = req.name.is_some();
            let mut i = 1u32;
            while claimed.len() < count as usize {
                let name: VmName = match format!("{base}-{i}").parse() {
                    Ok(n) => n,
                    Err(e) => {
                        release(&claimed);
                        return Err(VmError::Io(crate::fsutil::IoError::new(
                            "name a clone",
                            home.vms_dir(),
                            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        ))
                        .into());
                    }
                };
                match claim.claim(home, &name) {
                    Ok(_) => claimed.push(name),
                    // Explicit names must all be free; derived names skip taken ones.
                    Err(VmError::Exists(n)) if !explicit => {
                        let _ = n;
                    }
                    Err(e) => {
                        release(&claimed);
                        return Err(e.into());
                    }
                }
                i += 1;
            }
        }
    }
    Ok(claimed)
}

async fn restore_one(
    home: &Home,
    qemu: &Qemu,
    snap: &Snapshot,
    name: &VmName,
    req: &RestoreRequest,
    hashes: Option<HashGate>,
    t0: Instant,
) -> Result<CloneReport, CloneError> {
    let paths = VmPaths::new(home, name);
    let prepared = clone::prepare(
        qemu,
        snap,
        paths,
        name.clone(),
        clone::StartOptions {
            keep_vmgenid: req.keep_vmgenid,
            die_with_owner: false,
            hashes,
        },
        clone::Ports::Fresh(req.bind),
    )
    .await?;
    if req.paused {
        return prepared.leave_paused(req.vnc_password.as_deref(), t0).await;
    }
    prepared.finish(&req.finish_options(), t0).await
}

impl RestoreRequest {
    pub fn finish_options(&self) -> FinishOptions {
        FinishOptions {
            timeout: self.timeout,
            ready: self.ready.clone(),
            exec_after: self.exec_after.clone(),
            vnc_password: self.vnc_password.clone(),
        }
    }
}
