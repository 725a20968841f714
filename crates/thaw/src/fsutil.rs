//! File helpers: sparse-aware copies and hashing, and (from `thaw_store::fsio`, their
//! one home) atomic writes, directory fsync, capped reads, file locks and [`IoError`].

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rustix::fs::SeekFrom;

pub use thaw_store::fsio::{
    fsync_dir, read_file_capped, write_atomic, write_atomic_unsynced, Context, FileLock, IoError,
    LockMode,
};

/// Makes everything this process creates from now on private to its user: files
/// 0600, directories 0700 (umask 077). thaw's state is guest RAM, disks and sockets
/// that control VMs; a default umask (022) left all of it readable by every local
/// user. Inherited by the QEMU processes thaw starts, so their RAM files, logs and
/// sockets are private too. Called first thing by the `thaw` and `thawd` binaries.
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Writes `bytes` over the file at `path` (made if missing) from its start and cuts
/// it to their length: not atomic (a reader or a crash may see a mix), but the file
/// keeps its blocks, where replacing it frees them.
pub fn overwrite(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all_at(bytes, 0)?;
    f.set_len(bytes.len() as u64)
}

/// How [`copy_sparse`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// Shared extents (FICLONE): no data copied.
    Reflink,
    /// Only the data regions copied; holes stay holes.
    Sparse,
}

/// Copies `src` to a new file `dst`, sharing extents where the filesystem can
/// (reflink) and otherwise copying only the regions that hold data, so an 8 GiB RAM
/// file with 200 MiB in use costs 200 MiB. `dst` is synced before returning.
pub fn copy_sparse(src: &Path, dst: &Path) -> std::io::Result<CopyMethod> {
    let input = File::open(src)?;
    let output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    let len = input.metadata()?.len();
    let method = if rustix::fs::ioctl_ficlone(&output, &input).is_ok() {
        CopyMethod::Reflink
    } else {
        let mut pos = 0u64;
        while pos < len {
            let start = match rustix::fs::seek(&input, SeekFrom::Data(pos)) {
                Ok(s) => s,
                Err(rustix::io::Errno::NXIO) => break, // no data after pos
                Err(e) => return Err(e.into()),
            };
            let end =
                rustix::fs::seek(&input, SeekFrom::Hole(start)).map_err(std::io::Error::from)?;
            copy_range(&input, &output, start, end - start)?;
            pos = end;
        }
        CopyMethod::Sparse
    };
    output.set_len(len)?;
    output.sync_all()?;
    Ok(method)
}

fn copy_range(input: &File, output: &File, start: u64, len: u64) -> std::io::Result<()> {
    let mut off_in = start;
    let mut off_out = start;
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        let n = match rustix::fs::copy_file_range(
            input,
            Some(&mut off_in),
            output,
            Some(&mut off_out),
            chunk,
        ) {
            Ok(n) => n,
            // Between two file systems (a lazily served snapshot's file, on FUSE, to
            // a clone's directory) the kernel does not copy: read and write.
            Err(
                rustix::io::Errno::XDEV
                | rustix::io::Errno::OPNOTSUPP
                | rustix::io::Errno::NOSYS
                | rustix::io::Errno::INVAL,
            ) => return copy_range_by_reads(input, output, off_in, left),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break; // the source shrank under us
        }
        left -= n as u64;
    }
    Ok(())
}

fn copy_range_by_reads(input: &File, output: &File, start: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut pos = start;
    let end = start + len;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = input.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            break; // the source shrank under us
        }
        output.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// BLAKE3 of a whole file, as hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// A hash of a file's content that costs nothing for holes and does not depend on
/// where the filesystem keeps them: BLAKE3 over the file size and then, for every
/// 4 KiB page that is not all zeros, its offset and bytes. Pages in `exclude` (an
/// offset and a length, page aligned) are left out. Used for RAM images and migration
/// files, which are gigabytes of mostly holes.
pub fn content_hash(path: &Path, exclude: Option<(u64, u64)>) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let (ex_start, ex_end) = exclude.map(|(o, l)| (o, o + l)).unwrap_or((0, 0));
    let mut hasher = blake3::Hasher::new();
    hasher.update(&len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data)).map_err(std::io::Error::from)?;
        // Whole pages, so that a page split across extents hashes the same.
        let mut at = data - data % PAGE as u64;
        while at < hole {
            if at >= ex_start && at < ex_end {
                at = ex_end;
                continue;
            }
            let want = (buf.len() as u64).min(hole.div_ceil(PAGE as u64) * PAGE as u64 - at);
            let want = want.min(if at < ex_start {
                ex_start - at
            } else {
                u64::MAX
            }) as usize;
            let n = f.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    hasher.update(&(at + (i * PAGE) as u64).to_le_bytes());
                    hasher.update(page);
                }
            }
            at += n as u64;
        }
        pos = hole.max(at);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Whether `path` (links followed) is on a FUSE file system (a lazily served file).
