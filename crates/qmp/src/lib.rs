//! A small asynchronous client for QMP, the QEMU Machine Protocol.
//!
//! QMP is line-delimited JSON over a Unix socket. After connecting, QEMU sends a
//! greeting (with its version); the client answers `qmp_capabilities`, then sends
//! commands. Every command carries an `id`, so replies are matched to requests even
//! when asynchronous events arrive in between. Events are fanned out on a broadcast
//! channel ([`Qmp::events`]).
//!
//! Replies are kept loosely typed ([`serde_json::Value`]) on purpose: the shapes of
//! QEMU's replies change between versions, and the caller knows which fields it needs.
//!
//! File descriptors are passed with `SCM_RIGHTS` in the same `sendmsg` as the command
//! ([`Qmp::execute_with_fd`]), which is how `getfd` and `add-fd` expect them.

use std::collections::HashMap;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// Errors of the QMP client.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("could not connect to the QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP connection failed while {step}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU closed the QMP connection")]
    Closed,
    #[error("QEMU sent something that is not QMP: {0}")]
    Protocol(String),
    /// QEMU answered the command with an error.
    #[error("QEMU refused {command}: {desc} ({class})")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// The QEMU version announced in the QMP greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl QemuVersion {
    /// `file:` migration URIs exist from QEMU 8.2 on.
    pub fn has_file_migration(&self) -> bool {
        (self.major, self.minor) >= (8, 2)
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

impl std::str::FromStr for QemuVersion {
    type Err = String;

    /// Parses `10.0.2` (trailing text after the third number is ignored).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().splitn(3, '.');
        let mut next = |what: &str| -> Result<u32, String> {
            let p = parts
                .next()
                .ok_or_else(|| format!("no {what} number in {s:?}"))?;
            let digits: String = p.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits
                .parse()
                .map_err(|_| format!("bad {what} number in {s:?}"))
        };
        Ok(QemuVersion {
            major: next("major")?,
            minor: next("minor")?,
            micro: next("micro").unwrap_or(0),
        })
    }
}

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub data: Value,
    /// When QEMU emitted it, in seconds since the Unix epoch (QEMU's own clock: the
    /// way to time what happens inside QEMU, e.g. STOP → RESUME, without our latency).
    pub timestamp: f64,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// A connected, capability-negotiated QMP session.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    version: QemuVersion,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Qmp {
    /// Connects to a QMP Unix socket, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Self::handshake(stream).await
    }

    /// Runs the QMP handshake on an already connected stream.
    pub async fn handshake(stream: UnixStream) -> Result<Qmp, QmpError> {
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut line = String::new();
        let n = lines
            .read_line(&mut line)
            .await
            .map_err(|source| QmpError::Io {
                step: "reading the greeting",
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        let version = parse_greeting(&line)?;
        let (events, _) = broadcast::channel(256);
        let pending: Pending = Arc::default();
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events.clone()));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(write),
            pending,
            events,
            next_id: AtomicU64::new(1),
            version,
            reader,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> QemuVersion {
        self.version
    }

    /// Subscribes to events. Subscribe *before* issuing the command whose event you
    /// wait for, or the event may be missed.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Executes a command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.send(command, arguments, None).await
    }

    /// Executes a command, passing `fd` with it (`SCM_RIGHTS`), as `getfd` and
    /// `add-fd` require.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.send(command, arguments, Some(fd)).await
    }

    async fn send(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&msg).expect("a JSON value serializes");
        bytes.push(b'\n');
        tracing::debug!(target: "qmp", "-> {}", String::from_utf8_lossy(&bytes).trim_end());

        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending map").insert(id, tx);
        let sent = {
            let mut writer = self.writer.lock().await;
            match fd {
                None => writer.write_all(&bytes).await,
                Some(fd) => send_with_fd(&writer, &bytes, fd).await,
            }
        };
        if let Err(source) = sent {
            self.pending.lock().expect("pending map").remove(&id);
            return Err(QmpError::Io {
                step: "sending a command",
                source,
            });
        }
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err((class, desc))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
            Err(_) => Err(QmpError::Closed),
        }
    }
}

