//! The local store end to end: ingest, materialize, dedup, zero elision,
//! damage detection, gc, manifests, export/import.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use thaw_store::{
    export, import, ChunkError, ChunkId, FileIndex, ImportError, IngestError, MaterializeError,
    NoProgress, OpenError, Progress, Store, DEFAULT_CHUNK_SIZE,
};

const CHUNK: usize = DEFAULT_CHUNK_SIZE as usize;

/// Deterministic bytes that do not compress (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn hash_file(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().to_hex().to_string()
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn chunk_files(store: &Store) -> usize {
    walk(&store.root().join("chunks"))
        .iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A sparse file like a guest RAM image: mostly hole, a few data regions (one
/// of explicitly written zeros), and a size that is not a chunk multiple.
fn ram_like(path: &Path, size: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&noise(1, 3 * CHUNK + 100), 1 << 20).unwrap();
    f.write_all_at(&vec![0u8; 4 * CHUNK], 8 << 20).unwrap();
    f.write_all_at(b"tail", size - 4).unwrap();
    f.sync_all().unwrap();
}

fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

#[test]
fn sparse_round_trip_keeps_bytes_and_holes() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("ram");
    let size = (32 << 20) + 12_345;
    ram_like(&src, size);

    let index = store.ingest(&src, &mut NoProgress).unwrap();
    assert_eq!(index.size, size);
    assert_eq!(index.chunk_size, DEFAULT_CHUNK_SIZE);
    assert_eq!(index.chunks.len(), (size as usize).div_ceil(CHUNK));
    assert_eq!(index.blake3, hash_file(&src));
    // 1 MiB + 3 chunks + 100 bytes of data spans 4 chunks; the tail is one more.
    assert_eq!(index.chunks.iter().flatten().count(), 5);
    assert_eq!(index.chunk_ids().count(), 5);

    let dest = d.path().join("restored");
    store.materialize(&index, &dest, &mut NoProgress).unwrap();
    assert_eq!(hash_file(&dest), hash_file(&src));
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
    assert!(
        allocated(&dest) <= 6 * CHUNK as u64,
        "holes stay holes: {} bytes allocated",
        allocated(&dest)
    );

    // The index survives JSON, chunk ids as hex and zero chunks as null.
    let json = serde_json::to_string(&index).unwrap();
    assert!(json.contains("null"));
    assert_eq!(serde_json::from_str::<FileIndex>(&json).unwrap(), index);

    let report = store.verify(&mut NoProgress).unwrap();
    assert_eq!((report.checked, report.damaged.len()), (5, 0));
}

/// Bytes this process has read through read(2)-like calls so far.
fn bytes_read_by_process() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn holes_of_a_4_gib_file_are_not_read() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("ram");
    let f = File::create(&src).unwrap();
    f.set_len(4 << 30).unwrap();
    f.write_all_at(&noise(2, 2 * CHUNK), 3 << 30).unwrap();
    drop(f);

    let before = bytes_read_by_process();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    let read = bytes_read_by_process() - before;
    // Other tests run in this process meanwhile, but read nowhere near 1 GiB.
    assert!(
        read < 1 << 30,
        "ingest read {read} bytes of a 4 GiB sparse file"
    );
    assert_eq!(index.chunks.len(), 65_536);
    assert_eq!(index.chunks.iter().flatten().count(), 2);
    // The whole-file hash counts the holes as zeros.
    let mut hasher = blake3::Hasher::new();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(3 << 10) {
        hasher.update(&zeros);
    }
    hasher.update(&noise(2, 2 * CHUNK));
    for _ in 0..((1 << 10) - 1) {
        hasher.update(&zeros);
    }
    hasher.update(&zeros[..(1 << 20) - 2 * CHUNK]);
    assert_eq!(index.blake3, hasher.finalize().to_hex().as_str());
}

