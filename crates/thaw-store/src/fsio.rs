//! File-system steps every writer in thaw shares (this crate and the `thaw`
//! library): [`IoError`] with [`Context::at`], atomic writes, directory fsync,
//! capped reads, temp-file names, and [`FileLock`].
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
    /// An error of `step` on `path`.
    pub fn new(step: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            step,
            path: path.into(),
            source,
        }
    }
}

/// Attaches a step and a path to an `io::Result`.
pub trait Context<T> {
    /// `Err(e)` becomes `Err(IoError { step, path, source: e })`.
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
pub fn temp_path_for(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{seq}-{name}", std::process::id()))
}

/// Whether a directory entry name is one of our temp files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Whether the temp file at `path` (named by [`temp_path_for`]) belongs to no
/// live writer: its process is gone, or it is older than a day.
pub fn is_stale_temp(path: &Path) -> bool {
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
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    replace(path, Durability::Synced, |f| f.write_all(bytes))?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Like [`write_atomic`] but without the directory fsync, for callers that
/// write many files into one directory and sync it once at the end; and with
/// the contents produced by `fill`.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), IoError> {
    replace(path, Durability::Synced, fill)
}

/// [`write_atomic`] without any sync: atomic against a crash of this process (a
/// reader sees the old file or the new one, whole), not against a crash of the
/// host. For state rewritten on hot paths that a host crash makes moot anyway
/// (a VM's record: its QEMU dies with the host).
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    replace(path, Durability::Unsynced, |f| f.write_all(bytes))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    Synced,
    Unsynced,
}

/// The one atomic replace: temp file beside `path`, filled, (synced,) renamed.
fn replace(
    path: &Path,
    durability: Durability,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), IoError> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut f = File::create(&tmp).at("create", &tmp)?;
        fill(&mut f).at("write", &tmp)?;
        // Data must be on disk before the rename makes the name visible:
        // otherwise a crash could leave a complete-looking name with no data.
        if durability == Durability::Synced {
            f.sync_all().at("sync_all", &tmp)?;
        }
        std::fs::rename(&tmp, path).at("rename into place", path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory's entries (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync directory", dir)
}

/// Creates `dir` if missing and, if it was created, makes that durable in its parent.
pub fn ensure_dir(dir: &Path) -> Result<(), IoError> {
    match std::fs::create_dir(dir) {
        Ok(()) => fsync_dir(dir.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(IoError::new("create directory", dir, e)),
    }
}

/// Reads at most `cap` bytes from `reader`; more is an error, not a truncation.
pub fn read_capped(reader: impl Read, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    read_capped_into(reader, cap, &mut bytes)?;
    Ok(bytes)
}

/// Reads the file at `path`, refusing one larger than `cap` bytes.
pub fn read_file_capped(path: &Path, cap: u64) -> Result<Vec<u8>, IoError> {
    let f = File::open(path).at("open", path)?;
    read_capped(f, cap).at("read", path)
}

/// [`read_capped`] appending to `bytes`.
pub fn read_capped_into(reader: impl Read, cap: u64, bytes: &mut Vec<u8>) -> io::Result<()> {
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

/// How a [`FileLock`] is held: many shared holders, or one exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// An advisory `flock` on a file or directory, held until dropped; the kernel
/// drops it when the process dies, so a lock is never left behind by a crash.
///
/// thaw's locks are all of this one kind: the store lock (writers shared, `gc`
/// exclusive, so `gc` never removes a chunk an ingest in flight has just decided
/// it need not write), a VM's snapshot lock, a snapshot directory held by a
/// restore or a removal, the `up` key locks and the guest cache lock.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Opens (creating it if missing) the lock file at `path` and waits for the lock.
    pub fn acquire(path: &Path, mode: LockMode) -> Result<FileLock, IoError> {
        FileLock::wait_on(open_lock_file(path)?, path, mode)
    }

    /// Like [`FileLock::acquire`], but `None` at once if another holder conflicts.
    pub fn try_acquire(path: &Path, mode: LockMode) -> Result<Option<FileLock>, IoError> {
        FileLock::try_on(open_lock_file(path)?, path, mode)
    }

    /// Waits for the lock on `file`, already open (a directory, say); `path`
    /// names it in errors.
    pub fn wait_on(file: File, path: &Path, mode: LockMode) -> Result<FileLock, IoError> {
        let op = match mode {
            LockMode::Shared => FlockOperation::LockShared,
            LockMode::Exclusive => FlockOperation::LockExclusive,
        };
        loop {
            match rustix::fs::flock(&file, op) {
                Ok(()) => return Ok(FileLock { file }),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(IoError::new("lock", path, e.into())),
            }
        }
    }

    /// Takes the lock on `file` if no other holder conflicts, else `None`.
    pub fn try_on(file: File, path: &Path, mode: LockMode) -> Result<Option<FileLock>, IoError> {
        let op = match mode {
            LockMode::Shared => FlockOperation::NonBlockingLockShared,
            LockMode::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        match rustix::fs::flock(&file, op) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(IoError::new("lock", path, e.into())),
        }
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

pub fn open_lock_file(path: &Path) -> Result<File, IoError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at("open lock file", path)
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
    fn unsynced_atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic_unsynced(&p, b"one").unwrap();
        write_atomic_unsynced(&p, b"two!").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_atomic_write_leaves_old_file_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |_| Err(io::Error::other("disk on fire"))).unwrap_err();
        assert_eq!(err.step, "write");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn io_error_names_step_and_path() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let err = read_file_capped(&missing, 10).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot open {}", missing.display())
        );
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn file_lock_excludes_and_shares() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let a = FileLock::acquire(&p, LockMode::Shared).unwrap();
        let b = FileLock::try_acquire(&p, LockMode::Shared).unwrap();
        assert!(b.is_some(), "two shared holders");
        assert!(FileLock::try_acquire(&p, LockMode::Exclusive)
            .unwrap()
            .is_none());
        drop((a, b));
        let x = FileLock::try_acquire(&p, LockMode::Exclusive).unwrap();
        assert!(x.is_some(), "free once the shared holders are gone");
        assert!(FileLock::try_acquire(&p, LockMode::Shared)
            .unwrap()
            .is_none());
    }

    #[test]
    fn capped_file_read_refuses_more() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, [0u8; 11]).unwrap();
        assert_eq!(read_file_capped(&p, 11).unwrap().len(), 11);
        let err = read_file_capped(&p, 10).unwrap_err();
        assert_eq!(err.step, "read");
    }

    #[test]
    fn capped_read_refuses_more() {
        assert_eq!(read_capped(&[1u8; 10][..], 10).unwrap().len(), 10);
        assert!(read_capped(&[1u8; 11][..], 10).is_err());
    }
}
