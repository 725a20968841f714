//! What a starting daemon does with what the previous one left, and how pool
//! processes are recorded as they come and go.
//!
//! The records under `vms/` are the truth about processes; the database says which
//! VMs and pool processes the daemon answers for. On start: VMs whose QEMU still runs
//! are adopted, dead ones removed; pool processes a crashed daemon left (if its
//! keeper did not end them) are ended and removed; the snapshot table is synced with
//! the disk.
//! Pool configurations are re-applied by the caller once the pool exists.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use thaw::pool::PoolObserver;
use thaw::vm::{self, VmError, VmState};
use thaw::{Home, SnapshotTag, VmName};

use crate::db::{Db, DbError, PoolEntryRow, VmRow};
use crate::error::one_line;
use crate::events::{EventKind, Events};

/// Records pooled processes in the database, and tells of refills (`pool.refilled`).
pub(crate) struct DbObserver(pub Arc<Db>, pub Arc<Events>);

impl PoolObserver for DbObserver {
    fn created(&self, id: &VmName, tag: &SnapshotTag, pid: u32, dir: &Path) {
        let row = PoolEntryRow {
            id: id.to_string(),
            tag: tag.to_string(),
            pid,
            dir: dir.to_owned(),
        };
        if let Err(e) = self.0.put_pool_entry(&row) {
            tracing::error!(pool_entry = %id, "{}", one_line(&e));
        }
    }

    fn removed(&self, id: &VmName) {
        if let Err(e) = self.0.remove_pool_entry(id.as_str()) {
            tracing::error!(pool_entry = %id, "{}", one_line(&e));
        }
    }

    fn ready(&self, tag: &SnapshotTag, ready: u32, size: u32) {
        self.1.send(EventKind::PoolRefilled {
            tag: tag.clone(),
            ready,
            size,
        });
    }
}

fn row_of(state: &VmState) -> VmRow {
    VmRow {
        name: state.name.clone(),
        pid: state.pid,
        vmgenid: state.vmgenid.to_string(),
        created_unix_ms: state.created_unix_ms,
    }
}

/// What [`recover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub adopted: u32,
    pub removed: u32,
}

pub(crate) async fn recover(home: &Home, db: &Db) -> Result<Recovered, DbError> {
    let mut done = Recovered::default();

    for entry in db.pool_entries()? {
        if vm::process_is_vm(entry.pid, &entry.dir) {
            vm::kill(entry.pid);
        }
    }
    thaw::pool::remove_leftovers(home);
    db.clear_pool_entries()?;

    // Resets the previous daemon was in the middle of.
    thaw::reset::recover_interrupted(home);
    let mut known = HashSet::new();
    for row in db.vms()? {
        known.insert(row.name.clone());
        match VmState::load(home, &row.name) {
            Ok(state) if state.is_alive() => {
                db.put_vm(&row_of(&state))?;
                done.adopted += 1;
            }
            Err(VmError::NotFound(_)) => db.remove_vm(&row.name)?,
            // Dead, or its record unreadable: end whatever still runs from its
            // directory and remove it.
            _ => {
                if let Err(e) = thaw::control::stop(home, &row.name).await {
                    tracing::warn!(vm = %row.name, "{}", one_line(&e));
                }
                db.remove_vm(&row.name)?;
                done.removed += 1;
            }
        }
    }

    // VMs on disk the database does not know: started while no daemon ran, or by a
    // daemon killed before it recorded them.
    for name in vm::list_names(home) {
        if known.contains(&name) {
            continue;
        }
        match VmState::load(home, &name) {
            Ok(state) if state.is_alive() => {
                db.put_vm(&row_of(&state))?;
                done.adopted += 1;
            }
            // A QEMU whose record was never written: nothing could ever manage it.
            Err(VmError::BadRecord { .. }) if !vm::pids_using(&home.vm_dir(&name)).is_empty() => {
                if let Err(e) = thaw::control::stop(home, &name).await {
                    tracing::warn!(vm = %name, "{}", one_line(&e));
                }
                done.removed += 1;
            }
            // A dead VM: `thaw ls` shows it, `thaw stop` removes it.
            _ => {}
        }
    }

    db.set_snapshots(&thaw::snapshot::list_tags(home))?;
    Ok(done)
}
