//! A client for the daemon's API: HTTP/1.1 over its Unix socket, one connection per
//! request. The CLI uses it when a daemon answers.
//!
//! ```no_run
//! # async fn demo() -> Result<(), thaw_daemon::client::ClientError> {
//! use thaw_daemon::client::Client;
//! let home = thaw::Home::from_env();
//! if let Some(client) = Client::connect(&thaw_daemon::default_socket(&home)) {
//!     let (status, vms) = client.request("GET", "/v1/vms", None).await?;
//!     assert_eq!(status, 200);
//!     println!("{vms}");
//! }
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// How long [`Client::connect`] waits for the daemon's health answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to thawd at {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid request {method} {path}")]
    Request {
        method: String,
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("the HTTP exchange with thawd failed")]
    Http(#[from] hyper::Error),
    #[error("thawd answered {status} with a body that is not JSON: {body}")]
    NotJson { status: u16, body: String },
}

/// A daemon that answered on its socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon on `socket`, or `None` when no daemon answers
    /// `GET /v1/health` there. Blocking (a few milliseconds); callable from inside or
    /// outside an async runtime.
    pub fn connect(socket: &Path) -> Option<Client> {
        let socket = socket.to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(Client::connect_async(&socket))
        })
        .join()
        .ok()
        .flatten()
    }

    /// [`Client::connect`] for async callers.
    pub async fn connect_async(socket: &Path) -> Option<Client> {
        if !socket.exists() {
            return None;
        }
        let client = Client {
            socket: socket.to_owned(),
        };
        match tokio::time::timeout(PROBE_TIMEOUT, client.request("GET", "/v1/health", None)).await {
            Ok(Ok((200, v))) if v["status"] == "ok" => Some(client),
            _ => None,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request (`path` as it goes on the wire, percent-encoded) and returns
    /// the status and the JSON body (`null` when empty). Error statuses are not
    /// errors here: their body is `{"error": "..."}`.
    ///
    /// # Errors
    /// When the socket cannot be reached, the exchange fails, or the answer is not JSON.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), ClientError> {
        let request_err = |source| ClientError::Request {
            method: method.to_owned(),
            path: path.to_owned(),
            source,
        };
        let method_value =
            Method::from_bytes(method.as_bytes()).map_err(|e| request_err(e.into()))?;
        let mut builder = Request::builder()
            .method(method_value)
            .uri(path)
            .header(HOST, "thawd");
        let payload = match &body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("a JSON value serializes"))
            }
            None => Bytes::new(),
        };
        let req = builder.body(Full::new(payload)).map_err(request_err)?;

        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        drop(sender);
        let _ = conn.await;
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&bytes).map_err(|_| ClientError::NotJson {
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        })?;
        Ok((status, value))
    }
}
