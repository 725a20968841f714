//! thawd on TCP with TLS and bearer tokens (issue 21, part 1): a client off the Unix
//! socket boots a VM, runs a command in it and stops it through the TLS listener with a
//! token; a missing or wrong token gets 401 with one JSON line; `/healthz` answers
//! without one; plain HTTP to the TLS port and a TLS client without the CA get no
//! answer, and the daemon keeps answering; a listener anyone could use unknowingly is
//! refused at start in one line. Certificates are made by the test (rcgen).
//!
//! Bad input over the TLS port, each followed by a good request that succeeds: 1 MiB of
//! headers (431 with a JSON body), a 100 MiB body (413), 500 idle TLS connections held
//! open (a new request is still answered).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it, written as
/// PEM files into `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "thaw test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS client of the daemon's TCP listener, trusting `ca` (or nothing).
struct Remote {
    port: u16,
    tls: TlsConnector,
}

impl Remote {
    fn new(port: u16, ca: Option<&Path>) -> Remote {
        let mut roots = RootCertStore::empty();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).unwrap();
            for cert in rustls_pemfile_certs(&pem) {
                roots.add(cert).unwrap();
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Remote {
            port,
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    /// A new connection through its TLS handshake.
    async fn connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        self.tls.connect(name, tcp).await.unwrap()
    }

    /// One request over a new TLS connection; `Err` when TLS fails.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let stream = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        if !bytes.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let answer = sender
            .send_request(req.body(Full::new(Bytes::from(bytes))).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(text.lines().count(), 1, "one line: {text:?}");
        Ok((status, serde_json::from_str(&text).unwrap()))
    }
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_client_drives_thawd_over_tls_with_a_token() {
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(files.path());
    let tokens = files.path().join("tokens");
    let token = thaw_daemon::tokens::new_token(&tokens, "ci").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ];
    let d = Daemon::start(&args).await;
    let remote = Remote::new(port, Some(&ca));

    let (status, body) = remote.call("GET", "/healthz", None, None).await.unwrap();
    assert_eq!((status, &body), (200, &json!({"ok": true})));
    for wrong in [None, Some("thaw_not-a-token"), Some("")] {
        let (status, body) = remote.call("GET", "/v1/health", wrong, None).await.unwrap();
        assert_eq!(status, 401, "{wrong:?}: {body}");
        assert_eq!(
            body,
            json!({"error": "a valid token is needed (Authorization: Bearer TOKEN)"})
        );
    }
    // Metrics need a token too.
    let (status, _) = remote.call("GET", "/metrics", None, None).await.unwrap();
    assert_eq!(status, 401);
    // Nothing else is said to a client without a token, not even which routes exist.
    let (status, _) = remote
        .call("GET", "/v1/no-such-route", None, None)
        .await
        .unwrap();
    assert_eq!(status, 401);

    // The whole way through TCP: boot, exec, list, stop.
    let (status, booted) = remote
        .call(
            "POST",
            "/v1/vms",
            Some(&token),
            Some(json!({"name": "remote", "memory_mib": 128})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{booted}");
    let (status, out) = remote
        .call(
            "POST",
            "/v1/vms/remote/exec",
            Some(&token),
            Some(json!({"command": ["/bin/sh", "-c", "echo over tls"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "over tls\n", "{out}");
    let (status, vms) = remote
        .call("GET", "/v1/vms", Some(&token), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(vms[0]["name"], "remote", "{vms}");

    // Plain HTTP to the TLS port: no HTTP answer, and the daemon keeps answering.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut got)).await;
    assert!(
        !String::from_utf8_lossy(&got).contains("\"ok\""),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    // A TLS client that does not trust the daemon's CA does not get through.
    let stranger = Remote::new(port, None);
    let refused = stranger.call("GET", "/healthz", None, None).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("certificate")),
        "{refused:?}"
    );
    assert_eq!(
        remote.call("GET", "/healthz", None, None).await.unwrap().0,
        200
    );

    // A token added to the file works without a restart; a removed one stops working.
    let later = thaw_daemon::tokens::new_token(&tokens, "later").unwrap();
    assert_eq!(
        remote
            .call("GET", "/v1/health", Some(&later), None)
            .await
            .unwrap()
            .0,
        200
    );
    let kept: String = std::fs::read_to_string(&tokens)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("ci:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&tokens, kept).unwrap();
    assert_eq!(
        remote
            .call("GET", "/v1/health", Some(&token), None)
            .await
            .unwrap()
            .0,
        401
    );
    let (status, _) = remote
        .call("DELETE", "/v1/vms/remote", Some(&later), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The Unix socket is as before: no token.
    assert!(d.vm_names().await.is_empty());
}

/// Writes `head` and then `body_len` bytes of body (as far as the daemon reads them)
/// on a new TLS connection while reading the answer: the status and the JSON body.
async fn raw_exchange(remote: &Remote, head: Vec<u8>, body_len: usize) -> (u16, Value) {
    let stream = remote.connect().await;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        // The daemon answers and closes before it has read it all: write errors are
        // expected.
        wr.write_all(&head).await?;
        let chunk = vec![b' '; 1 << 16];
        let mut left = body_len;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        wr.flush().await
    });
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "no answer within 60 s");
    writer.abort();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{text:?}")),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_over_tls_leaves_the_daemon_answering() {
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(files.path());
    let tokens = files.path().join("tokens");
    let token = thaw_daemon::tokens::new_token(&tokens, "ci").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ];
    let d = Daemon::start(&args).await;
    let remote = Remote::new(port, Some(&ca));
    let good = || async {
        let (status, body) = remote
            .call("GET", "/v1/health", Some(&token), None)
            .await
            .unwrap();
        assert_eq!(
            (status, &body["status"]),
            (200, &json!("ok")),
            "{}",
            d.log()
        );
    };

    // 1 MiB of headers: hyper's 431, with the API's JSON body.
    let mut head = format!(
        "GET /v1/health HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nX-Big: "
    )
    .into_bytes();
    head.extend(std::iter::repeat_n(b'a', 1 << 20));
    head.extend_from_slice(b"\r\n\r\n");
    let (status, err) = raw_exchange(&remote, head, 0).await;
    assert_eq!(status, 431, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("headers are too large"),
        "{err}"
    );
    good().await;

    // A 100 MiB body: 413 once the daemon has read past its limit (2 MiB), not after
    // reading it all.
    let len = 100 << 20;
    let head = format!(
        "POST /v1/vms/x/exec HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
    .into_bytes();
    let (status, err) = raw_exchange(&remote, head, len).await;
    assert_eq!(status, 413, "{err}");
    assert!(err["error"].is_string(), "{err}");
    good().await;

    // 500 idle connections, through their handshake, held open: a new request is
    // answered meanwhile, and they are still open.
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(remote.connect().await);
    }
    good().await;
    let (status, vms) = remote
        .call("GET", "/v1/vms", Some(&token), None)
        .await
        .unwrap();
    assert_eq!((status, vms), (200, json!([])));
    // The last one opened still takes a request.
    let mut last = idle.pop().unwrap();
    last.write_all(
        format!("GET /v1/health HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    last.read_to_end(&mut got).await.unwrap();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    drop(idle);
    good().await;
}

/// A listener that anyone could use unknowingly is refused at start, in one line, and
/// nothing is left running.
#[test]
fn unsafe_listeners_are_refused_in_one_line() {
    let files = tempfile::tempdir().unwrap();
    let (_, cert, key) = certificates(files.path());
    let tokens = files.path().join("tokens");
    thaw_daemon::tokens::new_token(&tokens, "ci").unwrap();
    let open_tokens = files.path().join("open-tokens");
    std::fs::copy(&tokens, &open_tokens).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_tokens, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let port = free_port().to_string();
    let any = format!("0.0.0.0:{port}");
    let lo = format!("127.0.0.1:{port}");
    let (t, c, k, o) = (
        tokens.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        open_tokens.to_str().unwrap(),
    );
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--listen", &any, "--tokens", t],
            format!("0.0.0.0:{port} is not a loopback address: give --tls-cert and --tls-key"),
        ),
        (
            vec!["--listen", &lo, "--tls-cert", c, "--tls-key", k],
            format!("listening on 127.0.0.1:{port} needs --tokens FILE"),
        ),
        (
            vec![
                "--listen",
                &lo,
                "--tls-cert",
                c,
                "--tls-key",
                k,
                "--tokens",
                o,
            ],
            "can be read by others (mode 644): make it 0600".to_owned(),
        ),
        (
            vec![
                "--listen",
                &lo,
                "--tls-cert",
                k,
                "--tls-key",
                c,
                "--tokens",
                t,
            ],
            "cannot read the TLS".to_owned(),
        ),
    ];
    for (args, expected) in cases {
        let home = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(common::THAWD)
            .args(&args)
            .env("THAW_HOME", home.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
        assert!(errors[0].contains(&expected), "{args:?}: {stderr}");
        assert!(
            !home.path().join("thawd.sock").exists(),
            "{args:?} left a socket"
        );
    }
}
