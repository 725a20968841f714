//! Client for the QEMU guest agent (qemu-ga) over its virtio-serial channel.
//!
//! The protocol is JSON like QMP, but without a greeting and with no request ids: a
//! client that connects may find a half-read request or a stale reply in the channel
//! (after a restore, the guest's agent may be in the middle of anything). So every
//! session starts with `guest-sync-delimited`: the client sends `0xFF` (which resets
//! the agent's parser) and a sync with a fresh id; the agent answers `0xFF` followed by
//! the id. Everything before that `0xFF` is discarded.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A guest agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("could not connect to the guest agent socket {path}")]
    Connect {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("guest agent connection failed while {step}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    /// A request went unanswered: the guest's agent died, was stopped or hangs (its
    /// virtio-serial port stays open on the host side, so only a deadline tells).
    #[error("the guest agent stopped answering (no reply to {command} within {waited:?})")]
    NotAnswering { command: String, waited: Duration },
    #[error("the command did not finish within {0:?}")]
    ExecTimeout(Duration),
    #[error(
        "the command's {stream} exceeded what the guest agent captures (16 MiB); \
         redirect it to a file in the guest and read that in parts"
    )]
    OutputTruncated { stream: &'static str },
    #[error("the guest agent closed the connection")]
    Closed,
    #[error("the guest agent refused {command}: {desc}")]
    Command { command: String, desc: String },
    #[error("the guest agent sent something unexpected: {0}")]
    Protocol(String),
}

/// How long one agent request may wait for its reply when the caller sets no deadline
/// of its own (guest-set-time includes qemu-ga running `hwclock` in a new process).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The result of a command run in the guest: its output exactly as the guest wrote it.
///
/// In JSON (`thaw exec --json`, the API) every stream is `<stream>_base64`, lossless,
/// and also `<stream>` as a string when its bytes are valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "ExecOutputJson", try_from = "ExecOutputJson")]
pub struct ExecOutput {
    /// The exit code; a command killed by a signal reports 128 + the signal.
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ExecOutput {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <ExecOutputJson as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ExecOutput {}

/// [`ExecOutput`] on the wire.
#[derive(serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
struct ExecOutputJson {
    exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stdout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stderr: Option<String>,
    // Always sent; read as absent from an older daemon.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String, required = true))]
    stdout_base64: Option<String>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = String, required = true))]
    stderr_base64: Option<String>,
}

impl From<ExecOutput> for ExecOutputJson {
    fn from(o: ExecOutput) -> Self {
        let b64 = |b: &[u8]| Some(base64::engine::general_purpose::STANDARD.encode(b));
        ExecOutputJson {
            exit_code: o.exit_code,
            stdout_base64: b64(&o.stdout),
            stderr_base64: b64(&o.stderr),
            stdout: String::from_utf8(o.stdout).ok(),
            stderr: String::from_utf8(o.stderr).ok(),
        }
    }
}

impl TryFrom<ExecOutputJson> for ExecOutput {
    type Error = String;

    fn try_from(j: ExecOutputJson) -> Result<Self, String> {
        let bytes = |b64: Option<String>, text: Option<String>, name: &str| match b64 {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("{name}_base64 is not base64: {e}")),
            None => Ok(text.unwrap_or_default().into_bytes()),
        };
        Ok(ExecOutput {
            exit_code: j.exit_code,
            stdout: bytes(j.stdout_base64, j.stdout, "stdout")?,
            stderr: bytes(j.stderr_base64, j.stderr, "stderr")?,
        })
    }
}

/// A synchronised agent session.
pub struct Agent {
    stream: BufReader<UnixStream>,
    /// Sync ids sent but not answered; their replies may still arrive and are skipped.
    stale_syncs: HashSet<u64>,
    /// A request went unanswered (or its wait was cut short): its reply may still
    /// come, so the next request synchronises first.
    desynced: bool,
}

impl Agent {
    /// Connects and synchronises, retrying until the agent answers or `timeout` passes.
    /// Before the guest's agent opens its port, QEMU holds what we send, so a sync
    /// sent early is answered as soon as the agent starts.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Agent, AgentError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(source) if Instant::now() >= deadline => {
                    return Err(AgentError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let mut agent = Agent {
            stream: BufReader::new(stream),
            stale_syncs: HashSet::new(),
            desynced: false,
        };
        agent.sync(deadline, timeout).await?;
        Ok(agent)
    }

