//! Park and wake: a VM put away whole — ended, its snapshot tagged with its name and
//! (with a remote) sent to S3-compatible storage in the background — and later woken on
//! any host under the same name, with RAM and disks as parked.
//!
//! ```text
//! $THAW_HOME/parked/<name>.json   the park record: state, remote, bytes done/total, error
//! $THAW_HOME/parked/<name>.lock   held (flock) by whoever uploads: the worker's liveness
//! $THAW_HOME/parked/<name>.log    the background worker's stderr
//! ```
//!
//! [`park`] takes the snapshot with the VM stopped (the live snapshot path: the vCPUs
//! pause only for the device state) and writes the record; the upload ([`upload`]) runs
//! in this process (`--wait`, thawd) or in a detached worker ([`spawn_worker`]: `thaw
//! park-worker NAME` in a process group of its own, which outlives the command).
//!
//! Crash safety: the uploader holds `<name>.lock` for as long as it works, so a record
//! that says `pushing` while nobody holds the lock belongs to a worker that died (killed,
//! host rebooted). Unlike a pid, a lock cannot be mistaken for an unrelated process that
//! reused the pid, and the kernel drops it with the process. [`revive`] (run by `thaw
//! park`, `thaw ls` and `thaw snapshots`) starts a new worker for each such record;
//! `thaw park --resume NAME` also retries a `failed` one. The store's push asks the
//! remote which chunks it has first, so a new worker sends only what is missing, and the
//! snapshot's record goes up last: a remote never lists a snapshot whose chunks it lacks.
//!
//! [`wake`] gets the snapshot (local, else from the remote: [`fetch`], the one step the
//! lazily served restore replaces) and restores it under the VM's name; the normal
//! restore sets the clock and gives a fresh VM Generation ID. Then the record is cleared.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cancel::CancellationToken;
use crate::clone::CloneReport;
use crate::fsutil::{Context, FileLock, IoError, LockMode};
use crate::home::{Home, NameError, SnapshotTag, VmName};
use crate::qemu::Qemu;
use crate::record::{Record, RecordError};
use crate::restore::{RestoreError, RestoreRequest};
use crate::snapshot::take::{self, SnapshotError, SnapshotReport, SnapshotRequest};
use crate::store::{self, Progress, Remote, StoreError, TransferReport};
use crate::vm::{VmError, VmState};

/// Where a parked VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ParkState {
    /// The snapshot is being taken.
    Parking,
    /// The snapshot is safe here; its upload is under way (or its worker died and
    /// waits to be revived).
    Pushing,
    /// Done: the snapshot is here and, with a remote, on the remote.
    Parked,
    /// The upload failed (see `error`); `thaw park --resume NAME` retries it.
    Failed,
}

/// `$THAW_HOME/parked/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParkRecord {
    pub name: VmName,
    /// The snapshot: the VM's name.
    pub tag: SnapshotTag,
    pub state: ParkState,
    /// `s3://BUCKET/PREFIX`, or none (kept here only).
    pub remote: Option<String>,
    /// Bytes of the upload's current phase done, and its total (compressed chunks).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Why the upload failed (state `failed`).
    pub error: Option<String>,
    /// The finished upload.
    pub upload: Option<Uploaded>,
    /// The uploader's pid (informative; liveness is the lock's).
    pub worker_pid: Option<u32>,
    /// Seconds since the epoch: parked, last written.
    pub parked_at: u64,
    pub updated_at: u64,
    /// Whether an uploader holds the lock now (computed when listed, not stored).
    #[serde(default, skip_deserializing)]
    pub worker_alive: bool,
}

/// What a finished upload did (the store's [`TransferReport`] without the tag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Uploaded {
    /// Chunks sent, and those the remote had already (sent by an earlier attempt).
    pub chunks_moved: u64,
    pub chunks_present: u64,
    /// Compressed bytes sent.
    pub bytes_moved: u64,
    /// The snapshot's files, uncompressed.
    pub file_bytes: u64,
}

impl Uploaded {
    /// The store's report of this upload of `tag`.
    pub fn report(&self, tag: &SnapshotTag) -> TransferReport {
        TransferReport {
            tag: tag.clone(),
            chunks_moved: self.chunks_moved,
            chunks_present: self.chunks_present,
            bytes_moved: self.bytes_moved,
            file_bytes: self.file_bytes,
        }
    }
}

