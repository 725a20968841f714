//! The kill tests' harness (chaos.rs, signals.rs): seeded moments to kill or signal a
//! command at (the seed is printed; `THAW_CHAOS_SEED` replays it, `THAW_CHAOS_ROUNDS`
//! scales the rounds), and the invariants every kill must leave:
//!
//! - no half snapshot is listed: every listed snapshot passes the full check (every
//!   file's hash);
//! - `thaw store verify` passes;
//! - no QEMU runs without a record: every QEMU of the home is a VM `thaw ls` lists
//!   as alive (or, with the daemon, one of its pooled processes).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use thaw::snapshot::Snapshot;
use thaw::{Home, SnapshotTag};

use super::{processes_mentioning, Env};

/// Seeded kill moments; reports what was tried.
pub struct Chaos {
    op: &'static str,
    state: u64,
    pub tried: u32,
    pub mid_way: u32,
    /// How long the operation takes undisturbed, last seen: kill moments fall within
    /// it. Updated from every run that was not killed (the load on a shared machine
    /// changes what "within" means from one minute to the next).
    pub window: Duration,
}

impl Chaos {
    pub fn new(op: &'static str) -> Chaos {
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
    pub fn observe(&mut self, took: Duration) {
        self.window = took;
    }

    /// Runs `args` undisturbed (asserting success), as the retry after a kill, and
    /// learns how long the operation takes now.
    pub fn retry(&mut self, env: &Env, args: &[&str]) -> Value {
        let t = Instant::now();
        let v = env.json(args);
        self.observe(t.elapsed());
        v
    }

    /// A moment in `[0, within)`, `within` being how long the operation took
    /// undisturbed (a little less, so that most moments fall inside it).
    pub fn moment(&mut self, within: Duration) -> Duration {
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
    pub fn kill(&mut self, mut cmd: Command) -> bool {
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

    pub fn report(&self) {
        println!(
            "chaos {}: {} kill points tried ({} mid-operation, the rest after it ended), {} survived with nothing lost",
            self.op, self.tried, self.mid_way, self.tried
        );
    }
}

/// SIGKILL after `delay` unless `child` ended first, in which case its output.
pub fn kill_after(mut child: Child, delay: Duration) -> Result<(), std::process::Output> {
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
pub enum Sig {
    Int,
    Term,
}

impl Sig {
    /// SIGINT and SIGTERM in turn.
    pub fn nth(i: u32) -> Sig {
        if i.is_multiple_of(2) {
            Sig::Int
        } else {
            Sig::Term
        }
    }

    pub fn send(self, child: &Child) {
        use rustix::process::{kill_process, Pid, Signal};
        let signal = match self {
            Sig::Int => Signal::INT,
            Sig::Term => Signal::TERM,
        };
        let _ = kill_process(Pid::from_child(child), signal);
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Sig::Int => 130,
            Sig::Term => 143,
        }
    }
}

/// How a signalled command ended.
pub struct Ended {
    pub code: i32,
    pub stderr: String,
}

impl Ended {
    /// Whether the operation finished (undisturbed, or interrupted after its safe
    /// point) rather than rolled back.
    pub fn completed(&self) -> bool {
        self.code == 0 || self.stderr.contains("was completed")
    }
}

/// Waits for `child` (a deadlock guard, not a timing: generous), then its stderr.
pub fn wait_ended(mut child: Child, ctx: &str) -> Ended {
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

/// Before thaw's `main` runs (exec, the dynamic loader) no code of thaw can hold a
/// signal, and one then ends it as it ends any program, before it did anything. thaw
/// holds SIGINT and SIGTERM from its first line until its handlers exist; the signals
/// are sent after this much, so that they reach thaw rather than the loader (a debug
/// build on a loaded host takes a few milliseconds to get there).
const PROCESS_START: Duration = Duration::from_millis(25);

impl Chaos {
    /// Starts `cmd` and sends it `sig` at a random moment of its expected run (unless
    /// it ended first: then it must have succeeded). It must then end with the
    /// signal's exit status and one line saying what was done.
    pub fn interrupt(&mut self, mut cmd: Command, sig: Sig, ctx: &str) -> Ended {
        let delay = PROCESS_START + self.moment(self.window.saturating_sub(PROCESS_START));
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

pub fn rounds(default: u32) -> u32 {
    std::env::var("THAW_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Pids of the home's QEMU processes.
pub fn qemus(home: &Path) -> Vec<(u32, String)> {
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
pub fn assert_nothing_lost(env: &Env, ctx: &str, pool_allowed: bool) {
    // Listed snapshots are whole: every file present with its hash (read through the
    // lazy server for those kept once, in the store).
    let home = Home::new(env.path());
    super::ensure_lazy_server(env);
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
pub fn assert_vm_usable(env: &Env, vm: &str, ctx: &str) {
    match env.state_of(vm).as_str() {
        "running" => {}
        "paused" => {
            env.ok(&["resume", vm]);
        }
        other => panic!("{ctx}: VM {vm} is {other}"),
    }
    assert_eq!(env.sh(vm, "cat /tmp/m"), "marker\n", "{ctx}");
}
