//! Remotes against real S3 servers started on 127.0.0.1: every test runs against
//! s3s-fs, and with `--features garage` (scripts/test-garage.sh) against a
//! three-node Garage cluster too.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use common::{hash_file, noise, S3Server, TestS3};
use object_store::ObjectStoreExt;
use thaw_store::{
    fetch_manifest, list_remote_manifests, pull_chunks, push, unpack, ChunkId, FileIndex,
    NoProgress, PullError, PushError, Store,
};

const CHUNK: usize = 64 << 10;

/// `name::s3s_fs` runs test `name` against s3s-fs, and `name::garage` against a
/// Garage cluster when the `garage` feature is on.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3s_fs() {
                super::$name(&super::S3Server::start(), "s3s-fs").await
            }

            #[cfg(feature = "garage")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn garage() {
                super::$name(&super::common::Garage::start(), "garage").await
            }
        }
    )*};
}

on_both!(
    push_then_pull_into_a_fresh_store_gives_the_same_files,
    a_second_push_sends_only_the_new_chunks,
    a_damaged_chunk_in_the_bucket_is_refused_at_pull,
    an_interrupted_pull_completes_on_retry,
    push_with_a_missing_local_chunk_writes_no_remote_manifest,
    push_and_pull_throughput_is_reported,
    a_pack_holds_chunks_in_order_and_is_checked_against_the_bucket
);

/// What thaw's manifest will roughly be: named file indexes.
type Manifest = BTreeMap<String, FileIndex>;

fn ids_of(manifest: &Manifest) -> Vec<ChunkId> {
    manifest
        .values()
        .flat_map(|f| f.chunk_ids().copied())
        .collect()
}

async fn push_then_pull_into_a_fresh_store_gives_the_same_files(
    server: &dyn TestS3,
    _server_name: &str,
) {
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw/ci/cache");
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("a")).unwrap();

    let ram = d.path().join("ram");
    let f = std::fs::File::create(&ram).unwrap();
    f.set_len(64 << 20).unwrap();
    f.write_all_at(&noise(1, 10 * CHUNK), 3 << 20).unwrap();
    f.write_all_at(&vec![b'x'; 5 * CHUNK], 40 << 20).unwrap();
    drop(f);
    let disk = d.path().join("disk");
    std::fs::write(&disk, noise(2, 20 * CHUNK + 7)).unwrap();
    let manifest: Manifest = [
        (
            "ram".to_string(),
            store.ingest(&ram, &mut NoProgress).unwrap(),
        ),
        (
            "disk".to_string(),
            store.ingest(&disk, &mut NoProgress).unwrap(),
        ),
    ]
    .into();
    let bytes = serde_json::to_vec(&manifest).unwrap();
    store.put_manifest("base", &bytes).unwrap();
    let ids = ids_of(&manifest);

    let report = push(&store, &remote, "base", &ids, &mut NoProgress)
        .await
        .unwrap();
    // 10 noise chunks + 1 'x' chunk (5 identical) + 21 disk chunks.
    assert_eq!((report.chunks_sent, report.chunks_present), (32, 0));
    assert_eq!(report.bytes_sent, store.stored_bytes().unwrap());
    assert_eq!(list_remote_manifests(&remote).await.unwrap(), ["base"]);

    let fresh = Store::open(d.path().join("b")).unwrap();
    let fetched = fetch_manifest(&remote, "base").await.unwrap();
    assert_eq!(fetched, bytes);
    let parsed: Manifest = serde_json::from_slice(&fetched).unwrap();
    let pulled = pull_chunks(&fresh, &remote, &ids_of(&parsed), &mut NoProgress)
        .await
        .unwrap();
    assert_eq!((pulled.chunks_fetched, pulled.chunks_present), (32, 0));
    fresh.put_manifest("base", &fetched).unwrap();
    for (name, original) in [("ram", &ram), ("disk", &disk)] {
        let out = d.path().join(format!("{name}.out"));
        fresh
            .materialize(&parsed[name], &out, &mut NoProgress)
            .unwrap();
        assert_eq!(hash_file(&out), hash_file(original), "{name}");
    }
    assert!(fresh.verify(&mut NoProgress).unwrap().damaged.is_empty());

    // Pulling again fetches nothing.
    let again = pull_chunks(&fresh, &remote, &ids, &mut NoProgress)
        .await
        .unwrap();
    assert_eq!((again.chunks_fetched, again.chunks_present), (0, 32));
    assert!(matches!(
        fetch_manifest(&remote, "nope").await,
        Err(PullError::ManifestNotFound { .. })
    ));
}