    async fn sync(&mut self, deadline: Instant, total: Duration) -> Result<(), AgentError> {
        let mut sent: Vec<u64> = Vec::new();
        // The first reply after a restore can take ~100 ms under TCG; resend rarely.
        let mut attempt_wait = Duration::from_secs(1);
        loop {
            let id = sync_id();
            sent.push(id);
            // 0xFF resets the agent's parser, but qemu-ga also answers it with a parse
            // error; sent first, that error precedes the delimiter and is skipped. A
            // 0xFF on a retry would leave an error reply after the sync is answered, so
            // only the first attempt sends one.
            let mut msg = if sent.len() == 1 {
                vec![0xFFu8]
            } else {
                Vec::new()
            };
            msg.extend_from_slice(
                json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                    .to_string()
                    .as_bytes(),
            );
            msg.push(b'\n');
            self.write(&msg).await?;
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::Timeout(total));
            }
            let wait = attempt_wait.min(deadline - now);
            match tokio::time::timeout(wait, self.read_sync_reply(&sent)).await {
                Ok(Ok(answered)) => {
                    self.stale_syncs
                        .extend(sent.into_iter().filter(|&s| s != answered));
                    return Ok(());
                }
                Ok(Err(e)) => return Err(e),
                Err(_) if Instant::now() >= deadline => return Err(AgentError::Timeout(total)),
                Err(_) => attempt_wait = (attempt_wait * 2).min(Duration::from_secs(4)),
            }
        }
    }

    /// Reads up to a 0xFF delimiter, then a JSON reply carrying one of `ids`.
    async fn read_sync_reply(&mut self, ids: &[u64]) -> Result<u64, AgentError> {
        loop {
            let mut skipped = Vec::new();
            self.stream
                .read_until(0xFF, &mut skipped)
                .await
                .map_err(|source| AgentError::Io {
                    step: "waiting for the sync delimiter",
                    source,
                })?;
            if skipped.last() != Some(&0xFF) {
                return Err(AgentError::Closed);
            }
            let reply = self.read_json().await?;
            if let Some(id) = reply["return"].as_u64() {
                if ids.contains(&id) {
                    return Ok(id);
                }
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        self.stream
            .get_mut()
            .write_all(bytes)
            .await
            .map_err(|source| AgentError::Io {
                step: "sending a request",
                source,
            })
    }

    async fn read_json(&mut self) -> Result<Value, AgentError> {
        loop {
            let mut line = Vec::new();
            let n = self
                .stream
                .read_until(b'\n', &mut line)
                .await
                .map_err(|source| AgentError::Io {
                    step: "reading a reply",
                    source,
                })?;
            if n == 0 {
                return Err(AgentError::Closed);
            }
            // A delimiter byte may precede a reply; it is not JSON.
            let text = line.strip_prefix(&[0xFF]).unwrap_or(&line);
            let text = String::from_utf8_lossy(text);
            if text.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(text.trim())
                .map_err(|_| AgentError::Protocol(text.trim().chars().take(200).collect()));
        }
    }

    /// Runs one command and returns its `return` value; waits at most
    /// [`REQUEST_TIMEOUT`] for the reply.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, AgentError> {
        self.execute_until(command, arguments, Instant::now() + REQUEST_TIMEOUT)
            .await
    }

    /// Runs one command, waiting for its reply until `deadline`. A request left
    /// unanswered leaves the session out of step (the reply may come later), so the
    /// next request synchronises again first.
    pub async fn execute_until(
        &mut self,
        command: &str,
        arguments: Value,
        deadline: Instant,
    ) -> Result<Value, AgentError> {
        let t0 = Instant::now();
        if self.desynced {
            self.sync(deadline, deadline.saturating_duration_since(t0))
                .await?;
            self.desynced = false;
        }
        // Out of step until the reply is read: also if the caller gives up on this
        // future (a timeout of its own) while the request is under way.
        self.desynced = true;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.request(command, arguments)).await {
            Ok(reply) => {
                if matches!(reply, Ok(_) | Err(AgentError::Command { .. })) {
                    self.desynced = false;
                }
                reply
            }
            Err(_) => Err(AgentError::NotAnswering {
                command: command.to_owned(),
                waited: Duration::from_millis(t0.elapsed().as_millis() as u64),
            }),
        }
    }

    async fn request(&mut self, command: &str, arguments: Value) -> Result<Value, AgentError> {
        let mut msg = json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.write(&bytes).await?;
        loop {
            let reply = self.read_json().await?;
            if let Some(err) = reply.get("error") {
                return Err(AgentError::Command {
                    command: command.to_owned(),
                    desc: err["desc"].as_str().unwrap_or("unknown error").to_owned(),
                });
            }
            let ret = reply.get("return").cloned().unwrap_or(Value::Null);
            if let Some(id) = ret.as_u64() {
                if self.stale_syncs.remove(&id) {
                    continue; // a late answer to an earlier sync
                }
            }
            return Ok(ret);
        }
    }

    pub async fn ping(&mut self) -> Result<(), AgentError> {
        self.execute("guest-ping", Value::Null).await.map(|_| ())
    }

    /// Sets the guest's clock to the host's, and its RTC.
    ///
    /// qemu-ga sets the system clock first and then runs `hwclock -w` for the RTC; a
    /// guest without a working `hwclock` fails the request although its clock was set.
    /// So a refusal is checked with `guest-get-time`: a clock within `tolerance` of the
    /// host's is what the caller needs, and only a clock still wrong fails.
    pub async fn set_time(&mut self, tolerance: Duration) -> Result<(), AgentError> {
        let err = match self
            .execute(
                "guest-set-time",
                json!({ "time": unix_ns(SystemTime::now()) }),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e @ AgentError::Command { .. }) => e,
            Err(e) => return Err(e),
        };
        let before = unix_ns(SystemTime::now());
        let guest = self.get_time().await?;
        let after = unix_ns(SystemTime::now());
        let tol = tolerance.as_nanos() as i128;
        if guest + tol < before || guest > after + tol {
            return Err(err);
        }
        tracing::info!(
            "{}; the guest clock is set all the same",
            crate::one_line(&err)
        );
        Ok(())
    }

    /// The guest's clock, in nanoseconds since the Unix epoch.
    pub async fn get_time(&mut self) -> Result<i128, AgentError> {
        let v = self.execute("guest-get-time", Value::Null).await?;
        v.as_i64()
            .map(i128::from)
            .ok_or_else(|| AgentError::Protocol(format!("guest-get-time returned {v}")))
    }

    /// Sets the guest clock from the host's unless it is already within `tolerance`.
    /// Setting it is costly (qemu-ga runs `hwclock` in a new process), reading is not;
    /// a clone that has been running since its clock was set needs no new setting.
    /// Returns whether it set the clock.
    pub async fn sync_time(&mut self, tolerance: Duration) -> Result<bool, AgentError> {
        let guest = self.get_time().await?;
        let host = unix_ns(SystemTime::now());
        tracing::debug!(offset_ms = (host - guest) / 1_000_000, "guest clock offset");
        if (host - guest).unsigned_abs() <= tolerance.as_nanos() {
            return Ok(false);
        }
        self.set_time(tolerance).await?;
        Ok(true)
    }

    /// Runs `argv` in the guest, waits for it to exit and returns its output; the whole
    /// of it, agent requests included, within `timeout`.
    pub async fn exec(
        &mut self,
        argv: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let deadline = Instant::now() + timeout;
        let (path, args) = argv
            .split_first()
            .ok_or_else(|| AgentError::Protocol("empty command".into()))?;
        let started = self
            .execute_until(
                "guest-exec",
                json!({ "path": path, "arg": args, "capture-output": true }),
                deadline,
            )
            .await?;
        let pid = started["pid"]
            .as_i64()
            .ok_or_else(|| AgentError::Protocol(format!("guest-exec returned {started}")))?;
        let mut poll = Duration::from_millis(2);
        loop {
            let status = self
                .execute_until("guest-exec-status", json!({ "pid": pid }), deadline)
                .await?;
            if status["exited"].as_bool() == Some(true) {
                return exec_output(&status);
            }
            if Instant::now() >= deadline {
                return Err(AgentError::ExecTimeout(timeout));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(50));
        }
    }

    /// Drains anything left to read without blocking (used by tests of the protocol).
    #[cfg(test)]
    async fn drain(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(10), self.stream.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }
}