#[test]
fn written_zeros_are_elided_and_empty_files_work() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("zeros");
    std::fs::write(&src, vec![0u8; 1 << 20]).unwrap();
    assert!(allocated(&src) >= 1 << 20, "the zeros are really written");
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    assert!(index.chunks.iter().all(Option::is_none));
    assert_eq!(store.stored_bytes().unwrap(), 0);
    let dest = d.path().join("out");
    store.materialize(&index, &dest, &mut NoProgress).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), vec![0u8; 1 << 20]);
    assert_eq!(allocated(&dest), 0);

    let empty = d.path().join("empty");
    File::create(&empty).unwrap();
    let index = store.ingest(&empty, &mut NoProgress).unwrap();
    assert_eq!((index.size, index.chunks.len()), (0, 0));
    store
        .materialize(&index, d.path().join("empty2"), &mut NoProgress)
        .unwrap();
    assert_eq!(std::fs::read(d.path().join("empty2")).unwrap(), b"");
}

#[test]
fn files_sharing_content_store_it_once() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let a = d.path().join("a");
    let mut data = noise(3, 64 * CHUNK);
    std::fs::write(&a, &data).unwrap();
    let index_a = store.ingest(&a, &mut NoProgress).unwrap();
    let after_a = store.stored_bytes().unwrap();
    assert_eq!(chunk_files(&store), 64);
    assert!(after_a >= 64 * CHUNK as u64, "noise does not compress");

    // B: the same but two chunks changed (one page each), like the next snapshot.
    data[5 * CHUNK + 4096] ^= 1;
    data[40 * CHUNK] ^= 1;
    let b = d.path().join("b");
    std::fs::write(&b, &data).unwrap();
    let index_b = store.ingest(&b, &mut NoProgress).unwrap();
    assert_eq!(chunk_files(&store), 66);
    let added = store.stored_bytes().unwrap() - after_a;
    assert!(
        added <= 2 * (CHUNK as u64 + 100),
        "only the two changed chunks were added ({added} bytes)"
    );
    let shared = index_a
        .chunk_ids()
        .filter(|id| index_b.chunks.contains(&Some(**id)));
    assert_eq!(shared.count(), 62);

    // Ingesting the same file again writes nothing.
    store.ingest(&b, &mut NoProgress).unwrap();
    assert_eq!(chunk_files(&store), 66);
}

#[test]
fn a_flipped_byte_is_named_by_materialize_and_verify() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("f");
    std::fs::write(&src, noise(4, 4 * CHUNK)).unwrap();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    let victim = index.chunks[2].unwrap();
    let victim_path = store.chunk_path(&victim);
    flip_byte(&victim_path, 100);

    let dest = d.path().join("out");
    std::fs::write(&dest, b"previous").unwrap();
    let err = store
        .materialize(&index, &dest, &mut NoProgress)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, MaterializeError::Chunk(ChunkError::Damaged { id, .. }) if *id == victim),
        "{message}"
    );
    assert!(message.contains(&victim.to_hex()), "{message}");
    assert!(
        message.contains(&victim_path.display().to_string()),
        "{message}"
    );
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous", "dest untouched");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        3,
        "no temp left"
    );

    let report = store.verify(&mut NoProgress).unwrap();
    assert_eq!(report.checked, 4);
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].0, victim);
    println!(
        "verify says: {} {}",
        report.damaged[0].0, report.damaged[0].1
    );

    // Dropping the damaged chunk and ingesting again repairs the store.
    assert!(store.remove_chunk(&victim).unwrap());
    let err = store
        .materialize(&index, &dest, &mut NoProgress)
        .unwrap_err();
    assert!(matches!(err, MaterializeError::Chunk(ChunkError::Missing { id, .. }) if id == victim));
    store.ingest(&src, &mut NoProgress).unwrap();
    store.materialize(&index, &dest, &mut NoProgress).unwrap();
    assert_eq!(hash_file(&dest), hash_file(&src));
}

#[test]
fn an_inconsistent_index_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("f");
    std::fs::write(&src, noise(5, 2 * CHUNK)).unwrap();
    let mut index = store.ingest(&src, &mut NoProgress).unwrap();
    index.chunks.swap(0, 1);
    let err = store
        .materialize(&index, d.path().join("o"), &mut NoProgress)
        .unwrap_err();
    assert!(
        matches!(err, MaterializeError::WrongFileHash { .. }),
        "{err}"
    );
    index.chunks.pop();
    let err = store
        .materialize(&index, d.path().join("o"), &mut NoProgress)
        .unwrap_err();
    assert!(matches!(err, MaterializeError::BadIndex { .. }), "{err}");
}

