//! What a restore does around its clones when its snapshot is lazily served: bring
//! the snapshot's record from a remote ([`arrive`]), prefetch the recorded working
//! set before the clones start ([`begin`]), and once they are ready, record the
//! working set if the snapshot had none, say how many bytes were fetched, and start
//! the background fill ([`Lazy::finish`]).

use std::collections::BTreeMap;

use crate::fsutil::Context;
use crate::home::{Home, SnapshotTag, VmName};
use crate::lazy::client::{self, Request};
use crate::lazy::{LazyDir, LazyError};
use crate::store::{self, StoreError, StoredSnapshot, WriteOut};

#[derive(Debug, thiserror::Error)]
pub enum ArriveError {
    #[error(transparent)]
    Remote(#[from] thaw_store::RemoteConfigError),
    #[error("cannot restore {tag} from {url}")]
    Pull {
        tag: SnapshotTag,
        url: String,
        #[source]
        source: thaw_store::PullError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lazy(#[from] LazyError),
}

/// Makes `tag` restorable from the remote `url` when this home lacks it: its record is
/// fetched (nothing else), kept as pending until the fill completes, and its directory
/// made of links to the lazy server's files. A snapshot this home has is left alone.
///
/// The lazy server is started (and makes its client for `url`) while the record is
/// fetched. Should the fetch fail, the server goes idle and ends as after any restore.
pub async fn arrive(home: &Home, tag: &SnapshotTag, url: &str) -> Result<(), ArriveError> {
    if home.snapshot_dir(tag).is_dir() {
        return Ok(());
    }
    // A URL or configuration that cannot work starts nothing.
    let config = thaw_store::RemoteConfig::from_env(url)?;
    let (home2, url2) = (home.clone(), url.to_owned());
    let server = tokio::task::spawn_blocking(move || {
        crate::lazy::ensure_server(&home2)?;
        let r = client::request(&home2, &Request::Remote { url: url2 })?;
        if let Some(why) = r.error {
            tracing::warn!(%why, "the lazy server cannot make the remote's client yet");
        }
        Ok::<_, LazyError>(())
    });
    let fetched = fetch_record(&config, url, tag).await;
    let started = server.await.expect("starting the lazy server panicked");
    let (s, bytes) = fetched?;
    started?;
    let dir = LazyDir::new(home);
    let pending = dir.pending(tag);
    let parent = pending.parent().expect("a pending record has a parent");
    std::fs::create_dir_all(parent)
        .at("create", parent)
        .map_err(StoreError::from)?;
    thaw_store::fsio::write_atomic_with(&pending, |f| std::io::Write::write_all(f, &bytes))
        .map_err(StoreError::from)?;
    let how = WriteOut::Lazy {
        remote: Some(url.to_owned()),
    };
    let (home2, tag2) = (home.clone(), tag.clone());
    let written = tokio::task::spawn_blocking(move || {
        store::write_out(&home2, &tag2, &s, &how, &mut store::NoProgress)
    })
    .await
    .expect("write-out panicked");
    match written {
        Ok(()) | Err(StoreError::Exists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The record of `tag` in the remote `url`, and its bytes.
async fn fetch_record(
    config: &thaw_store::RemoteConfig,
    url: &str,
    tag: &SnapshotTag,
) -> Result<(StoredSnapshot, Vec<u8>), ArriveError> {
    let remote = thaw_store::Remote::new(config)?;
    let bytes = thaw_store::fetch_manifest(&remote, tag.as_str())
        .await
        .map_err(|source| ArriveError::Pull {
            tag: tag.clone(),
            url: url.to_owned(),
            source,
        })?;
    let mut s = store::decode(tag.as_str(), &bytes)?;
    let mut bytes = bytes;
    if s.stored_bytes.is_none() {
        // A record from before thaw kept its stored size: the remote's listing says.
        if let Ok(sizes) = remote.chunk_sizes().await {
            s.stored_bytes = Some(s.chunk_ids().iter().filter_map(|id| sizes.get(id)).sum());
            bytes = crate::record::Record::to_bytes(&s);
        }
    }
    Ok((s, bytes))
}

/// The record of `tag`: pending (arriving from a remote) or the store's.
fn record(home: &Home, tag: &SnapshotTag) -> Option<(StoredSnapshot, bool)> {
    if let Ok(bytes) = std::fs::read(LazyDir::new(home).pending(tag)) {
        if let Ok(s) = store::decode(tag.as_str(), &bytes) {
            return Some((s, true));
        }
    }
    let st = store::open(home).ok()?;
    store::get(&st, tag.as_str())
        .ok()
        .flatten()
        .map(|s| (s, false))
}

static PREFETCH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether lazy restores of this process prefetch the recorded working set (the
/// benchmark measures both; `THAW_WORKING_SET=off` turns it off too).
pub fn set_prefetch(on: bool) {
    PREFETCH.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A restore of a lazily served snapshot, between its start and its clones' readiness.
#[derive(Debug)]
pub struct Lazy {
    tag: SnapshotTag,
    /// The served files: BLAKE3 → path in the snapshot.
    files: BTreeMap<String, String>,
    record: StoredSnapshot,
    pending: bool,
    server: u32,
    fetched_before: u64,
}

/// What a lazy restore reports with each clone.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub fetched_bytes: u64,
    pub stored_bytes: u64,
}

/// Before anything reads the snapshot `tag`: when it is lazily served, makes sure its
/// server runs and prefetches the recorded working set (unless `THAW_WORKING_SET=off`).
pub fn begin(home: &Home, tag: &SnapshotTag) -> Result<Option<Lazy>, LazyError> {
    // A plain snapshot (the common case) costs one readlink, not a read of its record.
    if !served(home, tag) {
        return Ok(None);
    }
    let dir = home.snapshot_dir(tag);
    let Some((record, pending)) = record(home, tag) else {
        // Linked, but the store has no record of it (a snapshot killed before its
        // record was named): its files are served all the same.
        crate::lazy::ensure_server(home)?;
        return Ok(None);
    };
    let files: BTreeMap<String, String> = record
        .files
        .iter()
        .filter(|(rel, _)| crate::lazy::is_served(home, &dir.join(rel)))
        .map(|(rel, index)| (index.blake3.clone(), rel.clone()))
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    let server = crate::lazy::ensure_server(home)?;
    let mut hello = client::request(home, &Request::Hello)?;
    let prefetch = PREFETCH.load(std::sync::atomic::Ordering::Relaxed)
        && !matches!(
            std::env::var("THAW_WORKING_SET").as_deref(),
            Ok("off" | "0" | "no")
        );
    if prefetch && !record.working_set.is_empty() {
        let by_hash = record
            .working_set
            .iter()
            .filter_map(|(rel, chunks)| {
                record
                    .files
                    .get(rel)
                    .map(|i| (i.blake3.clone(), chunks.clone()))
            })
            .collect();
        // `THAW_WORKING_SET_PACK=off` fetches the set chunk by chunk (to measure both).
        let pack = record.working_set_pack.clone().filter(|_| {
            !matches!(
                std::env::var("THAW_WORKING_SET_PACK").as_deref(),
                Ok("off" | "0" | "no")
            )
        });
        hello = client::request(
            home,
            &Request::Prefetch {
                files: by_hash,
                pack,
            },
        )?;
    }
    Ok(Some(Lazy {
        tag: tag.clone(),
        files,
        record,
        pending,
        server,
        fetched_before: hello.fetched_bytes,
    }))
}

impl Lazy {
    /// Once the clones `names` are ready: records the working set if the snapshot had
    /// none, marks the clones as served by this server, starts the fill of a snapshot
    /// arriving from a remote, and reports the bytes fetched.
    pub fn finish(&self, home: &Home, names: &[VmName]) -> Outcome {
        let hashes: Vec<String> = self.files.keys().cloned().collect();
        let touched = client::request(
            home,
            &Request::Touched {
                files: hashes.clone(),
            },
        );
        let fetched_bytes = touched
            .as_ref()
            .map(|r| r.fetched_bytes.saturating_sub(self.fetched_before))
            .unwrap_or(0);
        if let (Ok(t), true) = (&touched, self.record.working_set.is_empty()) {
            let ws: BTreeMap<String, Vec<u32>> = t
                .touched
                .iter()
                .filter(|(_, c)| !c.is_empty())
                .filter_map(|(h, c)| self.files.get(h).map(|rel| (rel.clone(), c.clone())))
                .collect();
            if !ws.is_empty() {
                if let Err(e) = self.keep_working_set(home, ws) {
                    tracing::warn!(error = %e, "cannot keep the working set");
                }
            }
        }
        for name in names {
            let _ = std::fs::write(home.vm_dir(name).join(SERVER_FILE), self.server.to_string());
        }
        if self.pending {
            let fill = Request::Fill {
                tag: self.tag.to_string(),
                files: hashes,
            };
            if let Err(e) = client::request(home, &fill) {
                tracing::warn!(error = %e, "cannot start the background fill");
            }
        }
        let stored_bytes = self.record.stored_bytes.unwrap_or_else(|| {
            store::open(home)
                .ok()
                .and_then(|st| self.record.stored_in(&st))
                .unwrap_or(0)
        });
        Outcome {
            fetched_bytes,
            stored_bytes,
        }
    }

    fn keep_working_set(
        &self,
        home: &Home,
        ws: BTreeMap<String, Vec<u32>>,
    ) -> Result<(), StoreError> {
        let mut s = self.record.clone();
        s.working_set = ws;
        if self.pending {
            let path = LazyDir::new(home).pending(&self.tag);
            let bytes = crate::record::Record::to_bytes(&s);
            thaw_store::fsio::write_atomic_with(&path, |f| std::io::Write::write_all(f, &bytes))?;
            return Ok(());
        }
        let st = store::open(home)?;
        let _lock = store::lock_shared(&st)?;
        // Taken meanwhile by another restore, or the snapshot removed: leave it.
        match store::get(&st, self.tag.as_str())? {
            Some(now) if now.same_snapshot(&s) && now.working_set.is_empty() => {
                store::put(&st, self.tag.as_str(), &s)
            }
            _ => Ok(()),
        }
    }
}

/// In a clone's directory: the pid of the lazy server that serves its snapshot.
pub const SERVER_FILE: &str = "lazy-server";

/// Whether the lazy server that served VM `name`'s snapshot has ended (its pid is
/// gone, or another process has it): the clone cannot read what it has not read yet.
pub fn server_gone(home: &Home, name: &VmName) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(home.vm_dir(name).join(SERVER_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let alive = cmdline.split(|b| *b == 0).any(|arg| arg == b"lazyfs");
    (!alive).then_some(pid)
}

/// Ends a clone whose lazy server is gone (SIGKILL: it may be stuck on a read that
/// will never be answered).
pub fn end_orphan(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Makes sure the lazy server runs when `tag` is lazily served (a pool about to start a
/// clone of it: the server may have gone idle since the pool was configured).
pub fn ensure_for(home: &Home, tag: &SnapshotTag) -> Result<(), LazyError> {
    if served(home, tag) {
        crate::lazy::ensure_server(home)?;
    }
    Ok(())
}

/// Whether the RAM image of `tag` is a link to the lazy server's files.
fn served(home: &Home, tag: &SnapshotTag) -> bool {
    crate::snapshot::stored::ram_is_served(home, tag)
}
