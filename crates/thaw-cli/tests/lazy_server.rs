//! A home's lazy server (`thaw lazyfs`, started on demand by whoever needs it) is one
//! process however many callers start it at once, and one that is going away idle
//! gives way to a new one: no caller is told that it did not start. One that is
//! stopped has ended when `stop_server` returns.
//!
//! Its own test binary: it sets the environment the servers it starts inherit.

use std::collections::BTreeSet;
use std::time::Duration;

const THAW: &str = env!("CARGO_BIN_EXE_thaw");

fn ensure_at_once(home: &thaw::Home, callers: usize) -> Vec<u32> {
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let home = home.clone();
            std::thread::spawn(move || thaw::lazy::ensure_server(&home))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| match t.join().expect("no panic") {
            Ok(pid) => pid,
            Err(e) => panic!("a caller was refused: {e}"),
        })
        .collect()
}

#[test]
fn callers_at_once_and_across_idle_exits_all_get_the_one_server_and_a_stopped_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    // Set before any thread starts; the servers inherit both.
    std::env::set_var("THAW_LAZYFS_PROGRAM", THAW);
    std::env::set_var("THAW_LAZY_IDLE", "0.3");
    let home = thaw::Home::new(dir.path());

    let pids = ensure_at_once(&home, 6);
    let first: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(
        first.len(),
        1,
        "callers at once got different servers: {pids:?}"
    );

    // The server ends 0.3 s after its last request (checked every 0.5 s), so calls
    // spaced 0.3–1.2 s apart land before, during and after its exits.
    let mut seen = first;
    for round in 0..12u64 {
        std::thread::sleep(Duration::from_millis(300 + (round * 83) % 900));
        let pids = ensure_at_once(&home, 3);
        let now: BTreeSet<u32> = pids.iter().copied().collect();
        assert_eq!(now.len(), 1, "round {round}: different servers: {pids:?}");
        let pid = pids[0];
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "round {round}: server {pid} is not running"
        );
        seen.extend(now);
    }
    assert!(
        seen.len() >= 2,
        "an idle server never ended and gave way to a new one: {seen:?}"
    );

    // Stopped, it has ended (or is a zombie) on return: the abort of its connection
    // does not let it slip away on its own, still unmounting and writing.
    let pid = thaw::lazy::ensure_server(&home).expect("the server starts");
    thaw::lazy::stop_server(&home);
    assert!(
        !thaw::vm::any_thread_lives(pid),
        "server {pid} still runs after stop_server"
    );
    // So a home made anew in the same place gets a server whose mount stays.
    std::fs::remove_dir_all(dir.path()).expect("the stopped server's home is removed");
    std::env::set_var("THAW_LAZY_IDLE", "60");
    let again = thaw::lazy::ensure_server(&home).expect("a new server starts");
    assert_ne!(again, pid);
    // Longer than the old server's own shutdown (1 s) would have taken.
    std::thread::sleep(Duration::from_millis(1500));
    let mnt = thaw::lazy::LazyDir::new(&home).mnt();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(mnt.to_str().unwrap())),
        "the new server's mount {} went away",
        mnt.display()
    );
    thaw::lazy::stop_server(&home);
    assert!(
        !thaw::vm::any_thread_lives(again),
        "server {again} still runs after stop_server"
    );
}
