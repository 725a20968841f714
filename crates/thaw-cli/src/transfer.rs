//! `thaw export`, `import`, `inspect` and `up` through a daemon (`THAW_HOST`, `-H`):
//! the export file is streamed from the daemon into a file here, an import streams a
//! file from here as the request's body, `inspect` reads the VM or snapshot routes, and
//! `up` is the daemon's operation (`POST /v1/up`), polled until it ends.

use std::path::Path;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Empty;
use serde_json::Value;
use thaw::control::Inspection;
use thaw::{SnapshotTag, VmName};
use thaw_daemon::client::Client;

use crate::remote::{receive, refused, send_reader};

/// What an export wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exported {
    pub chunks: u64,
    pub bytes: u64,
}

/// `GET /v1/snapshots/{tag}/export` into `file` (through `FILE.part`, renamed once
/// whole: a broken transfer leaves no file that looks like an export).
pub(crate) async fn export(d: &Client, tag: &SnapshotTag, file: &Path) -> Result<Exported> {
    let resp = d
        .send_streamed(
            "GET",
            &format!("/v1/snapshots/{tag}/export"),
            "application/octet-stream",
            Empty::<Bytes>::new(),
        )
        .await?;
    let chunks = resp
        .headers()
        .get("x-thaw-chunks")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = refused(resp).await?;
    let part = part_of(file);
    let written = async {
        let mut out = tokio::fs::File::create(&part)
            .await
            .with_context(|| format!("cannot write {}", part.display()))?;
        let bytes = receive(&mut body, &mut out, Some(&part), "export").await?;
        out.sync_all().await?;
        std::fs::rename(&part, file).with_context(|| format!("cannot write {}", file.display()))?;
        Ok::<u64, anyhow::Error>(bytes)
    }
    .await;
    match written {
        Ok(bytes) => Ok(Exported { chunks, bytes }),
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

fn part_of(file: &Path) -> std::path::PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    file.with_file_name(name)
}

/// `POST /v1/snapshots/import` with `file` as the body, 1 MiB at a time.
pub(crate) async fn import(d: &Client, file: &Path) -> Result<SnapshotTag> {
    let mut src = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?;
    if src.metadata().await?.is_dir() {
        anyhow::bail!(
            "{} is a directory, not a file thaw export wrote",
            file.display()
        );
    }
    let bytes = send_reader(d, "POST", "/v1/snapshots/import", &mut src).await?;
    let v: Value = serde_json::from_slice(&bytes).context("unexpected reply from the daemon")?;
    serde_json::from_value(v["tag"].clone()).context("the daemon answered no tag")
}

/// A VM named `name` (`GET /v1/vms/{name}`), else a snapshot tagged `name`.
pub(crate) async fn inspect(d: &Client, name: &str) -> Result<Inspection> {
    if let Ok(vm) = name.parse::<VmName>() {
        let (status, value) = d.request("GET", &format!("/v1/vms/{vm}"), None).await?;
        if status == 200 {
            let live = serde_json::from_value(value).context("unexpected reply from the daemon")?;
            return Ok(Inspection::Vm { record: None, live });
        }
        if status != 404 {
            anyhow::bail!(
                "{}",
                value["error"]
                    .as_str()
                    .unwrap_or("the daemon refused the request")
            );
        }
    }
    let Ok(tag) = name.parse::<SnapshotTag>() else {
        anyhow::bail!("no VM or snapshot named {name:?}");
    };
    let (status, value) = d
        .request("GET", &format!("/v1/snapshots/{tag}"), None)
        .await?;
    match status {
        404 => anyhow::bail!("no VM or snapshot named {name:?}"),
        s if s >= 400 => anyhow::bail!(
            "{}",
            value["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
        ),
        _ => Ok(Inspection::Snapshot(
            serde_json::from_value(value).context("unexpected reply from the daemon")?,
        )),
    }
}

/// `POST /v1/up`, then `GET /v1/operations/{id}` until it ends (its phases on stderr
/// unless `json`).
pub(crate) async fn up(
    d: &Client,
    options: &thaw::up::UpOptions,
    json: bool,
) -> Result<thaw::up::UpReport> {
    let (status, started) = d
        .request("POST", "/v1/up", Some(serde_json::to_value(options)?))
        .await?;
    if status >= 400 {
        anyhow::bail!("{}", error_of(&started));
    }
    let id = started["operation"]
        .as_str()
        .context("the daemon answered no operation id")?
        .to_owned();
    let mut phase = String::new();
    loop {
        let (status, op) = d
            .request("GET", &format!("/v1/operations/{id}"), None)
            .await?;
        if status >= 400 {
            anyhow::bail!("{}", error_of(&op));
        }
        match op["state"].as_str() {
            Some("done") => {
                return serde_json::from_value(op["report"].clone())
                    .context("unexpected report from the daemon");
            }
            Some("failed") => anyhow::bail!("{}", error_of(&op)),
            _ => {}
        }
        let now = op["phase"].as_str().unwrap_or_default();
        if !json && !now.is_empty() && now != phase {
            eprintln!("thaw: up {} (thawd, {id}): {now}", options.boot.name);
            phase = now.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or("the daemon refused the request")
}
