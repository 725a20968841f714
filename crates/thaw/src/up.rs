//! `thaw up`: the boot cache. A VM is booted once per set of inputs, snapshotted, and
//! every later `up` with the same inputs restores that snapshot instead.
//!
//! The cache key is a BLAKE3 over everything that decides the booted state: the
//! kernel, initrd and base disks *by content*, the machine (type, memory, vCPUs,
//! command line, disks' formats and modes, forwarded guest ports), the QEMU version,
//! the accelerator (under KVM also the host's CPU model: a KVM guest's CPU state does
//! not move to another model), the snapshot format's major version and the readiness
//! condition.
//! A changed input is a new key, so a stale snapshot is never used. The snapshot is
//! tagged `up-<first 16 hex digits of the key>`.
//!
//! Two `up`s with the same key at once boot once: the second waits on a lock file
//! (`$THAW_HOME/locks/<tag>.lock`) and then restores what the first made.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::boot::{self, BootError, BootRequest};
use crate::fsutil;
use crate::fsutil::{Context, FileLock, IoError, LockMode};
use crate::home::{Home, SnapshotTag, VmName};
use crate::qemu::Qemu;
use crate::restore::{self, RestoreError, RestoreRequest};
use crate::snapshot::take::{self, SnapshotError, SnapshotRequest};
use crate::spec::PortForward;
use crate::store::{self, Remote, StoreError};

/// `thaw up` as a client asks for it: `POST /v1/up`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"boot": {"name": "ci", "ports": [{"host": 0, "guest": 22}], "bind": "0.0.0.0"}, "remote": "s3://thaw/cache"})))]
pub struct UpOptions {
    /// The boot, as `POST /v1/vms` takes it (its `name` is the VM's name).
    pub boot: crate::profile::BootOptions,
    /// `s3://BUCKET[/PREFIX]`: pull the snapshot from here when it is not local, push
    /// it after a cold boot (the S3 settings are the daemon's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

pub struct UpRequest {
    pub boot: BootRequest,
    /// Pull the snapshot from here when it is not local; push it after a cold boot.
    pub remote: Option<Remote>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpReport {
    pub name: VmName,
    /// "restored" (from the local cache), "pulled" (from the remote, then restored) or
    /// "booted" (cold boot, then snapshotted into the cache).
    pub path: String,
    /// The cache key and the snapshot it names.
    pub key: String,
    pub tag: SnapshotTag,
    pub pid: u32,
    /// Request → ready, whichever path was taken.
    pub ready_ms: f64,
    pub ports: Vec<PortForward>,
    /// The host address the forwards listen on (`--bind`; not part of the key).
    #[serde(default = "crate::ports::default_bind")]
    pub bind: std::net::Ipv4Addr,
    /// Whether the snapshot was pushed to the remote.
    pub pushed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
}

/// The BLAKE3 of a file, remembered by path, size and mtime in `$THAW_CACHE/hashes.json`
/// (a base disk image is gigabytes; the key is computed on every `up`).
fn content_blake3(cache: &Path, path: &Path) -> Result<String, UpError> {
    let (size, mtime) = crate::disk::stat(path).at("read", path)?;
    let file = cache.join("hashes.json");
    let mut known: BTreeMap<String, (u64, u128, String)> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let k = path.display().to_string();
    if let Some((s, m, h)) = known.get(&k) {
        if *s == size && *m == mtime {
            return Ok(h.clone());
        }
    }
    let h = fsutil::hash_file(path).at("hash", path)?;
    known.insert(k, (size, mtime, h.clone()));
    if std::fs::create_dir_all(cache).is_ok() {
        let _ = fsutil::write_atomic(&file, &serde_json::to_vec(&known).expect("serializes"));
    }
    Ok(h)
}

/// The cache key of a boot (see the module docs).
pub fn key(req: &BootRequest, qemu: &Qemu, cache: &Path) -> Result<String, UpError> {
    req.spec.validate()?;
    let s = &req.spec;
    let kernel = match &s.kernel {
        Some(k) => Some(content_blake3(cache, k)?),
        None => None,
    };
    let initrd = match &s.initrd {
        Some(i) => Some(content_blake3(cache, i)?),
        None => None,
    };
    let disks = s
        .disks
        .iter()
        .map(|d| {
            Ok(serde_json::json!({
                "blake3": content_blake3(cache, &d.base)?,
                "format": d.format,
                "readonly": d.readonly,
            }))
        })
        .collect::<Result<Vec<_>, UpError>>()?;
    let mut inputs = serde_json::json!({
        "format": crate::snapshot::FORMAT_VERSION.major,
        "qemu": qemu.version.to_string(),
        "accel": s.accel,
        "machine": s.machine,
        "memory_mib": s.memory_mib,
        "cpus": s.cpus,
        "cmdline": s.cmdline,
        "kernel": kernel,
        "initrd": initrd,
        "disks": disks,
        "net": s.net.is_some(),
        "firmware": s.firmware,
        "display": s.display,
        "guest_ports": req.forwards.iter().map(|f| f.guest).collect::<Vec<_>>(),
        "ready": {
            "port": req.ready.port,
            "redis_ping": req.ready.redis_ping,
            "serial": req.ready.serial,
        },
    });
    // Only under KVM: TCG emulates the same CPU on any host (and keys made before this
    // field stay the same).
    if s.accel == crate::accel::Accel::Kvm {
        inputs["host_cpu"] = host_cpu_model().into();
    }
    Ok(blake3::hash(inputs.to_string().as_bytes())
        .to_hex()
        .to_string())
}

/// The host CPU's model name (`/proc/cpuinfo`), empty when it cannot be read.
fn host_cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, name)| name.trim().to_owned())
        .unwrap_or_default()
}

