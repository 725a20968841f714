//! The HTTP/JSON API: routes and thin handlers. Each handler parses the request into a
//! request of the core library, calls [`thaw::ops`] or the warm [`Pool`], records what
//! changed in the daemon's database, and turns the result into JSON.
//!
//! Operations that start or end VMs run in their own task: a client that hangs up
//! mid-request does not cancel a boot half-way, and what the operation started is
//! still recorded.

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use thaw::agent::ExecOutput;
use thaw::boot::{self, BootReport};
use thaw::clone::CloneReport;
use thaw::control::{self, ExecOptions, VmInfo};
use thaw::pool::{Pool, PoolConfig, PoolStatus};
use thaw::profile::{self, BootOptions};
use thaw::qemu::Qemu;
use thaw::reset::{ResetOptions, ResetReport};
use thaw::restore::{self, RestoreOptions};
use thaw::snapshot::catalog::{self, SnapshotInfo};
use thaw::snapshot::take::{self, SnapshotOptions, SnapshotReport};
use thaw::vm::VmState;
use thaw::{Accel, Home, SnapshotTag, VmName};

use crate::answer;
use crate::check::{check_boot, check_exec};
use crate::db::{Db, VmRow};
use crate::error::ApiError;
use crate::events::{EventKind, Events};
use crate::extract::{ApiJson, ApiQuery, Named};
use crate::metrics::Metrics;
use crate::reaper::Reaper;
use axum::extract::RawQuery;
use thaw::lifetime::LabelFilter;

/// What every handler shares.
pub(crate) struct Daemon {
    pub home: Home,
    pub qemu: Qemu,
    pub accel: Accel,
    pub pool: Arc<Pool>,
    pub db: Arc<Db>,
    pub max_vms: u32,
    /// Reaps the QEMU of every VM recorded here when it exits.
    pub reaper: Arc<Reaper>,
    /// What `GET /metrics` reports.
    pub metrics: Arc<Metrics>,
    /// What `GET /v1/events` streams.
    pub events: Arc<Events>,
    /// Pushes and pulls.
    pub operations: Arc<crate::operations::Operations>,
    /// VMs being booted or restored, counted against `max_vms` until they are
    /// recorded (or have failed).
    in_flight: Mutex<u32>,
}

/// Room for `n` VMs held while they start; dropping it gives the room back.
struct Reservation {
    daemon: Arc<Daemon>,
    n: u32,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut in_flight = self.daemon.in_flight.lock().expect("limit lock");
        *in_flight -= self.n;
    }
}

impl Daemon {
    pub fn new(
        home: Home,
        qemu: Qemu,
        accel: Accel,
        pool: Arc<Pool>,
        db: Arc<Db>,
        max_vms: u32,
        reaper: Arc<Reaper>,
    ) -> Daemon {
        // The channel the reaper tells deaths on is the one of every event.
        let events = reaper.events.clone();
        Daemon {
            home,
            qemu,
            accel,
            pool,
            db,
            max_vms,
            reaper,
            metrics: Arc::new(Metrics::new()),
            events,
            operations: Arc::default(),
            in_flight: Mutex::new(0),
        }
    }

    /// Holds room for `n` more VMs, or answers 429 at once.
    fn reserve(self: &Arc<Self>, n: u32) -> Result<Reservation, ApiError> {
        let mut in_flight = self.in_flight.lock().expect("limit lock");
        let wanted = |vms: u32| u64::from(vms) + u64::from(*in_flight) + u64::from(n);
        let mut vms = self.db.vm_count().map_err(ApiError::from_op)?;
        // VMs stopped behind the daemon's back count until they are looked for, which
        // (a directory listing and a look per VM) only a request over the limit pays.
        if wanted(vms) > u64::from(self.max_vms) {
            self.forget_vanished();
            vms = self.db.vm_count().map_err(ApiError::from_op)?;
        }
        if wanted(vms) > u64::from(self.max_vms) {
            let starting = match *in_flight {
                0 => String::new(),
                k => format!(" and {k} starting"),
            };
            return Err(ApiError::too_many(format!(
                    "this daemon runs at most {} VMs and has {vms}{starting}, so {n} more would be too many; \
                     stop some, or start thawd with a larger --max-vms",
                self.max_vms
            )));
        }
        *in_flight += n;
        Ok(Reservation {
            daemon: self.clone(),
            n,
        })
    }