// `f_type`'s type differs between architectures: the cast is not always a no-op.
#[allow(clippy::unnecessary_cast)]
pub fn on_fuse(path: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type as i64 == FUSE_SUPER_MAGIC)
}

/// Bytes of data (not holes) a file has in `[start, end)`, by its extents.
pub fn data_bytes_in(path: &Path, start: u64, end: u64) -> std::io::Result<u64> {
    let f = File::open(path)?;
    let (mut pos, mut total) = (start, 0);
    while pos < end {
        let data = match rustix::fs::seek(&f, SeekFrom::Data(pos)) {
            Ok(d) if d < end => d,
            Ok(_) | Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(&f, SeekFrom::Hole(data)).map_err(std::io::Error::from)?;
        total += hole.min(end) - data;
        pos = hole;
    }
    Ok(total)
}

/// Bytes a file really occupies on disk (holes excluded).
pub fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom as StdSeek, Write};

    /// The fallback for file systems the kernel does not copy between (FUSE to ext4:
    /// EXDEV), used when a clone copies a lazily served snapshot's UEFI variables.
    #[test]
    fn a_range_copied_by_reads_is_the_same_bytes_at_the_same_offsets() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        std::fs::write(&a, &data).unwrap();
        let input = File::open(&a).unwrap();
        let output = File::create(&b).unwrap();
        output.set_len(data.len() as u64).unwrap();
        copy_range_by_reads(&input, &output, 12_345, 2_500_000).unwrap();
        let got = std::fs::read(&b).unwrap();
        assert_eq!(got[12_345..2_512_345], data[12_345..2_512_345]);
        assert!(got[..12_345].iter().all(|&x| x == 0));
        assert!(got[2_512_345..].iter().all(|&x| x == 0));
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("ram");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(StdSeek::Start(1 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(StdSeek::Start(40 << 20)).unwrap();
        f.write_all(b"tail data").unwrap();
        f.sync_all().unwrap();
        let dst = d.path().join("copy");
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(hash_file(&src).unwrap(), hash_file(&dst).unwrap());
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 64 << 20);
        assert!(
            allocated_bytes(&dst).unwrap() < 8 << 20,
            "holes stayed holes"
        );
        assert!(copy_sparse(&src, &dst).is_err(), "never overwrites");
    }

    #[test]
    fn content_hash_ignores_hole_layout_and_sees_every_byte() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        // Same content: one with a hole, one with the zeros written out.
        let fa = File::create(&a).unwrap();
        fa.set_len(1 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        fa.write_all_at(b"data", 300_000).unwrap();
        let mut bytes = vec![0u8; 1 << 20];
        bytes[300_000..300_004].copy_from_slice(b"data");
        std::fs::write(&b, &bytes).unwrap();
        let ha = content_hash(&a, None).unwrap();
        assert_eq!(ha, content_hash(&b, None).unwrap());
        // One flipped bit anywhere changes it; so does the size.
        bytes[7] = 1;
        std::fs::write(&b, &bytes).unwrap();
        assert_ne!(ha, content_hash(&b, None).unwrap());
        fa.set_len(2 << 20).unwrap();
        assert_ne!(ha, content_hash(&a, None).unwrap());
        // Excluded pages do not count.
        bytes[7] = 0;
        bytes[8192] = 9;
        std::fs::write(&b, &bytes).unwrap();
        fa.set_len(1 << 20).unwrap();
        assert_eq!(
            content_hash(&a, Some((8192, 4096))).unwrap(),
            content_hash(&b, Some((8192, 4096))).unwrap()
        );
    }

    #[test]
    fn overwrite_replaces_the_contents_of_a_longer_or_shorter_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vm.json");
        overwrite(&p, b"a new file").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"a new file");
        overwrite(&p, b"short").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"short");
        overwrite(&p, b"longer than before").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"longer than before");
    }
}
