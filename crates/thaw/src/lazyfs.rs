//! The lazy server process (`thaw lazyfs`, started by [`super::ensure_server`]): one
//! per home, independent of the command that started it, so clones outlive it. It
//! mounts the FUSE file system, answers the control socket, fills snapshots from
//! their remote in the background, and unmounts and exits once nothing has had a
//! file open and no work was asked of it for `THAW_LAZY_IDLE` seconds (default 30).

mod fs;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::fsutil::{Context, FileLock, LockMode};
use crate::home::{Home, SnapshotTag};
use crate::lazy::client::{Reply, Request, CLOSING};
use crate::lazy::{LazyDir, LazyError};
use fs::{LazyFs, Shared};

fn idle_limit() -> Duration {
    std::env::var("THAW_LAZY_IDLE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(30))
}

/// Runs the server of `home` until it goes idle. Returns at once when another server
/// of this home runs.
pub fn run(home: &Home) -> Result<(), LazyError> {
    let dir = LazyDir::new(home);
    std::fs::create_dir_all(dir.server_dir()).at("create", &dir.server_dir())?;
    let Some(_lock) = FileLock::try_on(
        thaw_store::fsio::open_lock_file(&dir.lock())?,
        &dir.lock(),
        LockMode::Exclusive,
    )?
    else {
        return Ok(());
    };
    // A server killed before leaves its mount behind, dead ("Transport endpoint is
    // not connected"): detach it. Clones that still map it end on their next fault
    // of a page not in memory.
    let _ = rustix::mount::unmount(dir.mnt(), rustix::mount::UnmountFlags::DETACH);
    std::fs::create_dir_all(dir.mnt()).at("create", &dir.mnt())?;
    let store = crate::store::open(home).map_err(|e| LazyError::Start(crate::one_line(&e)))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .at("start", dir.root())?;
    let shared = Arc::new(Shared::new(dir.clone(), store, rt.handle().clone()));
    let listener = {
        let _guard = rt.enter();
        let _ = std::fs::remove_file(dir.ctl());
        UnixListener::bind(dir.ctl()).at("listen on", &dir.ctl())?
    };
    let options = [
        fuser::MountOption::RO,
        fuser::MountOption::FSName("thaw-lazy".into()),
        fuser::MountOption::Subtype("thaw".into()),
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
    ];
    let mut session = fuser::Session::new(
        LazyFs {
            shared: Arc::clone(&shared),
        },
        dir.mnt(),
        &options,
    )
    .at("mount", &dir.mnt())?;
    shared.set_notifier(session.notifier());
    let unmounter = Arc::new(std::sync::Mutex::new(session.unmount_callable()));
    std::fs::write(dir.pid_file(), std::process::id().to_string()).at("write", &dir.pid_file())?;
    rt.spawn(serve_control(listener, Arc::clone(&shared), home.clone()));
    rt.spawn(watch_idle(Arc::clone(&shared), unmounter));
    tracing::info!(pid = std::process::id(), mnt = %dir.mnt().display(), "serving");
    let ran = session.run();
    let _ = std::fs::remove_file(dir.ctl());
    let _ = std::fs::remove_file(dir.pid_file());
    rt.shutdown_timeout(Duration::from_secs(1));
    ran.at("serve", &dir.mnt())?;
    Ok(())
}

async fn watch_idle(
    shared: Arc<Shared>,
    unmounter: Arc<std::sync::Mutex<fuser::SessionUnmounter>>,
) {
    let limit = idle_limit();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if shared.close_if_idle(limit) {
            tracing::info!("idle: unmounting");
            // New clients start a server of their own (it takes over once this one
            // has ended and released the lock).
            let _ = std::fs::remove_file(shared.dir.ctl());
            let _ = unmounter.lock().expect("not poisoned").unmount();
            return;
        }
    }
}

async fn serve_control(listener: UnixListener, shared: Arc<Shared>, home: Home) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let (shared, home) = (Arc::clone(&shared), home.clone());
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(_) if !shared.touch_unless_closing() => Reply {
                    error: Some(CLOSING.into()),
                    ..Reply::default()
                },
                Ok(req) => answer(&shared, &home, req),
                Err(e) => Reply {
                    error: Some(format!("bad request: {e}")),
                    ..Reply::default()
                },
            };
            let mut bytes = serde_json::to_vec(&reply).expect("a reply serializes");
            bytes.push(b'\n');
            let _ = write.write_all(&bytes).await;
        });
    }
}

