//! What happens in the daemon, as it happens: `GET /v1/events` (Server-Sent Events).
//!
//! Handlers, the reaper and the pool send [`Event`]s on one tokio broadcast channel
//! ([`Events`]); each `GET /v1/events` subscribes and streams every event from the
//! moment it connects, one SSE `data:` line of JSON each (the SSE `event:` field is the
//! event's `type`, its `id:` the event's sequence number). A subscriber that falls more
//! than [`BUFFER`] events behind is told how many it lost (`events.lost`) and goes on.
//! The stream ends when the daemon shuts down.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{self, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use thaw::{SnapshotTag, VmName};
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;

/// How many events a slow subscriber may be behind before it loses some.
pub(crate) const BUFFER: usize = 1024;

/// One thing that happened, as `GET /v1/events` sends it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// The event's sequence number in this daemon (from 1; SSE `id:`).
    pub id: u64,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened; `type` names it (the SSE `event:` field says the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type")]
pub enum EventKind {
    /// The daemon recorded a new VM whose QEMU runs (booted, restored or reset).
    #[serde(rename = "vm.created")]
    VmCreated {
        vm: VmName,
        pid: u32,
        /// The snapshot it was restored from (none for a boot).
        #[serde(skip_serializing_if = "Option::is_none", default)]
        snapshot: Option<SnapshotTag>,
    },
    /// The VM's guest is ready (its agent answers, and any extra readiness holds).
    #[serde(rename = "vm.ready")]
    VmReady {
        vm: VmName,
        /// How its clone came to be: `boot`, `pool` or `spawn`.
        source: String,
        /// From the request to ready, in milliseconds.
        ms: f64,
    },
    /// The VM was stopped and removed (through the API, by a snapshot with `stop`, or
    /// because its time to live passed: `reason`).
    #[serde(rename = "vm.stopped")]
    VmStopped { vm: VmName, reason: String },
    /// The VM's QEMU exited without the daemon stopping it (killed, crashed, powered
    /// off, or stopped by `thaw stop` without the daemon); `status` says how.
    #[serde(rename = "vm.died")]
    VmDied {
        vm: VmName,
        pid: u32,
        status: String,
    },
    /// A snapshot was taken of `vm`.
    #[serde(rename = "snapshot.taken")]
    SnapshotTaken { tag: SnapshotTag, vm: VmName },
    /// A snapshot was removed.
    #[serde(rename = "snapshot.removed")]
    SnapshotRemoved { tag: SnapshotTag },
    /// One more clone is ready in the warm pool of `tag`.
    #[serde(rename = "pool.refilled")]
    PoolRefilled {
        tag: SnapshotTag,
        ready: u32,
        size: u32,
    },
    /// A push or pull got further: its phase and the bytes done of it (at most about
    /// every 250 ms, and at each phase's start and end).
    #[serde(rename = "operation.progress")]
    OperationProgress {
        operation: String,
        kind: String,
        tag: SnapshotTag,
        phase: String,
        done_bytes: u64,
        total_bytes: u64,
    },
    /// A push or pull ended; `error` says why when it failed.
    #[serde(rename = "operation.done")]
    OperationDone {
        operation: String,
        kind: String,
        tag: SnapshotTag,
        #[serde(rename = "error", skip_serializing_if = "Option::is_none", default)]
        failed: Option<String>,
    },
    /// A subscriber fell behind and lost `count` events.
    #[serde(rename = "events.lost")]
    Lost { count: u64 },
}

impl EventKind {
    /// The `type` as serialized (the SSE `event:` field).
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::VmCreated { .. } => "vm.created",
            EventKind::VmReady { .. } => "vm.ready",
            EventKind::VmStopped { .. } => "vm.stopped",
            EventKind::VmDied { .. } => "vm.died",
            EventKind::SnapshotTaken { .. } => "snapshot.taken",
            EventKind::SnapshotRemoved { .. } => "snapshot.removed",
            EventKind::PoolRefilled { .. } => "pool.refilled",
            EventKind::OperationProgress { .. } => "operation.progress",
            EventKind::OperationDone { .. } => "operation.done",
            EventKind::Lost { .. } => "events.lost",
        }
    }
}

/// The handler's view of the router's state: the channel.
#[derive(Clone)]
pub(crate) struct Channel(pub Arc<Events>);

/// The daemon's event channel; see the module doc.
pub(crate) struct Events {
    sender: broadcast::Sender<Event>,
    next: AtomicU64,
    /// Set to true when the daemon shuts down: every stream ends.
    closed: watch::Sender<bool>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            sender: broadcast::channel(BUFFER).0,
            next: AtomicU64::new(1),
            closed: watch::channel(false).0,
        }
    }
}

impl Events {
    /// Sends `kind` to every subscriber (none listening is fine).
    pub fn send(&self, kind: EventKind) {
        let event = Event {
            id: self.next.fetch_add(1, Ordering::SeqCst),
            time_unix_ms: thaw::vm::now_ms(),
            kind,
        };
        tracing::debug!(event = event.kind.name(), id = event.id, "event");
        let _ = self.sender.send(event);
    }

    /// Ends every stream (the daemon shuts down).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Becomes true when the daemon shuts down (for other streams: console logs).
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// The events from now on, until the daemon shuts down.
    fn subscribe(&self) -> impl Stream<Item = Event> + Send + 'static {
        let state = (self.sender.subscribe(), self.closed.subscribe());
        futures_util::stream::unfold(state, |(mut rx, mut closed)| async move {
            if *closed.borrow() {
                return None;
            }
            let got = tokio::select! {
                got = rx.recv() => got,
                _ = closed.changed() => return None,
            };
            let event = match got {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(count)) => Event {
                    id: 0,
                    time_unix_ms: thaw::vm::now_ms(),
                    kind: EventKind::Lost { count },
                },
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((event, (rx, closed)))
        })
    }
}

/// The stream of events
///
/// Server-Sent Events (`text/event-stream`): every event from the moment of the request
/// on, each as `event: <type>`, `id: <n>` and one `data:` line of JSON (an `Event`).
/// A comment line every 15 s keeps the connection alive. The stream ends when the
/// daemon shuts down. `thaw events` prints it.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "thawd",
    responses(
        (status = 200, description = "An endless stream of events (text/event-stream); each `data:` is one Event.", body = Event, content_type = "text/event-stream",
         example = json!({"id": 7, "time_unix_ms": 1_765_000_000_000_u64, "type": "vm.ready", "vm": "web", "source": "pool", "ms": 1.8})),
        crate::responses::Always
    )
)]
pub(crate) async fn stream(
    State(Channel(events)): State<Channel>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    use futures_util::StreamExt;
    let stream = events.subscribe().map(|e| {
        let mut out = sse::Event::default().event(e.kind.name());
        if e.id > 0 {
            out = out.id(e.id.to_string());
        }
        let data = serde_json::to_string(&e).expect("an event serializes");
        Ok(out.data(data))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
