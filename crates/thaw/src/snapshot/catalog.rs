//! The snapshots of a home: listing them (as a tree of parents and children) and
//! removing them.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::accel::Accel;
use crate::fsutil;
use crate::fsutil::IoError;
use crate::home::{Home, SnapshotTag, VmName};
use crate::snapshot::{self, Memory, Snapshot};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotInfo {
    pub tag: SnapshotTag,
    /// Null when the manifest cannot be read; `problem` says why.
    pub created_unix_ms: Option<u64>,
    pub source_vm: Option<VmName>,
    /// The snapshot this one was taken on top of (a snapshot of one of its clones).
    #[serde(default)]
    pub parent: Option<SnapshotTag>,
    /// Snapshots taken on top of this one.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub children: Vec<SnapshotTag>,
    /// "raw" or "mapped" (see the snapshot format).
    #[serde(default)]
    pub layout: Option<String>,
    pub memory_mib: Option<u32>,
    pub cpus: Option<u32>,
    pub qemu_version: Option<String>,
    pub accel: Option<Accel>,
    /// Bytes on disk (sparse RAM counted as allocated; layers hard-linked with parents
    /// and clones are counted in each). Files kept once, in the store (the default;
    /// see `thaw snapshot --pin`), are not counted: the store's bytes are shared.
    pub disk_bytes: u64,
    pub problem: Option<String>,
    /// Whether the snapshot's directory is here. A snapshot only in the store (evicted,
    /// or whose directory is gone) is listed too, with `false`: a restore writes it
    /// again, `rm` removes its record.
    #[serde(default = "yes")]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub local: bool,
}

fn yes() -> bool {
    true
}

/// Allocated bytes of every file under `dir`.
fn allocated_under(home: &Home, dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => allocated_under(home, &e.path()),
            // Kept once: its bytes are the store's, not this directory's.
            Ok(t) if t.is_symlink() && crate::lazy::is_served(home, &e.path()) => 0,
            _ => fsutil::allocated_bytes(&e.path()).unwrap_or(0),
        })
        .sum()
}

/// Every snapshot whose manifest reads, by tag: those with a directory, and those
/// only in the store (read from their record).
fn open_all(home: &Home) -> BTreeMap<SnapshotTag, Result<Snapshot, String>> {
    let mut all: BTreeMap<SnapshotTag, Result<Snapshot, String>> = snapshot::list_tags(home)
        .into_iter()
        .map(|tag| {
            let s = Snapshot::open(home, &tag).map_err(|e| e.to_string());
            (tag, s)
        })
        .collect();
    for (tag, s) in stored_only(home) {
        all.entry(tag).or_insert(s);
    }
    all
}

/// Snapshots the store has a record of but whose directory is not here.
fn stored_only(home: &Home) -> Vec<(SnapshotTag, Result<Snapshot, String>)> {
    if !home.root().join("store").is_dir() {
        return Vec::new();
    }
    let Ok(store) = super::stored::open(home) else {
        return Vec::new();
    };
    let names = store.list_manifests().unwrap_or_default();
    names
        .into_iter()
        .filter_map(|name| name.parse::<SnapshotTag>().ok())
        .filter(|tag| !home.snapshot_dir(tag).is_dir())
        .map(|tag| {
            let s = super::stored::get(&store, tag.as_str())
                .map_err(|e| crate::one_line(&e))
                .and_then(|r| r.ok_or_else(|| "its record is gone".to_owned()))
                .and_then(|r| {
                    let bytes = r.manifest.as_bytes();
                    let manifest =
                        snapshot::parse_manifest_bytes(&tag, bytes).map_err(|e| e.to_string())?;
                    Ok(Snapshot {
                        dir: home.snapshot_dir(&tag),
                        manifest,
                        manifest_blake3: blake3::hash(bytes).to_hex().to_string(),
                    })
                });
            (tag, s)
        })
        .collect()
}

/// The children of `tag`: snapshots that name it, as it is now, as their parent.
fn children_of(
    all: &BTreeMap<SnapshotTag, Result<Snapshot, String>>,
    tag: &SnapshotTag,
) -> Vec<SnapshotTag> {
    let Some(Ok(me)) = all.get(tag) else {
        return Vec::new();
    };
    all.iter()
        .filter_map(|(t, s)| {
            let p = s.as_ref().ok()?.manifest.parent.as_ref()?;
            (&p.tag == tag && p.manifest_blake3 == me.manifest_blake3).then(|| t.clone())
        })
        .collect()
}

