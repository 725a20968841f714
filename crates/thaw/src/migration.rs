//! Saving and loading a VM through QEMU's migration to a file, in two layouts.
//!
//! - **Raw** ([`save`], [`Layout::Raw`]): with `x-ignore-shared`, RAM blocks backed by a
//!   shared, named file are left out of the stream, which then holds the device state
//!   only: the file already is the RAM image. QEMU >= 8.2 migrates to a file directly
//!   (`file:`); older QEMU gets an open descriptor (`getfd` + `fd:`), passed with
//!   SCM_RIGHTS. `THAW_MIGRATION=fd` forces the descriptor path (for testing it on a
//!   new QEMU).
//! - **Mapped** ([`LiveSave`], [`Layout::Mapped`]): with `mapped-ram` (QEMU >= 9.0) the
//!   whole VM goes to one file, RAM pages at fixed offsets (see `mapped`). It works for
//!   any VM, also a clone whose RAM is a private mapping, and it runs *live*: QEMU
//!   copies RAM while the guest runs and stops the vCPUs only for the pages dirtied
//!   last and the device state, so the pause does not grow with RAM size. With
//!   `pause-before-switchover`, QEMU waits once the vCPUs are stopped, so the caller can
//!   freeze the disks at exactly that point.

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

/// The two ways a VM is written to (and read from) a file; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Raw,
    Mapped,
}

/// Whether this QEMU has the `mapped-ram` capability (QEMU >= 9.0).
pub async fn has_mapped_ram(qmp: &Qmp) -> Result<bool, MigrationError> {
    let caps = qmp.execute("query-migrate-capabilities", None).await?;
    Ok(caps
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["capability"] == "mapped-ram")))
}

/// Sets the capabilities of `layout` (every one thaw uses, explicitly: a clone's QEMU
/// keeps those of the load that started it) and migration events.
pub async fn set_capabilities(qmp: &Qmp, layout: Layout) -> Result<(), MigrationError> {
    let mapped = layout == Layout::Mapped;
    let mut caps = vec![
        json!({"capability": "x-ignore-shared", "state": !mapped}),
        json!({"capability": "events", "state": true}),
    ];
    if mapped || has_mapped_ram(qmp).await? {
        caps.push(json!({"capability": "mapped-ram", "state": mapped}));
        caps.push(json!({"capability": "pause-before-switchover", "state": mapped}));
    }
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": caps })),
    )
    .await?;
    Ok(())
}

/// How long the vCPUs may stay stopped for the final pages of a live save, as QEMU
/// estimates it. Files are written at page-cache speed, so this converges in a few
/// passes unless the guest dirties memory faster than that.
const DOWNTIME_LIMIT_MS: u64 = 10;
/// If a live save has not converged by then (a guest dirtying memory very fast), the
/// limit is lifted so it switches over anyway.
const CONVERGE_WITHIN: Duration = Duration::from_secs(20);

/// A live save in `mapped-ram` layout, from `migrate` to completion. The caller drives
/// it: [`LiveSave::start`], then [`LiveSave::wait_paused`] (the vCPUs are stopped and
/// QEMU waits: freeze the disks now), then [`LiveSave::complete`]. The file is
/// written through a descriptor thaw opened (not `O_TRUNC`, so closing it costs QEMU
/// nothing), and closed by thaw once the VM runs again.
pub struct LiveSave<'q> {
    qmp: &'q Qmp,
    events: tokio::sync::broadcast::Receiver<thaw_qmp::Event>,
    file: std::fs::File,
    fdset: u64,
}

impl<'q> LiveSave<'q> {
    /// Starts writing the VM (running or paused) to `path`, a new file.
    pub async fn start(qmp: &'q Qmp, path: &Path) -> Result<LiveSave<'q>, MigrationError> {
        set_capabilities(qmp, Layout::Mapped).await?;
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({"downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": 1u64 << 40})),
        )
        .await?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| MigrationError::Open {
                path: path.to_owned(),
                source,
            })?;
        use std::os::fd::AsFd;
        let added = qmp.execute_with_fd("add-fd", None, file.as_fd()).await?;
        let fdset = added["fdset-id"]
            .as_u64()
            .ok_or_else(|| MigrationError::Failed(format!("add-fd answered {added}")))?;
        let events = qmp.events();
        qmp.execute(
            "migrate",
            Some(json!({ "uri": format!("file:/dev/fdset/{fdset}") })),
        )
        .await?;
        Ok(LiveSave {
            qmp,
            events,
            file,
            fdset,
        })
    }

    /// Waits until QEMU has stopped the vCPUs and waits before the switchover.
    pub async fn wait_paused(&mut self) -> Result<(), MigrationError> {
        let converge = tokio::time::Instant::now() + CONVERGE_WITHIN;
        let deadline = converge + MIGRATION_TIMEOUT;
        let mut lifted = false;
        loop {
            let status = tokio::select! {
                s = next_status(self.qmp, &mut self.events) => s?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(MigrationError::Timeout(CONVERGE_WITHIN + MIGRATION_TIMEOUT));
                }
                _ = tokio::time::sleep_until(converge), if !lifted => {
                    lifted = true;
                    self.qmp.execute("migrate-set-parameters", Some(json!({"downtime-limit": 60_000}))).await?;
                    continue;
                }
            };
            match status.as_str() {
                "pre-switchover" => return Ok(()),
                "failed" | "cancelled" | "completed" => {
                    return Err(failure(self.qmp, &status).await)
                }
                _ => {}
            }
        }
    }

    /// Lets QEMU write the last pages and the device state; returns when it is done
    /// (the VM stays paused, in `postmigrate`: resume it, then [`Saved::close`]).
    pub async fn complete(mut self) -> Result<Saved<'q>, MigrationError> {
        self.qmp
            .execute("migrate-continue", Some(json!({"state": "pre-switchover"})))
            .await?;
        wait(self.qmp, &mut self.events).await?;
        Ok(Saved {
            qmp: self.qmp,
            file: self.file,
            fdset: self.fdset,
        })
    }
}

