//! Saving and loading device state through QEMU's migration, without RAM.
//!
//! With `x-ignore-shared`, RAM blocks backed by a shared, named file are left out of
//! the stream: the file already is the RAM image. QEMU >= 8.2 migrates to a file
//! directly (`file:`); older QEMU gets an open descriptor (`getfd` + `fd:`), passed
//! with SCM_RIGHTS. `THAW_MIGRATION=fd` forces the descriptor path (for testing it on
//! a new QEMU).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use thaw_qmp::{Qmp, QmpError};

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("could not open {path} for the migration stream")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("migration failed: {0}")]
    Failed(String),
    #[error("migration did not finish within {0:?}")]
    Timeout(Duration),
}

/// How long a state save or load may take. Device state is well under a megabyte; this
/// only bounds a wedged QEMU.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

fn use_fd(qmp: &Qmp) -> bool {
    !qmp.version().has_file_migration() || std::env::var("THAW_MIGRATION").as_deref() == Ok("fd")
}

/// Turns on `x-ignore-shared` (RAM stays out of the stream) and migration events.
pub async fn set_capabilities(qmp: &Qmp) -> Result<(), MigrationError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [
            {"capability": "x-ignore-shared", "state": true},
            {"capability": "events", "state": true},
        ]})),
    )
    .await?;
    Ok(())
}

/// Writes the paused VM's device state to `path`.
pub async fn save(qmp: &Qmp, path: &Path) -> Result<(), MigrationError> {
    let mut events = qmp.events();
    if use_fd(qmp) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| MigrationError::Open {
                path: path.to_owned(),
                source,
            })?;
        use std::os::fd::AsFd;
        qmp.execute_with_fd("getfd", Some(json!({"fdname": "thaw-save"})), file.as_fd())
            .await?;
        qmp.execute("migrate", Some(json!({"uri": "fd:thaw-save"})))
            .await?;
    } else {
        let uri = format!("file:{}", path.display());
        qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
    }
    wait(qmp, &mut events).await
}

/// Loads device state from `path` into a QEMU started with `-incoming defer`.
pub async fn load(qmp: &Qmp, path: &Path) -> Result<(), MigrationError> {
    let mut events = qmp.events();
    if use_fd(qmp) {
        let file = std::fs::File::open(path).map_err(|source| MigrationError::Open {
            path: path.to_owned(),
            source,
        })?;
        use std::os::fd::AsFd;
        qmp.execute_with_fd("getfd", Some(json!({"fdname": "thaw-load"})), file.as_fd())
            .await?;
        qmp.execute("migrate-incoming", Some(json!({"uri": "fd:thaw-load"})))
            .await?;
    } else {
        let uri = format!("file:{}", path.display());
        qmp.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .await?;
    }
    wait(qmp, &mut events).await
}

/// Waits for the MIGRATION event that ends the migration; polls `query-migrate` too,
/// in case the event went by before we listened.
async fn wait(
    qmp: &Qmp,
    events: &mut tokio::sync::broadcast::Receiver<thaw_qmp::Event>,
) -> Result<(), MigrationError> {
    let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let status = tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) if ev.event == "MIGRATION" => ev.data["status"].as_str().unwrap_or("").to_owned(),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => query(qmp).await?,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(QmpError::Closed.into()),
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => query(qmp).await?,
            _ = tokio::time::sleep_until(deadline) => return Err(MigrationError::Timeout(MIGRATION_TIMEOUT)),
        };
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let info = qmp.execute("query-migrate", None).await.unwrap_or_default();
                let why = info["error-desc"].as_str().unwrap_or(&status).to_owned();
                return Err(MigrationError::Failed(why));
            }
            _ => {}
        }
    }
}

async fn query(qmp: &Qmp) -> Result<String, MigrationError> {
    let info = qmp.execute("query-migrate", None).await?;
    Ok(info["status"].as_str().unwrap_or("").to_owned())
}
