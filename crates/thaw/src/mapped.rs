//! The RAM image inside a QEMU `mapped-ram` migration file.
//!
//! With the `mapped-ram` capability (QEMU >= 9.0) a migration to a file writes every RAM
//! page of a RAM block at a fixed offset: `pages_offset + guest offset`, where
//! `pages_offset` is 1 MiB aligned. The region of the guest's main RAM block is therefore
//! a raw, sparse RAM image (zero pages are never written), and the rest of the file is
//! the device state and the small RAM blocks (firmware, option ROMs, ACPI tables).
//!
//! thaw uses such a file as both halves of a snapshot: a restore maps the RAM region
//! *private* (`memory-backend-file,offset=...,share=off`) and loads the file with
//! `migrate-incoming`. Two fix-ups make that correct and fast, done once when the
//! snapshot is taken ([`seal`]):
//!
//! - A page written non-zero in one pass of a live migration and zero at the end has its
//!   bit cleared in the block's bitmap but its old bytes still in the file. Such pages
//!   are punched out, so the region reads exactly as guest RAM did at the pause.
//! - The main block's bitmap is zeroed, so the incoming side loads none of its pages:
//!   they are already in the private mapping. Restore cost stays independent of RAM size.
//!
//! The layout is read from the stream header of the `ram` section (see QEMU's
//! `docs/devel/migration/mapped-ram.rst`): per block its id, used length and a
//! `MappedRamHeader { version: u32, page_size: u64, bitmap_offset: u64, pages_offset:
//! u64 }`; the next block's header follows its pages region.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{FallocateFlags, SeekFrom};
use serde::{Deserialize, Serialize};

use crate::fsutil::IoError;

/// The id of the guest's main RAM block: the memory backend thaw names `ram0`.
pub const MAIN_BLOCK: &str = "ram0";

const PAGE: u64 = 4096;
const ALIGN: u64 = 1 << 20;
const RAM_SAVE_FLAG_MEM_SIZE: u64 = 0x04;

/// One RAM block of a mapped-ram file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub id: String,
    pub len: u64,
    pub bitmap_offset: u64,
    pub pages_offset: u64,
}

/// Where the guest RAM image lives in a mapped-ram file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamRegion {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MappedError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{path} is not a mapped-ram migration file: {why}")]
    Format {
        path: std::path::PathBuf,
        why: String,
    },
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Reads the RAM block layout of a mapped-ram migration file.
pub fn blocks(path: &Path) -> Result<Vec<Block>, MappedError> {
    let io = |step| move |source| MappedError::Io(IoError::new(step, path.to_owned(), source));
    let f = File::open(path).map_err(io("open"))?;
    let file_len = f.metadata().map_err(io("read"))?.len();
    parse_blocks(file_len, &mut |buf, at| read_at_most(&f, buf, at)).map_err(|e| match e {
        ParseError::Io(source) => io("read")(source),
        ParseError::Format(why) => MappedError::Format {
            path: path.to_owned(),
            why,
        },
    })
}

/// [`blocks`] of a file held in memory.
pub fn blocks_in(bytes: &[u8]) -> Result<Vec<Block>, String> {
    let mut read = |buf: &mut [u8], at: u64| {
        let start = usize::try_from(at).unwrap_or(usize::MAX).min(bytes.len());
        let n = buf.len().min(bytes.len() - start);
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        Ok(n)
    };
    blocks_with(bytes.len() as u64, &mut read)
}

/// [`blocks`] of a file of `file_len` bytes that `read(buf, offset)` reads (filling
/// what it can, returning how much): for fuzzing, with files far larger than memory.
pub fn blocks_with(
    file_len: u64,
    read: &mut dyn FnMut(&mut [u8], u64) -> std::io::Result<usize>,
) -> Result<Vec<Block>, String> {
    parse_blocks(file_len, read).map_err(|e| match e {
        ParseError::Io(e) => e.to_string(),
        ParseError::Format(why) => why,
    })
}

enum ParseError {
    Io(std::io::Error),
    Format(String),
}

/// More RAM blocks than any machine has: a header claiming more is not QEMU's.
const MAX_BLOCKS: usize = 4096;