/// qemu-ga keeps at most this much of each stream (`GUEST_EXEC_MAX_OUTPUT`).
pub const AGENT_OUTPUT_CAP: usize = 16 << 20;

/// The output of an exited command from its `guest-exec-status`: the bytes the guest
/// wrote, or an error if qemu-ga cut them. Its `out-truncated` flag is not enough:
/// qemu-ga 10.0.2 answered `false` for 17 MiB cut to 16. So a stream that fills the
/// cap counts as cut (one that is exactly 16 MiB long cannot be told apart).
fn exec_output(status: &Value) -> Result<ExecOutput, AgentError> {
    let stdout = decode(&status["out-data"])?;
    let stderr = decode(&status["err-data"])?;
    for (flag, stream, bytes) in [
        ("out-truncated", "stdout", &stdout),
        ("err-truncated", "stderr", &stderr),
    ] {
        if status[flag].as_bool() == Some(true) || bytes.len() >= AGENT_OUTPUT_CAP {
            return Err(AgentError::OutputTruncated { stream });
        }
    }
    let exit_code = match (status["exitcode"].as_i64(), status["signal"].as_i64()) {
        (_, Some(sig)) => 128 + sig as i32,
        (Some(code), None) => code as i32,
        (None, None) => -1,
    };
    Ok(ExecOutput {
        exit_code,
        stdout,
        stderr,
    })
}

fn decode(v: &Value) -> Result<Vec<u8>, AgentError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| AgentError::Protocol(format!("output that is not base64: {s:.40}"))),
        other => Err(AgentError::Protocol(format!("output {other:.40}"))),
    }
}

fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i128
}

/// Sync ids only need to differ from stale ones still in the channel.
fn sync_id() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64 & 0x000F_FFFF_FFFF_FFFF) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    #[test]
    fn decode_keeps_bytes_and_refuses_bad_data() {
        assert_eq!(decode(&json!("aGkK")).unwrap(), b"hi\n");
        assert_eq!(decode(&json!("/w==")).unwrap(), [0xFF]);
        assert!(decode(&Value::Null).unwrap().is_empty());
        assert!(decode(&json!("***")).is_err());
    }

    #[test]
    fn exec_output_in_json_is_lossless_and_keeps_text_fields() {
        let out = ExecOutput {
            exit_code: 0,
            stdout: b"hi\n".to_vec(),
            stderr: vec![0xFF, 0x00],
        };
        let v = serde_json::to_value(&out).unwrap();
        assert_eq!(v["stdout"], "hi\n");
        assert_eq!(v["stdout_base64"], "aGkK");
        assert!(v.get("stderr").is_none(), "not UTF-8: no text field");
        assert_eq!(v["stderr_base64"], "/wA=");
        assert_eq!(serde_json::from_value::<ExecOutput>(v).unwrap(), out);
        let old = json!({"exit_code": 1, "stdout": "a", "stderr": ""});
        assert_eq!(
            serde_json::from_value::<ExecOutput>(old).unwrap().stdout,
            b"a"
        );
    }

    #[test]
    fn truncated_output_is_an_error() {
        let st = json!({"exited": true, "exitcode": 0, "out-data": "aGkK", "out-truncated": true});
        assert!(matches!(
            exec_output(&st),
            Err(AgentError::OutputTruncated { stream: "stdout" })
        ));
    }

    /// A fake agent that starts a command and then stops answering (its qemu-ga died
    /// or was stopped: the socket stays open): exec ends at its timeout saying so.
    #[tokio::test]
    async fn exec_ends_when_the_agent_stops_answering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await.unwrap();
            let text = line.strip_prefix(&[0xFF]).unwrap_or(&line);
            let v: Value = serde_json::from_slice(text).unwrap();
            let id = v["arguments"]["id"].as_u64().unwrap();
            let mut out = vec![0xFF];
            out.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
            out.extend_from_slice(b"{\"return\": {\"pid\": 7}}\n");
            r.get_mut().write_all(&out).await.unwrap();
            // Read requests until the client gives up; answer none.
            let mut sink = Vec::new();
            while r.read_until(b'\n', &mut sink).await.unwrap_or(0) > 0 {}
        });
        let mut agent = Agent::connect(&path, Duration::from_secs(5)).await.unwrap();
        let err = agent
            .exec(
                &["/bin/sleep".into(), "30".into()],
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, AgentError::NotAnswering { command, .. } if command == "guest-exec-status"),
            "{err:?}"
        );
        drop(agent);
        server.await.unwrap();
    }

    /// A fake agent that answers only after the second sync attempt and leaves half a
    /// stale reply in the channel first: the client must skip both and then run an exec.
    #[tokio::test]
    async fn sync_skips_garbage_and_stale_replies_then_exec_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            let mut ids = Vec::new();
            while ids.len() < 2 {
                let mut line = Vec::new();
                r.read_until(b'\n', &mut line).await.unwrap();
                let text = line.strip_prefix(&[0xFF]).unwrap_or(&line);
                let v: Value = serde_json::from_slice(text).unwrap();
                ids.push(v["arguments"]["id"].as_u64().unwrap());
            }
            let mut out = b"{\"return\": {\"half a stale".to_vec();
            for id in &ids {
                out.push(0xFF);
                out.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
            }
            r.get_mut().write_all(&out).await.unwrap();
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line).await.unwrap();
            let exec: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(exec["execute"], "guest-exec");
            assert_eq!(exec["arguments"]["path"], "/bin/echo");
            r.get_mut()
                .write_all(b"{\"return\": {\"pid\": 42}}\n")
                .await
                .unwrap();
            line.clear();
            r.read_until(b'\n', &mut line).await.unwrap();
            let st: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(st["arguments"]["pid"], 42);
            r.get_mut()
                .write_all(
                    b"{\"return\": {\"exited\": true, \"exitcode\": 3, \"out-data\": \"aGkK\"}}\n",
                )
                .await
                .unwrap();
        });
        let mut agent = Agent::connect(&path, Duration::from_secs(5)).await.unwrap();
        let out = agent
            .exec(&["/bin/echo".into(), "hi".into()], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            out,
            ExecOutput {
                exit_code: 3,
                stdout: b"hi\n".to_vec(),
                stderr: Vec::new()
            }
        );
        server.await.unwrap();
        assert!(agent.drain().await.is_empty());
    }
}