    /// Forgets VMs whose directory is gone (stopped behind the daemon's back, e.g. by
    /// `thaw stop` without the daemon), so they stop counting against the limit.
    fn forget_vanished(&self) {
        for row in self.db.vms().unwrap_or_default() {
            if !self.home.vm_dir(&row.name).exists() {
                self.forget(&row.name);
            }
        }
    }

    /// Records a VM the daemon started, and has its QEMU reaped when it exits (the
    /// library is done with its handle). A failure to record is logged, not returned:
    /// the VM runs and its record under `vms/` lets a restarted daemon adopt it.
    fn record(&self, name: &VmName, pid: u32) {
        self.reaper.adopt(pid, Some(name));
        let row = match VmState::load(&self.home, name) {
            Ok(s) => VmRow {
                name: name.clone(),
                pid: s.pid,
                vmgenid: s.vmgenid.to_string(),
                created_unix_ms: s.created_unix_ms,
            },
            Err(_) => VmRow {
                name: name.clone(),
                pid,
                vmgenid: String::new(),
                created_unix_ms: thaw::vm::now_ms(),
            },
        };
        if let Err(e) = self.db.put_vm(&row) {
            tracing::error!(vm = %name, "{}", crate::error::one_line(&e));
        }
    }

    /// Records a VM that is ready ([`Daemon::record`]) and tells `GET /v1/events`:
    /// `vm.created`, then `vm.ready`.
    fn started(&self, name: &VmName, pid: u32, from: Option<&SnapshotTag>, source: &str, ms: f64) {
        self.record(name, pid);
        self.events.send(EventKind::VmCreated {
            vm: name.clone(),
            pid,
            snapshot: from.cloned(),
        });
        self.events.send(EventKind::VmReady {
            vm: name.clone(),
            source: source.to_owned(),
            ms,
        });
    }

    /// What follows a snapshot taken of `vm` (a snapshot route, a park): the event, the
    /// pause in the metrics, and the snapshot's row.
    fn snapshot_taken(&self, vm: &VmName, tag: &SnapshotTag, pause_ms: f64) {
        self.events.send(EventKind::SnapshotTaken {
            tag: tag.clone(),
            vm: vm.clone(),
        });
        self.metrics.snapshot_paused(pause_ms);
        if let Err(e) = self.db.put_snapshot(tag) {
            tracing::error!(%tag, "{}", crate::error::one_line(&e));
        }
    }

    /// Tells `GET /v1/events` that `name` was stopped and removed, and why.
    fn stopped(&self, name: &VmName, reason: &str) {
        self.events.send(EventKind::VmStopped {
            vm: name.clone(),
            reason: reason.to_owned(),
        });
    }

    /// Whether `tag` has a warm pool (of any size above zero).
    fn pooled(&self, tag: &SnapshotTag) -> bool {
        self.pool
            .status()
            .iter()
            .any(|p| &p.tag == tag && p.size > 0)
    }

    /// Stops and removes every VM whose time to live has passed.
    pub(crate) async fn expire(&self) {
        for name in thaw::control::reap_expired(&self.home).await {
            tracing::info!(vm = %name, "expired: stopped and removed");
            self.forget(&name);
            self.stopped(&name, "expired");
        }
    }

    fn forget(&self, name: &VmName) {
        if let Err(e) = self.db.remove_vm(name) {
            tracing::error!(vm = %name, "{}", crate::error::one_line(&e));
        }
    }
}

type Shared = State<Arc<Daemon>>;

impl axum::extract::FromRef<Arc<Daemon>> for crate::events::Channel {
    fn from_ref(d: &Arc<Daemon>) -> crate::events::Channel {
        crate::events::Channel(d.events.clone())
    }
}

impl axum::extract::FromRef<Arc<Daemon>> for crate::operations::Ctx {
    fn from_ref(d: &Arc<Daemon>) -> crate::operations::Ctx {
        crate::operations::Ctx {
            home: d.home.clone(),
            db: d.db.clone(),
            events: d.events.clone(),
            operations: d.operations.clone(),
        }
    }
}
type Answer<T> = Result<T, ApiError>;
type Created<T> = Answer<(StatusCode, Json<T>)>;

pub(crate) mod park;
pub(crate) mod snapshots;
pub(crate) mod up;
use snapshots::{get_snapshot, list_snapshots, pools, remove_snapshot, restore, set_pool};

