//! Talking to a home's lazy server: starting it, and its control socket (one JSON
//! request per connection, one JSON answer).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{LazyDir, LazyError};
use crate::fsutil::Context;
use crate::home::Home;

/// A control request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Is the server there? (Also counts as activity: it will not go idle now.)
    Hello,
    /// Load these chunks (by file BLAKE3: chunk indexes) into memory now, concurrently;
    /// those in `pack` (when the store lacks them) from that one object of the remote
    /// the files are served from. The chunks fetched from now on are written to the
    /// store only once a `Touched` (or a `Fill`) says the restore is ready, or after
    /// a while (see `ChunkSink::hold`).
    Prefetch {
        files: BTreeMap<String, Vec<u32>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pack: Option<thaw_store::Pack>,
    },
    /// The chunks readers read of these files since the server started. Sent once
    /// the restore's clones are ready: it ends a `Prefetch`'s hold on writes.
    Touched { files: Vec<String> },
    /// Fetch every chunk of these files the store lacks, in the background; then
    /// make the pending record of `tag` the store's manifest.
    Fill { tag: String, files: Vec<String> },
    /// Which files readers have open now (`open_files`): a garbage collection keeps
    /// their chunks, also when no snapshot names them any more.
    Open,
    /// Make the client for this remote now: a restore from it is on its way (its
    /// record being fetched meanwhile), and its first fetch should not wait for it.
    Remote { url: String },
}

/// The error a server that has decided to end answers every request with.
pub const CLOSING: &str = "the lazy server is closing";

/// The server's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub pid: u32,
    /// Bytes fetched from remotes since the server started.
    pub fetched_bytes: u64,
    /// Chunks the server holds in memory (see `Shared::held_chunks`).
    #[serde(default)]
    pub held_chunks: u64,
    #[serde(default)]
    pub touched: HashMap<String, Vec<u32>>,
    /// Files (BLAKE3) readers have open (answering `Open`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_files: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Sends `req` to the server of `home`.
///
/// # Errors
/// No server answers, or it refused the request.
pub fn request(home: &Home, req: &Request) -> Result<Reply, LazyError> {
    request_at(&LazyDir::new(home).ctl(), req)
}

/// Sends `req` to the server whose control socket is `ctl`.
fn request_at(ctl: &std::path::Path, req: &Request) -> Result<Reply, LazyError> {
    let err = |e: std::io::Error| LazyError::Control(e.to_string());
    let mut conn = UnixStream::connect(ctl).map_err(err)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    let mut line = serde_json::to_vec(req).expect("a request serializes");
    line.push(b'\n');
    conn.write_all(&line).map_err(err)?;
    let mut answer = String::new();
    BufReader::new(conn).read_line(&mut answer).map_err(err)?;
    let reply: Reply =
        serde_json::from_str(&answer).map_err(|e| LazyError::Control(e.to_string()))?;
    match reply.error {
        Some(e) => Err(LazyError::Control(e)),
        None => Ok(reply),
    }
}

/// The files (BLAKE3) readers have open on any server of `home` (one per mount
/// namespace). A socket nobody listens on (a server that ended) has none, nor has a
/// server that is closing (it closes only once nothing is open).
///
/// # Errors
/// A server that runs did not say.
pub fn open_files(home: &Home) -> Result<Vec<String>, LazyError> {
    let mut open = Vec::new();
    for ns in LazyDir::new(home).server_dirs() {
        let ctl = ns.join(super::CTL_FILE);
        match UnixStream::connect(&ctl) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            _ => {}
        }
        match request_at(&ctl, &Request::Open) {
            Ok(r) => open.extend(r.open_files),
            Err(LazyError::Control(e)) if e == CLOSING => {}
            Err(e) => return Err(e),
        }
    }
    Ok(open)
}

/// The program that runs the server: `thaw` beside this executable (thawd's case), or
/// this executable itself.
fn server_program() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("thaw"));
    if let Ok(p) = std::env::var("THAW_LAZYFS_PROGRAM") {
        return PathBuf::from(p);
    }
    let beside = me.with_file_name("thaw");
    if me.file_name().is_some_and(|n| n != "thaw") && beside.is_file() {
        return beside;
    }
    me
}

/// Starts the server of `home` unless it answers, and waits until it does.
pub fn ensure(home: &Home) -> Result<u32, LazyError> {
    if let Ok(r) = request(home, &Request::Hello) {
        return visible(home, r.pid);
    }
    let dir = LazyDir::new(home);
    std::fs::create_dir_all(dir.server_dir()).at("create", &dir.server_dir())?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match start_once(home, &dir, deadline)? {
            Some(pid) => return visible(home, pid),
            // It found the lock held by a server that no longer answers: one that is
            // closing, idle. Start another once that one has ended.
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Spawns a server and waits for this home's server to answer: `Some(pid)`. `None`
/// when the spawned one ended at once, without error, and no server answers: the
/// lock was held by a server on its way out.
fn start_once(home: &Home, dir: &LazyDir, deadline: Instant) -> Result<Option<u32>, LazyError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())
        .at("open", &dir.log())?;
    let log2 = log.try_clone().at("open", &dir.log())?;
    let mut child = Command::new(server_program())
        .arg("lazyfs")
        .env("THAW_HOME", home.root())
        .env_remove("THAW_HOST")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C at the terminal is not for it.
        .process_group(0)
        .spawn()
        .map_err(|e| LazyError::Start(e.to_string()))?;
    loop {
        if let Ok(r) = request(home, &Request::Hello) {
            // Waited for when it ends, so that a long-lived process (thawd) keeps no
            // zombie; a CLI that ends first leaves it to init.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(Some(r.pid));
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Another server may have won the race to start.
            if let Ok(r) = request(home, &Request::Hello) {
                return Ok(Some(r.pid));
            }
            if status.success() && Instant::now() < deadline {
                return Ok(None);
            }
            if status.success() {
                let holder = std::fs::read_to_string(dir.pid_file()).unwrap_or_default();
                return Err(LazyError::Start(format!(
                    "another server (pid {}) holds {} but does not answer",
                    holder.trim(),
                    dir.lock().display()
                )));
            }
            let tail = std::fs::read_to_string(dir.log()).unwrap_or_default();
            let last = tail.lines().last().unwrap_or("").to_owned();
            return Err(LazyError::Start(format!("it exited ({status}): {last}")));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LazyError::Start("it did not answer within 15 s".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// FUSE's file system magic number (statfs `f_type`).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// The server `pid` answers; its mount must be visible here too (a server started from
/// another mount namespace, e.g. under `ip netns exec`, mounts where this process
/// cannot see).
fn visible(home: &Home, pid: u32) -> Result<u32, LazyError> {
    let mnt = LazyDir::new(home).mnt();
    match rustix::fs::statfs(&mnt) {
        Ok(st) if st.f_type == FUSE_SUPER_MAGIC => Ok(pid),
        _ => Err(LazyError::Start(format!(
            "its server (pid {pid}) runs, but its mount {} is not visible from this \
             process (another mount namespace?): run thaw where that server runs, or \
             through that host's thawd",
            mnt.display()
        ))),
    }
}
