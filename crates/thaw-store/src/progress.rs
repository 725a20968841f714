//! [`Progress`]: how long operations report how far they got.

/// Receives progress of a long operation. The store calls `start` once with the
/// total it expects, `advance` with each step's bytes, and `finish` when it is
/// done (not after an error). The CLI implements it with a progress bar.
pub trait Progress {
    /// A new phase named `what`, expected to cover `total_bytes`.
    fn start(&mut self, what: &str, total_bytes: u64);
    /// `bytes` more of the current phase are done.
    fn advance(&mut self, bytes: u64);
    /// The current phase is complete.
    fn finish(&mut self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _what: &str, _total_bytes: u64) {}
    fn advance(&mut self, _bytes: u64) {}
    fn finish(&mut self) {}
}
