//! The pool keeper: a small process that ends the warm pool's processes when the
//! daemon dies, however it dies.
//!
//! The daemon's pooled QEMU processes run without a parent-death signal
//! (`thaw::pool::Orphans::OwnerCleansUp`: a clone taken from the pool must outlive the
//! daemon), so something else must end the ones never taken if the daemon is killed.
//! The keeper is `thawd --pool-keeper HOME`, started by the daemon with a pipe on its
//! stdin that only the daemon holds (the pipe is close-on-exec, so no QEMU inherits it). When the daemon ends, the pipe
//! closes and the keeper runs [`thaw::pool::remove_leftovers`]: it ends every process
//! still running from a directory under `pool/`, which taken clones have left. A new
//! daemon that already owns the home cleans up itself, so the keeper then does nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};

use thaw::Home;

/// The flag that makes `thawd` a keeper.
pub const FLAG: &str = "--pool-keeper";

/// A running keeper; it does its work once this is dropped and the daemon exits.
pub(crate) struct Keeper {
    _child: Child,
    _pipe: ChildStdin,
}

/// `thawd`: this process if it is thawd, else beside this binary (`thaw serve`), else
/// on `$PATH`.
fn binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "thawd") {
        return Some(exe);
    }
    let sibling = exe.with_file_name("thawd");
    if sibling.is_file() {
        return Some(sibling);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("thawd"))
            .find(|p| p.is_file())
    })
}

/// Starts the keeper for `home`; `None` (with a warning) when it cannot run.
pub(crate) fn spawn(home: &Home) -> Option<Keeper> {
    let warn = |why: &str| {
        tracing::warn!(
            "no pool keeper ({why}): if the daemon is killed, its pooled processes run until the next daemon starts"
        );
    };
    let Some(binary) = binary() else {
        warn("thawd not found");
        return None;
    };
    use std::os::unix::process::CommandExt;
    let spawned = Command::new(&binary)
        .arg(FLAG)
        .arg(home.root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C meant for the daemon does not end it.
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            warn(&format!("could not start {}: {e}", binary.display()));
            return None;
        }
    };
    let mut line = String::new();
    let ready = child
        .stdout
        .take()
        .map(|out| BufReader::new(out).read_line(&mut line))
        .is_some_and(|r| r.is_ok() && line.trim() == "ready");
    let pipe = child.stdin.take();
    match (ready, pipe) {
        (true, Some(pipe)) => Some(Keeper {
            _child: child,
            _pipe: pipe,
        }),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            warn(&format!("{} did not start as a keeper", binary.display()));
            None
        }
    }
}

/// The keeper's life (`thawd --pool-keeper HOME`): say ready, wait for the daemon to
/// end, then end the pool processes it left unless a new daemon owns the home.
pub fn run(home: &Path) -> ExitCode {
    let mut out = std::io::stdout();
    if writeln!(out, "ready").and_then(|()| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    let daemon = std::os::unix::process::parent_id();
    let mut sink = [0u8; 64];
    // Returns at end of file: the daemon ended (or at an error, which ends it too).
    while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
    let home = Home::new(home);
    // The pipe may close a while before a killed daemon's lock on the home is
    // released: its files close one by one, and only once its last thread has exited
    // (its first thread may read as a zombie before that). While any of its threads
    // lives, a held lock is still its own, so try again. Once all are gone, a held
    // lock is a new daemon's, which cleans up itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(_lock) = crate::socket::try_lock_home(&home) {
            thaw::pool::remove_leftovers(&home);
            break;
        }
        if !thaw::vm::any_thread_lives(daemon) || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ExitCode::SUCCESS
}
