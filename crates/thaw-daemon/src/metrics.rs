//! `GET /metrics`: the daemon's counters in Prometheus' text format (OpenMetrics, with
//! the `prometheus-client` crate). Every name starts with `thaw_`. Counters and
//! histograms move as requests are served; the gauges (VMs, pools) are read at each
//! scrape.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use thaw::clone::CloneReport;
use thaw::pool::PoolStatus;
use thaw::SnapshotTag;

/// What `GET /metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Source {
    /// `pool` or `spawn`.
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tag {
    tag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    method: String,
    /// The route's template (`/v1/vms/{name}`), or `unmatched`.
    route: String,
    status: u16,
}

/// 1 ms to about 33 s, doubling.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The daemon's metrics and the registry that prints them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    vms: Gauge,
    pool_size: Family<Tag, Gauge>,
    pool_ready: Family<Tag, Gauge>,
    pool_misses: Family<Tag, Counter>,
    restores: Family<Source, Counter>,
    restore_seconds: Family<Source, Histogram, fn() -> Histogram>,
    snapshot_pause_seconds: Histogram,
    http_requests: Family<Route, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("thaw");
        let m = Metrics {
            vms: Gauge::default(),
            pool_size: Family::default(),
            pool_ready: Family::default(),
            pool_misses: Family::default(),
            restores: Family::default(),
            restore_seconds: Family::new_with_constructor(seconds),
            snapshot_pause_seconds: seconds(),
            http_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "vms_running",
            "VMs the daemon answers for (their QEMU runs; a paused VM counts)",
            m.vms.clone(),
        );
        registry.register(
            "pool_size",
            "Clones a snapshot's warm pool keeps ready, as configured",
            m.pool_size.clone(),
        );
        registry.register(
            "pool_ready",
            "Clones ready in a snapshot's warm pool now",
            m.pool_ready.clone(),
        );
        registry.register(
            "pool_misses",
            "Clones of a snapshot with a warm pool that had to start a new QEMU (the pool was empty)",
            m.pool_misses.clone(),
        );
        registry.register(
            "restores",
            "Clones started by restore and reset, by source (pool or spawn)",
            m.restores.clone(),
        );
        registry.register_with_unit(
            "restore",
            "Time from the request to a clone ready, by source (pool or spawn)",
            Unit::Seconds,
            m.restore_seconds.clone(),
        );
        registry.register_with_unit(
            "snapshot_pause",
            "How long a snapshot kept its VM paused",
            Unit::Seconds,
            m.snapshot_pause_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            m.http_requests.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Clones of `tag` a restore or reset started; `pooled` when the snapshot has a
    /// warm pool (a clone that did not come from it is a miss).
    pub fn restored(&self, tag: &SnapshotTag, pooled: bool, clones: &[&CloneReport]) {
        for c in clones {
            let source = Source {
                source: c.breakdown.source.clone(),
            };
            self.restores.get_or_create(&source).inc();
            self.restore_seconds
                .get_or_create(&source)
                .observe(c.ready_ms / 1e3);
            if pooled && c.breakdown.source != "pool" {
                let tag = Tag {
                    tag: tag.to_string(),
                };
                self.pool_misses.get_or_create(&tag).inc();
            }
        }
    }

    pub fn snapshot_paused(&self, pause_ms: f64) {
        self.snapshot_pause_seconds.observe(pause_ms / 1e3);
    }

    /// The text a scrape gets, with the gauges read now.
    pub fn render(&self, vms: u32, pools: &[PoolStatus]) -> String {
        self.vms.set(i64::from(vms));
        self.pool_size.clear();
        self.pool_ready.clear();
        for p in pools {
            let tag = Tag {
                tag: p.tag.to_string(),
            };
            self.pool_size.get_or_create(&tag).set(i64::from(p.size));
            self.pool_ready.get_or_create(&tag).set(i64::from(p.ready));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// Counts every request the router answers, by method, route template and status.
pub(crate) async fn count(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().as_str().to_owned();
    let answer = next.run(req).await;
    metrics
        .http_requests
        .get_or_create(&Route {
            method,
            route,
            status: answer.status().as_u16(),
        })
        .inc();
    answer
}