/// The layout parser behind [`blocks`]: `read(buf, offset)` reads what it can of
/// `file_len` bytes. Every offset and length is checked with overflow in mind, and
/// every block must be non-empty and lie after the previous one, so that no input
/// makes it panic, loop or allocate without bound.
fn parse_blocks(
    file_len: u64,
    read: &mut dyn FnMut(&mut [u8], u64) -> std::io::Result<usize>,
) -> Result<Vec<Block>, ParseError> {
    let bad = |why: String| ParseError::Format(why);
    let mut head = vec![0u8; 64 << 10];
    let n = read(&mut head, 0).map_err(ParseError::Io)?;
    head.truncate(n);
    if head.len() < 8 || &head[..4] != b"QEVM" {
        return Err(bad("no QEVM magic".into()));
    }
    // The `ram` section starts: QEMU_VM_SECTION_START (1), section id (4 bytes), the
    // id string "ram" with its length byte, instance id and version (4 bytes each),
    // then the total RAM size with the MEM_SIZE flag.
    let start = (0..head.len().saturating_sub(24))
        .find(|&i| head[i] == 1 && &head[i + 5..i + 9] == b"\x03ram")
        .ok_or_else(|| bad("no ram section in the first 64 KiB".into()))?;
    let mut at = start + 9 + 8;
    let total_word = be64(&head[at..]);
    if total_word & RAM_SAVE_FLAG_MEM_SIZE == 0 {
        return Err(bad(
            "the ram section does not start with the RAM size".into()
        ));
    }
    let total = total_word & !(PAGE - 1);
    at += 8;
    let mut pos = at as u64;
    let mut blocks = Vec::new();
    let mut sum = 0u64;
    while sum < total {
        if blocks.len() == MAX_BLOCKS {
            return Err(bad(format!("more than {MAX_BLOCKS} RAM blocks")));
        }
        // Block header: id length, id, used length, mapped-ram header (4+8+8+8).
        let mut hdr = [0u8; 1 + 255 + 8 + 28];
        let got = read(&mut hdr, pos).map_err(ParseError::Io)?;
        let idlen = hdr[0] as usize;
        if got < 1 + idlen + 36 {
            return Err(bad(format!("block header at {pos} is cut short")));
        }
        let id = String::from_utf8_lossy(&hdr[1..1 + idlen]).into_owned();
        let h = &hdr[1 + idlen..];
        let len = be64(h);
        let version = be32(&h[8..]);
        let page_size = be64(&h[12..]);
        let bitmap_offset = be64(&h[20..]);
        let pages_offset = be64(&h[28..]);
        if version != 1 || page_size != PAGE {
            return Err(bad(format!(
                "block {id}: mapped-ram header version {version}, page size {page_size}"
            )));
        }
        // An empty block, or one whose pages do not come after its own header, would
        // have the next header read at the same place again: a crafted file looped
        // here forever. Offsets near u64::MAX overflowed.
        let header_end = pos + (1 + idlen + 36) as u64;
        let bitmap_end = bitmap_offset.checked_add(len / PAGE / 8);
        let pages_end = pages_offset.checked_add(len);
        let consistent = len > 0
            && len.is_multiple_of(PAGE)
            && pages_offset.is_multiple_of(ALIGN)
            && bitmap_offset >= header_end
            && bitmap_end.is_some_and(|e| e <= pages_offset)
            && pages_end.is_some_and(|e| e <= file_len);
        if !consistent {
            return Err(bad(format!("block {id}: inconsistent offsets")));
        }
        sum = sum
            .checked_add(len)
            .ok_or_else(|| bad("block sizes overflow".into()))?;
        pos = pages_offset + len;
        blocks.push(Block {
            id,
            len,
            bitmap_offset,
            pages_offset,
        });
    }
    if sum != total {
        return Err(bad(format!("blocks add up to {sum} bytes, not {total}")));
    }
    Ok(blocks)
}

