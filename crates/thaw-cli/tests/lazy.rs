//! Lazy restore end to end: a snapshot restored straight from the store or from a
//! bucket (s3s-fs), its chunks served on first touch by the home's lazy server (FUSE),
//! each checked against its BLAKE3; and the faults: a chunk replaced in the bucket by
//! other valid content, the server killed under a running clone, the remote
//! unreachable, the background fill killed and completed by a later restore.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::s3::S3Server;
use common::{Env, Run};
use serde_json::Value;

const REMOTE: &str = "s3://thaw/lazy";

fn env_for(server: &S3Server, endpoint: Option<&str>, fresh_cache: Option<&Path>) -> Env {
    let mut env = Env::new();
    for (k, v) in server.env() {
        env = env.with_env(&k, &v);
    }
    if let Some(e) = endpoint {
        env = env.with_env("THAW_S3_ENDPOINT", e);
    }
    if let Some(c) = fresh_cache {
        env = env.with_env("THAW_CACHE", c.to_str().unwrap());
    }
    env
}

/// Host A: the default guest with a disk; "ram-state" in /tmp (RAM), "disk-state" on
/// the disk; snapshot `base`, pushed to [`REMOTE`]. Returns the disk's directory.
fn source(a: &Env) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = common::ext4_image(dir.path(), "base.raw");
    a.boot(
        "vm",
        &["--profile", "default", "--disk", base.to_str().unwrap()],
    );
    a.sh(
        "vm",
        "mkdir -p /mnt && mount /dev/vda /mnt && echo disk-state > /mnt/marker && sync \
         && echo ram-state > /tmp/marker",
    );
    a.json(&["snapshot", "vm", "base"]);
    a.ok(&["stop", "vm"]);
    a.json(&["push", "base", REMOTE]);
    dir
}