impl Record for ParkRecord {
    const KIND: &'static str = "park record";
    const VERSION: u32 = 1;
    const MAX_BYTES: u64 = 1 << 16;
}

/// `thaw park`'s request.
#[derive(Debug, Clone)]
pub struct ParkRequest {
    pub name: VmName,
    /// `s3://BUCKET/PREFIX`; none keeps the snapshot here only.
    pub remote: Option<String>,
}

/// A park as a client asks for it: `POST /v1/vms/{name}/park`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"remote": "s3://bucket/prefix", "wait": false})))]
pub struct ParkOptions {
    /// `s3://BUCKET/PREFIX` (endpoint and keys from the daemon's environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Answer once the upload is done (200), not once the VM is parked here (202).
    #[serde(default)]
    pub wait: bool,
}

/// A wake as a client asks for it: `POST /v1/wake`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"name": "dev", "from": "s3://bucket/prefix"})))]
pub struct WakeOptions {
    /// The parked VM's name (its snapshot's tag).
    pub name: String,
    /// `s3://BUCKET/PREFIX` to fetch it from when it is not here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Seconds the guest agent may take (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// What `thaw park` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParkReport {
    pub name: VmName,
    /// The snapshot taken with the VM stopped (its `pause_ms` is the park's pause).
    pub snapshot: SnapshotReport,
    /// The record as it stands when the command returns.
    pub park: ParkRecord,
}

