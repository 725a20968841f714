//! The same operations through a running daemon (`thaw serve`): requests on its Unix
//! socket, replies read back into the library's report types.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use thaw::agent::ExecOutput;
use thaw::boot::{BootReport, BootRequest};
use thaw::clone::CloneReport;
use thaw::control::VmInfo;
use thaw::pool::{PoolConfig, PoolStatus};
use thaw::reset::{ResetReport, ResetRequest};
use thaw::restore::RestoreRequest;
use thaw::snapshot::catalog::SnapshotInfo;
use thaw::snapshot::take::{SnapshotReport, SnapshotRequest};
use thaw::{SnapshotTag, VmName};
use thaw_daemon::client::Client;

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

pub async fn boot(d: &Client, req: &BootRequest) -> Result<BootReport> {
    let s = &req.spec;
    let disks: Vec<String> = s
        .disks
        .iter()
        .map(|disk| {
            let ro = if disk.readonly { ",readonly" } else { "" };
            format!("{},format={}{ro}", disk.base.display(), disk.format)
        })
        .collect();
    let body = json!({
        "name": req.name,
        "memory_mib": s.memory_mib,
        "cpus": s.cpus,
        "machine": s.machine,
        "kernel": s.kernel,
        "initrd": s.initrd,
        "append": s.kernel.as_ref().map(|_| &s.cmdline),
        "firmware": thaw::firmware::FirmwareKind::of(&s.firmware),
        "display": s.display.as_ref().map(|d| json!({
            "vnc_port": req.vnc.port,
            "websocket": d.websocket,
            "websocket_port": req.vnc.websocket_port,
            "password": req.vnc.password,
        })),
        "disks": disks,
        "ports": req.forwards,
        "no_net": s.net.is_none(),
        "ready_port": req.ready.port,
        "ready_serial": req.ready.serial,
        "timeout_secs": req.timeout.as_secs(),
    });
    call(d, "POST", "/v1/vms", Some(body)).await
}

pub async fn exec(
    d: &Client,
    name: &VmName,
    command: &[String],
    timeout: u64,
) -> Result<ExecOutput> {
    let body = json!({ "command": command, "timeout_secs": timeout });
    call(d, "POST", &format!("/v1/vms/{name}/exec"), Some(body)).await
}

pub async fn snapshot(d: &Client, req: &SnapshotRequest) -> Result<SnapshotReport> {
    let body = json!({ "tag": req.tag, "stop": req.stop });
    call(
        d,
        "POST",
        &format!("/v1/vms/{}/snapshot", req.name),
        Some(body),
    )
    .await
}

pub async fn restore(d: &Client, req: &RestoreRequest) -> Result<Vec<CloneReport>> {
    let body = json!({
        "count": req.count,
        "name": req.name,
        "exec_after": req.exec_after,
        "ready_port": req.ready.port,
        "ready_serial": req.ready.serial,
        "timeout_secs": req.timeout.as_secs(),
        "paused": req.paused,
        "vnc_password": req.vnc_password,
    });
    call(
        d,
        "POST",
        &format!("/v1/snapshots/{}/restore", req.tag),
        Some(body),
    )
    .await
}

pub async fn reset(d: &Client, req: &ResetRequest) -> Result<ResetReport> {
    let body = json!({ "to": req.to, "timeout_secs": req.timeout.as_secs() });
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
        Some(json!(config)),
    )
    .await
}

pub async fn pools(d: &Client) -> Result<Vec<PoolStatus>> {
    call(d, "GET", "/v1/pools", None).await
}
