//! How a clone starts: its options, and the gate that holds its device state back
//! until the snapshot's hashes matched.

use std::sync::Arc;

use crate::snapshot::{self, Snapshot, SnapshotCheckError};

/// How [`super::prepare`] starts a clone.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Give the clone the snapshot's VM Generation ID instead of a fresh one.
    pub keep_vmgenid: bool,
    /// Kill QEMU when this process ends (see [`crate::pool::Orphans`]).
    pub die_with_owner: bool,
    /// The snapshot's hashes, still being computed: the device state is loaded once
    /// they matched. `None`: the snapshot was wholly checked before.
    pub hashes: Option<HashGate>,
}

/// A snapshot's hashes ([`snapshot::HashCheck`]) computed on a thread of their own
/// while its clones' QEMUs start: each clone waits here before loading the device
/// state. (Starting QEMU needs only what [`Snapshot::check_to_start`] checked; the
/// device state of a lazily served snapshot may still be arriving from the bucket.)
#[derive(Debug, Clone)]
pub struct HashGate(tokio::sync::watch::Receiver<Option<bool>>);

/// The outcome of the hashes a [`HashGate`] waits for.
pub type HashOutcome = tokio::task::JoinHandle<Result<(), SnapshotCheckError>>;

impl HashGate {
    /// Starts computing `hashes` of `snap`: the gate, and the check's outcome.
    pub fn start(snap: Arc<Snapshot>, hashes: snapshot::HashCheck) -> (HashGate, HashOutcome) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let outcome = tokio::task::spawn_blocking(move || {
            let r = hashes.check(&snap);
            let _ = tx.send(Some(r.is_ok()));
            r
        });
        (HashGate(rx), outcome)
    }

    /// Whether the hashes are known not to match yet.
    pub(super) fn failed(&self) -> bool {
        *self.0.borrow() == Some(false)
    }

    /// Waits for the hashes: whether they matched.
    pub async fn passed(&self) -> bool {
        let mut rx = self.0.clone();
        // An error: the check ended without saying (it panicked).
        let passed = rx.wait_for(Option::is_some).await.map(|v| *v == Some(true));
        passed.unwrap_or(false)
    }
}