pub(crate) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/vms", get(list_vms).post(boot))
        .route("/v1/vms/{name}", get(get_vm).delete(stop))
        .route("/v1/vms/{name}/exec", post(exec))
        .route(
            "/v1/vms/{name}/exec/stream",
            post(crate::streams::exec_stream),
        )
        .route(
            "/v1/vms/{name}/files",
            get(crate::streams::get_file).put(crate::streams::put_file),
        )
        .route("/v1/vms/{name}/snapshot", post(snapshot))
        .route("/v1/vms/{name}/pause", post(pause))
        .route("/v1/vms/{name}/resume", post(resume))
        .route("/v1/vms/{name}/reset", post(reset))
        .route("/v1/vms/{name}/ttl", post(set_ttl))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{tag}",
            get(get_snapshot).delete(remove_snapshot),
        )
        .route("/v1/snapshots/{tag}/restore", post(restore))
        .route("/v1/snapshots/{tag}/pool", put(set_pool))
        .route("/v1/pools", get(pools))
        .route("/metrics", get(metrics))
        .route("/v1/events", get(crate::events::stream))
        .route("/v1/snapshots/{tag}/push", post(crate::operations::push))
        .route("/v1/snapshots/{tag}/pull", post(crate::operations::pull))
        .route("/v1/operations/{id}", get(crate::operations::get))
        .route("/v1/vms/{name}/park", post(park::park))
        .route("/v1/parked", get(park::list_parked))
        .route("/v1/wake", post(park::wake))
        .route("/v1/vms/{name}/logs", get(crate::logs::logs))
        .route("/v1/vms/{name}/screenshot", get(crate::screen::screenshot))
        .route("/v1/vms/{name}/type", post(crate::screen::type_text))
        .route("/v1/vms/{name}/key", post(crate::screen::key))
        .route("/v1/snapshots/{tag}/export", get(crate::transfer::export))
        .route("/v1/snapshots/import", post(crate::transfer::import))
        .route("/v1/up", post(up::up))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            daemon.metrics.clone(),
            crate::metrics::count,
        ))
        .with_state(daemon)
}

/// Runs an operation in its own task, so that it completes (and is recorded) even if
/// the client hangs up.
async fn detached<T: Send + 'static>(
    op: impl Future<Output = Answer<T>> + Send + 'static,
) -> Answer<T> {
    tokio::spawn(tracing::Instrument::in_current_span(op))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("the operation failed: {e}"))))
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {} (see docs/api.md)", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

// ---------------------------------------------------------------------------- health

/// Whether the daemon answers
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "thawd",
    responses(
        (status = 200, description = "The daemon runs.", body = answer::Health),
        crate::responses::Always
    )
)]
pub(crate) async fn health(State(d): Shared) -> Answer<Json<answer::Health>> {
    let vms = d.db.vm_count().map_err(ApiError::from_op)?;
    Ok(Json(answer::Health {
        status: answer::HealthStatus::Ok,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        vms,
    }))
}

// ---------------------------------------------------------------------------- VMs

/// List VMs and their state
#[utoipa::path(
    get,
    path = "/v1/vms",
    tag = "thawd",
    params(
        ("label" = Option<Vec<String>>, Query, description = "Only VMs with this label, `KEY=VALUE`; repeatable (all must match).")
    ),
    responses(
        (status = 200, description = "Every VM under $THAW_HOME/vms (those with every `label` asked for), as QEMU reports it now. VMs whose time to live has passed are stopped and removed first.", body = Vec<VmInfo>),
        (status = 400, response = crate::responses::BadRequest),
        crate::responses::Always
    )
)]
pub(crate) async fn list_vms(
    State(d): Shared,
    RawQuery(query): RawQuery,
) -> Answer<Json<Vec<VmInfo>>> {
    let mut labels = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "label" => labels.push(v.into_owned()),
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {other:?}: only label=KEY=VALUE"),
                ))
            }
        }
    }
    let filter = LabelFilter::parse_labels(&labels).map_err(ApiError::from_op)?;
    let mut vms = control::list(&d.home).await;
    vms.retain(|v| filter.matches(&v.labels));
    Ok(Json(vms))
}

