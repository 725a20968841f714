//! A client for the daemon's API: HTTP/1.1 over its Unix socket, or over TCP with TLS
//! (rustls) and a bearer token; one connection per request. The CLI uses it when a
//! daemon answers on its home's socket, or when one is configured with Docker's habits:
//! `THAW_HOST` (`unix:///path/thawd.sock` or `https://HOST:PORT`), `THAW_TOKEN` (or
//! `THAW_TOKEN_FILE`), `THAW_CA` (a PEM file of the CA that signed the daemon's
//! certificate; else the system's roots).
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
//! // Or a remote one: THAW_HOST=https://build-7:7443 THAW_TOKEN=thaw_... THAW_CA=ca.pem
//! if let Some(client) = Client::from_env(None)? {
//!     client.check().await?;
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

/// How long [`Client::connect`] waits for the daemon's health answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a configured daemon gets to accept a connection and finish the TLS
/// handshake, and to answer [`Client::check`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a daemon listens: `unix:///path/thawd.sock`, `https://HOST:PORT`, or
/// `http://HOST:PORT` (a daemon started with `--insecure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
    Tcp { tls: bool, host: String, port: u16 },
}

/// A `THAW_HOST` / `-H` value that is not a daemon's address.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not unix:///PATH or https://HOST:PORT: {why}")]
pub struct HostError {
    value: String,
    why: &'static str,
}

impl FromStr for Host {
    type Err = HostError;