#[test]
fn gc_keeps_live_chunks_and_removes_dead_ones_and_stale_temps() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    std::fs::write(&a, noise(6, 8 * CHUNK)).unwrap();
    std::fs::write(&b, noise(7, 5 * CHUNK)).unwrap();
    let index_a = store.ingest(&a, &mut NoProgress).unwrap();
    let index_b = store.ingest(&b, &mut NoProgress).unwrap();
    let dead_bytes: u64 = index_b
        .chunk_ids()
        .map(|id| std::fs::metadata(store.chunk_path(id)).unwrap().len())
        .sum();
    // A temp file of a writer killed long ago, and one of a live writer (us).
    let some_dir = store
        .chunk_path(&index_a.chunks[0].unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let stale = some_dir.join(".tmp-99999999-0-deadbeef");
    std::fs::write(&stale, b"half a chunk").unwrap();
    let live_tmp = some_dir.join(format!(".tmp-{}-999-x", std::process::id()));
    std::fs::write(&live_tmp, b"in flight").unwrap();

    let live: HashSet<ChunkId> = index_a.chunk_ids().copied().collect();
    let report = store.gc(&live).unwrap();
    assert_eq!(report.removed, 5);
    assert_eq!(report.stale_temps_removed, 1);
    assert_eq!(report.freed_bytes, dead_bytes + 12);
    assert!(!stale.exists() && live_tmp.exists());
    assert!(index_b.chunk_ids().all(|id| !store.has(id)));
    assert!(index_a.chunk_ids().all(|id| store.has(id)));
    store
        .materialize(&index_a, d.path().join("a2"), &mut NoProgress)
        .unwrap();
    assert_eq!(hash_file(&d.path().join("a2")), hash_file(&a));
    assert!(store.verify(&mut NoProgress).unwrap().damaged.is_empty());
    assert_eq!(store.gc(&live).unwrap().removed, 0);
}

#[test]
fn gc_waits_for_a_writer_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    // An ingest holds the lock shared while it runs; take it the same way.
    let lock = File::open(store.root().join("lock"))
        .or_else(|_| File::create(store.root().join("lock")))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared).unwrap();
    let gc = {
        let store = store.clone();
        std::thread::spawn(move || store.gc(&HashSet::new()).unwrap())
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!gc.is_finished(), "gc ran while a writer held the lock");
    drop(lock);
    gc.join().unwrap();
}

#[test]
fn another_store_format_is_refused() {
    let d = tempfile::tempdir().unwrap();
    Store::open(d.path()).unwrap();
    std::fs::write(
        d.path().join("store.json"),
        r#"{"format":"thaw-store","version":2}"#,
    )
    .unwrap();
    let err = Store::open(d.path()).unwrap_err();
    assert!(matches!(err, OpenError::Format { .. }), "{err}");
}

#[test]
fn ingest_refuses_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let err = store.ingest(d.path(), &mut NoProgress).unwrap_err();
    assert!(matches!(err, IngestError::NotAFile { .. }), "{err}");
    let err = store
        .ingest(d.path().join("nope"), &mut NoProgress)
        .unwrap_err();
    assert!(matches!(err, IngestError::Io { .. }), "{err}");
    let f = d.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let err = store
        .ingest_with_chunk_size(&f, 1000, &mut NoProgress)
        .unwrap_err();
    assert!(matches!(err, IngestError::ChunkSize { .. }), "{err}");
    // Other chunk sizes work and are recorded.
    std::fs::write(&f, noise(8, 100_000)).unwrap();
    let index = store
        .ingest_with_chunk_size(&f, 16 << 10, &mut NoProgress)
        .unwrap();
    assert_eq!((index.chunk_size, index.chunks.len()), (16 << 10, 7));
    store
        .materialize(&index, d.path().join("g"), &mut NoProgress)
        .unwrap();
    assert_eq!(hash_file(&d.path().join("g")), hash_file(&f));
}

#[derive(Default)]
struct Counting {
    phases: Vec<(String, u64, u64, bool)>,
}

