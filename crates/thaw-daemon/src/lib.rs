//! thawd: thaw's operations as an HTTP/JSON API on a Unix socket (and, when asked, on
//! TCP with TLS and bearer tokens: [`TcpConfig`]), with state that survives the daemon.
//!
//! The daemon is a thin shell, like the CLI: handlers turn requests into calls to the
//! library's operations ([`thaw::boot`], [`thaw::restore`], [`thaw::control`], …) and
//! the warm [`thaw::pool::Pool`], and results into JSON. What it adds
//! is what a long-running process can: a warm pool, a limit on how many VMs run, and a
//! SQLite database (`$THAW_HOME/thawd.db`) from which a restarted daemon picks up the
//! VMs and pool configurations of the previous one. See `docs/api.md`.
//!
//! [`serve`] runs the daemon; [`client::Client`] talks to one.

mod answer;
mod api;
mod auth;
mod check;
pub mod client;
mod conn;
mod db;
mod error;
mod events;
mod extract;
pub mod keeper;
pub mod log;
mod logs;
pub mod manpages;
mod metrics;
pub mod openapi;
mod operations;
mod reaper;
mod recover;
mod request_id;
mod responses;
mod screen;
mod socket;
mod streams;
pub mod tls;
pub mod tokens;
mod transfer;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use thaw::fsutil::Context;
use thaw::pool::{Orphans, Pool, PoolError};
use thaw::qemu::{Qemu, QemuError};
use thaw::snapshot::SnapshotCheckError;
use thaw::{Accel, Home};

#[doc(hidden)]
pub use check::check_request_body;
pub use db::{DbError, DB_FILE};
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
    /// Also listen on TCP.
    pub tcp: Option<TcpConfig>,
}

/// The TCP listener: an address, TLS, and the tokens every request but `/healthz`
/// must carry.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    pub listen: std::net::SocketAddr,
    /// The certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The tokens file (`NAME:SHA256HEX` lines).
    pub tokens: Option<PathBuf>,
    /// Allow what is refused otherwise: no TLS on an address other than loopback, and
    /// no tokens at all.
    pub insecure: bool,
}

/// The TCP listener's command-line options, shared by `thawd` and `thaw serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TcpArgs {
    /// Also listen on TCP at ADDR:PORT (e.g. 0.0.0.0:7420). Needs --tokens, and
    /// --tls-cert/--tls-key beyond loopback, unless --insecure.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// The TLS certificate chain (PEM, leaf first) for --listen.
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM) for --listen.
    #[arg(long, value_name = "FILE", requires_all = ["listen", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// The tokens file for --listen: `NAME:SHA256HEX` lines, mode 0600 (`thaw token new
    /// NAME --tokens FILE` adds one). Read again when it changes.
    #[arg(long, value_name = "FILE", requires = "listen")]
    pub tokens: Option<PathBuf>,
    /// Allow --listen without TLS beyond loopback, or without tokens.
    #[arg(long, requires = "listen")]
    pub insecure: bool,
}

impl TcpArgs {
    /// The listener these options ask for, if any.
    pub fn config(self) -> Option<TcpConfig> {
        self.listen.map(|listen| TcpConfig {
            listen,
            tls: self.tls_cert.zip(self.tls_key),
            tokens: self.tokens,
            insecure: self.insecure,
        })
    }
}

impl TcpConfig {
    /// Refuses a listener anyone could use unknowingly: plain HTTP beyond loopback, or
    /// no tokens, unless `insecure`.
    fn check(&self) -> Result<(), ServeError> {
        if self.insecure {
            return Ok(());
        }
        if self.tls.is_none() && !self.listen.ip().is_loopback() {
            return Err(ServeError::PlainTcp(self.listen));
        }
        if self.tokens.is_none() {
            return Err(ServeError::NoTokens(self.listen));
        }
        Ok(())
    }
}

