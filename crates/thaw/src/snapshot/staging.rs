//! The one owner of a snapshot directory's lifecycle, for every writer (taking a
//! snapshot, writing one out of the store) and every remover (`rm`, evict).
//!
//! A snapshot is written into `snapshots/.tmp-<tag>-<pid>/` ([`Staging::new`]), its
//! files are added there, the manifest is written last and the directory synced
//! ([`Staging::seal`]), and it is published under its tag in one step
//! ([`Staging::publish`]: [`publish`]'s rename that never replaces, then an
//! fsync of `snapshots/`). A crash leaves either no snapshot or a whole one; a
//! staging directory not published is removed when the [`Staging`] is dropped, and
//! one whose writer died is removed by the next writer. A published snapshot is
//! removed by [`remove`]: renamed aside (so it is never seen half removed), the
//! rename made durable, then deleted.

use std::path::{Path, PathBuf};

use crate::fsutil::{self, Context, IoError};
use crate::home::{Home, SnapshotTag};

/// A snapshot directory being written; removed on drop unless published.
#[derive(Debug)]
pub struct Staging {
    home: Home,
    tag: SnapshotTag,
    dir: PathBuf,
    published: bool,
}

impl Staging {
    /// Creates the staging directory of `tag` (removing those of writers that died).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(home: &Home, tag: &SnapshotTag) -> Result<Staging, IoError> {
        super::remove_stale_temp_dirs(home);
        let dir = super::temp_dir(home, tag);
        std::fs::create_dir(&dir).at("create", &dir)?;
        Ok(Staging {
            home: home.clone(),
            tag: tag.clone(),
            dir,
            published: false,
        })
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A path inside the staging directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes the manifest (atomically, synced) and syncs the directory and its
    /// `disks/`, so that once published every entry is durable. The files themselves
    /// are synced by whoever wrote them.
    ///
    /// # Errors
    /// The manifest cannot be written or a directory cannot be synced.
    pub fn seal(&self, manifest: &[u8]) -> Result<(), IoError> {
        fsutil::write_atomic(&self.join(super::MANIFEST_FILE), manifest)?;
        let disks = self.join("disks");
        if disks.is_dir() {
            fsutil::fsync_dir(&disks)?;
        }
        fsutil::fsync_dir(&self.dir)
    }

    /// Publishes the sealed directory as the snapshot `tag` (see
    /// [`publish`]); from then on it is no longer removed on drop.
    ///
    /// # Errors
    /// The tag is taken ([`PublishError::Exists`]) or the rename or sync failed; the
    /// staging directory is then still removed on drop.
    pub fn publish(&mut self) -> Result<(), PublishError> {
        publish(&self.home, &self.dir, &self.tag)?;
        self.published = true;
        Ok(())
    }