/// Lists every snapshot, parents before their children (depth first, by tag).
pub fn list(home: &Home) -> Vec<SnapshotInfo> {
    let all = open_all(home);
    let info = |tag: &SnapshotTag| {
        let local = home.snapshot_dir(tag).is_dir();
        let disk_bytes = allocated_under(home, &home.snapshot_dir(tag));
        match &all[tag] {
            Ok(s) => {
                let m = &s.manifest;
                SnapshotInfo {
                    tag: tag.clone(),
                    created_unix_ms: Some(m.created_unix_ms),
                    source_vm: Some(m.source_vm.clone()),
                    parent: m.parent.as_ref().map(|p| p.tag.clone()),
                    children: children_of(&all, tag),
                    layout: Some(
                        match m.memory {
                            Memory::Raw => "raw",
                            Memory::Mapped { .. } => "mapped",
                        }
                        .into(),
                    ),
                    memory_mib: Some(m.spec.memory_mib),
                    cpus: Some(m.spec.cpus),
                    qemu_version: Some(m.qemu_version.to_string()),
                    accel: Some(m.accel),
                    disk_bytes,
                    problem: None,
                    local,
                }
            }
            Err(e) => SnapshotInfo {
                tag: tag.clone(),
                created_unix_ms: None,
                source_vm: None,
                parent: None,
                children: Vec::new(),
                layout: None,
                memory_mib: None,
                cpus: None,
                qemu_version: None,
                accel: None,
                disk_bytes,
                problem: Some(e.clone()),
                local,
            },
        }
    };
    let infos: BTreeMap<SnapshotTag, SnapshotInfo> =
        all.keys().map(|t| (t.clone(), info(t))).collect();
    // Roots: no parent, or a parent that is gone.
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    fn walk(
        tag: &SnapshotTag,
        infos: &BTreeMap<SnapshotTag, SnapshotInfo>,
        seen: &mut std::collections::HashSet<SnapshotTag>,
        out: &mut Vec<SnapshotInfo>,
    ) {
        if !seen.insert(tag.clone()) {
            return;
        }
        out.push(infos[tag].clone());
        for c in &infos[tag].children {
            walk(c, infos, seen, out);
        }
    }
    for (tag, i) in &infos {
        let has_parent = i
            .parent
            .as_ref()
            .is_some_and(|p| infos.get(p).is_some_and(|pi| pi.children.contains(tag)));
        if !has_parent {
            walk(tag, &infos, &mut seen, &mut out);
        }
    }
    out
}

/// No snapshot tagged so.
#[derive(Debug, thiserror::Error)]
#[error("no snapshot tagged {0}")]
pub struct UnknownSnapshot(pub SnapshotTag);

/// One snapshot as [`list`] shows it.
///
/// # Errors
/// [`UnknownSnapshot`] when there is no snapshot `tag`.
pub fn get(home: &Home, tag: &SnapshotTag) -> Result<SnapshotInfo, UnknownSnapshot> {
    list(home)
        .into_iter()
        .find(|s| &s.tag == tag)
        .ok_or_else(|| UnknownSnapshot(tag.clone()))
}

#[derive(Debug, thiserror::Error)]
pub enum RemoveSnapshotError {
    #[error("no snapshot tagged {0}")]
    UnknownTag(SnapshotTag),
    #[error("snapshot {tag} has children ({}): remove them first, or remove all with --recursive", .children.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", "))]
    HasChildren {
        tag: SnapshotTag,
        children: Vec<SnapshotTag>,
    },
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("could not remove the snapshot from the store")]
    Store(#[source] Box<super::stored::StoreError>),
    /// Being restored (or gone meanwhile).
    #[error(transparent)]
    Lock(#[from] super::inuse::RemovalLockError),
}

/// Removes a snapshot; with `recursive`, its descendants too (children first).
/// Without it, a snapshot with children is refused and nothing is removed. Returns
/// the tags removed. Clones running from a removed snapshot keep working: their RAM
/// mapping and open disk layers hold the files until they end.
pub fn remove(
    home: &Home,
    tag: &SnapshotTag,
    recursive: bool,
) -> Result<Vec<SnapshotTag>, RemoveSnapshotError> {
    let all = open_all(home);
    if !all.contains_key(tag) {
        return Err(RemoveSnapshotError::UnknownTag(tag.clone()));
    }
    let children = children_of(&all, tag);
    if !children.is_empty() && !recursive {
        return Err(RemoveSnapshotError::HasChildren {
            tag: tag.clone(),
            children,
        });
    }
    // Depth first: a child is removed before its parent, so a crash half-way leaves
    // a tree without dangling children.
    let mut order = Vec::new();
    fn collect(
        tag: &SnapshotTag,
        all: &BTreeMap<SnapshotTag, Result<Snapshot, String>>,
        order: &mut Vec<SnapshotTag>,
    ) {
        for c in children_of(all, tag) {
            if !order.contains(&c) {
                collect(&c, all, order);
            }
        }
        order.push(tag.clone());
    }
    collect(tag, &all, &mut order);
    // Refused, before anything is removed, while a restore reads any of them (one in
    // the store only has no directory a restore could be reading).
    let _locked = order
        .iter()
        .filter(|t| home.snapshot_dir(t).is_dir())
        .map(|t| super::inuse::Removal::lock(home, t))
        .collect::<Result<Vec<_>, _>>()?;
    for t in &order {
        // The store's record first: a crash in between leaves a directory without a
        // record, which the next push re-adds, never a record of a removed snapshot.
        super::stored::forget(home, t).map_err(|e| RemoveSnapshotError::Store(Box::new(e)))?;
        // In the store only, it has no directory: forgetting its record removed it.
        super::staging::remove(home, t)?;
    }
    Ok(order)
}