fn read_at_most(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Makes a freshly written mapped-ram file a snapshot's memory: pages the final bitmap
/// of the main block does not mark are punched out, then that bitmap is zeroed so a
/// restore loads none of the main block's pages. Returns the main block's region.
pub fn seal(path: &Path) -> Result<RamRegion, MappedError> {
    let io = |step| move |source| MappedError::Io(IoError::new(step, path.to_owned(), source));
    let main = blocks(path)?
        .into_iter()
        .find(|b| b.id == MAIN_BLOCK)
        .ok_or_else(|| MappedError::Format {
            path: path.to_owned(),
            why: format!("no RAM block {MAIN_BLOCK}"),
        })?;
    let f = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open"))?;
    let pages = main.len / PAGE;
    let mut bitmap = vec![0u8; (pages / 8) as usize];
    f.read_exact_at(&mut bitmap, main.bitmap_offset)
        .map_err(io("read the bitmap of"))?;
    // QEMU's bitmap is an array of host-endian longs; on x86_64 bit i of the array is
    // bit (i % 8) of byte (i / 8).
    let written = |page: u64| bitmap[(page / 8) as usize] & (1 << (page % 8)) != 0;
    let region_end = main.pages_offset + main.len;
    let mut pos = main.pages_offset;
    while pos < region_end {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(d) if d < region_end => d,
            Ok(_) | Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io("scan")(e.into())),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data))
            .map_err(|e| io("scan")(e.into()))?
            .min(region_end);
        let first = (data - main.pages_offset) / PAGE;
        let last = (hole - main.pages_offset).div_ceil(PAGE);
        let mut page = first;
        while page < last {
            if written(page) {
                page += 1;
                continue;
            }
            let run = page;
            while page < last && !written(page) {
                page += 1;
            }
            rustix::fs::fallocate(
                &f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                main.pages_offset + run * PAGE,
                (page - run) * PAGE,
            )
            .map_err(|e| io("punch stale pages in")(e.into()))?;
        }
        pos = hole;
    }
    f.write_all_at(&vec![0u8; bitmap.len()], main.bitmap_offset)
        .map_err(io("clear the bitmap of"))?;
    f.sync_all().map_err(io("sync"))?;
    Ok(RamRegion {
        offset: main.pages_offset,
        len: main.len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a file shaped like QEMU's: header, configuration section, the ram
    /// section's block list with mapped-ram headers, pages at 1 MiB boundaries.
    fn fake(path: &Path, blocks: &[(&str, u64)]) -> Vec<Block> {
        let f = File::create(path).unwrap();
        let mut head = b"QEVM\0\0\0\x03\x07\0\0\0\x0epc-i440fx-10.0".to_vec();
        head.extend_from_slice(&[1, 0, 0, 0, 2, 3]);
        head.extend_from_slice(b"ram");
        head.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4]);
        let total: u64 = blocks.iter().map(|b| b.1).sum();
        head.extend_from_slice(&(total | RAM_SAVE_FLAG_MEM_SIZE).to_be_bytes());
        f.write_all_at(&head, 0).unwrap();
        let mut pos = head.len() as u64;
        let mut out = Vec::new();
        for (id, len) in blocks {
            let mut h = vec![id.len() as u8];
            h.extend_from_slice(id.as_bytes());
            h.extend_from_slice(&len.to_be_bytes());
            let bitmap_offset = pos + h.len() as u64 + 28;
            let pages_offset = (bitmap_offset + len / PAGE / 8).div_ceil(ALIGN) * ALIGN;
            h.extend_from_slice(&1u32.to_be_bytes());
            h.extend_from_slice(&PAGE.to_be_bytes());
            h.extend_from_slice(&bitmap_offset.to_be_bytes());
            h.extend_from_slice(&pages_offset.to_be_bytes());
            f.write_all_at(&h, pos).unwrap();
            pos = pages_offset + len;
            f.set_len(pos + 100).unwrap();
            out.push(Block {
                id: id.to_string(),
                len: *len,
                bitmap_offset,
                pages_offset,
            });
        }
        out
    }

    #[test]
    fn reads_the_block_layout() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("memory");
        let want = fake(&p, &[("ram0", 64 << 20), ("pc.bios", 256 << 10)]);
        assert_eq!(blocks(&p).unwrap(), want);
        assert!(want[0].pages_offset.is_multiple_of(ALIGN));
    }

    #[test]
    fn seal_punches_unmarked_pages_and_clears_the_bitmap() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("memory");
        let b = fake(&p, &[("ram0", 16 << 20), ("pc.bios", 256 << 10)]).remove(0);
        let f = File::options().read(true).write(true).open(&p).unwrap();
        // Pages 0..4 hold data; page 1 became zero in a later pass (bit cleared).
        f.write_all_at(&vec![0xAB; 4 * PAGE as usize], b.pages_offset)
            .unwrap();
        f.write_all_at(&[0b0000_1101], b.bitmap_offset).unwrap();
        let region = seal(&p).unwrap();
        assert_eq!(
            region,
            RamRegion {
                offset: b.pages_offset,
                len: b.len
            }
        );
        let mut page = vec![0u8; PAGE as usize];
        for (i, want) in [(0u64, 0xAB), (1, 0), (2, 0xAB), (3, 0xAB)] {
            f.read_exact_at(&mut page, b.pages_offset + i * PAGE)
                .unwrap();
            assert!(page.iter().all(|&x| x == want), "page {i}");
        }
        let mut bm = [0u8; 1];
        f.read_exact_at(&mut bm, b.bitmap_offset).unwrap();
        assert_eq!(bm[0], 0, "the bitmap is cleared");
    }

    /// The start of a mapped-ram file without blocks: magic, version, the ram
    /// section's header and the total RAM size word (33 bytes).
    fn ram_section(total: u64) -> Vec<u8> {
        let mut f = b"QEVM\0\0\0\x03".to_vec();
        f.extend_from_slice(&[1, 0, 0, 0, 2, 3]);
        f.extend_from_slice(b"ram");
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4]);
        f.extend_from_slice(&(total | RAM_SAVE_FLAG_MEM_SIZE).to_be_bytes());
        f
    }

    fn block_header(id: &str, len: u64, bitmap_offset: u64, pages_offset: u64) -> Vec<u8> {
        let mut h = vec![id.len() as u8];
        h.extend_from_slice(id.as_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&1u32.to_be_bytes());
        h.extend_from_slice(&PAGE.to_be_bytes());
        h.extend_from_slice(&bitmap_offset.to_be_bytes());
        h.extend_from_slice(&pages_offset.to_be_bytes());
        h
    }

    /// Blocks of length 0 whose pages "start" at 1 MiB, where the same header is:
    /// the next header was read at the same offset again, forever.
    #[test]
    fn empty_blocks_pointing_at_themselves_are_refused_not_looped_on() {
        let mut f = ram_section(64 << 20);
        f.extend_from_slice(&block_header("ram0", 0, ALIGN, ALIGN));
        f.resize(ALIGN as usize, 0);
        f.extend_from_slice(&block_header("ram0", 0, ALIGN, ALIGN));
        f.resize(ALIGN as usize + 4096, 0);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("memory");
        std::fs::write(&p, &f).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(blocks(&p).map_err(|e| e.to_string()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("blocks() returned");
        assert!(r.unwrap_err().contains("inconsistent offsets"));
        assert!(blocks_in(&f).unwrap_err().contains("inconsistent offsets"));
    }

    /// Offsets and lengths near u64::MAX are refused, not overflowed.
    #[test]
    fn huge_offsets_are_refused() {
        let mut g = ram_section(!(PAGE - 1));
        g.extend_from_slice(&block_header(
            "ram0",
            !(PAGE - 1),
            u64::MAX - 8,
            !(ALIGN - 1),
        ));
        assert!(blocks_in(&g).is_err());
        let mut h = ram_section(8 << 20);
        h.extend_from_slice(&block_header("ram0", 4 << 20, 100, ALIGN));
        h.resize((ALIGN + (4 << 20)) as usize, 0);
        h.extend_from_slice(&block_header("pc.bios", !(PAGE - 1), 0, 0));
        assert!(blocks_in(&h).is_err());
    }

    #[test]
    fn other_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, b"not a migration stream").unwrap();
        assert!(matches!(blocks(&p), Err(MappedError::Format { .. })));
        std::fs::write(&p, b"QEVM\0\0\0\x03 nothing else").unwrap();
        assert!(matches!(blocks(&p), Err(MappedError::Format { .. })));
    }
}
