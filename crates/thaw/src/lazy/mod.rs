//! Lazily served snapshots: a snapshot whose files come from the chunk store (and,
//! for chunks the store lacks, from a remote) on first touch, without being written
//! out.
//!
//! One server process per `$THAW_HOME` (`thaw lazyfs`, started on demand, see
//! [`ensure_server`]) mounts a read-only FUSE file system at `$THAW_HOME/lazy/mnt`
//! holding one file per registered store file, named by the file's BLAKE3 (the
//! [`FileIndex`]'s `blake3`). A lazily served snapshot's directory holds its
//! `manifest.json` and symbolic links into that mount, so a restore reads it like
//! any other: QEMU maps the RAM image `share=off` from the FUSE file (clones of one
//! snapshot share its page cache) and opens the layers through it.
//!
//! Every chunk is checked against its BLAKE3 before a byte of it is served; a chunk
//! that cannot be read or fetched, or fails the check, is an I/O error to the reader
//! (QEMU ends: SIGBUS on a RAM page, a failed load otherwise), and the reason, naming
//! the chunk, is kept for `thaw ls` under `lazy/failed/<pid>`. See docs/store.md.

pub mod client;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thaw_store::FileIndex;

use crate::home::{Home, SnapshotTag};

/// A server's pid, and its control socket, in its [`LazyDir::server_dir`].
const PID_FILE: &str = "server.pid";
pub(crate) const CTL_FILE: &str = "ctl.sock";

/// Where a home's lazy server keeps its state.
#[derive(Debug, Clone)]
pub struct LazyDir {
    root: PathBuf,
}