    fn from_str(value: &str) -> Result<Host, HostError> {
        let bad = |why| HostError {
            value: value.to_owned(),
            why,
        };
        if let Some(path) = value.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("the socket's path must be absolute (unix:///path)"));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        let (tls, rest) = match (
            value.strip_prefix("https://"),
            value.strip_prefix("http://"),
        ) {
            (Some(rest), _) => (true, rest),
            (_, Some(rest)) => (false, rest),
            _ => return Err(bad("unknown scheme")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('@') || rest.contains('?') {
            return Err(bad("only a host and a port, no path"));
        }
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("no host"));
        }
        ServerName::try_from(host.to_owned())
            .map_err(|_| bad("the host is not a name or an IP address"))?;
        Ok(Host::Tcp {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Unix(path) => write!(f, "unix://{}", path.display()),
            Host::Tcp { tls, host, port } => {
                let scheme = if *tls { "https" } else { "http" };
                match host.contains(':') {
                    true => write!(f, "{scheme}://[{host}]:{port}"),
                    false => write!(f, "{scheme}://{host}:{port}"),
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to thawd at {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach thawd at {host}")]
    Unreachable {
        host: Host,
        #[source]
        source: std::io::Error,
    },
    #[error("thawd at {host} did not answer within {} s", CONNECT_TIMEOUT.as_secs())]
    Timeout { host: Host },
    #[error("TLS with thawd at {host} failed (THAW_CA names the CA that signed its certificate)")]
    Tls {
        host: Host,
        #[source]
        source: std::io::Error,
    },
    #[error("thawd at {host} refused the token (set THAW_TOKEN or THAW_TOKEN_FILE): {message}")]
    Unauthorized { host: Host, message: String },
    #[error("thawd at {host} is not healthy: {status} {body}")]
    Unhealthy {
        host: Host,
        status: u16,
        body: Value,
    },
    /// `var` is `THAW_HOST` or `--host`.
    #[error("{var}={error}")]
    Host { var: &'static str, error: HostError },
    #[error("cannot read {var}={path}")]
    ReadFile {
        var: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{var} is empty")]
    EmptyToken { var: &'static str },
    #[error("THAW_CA={path} holds no usable CERTIFICATE: {why}")]
    Ca { path: PathBuf, why: String },
    #[error("a token is sent only over TLS or a Unix socket, not to {host}: use https://")]
    TokenInClear { host: Host },
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
    #[error("{message}")]
    Refused { status: u16, message: String },
}

/// A daemon: where it is, the token to show it, how to check its certificate.
#[derive(Clone)]
pub struct Client {
    host: Host,
    token: Option<String>,
    tls: Option<TlsConnector>,
}

impl fmt::Debug for Client {
    /// The host only: never the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
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
        let client = Client::unix(socket);
        match tokio::time::timeout(PROBE_TIMEOUT, client.request("GET", "/v1/health", None)).await {
            Ok(Ok((200, v))) if v["status"] == "ok" => Some(client),
            _ => None,
        }
    }

    /// A client for the daemon on `socket` (not contacted yet).
    pub fn unix(socket: &Path) -> Client {
        Client {
            host: Host::Unix(socket.to_owned()),
            token: None,
            tls: None,
        }
    }

    /// A client for the daemon at `host` showing `token`; for `https://`, the
    /// daemon's certificate must be signed by the CA in `ca` (PEM), or by one of the
    /// system's roots when `ca` is `None`. Nothing is contacted yet.
    ///
    /// # Errors
    /// `ca` cannot be read or holds no certificate; a token would go in clear text.
    pub fn new(
        host: Host,
        token: Option<String>,
        ca: Option<&Path>,
    ) -> Result<Client, ClientError> {
        let tls = match &host {
            Host::Tcp { tls: true, .. } => Some(connector(ca)?),
            Host::Tcp {
                tls: false,
                host: name,
                ..
            } if token.is_some() && !is_loopback(name) => {
                return Err(ClientError::TokenInClear { host });
            }
            _ => None,
        };
        Ok(Client { host, token, tls })
    }

    /// The daemon the environment names, `flag` (`-H`) before `THAW_HOST`, with the
    /// token in `THAW_TOKEN` (or the file `THAW_TOKEN_FILE`) and the CA in `THAW_CA`;
    /// `None` when neither `flag` nor `THAW_HOST` is given (an empty `THAW_HOST` is
    /// unset).
    ///
    /// # Errors
    /// The host is not an address, a file cannot be read, the token is empty.
    pub fn from_env(flag: Option<&str>) -> Result<Option<Client>, ClientError> {
        let (var, value) = match flag {
            Some(v) => ("--host", v.to_owned()),
            None => match std::env::var("THAW_HOST") {
                Ok(v) if !v.is_empty() => ("THAW_HOST", v),
                _ => return Ok(None),
            },
        };
        let host: Host = value
            .parse()
            .map_err(|error| ClientError::Host { var, error })?;
        let token = match (
            std::env::var("THAW_TOKEN").ok().filter(|t| !t.is_empty()),
            std::env::var_os("THAW_TOKEN_FILE").filter(|f| !f.is_empty()),
        ) {
            (Some(token), _) => Some(token),
            (None, Some(file)) => {
                let path = PathBuf::from(file);
                let text =
                    std::fs::read_to_string(&path).map_err(|source| ClientError::ReadFile {
                        var: "THAW_TOKEN_FILE",
                        path: path.clone(),
                        source,
                    })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(ClientError::EmptyToken {
                        var: "THAW_TOKEN_FILE",
                    });
                }
                Some(token.to_owned())
            }
            (None, None) => None,
        };
        let ca = std::env::var_os("THAW_CA")
            .filter(|c| !c.is_empty())
            .map(PathBuf::from);
        Client::new(host, token, ca.as_deref()).map(Some)
    }

    /// Where the daemon is.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The daemon's socket, when it is on one.
    pub fn socket(&self) -> Option<&Path> {
        match &self.host {
            Host::Unix(path) => Some(path),
            Host::Tcp { .. } => None,
        }
    }

    /// Whether the daemon answers `GET /v1/health` with "ok" and takes the token.
    ///
    /// # Errors
    /// It cannot be reached, TLS fails, the token is refused, or it is not healthy;
    /// each names the host.
    pub async fn check(&self) -> Result<(), ClientError> {
        let (status, body) =
            match tokio::time::timeout(CONNECT_TIMEOUT, self.request("GET", "/v1/health", None))
                .await
            {
                Ok(answer) => answer?,
                Err(_) => {
                    return Err(ClientError::Timeout {
                        host: self.host.clone(),
                    })
                }
            };
        match status {
            200 if body["status"] == "ok" => Ok(()),
            401 => Err(ClientError::Unauthorized {
                host: self.host.clone(),
                message: body["error"].as_str().unwrap_or("401").to_owned(),
            }),
            _ => Err(ClientError::Unhealthy {
                host: self.host.clone(),
                status,
                body,
            }),
        }
    }

    /// Sends one request (`path` as it goes on the wire, percent-encoded) and returns
    /// the status and the JSON body (`null` when empty). Error statuses are not
    /// errors here: their body is `{"error": "..."}`.
    ///
    /// # Errors
    /// When the daemon cannot be reached, TLS fails, the exchange fails, or the answer
    /// is not JSON.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), ClientError> {
        let (status, answer) = self.open(method, path, body).await?;
        let bytes = answer.collect().await?.to_bytes();
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&bytes).map_err(|_| ClientError::NotJson {
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        })?;
        Ok((status, value))
    }

    /// Sends one request and returns the status and the body as it arrives (for the
    /// streams: `GET /v1/events`).
    ///
    /// # Errors
    /// When the daemon cannot be reached, TLS fails, or the exchange fails.
    pub async fn open(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Incoming), ClientError> {
        let req = self.build(method, path, body)?;
        let answer = exchange(self.dial().await?, req).await?;
        Ok((answer.status().as_u16(), answer.into_body()))
    }

    /// `GET path`, its body handed to `each` as it arrives (the streams: console logs)
    /// until it ends or `each` returns false.
    ///
    /// # Errors
    /// The daemon cannot be reached or refuses (the error is its message), or the stream
    /// breaks.
    pub async fn stream(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let (status, mut body) = self.open("GET", path, None).await?;
        if status != 200 {
            let bytes = body.collect().await?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = v["error"].as_str().map_or_else(
                || format!("thawd answered {status} to GET {path}"),
                str::to_owned,
            );
            return Err(ClientError::Refused { status, message });
        }
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                if !each(&data) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Follows `GET /v1/events`: calls `each` with every event (its JSON) until the
    /// daemon ends the stream or `each` returns false.
    ///
    /// # Errors
    /// The daemon cannot be reached or refuses (e.g. 401), or the stream breaks.
    pub async fn events(&self, mut each: impl FnMut(Value) -> bool) -> Result<(), ClientError> {
        let (status, mut body) = self.open("GET", "/v1/events", None).await?;
        if status != 200 {
            let bytes = body.collect().await?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let message = v["error"].as_str().map_or_else(
                || format!("thawd answered {status} to GET /v1/events"),
                str::to_owned,
            );
            return Err(ClientError::Refused { status, message });
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Some(json) = line.strip_prefix(b"data:") else {
                    continue;
                };
                let Ok(event) = serde_json::from_slice::<Value>(json.trim_ascii()) else {
                    continue;
                };
                if !each(event) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Sends one request with a streamed `body` (`content_type`) and returns the
    /// answer with its body unread, for the caller to stream (the exec stream, files).
    ///
    /// # Errors
    /// As [`Client::request`], but the body is not read here.
    pub async fn send_streamed<B>(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: B,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let head = self.build(method, path, None)?;
        let (mut parts, _) = head.into_parts();
        parts.headers.insert(
            CONTENT_TYPE,
            content_type
                .parse()
                .map_err(
                    |e: hyper::header::InvalidHeaderValue| ClientError::Request {
                        method: method.to_owned(),
                        path: path.to_owned(),
                        source: e.into(),
                    },
                )?,
        );
        let req = Request::from_parts(parts, body);
        let io = self.dial().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(sender.send_request(req).await?)
    }

    /// A fresh connection to the daemon (TLS done when it has TLS).
    async fn dial(&self) -> Result<Box<dyn Io>, ClientError> {
        match &self.host {
            Host::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        socket: socket.clone(),
                        source,
                    })?;
                Ok(Box::new(stream))
            }
            Host::Tcp { host, port, .. } => {
                let tcp = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::TcpStream::connect((host.as_str(), *port)),
                )
                .await
                .map_err(|_| self.timeout())?
                .map_err(|source| ClientError::Unreachable {
                    host: self.host.clone(),
                    source,
                })?;
                let _ = tcp.set_nodelay(true);
                let Some(tls) = &self.tls else {
                    return Ok(Box::new(tcp));
                };
                let name =
                    ServerName::try_from(host.clone()).expect("checked when the host was parsed");
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| self.timeout())?
                    .map_err(|source| ClientError::Tls {
                        host: self.host.clone(),
                        source,
                    })?;
                Ok(Box::new(stream))
            }
        }
    }

    fn timeout(&self) -> ClientError {
        ClientError::Timeout {
            host: self.host.clone(),
        }
    }

    fn build(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let request_err = |source| ClientError::Request {
            method: method.to_owned(),
            path: path.to_owned(),
            source,
        };
        let method_value =
            Method::from_bytes(method.as_bytes()).map_err(|e| request_err(e.into()))?;
        let authority = match &self.host {
            Host::Unix(_) => "thawd".to_owned(),
            Host::Tcp { host, port, .. } if host.contains(':') => format!("[{host}]:{port}"),
            Host::Tcp { host, port, .. } => format!("{host}:{port}"),
        };
        let mut builder = Request::builder()
            .method(method_value)
            .uri(path)
            .header(HOST, authority);
        if let Some(token) = &self.token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match &body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).expect("a JSON value serializes"))
            }
            None => Bytes::new(),
        };
        builder.body(Full::new(payload)).map_err(request_err)
    }
}

