//! The same operations through a running daemon (`thaw serve`): requests on its Unix
//! socket, replies read back into the library's report types.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;
use thaw::boot::BootReport;
use thaw::clone::CloneReport;
use thaw::control::VmInfo;
use thaw::guestio::exec::{ExecEvent, ExecSpec};
use thaw::guestio::files::Copied;
use thaw::pool::{PoolConfig, PoolStatus};
use thaw::profile::BootOptions;
use thaw::reset::{ResetOptions, ResetReport, ResetRequest};
use thaw::restore::{RestoreOptions, RestoreRequest};
use thaw::snapshot::catalog::SnapshotInfo;
use thaw::snapshot::take::{SnapshotOptions, SnapshotReport, SnapshotRequest};
use thaw::{SnapshotTag, VmName};
use thaw_daemon::client::Client;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

async fn call<T: DeserializeOwned>(
    d: &Client,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<T> {
    let (status, value) = d.request(method, path, body).await?;
    if status >= 400 {
        let msg = value["error"]
            .as_str()
            .unwrap_or("the daemon refused the request");
        bail!("{msg}");
    }
    serde_json::from_value(value)
        .with_context(|| format!("unexpected reply from the daemon to {method} {path}"))
}

pub async fn boot(d: &Client, options: &BootOptions) -> Result<BootReport> {
    let body = serde_json::to_value(options)?;
    call(d, "POST", "/v1/vms", Some(body)).await
}

pub async fn exec_stream(
    _d: &Client,
    _name: &VmName,
    _spec: &ExecSpec,
    _stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    _out: mpsc::Sender<ExecEvent>,
) -> Result<i32> {
    bail!("todo")
}

pub async fn upload(
    _d: &Client,
    _name: &VmName,
    _src: &mut (dyn AsyncRead + Unpin + Send),
    _path: &str,
    _file_name: &str,
    _mode: u32,
) -> Result<Copied> {
    bail!("todo")
}

pub async fn download(
    _d: &Client,
    _name: &VmName,
    _path: &str,
    _dst: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<Copied> {
    bail!("todo")
}

pub async fn snapshot(d: &Client, req: &SnapshotRequest) -> Result<SnapshotReport> {
    let body = serde_json::to_value(SnapshotOptions {
        tag: req.tag.to_string(),
        stop: req.stop,
    })?;
    call(
        d,
        "POST",
        &format!("/v1/vms/{}/snapshot", req.name),
        Some(body),
    )
    .await
}

pub async fn restore(d: &Client, req: &RestoreRequest) -> Result<Vec<CloneReport>> {
    let body = serde_json::to_value(RestoreOptions::of(req))?;
    call(
        d,
        "POST",
        &format!("/v1/snapshots/{}/restore", req.tag),
        Some(body),
    )
    .await
}

pub async fn reset(d: &Client, req: &ResetRequest) -> Result<ResetReport> {
    let body = serde_json::to_value(ResetOptions::of(req))?;
    call(
        d,
        "POST",
        &format!("/v1/vms/{}/reset", req.name),
        Some(body),
    )
    .await
}

pub async fn list(d: &Client) -> Result<Vec<VmInfo>> {
    call(d, "GET", "/v1/vms", None).await
}

pub async fn snapshots(d: &Client) -> Result<Vec<SnapshotInfo>> {
    call(d, "GET", "/v1/snapshots", None).await
}

pub async fn stop(d: &Client, name: &VmName) -> Result<()> {
    call::<Value>(d, "DELETE", &format!("/v1/vms/{name}"), None)
        .await
        .map(|_| ())
}

pub async fn set_ttl(d: &Client, name: &VmName, ttl: std::time::Duration) -> Result<VmInfo> {
    let body = serde_json::json!({ "ttl": format!("{}s", ttl.as_secs()) });
    call(d, "POST", &format!("/v1/vms/{name}/ttl"), Some(body)).await
}

pub async fn pause(d: &Client, name: &VmName) -> Result<()> {
    call::<Value>(d, "POST", &format!("/v1/vms/{name}/pause"), None)
        .await
        .map(|_| ())
}

pub async fn resume(d: &Client, name: &VmName) -> Result<()> {
    call::<Value>(d, "POST", &format!("/v1/vms/{name}/resume"), None)
        .await
        .map(|_| ())
}

pub async fn remove_snapshot(
    d: &Client,
    tag: &SnapshotTag,
    recursive: bool,
) -> Result<Vec<SnapshotTag>> {
    let v: Value = call(
        d,
        "DELETE",
        &format!("/v1/snapshots/{tag}?recursive={recursive}"),
        None,
    )
    .await?;
    serde_json::from_value(v["removed"].clone()).context("unexpected reply from the daemon")
}

pub async fn set_pool(d: &Client, tag: &SnapshotTag, config: PoolConfig) -> Result<PoolStatus> {
    call(
        d,
        "PUT",
        &format!("/v1/snapshots/{tag}/pool"),
        Some(serde_json::to_value(config)?),
    )
    .await
}

pub async fn pools(d: &Client) -> Result<Vec<PoolStatus>> {
    call(d, "GET", "/v1/pools", None).await
}
