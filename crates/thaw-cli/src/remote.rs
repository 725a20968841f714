//! The same operations through a running daemon (`thaw serve`): requests on its Unix
//! socket, replies read back into the library's report types.

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;
use thaw::agent::ExecOutput;
use thaw::boot::BootReport;
use thaw::clone::CloneReport;
use thaw::control::{ExecOptions, VmInfo};
use thaw::pool::{PoolConfig, PoolStatus};
use thaw::profile::BootOptions;
use thaw::reset::{ResetOptions, ResetReport, ResetRequest};
use thaw::restore::{RestoreOptions, RestoreRequest};
use thaw::snapshot::catalog::SnapshotInfo;
use thaw::snapshot::take::{SnapshotOptions, SnapshotReport, SnapshotRequest};
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

pub async fn boot(d: &Client, options: &BootOptions) -> Result<BootReport> {
    let body = serde_json::to_value(options)?;
    call(d, "POST", "/v1/vms", Some(body)).await
}

pub async fn exec(
    d: &Client,
    name: &VmName,
    command: &[String],
    timeout: u64,
) -> Result<ExecOutput> {
    let body = serde_json::to_value(ExecOptions {
        command: command.to_vec(),
        timeout_secs: Some(timeout),
    })?;
    call(d, "POST", &format!("/v1/vms/{name}/exec"), Some(body)).await
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

/// A push or pull as the daemon's operation: started, then polled until it ends
/// (its phases on stderr unless `json`).
pub async fn transfer(
    d: &Client,
    pull: bool,
    tag: &SnapshotTag,
    remote: &str,
    json: bool,
) -> Result<thaw::store::TransferReport> {
    let verb = if pull { "pull" } else { "push" };
    let body = serde_json::json!({ "remote": remote });
    let started: Value = call(
        d,
        "POST",
        &format!("/v1/snapshots/{tag}/{verb}"),
        Some(body),
    )
    .await?;
    let id = started["operation"]
        .as_str()
        .context("the daemon answered no operation id")?
        .to_owned();
    let mut phase = String::new();
    loop {
        let op: Value = call(d, "GET", &format!("/v1/operations/{id}"), None).await?;
        match op["state"].as_str() {
            Some("done") => {
                return serde_json::from_value(op["report"].clone())
                    .context("unexpected report from the daemon");
            }
            Some("failed") => bail!("{}", op["error"].as_str().unwrap_or("the operation failed")),
            _ => {}
        }
        let now = op["phase"].as_str().unwrap_or_default();
        if !json && !now.is_empty() && now != phase {
            eprintln!("thaw: {verb} {tag} (thawd, {id}): {now}");
            phase = now.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `GET /v1/vms/{name}/logs[?follow=true]`: the console as it arrives.
pub async fn console(
    d: &Client,
    name: &VmName,
    follow: bool,
    each: &mut dyn FnMut(&[u8], bool) -> Result<()>,
) -> Result<()> {
    let path = format!(
        "/v1/vms/{name}/logs{}",
        if follow { "?follow=true" } else { "" }
    );
    let mut whole = Vec::new();
    let mut failed = None;
    d.stream(&path, |data| {
        if !follow {
            whole.extend_from_slice(data);
            return true;
        }
        match each(data, false) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })
    .await?;
    if let Some(e) = failed {
        return Err(e);
    }
    match follow {
        true => Ok(()),
        false => each(&whole, true),
    }
}

/// `GET /v1/vms/{name}/screenshot`, written to `file` here.
pub async fn screenshot(
    d: &Client,
    name: &VmName,
    file: &std::path::Path,
) -> Result<thaw::screen::Screenshot> {
    let mut png = Vec::new();
    d.stream(&format!("/v1/vms/{name}/screenshot"), |data| {
        png.extend_from_slice(data);
        true
    })
    .await?;
    let (width, height) =
        thaw::screen::png_size(&png).context("the daemon's screenshot is not a PNG image")?;
    std::fs::write(file, &png).with_context(|| format!("could not write {}", file.display()))?;
    Ok(thaw::screen::Screenshot {
        name: name.clone(),
        file: file.to_owned(),
        width,
        height,
        bytes: png.len() as u64,
    })
}

/// `POST /v1/vms/{name}/type` (text) or `/key` (combinations).
pub async fn keys(
    d: &Client,
    name: &VmName,
    what: Result<&str, &[String]>,
) -> Result<thaw::screen::KeysSent> {
    let (route, body) = match what {
        Ok(text) => ("type", serde_json::json!({ "text": text })),
        Err(combos) => ("key", serde_json::json!({ "keys": combos })),
    };
    call(d, "POST", &format!("/v1/vms/{name}/{route}"), Some(body)).await
}
