//! thawd's own state: an embedded SQLite database at `$THAW_HOME/thawd.db`.
//!
//! It records what the daemon must still know after it dies: the VMs it started, the
//! snapshots, the pool configurations and the pooled QEMU processes. Process facts
//! (pid, RAM file, sockets) stay owned by the VM records under `vms/`; the rows here
//! say which of those VMs the daemon answers for and which pooled processes it owns.
//!
//! The schema version is SQLite's `user_version`; [`MIGRATIONS`] holds one step per
//! version, applied in a transaction on open.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection};
use thaw::pool::{PoolConfig, PoolMode};
use thaw::{SnapshotTag, VmName};

/// The database file, under `$THAW_HOME`.
pub const DB_FILE: &str = "thawd.db";

/// Schema steps: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE vms (
        name TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        vmgenid TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL
    );
    CREATE TABLE snapshots (
        tag TEXT PRIMARY KEY
    );
    CREATE TABLE pool_configs (
        tag TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mode TEXT NOT NULL
    );
    CREATE TABLE pool_entries (
        id TEXT PRIMARY KEY,
        tag TEXT NOT NULL,
        pid INTEGER NOT NULL,
        dir TEXT NOT NULL
    );
",
    "
    ALTER TABLE pool_configs ADD COLUMN warm_ports INTEGER NOT NULL DEFAULT 0;
",
    "
    ALTER TABLE pool_configs ADD COLUMN bind TEXT;
",
];

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("could not open the daemon database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the daemon database {path} has schema version {found}, newer than this thawd knows ({known}); run a newer thawd")]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("could not migrate the daemon database {path} to schema version {version}")]
    Migrate {
        path: PathBuf,
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the daemon database failed while {step}")]
    Query {
        step: &'static str,
        #[source]
        source: rusqlite::Error,
    },
}

fn query(step: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError {
    move |source| DbError::Query { step, source }
}

/// A VM the daemon answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub name: VmName,
    pub pid: u32,
    pub vmgenid: String,
    pub created_unix_ms: u64,
}

/// A pooled QEMU process the daemon owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntryRow {
    pub id: String,
    pub tag: String,
    pub pid: u32,
    pub dir: PathBuf,
}

pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // Only the daemon's user reads its state.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    pub fn vms(&self) -> Result<Vec<VmRow>, DbError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT name, pid, vmgenid, created_unix_ms FROM vms ORDER BY name")
                .map_err(query("listing VMs"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .map_err(query("listing VMs"))?;
            let mut out = Vec::new();
            for row in rows {
                let (name, pid, vmgenid, created) = row.map_err(query("listing VMs"))?;
                // A row whose name no longer parses is not one of ours; skip it.
                if let Ok(name) = name.parse() {
                    out.push(VmRow {
                        name,
                        pid,
                        vmgenid,
                        created_unix_ms: created.max(0) as u64,
                    });
                }
            }
            Ok(out)
        })
    }

    pub fn vm_count(&self) -> Result<u32, DbError> {
        self.with(|c| {
            c.query_row("SELECT COUNT(*) FROM vms", [], |r| r.get(0))
                .map_err(query("counting VMs"))
        })
    }

    pub fn put_vm(&self, row: &VmRow) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO vms (name, pid, vmgenid, created_unix_ms) VALUES (?1, ?2, ?3, ?4)",
                params![row.name.as_str(), row.pid, row.vmgenid, row.created_unix_ms as i64],
            )
            .map(drop)
            .map_err(query("recording a VM"))
        })
    }

    pub fn remove_vm(&self, name: &VmName) -> Result<(), DbError> {
        self.with(|c| {
            c.execute("DELETE FROM vms WHERE name = ?1", [name.as_str()])
                .map(drop)
                .map_err(query("removing a VM"))
        })
    }

    #[cfg(test)]
    pub fn snapshots(&self) -> Result<Vec<String>, DbError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT tag FROM snapshots ORDER BY tag")
                .map_err(query("listing snapshots"))?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(query("listing snapshots"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(query("listing snapshots"))
        })
    }

    pub fn put_snapshot(&self, tag: &SnapshotTag) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO snapshots (tag) VALUES (?1)",
                [tag.as_str()],
            )
            .map(drop)
            .map_err(query("recording a snapshot"))
        })
    }

    /// Forgets a snapshot and its pool configuration.
    pub fn remove_snapshot(&self, tag: &SnapshotTag) -> Result<(), DbError> {
        self.with(|c| {
            c.execute("DELETE FROM snapshots WHERE tag = ?1", [tag.as_str()])
                .map_err(query("removing a snapshot"))?;
            c.execute("DELETE FROM pool_configs WHERE tag = ?1", [tag.as_str()])
                .map(drop)
                .map_err(query("removing a pool configuration"))
        })
    }

    /// Makes the snapshot table exactly `tags` (what is on disk).
    pub fn set_snapshots(&self, tags: &[SnapshotTag]) -> Result<(), DbError> {
        self.with(|c| {
            let tx = c
                .unchecked_transaction()
                .map_err(query("syncing snapshots"))?;
            tx.execute("DELETE FROM snapshots", [])
                .map_err(query("syncing snapshots"))?;
            for t in tags {
                tx.execute("INSERT INTO snapshots (tag) VALUES (?1)", [t.as_str()])
                    .map_err(query("syncing snapshots"))?;
            }
            tx.commit().map_err(query("syncing snapshots"))
        })
    }

    pub fn pool_configs(&self) -> Result<Vec<(SnapshotTag, PoolConfig)>, DbError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT tag, size, mode, warm_ports, bind FROM pool_configs ORDER BY tag")
                .map_err(query("listing pool configurations"))?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, u32>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(query("listing pool configurations"))?;
            let mut out = Vec::new();
            for row in rows {
                let (tag, size, mode, warm_ports, bind) =
                    row.map_err(query("listing pool configurations"))?;
                let (Ok(tag), Ok(mode)) = (tag.parse(), mode.parse::<PoolMode>()) else {
                    continue;
                };
                out.push((
                    tag,
                    PoolConfig {
                        size,
                        mode,
                        warm_ports,
                        bind: bind.and_then(|b| b.parse().ok()),
                    },
                ));
            }
            Ok(out)
        })
    }

    pub fn put_pool_config(&self, tag: &SnapshotTag, config: PoolConfig) -> Result<(), DbError> {
        let mode = match config.mode {
            PoolMode::Paused => "paused",
            PoolMode::Running => "running",
        };
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO pool_configs (tag, size, mode, warm_ports, bind) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    tag.as_str(),
                    config.size,
                    mode,
                    config.warm_ports,
                    config.bind.map(|b| b.to_string())
                ],
            )
            .map(drop)
            .map_err(query("recording a pool configuration"))
        })
    }

    pub fn remove_pool_config(&self, tag: &SnapshotTag) -> Result<(), DbError> {
        self.with(|c| {
            c.execute("DELETE FROM pool_configs WHERE tag = ?1", [tag.as_str()])
                .map(drop)
                .map_err(query("removing a pool configuration"))
        })
    }

    pub fn pool_entries(&self) -> Result<Vec<PoolEntryRow>, DbError> {
        self.with(|c| {
            let mut st = c
                .prepare("SELECT id, tag, pid, dir FROM pool_entries ORDER BY id")
                .map_err(query("listing pool entries"))?;
            let rows = st
                .query_map([], |r| {
                    Ok(PoolEntryRow {
                        id: r.get(0)?,
                        tag: r.get(1)?,
                        pid: r.get(2)?,
                        dir: PathBuf::from(r.get::<_, String>(3)?),
                    })
                })
                .map_err(query("listing pool entries"))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(query("listing pool entries"))
        })
    }

    pub fn put_pool_entry(&self, row: &PoolEntryRow) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO pool_entries (id, tag, pid, dir) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.tag, row.pid, row.dir.to_string_lossy()],
            )
            .map(drop)
            .map_err(query("recording a pool entry"))
        })
    }

    pub fn remove_pool_entry(&self, id: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute("DELETE FROM pool_entries WHERE id = ?1", [id])
                .map(drop)
                .map_err(query("removing a pool entry"))
        })
    }

    pub fn clear_pool_entries(&self) -> Result<(), DbError> {
        self.with(|c| {
            c.execute("DELETE FROM pool_entries", [])
                .map(drop)
                .map_err(query("clearing pool entries"))
        })
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    let known = MIGRATIONS.len() as u32;
    let found: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| DbError::Open {
            path: path.to_owned(),
            source,
        })?;
    if found > known {
        return Err(DbError::TooNew {
            path: path.to_owned(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as u32 + 1;
        let err = |source| DbError::Migrate {
            path: path.to_owned(),
            version,
            source,
        };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let vm = VmRow {
            name: "web".parse().unwrap(),
            pid: 42,
            vmgenid: "5f0c".into(),
            created_unix_ms: 7,
        };
        let tag: SnapshotTag = "base".parse().unwrap();
        let config = PoolConfig {
            size: 2,
            mode: PoolMode::Paused,
            warm_ports: true,
            bind: Some("127.0.0.2".parse().unwrap()),
        };
        let entry = PoolEntryRow {
            id: "pool-1".into(),
            tag: "base".into(),
            pid: 43,
            dir: "/h/pool/pool-1".into(),
        };
        {
            let db = Db::open(&path).unwrap();
            db.put_vm(&vm).unwrap();
            db.put_snapshot(&tag).unwrap();
            db.put_pool_config(&tag, config).unwrap();
            db.put_pool_entry(&entry).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.vms().unwrap(), vec![vm.clone()]);
        assert_eq!(db.vm_count().unwrap(), 1);
        assert_eq!(db.snapshots().unwrap(), vec!["base".to_owned()]);
        assert_eq!(db.pool_configs().unwrap(), vec![(tag.clone(), config)]);
        assert_eq!(db.pool_entries().unwrap(), vec![entry]);

        db.remove_vm(&vm.name).unwrap();
        db.remove_pool_entry("pool-1").unwrap();
        db.remove_snapshot(&tag).unwrap();
        assert!(db.vms().unwrap().is_empty());
        assert!(db.pool_entries().unwrap().is_empty());
        assert!(
            db.pool_configs().unwrap().is_empty(),
            "config goes with its snapshot"
        );
        assert!(db.snapshots().unwrap().is_empty());
    }

    #[test]
    fn a_database_from_a_newer_thawd_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Db::open(&path).unwrap();
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        let err = Db::open(&path).err().expect("refused");
        assert!(matches!(err, DbError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn set_snapshots_mirrors_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join(DB_FILE)).unwrap();
        db.put_snapshot(&"gone".parse().unwrap()).unwrap();
        db.set_snapshots(&["a".parse().unwrap(), "b".parse().unwrap()])
            .unwrap();
        assert_eq!(db.snapshots().unwrap(), vec!["a", "b"]);
    }
}
