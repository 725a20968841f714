//! File-system steps every writer shares: atomic writes, directory fsync, capped
//! reads, temp-file names, and the store lock.
//!
//! Every file the store creates is first written under a temp name
//! (`.tmp-<pid>-<seq>-<final name>`) in the directory it ends up in, synced,
//! renamed over its final name, and the directory is synced. A reader therefore
//! sees a complete file or none, and a process killed midway leaves only a temp
//! file, which [`is_stale_temp`] recognizes and `gc` removes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

/// A file-system step that failed, with the path it was applied to.
#[derive(Debug, thiserror::Error)]
#[error("cannot {step} {}", path.display())]
pub struct IoError {
    /// What was being done: "open", "read", "sync_all", "rename", ...
    pub step: &'static str,
    /// The file or directory it was done to.
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub(crate) fn new(step: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            step,
            path: path.into(),
            source,
        }
    }
}

/// Attaches a step and a path to an `io::Result`.
pub(crate) trait Context<T> {
    fn at(self, step: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T, E: Into<io::Error>> Context<T> for Result<T, E> {
    fn at(self, step: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|e| IoError::new(step, path, e.into()))
    }
}

const TEMP_PREFIX: &str = ".tmp-";

/// A temp file older than this is stale whatever its pid says (pids are reused).
const TEMP_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh temp path beside `path`, unique within this process and across
/// processes (the pid is part of the name, which is also how staleness is judged).
pub(crate) fn temp_path_for(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{seq}-{name}", std::process::id()))
}

/// Whether a directory entry name is one of our temp files.
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Whether the temp file at `path` (named by [`temp_path_for`]) belongs to no
/// live writer: its process is gone, or it is older than a day.
pub(crate) fn is_stale_temp(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let pid = name
        .strip_prefix(TEMP_PREFIX)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    let writer_alive = match pid {
        Some(pid) if pid.as_raw_nonzero().get() as u32 == std::process::id() => true,
        // EPERM means the process exists but is not ours to signal.
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    };
    let too_old = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > TEMP_MAX_AGE);
    !writer_alive || too_old
}

/// Writes `bytes` to `path` atomically: a temp file beside it, `sync_all`,
/// `rename`, then an fsync of the directory so the rename itself is durable.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_atomic_with(path, |f| f.write_all(bytes))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Like [`write_atomic`] but without the directory fsync, for callers that
/// write many files into one directory and sync it once at the end; and with
/// the contents produced by `fill`.
pub(crate) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), IoError> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = File::create(&tmp).at("create", &tmp)?;
        fill(&mut f).at("write", &tmp)?;
        // Data must be on disk before the rename makes the name visible:
        // otherwise a crash could leave a complete-looking name with no data.
        f.sync_all().at("sync_all", &tmp)?;
        std::fs::rename(&tmp, path).at("rename into place", path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync directory", dir)
}

/// Creates `dir` if missing and, if it was created, makes that durable in its parent.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), IoError> {
    match std::fs::create_dir(dir) {
        Ok(()) => fsync_dir(dir.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IoError::new("create directory", dir, e)),
    }
}

/// Reads at most `cap` bytes from `reader`; more is an error, not a truncation.
pub(crate) fn read_capped(reader: impl Read, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    read_capped_into(reader, cap, &mut bytes)?;
    Ok(bytes)
}

/// [`read_capped`] appending to `bytes`.
pub(crate) fn read_capped_into(reader: impl Read, cap: u64, bytes: &mut Vec<u8>) -> io::Result<()> {
    let before = bytes.len();
    reader.take(cap + 1).read_to_end(bytes)?;
    if (bytes.len() - before) as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes"),
        ));
    }
    Ok(())
}

/// An advisory lock on the store's `lock` file, held until dropped. Writers take
/// it shared, `gc` exclusive, so `gc` never removes a chunk that an ingest,
/// pull or import in flight has just decided it need not write.
#[derive(Debug)]
pub(crate) struct StoreLock {
    _file: File,
}

impl StoreLock {
    pub(crate) fn shared(path: &Path) -> Result<StoreLock, IoError> {
        StoreLock::take(path, FlockOperation::LockShared)
    }

    pub(crate) fn exclusive(path: &Path) -> Result<StoreLock, IoError> {
        StoreLock::take(path, FlockOperation::LockExclusive)
    }

    fn take(path: &Path, op: FlockOperation) -> Result<StoreLock, IoError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .at("open lock file", path)?;
        rustix::fs::flock(&file, op).at("lock", path)?;
        Ok(StoreLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two!").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_of_a_dead_process_is_stale_and_ours_is_not() {
        let d = tempfile::tempdir().unwrap();
        let ours = temp_path_for(&d.path().join("x"));
        std::fs::write(&ours, b"").unwrap();
        assert!(is_temp_name(ours.file_name().unwrap().to_str().unwrap()));
        assert!(!is_stale_temp(&ours));
        // pid_max is at most 2^22 on Linux, so this pid cannot be alive.
        let dead = d.path().join(".tmp-99999999-0-x");
        std::fs::write(&dead, b"").unwrap();
        assert!(is_stale_temp(&dead));
    }

    #[test]
    fn capped_read_refuses_more() {
        assert_eq!(read_capped(&[1u8; 10][..], 10).unwrap().len(), 10);
        assert!(read_capped(&[1u8; 11][..], 10).is_err());
    }
}