/// A boot's cache key and the snapshot tag it names, computed without booting and
/// without the network (`thaw up --print-key`: what a CI cache is keyed on).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpKey {
    pub key: String,
    pub tag: SnapshotTag,
}

/// The key `up` would use for `req` (the same [`key`], and its tag).
pub fn cache_key(req: &BootRequest, qemu: &Qemu, cache: &Path) -> Result<UpKey, UpError> {
    let key = key(req, qemu, cache)?;
    let tag = tag_of(&key);
    Ok(UpKey { key, tag })
}

/// The snapshot tag of a key.
pub fn tag_of(key: &str) -> SnapshotTag {
    format!("up-{}", &key[..16]).parse().expect("a valid tag")
}

/// Holds `$THAW_HOME/locks/<tag>.lock` exclusively until dropped.
async fn lock_key(home: &Home, tag: &SnapshotTag) -> Result<FileLock, UpError> {
    let dir = home.root().join("locks");
    std::fs::create_dir_all(&dir).at("create", &dir)?;
    let path = dir.join(format!("{tag}.lock"));
    let lock = tokio::task::spawn_blocking(move || FileLock::acquire(&path, LockMode::Exclusive))
        .await
        .expect("lock task")?;
    Ok(lock)
}

/// Brings up a VM from the cache, the remote, or a cold boot (see the module docs).
/// `cancel` interrupts its restore, boot or snapshot as it does theirs (see
/// [`crate::cancel`]); a VM whose snapshot was abandoned is stopped, as on any failure.
pub async fn up(
    home: &Home,
    qemu: &Qemu,
    cache: &Path,
    req: &UpRequest,
    progress: &mut dyn store::Progress,
    cancel: &crate::cancel::CancellationToken,
) -> Result<UpReport, UpError> {
    let t0 = Instant::now();
    let UpKey { key, tag } = cache_key(&req.boot, qemu, cache)?;
    let _lock = lock_key(home, &tag).await?;
    let mut path = "restored";
    let mut from = None;
    let local =
        store::ensure_materialized(home, &tag, progress)? || home.snapshot_dir(&tag).is_dir();
    if !local {
        if let Some(remote) = &req.remote {
            // Restored straight from the remote, lazily (see `lazy`): its chunks
            // come as the clone touches them, the rest in the background.
            if store::remote_has(remote, &tag).await? {
                from = Some(remote.url().to_owned());
                path = "pulled";
            }
        }
    }
    if path == "pulled" || local {
        let r = restore::restore_cancellable(
            home,
            qemu,
            &RestoreRequest {
                tag: tag.clone(),
                count: 1,
                name: Some(req.boot.name.clone()),
                accel: Some(req.boot.spec.accel),
                verify: false,
                timeout: req.boot.timeout,
                keep_vmgenid: false,
                ready: req.boot.ready.clone(),
                exec_after: None,
                paused: false,
                vnc_password: None,
                lifetime: req.boot.lifetime.clone(),
                from,
                bind: req.boot.bind,
            },
            None,
            cancel,
        )
        .await?;
        let r = &r[0];
        return Ok(UpReport {
            name: r.name.clone(),
            path: path.into(),
            key,
            tag,
            pid: r.pid,
            ready_ms: crate::ms(t0.elapsed()),
            ports: r.ports.clone(),
            bind: r.bind,
            pushed: false,
        });
    }
    let booted = boot::boot_cancellable(home, qemu, &req.boot, cancel).await?;
    let snap = take::take_cancellable(
        home,
        &SnapshotRequest {
            name: req.boot.name.clone(),
            tag: tag.clone(),
            stop: false,
            pin: false,
        },
        cancel,
    )
    .await;
    if let Err(e) = snap {
        // All or nothing: a VM that did not make it into the cache is not handed over.
        let _ = crate::control::stop(home, &req.boot.name).await;
        return Err(match e {
            // Interrupted before the pause: the VM is not handed over either.
            SnapshotError::Interrupted(_) => {
                BootError::from(crate::cancel::Interrupted::Boot(req.boot.name.clone())).into()
            }
            e => e.into(),
        });
    }
    let pushed = match &req.remote {
        Some(remote) => {
            store::push(home, &tag, remote, progress).await?;
            true
        }
        None => false,
    };
    Ok(UpReport {
        name: booted.name,
        path: "booted".into(),
        key,
        tag,
        pid: booted.pid,
        ready_ms: booted.boot_ms,
        ports: booted.ports,
        bind: booted.bind,
        pushed,
    })
}