/// The clone has the source's RAM and disk state (the disk read past the page cache).
fn assert_source_state(run: impl Fn(&str) -> String, ctx: &str) {
    assert_eq!(run("cat /tmp/marker").trim(), "ram-state", "{ctx}: RAM");
    let disk = run("echo 3 > /proc/sys/vm/drop_caches; cat /mnt/marker");
    assert_eq!(disk.trim(), "disk-state", "{ctx}: disk");
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pid of the lazy server of `home` in this mount namespace.
fn server_pid(home: &Path) -> u32 {
    let ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let ns: String = ns
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    std::fs::read_to_string(home.join(format!("lazy/ns-{ns}/server.pid")))
        .expect("the lazy server runs")
        .trim()
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty()
        && !stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
}

fn kill9(pid: u32) {
    let st = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(st.unwrap().success());
}

fn one_line(r: &Run) -> String {
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", r.stderr);
    lines[0].to_owned()
}

/// Nothing of a failed restore is left: no VM, no QEMU.
fn assert_nothing_left(env: &Env, ctx: &str) {
    assert_eq!(env.json(&["ls"]), serde_json::json!([]), "{ctx}: VMs left");
    assert!(env.processes().is_empty(), "{ctx}: QEMU left running");
}

/// A network namespace linked to this one by a veth pair (10.79.K.1 here, .2 there).
struct Ns {
    name: String,
    here: String,
    /// This side's address, which the namespace reaches it at.
    host_address: String,
}

impl Ns {
    fn new() -> Ns {
        let id = std::process::id() % 100_000;
        let k = id % 200 + 20;
        let name = format!("thaw-lazy-{id}");
        let (here, there) = (format!("tlh{id}"), format!("tlt{id}"));
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = Ns {
            name,
            here,
            host_address: format!("10.79.{k}.1"),
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", &ns.here, "type", "veth", "peer", "name", &there, "netns", &ns.name,
        ]);
        ip(&["addr", "add", &format!("10.79.{k}.1/24"), "dev", &ns.here]);
        ip(&["link", "set", &ns.here, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("10.79.{k}.2/24"),
            "dev",
            &there,
        ]);
        ip(&["-n", &ns.name, "link", "set", &there, "up"]);
        ns
    }

    /// `thaw args` as `env` would run it, inside the namespace (with its daemon, if
    /// one serves the home).
    fn command(&self, env: &Env, args: &[&str]) -> Command {
        let inner = env.command(args);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(inner.get_program());
        c.args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.env_remove("THAW_NO_DAEMON");
        c
    }

    fn run(&self, env: &Env, args: &[&str]) -> Run {
        Run::of(self.command(env, args))
    }

    /// thawd for `env`'s home, inside the namespace: the host's daemon, whose lazy
    /// server and QEMUs share its mount namespace (each `ip netns exec` makes one).
    fn serve(&self, env: &Env) -> std::process::Child {
        let child = self
            .command(env, &["serve"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let sock = env.path().join("thawd.sock");
        wait_for("thawd to listen", Duration::from_secs(30), || sock.exists());
        child
    }

    fn json(&self, env: &Env, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let r = self.run(env, &a);
        assert_eq!(r.code, 0, "[{}] thaw {args:?}: {}", self.name, r.stderr);
        r.json()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.here])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn has_record(home: &Path, tag: &str) -> bool {
    home.join(format!("store/manifests/{tag}.json")).is_file()
}

#[test]
fn a_cold_host_restores_straight_from_the_bucket_and_fills_the_rest() {
    let server = S3Server::start_on("0.0.0.0", None);
    let a = env_for(&server, None, None);
    let _disk = source(&a);
    // Host B: its own network namespace, an empty home and an empty guest cache.
    let ns = Ns::new();
    let port = server.endpoint.rsplit(':').next().unwrap().to_owned();
    let endpoint = format!("http://{}:{port}", ns.host_address);
    let cache = tempfile::tempdir().unwrap();
    let b = env_for(&server, Some(&endpoint), Some(cache.path()));
    // Through B's daemon (the API's `from`), as an orchestrator would.
    let mut daemon = ns.serve(&b);
    let report = ns.json(&b, &["restore", "base", "--from", REMOTE, "--name", "c"]);
    let clone = &report[0];
    let (fetched, stored) = (
        clone["fetched_bytes"].as_u64().unwrap(),
        clone["stored_bytes"].as_u64().unwrap(),
    );
    println!("fetched {fetched} of {stored} stored bytes before ready: {clone}");
    assert!(fetched > 0, "something was fetched: {clone}");
    assert!(
        fetched < stored,
        "not everything was fetched before ready: {clone}"
    );
    let sh = |script: &str| {
        ns.json(&b, &["exec", "c", "--", "/bin/sh", "-c", script])["stdout"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_source_state(sh, "the clone on B");
    // The rest arrives in the background; then the snapshot is wholly in B's store.
    wait_for("the background fill", Duration::from_secs(180), || {
        has_record(b.path(), "base")
    });
    assert!(!b.path().join("lazy/pending/base.json").exists());
    let verified = b.json(&["store", "verify"]);
    assert_eq!(verified["damaged"], serde_json::json!([]), "{verified}");
    // Kept once: the snapshot's directory holds links, not a second copy.
    let dir_bytes = du(&b.path().join("snapshots/base"));
    assert!(
        dir_bytes < 1 << 20,
        "the snapshot directory holds {dir_bytes} bytes"
    );
    // With the bucket gone, B restores it again from its own store.
    ns.json(&b, &["stop", "c"]);
    drop(server);
    ns.json(&b, &["restore", "base", "--name", "d"]);
    let sh = |script: &str| {
        ns.json(&b, &["exec", "d", "--", "/bin/sh", "-c", script])["stdout"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_source_state(sh, "a restore from B's own store");
    ns.json(&b, &["stop", "--all"]);
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// `du ARGS path`'s byte count (links not followed).
fn du_with(path: &Path, args: &[&str]) -> u64 {
    let out = Command::new("du").args(args).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Bytes under `dir`, apparent size (not following links).
fn du(dir: &Path) -> u64 {
    du_with(dir, &["-sb", "--apparent-size"])
}

/// The bucket's record of `tag`.
fn bucket_record(server: &S3Server, tag: &str) -> Value {
    let path = server.objects("lazy").join(format!("manifests/{tag}.json"));
    let record: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    match record.get("record") {
        Some(inner) => inner.clone(),
        None => record,
    }
}

/// The chunk ids of file `rel` in the bucket's record of `tag`.
fn bucket_chunks(server: &S3Server, tag: &str, rel: &str) -> Vec<String> {
    let record = bucket_record(server, tag);
    record["files"][rel]["chunks"]
        .as_array()
        .unwrap_or_else(|| panic!("no file {rel} in the record: {record}"))
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect()
}

fn chunk_object(server: &S3Server, id: &str) -> PathBuf {
    server.objects("lazy").join("chunks").join(id)
}

#[test]
fn a_chunk_replaced_in_the_bucket_fails_the_clone_naming_it() {
    let server = S3Server::start();
    let a = env_for(&server, None, None);
    let _disk = source(&a);
    // Every chunk of the RAM image and device state becomes another valid chunk: a
    // zstd frame that decompresses fine, to the wrong bytes.
    let memory = bucket_chunks(&server, "base", "memory");
    let kernel = bucket_chunks(&server, "base", "guest/kernel");
    let other = kernel.iter().find(|k| !memory.contains(k)).unwrap();
    let valid_other = std::fs::read(chunk_object(&server, other)).unwrap();
    for id in &memory {
        std::fs::write(chunk_object(&server, id), &valid_other).unwrap();
    }
    let cache = tempfile::tempdir().unwrap();
    let b = env_for(&server, None, Some(cache.path()));
    let r = b.run(&["restore", "base", "--from", REMOTE, "--name", "c"]);
    assert_ne!(r.code, 0, "the restore must fail: {}", r.stdout);
    let line = one_line(&r);
    assert!(
        memory.iter().any(|id| line.contains(id.as_str())) && line.contains("damaged"),
        "the line names the replaced chunk: {line}"
    );
    assert_nothing_left(&b, "a damaged chunk");
    // Nothing wrong was kept: the store holds only verified chunks.
    let verified = b.json(&["store", "verify"]);
    assert_eq!(verified["damaged"], serde_json::json!([]), "{verified}");
}

#[test]
fn the_lazy_server_killed_under_a_clone_is_reported_and_a_new_one_serves() {
    let env = Env::new();
    env.boot("vm", &[]);
    env.sh("vm", "echo ram-state > /tmp/marker");
    env.json(&["snapshot", "vm", "base"]);
    env.ok(&["stop", "vm"]);
    // Kept once: only in the store; restores are served lazily from it.
    env.ok(&["store", "evict", "base"]);
    let c = &env.json(&["restore", "base", "--name", "c"])[0];
    assert!(c["fetched_bytes"].is_u64(), "a lazy restore: {c}");
    let qemu = c["pid"].as_u64().unwrap() as u32;
    assert_eq!(env.sh("c", "cat /tmp/marker").trim(), "ram-state");
    let server = server_pid(env.path());
    kill9(server);
    let listed = env.json(&["ls"]);
    let vm = &listed[0];
    assert_eq!(vm["state"], "dead", "{listed}");
    let reason = vm["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("server") && reason.contains(&server.to_string()),
        "{listed}"
    );
    wait_for("the clone's QEMU to end", Duration::from_secs(10), || {
        !alive(qemu)
    });
    env.ok(&["stop", "c"]);
    // A new server serves the next restore.
    env.json(&["restore", "base", "--name", "d"]);
    assert_ne!(server_pid(env.path()), server);
    assert_eq!(env.sh("d", "cat /tmp/marker").trim(), "ram-state");
    let verified = env.json(&["store", "verify"]);
    assert_eq!(verified["damaged"], serde_json::json!([]), "{verified}");
}

#[test]
fn an_unreachable_or_incomplete_remote_fails_in_one_line() {
    let server = S3Server::start();
    let a = env_for(&server, None, None);
    let _disk = source(&a);
    // Refused connections (nothing listens there).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cache = tempfile::tempdir().unwrap();
    let refused = env_for(
        &server,
        Some(&format!("http://127.0.0.1:{port}")),
        Some(cache.path()),
    );
    let r = refused.run(&["restore", "base", "--from", REMOTE]);
    assert_ne!(r.code, 0);
    assert!(one_line(&r).contains("cannot reach"), "{}", r.stderr);
    assert_nothing_left(&refused, "refused");
    assert!(refused.snapshot_dirs().is_empty());
    // A server that accepts connections and never answers: the timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let quiet = env_for(&server, Some(&format!("http://{addr}")), Some(cache.path()))
        .with_env("THAW_S3_TIMEOUT", "2");
    let t = Instant::now();
    let r = quiet.run(&["restore", "base", "--from", REMOTE]);
    assert_ne!(r.code, 0);
    assert!(
        one_line(&r).contains("did not answer within 2 s"),
        "{}",
        r.stderr
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "bounded by the timeout"
    );
    assert_nothing_left(&quiet, "silent");
    // The record is there but the chunks are not: the clone cannot load, and the line
    // names a chunk.
    for e in std::fs::read_dir(server.objects("lazy").join("chunks")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let b = env_for(&server, None, Some(cache.path()));
    let r = b.run(&["restore", "base", "--from", REMOTE, "--name", "c"]);
    assert_ne!(r.code, 0);
    let line = one_line(&r);
    assert!(
        line.contains("chunk ") && line.contains("is not on"),
        "{line}"
    );
    assert_nothing_left(&b, "chunks missing");
}

#[test]
fn a_fill_killed_midway_is_completed_by_the_next_restore() {
    let server = S3Server::start();
    let a = env_for(&server, None, None);
    let _disk = source(&a);
    let cache = tempfile::tempdir().unwrap();
    let b = env_for(&server, None, Some(cache.path()));
    b.json(&["restore", "base", "--from", REMOTE, "--name", "c"]);
    // The fill runs after the clone is ready; kill -9 the server doing it.
    assert!(
        b.path().join("lazy/pending/base.json").exists(),
        "the fill has not finished yet"
    );
    kill9(server_pid(b.path()));
    assert!(!has_record(b.path(), "base"), "killed before it finished");
    let listed = b.json(&["ls"]);
    assert_eq!(listed[0]["state"], "dead", "{listed}");
    b.ok(&["stop", "c"]);
    // The next restore restarts the server, which fetches the rest.
    b.json(&["restore", "base", "--from", REMOTE, "--name", "d"]);
    wait_for("the fill", Duration::from_secs(180), || {
        has_record(b.path(), "base")
    });
    let verified = b.json(&["store", "verify"]);
    assert_eq!(verified["damaged"], serde_json::json!([]), "{verified}");
    assert_source_state(|s| b.sh("d", s), "after the fill");
}

/// What the lazy servers of the home at `home` logged.
fn server_logs(home: &Path) -> String {
    std::fs::read_dir(home.join("lazy"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|ns| std::fs::read_to_string(ns.path().join("server.log")).ok())
        .collect()
}

/// Host A's [`source`], then its first lazy restore, which records the working set,
/// and a push again, which packs it. Returns A, the disk's directory and the bucket's
/// record.
fn source_with_working_set(server: &S3Server) -> (Env, tempfile::TempDir, Value) {
    let a = env_for(server, None, None);
    let disk = source(&a);
    a.json(&["store", "evict", "base"]);
    a.json(&["restore", "base", "--name", "w"]);
    a.ok(&["stop", "w"]);
    a.json(&["push", "base", REMOTE]);
    let record = bucket_record(server, "base");
    (a, disk, record)
}

/// The working set recorded by a first lazy restore is pushed as one object too, and a
/// cold host fetches it with one request. A pack that is damaged or gone costs only
/// time: each of its chunks is checked, and what it cannot give is fetched alone.
#[test]
fn the_working_set_travels_as_one_pack_and_a_bad_pack_only_costs_time() {
    let server = S3Server::start();
    let (_a, _disk, record) = source_with_working_set(&server);
    let pack = &record["working_set_pack"];
    let name = pack["name"]
        .as_str()
        .unwrap_or_else(|| panic!("the pushed record names no pack: {record}"));
    let object = server.objects("lazy").join("packs").join(name);
    let total: u64 = pack["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["len"].as_u64().unwrap())
        .sum();
    assert_eq!(std::fs::metadata(&object).unwrap().len(), total);
    let good = std::fs::read(&object).unwrap();

    let cold = |ctx: &str| -> String {
        let cache = tempfile::tempdir().unwrap();
        let b = env_for(&server, None, Some(cache.path())).with_env("THAW_LOG", "thaw=debug");
        let report = b.json(&["restore", "base", "--from", REMOTE, "--name", "c"]);
        assert!(
            report[0]["fetched_bytes"].as_u64().unwrap() > 0,
            "{ctx}: {report}"
        );
        assert_source_state(|script| b.sh("c", script), ctx);
        b.ok(&["stop", "--all"]);
        server_logs(b.path())
    };
    let log = cold("with the pack");
    assert!(
        log.contains("fetched the working set's pack"),
        "the pack was not used: {log}"
    );
    assert!(!log.contains("WARN"), "{log}");

    // A byte flipped in the middle of the pack: its chunk is fetched alone.
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x01;
    std::fs::write(&object, &flipped).unwrap();
    let log = cold("with a damaged pack");
    assert!(log.contains("damaged: fetching it alone"), "{log}");

    // The pack gone: every chunk of it is fetched alone.
    std::fs::remove_file(&object).unwrap();
    let log = cold("without the pack");
    assert!(log.contains("the working set's pack failed"), "{log}");
    assert!(log.contains("not in the bucket"), "{log}");
}

/// A lazy restore prefetches its working set, but not the chunks the home's server
/// already served: the kernel keeps them cached, and loading them again would only
/// take the cores the restoring QEMU needs.
#[test]
fn a_later_lazy_restore_prefetches_only_what_was_not_read_before() {
    let env = Env::new().with_env("THAW_LOG", "thaw=debug");
    env.boot("vm", &["--profile", "default"]);
    env.sh("vm", "echo ram-state > /tmp/marker");
    env.json(&["snapshot", "vm", "base"]);
    env.ok(&["stop", "vm"]);
    env.json(&["store", "evict", "base"]);
    // The first lazy restore reads what it needs and records that as the working set.
    env.json(&["restore", "base", "--name", "first"]);
    env.ok(&["stop", "first"]);
    let before = server_logs(env.path());
    assert!(
        !before.contains("prefetching the working set"),
        "a snapshot without a working set was prefetched: {before}"
    );
    // The second prefetches that set, all of which the server already served.
    env.json(&["restore", "base", "--name", "second"]);
    assert_eq!(env.sh("second", "cat /tmp/marker").trim(), "ram-state");
    let log = server_logs(env.path());
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("prefetching the working set"))
        .collect();
    assert!(
        !lines.is_empty(),
        "the working set was not prefetched: {log}"
    );
    let asked: u64 = lines
        .iter()
        .map(|l| {
            let field = l.split("asked=").nth(1).unwrap_or_else(|| panic!("{l}"));
            field
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(asked > 0, "{log}");
    for l in &lines {
        assert!(l.contains("loading=0"), "loads what was already read: {l}");
    }
    // Zero chunks are holes to SEEK_HOLE/SEEK_DATA (what the check's state hash skips
    // instead of reading zeros through the server).
    let memory = env.path().join("snapshots/base/memory");
    let seek = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             hole = os.lseek(fd, 0, os.SEEK_HOLE)\n\
             print(hole, os.lseek(fd, hole, os.SEEK_DATA), os.fstat(fd).st_size)",
        )
        .arg(&memory)
        .output()
        .expect("run python3");
    assert!(seek.status.success(), "{seek:?}");
    let figures: Vec<u64> = String::from_utf8_lossy(&seek.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (hole, data, size) = (figures[0], figures[1], figures[2]);
    assert!(
        0 < hole && hole < data && data < size,
        "the served RAM image shows no hole: hole {hole}, next data {data}, size {size}"
    );
    env.ok(&["stop", "second"]);
}

/// The `VmFlags` of QEMU `pid`'s mappings of files under `under`.
fn mapping_flags(pid: u32, under: &Path) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let under = under.to_string_lossy().into_owned();
    let mut flags = Vec::new();
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| p.starts_with(&under));
        } else if let (true, Some(f)) = (inside, line.strip_prefix("VmFlags:")) {
            flags.push(f.trim().to_owned());
        }
    }
    flags
}

#[test]
fn a_lazily_served_clone_maps_its_ram_without_huge_page_advice() {
    // QEMU advises huge pages on guest RAM; on a lazily served file that makes the
    // kernel read 4 MiB around every first touch (64 chunks fetched for one page).
    let env = Env::new();
    env.boot("vm", &["--profile", "default"]);
    // Pinned, for the plain restore first.
    env.json(&["snapshot", "vm", "base", "--pin"]);
    env.ok(&["stop", "vm"]);
    // A plain restore keeps the advice (harmless on a local file): it shows as "hg".
    let plain = &env.json(&["restore", "base", "--name", "plain"])[0];
    let pid = plain["pid"].as_u64().unwrap() as u32;
    let flags = mapping_flags(pid, &env.path().join("snapshots/base"));
    assert!(
        !flags.is_empty(),
        "no mapping of the snapshot's RAM in QEMU {pid}"
    );
    assert!(
        flags.iter().any(|f| f.split(' ').any(|x| x == "hg")),
        "a plain restore's RAM is not advised huge pages: {flags:?}"
    );
    env.ok(&["stop", "plain"]);
    env.json(&["store", "evict", "base"]);
    let lazy = &env.json(&["restore", "base", "--name", "lazy"])[0];
    let pid = lazy["pid"].as_u64().unwrap() as u32;
    let flags = mapping_flags(pid, &env.path().join("lazy/mnt"));
    assert!(
        !flags.is_empty(),
        "no mapping of the served RAM in QEMU {pid}"
    );
    for f in &flags {
        assert!(
            !f.split(' ').any(|x| x == "hg"),
            "the served RAM is advised huge pages: {f}"
        );
    }
    // The clone runs as any other.
    assert_eq!(env.sh("lazy", "echo up").trim(), "up");
    env.ok(&["stop", "lazy"]);
}

/// Pages of `path` (a served file) in the kernel's page cache (mincore of a mapping,
/// which faults nothing in).
fn resident_pages(path: &Path) -> u64 {
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import ctypes, os, sys\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             libc.mmap.restype = ctypes.c_void_p\n\
             libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             size = os.fstat(fd).st_size\n\
             addr = libc.mmap(None, size, 1, 1, fd, 0)\n\
             assert addr not in (None, ctypes.c_void_p(-1).value), 'mmap failed'\n\
             vec = (ctypes.c_ubyte * ((size + 4095) // 4096))()\n\
             assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0, 'mincore failed'\n\
             print(sum(v & 1 for v in vec))",
        )
        .arg(path)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A cold host puts the prefetched working set into the kernel's page cache: the
/// clone's faults on it are then served there, not each by a request to the server.
/// Measured with the clone paused (its guest touches nothing), against the same with
/// `THAW_LAZY_STORE=off`.
#[test]
fn a_cold_host_has_the_working_set_in_the_page_cache_before_the_guest_runs() {
    let server = S3Server::start();
    let (_a, _disk, record) = source_with_working_set(&server);
    let set = record["working_set"]["memory"]
        .as_array()
        .unwrap_or_else(|| panic!("no working set of the RAM image: {record}"))
        .len() as u64;
    // Most of the set is RAM the paused guest has not touched: 16 pages a chunk.
    let expected = set * 16 * 3 / 4;
    // Returns the pages cached and the chunks the server still holds in memory.
    let cold = |store: &str| -> (u64, u64) {
        let cache = tempfile::tempdir().unwrap();
        let b = env_for(&server, None, Some(cache.path()))
            .with_env("THAW_LOG", "thaw=debug")
            .with_env("THAW_LAZY_STORE", store);
        b.json(&[
            "restore", "base", "--from", REMOTE, "--name", "c", "--paused",
        ]);
        let memory = b.path().join("snapshots/base/memory");
        let deadline = Instant::now() + Duration::from_secs(30);
        // Until the pack has arrived and been handed out (then a little longer).
        while !server_logs(b.path()).contains("fetched the working set's pack") {
            assert!(Instant::now() < deadline, "the pack never arrived");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut pages = resident_pages(&memory);
        while pages < expected && Instant::now() < deadline - Duration::from_secs(25) {
            std::thread::sleep(Duration::from_millis(100));
            pages = resident_pages(&memory);
        }
        // A prefetched chunk the kernel has is let go of: the server holds none of
        // the set once it is cached (without it, it holds each until read).
        let home = thaw::home::Home::new(b.path());
        let held = || {
            thaw::lazy::client::request(&home, &thaw::lazy::client::Request::Hello)
                .expect("the lazy server answers")
                .held_chunks
        };
        let mut chunks = held();
        while store == "on" && chunks > set / 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            chunks = held();
        }
        b.ok(&["stop", "--all"]);
        (pages, chunks)
    };
    let (off, held_off) = cold("off");
    assert!(
        off < expected,
        "without it, {off} pages were cached already (set: {set} chunks)"
    );
    assert!(
        held_off >= set / 2,
        "without it, the server held {held_off} chunks of a {set}-chunk set"
    );
    let (on, held_on) = cold("on");
    eprintln!(
        "pages cached: {off} without, {on} with; chunks held: {held_off} without, {held_on} \
         with (set: {set} chunks)"
    );
    assert!(
        on >= expected,
        "{on} pages of the RAM image cached, expected {expected} (set: {set} chunks)"
    );
    assert!(
        held_on <= set / 10,
        "the server still holds {held_on} chunks of a {set}-chunk set it put in the page cache"
    );
}

/// Bytes allocated under `path` (`du -sb`, links not followed).
fn allocated(path: &Path) -> u64 {
    du_with(path, &["-sb"])
}

/// A snapshot is kept once, in the store: its RAM image is a link to the lazy server's
/// file, not a second copy; `--pin` keeps the plain file too. Both restore the
/// source's RAM, the kept-once one also once its lazy server has gone idle.
#[test]
fn a_snapshot_is_kept_once_in_the_store_unless_pinned() {
    let env = Env::new();
    env.boot("vm", &["--profile", "default"]);
    env.sh("vm", "echo ram-state > /tmp/marker");
    let once = env.json(&["snapshot", "vm", "once"]);
    assert_eq!(once["pinned"], false, "{once}");
    let store_bytes = once["store_bytes"].as_u64().unwrap();
    assert!(store_bytes > 1 << 20, "{once}");
    let snaps = env.path().join("snapshots");
    let memory = snaps.join("once/memory");
    let target = std::fs::read_link(&memory).expect("the RAM image of `once` is a link");
    assert!(
        target.starts_with(env.path().join("lazy/mnt")),
        "{}",
        target.display()
    );
    // The snapshot on disk, beside its store bytes (guest files are shared links).
    let own = allocated(&snaps.join("once"));
    let ratio = (own + store_bytes) as f64 / store_bytes as f64;
    println!("kept once: {own} bytes in its directory, {store_bytes} in the store: {ratio:.3}x");
    assert!(ratio <= 1.05, "{ratio:.3}x its store bytes");

    let pinned = env.json(&["snapshot", "vm", "pinned", "--pin"]);
    assert_eq!(pinned["pinned"], true, "{pinned}");
    let plain = std::fs::symlink_metadata(snaps.join("pinned/memory")).unwrap();
    assert!(plain.is_file(), "the pinned RAM image is a plain file");
    let own_pinned = allocated(&snaps.join("pinned"));
    println!("pinned: {own_pinned} bytes in its directory");
    assert!(own_pinned > store_bytes / 2, "{own_pinned}");
    env.sh("vm", "echo changed > /tmp/marker");

    // The listing counts the plain files only.
    let listed = env.json(&["snapshots"]);
    let bytes_of = |tag: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["tag"] == tag)
            .unwrap_or_else(|| panic!("{tag} not listed: {listed}"))["disk_bytes"]
            .as_u64()
            .unwrap()
    };
    assert!(
        bytes_of("pinned") > bytes_of("once") + store_bytes / 2,
        "{listed}"
    );

    for tag in ["once", "pinned"] {
        let c = env.json(&["restore", tag, "--name", &format!("c-{tag}")]);
        let name = c[0]["name"].as_str().unwrap().to_owned();
        assert_eq!(
            env.sh(&name, "cat /tmp/marker").trim(),
            "ram-state",
            "{tag}"
        );
        env.ok(&["stop", &name]);
    }
    // No server now (as after an idle exit, or a reboot): a reset and a restore start
    // one.
    common::end_lazy_server(env.path());
    env.json(&["reset", "vm", "--to", "once"]);
    assert_eq!(env.sh("vm", "cat /tmp/marker").trim(), "ram-state");
    env.ok(&["stop", "vm"]);
    common::end_lazy_server(env.path());
    let c = env.json(&["restore", "once", "--name", "again"]);
    assert_eq!(env.sh("again", "cat /tmp/marker").trim(), "ram-state");
    assert!(c[0]["stored_bytes"].as_u64().unwrap() > 0, "{c}");
    env.ok(&["stop", "again"]);

    // `--stop`: the VM's RAM file moves into the snapshot, and is then kept once too.
    env.boot("vm2", &["--profile", "default"]);
    env.sh("vm2", "echo stopped-state > /tmp/marker");
    let r = env.json(&["snapshot", "vm2", "stopped", "--stop"]);
    assert_eq!(
        (r["ram_copy"].as_str(), &r["pinned"]),
        (Some("moved"), &Value::Bool(false)),
        "{r}"
    );
    let files: Vec<String> = common::dir_names(&snaps.join("stopped"));
    let plain: Vec<&String> = files
        .iter()
        .filter(|f| {
            std::fs::symlink_metadata(snaps.join("stopped").join(f))
                .unwrap()
                .is_file()
        })
        .collect();
    assert_eq!(
        plain,
        ["manifest.json"],
        "plain files of a kept-once snapshot: {files:?}"
    );
    let c = env.json(&["restore", "stopped", "--name", "s"]);
    assert_eq!(c[0]["name"], "s");
    assert_eq!(env.sh("s", "cat /tmp/marker").trim(), "stopped-state");
    env.ok(&["stop", "s"]);
}

/// A kept-once snapshot removed while its clone runs: `thaw gc` keeps the chunks of the
/// files the clone still has open through the lazy server (it has not read every page
/// yet), and frees them once the clone is gone.
#[test]
fn gc_keeps_the_chunks_a_running_clone_of_a_removed_snapshot_still_reads() {
    let env = Env::new();
    env.boot("vm", &["--profile", "default"]);
    env.sh("vm", "echo ram-state > /tmp/marker");
    env.json(&["snapshot", "vm", "base"]);
    env.ok(&["stop", "vm"]);
    env.json(&["restore", "base", "--name", "c"]);
    env.ok(&["rm", "base"]);
    let gc = env.json(&["gc"]);
    println!("gc with the clone running: {gc}");
    assert!(gc["stored_bytes"].as_u64().unwrap() > 1 << 20, "{gc}");
    // The clone reads what it had not: every file of its root file system (RAM), with
    // the host's page cache of the served file dropped.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let out = env.sh(
        "c",
        "find / -xdev -type f -exec cat {} + > /dev/null 2>&1; cat /tmp/marker",
    );
    assert_eq!(out.trim(), "ram-state");
    assert_eq!(env.state_of("c"), "running");
    env.ok(&["store", "verify"]);
    env.ok(&["stop", "c"]);
    // Nothing reads them now: the next gc frees them (the server sees the file closed
    // a moment after QEMU ends).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let gc = env.json(&["gc"]);
        if gc["stored_bytes"].as_u64().unwrap() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still kept: {gc}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
