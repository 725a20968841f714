//! The streaming routes: a command whose output streams as NDJSON frames
//! (`POST /v1/vms/{name}/exec/stream`), and files up and down
//! (`PUT`/`GET /v1/vms/{name}/files?path=`), each moved in chunks, never whole.

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use futures_util::TryStreamExt;
use serde::Deserialize;
use thaw::guestio::exec::{self as gexec, ExecEvent, ExecSpec, StreamExecError};
use thaw::guestio::files::{self, Copied, CopyError};
use thaw::vm::VmState;
use thaw::VmName;
use tokio::sync::mpsc;

use crate::error::{ApiError, HttpStatus};
use crate::extract::{ApiJson, Named};
use crate::operations::Ctx;

/// A command to run with its output streamed: `POST /v1/vms/{name}/exec/stream`'s body.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"command": ["/bin/sh", "-c", "echo hi; sleep 2; echo there"], "env": ["K=V"], "cwd": "/tmp", "timeout_secs": 30}))]
pub struct ExecStreamOptions {
    /// The command and its arguments (not empty).
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs added to the environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// The guest directory it runs in (must exist).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Seconds it may run (default 60); then the guest process is killed.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Its stdin, base64 (copied to the guest before it starts); none: empty.
    #[serde(default)]
    pub stdin_base64: Option<String>,
}

/// One NDJSON frame of a streamed command: exactly one field per line.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ExecFrame {
    /// A piece of stdout, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// A piece of stderr, base64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// The last frame when the command ran: its exit code (128 + a signal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The last frame when it failed: why, on one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `error`: true when the timeout ended it (the guest process was killed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
}

impl HttpStatus for StreamExecError {
    fn status(&self) -> StatusCode {
        match self {
            StreamExecError::Vm(e) => e.status(),
            StreamExecError::Agent(e) => e.status(),
            StreamExecError::BadEnv(_) | StreamExecError::Empty | StreamExecError::NoDir(_) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl HttpStatus for CopyError {
    fn status(&self) -> StatusCode {
        match self {
            CopyError::Vm(e) => e.status(),
            CopyError::NotFound(_) | CopyError::NoParent(_) => StatusCode::NOT_FOUND,
            CopyError::IsDir(_) | CopyError::NotAbsolute(_) => StatusCode::BAD_REQUEST,
            CopyError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn frame(f: ExecFrame) -> Bytes {
    let mut line = serde_json::to_vec(&f).expect("a frame serializes");
    line.push(b'\n');
    Bytes::from(line)
}

fn data_frame(ev: ExecEvent) -> Bytes {
    let b64 = |b: Vec<u8>| Some(base64::engine::general_purpose::STANDARD.encode(b));
    frame(match ev {
        ExecEvent::Stdout(b) => ExecFrame {
            stdout: b64(b),
            ..empty()
        },
        ExecEvent::Stderr(b) => ExecFrame {
            stderr: b64(b),
            ..empty()
        },
    })
}

fn empty() -> ExecFrame {
    ExecFrame {
        stdout: None,
        stderr: None,
        exit_code: None,
        error: None,
        timed_out: None,
    }
}

/// A body fed from a channel of chunks.
fn channel_body(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Body {
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Run a command in the guest, its output streamed as it is written
///
/// The answer is `application/x-ndjson`: one JSON object per line, `{"stdout": b64}`
/// and `{"stderr": b64}` as the guest writes them, then `{"exit_code": N}`, or
/// `{"error": "...", "timed_out": bool}` when it could not finish. A client that
/// hangs up ends the guest command.
#[utoipa::path(
    post,
    path = "/v1/vms/{name}/exec/stream",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name; anything else than a valid name is a 400.")
    ),
    request_body = ExecStreamOptions,
    responses(
        (status = 200, description = "The command runs: NDJSON frames, one per line.", body = ExecFrame, content_type = "application/x-ndjson"),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 409, response = crate::responses::Conflict),
        crate::responses::BodyErrors,
        crate::responses::Always
    )
)]
pub(crate) async fn exec_stream(
    State(d): State<Ctx>,
    Named(name): Named<VmName>,
    ApiJson(body): ApiJson<ExecStreamOptions>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    if body.command.is_empty() || body.command[0].is_empty() {
        return Err(bad("command must not be empty".into()));
    }
    if let Some(e) = body.env.iter().find(|e| !gexec::valid_env(e)) {
        return Err(bad(format!("env: {e:?} is not KEY=VALUE")));
    }
    let stdin = match &body.stdin_base64 {
        Some(b) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| bad(format!("stdin_base64 is not base64: {e}")))?,
        ),
        None => None,
    };
    VmState::load_running(&d.home, &name).map_err(ApiError::from_op)?;
    let spec = ExecSpec {
        command: body.command,
        env: body.env,
        cwd: body.cwd,
        timeout: std::time::Duration::from_secs(body.timeout_secs.unwrap_or(60)),
    };
    let (events, mut rx) = mpsc::channel::<ExecEvent>(4);
    let (frames, body_rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut input = stdin.as_deref();
        let input = input
            .as_mut()
            .map(|s| s as &mut (dyn tokio::io::AsyncRead + Unpin + Send));
        let run = gexec::exec(&d.home, &name, &spec, input, events);
        let out = frames.clone();
        // The client going away (its body dropped) ends the command: rx is dropped,
        // and the exec sees its sender closed.
        let forward = async move {
            loop {
                tokio::select! {
                    ev = rx.recv() => {
                        let Some(ev) = ev else { break };
                        if out.send(Ok(data_frame(ev))).await.is_err() {
                            break;
                        }
                    }
                    () = out.closed() => break,
                }
            }
        };
        let (result, ()) = tokio::join!(run, forward);
        let last = match result {
            Ok(code) => ExecFrame {
                exit_code: Some(code),
                ..empty()
            },
            Err(e) => {
                tracing::info!(vm = %name, "exec: {}", thaw::one_line(&e));
                ExecFrame {
                    timed_out: Some(matches!(e, StreamExecError::TimedOut(_))),
                    error: Some(thaw::one_line(&e)),
                    ..empty()
                }
            }
        };
        let _ = frames.send(Ok(frame(last))).await;
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        channel_body(body_rx),
    )
        .into_response())
}

#[derive(Debug)]
struct FileQuery {
    path: String,
    mode: Option<u32>,
    /// The file's name when `path` is a directory (PUT).
    name: Option<String>,
}

fn file_query(raw: Option<String>) -> Result<FileQuery, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let (mut path, mut mode, mut name) = (None, None, None);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "path" => path = Some(v.into_owned()),
            "mode" => {
                mode = Some(
                    u32::from_str_radix(&v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| bad(format!("mode {v:?} is not octal 0..7777")))?,
                )
            }
            "name" if !v.is_empty() && !v.contains('/') && v != "." && v != ".." => {
                name = Some(v.into_owned())
            }
            "name" => return Err(bad(format!("name {v:?} is not a file name"))),
            other => return Err(bad(format!("unknown query parameter {other:?}"))),
        }
    }
    let path = path.ok_or_else(|| bad("the query must name the guest file: ?path=/x".into()))?;
    if !path.starts_with('/') {
        return Err(bad(format!("path {path:?} is not absolute")));
    }
    Ok(FileQuery { path, mode, name })
}