/// A completed live save whose file is still open in QEMU's fd set and in thaw.
pub struct Saved<'q> {
    qmp: &'q Qmp,
    file: std::fs::File,
    fdset: u64,
}

impl Saved<'_> {
    /// Drops QEMU's copy of the descriptor and closes thaw's. Done after the VM runs
    /// again: closing starts the writeback of what QEMU wrote.
    pub async fn close(self) {
        let _ = self
            .qmp
            .execute("remove-fd", Some(json!({"fdset-id": self.fdset})))
            .await;
        drop(self.file);
    }
}

/// Resumes a VM whose migration just completed. QEMU refuses `cont` until it has
/// finished cleaning up after the migration (a few hundred microseconds).
pub async fn resume_after(qmp: &Qmp) -> Result<(), MigrationError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match qmp.execute("cont", None).await {
            Ok(_) => return Ok(()),
            Err(QmpError::Command { desc, .. })
                if desc.contains("not finalized") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Cancels a migration left running or waiting (by a thaw that was killed mid-way),
/// so the VM can be resumed.
pub async fn cancel_pending(qmp: &Qmp) -> Result<(), MigrationError> {
    let status = query(qmp).await?;
    if matches!(
        status.as_str(),
        "setup" | "active" | "pre-switchover" | "device"
    ) {
        let mut events = qmp.events();
        qmp.execute("migrate_cancel", None).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(
            query(qmp).await?.as_str(),
            "cancelled" | "failed" | "completed"
        ) {
            if tokio::time::Instant::now() > deadline {
                return Err(MigrationError::Timeout(Duration::from_secs(10)));
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), events.recv()).await;
        }
    }
    Ok(())
}

/// Cancels a migration still in its live phase (`setup` or `active`: RAM being copied
/// while the guest runs), leaving the VM running. For a migration whose snapshot was
/// killed: QEMU would go on copying into the dead snapshot's file and then pause the
/// VM at the switchover, waiting for a thaw that is gone. Returns whether it did.
pub async fn cancel_live(qmp: &Qmp) -> Result<bool, MigrationError> {
    if !matches!(query(qmp).await?.as_str(), "setup" | "active") {
        return Ok(false);
    }
    cancel_pending(qmp).await?;
    Ok(true)
}

/// Writes the paused VM's device state to `path` (layout raw: RAM is left out).
pub async fn save(qmp: &Qmp, path: &Path) -> Result<(), MigrationError> {
    set_capabilities(qmp, Layout::Raw).await?;
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

/// Loads a saved VM from `path` into a QEMU started with `-incoming defer`.
pub async fn load(qmp: &Qmp, path: &Path, layout: Layout) -> Result<(), MigrationError> {
    set_capabilities(qmp, layout).await?;
    let mut events = qmp.events();
    if layout == Layout::Raw && use_fd(qmp) {
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

type Events = tokio::sync::broadcast::Receiver<thaw_qmp::Event>;

/// The next migration status: from a MIGRATION event, or from `query-migrate` when
/// none came for a while (the event may have gone by before we listened).
async fn next_status(qmp: &Qmp, events: &mut Events) -> Result<String, MigrationError> {
    loop {
        return Ok(tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) if ev.event == "MIGRATION" => ev.data["status"].as_str().unwrap_or("").to_owned(),
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => query(qmp).await?,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(QmpError::Closed.into()),
            },
            _ = tokio::time::sleep(Duration::from_millis(50)) => query(qmp).await?,
        });
    }
}

async fn failure(qmp: &Qmp, status: &str) -> MigrationError {
    let info = qmp.execute("query-migrate", None).await.unwrap_or_default();
    let why = info["error-desc"].as_str().unwrap_or(status).to_owned();
    MigrationError::Failed(why)
}

/// Waits for the migration to complete.
async fn wait(qmp: &Qmp, events: &mut Events) -> Result<(), MigrationError> {
    let deadline = tokio::time::Instant::now() + MIGRATION_TIMEOUT;
    loop {
        let status = tokio::select! {
            s = next_status(qmp, events) => s?,
            _ = tokio::time::sleep_until(deadline) => return Err(MigrationError::Timeout(MIGRATION_TIMEOUT)),
        };
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => return Err(failure(qmp, &status).await),
            _ => {}
        }
    }
}

async fn query(qmp: &Qmp) -> Result<String, MigrationError> {
    let info = qmp.execute("query-migrate", None).await?;
    Ok(info["status"].as_str().unwrap_or("").to_owned())
}