async fn a_second_push_sends_only_the_new_chunks(server: &dyn TestS3, _server_name: &str) {
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw/p");
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s")).unwrap();
    let mut data = noise(3, 40 * CHUNK);
    let a = d.path().join("a");
    std::fs::write(&a, &data).unwrap();
    let index_a = store.ingest(&a, &mut NoProgress).unwrap();
    store
        .put_manifest("one", &serde_json::to_vec(&index_a).unwrap())
        .unwrap();
    let ids_a: Vec<ChunkId> = index_a.chunk_ids().copied().collect();
    let first = push(&store, &remote, "one", &ids_a, &mut NoProgress)
        .await
        .unwrap();
    assert_eq!(first.chunks_sent, 40);

    for chunk in [0, 17, 39] {
        data[chunk * CHUNK + 123] ^= 0xff;
    }
    let b = d.path().join("b");
    std::fs::write(&b, &data).unwrap();
    let index_b = store.ingest(&b, &mut NoProgress).unwrap();
    store
        .put_manifest("two", &serde_json::to_vec(&index_b).unwrap())
        .unwrap();
    let ids_b: Vec<ChunkId> = index_b.chunk_ids().copied().collect();
    let second = push(&store, &remote, "two", &ids_b, &mut NoProgress)
        .await
        .unwrap();
    assert_eq!((second.chunks_sent, second.chunks_present), (3, 37));
    assert!(second.bytes_sent <= 3 * (CHUNK as u64 + 100));
    assert_eq!(
        list_remote_manifests(&remote).await.unwrap(),
        ["one", "two"]
    );
}

async fn a_damaged_chunk_in_the_bucket_is_refused_at_pull(server: &dyn TestS3, _server_name: &str) {
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw/x");
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s")).unwrap();
    let src = d.path().join("f");
    std::fs::write(&src, noise(4, 6 * CHUNK)).unwrap();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    store.put_manifest("m", b"{}").unwrap();
    let ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    push(&store, &remote, "m", &ids, &mut NoProgress)
        .await
        .unwrap();

    // Flip one byte of one chunk object in the bucket.
    let victim = ids[3];
    let key = object_store::path::Path::from(format!("x/chunks/{victim}"));
    let raw = server.raw_client("thaw");
    let mut bytes = raw.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
    bytes[200] ^= 0x01;
    raw.put(&key, bytes.into()).await.unwrap();

    let fresh = Store::open(d.path().join("fresh")).unwrap();
    let err = pull_chunks(&fresh, &remote, &ids, &mut NoProgress)
        .await
        .unwrap_err();
    println!("pull says: {err}");
    assert!(
        matches!(&err, PullError::ChunkDamaged { id, .. } if *id == victim),
        "{err}"
    );
    assert!(err.to_string().contains(&victim.to_hex()), "{err}");
    assert!(!fresh.has(&victim), "a damaged chunk never becomes visible");
    assert!(fresh.verify(&mut NoProgress).unwrap().damaged.is_empty());

    // A chunk that is not on the remote at all is named too.
    raw.delete(&key).await.unwrap();
    let err = pull_chunks(&fresh, &remote, &ids, &mut NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::ChunkMissing { id, .. } if *id == victim),
        "{err}"
    );
}