    /// Takes a published snapshot back into staging (removed on drop), for a writer
    /// whose step after publishing failed: the snapshot must not stay listed. Best
    /// effort: if it cannot be moved back, it stays published and whole.
    pub fn take_back(&mut self) {
        if self.published && std::fs::rename(self.home.snapshot_dir(&self.tag), &self.dir).is_ok() {
            let _ = fsutil::fsync_dir(&self.home.snapshots_dir());
            self.published = false;
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes the published snapshot directory of `tag`, if there is one: renamed aside
/// first and the rename synced, so a crash half-way never leaves a half-removed
/// snapshot listed, then deleted. The caller holds its removal lock
/// ([`super::inuse::Removal`]).
///
/// # Errors
/// A rename, sync or removal failed.
pub fn remove(home: &Home, tag: &SnapshotTag) -> Result<(), IoError> {
    let dir = home.snapshot_dir(tag);
    if !dir.is_dir() {
        return Ok(());
    }
    let doomed = home
        .snapshots_dir()
        .join(format!(".tmp-rm-{tag}-{}", std::process::id()));
    std::fs::rename(&dir, &doomed).at("remove", &dir)?;
    fsutil::fsync_dir(&home.snapshots_dir())?;
    std::fs::remove_dir_all(&doomed).at("remove", &doomed)
}

/// [`publish`] failed; the temporary directory is left for the caller.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("a snapshot named {0} already exists")]
    Exists(SnapshotTag),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Publishes the snapshot written in `tmp` as `tag`, whose name must be free, in one
/// step: `renameat2(RENAME_NOREPLACE)`, so of two snapshots (or imports) of one tag
/// exactly one wins and the other learns the tag is taken, and whoever wins the name
/// is the one who writes the store's record. Then the directory is synced.
pub fn publish(home: &Home, tmp: &Path, tag: &SnapshotTag) -> Result<(), PublishError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let dest = home.snapshot_dir(tag);
    let io = |source| PublishError::Io(IoError::new("publish the snapshot as", &dest, source));
    match renameat_with(CWD, tmp, CWD, &dest, RenameFlags::NOREPLACE) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOTEMPTY) => {
            return Err(PublishError::Exists(tag.clone()))
        }
        // A filesystem without the flag: a plain rename still cannot replace a
        // snapshot (a directory that is not empty).
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            match std::fs::rename(tmp, &dest) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTEMPTY.raw_os_error()) => {
                    return Err(PublishError::Exists(tag.clone()))
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(e) => return Err(io(e.into())),
    }
    Ok(fsutil::fsync_dir(&home.snapshots_dir())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path().join("home"));
        home.ensure().unwrap();
        (d, home)
    }

    fn entries(home: &Home) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(home.snapshots_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_staging_dropped_unpublished_leaves_nothing() {
        let (_d, home) = home();
        let tag: SnapshotTag = "t".parse().unwrap();
        {
            let s = Staging::new(&home, &tag).unwrap();
            std::fs::write(s.join("state"), b"x").unwrap();
            s.seal(b"{}").unwrap();
            assert_eq!(entries(&home).len(), 1);
        }
        assert!(entries(&home).is_empty(), "{:?}", entries(&home));
    }

    #[test]
    fn a_published_snapshot_stays_whole_and_remove_takes_it_away() {
        let (_d, home) = home();
        let tag: SnapshotTag = "t".parse().unwrap();
        let mut s = Staging::new(&home, &tag).unwrap();
        std::fs::create_dir(s.join("disks")).unwrap();
        std::fs::write(s.join("state"), b"x").unwrap();
        s.seal(b"{\"m\": 1}").unwrap();
        s.publish().unwrap();
        drop(s);
        assert_eq!(entries(&home), vec!["t".to_owned()]);
        let dir = home.snapshot_dir(&tag);
        assert_eq!(
            std::fs::read(dir.join(crate::snapshot::MANIFEST_FILE)).unwrap(),
            b"{\"m\": 1}"
        );
        assert_eq!(std::fs::read(dir.join("state")).unwrap(), b"x");
        // A second writer of the same tag loses and leaves nothing behind.
        let mut other = Staging::new(&home, &tag).unwrap();
        other.seal(b"{}").unwrap();
        assert!(matches!(other.publish(), Err(PublishError::Exists(_))));
        drop(other);
        assert_eq!(entries(&home), vec!["t".to_owned()]);
        remove(&home, &tag).unwrap();
        assert!(entries(&home).is_empty(), "{:?}", entries(&home));
        remove(&home, &tag).unwrap();
    }

    #[test]
    fn a_snapshot_taken_back_is_removed_on_drop() {
        let (_d, home) = home();
        let tag: SnapshotTag = "t".parse().unwrap();
        let mut s = Staging::new(&home, &tag).unwrap();
        s.seal(b"{}").unwrap();
        s.publish().unwrap();
        s.take_back();
        drop(s);
        assert!(entries(&home).is_empty(), "{:?}", entries(&home));
    }

    /// Two snapshots of one tag: the second used to be renamed over the first and fail
    /// with "Directory not empty (os error 39)".
    #[test]
    fn publishing_a_taken_tag_says_it_exists_and_keeps_both() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        home.ensure().unwrap();
        let tag: SnapshotTag = "t".parse().unwrap();
        let (a, b) = (
            home.snapshots_dir().join(".tmp-a"),
            home.snapshots_dir().join(".tmp-b"),
        );
        for (dir, word) in [(&a, "first"), (&b, "second")] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("marker"), word).unwrap();
        }
        publish(&home, &a, &tag).unwrap();
        let err = publish(&home, &b, &tag).unwrap_err();
        assert_eq!(err.to_string(), "a snapshot named t already exists");
        let published = std::fs::read_to_string(home.snapshot_dir(&tag).join("marker"));
        assert_eq!(published.unwrap(), "first");
        assert!(
            b.join("marker").is_file(),
            "the loser's files are its own to remove"
        );
    }
}
