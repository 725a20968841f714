//! SIGINT and SIGTERM for the whole run of a command.
//!
//! The handlers are installed before the command starts, so a signal never kills thaw
//! in the middle of something. What a signal does depends on the command
//! ([`OnSignal`]): most end at once, as they would by default; the operations with a
//! critical section (boot, snapshot, restore, reset, up) are told through a
//! [`CancellationToken`] and stop only where it is safe (see `thaw::cancel`), then thaw
//! says what was done and exits with 128 + the signal's number. Further signals change
//! nothing: the first one is being honoured.

use std::sync::{Arc, OnceLock};

use thaw::cancel::CancellationToken;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl Signal {
    /// The exit status a shell shows for a command this signal ended: 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }
}

/// What a command does on SIGINT or SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSignal {
    /// End now (nothing of it is left half-done by an exit: it is crash-safe anyway).
    Exit,
    /// The operation (named, for the message) is interrupted at a safe point, or
    /// finishes.
    Finish(&'static str),
    /// The command watches the token itself and ends normally (the daemon).
    Own,
}

/// The signals received so far.
#[derive(Clone)]
pub struct Interrupt {
    token: CancellationToken,
    first: Arc<OnceLock<Signal>>,
}

impl Interrupt {
    /// Installs the handlers (inside the runtime) for the rest of the process.
    pub fn install() -> std::io::Result<Interrupt> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let me = Interrupt {
            token: CancellationToken::new(),
            first: Arc::new(OnceLock::new()),
        };
        let this = me.clone();
        tokio::spawn(async move {
            loop {
                // Both pending at once: SIGINT (the user's) is the one said.
                let got = tokio::select! {
                    biased;
                    Some(()) = int.recv() => Signal::Int,
                    Some(()) = term.recv() => Signal::Term,
                    else => return,
                };
                if this.first.set(got).is_err() {
                    eprintln!("thaw: interrupted again: still finishing safely");
                }
                this.token.cancel();
            }
        });
        Ok(me)
    }

    /// Cancelled by the first signal.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The first signal, if one came.
    pub fn received(&self) -> Option<Signal> {
        self.first.get().copied()
    }

    /// Runs a command's future as `on` says: with [`OnSignal::Exit`], the process ends
    /// with the signal's exit code as soon as one comes.
    pub async fn run<T>(&self, on: OnSignal, command: impl std::future::Future<Output = T>) -> T {
        if on != OnSignal::Exit {
            return command.await;
        }
        tokio::select! {
            r = command => r,
            _ = self.token.cancelled() => {
                let code = self.received().map_or(130, Signal::exit_code);
                std::process::exit(code.into());
            }
        }
    }
}

/// Whether `err` is an operation's rollback after an interrupt (said as it is, not as
/// an error).
pub fn rolled_back(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<thaw::cancel::Interrupted>())
}