/// Set a VM's time to live
///
/// The VM is stopped and removed `ttl` from now (whatever it had before).
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/ttl",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body = answer::TtlOptions,
    responses(
        (status = 200, description = "The VM as GET /v1/vms lists it, with its new expiry.", body = VmInfo),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn set_ttl(
    State(d): Shared,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<answer::TtlOptions>,
) -> Answer<Json<VmInfo>> {
    let ttl = thaw::lifetime::parse_ttl(&body.ttl).map_err(ApiError::from_op)?;
    let info = thaw::control::extend_ttl(&d.home, &name, ttl)
        .await
        .map_err(ApiError::from_op)?;
    tracing::info!(vm = %name, ttl = %body.ttl, "ttl set");
    Ok(Json(info))
}

/// One VM and its state
#[utoipa::path(
    get,
    path = "/v1/vms/{name}",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    responses(
        (status = 200, description = "The VM as GET /v1/vms lists it, as QEMU reports it now.", body = VmInfo),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::Always
    )
)]
pub(crate) async fn get_vm(State(d): Shared, Named(name): Named<VmName>) -> Answer<Json<VmInfo>> {
    let info = control::get(&d.home, &name)
        .await
        .map_err(ApiError::from_op)?;
    Ok(Json(info))
}

/// Boot a VM
///
/// Boots a VM with its RAM in a shared file and answers once its guest agent answers. On
/// failure nothing is left running. A `profile` boots the guest `thaw boot --profile`
/// boots, resolved by the same function.
#[utoipa::path(
    post,
    path = "/v1/vms",
    tag = "thawd",
    request_body = BootOptions,
    responses(
        (status = 201, description = "The guest is ready (its agent answers, and any extra readiness holds).", body = BootReport),
        (status = 400, response = crate::responses::BadRequest),
        (status = 409, response = crate::responses::Conflict),
        (status = 429, response = crate::responses::TooManyRequests),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn boot(
    State(d): Shared,
    ApiJson(body): ApiJson<BootOptions>,
) -> Created<BootReport> {
    check_boot(&body)?;
    let held = d.reserve(1)?;
    detached(async move {
        let accel = d.accel;
        // Resolution may build the profile's guest and inspects the disks: it blocks.
        let req = tokio::task::spawn_blocking(move || {
            profile::resolve(body, accel, &mut |line| tracing::info!("guest: {line}"))
        })
        .await
        .map_err(|e| ApiError::internal(format!("resolving the boot failed: {e}")))?
        .map_err(ApiError::from_op)?;
        let report = boot::boot(&d.home, &d.qemu, &req)
            .await
            .map_err(ApiError::from_op)?;
        d.started(&report.name, report.pid, None, "boot", report.boot_ms);
        drop(held);
        tracing::info!(vm = %report.name, pid = report.pid, "booted");
        Ok((StatusCode::CREATED, Json(report)))
    })
    .await
}

/// Stop a VM and remove its state
#[utoipa::path(
    delete,
    path = "/v1/vms/{name}",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    responses(
        (status = 200, description = "Stopped.", body = answer::Stopped),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::Always
    )
)]
pub(crate) async fn stop(
    State(d): Shared,
    Named(name): Named<VmName>,
) -> Answer<Json<answer::Stopped>> {
    detached(async move {
        d.reaper.expect_exit(&name);
        let result = control::stop(&d.home, &name).await;
        if matches!(result, Ok(()) | Err(thaw::vm::VmError::NotFound(_))) {
            d.forget(&name);
        }
        result.map_err(ApiError::from_op)?;
        d.stopped(&name, "stopped");
        tracing::info!(vm = %name, "stopped");
        Ok(Json(answer::Stopped { stopped: name }))
    })
    .await
}

