//! kill -9 of the daemon while VMs and pooled processes run: its keeper ends the pooled
//! processes, the VMs (also a clone taken from the pool) run on; the next daemon
//! answers for them, leaves no QEMU unaccounted for, and refills the pool.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, parent_of, Daemon};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_then_restart_adopts_vms_and_refills_the_pool() {
    let mut d = Daemon::start(&[]).await;
    d.boot("web", json!({"memory_mib": 128})).await;
    d.expect(
        "POST",
        "/v1/vms/web/snapshot",
        Some(json!({"tag": "base"})),
        201,
    )
    .await;
    d.expect(
        "POST",
        "/v1/snapshots/base/restore",
        Some(json!({"count": 2})),
        201,
    )
    .await;
    d.expect(
        "PUT",
        "/v1/snapshots/base/pool",
        Some(json!({"size": 2, "mode": "running"})),
        200,
    )
    .await;
    d.wait_pool_ready("base", 2).await;
    let taken = d
        .expect(
            "POST",
            "/v1/snapshots/base/restore",
            Some(json!({"name": "pooled"})),
            201,
        )
        .await;
    assert_eq!(taken[0]["breakdown"]["source"], "pool");
    d.wait_pool_ready("base", 2).await;
    let vm_pids: HashSet<u32> = d
        .vms()
        .await
        .iter()
        .map(|v| v["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(vm_pids.len(), 4);
    assert_eq!(d.pool_processes().len(), 2);

    assert_eq!(d.keepers().len(), 1, "the daemon has a pool keeper");

    d.kill9();
    eventually(
        "the keeper ends the pooled processes of the killed daemon",
        Duration::from_secs(10),
        || d.pool_processes().is_empty() && d.keepers().is_empty(),
    )
    .await;
    let running: HashSet<u32> = d.processes().into_iter().collect();
    assert!(vm_pids.is_subset(&running), "a VM died with the daemon");

    d.restart().await;
    let vms = d.vms().await;
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base-1", "base-2", "pooled", "web"]);
    for v in &vms {
        assert_eq!(v["state"], "running", "{v}");
        let name = v["name"].as_str().unwrap();
        assert_eq!(d.sh(name, "echo alive").await, "alive\n", "{name}");
    }
    assert_eq!(d.expect("GET", "/v1/health", None, 200).await["vms"], 4);
    d.wait_pool_ready("base", 2).await;

    // Every QEMU of this home is a listed VM or a pooled process of the new daemon.
    let listed: HashSet<u32> = d
        .vms()
        .await
        .iter()
        .map(|v| v["pid"].as_u64().unwrap() as u32)
        .collect();
    let pool_dir = d.home().join("pool");
    for pid in d.processes() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let pooled = cmdline.contains(pool_dir.to_str().unwrap());
        assert!(
            listed.contains(&pid) || (pooled && parent_of(pid) == Some(d.pid())),
            "QEMU {pid} is neither a listed VM nor the new daemon's pool: {cmdline}"
        );
    }

    // And the restored pool serves restores.
    let taken = d
        .expect("POST", "/v1/snapshots/base/restore", None, 201)
        .await;
    assert_eq!(taken[0]["breakdown"]["source"], "pool");
}

/// A home with one pool slot and a stand-in pooled process whose command line names
/// the slot (`tail -f SLOT/log`); the process is ended when the test ends, passed or
/// not.
struct PoolSlot {
    home: tempfile::TempDir,
    slot: std::path::PathBuf,
    pooled: std::process::Child,
}

impl PoolSlot {
    fn new() -> Self {
        let home = tempfile::tempdir().unwrap();
        let slot = home.path().join("pool/pool-0123456789ab");
        std::fs::create_dir_all(&slot).unwrap();
        let log = slot.join("log");
        std::fs::write(&log, "").unwrap();
        let pooled = std::process::Command::new("tail")
            .arg("-f")
            .arg(&log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        PoolSlot { home, slot, pooled }
    }

    fn pooled_runs(&mut self) -> bool {
        self.pooled.try_wait().unwrap().is_none()
    }

    /// Waits (20 s at most) for the keeper to end the stand-in and remove the slot.
    fn assert_cleaned_up(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.pooled_runs() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !self.pooled_runs(),
            "the keeper left the pooled process running"
        );
        assert!(!self.slot.exists(), "the keeper left the pool directory");
    }
}

impl Drop for PoolSlot {
    fn drop(&mut self) {
        let _ = self.pooled.kill();
        let _ = self.pooled.wait();
    }
}

/// A killed daemon's pipe to its keeper can close a moment before its lock on the
/// home is released (its files close one by one). The keeper waits for the lock while
/// the daemon lives, then ends the pool's processes; it used to try once and leave
/// them running. Here this test process plays the dying daemon: it holds the lock,
/// closes the pipe, and only then lets go of the lock.
#[test]
fn the_keeper_waits_for_the_lock_of_a_dying_daemon() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut p = PoolSlot::new();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p.home.path().join("thawd.lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();

    let mut keeper = Command::new(common::THAWD)
        .arg("--pool-keeper")
        .arg(p.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(keeper.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    drop(keeper.stdin.take());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        keeper.try_wait().unwrap().is_none(),
        "the keeper gave up while the daemon still held its lock"
    );
    assert!(p.pooled_runs());

    drop(lock);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = keeper.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the keeper did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    p.assert_cleaned_up();
}

/// A daemon killed with kill -9 exits thread by thread, and its first thread can be
/// gone (`/proc/PID/stat` reads Z) while another still holds the home's lock: CI saw
/// the keeper take that for a dead daemon and a new daemon's lock, and leave the pool
/// running. Here a Python process plays the daemon: it takes the lock, starts the
/// keeper, ends its first thread, and a second thread closes the keeper's pipe, waits,
/// and only then exits (releasing the lock).
#[test]
fn the_keeper_waits_for_the_last_thread_of_a_dying_daemon() {
    let mut p = PoolSlot::new();
    let script = r#"
import ctypes, fcntl, os, subprocess, sys, threading, time
home, thawd = sys.argv[1], sys.argv[2]
lock = open(os.path.join(home, "thawd.lock"), "a")
fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
keeper = subprocess.Popen([thawd, "--pool-keeper", home], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
assert keeper.stdout.readline().strip() == b"ready"
def last_thread():
    time.sleep(0.3)          # the first thread has exited: this process reads as Z
    keeper.stdin.close()     # the keeper's pipe closes, the lock is still held
    time.sleep(1.0)
    os._exit(0)              # the lock is released
threading.Thread(target=last_thread).start()
ctypes.CDLL(None).pthread_exit(None)
"#;
    let mut daemon = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(p.home.path())
        .arg(common::THAWD)
        .spawn()
        .unwrap();
    let status = daemon.wait().unwrap();
    assert!(status.success(), "the stand-in daemon failed: {status}");
    p.assert_cleaned_up();
}
