//! What a method of `thaw bench --compare` measures and reports: its [`Sample`]s, its
//! [`MethodReport`], and how it fails ([`CompareError`]). Every method module imports
//! this one; none imports another method or the comparison that runs them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use thaw::{Home, SnapshotTag};

use crate::sample::{PoolFillError, Stats};

/// One restore: request → vCPUs running (when the method shows it), → ready.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub running_ms: Option<f64>,
    pub ready_ms: f64,
}

/// One method's figures at one RAM size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodReport {
    /// Stable id: cold-boot, savevm, exec-gzip, exec-zstd, libvirt, thaw-bare, thaw,
    /// thaw-pool-paused, thaw-pool-running, thawd-pool-running.
    pub method: String,
    /// What the table calls it.
    pub label: String,
    pub memory_mib: u32,
    /// Saves measured, and restores measured.
    pub saves: u32,
    pub restores: u32,
    /// Save (request → state on disk; the VM keeps running where the method allows).
    pub save_ms: Option<Stats>,
    /// Bytes the save wrote (for thaw: device state + RAM image as allocated on disk).
    pub save_bytes: Option<u64>,
    /// Restore request → vCPUs running.
    pub running_ms: Option<Stats>,
    /// Restore request → ready.
    pub ready_ms: Stats,
    /// Median ready / thaw's (no pool) median ready.
    pub ready_vs_thaw: Option<f64>,
    /// Median ready / thaw's running pool's median ready.
    pub ready_vs_pool: Option<f64>,
    /// Median running / thaw's (no pool) median running.
    pub running_vs_thaw: Option<f64>,
    /// Method-specific figures (e.g. where the daemon's time goes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// Why the method could not run (then its figures are empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl MethodReport {
    pub fn new(method: &str, label: &str, memory_mib: u32) -> MethodReport {
        MethodReport {
            method: method.into(),
            label: label.into(),
            memory_mib,
            saves: 0,
            restores: 0,
            save_ms: None,
            save_bytes: None,
            running_ms: None,
            ready_ms: Stats::of(&[]),
            ready_vs_thaw: None,
            ready_vs_pool: None,
            running_vs_thaw: None,
            detail: None,
            error: None,
        }
    }

    /// Fills the figures from the samples.
    pub fn with_samples(mut self, saves: &[f64], samples: &[Sample]) -> MethodReport {
        self.saves = saves.len() as u32;
        self.restores = samples.len() as u32;
        if !saves.is_empty() {
            self.save_ms = Some(Stats::of(saves));
        }
        let running: Vec<f64> = samples.iter().filter_map(|s| s.running_ms).collect();
        if !running.is_empty() {
            self.running_ms = Some(Stats::of(&running));
        }
        let ready: Vec<f64> = samples.iter().map(|s| s.ready_ms).collect();
        self.ready_ms = Stats::of(&ready);
        self
    }

    pub fn failed(method: &str, label: &str, memory_mib: u32, e: &dyn std::error::Error) -> Self {
        let mut r = MethodReport::new(method, label, memory_mib);
        r.error = Some(thaw::one_line(e));
        r
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("runs must be at least 1 and at least one RAM size given")]
    Runs,
    #[error("could not {step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Peer(String),
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("{0} is missing: install it (scripts/setup-test.sh)")]
    Missing(&'static str),
    #[error("QMP failed")]
    Qmp(#[from] thaw_qmp::QmpError),
    #[error("resuming after the save failed")]
    Migration(#[from] thaw::migration::MigrationError),
    #[error("the guest agent did not answer")]
    Agent(#[from] thaw::agent::AgentError),
    #[error(transparent)]
    Ready(#[from] thaw::ready::ReadyError),
    #[error("cold boot failed")]
    Boot(#[from] thaw::boot::BootError),
    #[error("snapshot failed")]
    Snapshot(#[from] thaw::snapshot::take::SnapshotError),
    #[error("restore failed")]
    Restore(#[from] thaw::restore::RestoreError),
    #[error(transparent)]
    PoolFill(#[from] PoolFillError),
    #[error(transparent)]
    PoolConfig(#[from] thaw::pool::PoolError),
    #[error(transparent)]
    Disk(#[from] thaw::disk::DiskError),
    #[error("{0}")]
    External(String),
    #[error(transparent)]
    SnapshotCheck(#[from] thaw::snapshot::SnapshotCheckError),
    #[error("the bare restore failed")]
    Clone(#[from] thaw::clone::CloneError),
    #[error("unknown method {0:?} (see thaw bench --help)")]
    UnknownMethod(String),
}

impl CompareError {
    pub fn io(step: &'static str, path: &Path, source: std::io::Error) -> CompareError {
        CompareError::Io {
            step,
            path: path.to_owned(),
            source,
        }
    }
}

/// A boxed future of an [`ExternalMethod`].
pub type ExternalRun<'a> = Pin<Box<dyn Future<Output = Result<MethodReport, String>> + 'a>>;

/// A method the caller measures on thaw's snapshot (`thaw bench` adds restores through
/// a real `thawd`: [`crate::daemon`]).
pub trait ExternalMethod {
    /// Runs `runs` restores of `tag` in `home` (no VM runs there) and reports them.
    fn run<'a>(
        &'a self,
        home: &'a Home,
        tag: &'a SnapshotTag,
        memory_mib: u32,
        runs: u32,
        progress: &'a mut dyn FnMut(&str),
    ) -> ExternalRun<'a>;
}