/// Run a command in the guest through its agent
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/exec",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body = ExecOptions,
    responses(
        (status = 200, description = "The command ran; its exit code may be non-zero.", body = ExecOutput),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn exec(
    State(d): Shared,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<ExecOptions>,
) -> Answer<Json<ExecOutput>> {
    check_exec(&body)?;
    let out = control::exec(&d.home, &name, &body.command, body.timeout())
        .await
        .map_err(ApiError::from_op)?;
    Ok(Json(out))
}

/// Checkpoint a running VM into a snapshot
///
/// The VM keeps running unless stop is true.
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/snapshot",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body = SnapshotOptions,
    responses(
        (status = 201, description = "The snapshot is written (atomically).", body = SnapshotReport),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn snapshot(
    State(d): Shared,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<SnapshotOptions>,
) -> Created<SnapshotReport> {
    let tag: SnapshotTag = body.tag.parse().map_err(ApiError::from_op)?;
    detached(async move {
        let req = take::SnapshotRequest {
            name: name.clone(),
            tag: tag.clone(),
            stop: body.stop,
            pin: body.pin,
        };
        if body.stop {
            d.reaper.expect_exit(&name);
        }
        let report = take::take(&d.home, &req).await.map_err(ApiError::from_op)?;
        d.snapshot_taken(&name, &tag, report.pause_ms);
        if body.stop {
            d.forget(&name);
            d.stopped(&name, "snapshot --stop");
        }
        Ok((StatusCode::CREATED, Json(report)))
    })
    .await
}

/// Pause a running VM
///
/// Its vCPUs stop (QMP `stop`); its memory, screen and devices hold still until
/// resume. Pausing a paused VM changes nothing. No body.
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/pause",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    responses(
        (status = 200, description = "Paused.", body = answer::Paused),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::Always
    )
)]
pub(crate) async fn pause(
    State(d): Shared,
    Named(name): Named<VmName>,
) -> Answer<Json<answer::Paused>> {
    control::pause(&d.home, &name)
        .await
        .map_err(ApiError::from_op)?;
    tracing::info!(vm = %name, "paused");
    Ok(Json(answer::Paused { paused: name }))
}

/// Resume a paused VM
///
/// For a VM left paused, e.g. by an interrupted snapshot or a paused restore. No body.
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/resume",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    responses(
        (status = 200, description = "Running.", body = answer::Resumed),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::Always
    )
)]
pub(crate) async fn resume(
    State(d): Shared,
    Named(name): Named<VmName>,
) -> Answer<Json<answer::Resumed>> {
    control::resume(&d.home, &name)
        .await
        .map_err(ApiError::from_op)?;
    Ok(Json(answer::Resumed { resumed: name }))
}

/// Reset a VM to a snapshot
///
/// The VM's changes are thrown away: it goes back to the snapshot it was restored from
/// (or `to`), keeping its name and host ports, with a fresh VM Generation ID and the
/// clock set. The clone comes from the snapshot's warm pool when it has one ready
/// (breakdown.source = pool).
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/reset",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body(content = Option<ResetOptions>, description = "Optional: without a body, the defaults."),
    responses(
        (status = 200, description = "The VM runs again from the snapshot.", body = ResetReport),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 408, response = crate::responses::RequestTimeout),
        (status = 409, response = crate::responses::Conflict),
        (status = 415, response = crate::responses::UnsupportedMediaType),
        (status = 422, response = crate::responses::UnprocessableEntity),
        crate::responses::Always
    )
)]
pub(crate) async fn reset(
    State(d): Shared,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<ResetOptions>,
) -> Answer<Json<ResetReport>> {
    let req = body
        .into_request(name, Some(d.accel))
        .map_err(ApiError::from_op)?;
    detached(async move {
        d.reaper.expect_exit(&req.name);
        let report = thaw::reset::reset(&d.home, &d.qemu, &req, Some(&d.pool))
            .await
            .map_err(ApiError::from_op)?;
        let pooled = d.pooled(&report.snapshot);
        d.metrics
            .restored(&report.snapshot, pooled, &[&report.clone]);
        let c = &report.clone;
        d.started(&c.name, c.pid, Some(&report.snapshot), &c.breakdown.source, c.ready_ms);
        tracing::info!(vm = %report.clone.name, snapshot = %report.snapshot, source = %report.clone.breakdown.source, "reset");
        Ok(Json(report))
    })
    .await
}

// ---------------------------------------------------------------------------- metrics

/// Metrics for Prometheus
///
/// The daemon's counters in Prometheus' text format (OpenMetrics 1.0): `thaw_vms_running`,
/// `thaw_pool_size` / `thaw_pool_ready` / `thaw_pool_misses_total` by `tag`,
/// `thaw_restores_total` and the `thaw_restore_seconds` histogram by `source` (pool or
/// spawn), the `thaw_snapshot_pause_seconds` histogram, `thaw_http_requests_total` by
/// `method`, `route` and `status`. On TCP it needs a token like every route but
/// /healthz.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "thawd",
    responses(
        (status = 200, description = "The metrics, ending with # EOF.", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        crate::responses::Always
    )
)]
pub(crate) async fn metrics(
    State(d): Shared,
) -> Answer<([(&'static str, &'static str); 1], String)> {
    let vms = d.db.vm_count().map_err(ApiError::from_op)?;
    let text = d.metrics.render(vms, &d.pool.status());
    Ok(([("content-type", crate::metrics::CONTENT_TYPE)], text))
}
