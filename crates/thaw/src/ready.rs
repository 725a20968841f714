//! Readiness beyond the guest agent: a TCP port answering through its forward, or a
//! line on the serial console. Readiness is always observed, never a sleep.

use std::path::Path;
use std::time::Duration;

use thaw_qmp::Qmp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("guest port {guest} (host port {host}) did not answer within {timeout:?}")]
    Port {
        guest: u16,
        host: u16,
        timeout: Duration,
    },
    #[error("the serial console did not match {regex:?} within {timeout:?}")]
    Serial { regex: String, timeout: Duration },
    #[error("invalid --ready-serial regex")]
    Regex(#[from] regex::Error),
    #[error("guest port {0} is not forwarded (add --port 0:{0})")]
    NotForwarded(u16),
    #[error("could not read QEMU's table of forwarded connections")]
    Usernet(#[source] thaw_qmp::QmpError),
}

/// What to wait for, besides the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadySpec {
    /// A guest TCP port that must accept a connection (through its host forward).
    pub port: Option<u16>,
    /// Speak Redis on `port`: readiness is `PING` answered with `+PONG`.
    pub redis_ping: bool,
    /// A regex the serial console output must match.
    pub serial: Option<String>,
}

impl ReadySpec {
    /// Checks, before anything starts, that the conditions can ever be met.
    pub fn validate(&self, forwarded_guest_ports: &[u16]) -> Result<(), ReadyError> {
        if let Some(p) = self.port {
            if !forwarded_guest_ports.contains(&p) {
                return Err(ReadyError::NotForwarded(p));
            }
        }
        if let Some(re) = &self.serial {
            regex::Regex::new(re)?;
        }
        Ok(())
    }
}

/// Waits for the extra readiness conditions (a port, a console line); `holds` is the
/// caller's QMP connection, if it has one open (see [`ready::wait_port`]).
pub async fn wait_extra(
    holds: Option<&thaw_qmp::Qmp>,
    ready: &ReadySpec,
    ports: &[crate::spec::PortForward],
    bind: std::net::Ipv4Addr,
    paths: &crate::vm::VmPaths,
    deadline: std::time::Instant,
) -> Result<(), ReadyError> {
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    if let Some(guest) = ready.port {
        let host = ports
            .iter()
            .find(|f| f.guest == guest)
            .ok_or(ReadyError::NotForwarded(guest))?
            .host;
        let at = std::net::SocketAddr::from((crate::ports::reach(bind), host));
        wait_port(holds, &paths.qmp(), at, guest, ready.redis_ping, left()).await?;
    }
    if let Some(regex) = &ready.serial {
        wait_serial(&paths.console(), regex, left()).await?;
    }
    Ok(())
}

/// Waits until the guest accepts a TCP connection on `guest` through its forward
/// at `at` (its host side; with `redis_ping`: until `PING` is answered with `+PONG`).
///
/// User-mode networking accepts the host side of a forward at once, before the guest
/// has answered, and keeps it open while the guest has not (for example while its
/// network is still coming up). So a host-side connect proves nothing; QEMU's own
/// table of the connections it relays (`info usernet`) says whether the guest
/// completed the handshake. QEMU serves one QMP client at a time, so the table is read
/// on the caller's connection if it `holds` one, else on one opened at `qmp_socket` for
/// the wait.
pub async fn wait_port(
    holds: Option<&Qmp>,
    qmp_socket: &Path,
    at: std::net::SocketAddr,
    guest: u16,
    redis_ping: bool,
    timeout: Duration,
) -> Result<(), ReadyError> {
    let host = at.port();
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let opened;
    let qmp = match (redis_ping, holds) {
        (true, _) => None,
        (false, Some(qmp)) => Some(qmp),
        (false, None) => {
            opened = Qmp::connect(qmp_socket)
                .await
                .map_err(ReadyError::Usernet)?;
            Some(&opened)
        }
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let ready = match qmp {
            None => ping(at).await,
            Some(qmp) => accepted(qmp, at, guest).await?,
        };
        tracing::debug!(
            attempt,
            ready,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            host,
            guest,
            "port readiness tried"
        );
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReadyError::Port {
                guest,
                host,
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects to the forward and watches the relayed connection for up to a second:
/// true once the guest has accepted it, false when it refused or did not answer.
async fn accepted(qmp: &Qmp, at: std::net::SocketAddr, guest: u16) -> Result<bool, ReadyError> {
    let host = at.port();
    let Some(mut s) = connect(at).await else {
        return Ok(false);
    };
    let until = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 64];
    while Instant::now() < until {
        let table = qmp
            .execute(
                "human-monitor-command",
                Some(serde_json::json!({ "command-line": "info usernet" })),
            )
            .await
            .map_err(ReadyError::Usernet)?;
        if usernet_established(table.as_str().unwrap_or(""), host, guest) {
            return Ok(true);
        }
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(false), // closed: the guest refused
            Ok(Ok(_)) => return Ok(true),               // the service spoke first
            Err(_) => {}                                // not answered yet
        }
    }
    // A SYN the guest never answered is retried by slirp with growing delays; a new
    // connection is tried at once.
    Ok(false)
}

/// A connection to the forward's host side, if one is made within a second.
async fn connect(at: std::net::SocketAddr) -> Option<TcpStream> {
    tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(at))
        .await
        .ok()?
        .ok()
}

