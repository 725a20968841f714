//! SIGKILL at random moments during ingest, pull, import and gc: after each kill
//! the store passes `verify`, and retrying the operation completes.
//!
//! The operation runs in a child process: this same test binary, re-executed
//! with `THAW_STORE_KILL_OP` set. Kill delays are drawn from a seeded generator
//! (the seed is printed; set `THAW_KILL_SEED` to replay a run) over the time the
//! operation takes when left alone, measured first.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{hash_file, noise, S3Server, TestS3};
use thaw_store::{
    export, import, pull_chunks, push, ChunkId, FileIndex, NoProgress, Remote, Store,
};

const TEST_NAME: &str = "sigkill_at_random_moments_leaves_a_valid_store";
const OP_ENV: &str = "THAW_STORE_KILL_OP";
const STORE_ENV: &str = "THAW_STORE_KILL_STORE";
const ARG_ENV: &str = "THAW_STORE_KILL_ARG";
const ROUNDS: usize = 20;
const OPS: [&str; 4] = ["ingest", "pull", "import", "gc"];

/// xorshift64*: enough randomness for kill delays, and replayable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn ids_file(path: &Path, ids: &[ChunkId]) {
    std::fs::write(path, serde_json::to_vec(ids).unwrap()).unwrap();
}

fn read_ids(path: &Path) -> Vec<ChunkId> {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs one operation in the child and returns (the parent kills us meanwhile).
fn run_child(op: &str) {
    let store = Store::open(std::env::var(STORE_ENV).unwrap()).unwrap();
    let arg = PathBuf::from(std::env::var(ARG_ENV).unwrap());
    println!("READY");
    match op {
        "ingest" => drop(store.ingest(&arg, &mut NoProgress).unwrap()),
        "import" => drop(import(&store, &arg, &mut NoProgress).unwrap()),
        "gc" => drop(store.gc(&read_ids(&arg).into_iter().collect()).unwrap()),
        "pull" => {
            let remote = Remote::from_env("s3://thaw/kill").unwrap();
            let ids = read_ids(&arg);
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime
                .block_on(pull_chunks(&store, &remote, &ids, &mut NoProgress))
                .unwrap();
        }
        other => panic!("unknown op {other}"),
    }
    println!("DONE");
}

/// Everything the rounds share: source data, an export, a pushed remote, a gc
/// template store.
struct Fixture {
    dir: tempfile::TempDir,
    server: S3Server,
    src: PathBuf,
    index: FileIndex,
    manifest: Vec<u8>,
    ids_path: PathBuf,
    export: PathBuf,
    gc_template: PathBuf,
    /// Chunks of the file gc must keep; the template also holds dead ones.
    dead: Vec<ChunkId>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ram");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&noise(11, 12 << 20), 1 << 20).unwrap();
    f.write_all_at(&noise(12, 4 << 20), 40 << 20).unwrap();
    drop(f);

    let source = Store::open(dir.path().join("source")).unwrap();
    let index = source.ingest(&src, &mut NoProgress).unwrap();
    let manifest = serde_json::to_vec(&index).unwrap();
    source.put_manifest("kill", &manifest).unwrap();
    let ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    let ids_path = dir.path().join("ids.json");
    ids_file(&ids_path, &ids);

    let export_path = dir.path().join("kill.tar");
    export(
        &source,
        "kill",
        &manifest,
        &ids,
        &export_path,
        &mut NoProgress,
    )
    .unwrap();

    let server = S3Server::start();
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw/kill");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(push(&source, &remote, "kill", &ids, &mut NoProgress))
        .unwrap();

    // gc template: the file's chunks plus as many dead ones.
    let other = dir.path().join("other");
    std::fs::write(&other, noise(13, 16 << 20)).unwrap();
    let dead_index = source.ingest(&other, &mut NoProgress).unwrap();
    let dead = dead_index.chunk_ids().copied().collect();
    Fixture {
        gc_template: source.root().to_path_buf(),
        dir,
        server,
        src,
        index,
        manifest,
        ids_path,
        export: export_path,
        dead,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

impl Fixture {
    /// A store for one round of `op`, in the state the op starts from.
    fn prepare(&self, op: &str, round: usize) -> (PathBuf, PathBuf) {
        let store = self.dir.path().join(format!("round-{round}-{op}"));
        let arg = match op {
            "ingest" => self.src.clone(),
            "import" => self.export.clone(),
            "pull" => self.ids_path.clone(),
            "gc" => {
                copy_dir(&self.gc_template, &store);
                self.ids_path.clone()
            }
            _ => unreachable!(),
        };
        Store::open(&store).unwrap();
        (store, arg)
    }

    fn child(&self, op: &str, store: &Path, arg: &Path) -> Command {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(OP_ENV, op)
            .env(STORE_ENV, store)
            .env(ARG_ENV, arg)
            .env("THAW_S3_ENDPOINT", &self.server.endpoint)
            .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_REGION")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Runs `op` in a child; kills it `kill_after` after it reported READY, if
    /// given. Returns how long the op ran and whether it finished by itself.
    fn run(
        &self,
        op: &str,
        store: &Path,
        arg: &Path,
        kill_after: Option<Duration>,
    ) -> (Duration, bool) {
        let mut child = self.child(op, store, arg).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        // libtest prints "test NAME ... " before our output, on the same line.
        while !line.trim_end().ends_with("READY") {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "child exited before READY"
            );
        }
        let started = Instant::now();
        if let Some(delay) = kill_after {
            std::thread::sleep(delay);
            // SIGKILL, whether or not it is done.
            child.kill().unwrap();
        }
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let status = child.wait().unwrap();
        let finished = rest.contains("DONE") && status.success();
        if kill_after.is_none() {
            assert!(finished, "{op} failed in the child: {status}");
        }
        (started.elapsed(), finished)
    }

    /// After a kill: the store verifies, and the op retried in-process completes.
    fn check_and_retry(&self, op: &str, store_dir: &Path) -> String {
        let left = what_is_left(store_dir);
        let store = Store::open(store_dir).unwrap();
        let report = store.verify(&mut NoProgress).unwrap();
        assert!(
            report.damaged.is_empty(),
            "{op}: damaged after kill: {:?}",
            report.damaged
        );
        let ids: Vec<ChunkId> = self.index.chunk_ids().copied().collect();
        match op {
            "ingest" => assert_eq!(
                store.ingest(&self.src, &mut NoProgress).unwrap(),
                self.index
            ),
            "import" => {
                let imported = import(&store, &self.export, &mut NoProgress).unwrap();
                assert_eq!(imported.manifest, self.manifest);
            }
            "pull" => {
                let remote = self.server.remote("s3://thaw/kill");
                let runtime = tokio::runtime::Runtime::new().unwrap();
                runtime
                    .block_on(pull_chunks(&store, &remote, &ids, &mut NoProgress))
                    .unwrap();
            }
            "gc" => {
                let live: HashSet<ChunkId> = ids.iter().copied().collect();
                store.gc(&live).unwrap();
                assert!(
                    self.dead.iter().all(|id| !store.has(id)),
                    "gc left dead chunks"
                );
            }
            _ => unreachable!(),
        }
        let out = store_dir.with_extension("out");
        store
            .materialize(&self.index, &out, &mut NoProgress)
            .unwrap();
        assert_eq!(
            hash_file(&out),
            hash_file(&self.src),
            "{op}: retry did not complete"
        );
        // Whatever the kill left behind, gc cleans it and the store still verifies.
        let live: HashSet<ChunkId> = ids.iter().copied().collect();
        store.gc(&live).unwrap();
        assert!(store.verify(&mut NoProgress).unwrap().damaged.is_empty());
        std::fs::remove_file(out).unwrap();
        left
    }
}

/// "N chunks, M temp files" under a store directory.
fn what_is_left(dir: &Path) -> String {
    fn walk(dir: &Path, chunks: &mut usize, temps: &mut usize) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), chunks, temps);
            } else if name.starts_with(".tmp-") {
                *temps += 1;
            } else if name.len() == 64 {
                *chunks += 1;
            }
        }
    }
    let (mut chunks, mut temps) = (0, 0);
    walk(dir, &mut chunks, &mut temps);
    format!("{chunks} chunks, {temps} temp files")
}