#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("a snapshot tagged {0} exists already: park tags the snapshot with the VM's name (thaw rm {0} frees the tag; a VM woken from it cannot be parked again yet)")]
    TagExists(SnapshotTag),
    #[error("VM {0} is already parked (thaw wake {0} brings it back)")]
    AlreadyParked(VmName),
    #[error("nothing named {0} is parked here, and no --from remote was given")]
    NotParked(VmName),
    #[error("nothing named {name} is parked here or at {remote}")]
    NotFound { name: VmName, remote: String },
    #[error("{0} is parked here only: it has no remote to upload to")]
    NoRemote(VmName),
    #[error("the upload of {0} is running already (its worker holds the lock)")]
    Busy(VmName),
    #[error("bad remote")]
    Remote(#[from] thaw_store::RemoteConfigError),
    #[error("parking {name} failed")]
    Snapshot {
        name: VmName,
        #[source]
        source: SnapshotError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("could not start the upload worker {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `$THAW_HOME/parked`.
pub fn dir(home: &Home) -> PathBuf {
    home.root().join("parked")
}

fn record_path(home: &Home, name: &VmName) -> PathBuf {
    dir(home).join(format!("{name}.json"))
}

fn lock_path(home: &Home, name: &VmName) -> PathBuf {
    dir(home).join(format!("{name}.lock"))
}

/// The worker's log (its stderr).
pub fn log_path(home: &Home, name: &VmName) -> PathBuf {
    dir(home).join(format!("{name}.log"))
}

fn save(home: &Home, r: &mut ParkRecord) -> Result<(), IoError> {
    r.updated_at = now();
    let d = dir(home);
    std::fs::create_dir_all(&d).at("create", &d)?;
    r.write_to(&record_path(home, &r.name))
}

/// The park record of `name`, if there is one (with `worker_alive` filled in).
pub fn get(home: &Home, name: &VmName) -> Result<Option<ParkRecord>, RecordError> {
    match ParkRecord::read_from(&record_path(home, name)) {
        Ok(mut r) => {
            r.worker_alive = worker_alive(home, name);
            Ok(Some(r))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every park record here, by name (unreadable ones skipped).
pub fn list(home: &Home) -> Vec<ParkRecord> {
    let Ok(entries) = std::fs::read_dir(dir(home)) else {
        return Vec::new();
    };
    let mut out: Vec<ParkRecord> = entries
        .flatten()
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let name: VmName = file.strip_suffix(".json")?.parse().ok()?;
            get(home, &name).ok().flatten()
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Removes the record (and the worker's lock and log) of `name`.
pub fn clear(home: &Home, name: &VmName) {
    for p in [
        record_path(home, name),
        lock_path(home, name),
        log_path(home, name),
    ] {
        let _ = std::fs::remove_file(p);
    }
}

/// The uploader's lock, if nobody holds it.
fn try_lock(home: &Home, name: &VmName) -> Result<Option<FileLock>, IoError> {
    let d = dir(home);
    std::fs::create_dir_all(&d).at("create", &d)?;
    FileLock::try_acquire(&lock_path(home, name), LockMode::Exclusive)
}

/// Whether an uploader of `name` is at work (holds its lock).
pub fn worker_alive(home: &Home, name: &VmName) -> bool {
    matches!(try_lock(home, name), Ok(None))
}

/// Whether `tag` is a snapshot here (its directory, or only its store record).
fn snapshot_here(home: &Home, tag: &SnapshotTag) -> Result<bool, StoreError> {
    if home.snapshot_dir(tag).exists() {
        return Ok(true);
    }
    let s = store::open(home)?;
    Ok(store::get(&s, tag.as_str())?.is_some())
}

/// Parks `req.name`: checks the remote's URL, takes the snapshot (tag: the VM's name)
/// with the VM stopped, and writes the park record, `pushing` with a remote (the caller
/// then uploads: [`upload`] or [`spawn_worker`]), `parked` without. Refuses a name
/// that is parked already or a tag that exists, before the VM is touched.
pub async fn park(
    home: &Home,
    req: &ParkRequest,
    cancel: &CancellationToken,
) -> Result<ParkReport, ParkError> {
    if let Some(url) = &req.remote {
        Remote::from_env(url)?;
    }
    let tag: SnapshotTag = req.name.as_str().parse()?;
    if get(home, &req.name)?.is_some() {
        return Err(ParkError::AlreadyParked(req.name.clone()));
    }
    if snapshot_here(home, &tag)? {
        return Err(ParkError::TagExists(tag));
    }
    VmState::load_running(home, &req.name)?;
    let mut record = ParkRecord {
        name: req.name.clone(),
        tag: tag.clone(),
        state: ParkState::Parking,
        remote: req.remote.clone(),
        bytes_done: 0,
        bytes_total: 0,
        error: None,
        upload: None,
        worker_pid: None,
        parked_at: now(),
        updated_at: now(),
        worker_alive: false,
    };
    save(home, &mut record)?;
    let snap = SnapshotRequest {
        name: req.name.clone(),
        tag,
        stop: true,
        pin: false,
    };
    let snapshot = match take::take_cancellable(home, &snap, cancel).await {
        Ok(s) => s,
        Err(source) => {
            clear(home, &req.name);
            return Err(ParkError::Snapshot {
                name: req.name.clone(),
                source,
            });
        }
    };
    record.state = match record.remote {
        Some(_) => ParkState::Pushing,
        None => ParkState::Parked,
    };
    save(home, &mut record)?;
    Ok(ParkReport {
        name: req.name.clone(),
        snapshot,
        park: record,
    })
}

/// Writes the upload's progress into the park record (at most every 100 ms), and
/// passes it on.
struct Recorder<'a> {
    home: &'a Home,
    record: ParkRecord,
    written: Instant,
    inner: &'a mut dyn Progress,
}

impl Recorder<'_> {
    fn write(&mut self, force: bool) {
        // A wake here meanwhile cleared the record: the upload goes on, unrecorded.
        if !record_path(self.home, &self.record.name).exists() {
            return;
        }
        if force || self.written.elapsed() >= Duration::from_millis(100) {
            // Progress is informative: a failed write is retried at the next step.
            let _ = save(self.home, &mut self.record);
            self.written = Instant::now();
        }
    }
}

impl Progress for Recorder<'_> {
    fn start(&mut self, what: &str, total_bytes: u64) {
        self.record.bytes_done = 0;
        self.record.bytes_total = total_bytes;
        self.write(true);
        self.inner.start(what, total_bytes);
    }

    fn advance(&mut self, bytes: u64) {
        self.record.bytes_done += bytes;
        self.write(false);
        self.inner.advance(bytes);
    }

    fn finish(&mut self) {
        self.record.bytes_done = self.record.bytes_total;
        self.write(true);
        self.inner.finish();
    }
}

/// Uploads the parked snapshot of `name` to its remote, in this process, holding the
/// uploader's lock ([`ParkError::Busy`] if another holds it); the record follows the
/// progress and ends `parked` or `failed`. A record already `parked` is left as it is.
pub async fn upload(
    home: &Home,
    name: &VmName,
    progress: &mut dyn Progress,
) -> Result<ParkRecord, ParkError> {
    let _lock = try_lock(home, name)?.ok_or_else(|| ParkError::Busy(name.clone()))?;
    let mut record = get(home, name)?.ok_or_else(|| ParkError::NotParked(name.clone()))?;
    if record.state == ParkState::Parked {
        return Ok(record);
    }
    let url = record
        .remote
        .clone()
        .ok_or_else(|| ParkError::NoRemote(name.clone()))?;
    record.state = ParkState::Pushing;
    record.error = None;
    record.worker_pid = Some(std::process::id());
    record.worker_alive = true;
    save(home, &mut record)?;
    let mut recorder = Recorder {
        home,
        record,
        written: Instant::now(),
        inner: progress,
    };
    let result = push_to(home, &url, &mut recorder).await;
    let mut record = recorder.record;
    record.worker_pid = None;
    record.worker_alive = false;
    if !record_path(home, name).exists() {
        // Woken meanwhile (the record cleared): nothing is parked any more.
        return result.map(|_| record);
    }
    match result {
        Ok(r) => {
            record.state = ParkState::Parked;
            record.upload = Some(Uploaded {
                chunks_moved: r.chunks_moved,
                chunks_present: r.chunks_present,
                bytes_moved: r.bytes_moved,
                file_bytes: r.file_bytes,
            });
            save(home, &mut record)?;
            Ok(record)
        }
        Err(e) => {
            record.state = ParkState::Failed;
            record.error = Some(crate::one_line(&e));
            save(home, &mut record)?;
            Err(e)
        }
    }
}

async fn push_to(
    home: &Home,
    url: &str,
    recorder: &mut Recorder<'_>,
) -> Result<TransferReport, ParkError> {
    let remote = Remote::from_env(url)?;
    let tag = recorder.record.tag.clone();
    Ok(store::push(home, &tag, &remote, recorder).await?)
}

/// Starts a detached upload worker for `name`: `program park-worker NAME` (`program`
/// is the `thaw` binary), in a process group of its own (a Ctrl-C of the command does
/// not reach it), stdin and stdout on /dev/null, stderr into the worker's log. It
/// outlives the caller. Returns its pid.
pub fn spawn_worker(home: &Home, name: &VmName, program: &Path) -> Result<u32, ParkError> {
    use std::os::unix::process::CommandExt;
    let log_file = log_path(home, name);
    let d = dir(home);
    std::fs::create_dir_all(&d).at("create", &d)?;
    let log = std::fs::File::create(&log_file).at("create", &log_file)?;
    let child = std::process::Command::new(program)
        .args(["park-worker", name.as_str()])
        .env("THAW_HOME", home.root())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|source| ParkError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    let pid = child.id();
    // Reaped by whoever waits: a thread here while this process lives, init after.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    Ok(pid)
}

/// Starts a worker for each record whose upload is under way with no uploader alive
/// (killed, host rebooted), and with `failed` too for the names in `retry`. Returns
/// the names it started workers for.
pub fn revive(home: &Home, program: &Path, retry: &[VmName]) -> Vec<VmName> {
    let mut started = Vec::new();
    for r in list(home) {
        let due = match r.state {
            ParkState::Pushing => true,
            ParkState::Failed => retry.contains(&r.name),
            ParkState::Parking | ParkState::Parked => false,
        };
        if due && !r.worker_alive && spawn_worker(home, &r.name, program).is_ok() {
            started.push(r.name);
        }
    }
    started
}

/// `thaw wake`'s request.
#[derive(Debug, Clone)]
pub struct WakeRequest {
    pub name: VmName,
    /// Where to fetch the snapshot from when it is not here.
    pub from: Option<String>,
    /// How long the guest agent may take to answer.
    pub timeout: Duration,
}

/// Where the snapshot of a parked VM comes from: `None` when it is here, else the
/// remote `from`, which must have it; the restore then serves it lazily from there
/// (see `lazy`): only what the clone touches is fetched before it runs, the rest in
/// the background.
pub async fn fetch(
    home: &Home,
    name: &VmName,
    tag: &SnapshotTag,
    from: Option<&str>,
) -> Result<Option<String>, ParkError> {
    if snapshot_here(home, tag)? {
        return Ok(None);
    }
    let url = from.ok_or_else(|| ParkError::NotParked(name.clone()))?;
    let remote = Remote::from_env(url)?;
    if !store::remote_has(&remote, tag).await? {
        return Err(ParkError::NotFound {
            name: name.clone(),
            remote: url.to_owned(),
        });
    }
    Ok(Some(url.to_owned()))
}

/// Wakes a parked VM: its snapshot here or fetched ([`fetch`]), restored as one clone
/// named as the VM (clock set, fresh VM Generation ID); then its park record is cleared.
pub async fn wake(
    home: &Home,
    qemu: &Qemu,
    req: &WakeRequest,
    cancel: &CancellationToken,
) -> Result<CloneReport, ParkError> {
    if let Some(url) = &req.from {
        Remote::from_env(url)?;
    }
    let tag: SnapshotTag = req.name.as_str().parse()?;
    if home.vm_dir(&req.name).exists() {
        return Err(VmError::Exists(req.name.clone()).into());
    }
    let from = fetch(home, &req.name, &tag, req.from.as_deref()).await?;
    let restore = RestoreRequest {
        from,
        bind: crate::ports::DEFAULT_BIND,
        tag,
        count: 1,
        name: Some(req.name.clone()),
        accel: None,
        verify: false,
        timeout: req.timeout,
        keep_vmgenid: false,
        ready: Default::default(),
        exec_after: None,
        paused: false,
        vnc_password: None,
        lifetime: Default::default(),
    };
    let mut clones =
        crate::restore::restore_cancellable(home, qemu, &restore, None, cancel).await?;
    clear(home, &req.name);
    Ok(clones.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, state: ParkState) -> ParkRecord {
        ParkRecord {
            name: name.parse().unwrap(),
            tag: name.parse().unwrap(),
            state,
            remote: Some("s3://b/p".into()),
            bytes_done: 1,
            bytes_total: 2,
            error: None,
            upload: None,
            worker_pid: Some(7),
            parked_at: 1,
            updated_at: 2,
            worker_alive: false,
        }
    }

    #[test]
    fn a_park_record_round_trips() {
        crate::record::tests::round_trip(&record("dev", ParkState::Pushing));
    }

    /// The lock is the worker's liveness: held → alive; dropped (the process died) →
    /// dead, and a record left `pushing` is then listed with `worker_alive` false.
    #[test]
    fn liveness_is_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        let name: VmName = "dev".parse().unwrap();
        save(&home, &mut record("dev", ParkState::Pushing)).unwrap();
        let held = try_lock(&home, &name).unwrap().unwrap();
        assert!(worker_alive(&home, &name));
        assert!(list(&home)[0].worker_alive);
        drop(held);
        assert!(!worker_alive(&home, &name));
        let listed = list(&home);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, ParkState::Pushing);
        assert!(!listed[0].worker_alive);
        clear(&home, &name);
        assert!(list(&home).is_empty());
    }

    /// Only a dead `pushing` upload is revived by itself; a `failed` one only when
    /// asked; a `parked` one never. (The program is one that cannot start, so nothing
    /// runs: revive reports only what it started.)
    #[test]
    fn revive_picks_dead_uploads() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path());
        for (n, s) in [
            ("a", ParkState::Pushing),
            ("b", ParkState::Failed),
            ("c", ParkState::Parked),
        ] {
            save(&home, &mut record(n, s)).unwrap();
        }
        let t = Path::new("/bin/true");
        let started = revive(&home, t, &[]);
        assert_eq!(started, vec!["a".parse::<VmName>().unwrap()]);
        let started = revive(&home, t, &["b".parse().unwrap(), "c".parse().unwrap()]);
        assert_eq!(started.len(), 2, "{started:?}");
        assert!(revive(&home, Path::new("/nonexistent/thaw"), &[]).is_empty());
    }
}