/// Write a file in the guest
///
/// The body is the file's bytes, streamed to the guest 1 MiB at a time; `mode` is
/// octal (default 644). A path that is a directory takes the file as `name` in it
/// (without `name`: 400).
#[utoipa::path(
    put,
    path = "/v1/vms/{name}/files",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name."),
        ("path" = String, Query, description = "The guest file (absolute)."),
        ("mode" = Option<String>, Query, description = "Its mode, octal (default 644)."),
        ("name" = Option<String>, Query, description = "The file's name if path is a directory."),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Written.", body = CopiedDoc),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        (status = 507, description = "The guest's disk is full (no partial file is left).", body = crate::answer::Error),
        crate::responses::Always
    )
)]
pub(crate) async fn put_file(
    State(d): State<Ctx>,
    Named(name): Named<VmName>,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<(StatusCode, Json<Copied>), ApiError> {
    let q = file_query(raw)?;
    let mut agent = files::connect(&d.home, &name)
        .await
        .map_err(ApiError::from_op)?;
    let path = files::target(&mut agent, &q.path, q.name.as_deref().unwrap_or(""))
        .await
        .map_err(ApiError::from_op)?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    let copied = files::upload(&mut agent, &mut reader, &path, q.mode.unwrap_or(0o644))
        .await
        .map_err(ApiError::from_op)?;
    tracing::info!(vm = %name, path = %path, bytes = copied.bytes, "file written");
    Ok((StatusCode::CREATED, Json(copied)))
}

/// [`Copied`] in the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CopiedDoc {
    /// Bytes copied.
    bytes: u64,
    /// The file's mode (as a number; octal 644 is 420).
    mode: u32,
}

/// Read a file from the guest
///
/// The body is the file's bytes, streamed from the guest 1 MiB at a time, with its
/// length in `content-length` and its mode (octal) in `x-thaw-mode`.
#[utoipa::path(
    get,
    path = "/v1/vms/{name}/files",
    tag = "thawd",
    params(
        ("name" = VmName, Path, description = "The VM's name."),
        ("path" = String, Query, description = "The guest file (absolute)."),
    ),
    responses(
        (status = 200, description = "The file's bytes.", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 400, response = crate::responses::BadRequest),
        (status = 404, response = crate::responses::NotFound),
        crate::responses::Always
    )
)]
pub(crate) async fn get_file(
    State(d): State<Ctx>,
    Named(name): Named<VmName>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let q = file_query(raw)?;
    if q.mode.is_some() || q.name.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "mode and name are for PUT only",
        ));
    }
    let mut agent = files::connect(&d.home, &name)
        .await
        .map_err(ApiError::from_op)?;
    let (mode, size) = files::stat(&mut agent, &q.path)
        .await
        .map_err(ApiError::from_op)?;
    let (mut writer, reader) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        if let Err(e) = files::read_into(&mut agent, &q.path, &mut writer).await {
            tracing::warn!(vm = %name, "reading {}: {}", q.path, thaw::one_line(&e));
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::HeaderName::from_static("x-thaw-mode"),
                format!("{mode:o}"),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(reader)),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_queries_are_checked() {
        let q = file_query(Some("path=%2Ftmp%2Fa%20b&mode=750".into())).unwrap();
        assert_eq!(q.path, "/tmp/a b");
        assert_eq!(q.mode, Some(0o750));
        for bad in [
            "",
            "path=rel",
            "path=/x&mode=9",
            "path=/x&mode=77777",
            "path=/x&x=1",
            "path=/x&name=a/b",
            "path=/x&name=..",
        ] {
            assert!(file_query(Some(bad.into())).is_err(), "{bad}");
        }
    }
}
