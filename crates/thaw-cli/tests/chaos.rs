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
//! - a retry of the same command succeeds;
//! - after a signal, also: no clone of an interrupted restore is left, and a VM whose
//!   `snapshot --stop` was interrupted either runs (no snapshot) or is in the snapshot.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::{processes_mentioning, Env};
use serde_json::Value;
use thaw::snapshot::Snapshot;
use thaw::{Home, SnapshotTag};

/// Seeded kill moments; reports what was tried.
struct Chaos {
    op: &'static str,
    state: u64,
    tried: u32,
    mid_way: u32,
    /// How long the operation takes undisturbed, last seen: kill moments fall within
    /// it. Updated from every run that was not killed (the load on a shared machine
    /// changes what "within" means from one minute to the next).
    window: Duration,
}

impl Chaos {
    fn new(op: &'static str) -> Chaos {
        // One seed for the whole run (every test of this file), printed by each.
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            std::env::var("THAW_CHAOS_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos() as u64
                        % 1_000_000_007
                })
        });
        println!("chaos {op}: seed {seed} (THAW_CHAOS_SEED={seed} replays it)");
        // Each operation draws its own sequence from the one seed.
        let state = op.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        Chaos {
            op,
            state,
            tried: 0,
            mid_way: 0,
            window: Duration::from_secs(1),
        }
    }

    /// An undisturbed run of the operation took `took`.
    fn observe(&mut self, took: Duration) {
        self.window = took;
    }

    /// Runs `args` undisturbed (asserting success), as the retry after a kill, and
    /// learns how long the operation takes now.
    fn retry(&mut self, env: &Env, args: &[&str]) -> Value {
        let t = Instant::now();
        let v = env.json(args);
        self.observe(t.elapsed());
        v
    }

    /// A moment in `[0, within)`, `within` being how long the operation took
    /// undisturbed (a little less, so that most moments fall inside it).
    fn moment(&mut self, within: Duration) -> Duration {
        let within = within.mul_f64(0.9);
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let ms = within.as_millis().max(1) as u64;
        Duration::from_millis(self.state % ms)
    }

    /// Starts `cmd`, kills it with SIGKILL at a random moment of its expected run
    /// (unless it ended first: then it must have succeeded). Returns whether it was
    /// killed mid-way.
    fn kill(&mut self, mut cmd: Command) -> bool {
        let delay = self.moment(self.window);
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.tried += 1;
        match kill_after(child, delay) {
            Ok(()) => {
                self.mid_way += 1;
                true
            }
            Err(out) => {
                assert!(
                    out.status.success(),
                    "chaos {}: ended before the kill, and failed: {}",
                    self.op,
                    String::from_utf8_lossy(&out.stderr)
                );
                self.observe(started.elapsed());
                false
            }
        }
    }

    fn report(&self) {
        println!(
            "chaos {}: {} kill points tried ({} mid-operation, the rest after it ended), {} survived with nothing lost",
            self.op, self.tried, self.mid_way, self.tried
        );
    }
}

