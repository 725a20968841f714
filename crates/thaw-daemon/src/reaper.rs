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
//!
//! A VM whose QEMU it reaps without the daemon having stopped it ([`Reaper::expect_exit`]
//! was not called for its name) died: the reaper sends `vm.died` with how it ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustix::io::Errno;
use rustix::process::{waitpid, Pid, WaitOptions, WaitStatus};
use thaw::VmName;
use tokio::signal::unix::{signal, SignalKind};

use crate::events::{EventKind, Events};

/// An adopted VM process: its name, and whether the daemon is ending it.
struct Adopted {
    name: Option<VmName>,
    expected: bool,
}

/// The pids the daemon reaps; see the module doc.
#[derive(Default)]
pub(crate) struct Reaper {
    pids: Mutex<HashMap<u32, Adopted>>,
    /// Where deaths are told (the daemon's one event channel).
    pub events: Arc<Events>,
}

impl Reaper {
    /// Starts reaping on `SIGCHLD`; the task ends with the runtime. Needs a tokio
    /// runtime. Deaths go to `events`.
    pub fn spawn(events: Arc<Events>) -> std::io::Result<Arc<Reaper>> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper {
            pids: Mutex::default(),
            events,
        });
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
    /// `name` is the VM's (`vm.died` names it when it exits unexpectedly).
    pub fn adopt(&self, pid: u32, name: Option<&VmName>) {
        if pid == 0 {
            return;
        }
        let adopted = Adopted {
            name: name.cloned(),
            expected: false,
        };
        match reaped_or_foreign(pid) {
            Reaped::Running => {
                self.pids.lock().expect("reaper lock").insert(pid, adopted);
                // It may have exited between the look above and the insert, its SIGCHLD
                // handled by a sweep that did not know it yet.
                self.sweep();
            }
            Reaped::Exited(status) => self.died(pid, &adopted, status),
            Reaped::Foreign => {}
        }
    }

    /// The daemon is about to end the VM `name` (stop, snapshot with stop, reset): its
    /// exit is no death.
    pub fn expect_exit(&self, name: &VmName) {
        for a in self.pids.lock().expect("reaper lock").values_mut() {
            if a.name.as_ref() == Some(name) {
                a.expected = true;
            }
        }
    }

    /// Waits (without blocking) for every adopted pid; forgets those that are done.
    fn sweep(&self) {
        let mut exited = Vec::new();
        self.pids
            .lock()
            .expect("reaper lock")
            .retain(|&pid, a| match reaped_or_foreign(pid) {
                Reaped::Running => true,
                Reaped::Exited(status) => {
                    exited.push((
                        pid,
                        std::mem::replace(
                            a,
                            Adopted {
                                name: None,
                                expected: true,
                            },
                        ),
                        status,
                    ));
                    false
                }
                Reaped::Foreign => false,
            });
        for (pid, a, status) in exited {
            self.died(pid, &a, status);
        }
    }

    fn died(&self, pid: u32, a: &Adopted, status: WaitStatus) {
        let (Some(vm), false) = (&a.name, a.expected) else {
            return;
        };
        let status = describe(status);
        tracing::warn!(%vm, pid, %status, "the VM's QEMU exited without the daemon stopping it");
        self.events.send(EventKind::VmDied {
            vm: vm.clone(),
            pid,
            status,
        });
    }

    /// How many adopted processes still run (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pids.lock().expect("reaper lock").len()
    }
}

enum Reaped {
    Running,
    /// Reaped now, with its status.
    Exited(WaitStatus),
    /// Not a child of this process (already reaped elsewhere, or never ours).
    Foreign,
}

/// Waits for `pid` without blocking.
fn reaped_or_foreign(pid: u32) -> Reaped {
    let Some(p) = Pid::from_raw(pid as i32) else {
        return Reaped::Foreign;
    };
    match waitpid(Some(p), WaitOptions::NOHANG) {
        Ok(Some((_, status))) => Reaped::Exited(status),
        Ok(None) => Reaped::Running,
        Err(Errno::INTR) => Reaped::Running,
        Err(_) => Reaped::Foreign,
    }
}

/// How a process ended, in words: `exit code N` or `killed by signal N`.
fn describe(status: WaitStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended".to_owned(),
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
        let reaper = Reaper::spawn(Arc::default()).unwrap();
        let adopted = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let mut kept = std::process::Command::new("true").spawn().unwrap();
        let pid = adopted.id();
        reaper.adopt(pid, None);
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
        reaper.adopt(1, None);
        assert_eq!(reaper.len(), 0);
    }
}