fn answer(shared: &Arc<Shared>, home: &Home, req: Request) -> Reply {
    let mut reply = Reply {
        pid: std::process::id(),
        fetched_bytes: shared.fetched_bytes.load(Ordering::Relaxed),
        held_chunks: shared.held_chunks(),
        ..Reply::default()
    };
    match req {
        Request::Hello => {}
        Request::Open => reply.open_files = shared.open_files(),
        Request::Remote { url } => reply.error = shared.remote(&url).err(),
        Request::Touched { files } => {
            // Asked once the restore's clones are ready.
            shared.release_writes();
            reply.touched = shared.touched(&files);
        }
        Request::Prefetch { files, pack } => {
            shared.hold_writes();
            if let Some(pack) = pack {
                let served: Vec<_> = files.keys().filter_map(|h| shared.file(h)).collect();
                shared.prefetch_pack(pack, &served);
            }
            // A chunk a reader already read, or one put there before, is in the
            // kernel's page cache (the files are opened with FOPEN_KEEP_CACHE):
            // loading it again would only cost a decompression and a hash on the cores
            // the restoring QEMU needs.
            for (blake3, chunks) in files {
                let Some(file) = shared.file(&blake3) else {
                    continue;
                };
                let loading: Vec<u32> = shared
                    .not_cached(&blake3, &chunks)
                    .into_iter()
                    .filter(|&i| (i as usize) < file.index.chunks.len())
                    .collect();
                tracing::debug!(
                    file = %blake3,
                    asked = chunks.len(),
                    loading = loading.len(),
                    "prefetching the working set"
                );
                for i in loading {
                    let (shared, file) = (Arc::clone(shared), Arc::clone(&file));
                    tokio::spawn(async move {
                        let _ = shared.chunk(&file, i as usize, false).await;
                    });
                }
            }
        }
        Request::Fill { tag, files } => match tag.parse::<SnapshotTag>() {
            Ok(tag) => {
                shared.busy.fetch_add(1, Ordering::SeqCst);
                let (shared, home) = (Arc::clone(shared), home.clone());
                // On a thread of its own: the pull's progress reporter is not Send.
                let rt = shared.rt.clone();
                tokio::task::spawn_blocking(move || {
                    // What the restore fetched is in the store before the fill looks.
                    shared.release_writes_and_wait();
                    if let Err(why) = rt.block_on(fill(&shared, &home, &tag, &files)) {
                        tracing::error!(%tag, %why, "the background fill failed");
                        let _ = std::fs::write(
                            shared.dir.pending(&tag).with_extension("error"),
                            format!("{why}\n"),
                        );
                    }
                    shared.busy.fetch_sub(1, Ordering::SeqCst);
                    shared.touch();
                });
            }
            Err(e) => reply.error = Some(e.to_string()),
        },
    }
    reply
}

/// Fetches every chunk of `files` the store lacks, then stores the pending record of
/// `tag`: from then on the snapshot is wholly local.
async fn fill(
    shared: &Arc<Shared>,
    home: &Home,
    tag: &SnapshotTag,
    files: &[String],
) -> Result<(), String> {
    let mut by_remote: HashMap<String, (thaw_store::Remote, Vec<thaw_store::ChunkId>)> =
        HashMap::new();
    for blake3 in files {
        let file = shared
            .file(blake3)
            .ok_or_else(|| format!("file {blake3} is not registered"))?;
        let Some(remote) = &file.remote else { continue };
        let entry = by_remote
            .entry(remote.url().to_owned())
            .or_insert_with(|| (remote.clone(), Vec::new()));
        entry.1.extend(file.index.chunk_ids().copied());
    }
    for (_, (remote, ids)) in by_remote {
        let mut quiet = thaw_store::NoProgress;
        thaw_store::pull_chunks(&shared.store, &remote, &ids, &mut quiet)
            .await
            .map_err(|e| crate::one_line(&e))?;
    }
    let pending = shared.dir.pending(tag);
    let Ok(bytes) = std::fs::read(&pending) else {
        return Ok(());
    };
    let (home, tag2) = (home.clone(), tag.clone());
    tokio::task::spawn_blocking(move || crate::store::keep_record(&home, &tag2, &bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| crate::one_line(&e))?;
    let _ = std::fs::remove_file(&pending);
    tracing::info!(%tag, "filled: the snapshot is wholly in the store");
    Ok(())
}