#[test]
fn sigkill_at_random_moments_leaves_a_valid_store() {
    if let Ok(op) = std::env::var(OP_ENV) {
        return run_child(&op);
    }
    let seed = std::env::var("THAW_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill test seed: {seed} (THAW_KILL_SEED={seed} replays it)");
    let mut rng = Rng(seed | 1);
    let fixture = fixture();

    // How long each op takes when left alone, to draw kill delays from.
    let mut durations = Vec::new();
    for op in OPS {
        let (store, arg) = fixture.prepare(op, 1000);
        let (took, _) = fixture.run(op, &store, &arg, None);
        println!("{op}: {} ms uninterrupted", took.as_millis());
        durations.push(took);
    }

    let mut killed_midway = 0;
    for round in 0..ROUNDS {
        let op = OPS[round % OPS.len()];
        let span = durations[round % OPS.len()].as_micros() as u64;
        let delay = Duration::from_micros(rng.below(span + 1));
        let (store, arg) = fixture.prepare(op, round);
        let (_, finished) = fixture.run(op, &store, &arg, Some(delay));
        killed_midway += usize::from(!finished);
        let left = fixture.check_and_retry(op, &store);
        println!(
            "round {round}: {op} killed after {} ms{}, leaving {left}; verify passed, retry completed",
            delay.as_millis(),
            if finished { " (it had already finished)" } else { "" }
        );
        std::fs::remove_dir_all(&store).unwrap();
    }
    println!("{killed_midway} of {ROUNDS} kills landed mid-operation");
    assert!(
        killed_midway >= ROUNDS / 2,
        "too few kills landed mid-operation to mean anything"
    );
}
