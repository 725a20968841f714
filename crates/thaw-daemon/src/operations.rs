//! Long-running operations: push and pull of snapshots to and from S3, and the upload
//! of a parked VM (`POST /v1/vms/{name}/park`, see `api::park`).
//!
//! `POST /v1/snapshots/{tag}/push` and `.../pull` check what they can at once (the
//! snapshot, the remote's URL) and answer 202 `{"operation": id}`; the transfer runs
//! on its own thread (the store's transfers borrow their progress mutably, so they run
//! on a runtime of their own). `GET /v1/operations/{id}` says where it is, and every
//! phase and about every 250 ms of progress is also an `operation.progress` event, the
//! end an `operation.done` event. Operations are kept in memory for the daemon's life
//! (the last [`KEPT`]). The S3 server and its credentials are the daemon's
//! (`THAW_S3_ENDPOINT`, `AWS_*` in its environment), as for `thaw push` on its host.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use thaw::store::{Progress, Remote, TransferReport};
use thaw::{Home, SnapshotTag};
use utoipa::ToSchema;

use crate::db::Db;
use crate::error::{one_line, ApiError};
use crate::events::{EventKind, Events};
use crate::extract::{ApiJson, Named};

/// How many finished and running operations are kept.
const KEPT: usize = 256;

/// How often progress is sent as an event (at most).
const EVENT_EVERY: Duration = Duration::from_millis(250);

/// What a push or pull needs to know.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"remote": "s3://thaw/fleet"}))]
pub struct TransferOptions {
    /// `s3://BUCKET[/PREFIX]`, on the S3 server of the daemon's environment.
    pub remote: String,
}

/// `202`: the operation started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Started {
    pub operation: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Running,
    Done,
    Failed,
}

/// An operation and how far it got.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "op-3f2a9c1b7d4e", "kind": "push", "tag": "base", "remote": "s3://thaw/fleet", "state": "running", "phase": "uploading", "done_bytes": 1048576, "total_bytes": 8388608, "started_unix_ms": 1_765_000_000_000_u64}))]
pub struct Operation {
    pub id: String,
    /// `push`, `pull` or `up`.
    pub kind: String,
    /// The snapshot (for `up`: the cache's snapshot of the boot).
    pub tag: SnapshotTag,
    /// The S3 remote (none for an `up` without one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote: String,
    pub state: OperationState,
    /// The current phase, as the store names it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phase: Option<String>,
    /// Bytes done and expected in the current phase.
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub started_unix_ms: u64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// What it did, once done: `thaw push --json`'s (or pull's, or up's) report.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    #[schema(value_type = Option<Object>)]
    pub report: Option<serde_json::Value>,
}

/// The daemon's operations, newest last.
#[derive(Default)]
pub(crate) struct Operations {
    ops: Mutex<VecDeque<Arc<Mutex<Operation>>>>,
}

impl Operations {
    pub(crate) fn add(&self, op: Operation) -> Arc<Mutex<Operation>> {
        let op = Arc::new(Mutex::new(op));
        let mut ops = self.ops.lock().expect("operations lock");
        ops.push_back(op.clone());
        while ops.len() > KEPT {
            ops.pop_front();
        }
        op
    }

    fn get(&self, id: &str) -> Option<Operation> {
        let ops = self.ops.lock().expect("operations lock");
        ops.iter()
            .map(|o| o.lock().expect("operation lock"))
            .find(|o| o.id == id)
            .map(|o| o.clone())
    }
}

/// What the operations' handlers (and the exec and file streams) need of the daemon.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub home: Home,
    pub db: Arc<Db>,
    pub events: Arc<Events>,
    pub operations: Arc<Operations>,
}

/// Progress into the operation's record and, now and then, an event.
pub(crate) struct Reporter {
    op: Arc<Mutex<Operation>>,
    events: Arc<Events>,
    last: Option<Instant>,
}

impl Reporter {
    pub(crate) fn new(op: Arc<Mutex<Operation>>, events: Arc<Events>) -> Reporter {
        Reporter {
            op,
            events,
            last: None,
        }
    }

