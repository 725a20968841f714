//! File helpers: atomic writes, directory fsync, sparse-aware copies and hashing.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use rustix::fs::SeekFrom;

/// Writes `bytes` to `path` atomically: a temporary file beside it, `sync_all`,
/// `rename`, then `fsync` of the directory so the rename itself is durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a directory's entries (creations, renames) durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads at most `cap` bytes of a file; a longer file is an error, not a truncation.
pub fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let mut bytes = Vec::new();
    f.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes"),
        ));
    }
    Ok(bytes)
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
        let n = rustix::fs::copy_file_range(
            input,
            Some(&mut off_in),
            output,
            Some(&mut off_out),
            chunk,
        )
        .map_err(std::io::Error::from)?;
        if n == 0 {
            break; // the source shrank under us
        }
        left -= n as u64;
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

/// Bytes a file really occupies on disk (holes excluded).
pub fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom as StdSeek};

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two!").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp file left"
        );
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
    fn capped_read_refuses_large_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert_eq!(read_capped(&p, 100).unwrap().len(), 100);
        assert!(read_capped(&p, 99).is_err());
    }
}