/// A connection to the daemon, whatever carries it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// One request on a fresh connection: the answer, its body still to come (the
/// connection ends with it).
async fn exchange<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A TLS connector trusting the CA in `ca` (PEM), or the system's roots.
fn connector(ca: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| match e {
                    rustls_pki_types::pem::Error::Io(source) => ClientError::ReadFile {
                        var: "THAW_CA",
                        path: path.to_owned(),
                        source,
                    },
                    other => ClientError::Ca {
                        path: path.to_owned(),
                        why: other.to_string(),
                    },
                })?
                .collect::<Result<_, _>>()
                .map_err(|e| ClientError::Ca {
                    path: path.to_owned(),
                    why: e.to_string(),
                })?;
            let ca_err = |why: String| ClientError::Ca {
                path: path.to_owned(),
                why,
            };
            if certs.is_empty() {
                return Err(ca_err("no CERTIFICATE in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
        }
        None => {
            // The system's roots; certificates it cannot parse are skipped, as
            // browsers do.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default protocol versions are supported")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_as_docker_writes_them() {
        assert_eq!(
            "unix:///run/thawd.sock".parse::<Host>().unwrap(),
            Host::Unix("/run/thawd.sock".into())
        );
        assert_eq!(
            "https://build-7:7443/".parse::<Host>().unwrap(),
            Host::Tcp {
                tls: true,
                host: "build-7".into(),
                port: 7443
            }
        );
        let v6: Host = "https://[::1]:7443".parse().unwrap();
        assert_eq!(v6.to_string(), "https://[::1]:7443");
        for bad in [
            "tcp://h:1",
            "unix://relative.sock",
            "https://h",
            "https://h:0",
            "https://h:99999",
            "https://:7443",
            "https://h:1/v1",
            "https://u@h:1",
            "h:1",
        ] {
            let err = bad.parse::<Host>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("{bad:?} is not")), "{err}");
        }
    }

    #[test]
    fn a_token_does_not_go_in_clear_text_off_the_host() {
        let remote: Host = "http://10.0.0.7:7000".parse().unwrap();
        assert!(matches!(
            Client::new(remote.clone(), Some("t".into()), None),
            Err(ClientError::TokenInClear { .. })
        ));
        assert!(Client::new(remote, None, None).is_ok());
        let lo: Host = "http://127.0.0.1:7000".parse().unwrap();
        assert!(Client::new(lo, Some("t".into()), None).is_ok());
    }
}
