//! Interrupting an operation (the CLI's SIGINT/SIGTERM) without breaking it.
//!
//! The operations that change several things at once — [`crate::boot`], a snapshot
//! ([`crate::snapshot::take`]), [`crate::restore`], [`crate::reset`] — take a
//! [`CancellationToken`] and look at it only where stopping is safe:
//!
//! - a **restore** rolls back: every clone of the request is stopped and removed and
//!   its name released (any moment is safe: a clone's record is written the moment its
//!   QEMU starts, and [`crate::vm::discard`] ends what a record names);
//! - a **snapshot** rolls back before the VM is paused (the VM runs on, no snapshot);
//!   once the VM is paused it finishes: the snapshot is published whole (and with
//!   `--stop` the VM ends), never a VM ended without its snapshot;
//! - a **reset** rolls back while its clone is prepared beside the VM (the VM is
//!   untouched); once the VM's QEMU is replaced it finishes;
//! - a **boot** rolls back: the half-booted VM is stopped and removed.
//!
//! An operation that finished says so with its report; one that rolled back fails with
//! an error whose source is [`Interrupted`], which says what was undone ("interrupted:
//! 3 clone(s) removed" on one line). Cancelling twice changes nothing.
//! Callers that never interrupt (the daemon runs operations detached from the
//! connection) pass a token nobody cancels.

pub use tokio_util::sync::CancellationToken;

/// SIGINT and SIGTERM held until the value is dropped (see [`crate::sys`]): a command
/// holds them from its first line until its handlers are installed.
pub use crate::sys::InterruptsHeld;

use crate::home::VmName;

/// An operation stopped by its caller at a safe point, and what it undid. Each
/// operation's error has a variant `Interrupted` (shown as "interrupted") with this as
/// its source, so callers find it in the error's chain whatever wraps it.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("no snapshot was taken, VM {0} runs as before")]
    Snapshot(VmName),
    #[error("{removed} clone(s) removed")]
    Restore { removed: usize },
    #[error("VM {0} was not reset, it runs as before")]
    Reset(VmName),
    #[error("the boot was rolled back, VM {0} removed")]
    Boot(VmName),
    #[error("the guest command was killed")]
    Exec,
}

/// A test hook: `THAW_TEST_HANG_AT=<step>` makes an operation wait at that step until
/// it is interrupted (then it goes on, honouring the interrupt as it would anywhere
/// there), or forever for an operation nobody can interrupt — so tests can signal or
/// kill it at a known point. Never set in normal use.
pub(crate) async fn test_hang(step: &str, cancel: &CancellationToken) {
    if std::env::var("THAW_TEST_HANG_AT").as_deref() == Ok(step) {
        eprintln!("thaw: test hook: hanging at {step}");
        cancel.cancelled().await;
    }
}
