//! Serving the API's connections: HTTP/1.1 on the Unix socket and, when asked, on TCP
//! (with TLS, [`crate::tls`]; tokens are the TCP router's, [`crate::auth`]), with a deadline for
//! every request head, and JSON error bodies also on the answers HTTP itself makes.
//!
//! - **Deadlines.** A connection must send a whole request head within
//!   [`ServeConfig::header_timeout`](crate::ServeConfig) of the moment the daemon
//!   starts waiting for it: at connect, and again after each answer on a kept-alive
//!   connection. One that sends half a head, or sits idle between requests, is closed.
//!   (hyper's header-read timer, which runs only with a timer installed, covers both.)
//!   A body must arrive within the same time ([`BodyTimeout`], a 408).
//! - **Error bodies.** hyper answers a head it cannot take (431: too large or too many
//!   headers, 400: not HTTP/1.1, 414: URI too long) itself, before any handler runs, with
//!   an empty body. [`JsonErrors`] gives those answers the API's `{"error": ...}` body.
//!   Every answer of the API's own that is an error has a JSON body, so an error answer
//!   with `content-length: 0` can only be one of hyper's.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;

/// How long a request's body may take to arrive; a request extension read by the
/// JSON extractor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyTimeout(pub Duration);

/// Where connections come from: the Unix socket, or TCP (with TLS when an acceptor is
/// given). Each has its own router (the TCP one checks tokens).
pub(crate) enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener, Option<TlsAcceptor>),
}

impl Listener {
    /// The next connection, as a stream that is not yet through its TLS handshake.
    async fn accept(&self) -> io::Result<Accepted> {
        Ok(match self {
            Listener::Unix(l) => Accepted::Unix(l.accept().await?.0),
            Listener::Tcp(l, tls) => {
                let (stream, _) = l.accept().await?;
                let _ = stream.set_nodelay(true);
                Accepted::Tcp(stream, tls.clone())
            }
        })
    }
}

enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, Option<TlsAcceptor>),
}

/// Serves each listener with its router until `shutdown` completes, then waits for the
/// open connections to finish the requests they are in (idle ones are closed at once).
pub(crate) async fn serve(
    listeners: Vec<(Listener, axum::Router)>,
    header_timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let listeners: Vec<_> = listeners
        .into_iter()
        .map(|(l, router)| {
            (
                l,
                router.layer(axum::Extension(BodyTimeout(header_timeout))),
            )
        })
        .collect();
    loop {
        let accepts = listeners
            .iter()
            .map(|(l, router)| Box::pin(async move { (l.accept().await, router) }));
        let (accepted, router) = tokio::select! {
            (first, _, _) = futures_select_all(accepts) => first,
            () = &mut shutdown => break,
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_failed(e).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let served = match accepted {
                Accepted::Unix(stream) => {
                    let io = TokioIo::new(JsonErrors::new(stream));
                    watcher.watch(builder.serve_connection(io, service)).await
                }
                Accepted::Tcp(stream, None) => {
                    let io = TokioIo::new(JsonErrors::new(stream));
                    watcher.watch(builder.serve_connection(io, service)).await
                }
                Accepted::Tcp(stream, Some(tls)) => {
                    // The handshake has the request head's deadline: a client that
                    // opens a connection and says nothing is closed like any other.
                    let stream =
                        match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                return;
                            }
                        };
                    let io = TokioIo::new(JsonErrors::new(stream));
                    watcher.watch(builder.serve_connection(io, service)).await
                }
            };
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    drop(listeners);
    graceful.shutdown().await;
}

/// The first of several futures to complete (they are all accept loops' next accept:
/// cancelling the others loses nothing).
async fn futures_select_all<F: std::future::Future + Unpin>(
    futures: impl IntoIterator<Item = F>,
) -> (F::Output, usize, ()) {
    let mut futures: Vec<F> = futures.into_iter().collect();
    std::future::poll_fn(move |cx| {
        for (i, f) in futures.iter_mut().enumerate() {
            if let Poll::Ready(out) = Pin::new(f).poll(cx) {
                return Poll::Ready((out, i, ()));
            }
        }
        Poll::Pending
    })
    .await
}

/// Out of file descriptors (say): wait a moment for connections to close, as hyper's
/// own server did, instead of spinning.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("could not accept a connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The connection's stream, with hyper's own error answers given a JSON body (see
/// the module doc).
pub(crate) struct JsonErrors<T> {
    io: T,
    /// An answer written in place of hyper's, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> JsonErrors<T> {
    pub fn new(io: T) -> JsonErrors<T> {
        JsonErrors { io, pending: None }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes out the rest of a replaced answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = with_json_body(buf) {
            self.pending = Some((answer, 0));
            // Whatever does not go out now goes out on the next write or flush.
            if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    // Not vectored: hyper then hands each answer's head to one `poll_write`, where
    // `with_json_body` can see it whole.
}

/// If `written` is exactly one error answer's head with an empty body (hyper's own,
/// see the module doc), the same answer with an `{"error": ...}` body.
fn with_json_body(written: &[u8]) -> Option<Vec<u8>> {
    let rest = written.strip_prefix(b"HTTP/1.1 ")?;
    let code: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    let status = axum::http::StatusCode::from_u16(code).ok()?;
    let head_end = written.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let empty = written
        .split(|&b| b == b'\n')
        .any(|line| line.eq_ignore_ascii_case(b"content-length: 0\r"));
    if !status.is_client_error() && !status.is_server_error() || head_end != written.len() || !empty
    {
        return None;
    }
    let message = match code {
        431 => "the request's headers are too large or too many".to_owned(),
        414 => "the request's URI is too long".to_owned(),
        400 => "the request is not valid HTTP/1.1".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("the request was refused")
            .to_owned(),
    };
    let body = serde_json::json!({ "error": message }).to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    Some([head.as_bytes(), body.as_bytes()].concat())
}

#[cfg(test)]
mod tests {
    use super::with_json_body;

    #[test]
    fn only_empty_error_answers_get_a_json_body() {
        let hypers = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 22:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(with_json_body(hypers).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("headers are too large"));

        for kept in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n",
            b"{\"error\": \"x\"}",
        ] {
            assert_eq!(
                with_json_body(kept),
                None,
                "{:?}",
                String::from_utf8_lossy(kept)
            );
        }
    }
}
