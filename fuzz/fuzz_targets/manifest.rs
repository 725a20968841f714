//! The snapshot manifest parser: any bytes give a manifest or an error, never a
//! panic; a manifest that parses writes out bytes that parse to the same manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw::snapshot::{parse_manifest_bytes, Manifest};
use thaw::SnapshotTag;

fuzz_target!(|data: &[u8]| {
    let tag: SnapshotTag = "t".parse().expect("a valid tag");
    match parse_manifest_bytes(&tag, data) {
        Ok(m) => {
            let again = parse_manifest_bytes(&tag, &m.to_bytes()).expect("its own bytes parse");
            let strip = |m: Manifest| Manifest { checksum: None, ..m };
            assert_eq!(strip(again), strip(m));
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