impl LazyDir {
    pub fn new(home: &Home) -> LazyDir {
        LazyDir {
            root: home.root().join("lazy"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The FUSE mount point.
    pub fn mnt(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// The served file named by `blake3`, as readers open it.
    pub fn served(&self, blake3: &str) -> PathBuf {
        self.mnt().join(blake3)
    }

    /// The registration of the file `blake3` ([`FileRecord`]).
    pub fn record(&self, blake3: &str) -> PathBuf {
        self.root.join("files").join(format!("{blake3}.json"))
    }

    /// The directory of this mount namespace's server. A mount is seen only in the
    /// mount namespace it was made in (and those that copy it later): a server started
    /// under `ip netns exec`, which makes a namespace per command, serves there only.
    /// So each namespace has its own server, all mounting at the same path.
    pub fn server_dir(&self) -> PathBuf {
        let ns = std::fs::read_link("/proc/self/ns/mnt")
            .ok()
            .and_then(|l| {
                let l = l.to_string_lossy().into_owned();
                let digits: String = l.chars().filter(char::is_ascii_digit).collect();
                (!digits.is_empty()).then_some(digits)
            })
            .unwrap_or_else(|| "0".into());
        self.root.join(format!("ns-{ns}"))
    }

    /// The directories of every mount namespace's server ([`LazyDir::server_dir`]).
    pub fn server_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|ns| ns.file_name().to_string_lossy().starts_with("ns-"))
            .map(|ns| ns.path())
            .collect()
    }

    pub fn lock(&self) -> PathBuf {
        self.server_dir().join("server.lock")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.server_dir().join(PID_FILE)
    }

    pub fn log(&self) -> PathBuf {
        self.server_dir().join("server.log")
    }

    /// The server's control socket ([`client`]).
    pub fn ctl(&self) -> PathBuf {
        self.server_dir().join(CTL_FILE)
    }

    /// Why the reads of process `pid` failed, when they did.
    pub fn failure(&self, pid: u32) -> PathBuf {
        self.root.join("failed").join(pid.to_string())
    }

    /// The store record of a snapshot being filled from a remote: it becomes the
    /// store's manifest once every chunk is local.
    pub fn pending(&self, tag: &SnapshotTag) -> PathBuf {
        self.root.join("pending").join(format!("{tag}.json"))
    }
}

/// A file the server may serve: its chunks, and the remote to fetch the chunks the
/// local store lacks from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    pub index: FileIndex,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error(transparent)]
    Io(#[from] crate::fsutil::IoError),
    #[error("the lazy snapshot server did not start: {0}")]
    Start(String),
    #[error("the lazy snapshot server did not answer: {0}")]
    Control(String),
}

/// Registers `index` (served from the store, missing chunks from `remote`) and returns
/// the path readers open. A file registered already keeps its record, gaining the
/// remote if it had none.
pub fn register(
    home: &Home,
    index: &FileIndex,
    remote: Option<&str>,
) -> Result<PathBuf, LazyError> {
    use crate::fsutil::Context;
    let dir = LazyDir::new(home);
    let path = dir.record(&index.blake3);
    let parent = path.parent().expect("a record has a parent");
    std::fs::create_dir_all(parent).at("create", parent)?;
    let existing: Option<FileRecord> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let keep = match &existing {
        Some(r) => r.remote.is_some() || remote.is_none(),
        None => false,
    };
    if !keep {
        let record = FileRecord {
            index: index.clone(),
            remote: remote.map(str::to_owned),
        };
        let bytes = serde_json::to_vec(&record).expect("a record serializes");
        thaw_store::fsio::write_atomic_with(&path, |f| std::io::Write::write_all(f, &bytes))?;
    }
    Ok(dir.served(&index.blake3))
}

/// The chunk indexes of the files clones have open through any lazy server of `home`
/// (see [`client::open_files`]), from their registrations.
///
/// # Errors
/// A server that runs did not say which files are open.
pub fn open_indexes(home: &Home) -> Result<Vec<FileIndex>, LazyError> {
    let dir = LazyDir::new(home);
    Ok(client::open_files(home)?
        .iter()
        .filter_map(|b| std::fs::read(dir.record(b)).ok())
        .filter_map(|bytes| serde_json::from_slice::<FileRecord>(&bytes).ok())
        .map(|r| r.index)
        .collect())
}

/// Makes sure this home's server runs and its mount answers (starting it if not),
/// and returns its pid.
pub fn ensure_server(home: &Home) -> Result<u32, LazyError> {
    client::ensure(home)
}

/// Why process `pid` (a clone's QEMU) could not read its lazily served snapshot,
/// when that is why it ended.
pub fn failure_of(home: &Home, pid: u32) -> Option<String> {
    std::fs::read_to_string(LazyDir::new(home).failure(pid))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Whether `path` (a snapshot's file, possibly a link) is served by the lazy server.
pub fn is_served(home: &Home, path: &Path) -> bool {
    std::fs::read_link(path)
        .map(|t| t.starts_with(LazyDir::new(home).mnt()))
        .unwrap_or(false)
}

/// The reason of the newest read failure since `since`, if any (for a restore whose
/// clone ended before it was ready).
pub fn failure_since(home: &Home, since: std::time::Instant) -> Option<String> {
    let age = since.elapsed();
    let dir = LazyDir::new(home).root().join("failed");
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            let ago = modified.elapsed().unwrap_or_default();
            (ago <= age).then_some((ago, e.path()))
        })
        .min_by_key(|(ago, _)| *ago)?;
    std::fs::read_to_string(newest.1)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Ends the lazy servers of `home` (one per mount namespace, if any runs) and detaches
/// the mount: what their clones have not read yet can no longer be read. For tests and
/// the benchmark's cold hosts.
///
/// The connection is aborted first (a forced unmount does that for FUSE, also when the
/// unmount itself then fails as busy): a server thread pushing a chunk into the page
/// cache may be waiting, uninterruptibly, for a page a clone's read holds locked. Killed
/// without the abort, that thread never ends, the read is never answered, and the
/// server, the clone's QEMU and every `sync(2)` on the host wait for ever.
pub fn stop_server(home: &Home) {
    let dir = LazyDir::new(home);
    // The pids are read first: the abort ends a server's session, and a server whose
    // session ended removes its pid file on its way out.
    let pids: Vec<u32> = dir
        .server_dirs()
        .into_iter()
        .filter_map(|ns| std::fs::read_to_string(ns.join(PID_FILE)).ok())
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let _ = rustix::mount::unmount(dir.mnt(), rustix::mount::UnmountFlags::FORCE);
    for &pid in &pids {
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
    // Until they have ended: a server on its way out still unmounts its mount point by
    // path and writes in its directory, which would take the mount of a server started
    // there next, or keep a home being removed from going away.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for pid in pids {
        while crate::vm::any_thread_lives(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let _ = rustix::mount::unmount(dir.mnt(), rustix::mount::UnmountFlags::DETACH);
}
