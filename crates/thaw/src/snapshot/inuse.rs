//! Who may remove a snapshot while it is being used: a restore holds its snapshot
//! ([`InUse::hold`], a shared `flock` on the snapshot's directory) from before it reads
//! the manifest until its clones run; removal takes the lock exclusively
//! ([`Removal::lock`]) and is refused while any restore holds it.
//!
//! Before, a snapshot removed while a restore read it failed the restore half-way with
//! QEMU's raw error about a missing state file. Once the clones run, they need no
//! lock: their RAM mapping and disk layers keep the files alive after removal.
//!
//! The lock is on the directory's inode: a restore that opened the directory just
//! before a removal moved it away finds, once it has the lock, that the directory at
//! the snapshot's path is no longer the one it holds, and says the snapshot is gone.

use std::fs::File;
use std::os::unix::fs::MetadataExt;

use crate::fsutil::{FileLock, LockMode};

use crate::home::{Home, SnapshotTag};
use crate::snapshot::SnapshotCheckError;

/// A restore's hold on its snapshot; removal is refused until it is dropped.
#[derive(Debug)]
pub struct InUse {
    _dir: FileLock,
}

impl InUse {
    /// Holds `tag` for a restore (waits while a removal of it is under way).
    ///
    /// # Errors
    /// [`SnapshotCheckError::UnknownTag`] when the snapshot is not there (or was
    /// removed meanwhile); `Io` when its directory cannot be opened or locked.
    pub fn hold(home: &Home, tag: &SnapshotTag) -> Result<InUse, SnapshotCheckError> {
        let dir = open(home, tag)?;
        let path = home.snapshot_dir(tag);
        let io = |source: std::io::Error| SnapshotCheckError::Io {
            path: path.clone(),
            source,
        };
        // A removal holds the lock only for a rename and a directory fsync.
        let dir = FileLock::wait_on(dir, &path, LockMode::Shared).map_err(|e| io(e.source))?;
        let held = dir.file().metadata().map_err(io)?;
        match std::fs::metadata(&path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => {
                Ok(InUse { _dir: dir })
            }
            Ok(_) => Err(SnapshotCheckError::UnknownTag(tag.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(SnapshotCheckError::UnknownTag(tag.clone()))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// A removal's exclusive hold on a snapshot: no restore holds it, and none can start
/// until it is dropped.
#[derive(Debug)]
pub struct Removal {
    _dir: FileLock,
}

/// Why a snapshot cannot be locked for removal.
#[derive(Debug, thiserror::Error)]
pub enum RemovalLockError {
    #[error("no snapshot tagged {0}")]
    UnknownTag(SnapshotTag),
    #[error("snapshot {0} is being restored; remove it once the restore is done")]
    InUse(SnapshotTag),
    #[error("could not lock {tag} for removal")]
    Io {
        tag: SnapshotTag,
        #[source]
        source: std::io::Error,
    },
}

impl Removal {
    /// Locks `tag` for removal, or refuses at once while a restore holds it.
    ///
    /// # Errors
    /// See [`RemovalLockError`].
    pub fn lock(home: &Home, tag: &SnapshotTag) -> Result<Removal, RemovalLockError> {
        let dir = open(home, tag).map_err(|e| match e {
            SnapshotCheckError::Io { source, .. } => RemovalLockError::Io {
                tag: tag.clone(),
                source,
            },
            _ => RemovalLockError::UnknownTag(tag.clone()),
        })?;
        match FileLock::try_on(dir, &home.snapshot_dir(tag), LockMode::Exclusive) {
            Ok(Some(dir)) => Ok(Removal { _dir: dir }),
            Ok(None) => Err(RemovalLockError::InUse(tag.clone())),
            Err(e) => Err(RemovalLockError::Io {
                tag: tag.clone(),
                source: e.source,
            }),
        }
    }
}

fn open(home: &Home, tag: &SnapshotTag) -> Result<File, SnapshotCheckError> {
    let path = home.snapshot_dir(tag);
    File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SnapshotCheckError::UnknownTag(tag.clone())
        } else {
            SnapshotCheckError::Io { path, source }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_snapshot_cannot_be_locked_for_removal_and_a_moved_one_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let tag: SnapshotTag = "base".parse().unwrap();
        assert!(matches!(
            InUse::hold(&home, &tag),
            Err(SnapshotCheckError::UnknownTag(_))
        ));
        std::fs::create_dir_all(home.snapshot_dir(&tag)).unwrap();
        let held = InUse::hold(&home, &tag).unwrap();
        let second = InUse::hold(&home, &tag).unwrap();
        assert!(matches!(
            Removal::lock(&home, &tag),
            Err(RemovalLockError::InUse(_))
        ));
        drop((held, second));
        let removal = Removal::lock(&home, &tag).unwrap();
        std::fs::rename(home.snapshot_dir(&tag), dir.path().join("moved")).unwrap();
        std::fs::create_dir_all(home.snapshot_dir(&tag)).unwrap();
        drop(removal);
        // A new snapshot with the same tag is a different directory: holding it works.
        InUse::hold(&home, &tag).unwrap();
    }
}