async fn an_interrupted_pull_completes_on_retry(server: &dyn TestS3, _server_name: &str) {
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw");
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s")).unwrap();
    let src = d.path().join("f");
    std::fs::write(&src, noise(5, 30 * CHUNK)).unwrap();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    let manifest = serde_json::to_vec(&index).unwrap();
    store.put_manifest("m", &manifest).unwrap();
    let ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    push(&store, &remote, "m", &ids, &mut NoProgress)
        .await
        .unwrap();

    let fresh = Store::open(d.path().join("fresh")).unwrap();
    let first = pull_chunks(&fresh, &remote, &ids[..12], &mut NoProgress)
        .await
        .unwrap();
    assert_eq!(first.chunks_fetched, 12);
    let rest = pull_chunks(&fresh, &remote, &ids, &mut NoProgress)
        .await
        .unwrap();
    assert_eq!((rest.chunks_fetched, rest.chunks_present), (18, 12));
    fresh
        .materialize(&index, d.path().join("out"), &mut NoProgress)
        .unwrap();
    assert_eq!(hash_file(&d.path().join("out")), hash_file(&src));
}

async fn push_with_a_missing_local_chunk_writes_no_remote_manifest(
    server: &dyn TestS3,
    _server_name: &str,
) {
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw/y");
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s")).unwrap();
    let src = d.path().join("f");
    std::fs::write(&src, noise(6, 4 * CHUNK)).unwrap();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    store.put_manifest("m", b"{}").unwrap();
    let ids: Vec<ChunkId> = index.chunk_ids().copied().collect();
    store.remove_chunk(&ids[2]).unwrap();
    let err = push(&store, &remote, "m", &ids, &mut NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, PushError::Chunk { .. }), "{err}");
    assert!(list_remote_manifests(&remote).await.unwrap().is_empty());

    // A bucket that does not exist is a clear error, not a hang.
    let nowhere = server.remote("s3://no-such-bucket/p");
    let err = push(&store, &nowhere, "m", &ids[..1], &mut NoProgress)
        .await
        .unwrap_err();
    println!("missing bucket: {err}");
    assert!(matches!(err, PushError::Remote { .. }), "{err}");
}

/// Pushes and pulls 32 MiB of incompressible chunks and prints the throughput of each
/// (a figure for the notes, not asserted: the machine is shared); the pulled bytes must
/// be the pushed ones.
async fn push_and_pull_throughput_is_reported(server: &dyn TestS3, server_name: &str) {
    const SIZE: usize = 32 << 20;
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw/bench");
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("a")).unwrap();
    let ram = d.path().join("ram");
    std::fs::write(&ram, noise(9, SIZE)).unwrap();
    let manifest: Manifest = [(
        "ram".to_string(),
        store.ingest(&ram, &mut NoProgress).unwrap(),
    )]
    .into();
    let ids = ids_of(&manifest);
    store
        .put_manifest("base", &serde_json::to_vec(&manifest).unwrap())
        .unwrap();
    let t = std::time::Instant::now();
    let pushed = push(&store, &remote, "base", &ids, &mut NoProgress)
        .await
        .unwrap();
    let push_s = t.elapsed().as_secs_f64();
    assert_eq!(pushed.chunks_sent as usize, ids.len());
    let fresh = Store::open(d.path().join("b")).unwrap();
    let t = std::time::Instant::now();
    let pulled = pull_chunks(&fresh, &remote, &ids, &mut NoProgress)
        .await
        .unwrap();
    let pull_s = t.elapsed().as_secs_f64();
    assert_eq!(pulled.chunks_fetched as usize, ids.len());
    let out = d.path().join("ram.out");
    fresh
        .materialize(&manifest["ram"], &out, &mut NoProgress)
        .unwrap();
    assert_eq!(hash_file(&out), hash_file(&ram));
    let mb = pushed.bytes_sent as f64 / 1e6;
    eprintln!(
        "throughput ({server_name}, {} chunks, {mb:.1} MB): push {:.1} MB/s ({push_s:.2} s), \
         pull {:.1} MB/s ({pull_s:.2} s)",
        ids.len(),
        mb / push_s,
        mb / pull_s
    );
}