impl Progress for Counting {
    fn start(&mut self, what: &str, total: u64) {
        self.phases.push((what.into(), total, 0, false));
    }
    fn advance(&mut self, bytes: u64) {
        self.phases.last_mut().unwrap().2 += bytes;
    }
    fn finish(&mut self) {
        self.phases.last_mut().unwrap().3 = true;
    }
}

#[test]
fn progress_adds_up_to_its_total() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("ram");
    ram_like(&src, 20 << 20);
    let mut progress = Counting::default();
    let index = store.ingest(&src, &mut progress).unwrap();
    store
        .materialize(&index, d.path().join("o"), &mut progress)
        .unwrap();
    store.verify(&mut progress).unwrap();
    let ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    let file = d.path().join("x.tar");
    export(&store, "m", b"{}", &ids, &file, &mut progress).unwrap();
    let fresh = Store::open(d.path().join("fresh")).unwrap();
    import(&fresh, &file, &mut progress).unwrap();
    assert_eq!(progress.phases.len(), 5);
    for (what, total, done, finished) in &progress.phases[..4] {
        assert_eq!(total, done, "{what}");
        assert!(finished, "{what}");
    }
    // Import counts archive bytes; tar's end-of-archive padding is never "done".
    let (what, total, done, finished) = &progress.phases[4];
    assert!(
        *finished && done <= total && total - done <= 10240,
        "{what}: {done} of {total}"
    );
}

#[test]
fn export_import_round_trip_and_damage_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("ram");
    ram_like(&src, 16 << 20);
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    let manifest = serde_json::to_vec(&index).unwrap();
    let ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    let file = d.path().join("cache.thaw.tar");
    let report = export(
        &store,
        "debian.base",
        &manifest,
        &ids,
        &file,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(report.chunks, ids.len() as u64);
    assert_eq!(report.file_bytes, std::fs::metadata(&file).unwrap().len());

    let fresh = Store::open(d.path().join("fresh")).unwrap();
    let imported = import(&fresh, &file, &mut NoProgress).unwrap();
    assert_eq!(imported.manifest_name, "debian.base");
    assert_eq!(imported.manifest, manifest);
    assert_eq!(imported.chunks_added, ids.len() as u64);
    let index2: FileIndex = serde_json::from_slice(&imported.manifest).unwrap();
    fresh
        .materialize(&index2, d.path().join("out"), &mut NoProgress)
        .unwrap();
    assert_eq!(hash_file(&d.path().join("out")), hash_file(&src));
    // A second import finds everything present.
    assert_eq!(
        import(&fresh, &file, &mut NoProgress)
            .unwrap()
            .chunks_present,
        ids.len() as u64
    );

    // Flip one byte inside the last chunk's data: refused, naming that chunk.
    let entry = |id: &ChunkId| format!("chunks/{}/{id}", &id.to_hex()[..2]);
    let victim = *ids
        .iter()
        .max_by_key(|id| find(&file, entry(id).as_bytes()))
        .unwrap();
    // The entry name opens its 512-byte tar header; the chunk's bytes follow.
    let at = find(&file, entry(&victim).as_bytes()) + 512 + 10;
    let bad = d.path().join("bad.tar");
    std::fs::copy(&file, &bad).unwrap();
    flip_byte(&bad, at as u64);
    let other = Store::open(d.path().join("other")).unwrap();
    let err = import(&other, &bad, &mut NoProgress).unwrap_err();
    assert!(
        matches!(&err, ImportError::ChunkDamaged { id, .. } if *id == victim),
        "{err}"
    );
    assert!(err.to_string().contains(&victim.to_hex()), "{err}");
    assert!(!other.has(&victim));
    assert!(other.verify(&mut NoProgress).unwrap().damaged.is_empty());

    // A flipped byte in the manifest, and a truncated file, are refused too.
    let at = find(&file, b"\"size\":");
    std::fs::copy(&file, &bad).unwrap();
    flip_byte(&bad, at as u64 + 2);
    let err = import(&other, &bad, &mut NoProgress).unwrap_err();
    assert!(
        err.to_string()
            .contains("manifest \"debian.base\" is damaged"),
        "{err}"
    );
    let len = std::fs::metadata(&file).unwrap().len();
    let mut truncated = std::fs::read(&file).unwrap();
    truncated.truncate((len / 2 / 512 * 512) as usize);
    std::fs::write(&bad, &truncated).unwrap();
    let err = import(&other, &bad, &mut NoProgress).unwrap_err();
    assert!(matches!(err, ImportError::Format { .. }), "{err}");
    println!("truncated export: {err}");
}

