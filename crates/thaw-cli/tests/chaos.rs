//! Random kill points: `thaw snapshot`, `restore`, `reset`, the daemon, `push`,
//! `pull`, `import` and `gc` killed with SIGKILL at seeded random moments (the seed is
//! printed; `THAW_CHAOS_SEED` replays it, `THAW_CHAOS_ROUNDS` scales the rounds), and
//! `snapshot` (with and without `--stop`), `restore --count 3` and `reset` sent SIGINT
//! or SIGTERM at seeded moments (they finish or roll back, then exit 130 / 143 with one
//! line saying which). After every kill or signal:
//!
//! - no half snapshot is listed: every listed snapshot passes the full check (every
//!   file's hash), and nothing temporary is left once the retry ran;
//! - the source VM is running, or paused and `thaw resume` resumes it;
//! - `thaw store verify` passes;
//! - no QEMU runs without a record: every QEMU of the home is a VM `thaw ls` lists
//!   as alive (or, with the daemon, one of its pooled processes);
//! - a retry of the same command succeeds.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::chaos::{assert_nothing_lost, assert_vm_usable, qemus, rounds, Chaos};
use common::s3::S3Server;
use common::Env;

/// `thaw snapshot`, `restore` and `reset` killed at random moments, on one VM and
/// one snapshot.
#[test]
fn kill_9_at_random_moments_of_snapshot_restore_and_reset() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");
    let n = rounds(15);

    // snapshot
    let mut chaos = Chaos::new("snapshot");
    chaos.retry(&env, &["snapshot", "vm", "base"]);
    for i in 0..n {
        let tag = format!("k{i}");
        chaos.kill(env.command(&["snapshot", "vm", &tag]));
        let ctx = format!("snapshot killed (round {i})");
        assert_vm_usable(&env, "vm", &ctx);
        assert_nothing_lost(&env, &ctx, false);
        if !env.listed(&tag) {
            chaos.retry(&env, &["snapshot", "vm", &tag]);
        }
        assert!(
            !env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")),
            "{ctx}: {:?}",
            env.snapshot_dirs()
        );
        env.json(&["rm", &tag]);
    }
    env.json(&["gc"]);
    chaos.report();

    // restore
    let mut chaos = Chaos::new("restore");
    chaos.retry(&env, &["restore", "base", "--name", "r"]);
    env.ok(&["stop", "r"]);
    for i in 0..n {
        let name = format!("r{i}");
        chaos.kill(env.command(&["restore", "base", "--name", &name]));
        let ctx = format!("restore killed (round {i})");
        assert_nothing_lost(&env, &ctx, false);
        assert_vm_usable(&env, "vm", &ctx);
        // Whatever the kill left of the clone is listed truthfully and stops; then the
        // same restore succeeds.
        if env.state_of(&name) != "absent" {
            env.ok(&["stop", &name]);
        }
        chaos.retry(&env, &["restore", "base", "--name", &name]);
        assert_eq!(env.sh(&name, "cat /tmp/m"), "marker\n", "{ctx}");
        env.ok(&["stop", &name]);
    }
    chaos.report();

    // reset
    let mut chaos = Chaos::new("reset");
    env.json(&["restore", "base", "--name", "c"]);
    chaos.retry(&env, &["reset", "c"]);
    for i in 0..n {
        env.sh("c", "echo changed > /tmp/m");
        chaos.kill(env.command(&["reset", "c"]));
        let ctx = format!("reset killed (round {i})");
        // The VM is never lost: running (old or new), or dead if killed between the
        // old QEMU's end and the clone's takeover; `thaw ls` sweeps what the killed
        // reset left.
        let st = env.state_of("c");
        assert!(
            ["running", "paused", "dead"].contains(&st.as_str()),
            "{ctx}: c is {st}"
        );
        assert_nothing_lost(&env, &ctx, false);
        chaos.retry(&env, &["reset", "c"]);
        assert_eq!(
            env.sh("c", "cat /tmp/m"),
            "marker\n",
            "{ctx}: the retry reset"
        );
        let stray: Vec<String> = env
            .vm_dirs()
            .into_iter()
            .filter(|d| d.starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{ctx}: {stray:?}");
    }
    chaos.report();
    env.ok(&["stop", "--all"]);
    assert!(qemus(env.path()).is_empty());
}

/// A `thaw serve` in the background for `env`; killed with SIGKILL on drop.
struct Serve {
    child: Option<Child>,
}