/// Whether QEMU's `info usernet` output lists an established TCP connection relayed
/// from host port `host` to guest port `guest`. The table names the forward's port, not
/// the client's, so someone else's open connection counts too: it shows as well that
/// the guest accepts on that port.
fn usernet_established(table: &str, host: u16, guest: u16) -> bool {
    let (host, guest) = (host.to_string(), guest.to_string());
    table.lines().any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Protocol[State] FD SourceAddress SourcePort DestAddress DestPort RecvQ SendQ
        f.len() >= 6 && f[0] == "TCP[ESTABLISHED]" && f[3] == host && f[5] == guest
    })
}

/// One Redis `PING` through the forward: true when `+PONG` comes back within a second.
async fn ping(at: std::net::SocketAddr) -> bool {
    let Some(mut s) = connect(at).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                got.extend_from_slice(&buf[..n]);
                if got.starts_with(b"+PONG") {
                    return true;
                }
            }
            _ => return false,
        }
    }
    false
}

/// Waits until the console log (from its start) matches `regex`.
pub async fn wait_serial(console: &Path, regex: &str, timeout: Duration) -> Result<(), ReadyError> {
    let re = regex::Regex::new(regex)?;
    let deadline = Instant::now() + timeout;
    loop {
        let text = crate::console::read(console);
        if re.is_match(&String::from_utf8_lossy(&text)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ReadyError::Serial {
                regex: regex.to_owned(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redis_readiness_needs_pong() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            // The first connection is closed unanswered; the second gets its PONG.
            drop(listener.accept().await.unwrap());
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 6];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"PING\r\n");
            s.write_all(b"+PONG\r\n").await.unwrap();
        });
        assert!(!ping(at).await);
        assert!(ping(at).await);
        server.await.unwrap();
        let free = crate::ports::free().unwrap();
        assert!(!ping(([127, 0, 0, 1], free).into()).await);
    }

    #[test]
    fn usernet_table_shows_which_forwards_the_guest_accepted() {
        // As QEMU 10.0 prints it: one accepted connection to guest port 80, none to 81.
        let table = "Hub -1 (net0):\n  \
            Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n  \
            TCP[ESTABLISHED]   14       127.0.0.1 43013       10.0.2.15    80     0     0\n  \
            TCP[SYN_SENT]      15       127.0.0.1 41435       10.0.2.15    81     0     0\n  \
            TCP[HOST_FORWARD]  12       127.0.0.1 43013       10.0.2.15    80     0     0\n  \
            TCP[HOST_FORWARD]  11       127.0.0.1 41435       10.0.2.15    81     0     0\n";
        assert!(usernet_established(table, 43013, 80));
        assert!(!usernet_established(table, 41435, 81));
        assert!(!usernet_established(table, 43013, 81));
        assert!(!usernet_established("", 43013, 80));
    }

    #[tokio::test]
    async fn serial_readiness_matches_the_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        std::fs::write(&log, "booting\nlogin: ").unwrap();
        wait_serial(&log, r"login:\s*$", Duration::from_secs(1))
            .await
            .unwrap();
        let err = wait_serial(&log, "never", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, ReadyError::Serial { .. }));
        assert!(matches!(
            wait_serial(&log, "(", Duration::from_millis(50)).await,
            Err(ReadyError::Regex(_))
        ));
    }
}