impl ServeConfig {
    pub fn new(home: Home) -> ServeConfig {
        ServeConfig {
            socket: default_socket(&home),
            home,
            max_vms: 64,
            header_timeout: std::time::Duration::from_secs(30),
            tcp: None,
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
    #[error(transparent)]
    Io(#[from] thaw::fsutil::IoError),
    #[error("{0} is not a loopback address: give --tls-cert and --tls-key (or --insecure to serve plain HTTP there)")]
    PlainTcp(std::net::SocketAddr),
    #[error(
        "listening on {0} needs --tokens FILE (or --insecure to let anyone who reaches it in)"
    )]
    NoTokens(std::net::SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Tokens(#[from] tokens::TokensError),
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
    // The TCP listener's files and address first: a bad one starts nothing.
    let tcp = match &config.tcp {
        Some(t) => Some(tcp_listener(t).await?),
        None => None,
    };
    let home = config.home;
    home.ensure().at("create", home.root())?;
    let _lock = socket::lock_home(&home).await?;
    socket::ensure_free(&config.socket).await?;
    let db = Arc::new(db::Db::open(&home.root().join(db::DB_FILE))?);
    let qemu = Qemu::find(&thaw::guest::cache_dir())?;
    let accel = Accel::detect();
    let events = Arc::new(events::Events::default());
    let reaper = reaper::Reaper::spawn(events.clone())
        .at("watch for the exits of the VMs of", home.root())?;

    // VMs whose time to live passed while no daemon ran go first.
    for name in thaw::control::reap_expired(&home).await {
        tracing::info!(vm = %name, "expired while no daemon ran: stopped and removed");
    }
    let recovered = recover::recover(&home, &db).await?;
    if recovered != recover::Recovered::default() {
        tracing::info!(
            adopted = recovered.adopted,
            removed = recovered.removed,
            "picked up the VMs of the previous daemon"
        );
    }
    let observer = Arc::new(recover::DbObserver(db.clone(), events.clone()));
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
    // Every second, VMs whose time to live passed are stopped and removed (the task
    // ends with the runtime).
    let expiring = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            expiring.expire().await;
        }
    });
    let served = match socket::bind(&config.socket) {
        Ok((listener, socket)) => {
            tracing::info!(socket = %config.socket.display(), pid = std::process::id(), "listening");
            let router = api::router(daemon).route(auth::HEALTHZ, axum::routing::get(healthz));
            let unix = request_id::layer(router.clone());
            let mut listeners = vec![(conn::Listener::Unix(listener), unix)];
            if let Some((listener, tls, tokens)) = tcp {
                let router = match tokens {
                    Some(tokens) => auth::require_tokens(router, tokens),
                    None => router,
                };
                let router = request_id::layer(router);
                listeners.push((conn::Listener::Tcp(listener, tls), router));
            }
            // Event streams never end by themselves: they end when the daemon stops
            // taking connections, so that the open ones can finish.
            let shutdown = async move {
                shutdown.await;
                events.close();
            };
            conn::serve(listeners, config.header_timeout, shutdown).await;
            drop(socket);
            Ok(())
        }
        Err(e) => Err(e),
    };
    tracing::info!("shutting down: ending the pool's processes; VMs keep running");
    pool.shutdown().await;
    served
}

/// `GET /healthz`: the daemon answers (no token needed, for load balancers).
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "ok": true }))
}

type TcpParts = (
    tokio::net::TcpListener,
    Option<tokio_rustls::TlsAcceptor>,
    Option<Arc<tokens::Tokens>>,
);

/// Checks the TCP configuration, reads its certificate, key and tokens, and binds.
async fn tcp_listener(t: &TcpConfig) -> Result<TcpParts, ServeError> {
    t.check()?;
    let tls = match &t.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let tokens = match &t.tokens {
        Some(path) => Some(Arc::new(tokens::Tokens::load(path)?)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(t.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: t.listen,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(t.listen);
    tracing::info!(%addr, tls = tls.is_some(), tokens = tokens.is_some(), "listening on TCP");
    Ok((listener, tls, tokens))
}