async fn a_pack_holds_chunks_in_order_and_is_checked_against_the_bucket(
    server: &dyn TestS3,
    _server_name: &str,
) {
    server.create_bucket("thaw");
    let remote = server.remote("s3://thaw/p");
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("s")).unwrap();
    let src = d.path().join("f");
    // Incompressible: 2.8 MB of chunks, a pack fetched in two ranged requests.
    let data = noise(9, 44 * CHUNK);
    std::fs::write(&src, &data).unwrap();
    let index = store.ingest(&src, &mut NoProgress).unwrap();
    // Some chunks out of file order, then the rest.
    let order: Vec<usize> = [7, 2, 9, 0].into_iter().chain(10..44).collect();
    let ids: Vec<ChunkId> = order.iter().map(|&i| index.chunks[i].unwrap()).collect();
    let pack = remote.ensure_pack(&store, &ids).await.unwrap();
    assert_eq!(pack.check(), Ok(()));
    assert_eq!(
        pack.chunks.iter().map(|c| c.id).collect::<Vec<_>>(),
        ids,
        "the pack keeps the order asked for"
    );
    assert!(pack.total() > 2 << 20, "{} bytes", pack.total());
    let key = object_store::path::Path::from(format!("p/packs/{}", pack.name));
    let raw = server.raw_client("thaw");
    let object = raw.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
    assert_eq!(object.len() as u64, pack.total());
    // Made again: the same object, not uploaded a second time.
    let modified = raw.head(&key).await.unwrap().last_modified;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(remote.ensure_pack(&store, &ids).await.unwrap(), pack);
    assert_eq!(raw.head(&key).await.unwrap().last_modified, modified);

    // Fetched: every chunk once, each unpacking to its bytes of the file.
    let mut got = BTreeMap::new();
    remote
        .fetch_pack(&pack, |entry, stored| {
            assert!(got.insert(entry.id, (entry, stored)).is_none(), "twice");
        })
        .await
        .unwrap();
    assert_eq!(got.len(), ids.len());
    for (&i, id) in order.iter().zip(&ids) {
        let (entry, stored) = &got[id];
        let chunk = unpack(entry, stored, Some(CHUNK)).unwrap();
        assert_eq!(chunk, data[i * CHUNK..(i + 1) * CHUNK], "chunk {i}");
    }

    // A byte flipped in the bucket: that chunk fails its check, the others pass.
    let mut flipped = object.clone();
    flipped[pack.chunks[0].len as usize + 5] ^= 0x01;
    raw.put(&key, flipped.into()).await.unwrap();
    let mut damaged = Vec::new();
    let mut handed = 0;
    remote
        .fetch_pack(&pack, |entry, stored| {
            handed += 1;
            if unpack(&entry, &stored, Some(CHUNK)).is_err() {
                damaged.push(entry.id);
            }
        })
        .await
        .unwrap();
    assert_eq!((handed, damaged), (ids.len(), vec![ids[1]]));

    // Shorter than its record says, or absent: refused before a chunk is handed out.
    raw.put(&key, object[..object.len() - 1].to_vec().into())
        .await
        .unwrap();
    let mut handed = 0;
    let err = remote
        .fetch_pack(&pack, |_, _| handed += 1)
        .await
        .unwrap_err();
    println!("a short pack: {err}");
    assert!(err.to_string().contains(&pack.name), "{err}");
    raw.delete(&key).await.unwrap();
    let err = remote
        .fetch_pack(&pack, |_, _| handed += 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not in the bucket"), "{err}");
    assert_eq!(handed, 0);
}
