//! Readiness beyond the guest agent: a TCP port answering through its forward, or a
//! line on the serial console. Readiness is always observed, never a sleep.

use std::path::Path;
use std::time::Duration;

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

/// Waits until a connection to `host` on 127.0.0.1 reaches the guest. User-mode
/// networking accepts the host side at once and closes it when the guest refuses, so
/// "connected" means: accepted, and not closed within a short window (or, with
/// `redis_ping`, `+PONG` received).
pub async fn wait_port(
    host: u16,
    guest: u16,
    redis_ping: bool,
    timeout: Duration,
) -> Result<(), ReadyError> {
    let deadline = Instant::now() + timeout;
    loop {
        if probe(host, redis_ping).await {
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

async fn probe(host: u16, redis_ping: bool) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", host)),
    )
    .await
    else {
        return false;
    };
    let mut buf = [0u8; 64];
    if redis_ping {
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
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
        return false;
    }
    match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => false, // closed: the guest refused
        Ok(Ok(_)) => true,               // the service spoke first
        Err(_) => true,                  // still open: the guest accepted
    }
}

/// Waits until the console log (from its start) matches `regex`.
pub async fn wait_serial(console: &Path, regex: &str, timeout: Duration) -> Result<(), ReadyError> {
    let re = regex::Regex::new(regex)?;
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read(console).unwrap_or_default();
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

/// A free TCP port on 127.0.0.1, as the kernel hands it out.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Whether `port` on 127.0.0.1 can be bound now.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_readiness_needs_an_open_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 6];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"+PONG\r\n").await.unwrap();
        });
        wait_port(port, 6379, true, Duration::from_secs(5))
            .await
            .unwrap();
        server.await.unwrap();
        let closed = free_port().unwrap();
        let err = wait_port(closed, 80, false, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
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
        assert!(port_is_free(free_port().unwrap()));
    }
}