/// Writes `bytes` with `fd` attached. The whole message goes in one `sendmsg`, so the
/// descriptor arrives together with the command that uses it.
async fn send_with_fd(
    writer: &OwnedWriteHalf,
    bytes: &[u8],
    fd: BorrowedFd<'_>,
) -> std::io::Result<()> {
    let stream: &UnixStream = writer.as_ref();
    let mut sent = 0;
    let mut fd_sent = false;
    while sent < bytes.len() {
        stream.writable().await?;
        let result = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let iov = [IoSlice::new(&bytes[sent..])];
            if fd_sent {
                let mut control = SendAncillaryBuffer::new(&mut []);
                return rustix::net::sendmsg(
                    stream.as_fd(),
                    &iov,
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(std::io::Error::from);
            }
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(stream.as_fd(), &iov, &mut control, SendFlags::NOSIGNAL)
                .map_err(std::io::Error::from)
        });
        match result {
            Ok(n) => {
                sent += n;
                fd_sent = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the QEMU version from QMP's greeting line. Never panics, whatever the line.
pub fn parse_greeting(line: &str) -> Result<QemuVersion, QmpError> {
    let v: Value = serde_json::from_str(line)
        .map_err(|_| QmpError::Protocol(format!("greeting is not JSON: {}", line.trim())))?;
    let q = &v["QMP"]["version"]["qemu"];
    // A number beyond u32 is not a version (it was truncated to one).
    let get = |k: &str| q[k].as_u64().and_then(|n| u32::try_from(n).ok());
    match (get("major"), get("minor"), get("micro")) {
        (Some(major), Some(minor), Some(micro)) => Ok(QemuVersion {
            major,
            minor,
            micro,
        }),
        _ => Err(QmpError::Protocol(format!(
            "greeting has no QEMU version: {}",
            line.trim()
        ))),
    }
}

/// One line QEMU sent after the greeting.
#[derive(Debug)]
pub enum Message {
    /// An asynchronous event.
    Event(Event),
    /// The reply to command `id`: its `return` value, or its error's class and text.
    Reply {
        id: u64,
        result: Result<Value, (String, String)>,
    },
    /// JSON that is neither (no id, or an id that is not a number): ignored.
    Other,
    /// Not JSON.
    NotJson,
}

/// Classifies a line from QEMU. Never panics, whatever the line.
pub fn parse_message(line: &str) -> Message {
    let Ok(msg) = serde_json::from_str::<Value>(line) else {
        return Message::NotJson;
    };
    if let Some(event) = msg["event"].as_str() {
        let ts = &msg["timestamp"];
        let timestamp = ts["seconds"].as_f64().unwrap_or(0.0)
            + ts["microseconds"].as_f64().unwrap_or(0.0) / 1e6;
        return Message::Event(Event {
            event: event.to_owned(),
            data: msg["data"].clone(),
            timestamp,
        });
    }
    let Some(id) = msg["id"].as_u64() else {
        return Message::Other;
    };
    let result = if let Some(err) = msg.get("error") {
        Err((
            err["class"].as_str().unwrap_or("GenericError").to_owned(),
            err["desc"].as_str().unwrap_or("unknown error").to_owned(),
        ))
    } else {
        Ok(msg.get("return").cloned().unwrap_or(Value::Null))
    };
    Message::Reply { id, result }
}

async fn read_loop(
    mut lines: BufReader<OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        tracing::debug!(target: "qmp", "<- {}", line.trim_end());
        match parse_message(&line) {
            Message::Event(event) => {
                let _ = events.send(event);
            }
            Message::Reply { id, result } => {
                let Some(tx) = pending.lock().expect("pending map").remove(&id) else {
                    continue;
                };
                let _ = tx.send(result);
            }
            Message::Other => {}
            Message::NotJson => {
                tracing::warn!(target: "qmp", "ignoring a line that is not JSON: {}", line.trim_end());
            }
        }
    }
    // Dropping the senders wakes every waiter with `Closed`.
    pending.lock().expect("pending map").clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parses_and_orders() {
        let v: QemuVersion = "10.0.2".parse().unwrap();
        assert_eq!(
            v,
            QemuVersion {
                major: 10,
                minor: 0,
                micro: 2
            }
        );
        assert!(v.has_file_migration());
        let old: QemuVersion = "7.2.15".parse().unwrap();
        assert!(!old.has_file_migration());
        assert!(old < v);
        assert!("x.y".parse::<QemuVersion>().is_err());
    }

    #[test]
    fn greeting_without_version_is_a_protocol_error() {
        assert!(matches!(
            parse_greeting("{\"QMP\":{}}"),
            Err(QmpError::Protocol(_))
        ));
        assert!(matches!(
            parse_greeting("hello"),
            Err(QmpError::Protocol(_))
        ));
        // 2^32 + 10 was read as version 10.
        let huge = r#"{"QMP":{"version":{"qemu":{"major":4294967306,"minor":0,"micro":2}}}}"#;
        assert!(matches!(parse_greeting(huge), Err(QmpError::Protocol(_))));
        // Lines after the greeting: events, replies, errors, the rest ignored.
        assert!(matches!(
            parse_message("{\"event\":\"STOP\"}"),
            Message::Event(_)
        ));
        assert!(matches!(
            parse_message("{\"id\":7,\"error\":{}}"),
            Message::Reply {
                id: 7,
                result: Err(_)
            }
        ));
        assert!(matches!(parse_message("[1]"), Message::Other));
        assert!(matches!(parse_message("{\"id\":"), Message::NotJson));
    }

    /// A fake QMP server on a socket pair: greeting, capabilities, an event in between,
    /// an error reply, and a descriptor passed along with a command.
    #[tokio::test]
    async fn commands_events_errors_and_fd_passing() {
        let (client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        client.set_nonblocking(true).unwrap();
        let server_task = std::thread::spawn(move || fake_server(server));
        let qmp = Qmp::handshake(UnixStream::from_std(client).unwrap())
            .await
            .unwrap();
        assert_eq!(qmp.version().to_string(), "10.0.2");
        let mut events = qmp.events();
        let status = qmp.execute("query-status", None).await.unwrap();
        assert_eq!(status["status"], "running");
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.event, "STOP");
        let err = qmp.execute("bogus", None).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        let file = tempfile::tempfile().unwrap();
        let reply = qmp
            .execute_with_fd("getfd", Some(json!({"fdname": "x"})), file.as_fd())
            .await
            .unwrap();
        assert_eq!(reply["fd_received"], true);
        drop(qmp);
        server_task.join().unwrap();
    }

    fn fake_server(sock: std::os::unix::net::UnixStream) {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::io::{BufRead, Write};
        let mut w = sock.try_clone().unwrap();
        writeln!(w, r#"{{"QMP":{{"version":{{"qemu":{{"major":10,"minor":0,"micro":2}},"package":""}},"capabilities":[]}}}}"#).unwrap();
        let mut r = std::io::BufReader::new(sock.try_clone().unwrap());
        let read_cmd = |r: &mut std::io::BufReader<_>| -> Value {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            serde_json::from_str(&l).unwrap()
        };
        let caps = read_cmd(&mut r);
        assert_eq!(caps["execute"], "qmp_capabilities");
        writeln!(w, r#"{{"return":{{}},"id":{}}}"#, caps["id"]).unwrap();
        let q = read_cmd(&mut r);
        writeln!(
            w,
            r#"{{"event":"STOP","data":{{}},"timestamp":{{"seconds":1,"microseconds":2}}}}"#
        )
        .unwrap();
        writeln!(w, r#"{{"return":{{"status":"running"}},"id":{}}}"#, q["id"]).unwrap();
        let b = read_cmd(&mut r);
        writeln!(
            w,
            r#"{{"error":{{"class":"CommandNotFound","desc":"nope"}},"id":{}}}"#,
            b["id"]
        )
        .unwrap();
        // The fd command: read with recvmsg to see the descriptor.
        let mut buf = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let got = rustix::net::recvmsg(&sock, &mut iov, &mut control, RecvFlags::empty()).unwrap();
        let mut fds = 0;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds += rights.count();
            }
        }
        assert_eq!(fds, 1);
        let cmd: Value = serde_json::from_slice(buf[..got.bytes].trim_ascii_end()).unwrap();
        assert_eq!(cmd["execute"], "getfd");
        writeln!(
            w,
            r#"{{"return":{{"fd_received":true}},"id":{}}}"#,
            cmd["id"]
        )
        .unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(r.get_mut(), &mut rest);
    }
}
