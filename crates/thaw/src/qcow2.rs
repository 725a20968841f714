//! The parts of a qcow2 header that name other files, read without QEMU.
//!
//! A qcow2 image can make whoever opens it read other files: its backing file (a name
//! at `backing_file_offset`, bytes 8..20 of the header), its backing file's format (a
//! header extension; without it QEMU *probes* the backing file, so a raw file that
//! looks like qcow2 would be opened as one), and an external data file (incompatible
//! feature bit 2 with a header extension naming the file). A snapshot that came from
//! elsewhere is not trusted: its layers must name exactly what thaw wrote (see `disk`),
//! so [`read`] gives those fields and [`Header::check`] compares them. It reads the
//! first cluster only (where the header, its extensions and the backing name live), so
//! a restore can afford it for every layer.

use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// The smallest header (version 2); version 3 adds fields up to byte 104.
const V2_HEADER_LEN: usize = 72;
const V3_HEADER_LEN: usize = 104;
/// QEMU's limits: clusters of 512 B to 2 MiB, backing names under 1 KiB.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
const MAX_BACKING_NAME: u32 = 1023;

const EXT_END: u32 = 0;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible features QEMU 10 knows and that name no other file: dirty (0),
/// corrupt (1), compression type (3), extended L2 entries (4). Bit 2 is the external
/// data file; any other bit is a feature this check does not understand.
const KNOWN_SAFE_INCOMPATIBLE: u64 = 0b1_1011;
const INCOMPATIBLE_DATA_FILE: u64 = 1 << 2;

/// Names quoted in errors are cut to this many characters.
const QUOTE_MAX: usize = 80;

/// What a qcow2 header says about other files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub backing_file: Option<Vec<u8>>,
    pub backing_format: Option<Vec<u8>>,
    /// The image keeps its data in another file (feature bit or extension).
    pub data_file: bool,
    /// Incompatible feature bits this check does not know.
    pub unknown_features: u64,
}

/// Why a layer's header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderDefect {
    #[error("it is not a qcow2 image")]
    NotQcow2,
    #[error("its header is malformed ({0})")]
    Malformed(&'static str),
    #[error("it names the backing file {found}, where thaw wrote {expected}")]
    BackingFile { found: String, expected: String },
    #[error("its backing file's format is {found}, where thaw wrote {expected}")]
    BackingFormat { found: String, expected: String },
    #[error("it keeps its data in an external file")]
    DataFile,
    #[error("it uses incompatible features thaw does not know (bits {0:#x})")]
    UnknownFeatures(u64),
    #[error("it cannot be read ({0})")]
    Unreadable(String),
}