    fn tell(&mut self, force: bool) {
        if !force && self.last.is_some_and(|t| t.elapsed() < EVENT_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let o = self.op.lock().expect("operation lock").clone();
        self.events.send(EventKind::OperationProgress {
            operation: o.id,
            kind: o.kind,
            tag: o.tag,
            phase: o.phase.unwrap_or_default(),
            done_bytes: o.done_bytes,
            total_bytes: o.total_bytes,
        });
    }
}

impl Progress for Reporter {
    fn start(&mut self, what: &str, total_bytes: u64) {
        {
            let mut o = self.op.lock().expect("operation lock");
            o.phase = Some(what.to_owned());
            o.done_bytes = 0;
            o.total_bytes = total_bytes;
        }
        self.tell(true);
    }

    fn advance(&mut self, bytes: u64) {
        self.op.lock().expect("operation lock").done_bytes += bytes;
        self.tell(false);
    }

    fn finish(&mut self) {
        {
            let mut o = self.op.lock().expect("operation lock");
            o.done_bytes = o.total_bytes;
        }
        self.tell(true);
    }
}

#[derive(Clone)]
enum Kind {
    Push,
    Pull,
    /// The upload of a parked VM: `thaw::park::upload` (its park record follows too).
    Park(thaw::VmName),
}

/// Starts the upload of the parked VM `name` (already parked, see `api::park`) as an
/// operation of kind `park`; answers its id.
pub(crate) fn start_park(
    c: Ctx,
    name: thaw::VmName,
    tag: SnapshotTag,
    url: String,
) -> Result<Started, ApiError> {
    start(c, Kind::Park(name), tag, url)
}

/// The operation `id` once it is no longer running.
pub(crate) async fn finished(c: &Ctx, id: &str) -> Option<Operation> {
    loop {
        let op = c.operations.get(id)?;
        if op.state != OperationState::Running {
            return Some(op);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks, records and starts a transfer; answers its id.
fn start(c: Ctx, kind: Kind, tag: SnapshotTag, url: String) -> Result<Started, ApiError> {
    match kind {
        Kind::Push => {
            thaw::snapshot::catalog::get(&c.home, &tag).map_err(ApiError::from_op)?;
        }
        Kind::Pull if c.home.snapshot_dir(&tag).exists() => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("snapshot {tag} exists here already; remove it first to pull it again"),
            ));
        }
        Kind::Pull | Kind::Park(_) => {}
    }
    let remote =
        Remote::from_env(&url).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, one_line(&e)))?;
    let name = match kind {
        Kind::Push => "push",
        Kind::Pull => "pull",
        Kind::Park(_) => "park",
    };
    let (operations, events) = (Arc::clone(&c.operations), Arc::clone(&c.events));
    Ok(run(
        &operations,
        &events,
        name,
        tag.clone(),
        url,
        move |mut progress| async move {
            let result = match &kind {
                Kind::Push => thaw::store::push(&c.home, &tag, &remote, &mut progress)
                    .await
                    .map_err(|e| one_line(&e)),
                Kind::Pull => thaw::store::pull(&c.home, &tag, &remote, &mut progress)
                    .await
                    .map_err(|e| one_line(&e)),
                Kind::Park(name) => thaw::park::upload(&c.home, name, &mut progress)
                    .await
                    .map_err(|e| one_line(&e))
                    .and_then(|r| {
                        r.upload
                            .map(|u| u.report(&tag))
                            .ok_or_else(|| format!("{name} has no upload report"))
                    }),
            };
            if let (Kind::Pull, Ok(_)) = (&kind, &result) {
                if let Err(e) = c.db.put_snapshot(&tag) {
                    tracing::error!(%tag, "{}", one_line(&e));
                }
            }
            result.map(|r: TransferReport| json_of(&r))
        },
    ))
}

