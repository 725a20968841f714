//! Soak: restore → exec → stop cycles through the daemon, and warm-pool take + refill
//! cycles, with no growth in QEMU processes, the daemon's open descriptors, the
//! files under `$THAW_HOME` or the daemon's memory. `THAW_SOAK_CYCLES` cycles of each
//! (default 25: 50 cycles in all, to keep CI short); `scripts/soak.sh` runs 1000 of each
//! with the release binaries.

mod common;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{processes_mentioning, Env};

/// What must not grow.
#[derive(Debug, Clone, Copy)]
struct Figures {
    qemus: usize,
    fds: usize,
    files: usize,
    rss_kib: u64,
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => 1 + count_files(&e.path()),
            _ => 1,
        })
        .sum()
}

fn measure(env: &Env, daemon: u32) -> Figures {
    let qemus = processes_mentioning(env.path())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        })
        .count();
    let fds = std::fs::read_dir(format!("/proc/{daemon}/fd"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    Figures {
        qemus,
        fds,
        files: count_files(env.path()),
        rss_kib,
    }
}

fn pool_ready(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let p = env.json(&["pools"]);
        if p[0]["ready"] == 1 && p[0]["filling"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the pool did not refill: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_growth(what: &str, before: Figures, after: Figures, cycles: u32) {
    println!(
        "soak {what}: {cycles} cycles; QEMU processes {} -> {}, daemon fds {} -> {}, files under $THAW_HOME {} -> {}, daemon RSS {} -> {} KiB",
        before.qemus, after.qemus, before.fds, after.fds, before.files, after.files, before.rss_kib, after.rss_kib
    );
    assert_eq!(after.qemus, before.qemus, "{what}: QEMU processes grew");
    assert!(after.fds <= before.fds, "{what}: the daemon's fds grew");
    assert!(
        after.files <= before.files,
        "{what}: files under $THAW_HOME grew"
    );
    // The allocator keeps some of what it was given; a leak per cycle would show as
    // growth with the cycle count.
    assert!(
        after.rss_kib <= before.rss_kib + 16 * 1024,
        "{what}: the daemon's memory grew by {} KiB",
        after.rss_kib - before.rss_kib
    );
}

#[test]
fn restore_exec_stop_and_pool_cycles_leak_nothing() {
    let cycles: u32 = std::env::var("THAW_SOAK_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let env = Env::new();
    let mut serve: Child = env
        .command(&["serve"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while env.run(&["pools"]).code != 0 {
        assert!(Instant::now() < deadline, "the daemon did not answer");
        std::thread::sleep(Duration::from_millis(50));
    }
    let daemon = serve.id();
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");
    env.json(&["snapshot", "vm", "base"]);
    env.ok(&["stop", "vm"]);

    let restore_cycle = |name: &str| {
        env.json(&["restore", "base", "--name", name]);
        assert_eq!(env.sh(name, "cat /tmp/m"), "marker\n");
        env.json(&["stop", name]);
    };
    // Warm up (first allocations, the database's first pages), then measure.
    for _ in 0..3 {
        restore_cycle("s");
    }
    let before = measure(&env, daemon);
    for _ in 0..cycles {
        restore_cycle("s");
    }
    assert_no_growth(
        "restore → exec → stop",
        before,
        measure(&env, daemon),
        cycles,
    );

    env.json(&["pool", "base", "--size", "1"]);
    let pool_cycle = || {
        pool_ready(&env);
        let r = env.json(&["restore", "base", "--name", "p"]);
        assert_eq!(r[0]["breakdown"]["source"], "pool", "{r}");
        assert_eq!(env.sh("p", "cat /tmp/m"), "marker\n");
        env.json(&["stop", "p"]);
    };
    for _ in 0..3 {
        pool_cycle();
    }
    pool_ready(&env);
    let before = measure(&env, daemon);
    for _ in 0..cycles {
        pool_cycle();
    }
    pool_ready(&env);
    assert_no_growth("pool take + refill", before, measure(&env, daemon), cycles);

    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(daemon as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = serve.wait();
}
