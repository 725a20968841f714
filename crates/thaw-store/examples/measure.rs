//! Measures the store on real files: ingest and materialize throughput,
//! compression, and dedup between files ingested one after another.
//!
//! `cargo run --release -p thaw-store --example measure -- STORE_DIR FILE...`
//! (STORE_DIR is created; use an empty one, on the disk you care about).

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use thaw_store::{NoProgress, Store};

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store_dir, files @ ..] = args.as_slice() else {
        eprintln!("usage: measure STORE_DIR FILE...");
        std::process::exit(2);
    };
    let store = Store::open(store_dir).expect("open store");
    let out_dir = std::path::Path::new(store_dir).join("materialized");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut indexes = Vec::new();
    for file in files {
        let meta = std::fs::metadata(file).unwrap();
        let before = store.stored_bytes().unwrap();
        let t = Instant::now();
        let index = store.ingest(file, &mut NoProgress).expect("ingest");
        let secs = t.elapsed().as_secs_f64();
        let added = store.stored_bytes().unwrap() - before;
        let data_chunks = index.chunks.iter().flatten().count();
        let data_bytes = data_chunks as u64 * u64::from(index.chunk_size);
        println!(
            "ingest {file}: {:.1} MB apparent, {:.1} MB allocated, {data_chunks} data / {} zero chunks, \
             {secs:.2} s = {:.0} MB/s apparent, {:.0} MB/s of data; stored +{:.1} MB \
             (data:stored {:.2}:1)",
            meta.len() as f64 / 1e6,
            (meta.blocks() * 512) as f64 / 1e6,
            index.chunks.len() - data_chunks,
            mb_per_s(meta.len(), secs),
            mb_per_s(data_bytes, secs),
            added as f64 / 1e6,
            data_bytes as f64 / added.max(1) as f64,
        );
        indexes.push((file.clone(), index));
    }
    println!(
        "store: {:.1} MB of chunks for {:.1} MB of files",
        store.stored_bytes().unwrap() as f64 / 1e6,
        indexes.iter().map(|(_, i)| i.size).sum::<u64>() as f64 / 1e6
    );
    for (n, (file, index)) in indexes.iter().enumerate() {
        let dest = out_dir.join(format!("{n}"));
        let t = Instant::now();
        store
            .materialize(index, &dest, &mut NoProgress)
            .expect("materialize");
        let secs = t.elapsed().as_secs_f64();
        let data = index.chunks.iter().flatten().count() as u64 * u64::from(index.chunk_size);
        println!(
            "materialize {file}: {secs:.2} s = {:.0} MB/s apparent, {:.0} MB/s of data written",
            mb_per_s(index.size, secs),
            mb_per_s(data, secs)
        );
        std::fs::remove_file(dest).unwrap();
    }
    let t = Instant::now();
    let report = store.verify(&mut NoProgress).expect("verify");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "verify: {} chunks in {secs:.2} s ({:.0} MB/s of stored chunks), {} damaged",
        report.checked,
        mb_per_s(store.stored_bytes().unwrap(), secs),
        report.damaged.len()
    );
}
