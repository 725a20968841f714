//! The snapshot and pool routes: list, read and remove snapshots, restore clones of
//! one, and the warm pools that serve those restores.

use super::*;

// ---------------------------------------------------------------------------- snapshots

/// List snapshots
#[utoipa::path(
    get,
    path = "/v1/snapshots",
    tag = "thawd",
    responses(
        (status = 200, description = "Every snapshot; unusable ones say why in problem.", body = Vec<SnapshotInfo>),
        crate::responses::Always
    )
)]
pub(crate) async fn list_snapshots(State(d): Shared) -> Answer<Json<Vec<SnapshotInfo>>> {
    let home = d.home.clone();
    tokio::task::spawn_blocking(move || Json(catalog::list(&home)))
        .await
        .map_err(|e| ApiError::internal(format!("listing snapshots failed: {e}")))
}

/// One snapshot
#[utoipa::path(
    get,
    path = "/v1/snapshots/{tag}",
    tag = "thawd",
    params(
        ("tag" = SnapshotTag, Path, description = "The snapshot's tag; anything else than a valid tag is a 400.")
    ),
    responses(
        (status = 200, description = "The snapshot as GET /v1/snapshots lists it; an unusable one says why in problem.", body = SnapshotInfo),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::Always
    )
)]
pub(crate) async fn get_snapshot(
    State(d): Shared,
    Named(tag): Named<SnapshotTag>,
) -> Answer<Json<SnapshotInfo>> {
    let home = d.home.clone();
    tokio::task::spawn_blocking(move || catalog::get(&home, &tag))
        .await
        .map_err(|e| ApiError::internal(format!("reading the snapshot failed: {e}")))?
        .map(Json)
        .map_err(ApiError::from_op)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RemoveQuery {
    #[serde(default)]
    recursive: bool,
}

/// Delete a snapshot
#[utoipa::path(
    delete,
    path = "/v1/snapshots/{tag}",
    tag = "thawd",
    params(
        ("tag" = SnapshotTag, Path, description = "The snapshot's tag; anything else than a valid tag is a 400."),
        ("recursive" = Option<bool>, Query, description = "Also remove every snapshot taken on top of it (children first). Without it, a snapshot with children is refused with 409.")
    ),
    responses(
        (status = 200, description = "Removed (and with recursive its descendants); their pools are emptied. Clones running from them keep working.", body = answer::Removed),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::Always
    )
)]
pub(crate) async fn remove_snapshot(
    State(d): Shared,
    Named(tag): Named<SnapshotTag>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Answer<Json<answer::Removed>> {
    detached(async move {
        let removed = catalog::remove(&d.home, &tag, q.recursive).map_err(ApiError::from_op)?;
        for t in &removed {
            if let Err(e) = d.db.remove_snapshot(t) {
                tracing::error!(tag = %t, "{}", crate::error::one_line(&e));
            }
            // A pool of a snapshot that is gone would only retry forever.
            if let Some(p) = d.pool.status().into_iter().find(|p| &p.tag == t) {
                let empty = PoolConfig::new(0, p.mode);
                let _ = d.pool.configure(t, empty);
            }
            tracing::info!(tag = %t, "snapshot removed");
            d.events.send(EventKind::SnapshotRemoved { tag: t.clone() });
        }
        Ok(Json(answer::Removed { removed }))
    })
    .await
}

/// A `Server-Timing` header: where the handler's time went, in milliseconds.
type Timing = [(&'static str, String); 1];

fn server_timing(parts: &[(&str, std::time::Duration)]) -> Timing {
    let v = parts
        .iter()
        .map(|(name, d)| format!("{name};dur={:.3}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ");
    [("server-timing", v)]
}

/// Start clones of a snapshot
///
/// Clones come from the snapshot's warm pool while it has them ready (breakdown.source =
/// pool), the rest start a new QEMU. If any clone fails, every clone of the request is
/// stopped.
#[utoipa::path(
    post,
    path = "/v1/snapshots/{tag}/restore",
    tag = "thawd",
    params(
        ("tag" = SnapshotTag, Path, description = "The snapshot's tag; anything else than a valid tag is a 400.")
    ),
    request_body(content = Option<RestoreOptions>, description = "Optional: without a body, one clone with the defaults."),
    responses(
        (status = 201, description = "Every clone is ready, in order; each says where its time went.", body = Vec<CloneReport>, headers(("Server-Timing" = String, description = "Where the daemon's time went, ms: admit (the VM limit), restore (to ready), record."))),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        (status = 429, response = crate::responses::TooManyRequests),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn restore(
    State(d): Shared,
    Named(tag): Named<SnapshotTag>,
    ApiJson(body): ApiJson<RestoreOptions>,
) -> Answer<(StatusCode, Timing, Json<Vec<CloneReport>>)> {
    let req = body
        .into_request(tag, Some(d.accel))
        .map_err(ApiError::from_op)?;
    let count = req.count;
    let t = std::time::Instant::now();
    let held = d.reserve(count)?;
    let admit = t.elapsed();
    detached(async move {
        let t = std::time::Instant::now();
        let reports = restore::restore_from(&d.home, &d.qemu, &req, Some(&d.pool))
            .await
            .map_err(ApiError::from_op)?;
        let pooled = d.pooled(&req.tag);
        d.metrics
            .restored(&req.tag, pooled, &reports.iter().collect::<Vec<_>>());
        let restored = t.elapsed();
        let t = std::time::Instant::now();
        for r in &reports {
            d.started(
                &r.name,
                r.pid,
                Some(&req.tag),
                &r.breakdown.source,
                r.ready_ms,
            );
            tracing::info!(vm = %r.name, pid = r.pid, source = %r.breakdown.source, "restored");
        }
        drop(held);
        let timing = server_timing(&[
            ("admit", admit),
            ("restore", restored),
            ("record", t.elapsed()),
        ]);
        Ok((StatusCode::CREATED, timing, Json(reports)))
    })
    .await
}

// ---------------------------------------------------------------------------- pools

/// The state of every configured pool
#[utoipa::path(
    get,
    path = "/v1/pools",
    tag = "thawd",
    responses(
        (status = 200, description = "Pools, by tag.", body = Vec<PoolStatus>),
        crate::responses::Always
    )
)]
pub(crate) async fn pools(State(d): Shared) -> Json<Vec<PoolStatus>> {
    Json(d.pool.status())
}

/// Set a snapshot's warm pool
///
/// Kept across daemon restarts. Pooled processes end with the daemon.
#[utoipa::path(
    put,
    path = "/v1/snapshots/{tag}/pool",
    tag = "thawd",
    params(
        ("tag" = SnapshotTag, Path, description = "The snapshot's tag; anything else than a valid tag is a 400.")
    ),
    request_body = PoolConfig,
    responses(
        (status = 200, description = "The pool as it is now; it fills in the background (poll GET /v1/pools).", body = PoolStatus),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn set_pool(
    State(d): Shared,
    Named(tag): Named<SnapshotTag>,
    ApiJson(config): ApiJson<PoolConfig>,
) -> Answer<Json<PoolStatus>> {
    d.pool.configure(&tag, config).map_err(ApiError::from_op)?;
    d.db.put_pool_config(&tag, config)
        .map_err(ApiError::from_op)?;
    tracing::info!(%tag, size = config.size, mode = ?config.mode, "pool configured");
    d.pool
        .status()
        .into_iter()
        .find(|p| p.tag == tag)
        .map(Json)
        .ok_or_else(|| ApiError::internal(format!("the pool of {tag} vanished")))
}