impl Serve {
    fn start(env: &Env) -> Serve {
        let child = env
            .command(&["serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = env.run(&["pools", "--json"]);
            if r.code == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not answer: {}",
                r.stderr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Serve { child: Some(child) }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until the pool of `tag` is full and nothing is being prepared.
fn pool_settled(env: &Env, size: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pools = env.json(&["pools"]);
        let p = &pools[0];
        if p["ready"] == size && p["filling"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the pool did not fill: {pools}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon killed at random moments of restores (from its warm pool, and spawned),
/// then started again: it adopts what runs, its keeper or successor ends the pooled
/// processes it left, and nothing runs unlisted.
#[test]
fn kill_9_of_the_daemon_at_random_moments() {
    let env = Env::new();
    let n = rounds(15);
    let mut chaos = Chaos::new("daemon");
    let mut serve = Serve::start(&env);
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");
    env.json(&["snapshot", "vm", "base"]);
    env.json(&["pool", "base", "--size", "1"]);
    pool_settled(&env, 1);
    chaos.retry(&env, &["restore", "base", "--count", "2", "--name", "w"]);
    env.ok(&["stop", "w-1", "w-2"]);
    for i in 0..n {
        pool_settled(&env, 1);
        let name = format!("d{i}");
        // Two clones: one from the pool, one spawned.
        let mut cli = env
            .command(&["restore", "base", "--count", "2", "--name", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = chaos.moment(chaos.window);
        std::thread::sleep(delay);
        serve.kill9();
        chaos.tried += 1;
        if cli.try_wait().unwrap().is_none() {
            chaos.mid_way += 1;
        }
        let _ = cli.wait();
        let ctx = format!("daemon killed (round {i}, after {delay:?})");
        serve = Serve::start(&env);
        pool_settled(&env, 1);
        assert_nothing_lost(&env, &ctx, true);
        // Pooled: started under pool/ and not (yet) a VM — a clone taken from the pool
        // keeps its pooled command line.
        let alive: Vec<u64> = env
            .json(&["ls"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["pid"].as_u64())
            .collect();
        let pooled: Vec<(u32, String)> = qemus(env.path())
            .into_iter()
            .filter(|(pid, c)| c.contains("/pool/") && !alive.contains(&u64::from(*pid)))
            .collect();
        assert_eq!(
            pooled.len(),
            1,
            "{ctx}: pooled processes left behind: {pooled:?}"
        );
        assert_vm_usable(&env, "vm", &ctx);
        for k in 1..=2 {
            let clone = format!("{name}-{k}");
            if env.state_of(&clone) != "absent" {
                env.ok(&["stop", &clone]);
            }
        }
        chaos.retry(&env, &["restore", "base", "--count", "2", "--name", &name]);
        assert_eq!(
            env.sh(&format!("{name}-2"), "cat /tmp/m"),
            "marker\n",
            "{ctx}"
        );
        env.ok(&["stop", &format!("{name}-1"), &format!("{name}-2")]);
    }
    chaos.report();
    env.ok(&["stop", "--all"]);
}

/// `push`, `pull`, `import` and `gc` killed at random moments: the store verifies,
/// a listed snapshot is whole, and the retry succeeds.
#[test]
fn kill_9_at_random_moments_of_push_pull_import_and_gc() {
    let server = S3Server::start();
    let with_s3 = |mut env: Env| {
        for (k, v) in server.env() {
            env = env.with_env(&k, &v);
        }
        env
    };
    let a = with_s3(Env::new());
    a.boot("vm", &["--memory", "128"]);
    a.sh("vm", "echo marker > /tmp/m");
    a.json(&["snapshot", "vm", "s"]);
    a.ok(&["stop", "vm"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.thaw");
    let file = file.to_str().unwrap();
    a.json(&["export", "s", file]);
    let b = with_s3(Env::new());
    let c = with_s3(Env::new());
    let n = rounds(10);
    let (mut push, mut pull, mut import, mut gc) = (
        Chaos::new("push"),
        Chaos::new("pull"),
        Chaos::new("import"),
        Chaos::new("gc"),
    );
    push.retry(&a, &["push", "s", "s3://thaw/timing"]);
    pull.retry(&b, &["pull", "s", "s3://thaw/timing"]);
    b.ok(&["rm", "s"]);
    b.json(&["gc"]);
    import.retry(&c, &["import", file]);
    c.ok(&["rm", "s"]);
    gc.observe(Duration::from_millis(400));
    for i in 0..n {
        // A fresh prefix each round, so each push has everything to send.
        let remote = format!("s3://thaw/r{i}");
        push.kill(a.command(&["push", "s", &remote]));
        assert_nothing_lost(&a, &format!("push killed (round {i})"), false);
        a.json(&["push", "s", &remote]);

        pull.kill(b.command(&["pull", "s", &remote]));
        let ctx = format!("pull killed (round {i})");
        assert_nothing_lost(&b, &ctx, false);
        if !b.listed("s") {
            pull.retry(&b, &["pull", "s", &remote]);
        }
        b.ok(&["rm", "s"]);
        b.json(&["gc"]);

        import.kill(c.command(&["import", file]));
        let ctx = format!("import killed (round {i})");
        assert_nothing_lost(&c, &ctx, false);
        if !c.listed("s") {
            import.retry(&c, &["import", file]);
        }
        c.ok(&["rm", "s"]);
        // What the removal left is garbage for the next gc: kill that one.
        gc.kill(c.command(&["gc"]));
        assert_nothing_lost(&c, &format!("gc killed (round {i})"), false);
        c.json(&["gc"]);
    }
    for ch in [&push, &pull, &import, &gc] {
        ch.report();
    }
    // What arrived after the kills and retries restores.
    b.json(&["pull", "s", "s3://thaw/r0"]);
    c.json(&["import", file]);
    for env in [&b, &c] {
        let r = env.json(&["restore", "s", "--name", "p"]);
        assert_eq!(
            env.sh(r[0]["name"].as_str().unwrap(), "cat /tmp/m"),
            "marker\n"
        );
        env.ok(&["stop", "p"]);
    }
    for env in [&a, &b, &c] {
        assert!(qemus(env.path()).is_empty());
        assert!(
            !env.snapshot_dirs().iter().any(|d| d.starts_with(".tmp")),
            "{:?}",
            env.snapshot_dirs()
        );
    }
}

/// A VM directory whose record was never written (thaw killed between starting QEMU
/// and writing vm.json) with a process running from it: `thaw ls` said "dead" with no
/// pid while it ran. It is listed as unresponsive with its pid, and `thaw stop` ends it.
#[test]
fn a_process_without_a_record_is_listed_as_running_not_dead() {
    let env = Env::new();
    let dir = env.path().join("vms/x");
    std::fs::create_dir_all(&dir).unwrap();
    // A stand-in for QEMU: a process whose command line names the directory.
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sleep")
        .arg0(dir.join("qmp.sock"))
        .arg("300")
        .spawn()
        .unwrap();
    let ls = env.json(&["ls"]);
    assert_eq!(ls[0]["name"], "x", "{ls}");
    assert_eq!(ls[0]["state"], "unresponsive", "{ls}");
    assert_eq!(ls[0]["pid"], child.id(), "{ls}");
    env.ok(&["stop", "x"]);
    let status = child.wait().unwrap();
    assert!(!status.success(), "thaw stop ended it");
    assert!(env.vm_dirs().is_empty());
}

/// A snapshot killed while QEMU copies RAM (the live phase of its migration): the VM
/// ran on, so `thaw ls` said "running" — and seconds later QEMU finished copying and
/// paused it at the switchover, waiting for the dead thaw, for good. The abandoned
/// migration is now cancelled when thaw next looks at the VM. (If the copy is over
/// before thaw looks, the VM is paused, as documented, and resumes; then again.)
#[test]
fn a_snapshot_killed_while_copying_ram_does_not_pause_the_vm_later() {
    use std::io::{BufRead, BufReader};
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");
    let mut seen_running = 0;
    for attempt in 0..3 {
        let mut child = env
            .command(&["snapshot", "vm", "t"])
            .env("THAW_TEST_HANG_AT", "migrating")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let line = BufReader::new(child.stderr.take().unwrap())
            .lines()
            .next()
            .unwrap()
            .unwrap();
        assert!(line.contains("hanging at migrating"), "{line}");
        child.kill().unwrap();
        child.wait().unwrap();
        match env.state_of("vm").as_str() {
            "running" => {
                seen_running += 1;
                // Long enough for the copy to have converged and paused the VM.
                std::thread::sleep(Duration::from_secs(10));
                assert_eq!(
                    env.state_of("vm"),
                    "running",
                    "attempt {attempt}: the VM paused itself after the kill"
                );
                assert_eq!(env.sh("vm", "cat /tmp/m"), "marker\n");
            }
            "paused" => {
                env.ok(&["resume", "vm"]);
            }
            other => panic!("attempt {attempt}: the VM is {other}"),
        }
        assert!(!env.listed("t"));
    }
    assert!(
        seen_running > 0,
        "the copy was over before thaw looked, every time"
    );
    env.json(&["snapshot", "vm", "t"]);
    env.ok(&["stop", "--all"]);
}
