//! A command in the guest whose output streams to the host as it is written (see the
//! parent module for the channel), with stdin from the host, environment variables, a
//! working directory and a timeout that kills the guest process.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::{close, flush, open, read, seek_start, sh, write, Backoff, Handle};
use crate::agent::{Agent, AgentError};
use crate::home::{Home, VmName};
use crate::vm::{VmError, VmState};

/// What a streaming command asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    /// The command and its arguments (not empty).
    pub command: Vec<String>,
    /// `KEY=VALUE` pairs added to the agent's environment.
    pub env: Vec<String>,
    /// The directory it runs in (it must exist in the guest).
    pub cwd: Option<String>,
    /// How long it may run; then the guest process is killed.
    pub timeout: Duration,
}

/// A piece of output, as the guest wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum StreamExecError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("{0:?} is not KEY=VALUE")]
    BadEnv(String),
    #[error("the command is empty")]
    Empty,
    #[error("no directory {0} in the guest")]
    NoDir(String),
    #[error("could not prepare the guest for the command ({0}); it needs /bin/sh, mkfifo, dd, setsid and a writable /var/tmp or /tmp")]
    Setup(String),
    #[error("could not read stdin")]
    Stdin(#[source] std::io::Error),
    #[error("timed out after {} s; the guest process was killed", .0.as_secs())]
    TimedOut(Duration),
    #[error("the reader of the output went away; the guest process was killed")]
    Abandoned,
}

/// Makes the command's private directory and prints its path: in /var/tmp where the
/// guest has one, else /tmp. Not /tmp first: a systemd guest empties /tmp once at boot
/// (systemd-tmpfiles' `D /tmp`), which can run after the agent answers, and took the
/// FIFOs of the first command away (its output lost, or the command hung).
const SETUP: &str = r#"n=$1 w=$2
if [ -n "$w" ] && [ ! -d "$w" ]; then exit 3; fi
for b in /var/tmp /tmp; do [ -d "$b" ] && [ -w "$b" ] && break; done
d=$b/$n
umask 077 && mkdir "$d" && mkfifo "$d/o" "$d/e" "$d/r" "$d/ao" "$d/ae" && : >"$d/co" && : >"$d/ce" && printf %s "$d""#;

/// The command's wrapper: one relay per stream, the command in a session of its own
/// (so a timeout kills all of it), its exit code passed on.
const MAIN: &str = r#"d=$1 w=$2 i=$3 n=$4
shift 4
while [ "$n" -gt 0 ]; do export "$1"; shift; n=$((n-1)); done
relay() {
  exec 3<"$d/a$1"
  while :; do
    dd bs=1048576 count=1 of="$d/c$1" 2>/dev/null
    printf "$1" >"$d/r"
    [ -s "$d/c$1" ] || exit 0
    read -r _ <&3
  done
}
relay o <"$d/o" &
relay e <"$d/e" &
(if [ -n "$w" ]; then cd "$w" || exit 125; fi; exec setsid "$@") >"$d/o" 2>"$d/e" <"$i" &
p=$!
echo $p >"$d/p"
wait $p
c=$?
wait
exit $c"#;

/// Kills the command's session (its process group: `setsid` made it the leader) and
/// the wrapper; the relays end when the pipes close.
const KILL: &str = r#"d=$1 s=$2
p=$(cat "$d/p" 2>/dev/null)
if [ -n "$p" ]; then kill -9 -- "-$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; fi
kill -9 "$s" 2>/dev/null
rm -rf "$d"
exit 0"#;

/// One chunk read at most per request (the relay's `dd` block).
const CHUNK: usize = 1 << 20;

struct Channel {
    dir: String,
    ready: Handle,
    acks: [Handle; 2],
    chunks: [Handle; 2],
}

