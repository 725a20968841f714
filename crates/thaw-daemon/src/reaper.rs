//! Reaps the daemon's VM processes as they exit, whoever ends them.
//!
//! The QEMU of every VM the daemon boots, restores or resets is the daemon's child,
//! and the library lets go of its handle once the VM is ready (the VM outlives the
//! request). When such a QEMU exits — stopped through the API, by `thaw stop` from a
//! shell, killed from outside, or crashed — the kernel keeps it as a zombie until its
//! parent waits for it. The library's own stop reaps at once when it can, but it waits
//! only until QEMU's command line is gone, which happens a moment before the process
//! becomes a zombie; and nothing in the daemon ran when something else ended the VM.
//!
//! So the daemon keeps the pids of the VMs it records ([`Reaper::adopt`]) and, on every
//! `SIGCHLD`, waits without blocking for each of them. It waits for those pids only:
//! processes whose exit status other code waits for (the pool's clones before they are
//! taken, `qemu-img`, the pool keeper) are never adopted, so their statuses are never
//! stolen. A pid that is not (or no longer) this process's child is simply dropped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use rustix::process::{waitpid, Pid, WaitOptions};
use tokio::signal::unix::{signal, SignalKind};

/// The pids the daemon reaps; see the module doc.
#[derive(Default)]
pub(crate) struct Reaper {
    pids: Mutex<HashSet<u32>>,
}

impl Reaper {
    /// Starts reaping on `SIGCHLD`; the task ends with the runtime. Needs a tokio
    /// runtime.
    pub fn spawn() -> std::io::Result<Arc<Reaper>> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper::default());
        let r = reaper.clone();
        tokio::spawn(async move {
            while sigchld.recv().await.is_some() {
                r.sweep();
            }
        });
        Ok(reaper)
    }

    /// Reaps `pid` once it exits (at once if it already has: its `SIGCHLD` may have
    /// come before this). Call it only when no other code will wait for `pid`.
    pub fn adopt(&self, pid: u32) {
        if pid == 0 {
            return;
        }
        if !reaped_or_foreign(pid) {
            self.pids.lock().expect("reaper lock").insert(pid);
            // It may have exited between the look above and the insert, its SIGCHLD
            // handled by a sweep that did not know it yet.
            self.sweep();
        }
    }

    /// Waits (without blocking) for every adopted pid; forgets those that are done.
    fn sweep(&self) {
        self.pids
            .lock()
            .expect("reaper lock")
            .retain(|&pid| !reaped_or_foreign(pid));
    }

    /// How many adopted processes still run (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pids.lock().expect("reaper lock").len()
    }
}

/// Waits for `pid` without blocking: true when it was reaped now, or is not a child of
/// this process (already reaped, or never ours).
fn reaped_or_foreign(pid: u32) -> bool {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return true;
    };
    match waitpid(Some(p), WaitOptions::NOHANG) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(Errno::INTR) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn state(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn adopted_children_are_reaped_and_others_left_alone() {
        let reaper = Reaper::spawn().unwrap();
        let adopted = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let mut kept = std::process::Command::new("true").spawn().unwrap();
        let pid = adopted.id();
        reaper.adopt(pid);
        drop(adopted); // a dropped std Child is never waited for
        let deadline = Instant::now() + Duration::from_secs(30);
        while state(pid).is_some() {
            assert!(Instant::now() < deadline, "pid {pid} not reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(reaper.len(), 0);
        // A child that was not adopted keeps its exit status for its own waiter.
        assert!(kept.wait().unwrap().success());
        // A pid that is not our child is dropped at once.
        reaper.adopt(1);
        assert_eq!(reaper.len(), 0);
    }
}