/// A name from a header, as an error quotes it: lossy UTF-8, cut short, in quotes.
fn quote(name: Option<&[u8]>) -> String {
    let Some(name) = name else {
        return "none".into();
    };
    let text = String::from_utf8_lossy(name);
    let mut cut: String = text.chars().take(QUOTE_MAX).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

impl Header {
    /// Checks that the image names exactly `backing` as its backing file, in
    /// `backing_format`, and no other file.
    pub fn check(&self, backing: &str, backing_format: &str) -> Result<(), HeaderDefect> {
        if self.data_file {
            return Err(HeaderDefect::DataFile);
        }
        if self.unknown_features != 0 {
            return Err(HeaderDefect::UnknownFeatures(self.unknown_features));
        }
        if self.backing_file.as_deref() != Some(backing.as_bytes()) {
            return Err(HeaderDefect::BackingFile {
                found: quote(self.backing_file.as_deref()),
                expected: quote(Some(backing.as_bytes())),
            });
        }
        if self.backing_format.as_deref() != Some(backing_format.as_bytes()) {
            return Err(HeaderDefect::BackingFormat {
                found: quote(self.backing_format.as_deref()),
                expected: quote(Some(backing_format.as_bytes())),
            });
        }
        Ok(())
    }

    /// Checks that the image names no other file at all (a base image from a store).
    pub fn check_standalone(&self) -> Result<(), HeaderDefect> {
        if self.data_file {
            return Err(HeaderDefect::DataFile);
        }
        if self.unknown_features != 0 {
            return Err(HeaderDefect::UnknownFeatures(self.unknown_features));
        }
        if self.backing_file.is_some() {
            return Err(HeaderDefect::BackingFile {
                found: quote(self.backing_file.as_deref()),
                expected: "none".into(),
            });
        }
        Ok(())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the header of the qcow2 image at `path` (its first cluster, at most 2 MiB).
pub fn read(path: &Path) -> Result<Header, HeaderDefect> {
    let unreadable = |e: std::io::Error| HeaderDefect::Unreadable(e.to_string());
    let f = std::fs::File::open(path).map_err(unreadable)?;
    let mut head = vec![0u8; V3_HEADER_LEN];
    let n = read_up_to(&f, &mut head).map_err(unreadable)?;
    head.truncate(n);
    if head.len() < 4 || &head[..4] != MAGIC {
        return Err(HeaderDefect::NotQcow2);
    }
    if head.len() < V2_HEADER_LEN {
        return Err(HeaderDefect::Malformed("truncated"));
    }
    let cluster_bits = be32(&head, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err(HeaderDefect::Malformed("cluster size out of range"));
    }
    let mut cluster = vec![0u8; 1 << cluster_bits];
    let n = read_up_to(&f, &mut cluster).map_err(unreadable)?;
    cluster.truncate(n);
    parse(&cluster)
}

/// Reads from offset 0 until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(f: &std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Parses a header from the image's first cluster (or all of a shorter file).
pub fn parse(b: &[u8]) -> Result<Header, HeaderDefect> {
    if b.len() < 4 || &b[..4] != MAGIC {
        return Err(HeaderDefect::NotQcow2);
    }
    if b.len() < V2_HEADER_LEN {
        return Err(HeaderDefect::Malformed("truncated"));
    }
    let version = be32(b, 4);
    let (header_len, incompatible) = match version {
        2 => (V2_HEADER_LEN, 0),
        3 => {
            if b.len() < V3_HEADER_LEN {
                return Err(HeaderDefect::Malformed("truncated"));
            }
            (be32(b, 100) as usize, be64(b, 72))
        }
        _ => return Err(HeaderDefect::Malformed("unknown version")),
    };
    if header_len < V2_HEADER_LEN || header_len > b.len() {
        return Err(HeaderDefect::Malformed("header length out of range"));
    }
    let backing_offset = be64(b, 8);
    let backing_size = be32(b, 16);
    let backing_file = match backing_offset {
        0 => None,
        off => {
            if backing_size == 0 || backing_size > MAX_BACKING_NAME {
                return Err(HeaderDefect::Malformed("backing file name length"));
            }
            let start = usize::try_from(off)
                .ok()
                .filter(|s| *s >= header_len)
                .ok_or(HeaderDefect::Malformed("backing file name offset"))?;
            let end = start + backing_size as usize;
            Some(
                b.get(start..end)
                    .ok_or(HeaderDefect::Malformed(
                        "backing file name outside the first cluster",
                    ))?
                    .to_vec(),
            )
        }
    };
    // Extensions run from the end of the header to the end marker, and QEMU reads them
    // no further than the backing file name. Reading past it here is only stricter.
    let mut header = Header {
        backing_file,
        backing_format: None,
        data_file: incompatible & INCOMPATIBLE_DATA_FILE != 0,
        unknown_features: incompatible & !(KNOWN_SAFE_INCOMPATIBLE | INCOMPATIBLE_DATA_FILE),
    };
    let mut at = header_len;
    loop {
        if at + 8 > b.len() {
            return Err(HeaderDefect::Malformed(
                "header extensions run past the cluster",
            ));
        }
        let (kind, len) = (be32(b, at), be32(b, at + 4) as usize);
        if kind == EXT_END {
            break;
        }
        let data = b
            .get(at + 8..at + 8 + len)
            .ok_or(HeaderDefect::Malformed("header extension past the cluster"))?;
        match kind {
            EXT_BACKING_FORMAT => header.backing_format = Some(data.to_vec()),
            EXT_DATA_FILE => header.data_file = true,
            _ => {}
        }
        at += 8 + len.next_multiple_of(8);
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header as `qemu-img create -b BACKING -F FORMAT` writes it, in a
    /// 64 KiB cluster, with optional extra extensions and incompatible features.
    fn image(
        backing: Option<&str>,
        format: Option<&str>,
        extra: &[(u32, &[u8])],
        incompat: u64,
    ) -> Vec<u8> {
        let mut b = vec![0u8; 64 << 10];
        b[..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[72..80].copy_from_slice(&incompat.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        let mut at = 112;
        let mut ext = |b: &mut Vec<u8>, kind: u32, data: &[u8]| {
            b[at..at + 4].copy_from_slice(&kind.to_be_bytes());
            b[at + 4..at + 8].copy_from_slice(&(data.len() as u32).to_be_bytes());
            b[at + 8..at + 8 + data.len()].copy_from_slice(data);
            at += 8 + data.len().next_multiple_of(8);
        };
        if let Some(f) = format {
            ext(&mut b, EXT_BACKING_FORMAT, f.as_bytes());
        }
        for (kind, data) in extra {
            ext(&mut b, *kind, data);
        }
        ext(&mut b, EXT_END, &[]);
        if let Some(name) = backing {
            let off = at + 64;
            b[8..16].copy_from_slice(&(off as u64).to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b[off..off + name.len()].copy_from_slice(name.as_bytes());
        }
        b
    }

    #[test]
    fn thaws_own_layer_passes() {
        let h = parse(&image(Some("d0.0.qcow2"), Some("qcow2"), &[], 0)).unwrap();
        h.check("d0.0.qcow2", "qcow2").unwrap();
        let h = parse(&image(Some("../guest/base0"), Some("raw"), &[], 1)).unwrap();
        h.check("../guest/base0", "raw").unwrap();
    }

    #[test]
    fn a_backing_name_pointing_at_a_host_file_is_refused() {
        let h = parse(&image(Some("/etc/hostname"), Some("raw"), &[], 0)).unwrap();
        let err = h.check("d0.0.qcow2", "qcow2").unwrap_err();
        assert!(matches!(err, HeaderDefect::BackingFile { .. }), "{err}");
        assert!(err.to_string().contains("\"/etc/hostname\""), "{err}");
        // A long name is quoted short.
        let long = format!("/{}", "a".repeat(1000));
        let h = parse(&image(Some(&long), Some("raw"), &[], 0)).unwrap();
        let err = h.check("d0.0.qcow2", "qcow2").unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        // A name relative but elsewhere, or a json: pseudo-protocol.
        for name in [
            "../../../../etc/hostname",
            "json:{\"file.filename\":\"/etc/hostname\"}",
        ] {
            let h = parse(&image(Some(name), Some("qcow2"), &[], 0)).unwrap();
            assert!(h.check("d0.0.qcow2", "qcow2").is_err(), "{name}");
        }
    }

    #[test]
    fn a_missing_or_other_backing_format_is_refused() {
        // Without the extension QEMU probes the backing file's format.
        let h = parse(&image(Some("d0.0.qcow2"), None, &[], 0)).unwrap();
        assert!(matches!(
            h.check("d0.0.qcow2", "qcow2"),
            Err(HeaderDefect::BackingFormat { .. })
        ));
        let h = parse(&image(Some("../guest/base0"), Some("qcow2"), &[], 0)).unwrap();
        assert!(matches!(
            h.check("../guest/base0", "raw"),
            Err(HeaderDefect::BackingFormat { .. })
        ));
    }

    #[test]
    fn an_external_data_file_or_unknown_feature_is_refused() {
        let named = image(
            Some("d0.0.qcow2"),
            Some("qcow2"),
            &[(EXT_DATA_FILE, b"/etc/hostname")],
            1 << 2,
        );
        let h = parse(&named).unwrap();
        assert_eq!(h.check("d0.0.qcow2", "qcow2"), Err(HeaderDefect::DataFile));
        // The extension alone, or the bit alone.
        let ext = image(
            Some("d0.0.qcow2"),
            Some("qcow2"),
            &[(EXT_DATA_FILE, b"/x")],
            0,
        );
        assert_eq!(
            parse(&ext).unwrap().check_standalone(),
            Err(HeaderDefect::DataFile)
        );
        let bit = image(None, None, &[], 1 << 2);
        assert_eq!(
            parse(&bit).unwrap().check_standalone(),
            Err(HeaderDefect::DataFile)
        );
        let future = image(None, None, &[], 1 << 9);
        assert_eq!(
            parse(&future).unwrap().check_standalone(),
            Err(HeaderDefect::UnknownFeatures(1 << 9))
        );
        parse(&image(None, None, &[], 0))
            .unwrap()
            .check_standalone()
            .unwrap();
        let backed = parse(&image(Some("/etc/hostname"), None, &[], 0)).unwrap();
        assert!(backed.check_standalone().is_err());
    }

    #[test]
    fn malformed_headers_are_refused_not_panicked_on() {
        assert_eq!(parse(b"not qcow2"), Err(HeaderDefect::NotQcow2));
        let good = image(Some("d0.0.qcow2"), Some("qcow2"), &[], 0);
        for cut in [10, 80, 120] {
            assert!(parse(&good[..cut]).is_err(), "{cut}");
        }
        let mut far = good.clone();
        far[8..16].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert!(matches!(parse(&far), Err(HeaderDefect::Malformed(_))));
        let mut no_end = good.clone();
        no_end[112..].fill(0xff);
        assert!(parse(&no_end).is_err());
    }

    /// What qemu-img itself writes reads back as thaw's names.
    #[test]
    fn qemu_img_layers_read_back() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("base.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let l0 = d.path().join(crate::disk::layer_name(0, 0));
        crate::disk::create_overlay(&raw, crate::spec::DiskFormat::Raw, &l0).unwrap();
        read(&l0)
            .unwrap()
            .check(raw.to_str().unwrap(), "raw")
            .unwrap();
        let l1 = d.path().join(crate::disk::layer_name(0, 1));
        crate::disk::create_layer_on(0, 0, 1 << 20, &l1).unwrap();
        read(&l1).unwrap().check("d0.0.qcow2", "qcow2").unwrap();
        assert_eq!(read(&raw), Err(HeaderDefect::NotQcow2));
    }
}