/// Runs `spec` in VM `name`'s guest: output goes to `out` as it comes, `stdin` (if
/// any) is copied to the guest first. Returns the command's exit code (128 + the
/// signal for a command killed by one).
pub async fn exec(
    home: &Home,
    name: &VmName,
    spec: &ExecSpec,
    stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    out: mpsc::Sender<ExecEvent>,
) -> Result<i32, StreamExecError> {
    if spec.command.is_empty() {
        return Err(StreamExecError::Empty);
    }
    if let Some(bad) = spec.env.iter().find(|e| !valid_env(e)) {
        return Err(StreamExecError::BadEnv(bad.clone()));
    }
    let state = VmState::load_running(home, name)?;
    let mut agent = Agent::connect(&state.paths(home).agent(), Duration::from_secs(10)).await?;
    let deadline = Instant::now() + spec.timeout;
    let ch = prepare(&mut agent, spec).await?;
    let result = run(&mut agent, &ch, spec, stdin, &out, deadline).await;
    if let Err(StreamExecError::Agent(e)) = &result {
        if !matches!(e, AgentError::Command { .. }) {
            return result; // the agent is gone or hangs: no cleanup can reach it
        }
    }
    for h in [ch.ready].into_iter().chain(ch.acks).chain(ch.chunks) {
        let _ = close(&mut agent, h).await;
    }
    let _ = sh(&mut agent, "rm -rf \"$1\"", &[&ch.dir]).await;
    result
}

