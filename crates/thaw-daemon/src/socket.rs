//! The daemon's Unix socket and its one-daemon-per-home lock.
//!
//! The socket is bound inside a fresh directory only the daemon's user can enter
//! (0700), made 0600, and then renamed into place: at no moment can another user
//! connect to it.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thaw::fsutil::{Context, FileLock, IoError, LockMode};
use thaw::Home;

use crate::ServeError;

/// Held for the daemon's life: a second daemon on the same home would fight over
/// its database and pool directory.
pub(crate) struct HomeLock {
    _lock: FileLock,
}

/// Takes the home's lock, waiting up to two seconds: the pool keeper of a daemon that
/// just died may hold it while it cleans up.
pub(crate) async fn lock_home(home: &Home) -> Result<HomeLock, ServeError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match try_lock_home(home) {
            Err(ServeError::HomeInUse(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Takes the home's lock, or fails at once with [`ServeError::HomeInUse`].
pub(crate) fn try_lock_home(home: &Home) -> Result<HomeLock, ServeError> {
    let path = home.root().join("thawd.lock");
    match FileLock::try_acquire(&path, LockMode::Exclusive)? {
        Some(lock) => Ok(HomeLock { _lock: lock }),
        None => Err(ServeError::HomeInUse(home.root().to_owned())),
    }
}

/// Refuses a socket another daemon (or anything else) answers on; removes a stale one.
pub(crate) async fn ensure_free(path: &Path) -> Result<(), ServeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IoError::new("inspect", path, e).into()),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket(path.to_owned()));
    }
    if crate::client::Client::connect_async(path).await.is_some() {
        return Err(ServeError::AlreadyRunning(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::SocketInUse(path.to_owned()));
    }
    tracing::info!(socket = %path.display(), "removing a stale socket");
    Ok(std::fs::remove_file(path).at("remove the stale socket", path)?)
}

/// The bound socket; removed on drop if it is still ours.
pub(crate) struct Socket {
    path: PathBuf,
    identity: (u64, u64),
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds `path` with mode 0600 (see the module doc). Needs a tokio runtime.
pub(crate) fn bind(path: &Path) -> Result<(tokio::net::UnixListener, Socket), ServeError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).at("create", parent)?;
    let private = parent.join(format!(".thawd-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&private);
    DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .at("create", &private)?;
    let bound = (|| {
        let tmp = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp).at("bind", &tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .at("restrict", &tmp)?;
        std::fs::rename(&tmp, path).at("move the socket to", path)?;
        Ok::<_, ServeError>(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    let listener = bound?;
    let meta = std::fs::symlink_metadata(path).at("inspect", path)?;
    let socket = Socket {
        path: path.to_owned(),
        identity: (meta.dev(), meta.ino()),
    };
    listener.set_nonblocking(true).at("configure", path)?;
    let listener = tokio::net::UnixListener::from_std(listener).at("listen on", path)?;
    Ok((listener, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let (_listener, socket) = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Only the socket is left beside it: the private bind directory is gone.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_removed_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            ensure_free(&path).await,
            Err(ServeError::SocketInUse(_))
        ));
        drop(live); // the file stays: a stale socket
        assert!(path.exists());
        ensure_free(&path).await.unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(
            ensure_free(&path).await,
            Err(ServeError::NotASocket(_))
        ));
    }

    #[tokio::test]
    async fn one_daemon_per_home() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let held = lock_home(&home).await.unwrap();
        assert!(matches!(
            try_lock_home(&home),
            Err(ServeError::HomeInUse(_))
        ));
        assert!(matches!(
            lock_home(&home).await,
            Err(ServeError::HomeInUse(_))
        ));
        drop(held);
        try_lock_home(&home).unwrap();
    }
}