/// Records a running operation of `kind` and runs `work` with its progress reporter on
/// a thread of its own, in a runtime of its own (the store's transfers borrow their
/// progress mutably, which is not Send), then records how it ended. Answers its id.
pub(crate) fn run<F, Fut>(
    operations: &Operations,
    events: &Arc<Events>,
    kind: &str,
    tag: SnapshotTag,
    remote: String,
    work: F,
) -> Started
where
    F: FnOnce(Reporter) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<serde_json::Value, String>>,
{
    let id = new_id();
    let op = operations.add(Operation {
        id: id.clone(),
        kind: kind.to_owned(),
        tag: tag.clone(),
        remote,
        state: OperationState::Running,
        phase: None,
        done_bytes: 0,
        total_bytes: 0,
        started_unix_ms: thaw::vm::now_ms(),
        error: None,
        report: None,
    });
    tracing::info!(operation = %id, kind, %tag, "operation started");
    let span = tracing::Span::current();
    let events = Arc::clone(events);
    std::thread::spawn(move || {
        let _entered = span.enter();
        let progress = Reporter::new(op.clone(), events.clone());
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("could not start the operation's runtime: {e}"))
            .and_then(|rt| rt.block_on(work(progress)));
        finish(&op, &events, result);
    });
    Started { operation: id }
}

fn json_of(report: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(report).expect("a report serializes")
}

/// Records how an operation ended, and tells `GET /v1/events` (`operation.done`).
pub(crate) fn finish(
    op: &Mutex<Operation>,
    events: &Events,
    result: Result<serde_json::Value, String>,
) {
    let done = {
        let mut o = op.lock().expect("operation lock");
        match result {
            Ok(report) => {
                o.state = OperationState::Done;
                o.report = Some(report);
            }
            Err(e) => {
                o.state = OperationState::Failed;
                o.error = Some(e);
            }
        }
        o.clone()
    };
    tracing::info!(operation = %done.id, state = ?done.state, "operation ended");
    events.send(EventKind::OperationDone {
        operation: done.id,
        kind: done.kind,
        tag: done.tag,
        failed: done.error,
    });
}

/// A new operation's id.
pub(crate) fn new_id() -> String {
    format!("op-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Push a snapshot to S3
///
/// Only the chunks the remote lacks, then the snapshot's record. Runs in the
/// background: poll `GET /v1/operations/{id}` or follow `GET /v1/events`. The S3 server
/// and its credentials are the daemon's (`THAW_S3_ENDPOINT`, `AWS_*`).
#[utoipa::path(
    post,
    path = "/v1/snapshots/{tag}/push",
    tag = "thawd",
    params(
        ("tag" = SnapshotTag, Path, description = "The snapshot's tag; anything else than a valid tag is a 400.")
    ),
    request_body = TransferOptions,
    responses(
        (status = 202, description = "Started.", body = Started, example = json!({"operation": "op-3f2a9c1b7d4e"})),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn push(
    State(c): State<Ctx>,
    Named(tag): Named<SnapshotTag>,
    ApiJson(body): ApiJson<TransferOptions>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(start(c, Kind::Push, tag, body.remote)?),
    ))
}

/// Pull a snapshot from S3
///
/// The chunks this host lacks, then the snapshot is written here, ready to restore.
/// Runs in the background like push.
#[utoipa::path(
    post,
    path = "/v1/snapshots/{tag}/pull",
    tag = "thawd",
    params(
        ("tag" = SnapshotTag, Path, description = "The snapshot's tag; anything else than a valid tag is a 400.")
    ),
    request_body = TransferOptions,
    responses(
        (status = 202, description = "Started.", body = Started, example = json!({"operation": "op-3f2a9c1b7d4e"})),
        (status = 400, response = crate::responses::BadRequest),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn pull(
    State(c): State<Ctx>,
    Named(tag): Named<SnapshotTag>,
    ApiJson(body): ApiJson<TransferOptions>,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(start(c, Kind::Pull, tag, body.remote)?),
    ))
}

/// One operation and how far it got
#[utoipa::path(
    get,
    path = "/v1/operations/{id}",
    tag = "thawd",
    params(
        ("id" = String, Path, description = "The id a push or pull answered.")
    ),
    responses(
        (status = 200, description = "The operation: running (phase, bytes), done (report) or failed (error).", body = Operation),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::Always
    )
)]
pub(crate) async fn get(
    State(c): State<Ctx>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Operation>, ApiError> {
    c.operations.get(&id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no operation {id:?} (operations are kept while the daemon runs)"),
        )
    })
}