/// Offset of the first occurrence of `needle` in the file.
fn find(path: &Path, needle: &[u8]) -> usize {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{} not found", String::from_utf8_lossy(needle)))
}

#[test]
fn export_refuses_a_damaged_local_chunk() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("f");
    std::fs::write(&src, noise(9, 3 * CHUNK)).unwrap();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    let ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    flip_byte(&store.chunk_path(&ids[1]), 50);
    let file = d.path().join("x.tar");
    let err = export(&store, "m", b"{}", &ids, &file, &mut NoProgress).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains(&ids[1].to_hex()), "{chain}");
    assert!(!file.exists());
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        2,
        "no temp left"
    );
}

/// Not a timing assertion: prints how fast ingest and materialize run here
/// (debug builds are slower; `examples/measure.rs` measures release builds).
#[test]
fn throughput_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let src = d.path().join("ram");
    // RAM-like: 128 MiB, half hole, a quarter incompressible, a quarter text-like.
    let f = File::create(&src).unwrap();
    f.set_len(128 << 20).unwrap();
    f.write_all_at(&noise(20, 32 << 20), 0).unwrap();
    let text: Vec<u8> = b"thaw restores a VM in milliseconds; "
        .iter()
        .copied()
        .cycle()
        .take(32 << 20)
        .collect();
    f.write_all_at(&text, 64 << 20).unwrap();
    drop(f);
    let t = std::time::Instant::now();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    let ingest = t.elapsed().as_secs_f64();
    let dest = d.path().join("out");
    let t = std::time::Instant::now();
    store.materialize(&index, &dest, &mut NoProgress).unwrap();
    let materialize = t.elapsed().as_secs_f64();
    let data = 64.0 * 1.048_576;
    println!(
        "throughput ({} build): ingest {:.0} MB/s, materialize {:.0} MB/s of data \
         ({:.0} MB/s apparent); stored {:.1} MB for {data:.1} MB of data",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        data / ingest,
        data / materialize,
        2.0 * data / materialize,
        store.stored_bytes().unwrap() as f64 / 1e6,
    );
    assert_eq!(hash_file(&dest), hash_file(&src));
}

/// Waits up to 5 s for `done`.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn a_held_sink_writes_its_chunks_only_once_released_or_when_the_hold_runs_out() {
    use std::time::Duration;
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let sink = thaw_store::ChunkSink::start(store.clone(), Duration::from_millis(50), |id, e| {
        panic!("cannot keep {id}: {e}")
    });
    let chunk = |n: u8| (ChunkId::of(&[n; 64]), vec![n; 64]);

    // Not held: written as it comes.
    let (a, stored) = chunk(1);
    sink.keep(a, stored);
    assert!(
        eventually(|| store.has(&a)),
        "an unheld chunk was not written"
    );

    // Held: kept in memory until released, then written.
    sink.hold(Duration::from_secs(60));
    let (b, stored) = chunk(2);
    sink.keep(b, stored);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !store.has(&b),
        "a held chunk was written before its release"
    );
    sink.release_and_wait();
    assert!(store.has(&b), "a released chunk is not in the store");

    // A hold that runs out writes what it kept.
    sink.hold(Duration::from_secs(1));
    let (c, stored) = chunk(3);
    sink.keep(c, stored);
    assert!(!store.has(&c), "a held chunk was written at once");
    assert!(
        eventually(|| store.has(&c)),
        "the hold ran out and the chunk was not written"
    );

    // Dropping the sink writes what it holds.
    sink.hold(Duration::from_secs(60));
    let (e, stored) = chunk(4);
    sink.keep(e, stored);
    drop(sink);
    assert!(
        eventually(|| store.has(&e)),
        "a held chunk was lost when the sink ended"
    );
}