/// Whether `e` is `KEY=VALUE` with a shell variable's name as the key.
pub fn valid_env(e: &str) -> bool {
    match e.split_once('=') {
        Some((k, _)) => {
            !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

async fn prepare(agent: &mut Agent, spec: &ExecSpec) -> Result<Channel, StreamExecError> {
    let name = super::scratch_name();
    let cwd = spec.cwd.as_deref().unwrap_or("");
    let (code, out, err) = sh(agent, SETUP, &[&name, cwd]).await?;
    let dir = String::from_utf8_lossy(&out).into_owned();
    match code {
        0 if dir.starts_with('/') && dir.ends_with(&name) => {}
        3 => return Err(StreamExecError::NoDir(cwd.to_owned())),
        _ => {
            let _ = sh(agent, "rm -rf \"/var/tmp/$1\" \"/tmp/$1\"", &[&name]).await;
            let why = String::from_utf8_lossy(&err).trim().to_owned();
            return Err(StreamExecError::Setup(format!("exit {code}: {why}")));
        }
    }
    let f = |n: &str| format!("{dir}/{n}");
    Ok(Channel {
        ready: open(agent, &f("r"), "r+").await?,
        acks: [
            open(agent, &f("ao"), "r+").await?,
            open(agent, &f("ae"), "r+").await?,
        ],
        chunks: [
            open(agent, &f("co"), "r").await?,
            open(agent, &f("ce"), "r").await?,
        ],
        dir,
    })
}

/// Copies `stdin` into `path` in the guest, 1 MiB at a time.
pub(crate) async fn upload(
    agent: &mut Agent,
    path: &str,
    src: &mut (dyn AsyncRead + Unpin + Send),
) -> Result<(), StreamExecError> {
    let h = open(agent, path, "w").await?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = fill(src, &mut buf).await.map_err(StreamExecError::Stdin)?;
        if n == 0 {
            break;
        }
        write(agent, &h, &buf[..n]).await?;
    }
    flush(agent, &h).await?;
    close(agent, h).await?;
    Ok(())
}

/// Reads until `buf` is full or the end: the number of bytes read.
pub(crate) async fn fill(
    src: &mut (dyn AsyncRead + Unpin + Send),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

async fn run(
    agent: &mut Agent,
    ch: &Channel,
    spec: &ExecSpec,
    stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    out: &mpsc::Sender<ExecEvent>,
    deadline: Instant,
) -> Result<i32, StreamExecError> {
    let input = match stdin {
        Some(src) => {
            let path = format!("{}/in", ch.dir);
            upload(agent, &path, src).await?;
            path
        }
        None => "/dev/null".to_owned(),
    };
    let mut argv: Vec<String> = vec![
        "-c".into(),
        MAIN.into(),
        "sh".into(),
        ch.dir.clone(),
        spec.cwd.clone().unwrap_or_default(),
        input,
        spec.env.len().to_string(),
    ];
    argv.extend(spec.env.iter().cloned());
    argv.extend(spec.command.iter().cloned());
    let started = agent
        .execute(
            "guest-exec",
            serde_json::json!({"path": "/bin/sh", "arg": argv}),
        )
        .await?;
    let pid = started["pid"]
        .as_i64()
        .ok_or_else(|| AgentError::Protocol(format!("guest-exec returned {started}")))?;
    let result = pump(agent, ch, pid, out, deadline).await;
    if matches!(
        result,
        Err(StreamExecError::TimedOut(_) | StreamExecError::Abandoned)
    ) {
        let _ = sh(agent, KILL, &[&ch.dir, &pid.to_string()]).await;
        // Collect the wrapper's status so that qemu-ga forgets it.
        let _ = agent
            .execute("guest-exec-status", serde_json::json!({"pid": pid}))
            .await;
    }
    result.map_err(|e| match e {
        StreamExecError::TimedOut(_) => StreamExecError::TimedOut(spec.timeout),
        e => e,
    })
}

/// Moves chunks from the guest to `out` until both streams ended and the wrapper
/// exited; returns its exit code.
async fn pump(
    agent: &mut Agent,
    ch: &Channel,
    pid: i64,
    out: &mpsc::Sender<ExecEvent>,
    deadline: Instant,
) -> Result<i32, StreamExecError> {
    let mut exit: Option<i32> = None;
    let mut backoff = Backoff::new();
    // Whether the wrapper exited is asked while nothing is ready, at most every 50 ms.
    let mut asked = Instant::now();
    loop {
        if Instant::now() >= deadline {
            return Err(StreamExecError::TimedOut(Duration::ZERO));
        }
        if out.is_closed() {
            return Err(StreamExecError::Abandoned);
        }
        if let Some((b, _)) = read(agent, &ch.ready, 1).await? {
            let Some(&which) = b.first() else {
                continue;
            };
            let i = usize::from(which == b'e');
            // An empty chunk is the stream's end: that relay is gone.
            if forward(agent, &ch.chunks[i], i, out).await? > 0 {
                write(agent, &ch.acks[i], b"\n").await?;
                flush(agent, &ch.acks[i]).await?;
            }
            backoff.reset();
            continue;
        }
        if let Some(code) = exit {
            // Exited, and nothing more is ready: the relays ended before it did.
            return Ok(code);
        }
        if asked.elapsed() < Duration::from_millis(50) {
            backoff.wait(deadline).await;
            continue;
        }
        asked = Instant::now();
        let st = agent
            .execute("guest-exec-status", serde_json::json!({"pid": pid}))
            .await?;
        if st["exited"].as_bool() == Some(true) {
            exit = Some(match (st["exitcode"].as_i64(), st["signal"].as_i64()) {
                (_, Some(sig)) => 128 + sig as i32,
                (Some(code), None) => code as i32,
                (None, None) => -1,
            });
            continue;
        }
        backoff.wait(deadline).await;
    }
}

/// Sends the chunk file's content on; returns its length.
async fn forward(
    agent: &mut Agent,
    chunk: &Handle,
    stream: usize,
    out: &mpsc::Sender<ExecEvent>,
) -> Result<usize, StreamExecError> {
    seek_start(agent, chunk).await?;
    let mut total = 0;
    loop {
        let Some((bytes, eof)) = read(agent, chunk, CHUNK).await? else {
            break;
        };
        total += bytes.len();
        if !bytes.is_empty() {
            let ev = match stream {
                0 => ExecEvent::Stdout(bytes),
                _ => ExecEvent::Stderr(bytes),
            };
            out.send(ev).await.map_err(|_| StreamExecError::Abandoned)?;
        }
        if eof || total == 0 {
            break;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_must_be_key_value() {
        assert!(valid_env("A=1"));
        assert!(valid_env("_X9="));
        assert!(!valid_env("A"));
        assert!(!valid_env("=1"));
        assert!(!valid_env("9A=1"));
        assert!(!valid_env("A-B=1"));
    }
}
