//! The one place with `unsafe`: process set-up that must run between fork and exec.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{getpid, getppid, set_parent_process_death_signal, Signal};

/// Makes the command's process receive SIGKILL when the thread that spawns it exits
/// (`PR_SET_PDEATHSIG`). Used for the QEMU processes of a warm pool whose owner wants
/// them to die with it (`pool::Orphans::DieWithOwner`). Spawn from a thread that lives
/// as long as the owner (a runtime worker, not a short-lived blocking-pool thread): the
/// signal follows the spawning *thread*.
pub fn kill_with_parent(cmd: &mut Command) {
    let parent = getpid();
    // SAFETY: the closure runs in the child after fork and before exec. It only makes
    // two system calls (prctl, getppid) through rustix, which allocate nothing and
    // take no locks, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before prctl took effect.
            if getppid() != Some(parent) {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}
