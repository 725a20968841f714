//! thawd: thaw's operations as an HTTP/JSON API on a Unix socket, with state that
//! survives the daemon.
//!
//! The daemon is a thin shell, like the CLI: handlers turn requests into calls to
//! [`thaw::ops`] and the warm [`thaw::pool::Pool`], and results into JSON. What it adds
//! is what a long-running process can: a warm pool, a limit on how many VMs run, and a
//! SQLite database (`$THAW_HOME/thawd.db`) from which a restarted daemon picks up the
//! VMs and pool configurations of the previous one. See `docs/api.md`.
//!
//! [`serve`] runs the daemon; [`client::Client`] talks to one.

mod answer;
mod api;
pub mod bench;
mod check;
pub mod client;
mod conn;
mod db;
mod error;
mod extract;
pub mod keeper;
pub mod openapi;
mod reaper;
mod recover;
mod socket;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use thaw::pool::{Orphans, Pool, PoolError};
use thaw::qemu::{Qemu, QemuError};
use thaw::snapshot::SnapshotCheckError;
use thaw::{Accel, Home};

#[doc(hidden)]
pub use check::check_request_body;
pub use db::DbError;
pub use error::one_line;

/// The default socket: `$THAW_HOME/thawd.sock`.
pub fn default_socket(home: &Home) -> PathBuf {
    home.root().join("thawd.sock")
}

/// What `thawd` is started with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub home: Home,
    /// Where to listen (default `$THAW_HOME/thawd.sock`).
    pub socket: PathBuf,
    /// The most VMs (booted and restored, counting those starting) at once; requests
    /// beyond it get 429.
    pub max_vms: u32,
    /// How long a connection may take to send a whole request head (counted from the
    /// connect, or from the previous answer on a kept-alive connection) or a body;
    /// one that takes longer is closed (a body: 408).
    pub header_timeout: std::time::Duration,
}

impl ServeConfig {
    pub fn new(home: Home) -> ServeConfig {
        ServeConfig {
            socket: default_socket(&home),
            home,
            max_vms: 64,
            header_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Why the daemon could not start (or stopped serving).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another thawd already runs for {0}")]
    HomeInUse(PathBuf),
    #[error("another thawd already answers on {0}")]
    AlreadyRunning(PathBuf),
    #[error("something other than thawd listens on {0}; choose another --socket")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; remove it or choose another --socket")]
    NotASocket(PathBuf),
    #[error("could not {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
}

/// Runs the daemon until `shutdown` completes, then ends the pool's processes (VMs,
/// also clones taken from the pool, keep running) and removes the socket.
///
/// # Errors
/// When another daemon runs for the same home or answers on the socket, when the
/// socket cannot be bound, the database cannot be opened, or QEMU is not found.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let home = config.home;
    home.ensure().map_err(|source| ServeError::Io {
        step: "create",
        path: home.root().to_owned(),
        source,
    })?;
    let _lock = socket::lock_home(&home).await?;
    socket::ensure_free(&config.socket).await?;
    let db = Arc::new(db::Db::open(&home.root().join(db::DB_FILE))?);
    let qemu = Qemu::find(&thaw::guest::cache_dir())?;
    let accel = Accel::detect();
    let reaper = reaper::Reaper::spawn().map_err(|source| ServeError::Io {
        step: "watch for the exits of the VMs of",
        path: home.root().to_owned(),
        source,
    })?;

    let recovered = recover::recover(&home, &db).await?;
    if recovered != recover::Recovered::default() {
        tracing::info!(
            adopted = recovered.adopted,
            removed = recovered.removed,
            "picked up the VMs of the previous daemon"
        );
    }
    let observer = Arc::new(recover::DbObserver(db.clone()));
    let _keeper = keeper::spawn(&home);
    // The keeper ends the pool's processes if this daemon dies; clones taken from the
    // pool outlive it like every other VM.
    let pool = Pool::new(
        home.clone(),
        qemu.clone(),
        accel,
        Some(observer),
        Orphans::OwnerCleansUp,
    );
    // From here on the pool runs processes: errors are logged, not returned, so that
    // the pool is always shut down below.
    let configs = db.pool_configs().unwrap_or_else(|e| {
        tracing::error!("pools not restored: {}", one_line(&e));
        Vec::new()
    });
    for (tag, config) in configs {
        if let Err(e) = pool.configure(&tag, config) {
            tracing::warn!(%tag, "pool not restored: {}", one_line(&e));
            if matches!(e, PoolError::Check(SnapshotCheckError::UnknownTag(_))) {
                let _ = db.remove_pool_config(&tag);
            }
        }
    }

    let daemon = Arc::new(api::Daemon::new(
        home,
        qemu,
        accel,
        pool.clone(),
        db,
        config.max_vms,
        reaper,
    ));
    let served = match socket::bind(&config.socket) {
        Ok((listener, socket)) => {
            tracing::info!(socket = %config.socket.display(), pid = std::process::id(), "listening");
            conn::serve(
                listener,
                api::router(daemon),
                config.header_timeout,
                shutdown,
            )
            .await;
            drop(socket);
            Ok(())
        }
        Err(e) => Err(e),
    };
    tracing::info!("shutting down: ending the pool's processes; VMs keep running");
    pool.shutdown().await;
    served
}
