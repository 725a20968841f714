//! The same operations through a running daemon (`thaw serve`): requests on its Unix
//! socket, replies read back into the library's report types.

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::de::DeserializeOwned;
use serde_json::Value;
use thaw::boot::BootReport;
use thaw::clone::CloneReport;
use thaw::control::VmInfo;
use thaw::guestio::exec::{ExecEvent, ExecSpec, StreamExecError};
use thaw::guestio::files::Copied;
use thaw::pool::{PoolConfig, PoolStatus};
use thaw::profile::BootOptions;
use thaw::reset::{ResetOptions, ResetReport, ResetRequest};
use thaw::restore::{RestoreOptions, RestoreRequest};
use thaw::snapshot::catalog::SnapshotInfo;
use thaw::snapshot::take::{SnapshotOptions, SnapshotReport, SnapshotRequest};
use thaw::{SnapshotTag, VmName};
use thaw_daemon::client::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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

/// `POST /v1/vms/{name}/exec/stream`: stdin (read whole here) goes in the body, the
/// NDJSON frames of the answer go to `out` as they come.
pub async fn exec_stream(
    d: &Client,
    name: &VmName,
    spec: &ExecSpec,
    stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    out: mpsc::Sender<ExecEvent>,
) -> Result<i32> {
    let stdin_base64 = match stdin {
        Some(src) => {
            let mut bytes = Vec::new();
            src.read_to_end(&mut bytes)
                .await
                .context("could not read stdin")?;
            Some(B64.encode(bytes))
        }
        None => None,
    };
    let body = serde_json::json!({
        "command": spec.command,
        "env": spec.env,
        "cwd": spec.cwd,
        "timeout_secs": spec.timeout.as_secs(),
        "stdin_base64": stdin_base64,
    });
    let path = format!("/v1/vms/{name}/exec/stream");
    let payload = Full::new(Bytes::from(serde_json::to_vec(&body)?));
    let resp = d
        .send_streamed("POST", &path, "application/json", payload)
        .await?;
    let mut body = refused(resp).await?;
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // A reader that went away (thaw interrupted) hangs up: thawd kills the command.
        let frame = tokio::select! {
            f = body.frame() => f,
            () = out.closed() => bail!("the reader of the output went away"),
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let v: Value =
                serde_json::from_slice(&line).context("thawd sent a frame that is not JSON")?;
            let decode = |s: &Value| B64.decode(s.as_str().unwrap_or_default());
            if let Some(b) = v.get("stdout") {
                out.send(ExecEvent::Stdout(decode(b)?)).await.ok();
            } else if let Some(b) = v.get("stderr") {
                out.send(ExecEvent::Stderr(decode(b)?)).await.ok();
            } else if let Some(code) = v["exit_code"].as_i64() {
                return Ok(code as i32);
            } else if let Some(e) = v["error"].as_str() {
                if v["timed_out"] == true {
                    return Err(StreamExecError::TimedOut(spec.timeout).into());
                }
                bail!("{e}");
            }
        }
    }
    bail!("thawd ended the stream before the command ended")
}

/// The body of a success, or the daemon's `{"error"}` as the error.
pub(crate) async fn refused(resp: hyper::Response<Incoming>) -> Result<Incoming> {
    let status = resp.status().as_u16();
    if status < 400 {
        return Ok(resp.into_body());
    }
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    bail!(
        "{}",
        v["error"]
            .as_str()
            .unwrap_or("the daemon refused the request")
    )
}

fn files_path(name: &VmName, path: &str, put: Option<(u32, &str)>) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("path", path);
    if let Some((mode, file_name)) = put {
        q.append_pair("mode", &format!("{mode:o}"));
        if !file_name.is_empty() {
            q.append_pair("name", file_name);
        }
    }
    format!("/v1/vms/{name}/files?{}", q.finish())
}

/// `PUT /v1/vms/{name}/files`: `src` streamed as the body, 1 MiB at a time.
pub async fn upload(
    d: &Client,
    name: &VmName,
    src: &mut (dyn AsyncRead + Unpin + Send),
    path: &str,
    file_name: &str,
    mode: u32,
) -> Result<Copied> {
    // A guest directory takes the file under its own name, as locally.
    let target = files_path(name, path, Some((mode, file_name)));
    let bytes = send_reader(d, "PUT", &target, src).await?;
    serde_json::from_slice(&bytes).context("unexpected reply from the daemon")
}

/// Sends `src` as the streamed body of `method target`, 1 MiB at a time, and answers
/// the daemon's reply body (a refusal is the error).
pub(crate) async fn send_reader(
    d: &Client,
    method: &str,
    target: &str,
    src: &mut (dyn AsyncRead + Unpin + Send),
) -> Result<Bytes> {
    let (tx, rx) = mpsc::channel::<std::io::Result<Frame<Bytes>>>(2);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let feed = async move {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match src.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = Frame::data(Bytes::copy_from_slice(&buf[..n]));
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    };
    let (resp, ()) = tokio::join!(
        d.send_streamed(method, target, "application/octet-stream", body),
        feed
    );
    let body = refused(resp?).await?;
    Ok(body.collect().await?.to_bytes())
}

/// `GET /v1/vms/{name}/files`: the body streamed into `dst`.
pub async fn download(
    d: &Client,
    name: &VmName,
    path: &str,
    dst: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<Copied> {
    let target = files_path(name, path, None);
    let resp = d
        .send_streamed(
            "GET",
            &target,
            "application/octet-stream",
            Empty::<Bytes>::new(),
        )
        .await?;
    let mode = resp
        .headers()
        .get("x-thaw-mode")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .unwrap_or(0o644);
    let mut body = refused(resp).await?;
    let bytes = receive(&mut body, dst, None, "copy").await?;
    dst.flush().await?;
    Ok(Copied { bytes, mode })
}

/// Writes the daemon's streamed reply `body` (`what`: the copy, the export) into `dst`
/// (the file `dst_path`, when it is one, named in a write error); answers the bytes
/// written.
pub(crate) async fn receive(
    body: &mut Incoming,
    dst: &mut (dyn AsyncWrite + Unpin + Send),
    dst_path: Option<&std::path::Path>,
    what: &str,
) -> Result<u64> {
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("the {what} from thawd broke off"))?;
        if let Ok(data) = frame.into_data() {
            bytes += data.len() as u64;
            let written = dst.write_all(&data).await;
            match dst_path {
                Some(p) => written.with_context(|| format!("cannot write {}", p.display()))?,
                None => written?,
            }
        }
    }
    Ok(bytes)
}

pub async fn snapshot(d: &Client, req: &SnapshotRequest) -> Result<SnapshotReport> {
    let body = serde_json::to_value(SnapshotOptions {
        tag: req.tag.to_string(),
        stop: req.stop,
        pin: req.pin,
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

/// `POST /v1/vms/{name}/park`: the daemon's answer (`Parked`: name, snapshot, park,
/// operation while the upload runs there).
pub async fn park(d: &Client, name: &VmName, remote: Option<&str>, wait: bool) -> Result<Value> {
    let body = serde_json::json!({ "remote": remote, "wait": wait });
    call(d, "POST", &format!("/v1/vms/{name}/park"), Some(body)).await
}

/// `POST /v1/wake`.
pub async fn wake(
    d: &Client,
    name: &VmName,
    from: Option<&str>,
    timeout_secs: u64,
) -> Result<Vec<CloneReport>> {
    let body = serde_json::json!({ "name": name, "from": from, "timeout_secs": timeout_secs });
    call(d, "POST", "/v1/wake", Some(body)).await
}
