//! `thaw park` and `thaw wake` end to end (real QEMU, s3s-fs): a VM parked on host A
//! (a network namespace) wakes on host B (another one, empty home and guest cache) with
//! its RAM and disk; a background upload killed -9 mid-way is resumed and the bucket
//! then holds the whole snapshot; bad input fails in one line and leaves nothing running.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use common::Env;
use serde_json::Value;

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("iproute2");
    assert!(st.success(), "ip {args:?} failed");
}

/// Namespaces S (the S3 server), A and B; S is 10.78.1.1 to A and 10.78.2.1 to B.
struct Net {
    names: Vec<String>,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let names: Vec<String> = ["s", "a", "b"]
            .iter()
            .map(|n| format!("thawp-{n}-{id}"))
            .collect();
        let net = Net { names };
        for ns in &net.names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let s = &net.names[0];
        for (host, subnet) in [(&net.names[1], 1), (&net.names[2], 2)] {
            let (sv, hv) = (format!("ps{subnet}x{id}"), format!("ph{subnet}x{id}"));
            ip(&[
                "link", "add", &sv, "netns", s, "type", "veth", "peer", "name", &hv, "netns", host,
            ]);
            let addr = |n: u8| format!("10.78.{subnet}.{n}/24");
            ip(&["-n", s, "addr", "add", &addr(1), "dev", &sv]);
            ip(&["-n", host, "addr", "add", &addr(2), "dev", &hv]);
            ip(&["-n", s, "link", "set", &sv, "up"]);
            ip(&["-n", host, "link", "set", &hv, "up"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A host in namespace `ns`: its own home (and, for B, its own empty guest cache).
struct Host {
    ns: String,
    home: tempfile::TempDir,
    cache: Option<tempfile::TempDir>,
    endpoint: String,
}

impl Host {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, common::THAW])
            .args(args)
            .env("THAW_HOME", self.home.path())
            .env("THAW_NO_DAEMON", "1")
            .env("THAW_S3_ENDPOINT", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("THAW_LOG");
        if let Some(cache) = &self.cache {
            c.env("THAW_CACHE", cache.path());
        }
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.command(&a).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "[{}] thaw {args:?}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn sh(&self, vm: &str, script: &str) -> String {
        self.json(&["exec", vm, "--", "/bin/sh", "-c", script])["stdout"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.command(&["stop", "--all"]).output();
        for pid in common::processes_mentioning(self.home.path()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// What the guest has in RAM (/tmp is the initramfs: RAM) and on its disk (read past
/// the page cache).
fn state(sh: impl Fn(&str) -> String) -> (String, String) {
    let ram = sh("cat /tmp/word");
    let disk = sh("echo 3 > /proc/sys/vm/drop_caches; cat /mnt/word");
    (ram.trim().to_owned(), disk.trim().to_owned())
}

/// The guest's clock is within 2 s of the host's (the wake set it).
fn assert_clock_set(date: String) {
    let before = common::host_now();
    let guest: u64 = date.trim().parse().expect("date +%s prints a number");
    assert!(
        guest + 2 >= before && guest <= common::host_now() + 2,
        "guest clock {guest}, host {before}"
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Park on A with --wait: the VM ends, its snapshot (tag: its name) is in the bucket;
/// wake on B, which has an empty home and guest cache: the VM runs under its name with
/// what it had in RAM and on disk, its clock set; its park record is gone.
#[test]
fn park_on_host_a_then_wake_on_host_b_keeps_ram_and_disk() {
    let _guest = Env::new();
    let net = Net::new();
    let server = S3Server::start_on("0.0.0.0", Some(&["ip", "netns", "exec", &net.names[0]]));
    let port = server.endpoint.rsplit(':').next().unwrap().to_owned();
    let host = |i: usize, cache| Host {
        ns: net.names[i].clone(),
        home: tempfile::tempdir().unwrap(),
        cache,
        endpoint: format!("http://10.78.{i}.1:{port}"),
    };
    let a = host(1, None);
    let b = host(2, Some(tempfile::tempdir().unwrap()));
    let disks = tempfile::tempdir().unwrap();
    let base = common::ext4_image(disks.path(), "base.raw");

    a.json(&["boot", "dev", "--profile", "default", "--disk", s(&base)]);
    a.sh(
        "dev",
        "mkdir -p /mnt && mount /dev/vda /mnt && echo on-disk > /mnt/word && sync; \
         echo in-ram > /tmp/word",
    );
    // s3s-fs needs a moment to listen in its namespace.
    let deadline = Instant::now() + Duration::from_secs(20);
    let probe = format!("echo > /dev/tcp/10.78.1.1/{port}");
    while !Command::new("ip")
        .args(["netns", "exec", &a.ns, "bash", "-c", &probe])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "S3 unreachable from A");
        std::thread::sleep(Duration::from_millis(100));
    }
    let parked = a.json(&["park", "dev", "--remote", "s3://thaw/fleet", "--wait"]);
    println!("park: {parked}");
    assert_eq!(parked["snapshot"]["tag"], "dev", "{parked}");
    assert_eq!(parked["park"]["state"], "parked", "{parked}");
    assert!(parked["park"]["upload"]["chunks_moved"].as_u64().unwrap() > 0);
    assert!(parked["snapshot"]["pause_ms"].as_f64().unwrap() > 0.0);
    // The VM ended; A lists it as parked, uploaded.
    assert!(common::processes_mentioning(a.home.path()).is_empty());
    let ls = a.json(&["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(
        (&ls[0]["name"], &ls[0]["state"], &ls[0]["park"]["state"]),
        (&"dev".into(), &"parked".into(), &"parked".into()),
        "{ls}"
    );
    let snaps = a.json(&["snapshots"]);
    assert_eq!(snaps[0]["parked"]["remote"], "s3://thaw/fleet", "{snaps}");

    let woke = b.json(&["wake", "dev", "--from", "s3://thaw/fleet"]);
    assert_eq!(woke[0]["name"], "dev", "{woke}");
    assert_eq!(
        state(|c| b.sh("dev", c)),
        ("in-ram".into(), "on-disk".into())
    );
    assert_clock_set(b.sh("dev", "date +%s"));
    let ls = b.json(&["ls"]);
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    assert_eq!(
        (&ls[0]["state"], ls[0].get("park")),
        (&"running".into(), None)
    );
    assert!(
        !b.cache.as_ref().unwrap().path().join("guests").exists(),
        "B has no guest files of its own"
    );
    drop((a, b, server));
    drop(net);
}

/// The park record as the worker wrote it (no liveness computed).
fn record(env: &Env) -> Value {
    let bytes = std::fs::read(env.path().join("parked/dev.json")).unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Waits (guard only) until `done` holds of the parked VM's record.
fn wait_for(env: &Env, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = record(env);
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "{what}: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A background upload killed -9 half-way leaves the record `pushing` and the bucket
/// without the snapshot (its record goes up last: a wake elsewhere finds nothing);
/// the next `thaw ls` sees the dead worker (its lock is free) and starts another,
/// which sends only what is missing; then a wake in an empty home has the VM's RAM.
#[test]
fn a_park_upload_killed_mid_way_is_resumed_and_completes_the_bucket() {
    let server = S3Server::start();
    let env = Env::new().with_env("THAW_NO_DAEMON", "1");
    let env = server.env().iter().fold(env, |e, (k, v)| e.with_env(k, v));
    env.boot("dev", &["--memory", "512"]);
    // Incompressible RAM, so that the upload takes a while.
    let sum = env.sh(
        "dev",
        "dd if=/dev/urandom of=/tmp/big bs=1M count=160 2>/dev/null; md5sum < /tmp/big",
    );
    let parked = env.json(&["park", "dev", "--remote", "s3://thaw/resume"]);
    assert_eq!(parked["park"]["state"], "pushing", "{parked}");
    let pid = parked["park"]["worker_pid"].as_u64().unwrap();

    let mid = wait_for(&env, "the upload under way", |r| {
        r["state"] == "pushing" && r["bytes_done"].as_u64().unwrap_or(0) > 0
    });
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "the worker {pid} was gone already: {mid}");
    let killed_at = record(&env);
    assert_eq!(killed_at["state"], "pushing", "{killed_at}");
    assert!(
        killed_at["bytes_done"].as_u64() < killed_at["bytes_total"].as_u64(),
        "killed mid-way: {killed_at}"
    );
    // Not in the bucket yet: a wake elsewhere finds nothing.
    let other = Env::new();
    let other = server
        .env()
        .iter()
        .fold(other, |e, (k, v)| e.with_env(k, v));
    other
        .run(&["wake", "dev", "--from", "s3://thaw/resume"])
        .fails_with("nothing named dev is parked here or at s3://thaw/resume");

    // thaw ls notices the dead worker and starts another.
    let ls = env.json(&["ls"]);
    assert_eq!(ls[0]["park"]["state"], "pushing", "{ls}");
    let done = wait_for(&env, "the resumed upload", |r| r["state"] == "parked");
    assert!(
        done["upload"]["chunks_present"].as_u64().unwrap() > 0,
        "the resumed upload found what the killed one sent: {done}"
    );
    assert!(
        std::fs::read_to_string(env.path().join("parked/dev.log"))
            .unwrap()
            .trim()
            .is_empty(),
        "the worker's log"
    );

    let woke = other.json(&["wake", "dev", "--from", "s3://thaw/resume"]);
    assert_eq!(woke[0]["name"], "dev");
    assert_eq!(other.sh("dev", "md5sum < /tmp/big"), sum);
    other.ok(&["store", "verify"]);
}

/// Without a remote the snapshot stays here; a wake here restores it and clears the
/// record. Parking the woken VM again (its tag is taken by the snapshot it runs on) is
/// refused before the VM is touched.
#[test]
fn park_without_a_remote_keeps_it_here_and_wake_brings_it_back() {
    let env = Env::new().with_env("THAW_NO_DAEMON", "1");
    env.boot("dev", &[]);
    env.sh("dev", "echo kept > /tmp/word");
    let parked = env.json(&["park", "dev"]);
    assert_eq!(parked["park"]["state"], "parked", "{parked}");
    assert!(parked["park"]["remote"].is_null());
    assert!(env.processes().is_empty(), "the VM ended");
    let woke = env.json(&["wake", "dev"]);
    assert_eq!(woke[0]["name"], "dev");
    assert_eq!(env.sh("dev", "cat /tmp/word"), "kept\n");
    assert_clock_set(env.sh("dev", "date +%s"));
    assert!(!env.path().join("parked/dev.json").exists());
    // A woken VM's tag is taken by its own snapshot: refused, and it runs on.
    env.run(&["park", "dev"])
        .fails_with("a snapshot tagged dev exists already");
    assert_eq!(env.state_of("dev"), "running");
    env.run(&["wake", "dev"])
        .fails_with("a VM named dev already exists");
}

/// Bad input: one line, non-zero exit, nothing started, nothing recorded.
#[test]
fn bad_park_and_wake_input_fails_in_one_line_and_leaves_nothing() {
    let env = Env::new()
        .with_env("THAW_NO_DAEMON", "1")
        .with_env("THAW_S3_ENDPOINT", "http://127.0.0.1:9")
        .with_env("AWS_ACCESS_KEY_ID", "k")
        .with_env("AWS_SECRET_ACCESS_KEY", "s")
        .with_env("AWS_REGION", "us-east-1")
        .with_env("THAW_S3_TIMEOUT", "2")
        .with_env("THAW_S3_CONNECT_TIMEOUT", "2");
    env.run(&["park", "nope", "--remote", "s3://thaw/x"])
        .fails_with("no VM named nope");
    env.run(&["wake", "nope"])
        .fails_with("nothing named nope is parked here, and no --from remote was given");
    env.run(&["wake", "nope", "--from", "http://bucket/x"])
        .fails_with("does not start with s3://");
    env.run(&["park", "nope", "--resume"])
        .fails_with("nothing named nope is parked here");
    let r = env.run(&["park", "Bad/Name"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = env.run(&["--json", "wake", "nope"]);
    assert_ne!(r.code, 0);
    assert!(r.json()["error"].as_str().unwrap().contains("nope"));
    assert!(env.processes().is_empty());
    // A bad URL is refused before the VM is touched: it runs on, nothing parked.
    env.boot("dev", &[]);
    env.run(&["park", "dev", "--remote", "ftp://x/y"])
        .fails_with("does not start with s3://");
    assert_eq!(env.state_of("dev"), "running");
    assert!(!env.path().join("parked/dev.json").exists());
    assert!(!env.listed("dev"));

    // A bucket that cannot be reached: the VM is parked here, the worker's upload fails
    // and says why; it is not retried by itself, `--resume --wait` retries it and fails
    // in one line; the snapshot stays, safe, here.
    let parked = env.json(&["park", "dev", "--remote", "s3://thaw/x"]);
    assert_eq!(parked["park"]["state"], "pushing", "{parked}");
    let failed = wait_for(&env, "the failed upload", |r| r["state"] == "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{failed}"
    );
    let ls = env.json(&["ls"]);
    assert_eq!(ls[0]["park"]["state"], "failed", "{ls}");
    assert!(!ls[0]["park"]["worker_alive"].as_bool().unwrap(), "{ls}");
    env.run(&["park", "dev", "--resume", "--wait"])
        .fails_with("127.0.0.1:9");
    assert_eq!(record(&env)["state"], "failed");
    assert!(env.processes().is_empty(), "the VM ended");
    assert!(env.listed_locally("dev"));
}

/// With `-H`/`THAW_HOST` naming a daemon, park and wake go to it (its S3 settings): the
/// upload waited for, then the VM woken by the daemon from its own copy; `--resume`
/// is refused in one line (it runs where the VM was parked).
#[test]
fn park_and_wake_through_a_named_daemon() {
    let server = S3Server::start();
    let env = Env::new();
    let env = server.env().iter().fold(env, |e, (k, v)| e.with_env(k, v));
    let mut daemon = env
        .command(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = env.path().join("thawd.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "thawd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = env.with_env("THAW_HOST", &format!("unix://{}", sock.display()));
    env.boot("svc", &[]);
    env.sh("svc", "echo via-daemon > /tmp/word");
    let parked = env.json(&["park", "svc", "--remote", "s3://thaw/d", "--wait"]);
    assert_eq!(parked["park"]["state"], "parked", "{parked}");
    assert_eq!(parked["park"]["upload"]["chunks_present"], 0, "{parked}");
    assert!(server.objects("d").exists(), "the daemon uploaded");
    env.run(&["park", "svc", "--resume"])
        .fails_with("runs on the host where the VM was parked");
    let woke = env.json(&["wake", "svc"]);
    assert_eq!(woke[0]["name"], "svc", "{woke}");
    assert_eq!(env.sh("svc", "cat /tmp/word"), "via-daemon\n");
    drop(env);
    let _ = daemon.kill();
    let _ = daemon.wait();
}