/// SIGKILL after `delay` unless `child` ended first, in which case its output.
fn kill_after(mut child: Child, delay: Duration) -> Result<(), std::process::Output> {
    let deadline = Instant::now() + delay;
    loop {
        if child.try_wait().unwrap().is_some() {
            return Err(child.wait_with_output().unwrap());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGINT or SIGTERM, and the exit status thaw ends with after it.
#[derive(Debug, Clone, Copy)]
enum Sig {
    Int,
    Term,
}

impl Sig {
    /// SIGINT and SIGTERM in turn.
    fn nth(i: u32) -> Sig {
        if i.is_multiple_of(2) {
            Sig::Int
        } else {
            Sig::Term
        }
    }

    fn send(self, child: &Child) {
        use rustix::process::{kill_process, Pid, Signal};
        let signal = match self {
            Sig::Int => Signal::INT,
            Sig::Term => Signal::TERM,
        };
        let _ = kill_process(Pid::from_child(child), signal);
    }

    fn exit_code(self) -> i32 {
        match self {
            Sig::Int => 130,
            Sig::Term => 143,
        }
    }
}

/// How a signalled command ended.
struct Ended {
    code: i32,
    stderr: String,
}

impl Ended {
    /// Whether the operation finished (undisturbed, or interrupted after its safe
    /// point) rather than rolled back.
    fn completed(&self) -> bool {
        self.code == 0 || self.stderr.contains("was completed")
    }
}

/// Waits for `child` (a deadlock guard, not a timing: generous), then its stderr.
fn wait_ended(mut child: Child, ctx: &str) -> Ended {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{ctx}: thaw did not end within 180 s of the signal");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    Ended {
        code: status.code().unwrap_or(-1),
        stderr,
    }
}

impl Chaos {
    /// Starts `cmd` and sends it `sig` at a random moment of its expected run (unless
    /// it ended first: then it must have succeeded). It must then end with the
    /// signal's exit status and one line saying what was done.
    fn interrupt(&mut self, mut cmd: Command, sig: Sig, ctx: &str) -> Ended {
        let delay = self.moment(self.window);
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.tried += 1;
        let mut child = child;
        let deadline = started + delay;
        let sent = loop {
            if child.try_wait().unwrap().is_some() {
                break false;
            }
            if Instant::now() >= deadline {
                sig.send(&child);
                break true;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let ended = wait_ended(child, ctx);
        let ctx = format!("{ctx}, {sig:?} after {delay:?}");
        println!("{ctx}: exit {}, {}", ended.code, ended.stderr.trim());
        if ended.code == 0 {
            // Ended before the signal, or finished before it was looked at.
            if !sent {
                self.observe(started.elapsed());
            }
            return ended;
        }
        assert!(sent, "{ctx}: failed undisturbed: {}", ended.stderr);
        self.mid_way += 1;
        assert_eq!(ended.code, sig.exit_code(), "{ctx}: {}", ended.stderr);
        let lines: Vec<&str> = ended.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("thaw: interrupted: "),
            "{ctx}: not one line saying what was done: {:?}",
            ended.stderr
        );
        ended
    }
}

fn rounds(default: u32) -> u32 {
    std::env::var("THAW_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Pids of the home's QEMU processes.
fn qemus(home: &Path) -> Vec<(u32, String)> {
    processes_mentioning(home)
        .into_iter()
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains("qemu-system").then_some((pid, cmd))
        })
        .collect()
}

/// The invariants every kill must leave (see the module docs), `ctx` naming the kill.
fn assert_nothing_lost(env: &Env, ctx: &str, pool_allowed: bool) {
    // Listed snapshots are whole: every file present with its hash.
    let home = Home::new(env.path());
    for s in env.json(&["snapshots"]).as_array().unwrap() {
        assert!(
            s["problem"].is_null(),
            "{ctx}: a broken snapshot is listed: {s}"
        );
        let tag: SnapshotTag = s["tag"].as_str().unwrap().parse().unwrap();
        let snap = Snapshot::open(&home, &tag).unwrap();
        let m = &snap.manifest;
        snap.check(m.qemu_version, m.accel, true)
            .unwrap_or_else(|e| panic!("{ctx}: listed snapshot {tag} is not whole: {e}"));
    }
    let r = env.run(&["store", "verify"]);
    assert_eq!(r.code, 0, "{ctx}: store verify: {}", r.stderr);
    // Every QEMU has a record that `thaw ls` shows alive.
    let ls = env.json(&["ls"]);
    let alive: Vec<u64> = ls
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["state"] != "dead")
        .filter_map(|v| v["pid"].as_u64())
        .collect();
    let pool = format!("{}/pool/", env.path().display());
    for (pid, cmd) in qemus(env.path()) {
        if pool_allowed && cmd.contains(&pool) {
            continue;
        }
        assert!(
            alive.contains(&u64::from(pid)),
            "{ctx}: QEMU {pid} runs without a record thaw ls shows: {cmd}\nls: {ls}"
        );
    }
}

/// The VM runs again: resumed if the kill left it paused; its guest answers.
fn assert_vm_usable(env: &Env, vm: &str, ctx: &str) {
    match env.state_of(vm).as_str() {
        "running" => {}
        "paused" => {
            env.ok(&["resume", vm]);
        }
        other => panic!("{ctx}: VM {vm} is {other}"),
    }
    assert_eq!(env.sh(vm, "cat /tmp/m"), "marker\n", "{ctx}");
}

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

/// `thaw snapshot` (plain and `--stop`), `restore --count 3` and `reset` sent SIGINT or
/// SIGTERM at seeded moments: each finishes or rolls back, says which in one line and
/// exits 130 / 143; nothing is lost (see the module docs) and the retry succeeds.
#[test]
fn sigint_and_sigterm_at_random_moments_of_snapshot_restore_and_reset() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");
    let n = rounds(3);

    // snapshot: the VM runs on, the snapshot is whole or absent.
    let mut chaos = Chaos::new("snapshot-signal");
    chaos.retry(&env, &["snapshot", "vm", "base"]);
    for i in 0..n {
        let tag = format!("s{i}");
        let ctx = format!("snapshot interrupted (round {i})");
        let ended = chaos.interrupt(env.command(&["snapshot", "vm", &tag]), Sig::nth(i), &ctx);
        assert_vm_usable(&env, "vm", &ctx);
        assert_nothing_lost(&env, &ctx, false);
        assert_eq!(
            env.listed(&tag),
            ended.completed(),
            "{ctx}: {}",
            ended.stderr
        );
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
    chaos.report();

    // snapshot --stop: either the snapshot is whole and the VM gone, or the VM runs
    // and there is no snapshot. The VM comes back from the snapshot (a clone from
    // then on, whose RAM QEMU writes live: the other way of saving it).
    let mut chaos = Chaos::new("snapshot-stop-signal");
    chaos.retry(&env, &["snapshot", "vm", "stopped", "--stop"]);
    env.json(&["restore", "stopped", "--name", "vm"]);
    for i in 0..n {
        let tag = format!("t{i}");
        let ctx = format!("snapshot --stop interrupted (round {i})");
        let args = ["snapshot", "vm", &tag, "--stop"];
        let ended = chaos.interrupt(env.command(&args), Sig::nth(i + 1), &ctx);
        assert_nothing_lost(&env, &ctx, false);
        if env.listed(&tag) {
            assert!(ended.completed(), "{ctx}: {}", ended.stderr);
            assert_eq!(env.state_of("vm"), "absent", "{ctx}");
        } else {
            assert!(!ended.completed(), "{ctx}: {}", ended.stderr);
            assert_vm_usable(&env, "vm", &ctx);
            chaos.retry(&env, &args);
        }
        env.json(&["restore", &tag, "--name", "vm"]);
        assert_eq!(env.sh("vm", "cat /tmp/m"), "marker\n", "{ctx}");
    }
    chaos.report();

    // restore --count 3: all three clones, or none of them.
    let mut chaos = Chaos::new("restore-signal");
    chaos.retry(&env, &["restore", "base", "--count", "3", "--name", "w"]);
    env.ok(&["stop", "w-1", "w-2", "w-3"]);
    for i in 0..n {
        let name = format!("q{i}");
        let ctx = format!("restore --count 3 interrupted (round {i})");
        let args = ["restore", "base", "--count", "3", "--name", &name];
        let ended = chaos.interrupt(env.command(&args), Sig::nth(i), &ctx);
        assert_nothing_lost(&env, &ctx, false);
        let clones: Vec<String> = env
            .vm_dirs()
            .into_iter()
            .filter(|d| d.starts_with(&format!("{name}-")))
            .collect();
        if ended.completed() {
            assert_eq!(clones.len(), 3, "{ctx}: {clones:?}");
            for c in &clones {
                env.ok(&["stop", c]);
            }
        } else {
            assert!(clones.is_empty(), "{ctx}: clones left: {clones:?}");
            assert!(
                ended.stderr.contains("3 clone(s) removed"),
                "{ctx}: {}",
                ended.stderr
            );
        }
        chaos.retry(&env, &args);
        assert_eq!(
            env.sh(&format!("{name}-2"), "cat /tmp/m"),
            "marker\n",
            "{ctx}"
        );
        env.ok(&[
            "stop",
            &format!("{name}-1"),
            &format!("{name}-2"),
            &format!("{name}-3"),
        ]);
    }
    chaos.report();

    // reset: the VM runs, reset or as it was.
    let mut chaos = Chaos::new("reset-signal");
    env.json(&["restore", "base", "--name", "c"]);
    chaos.retry(&env, &["reset", "c"]);
    for i in 0..n {
        env.sh("c", "echo changed > /tmp/m");
        let ctx = format!("reset interrupted (round {i})");
        let ended = chaos.interrupt(env.command(&["reset", "c"]), Sig::nth(i + 1), &ctx);
        assert_eq!(env.state_of("c"), "running", "{ctx}: {}", ended.stderr);
        let expected = if ended.completed() {
            "marker\n"
        } else {
            "changed\n"
        };
        assert_eq!(
            env.sh("c", "cat /tmp/m"),
            expected,
            "{ctx}: {}",
            ended.stderr
        );
        assert_nothing_lost(&env, &ctx, false);
        chaos.retry(&env, &["reset", "c"]);
        assert_eq!(env.sh("c", "cat /tmp/m"), "marker\n", "{ctx}: the retry");
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

/// `thaw args` started with the test hook `THAW_TEST_HANG_AT=step` (it waits there
/// until interrupted), once it says it is there; and its stderr from then on.
fn hanging_at(
    env: &Env,
    args: &[&str],
    step: &str,
) -> (Child, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead;
    let mut child = env
        .command(args)
        .env("THAW_TEST_HANG_AT", step)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains(&format!("hanging at {step}")), "{line}");
    (child, err)
}

/// Waits for a child started by [`hanging_at`].
fn wait_hung(
    child: Child,
    mut err: std::io::BufReader<std::process::ChildStderr>,
    ctx: &str,
) -> Ended {
    use std::io::Read;
    let mut ended = wait_ended(child, ctx);
    err.read_to_string(&mut ended.stderr).unwrap();
    ended
}

/// Ctrl-C during `thaw snapshot VM TAG --stop`, after the VM had ended and its RAM
/// file had moved into the temporary snapshot: thaw died there, the VM was lost and
/// the next snapshot deleted what was left. The snapshot is now finished (and a second
/// signal changes nothing). Before the pause, an interrupt leaves the VM running and
/// no snapshot.
#[test]
fn sigint_during_snapshot_stop_keeps_the_vm_or_the_snapshot() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.sh("vm", "echo marker > /tmp/m");

    // While RAM is copied, the VM still running: rolled back.
    let (child, err) = hanging_at(&env, &["snapshot", "vm", "early"], "migrating");
    Sig::Term.send(&child);
    let ended = wait_hung(child, err, "snapshot interrupted while copying RAM");
    assert_eq!(ended.code, 143, "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .trim_end()
            .ends_with("thaw: interrupted: no snapshot was taken, VM vm runs as before"),
        "{}",
        ended.stderr
    );
    assert!(!env.listed("early"));
    assert_eq!(env.state_of("vm"), "running");
    assert_nothing_lost(&env, "snapshot interrupted while copying RAM", false);

    // The VM ended, its RAM in the temporary snapshot: finished.
    let (child, err) = hanging_at(&env, &["snapshot", "vm", "t", "--stop"], "ram-copied");
    Sig::Int.send(&child);
    Sig::Int.send(&child);
    let ended = wait_hung(child, err, "snapshot --stop interrupted");
    assert_eq!(ended.code, 130, "{}", ended.stderr);
    assert!(
        ended
            .stderr
            .trim_end()
            .ends_with("thaw: interrupted: the snapshot was completed"),
        "{}",
        ended.stderr
    );
    assert!(env.listed("t"), "{:?}", env.snapshot_dirs());
    assert_eq!(env.state_of("vm"), "absent");
    assert_nothing_lost(&env, "snapshot --stop interrupted", false);
    env.json(&["restore", "t", "--name", "vm"]);
    assert_eq!(env.sh("vm", "cat /tmp/m"), "marker\n");
    env.ok(&["stop", "--all"]);
}

/// Waits until `thaw` (`child`) has started QEMU for every one of `names` (their
/// records are written), or ended; returns whether it still runs.
fn wait_records(env: &Env, child: &mut Child, names: &[String]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if names
            .iter()
            .all(|n| env.path().join("vms").join(n).join("vm.json").exists())
        {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU did not start for {names:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGINT/SIGTERM to `thaw restore TAG --count 3` once its clones' QEMUs ran: the
/// clones were left behind, paused or running. Every clone of the request is now
/// stopped and removed.
#[test]
fn an_interrupted_restore_removes_every_clone() {
    let env = Env::new();
    env.boot("vm", &["--memory", "128"]);
    env.json(&["snapshot", "vm", "base", "--stop"]);
    let names: Vec<String> = (1..=3).map(|k| format!("r-{k}")).collect();
    let mut interrupted = 0;
    for attempt in 0..6 {
        let sig = Sig::nth(attempt);
        let mut child = env
            .command(&["restore", "base", "--count", "3", "--name", "r"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let running = wait_records(&env, &mut child, &names);
        if running {
            sig.send(&child);
        }
        let ctx = format!("restore, {sig:?} (attempt {attempt})");
        let ended = wait_ended(child, &ctx);
        if ended.code == 0 {
            // Ready before the signal could be sent.
            env.ok(&["stop", "r-1", "r-2", "r-3"]);
            continue;
        }
        interrupted += 1;
        assert_eq!(ended.code, sig.exit_code(), "{ctx}: {}", ended.stderr);
        assert_eq!(
            ended.stderr.trim_end(),
            "thaw: interrupted: 3 clone(s) removed",
            "{ctx}"
        );
        assert!(env.vm_dirs().is_empty(), "{ctx}: {:?}", env.vm_dirs());
        assert!(
            qemus(env.path()).is_empty(),
            "{ctx}: {:?}",
            qemus(env.path())
        );
        if interrupted == 2 {
            break;
        }
    }
    assert!(interrupted > 0, "every restore was ready before the signal");
    env.json(&["restore", "base", "--count", "3", "--name", "r"]);
    env.ok(&["stop", "--all"]);
}

/// A boot interrupted while the guest boots: QEMU ran on without thaw. It is now
/// stopped and the VM removed.
#[test]
fn an_interrupted_boot_leaves_no_half_booted_vm() {
    let env = Env::new();
    let mut child = env
        .command(&["boot", "b", "--memory", "128"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_records(&env, &mut child, &["b".to_owned()]),
        "the boot ended before its guest could be interrupted"
    );
    Sig::Term.send(&child);
    let ended = wait_ended(child, "boot interrupted");
    assert_eq!(ended.code, 143, "{}", ended.stderr);
    assert_eq!(
        ended.stderr.trim_end(),
        "thaw: interrupted: the boot was rolled back, VM b removed"
    );
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
    assert!(qemus(env.path()).is_empty(), "{:?}", qemus(env.path()));
}
