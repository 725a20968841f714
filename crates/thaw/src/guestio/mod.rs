//! Streaming I/O with a guest through its agent (qemu-ga): a command whose stdout and
//! stderr arrive as the guest writes them ([`exec`]), and files copied in chunks either
//! way ([`files`]). Nothing needs more in the guest than qemu-ga and a POSIX shell
//! with `mkfifo`, `dd`, `setsid` and `pkill` (busybox has them all).
//!
//! Why not a FIFO read directly with `guest-file-read`: qemu-ga reads with `fread` on
//! a non-blocking descriptor; a read that finds fewer bytes than it asked for loops,
//! gets `EAGAIN`, and answers an error, discarding what it had read. So output goes
//! through one small relay per stream in the guest: `dd` takes one `read()` worth of
//! the command's pipe into a chunk file (a regular file reads without that trap), the
//! relay says so with one byte on a shared "ready" FIFO (one byte per relay at most is
//! ever waiting, and reads of one byte cannot lose anything), and waits for the host's
//! acknowledgement on its own FIFO before it reads more. That wait is the back
//! pressure: the guest command blocks on its full pipe while the host is behind, and
//! the host holds at most one chunk (1 MiB) per stream.

pub mod exec;
pub mod files;

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::agent::{Agent, AgentError};

/// One guest-file handle on the agent's side.
pub(crate) struct Handle(i64);

/// Opens `path` in the guest (`mode` as fopen's).
pub(crate) async fn open(agent: &mut Agent, path: &str, mode: &str) -> Result<Handle, AgentError> {
    let v = agent
        .execute("guest-file-open", json!({"path": path, "mode": mode}))
        .await?;
    v.as_i64()
        .map(Handle)
        .ok_or_else(|| AgentError::Protocol(format!("guest-file-open returned {v}")))
}

/// Reads up to `count` bytes: `None` when a FIFO has nothing now (qemu-ga answers
/// EAGAIN as an error), else the bytes and whether the end of the file was reached.
pub(crate) async fn read(
    agent: &mut Agent,
    h: &Handle,
    count: usize,
) -> Result<Option<(Vec<u8>, bool)>, AgentError> {
    let v = match agent
        .execute("guest-file-read", json!({"handle": h.0, "count": count}))
        .await
    {
        Ok(v) => v,
        Err(AgentError::Command { desc, .. }) if desc.contains("temporarily unavailable") => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let bytes = match v["buf-b64"].as_str() {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|_| AgentError::Protocol("guest-file-read data is not base64".into()))?,
        None => Vec::new(),
    };
    Ok(Some((bytes, v["eof"].as_bool().unwrap_or(false))))
}

/// Writes all of `bytes`; returns qemu-ga's refusal as it is (ENOSPC included).
pub(crate) async fn write(agent: &mut Agent, h: &Handle, bytes: &[u8]) -> Result<(), AgentError> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let v = agent
        .execute("guest-file-write", json!({"handle": h.0, "buf-b64": b64}))
        .await?;
    match v["count"].as_u64() {
        Some(n) if n as usize == bytes.len() => Ok(()),
        _ => Err(AgentError::Protocol(format!(
            "guest-file-write wrote {v} of {} bytes",
            bytes.len()
        ))),
    }
}

pub(crate) async fn flush(agent: &mut Agent, h: &Handle) -> Result<(), AgentError> {
    agent
        .execute("guest-file-flush", json!({"handle": h.0}))
        .await
        .map(|_| ())
}

pub(crate) async fn seek_start(agent: &mut Agent, h: &Handle) -> Result<(), AgentError> {
    agent
        .execute(
            "guest-file-seek",
            json!({"handle": h.0, "offset": 0, "whence": "set"}),
        )
        .await
        .map(|_| ())
}

pub(crate) async fn close(agent: &mut Agent, h: Handle) -> Result<(), AgentError> {
    agent
        .execute("guest-file-close", json!({"handle": h.0}))
        .await
        .map(|_| ())
}

/// Runs a short shell script in the guest and returns its exit code and stdout.
pub(crate) async fn sh(
    agent: &mut Agent,
    script: &str,
    args: &[&str],
) -> Result<(i32, Vec<u8>, Vec<u8>), AgentError> {
    let mut argv = vec![
        "/bin/sh".to_owned(),
        "-c".into(),
        script.into(),
        "sh".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = agent.exec(&argv, Duration::from_secs(30)).await?;
    Ok((out.exit_code, out.stdout, out.stderr))
}

/// A private directory's name (no path) for one operation in the guest.
pub(crate) fn scratch_name() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(".thaw-{}-{:x}", std::process::id(), t & 0xFFFF_FFFF_FFFF)
}

/// A sleep that grows from 1 ms to 20 ms while nothing happens.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub fn new() -> Backoff {
        Backoff(Duration::from_millis(1))
    }
    pub fn reset(&mut self) {
        self.0 = Duration::from_millis(1);
    }
    pub async fn wait(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(self.0.min(left)).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(20));
    }
}
