//! A VM's serial console, kept bounded.
//!
//! QEMU writes the serial port to a socket (`-chardev socket,fd=0`: its stdin is one
//! end of a socket pair); a console keeper process ([`crate::sys::start_console_keeper`])
//! reads the other end and appends to `console.log` in the VM's directory. When that
//! file reaches [`SEGMENT`] bytes it becomes `console.log.1` and a new one starts, so
//! the console on disk is the newest 1-2 MiB, however much the guest writes (a guest
//! flooding its console wrote 14 MB a minute into an unbounded file before).
//!
//! Why a keeper process rather than QEMU's `ringbuf` chardev: reading a ring buffer goes
//! through QMP, which serves one client at a time and consumes what it returns, and the
//! ring dies with QEMU, taking the console of a boot that crashed with it. The keeper
//! needs nothing from QMP and leaves the file behind. The guest never waits for it:
//! QEMU's socket chardev does not block, and if the keeper is gone QEMU drops the
//! output. The keeper ends by itself when QEMU exits (end of file on its socket).

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The size at which the console log is rotated.
pub const SEGMENT: u64 = 1 << 20;

/// The rotated (older) part of the console log `log`.
pub fn older(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Starts a console keeper writing to `log` (emptied first) and returns the end of its
/// socket that QEMU gets as its stdin.
pub fn start_keeper(log: &Path) -> std::io::Result<OwnedFd> {
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let dir = log.parent().unwrap_or(Path::new("."));
    let name = log.file_name().unwrap_or_default();
    let old = older(Path::new(name));
    let cname = CString::new(name.as_bytes()).map_err(std::io::Error::other)?;
    let cold = CString::new(old.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    std::fs::File::create(log)?;
    match std::fs::remove_file(older(log)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let (qemu_end, keeper_end) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    crate::sys::start_console_keeper(keeper_end, dir, &cname, &cold, SEGMENT)?;
    Ok(qemu_end)
}

/// The console log `log` as kept: the rotated part, then the current one.
pub fn read(log: &Path) -> Vec<u8> {
    let mut text = std::fs::read(older(log)).unwrap_or_default();
    text.extend(std::fs::read(log).unwrap_or_default());
    text
}

/// Follows a console log as its keeper writes and rotates it (`thaw logs -f`): the
/// first [`Follow::read_new`] returns what [`read`] would, each later one what was written
/// since, across rotations.
pub struct Follow {
    log: PathBuf,
    /// The rotated part, returned by the first `read_new`.
    pending: Vec<u8>,
    /// The current part, open at where the last `read_new` stopped, and its inode.
    file: Option<(std::fs::File, u64)>,
}

impl Follow {
    pub fn new(log: &Path) -> Follow {
        Follow {
            log: log.to_owned(),
            pending: std::fs::read(older(log)).unwrap_or_default(),
            file: None,
        }
    }

    fn open(&self) -> Option<(std::fs::File, u64)> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(&self.log).ok()?;
        let ino = file.metadata().ok()?.ino();
        Some((file, ino))
    }

    /// What was written since the last call (empty when nothing was).
    pub fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let mut out = std::mem::take(&mut self.pending);
        // The inode at the path before reading: if it is another file than ours, the
        // keeper rotated, and ours is complete once read to its end.
        let now = std::fs::metadata(&self.log).ok().map(|m| m.ino());
        if self.file.is_none() {
            self.file = self.open();
        }
        if let Some((file, ino)) = &mut self.file {
            file.read_to_end(&mut out)?;
            if now.is_some_and(|n| n != *ino) {
                self.file = self.open();
                if let Some((file, _)) = &mut self.file {
                    file.read_to_end(&mut out)?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Following a log returns every byte once, in order, across a rotation.
    #[test]
    fn follow_returns_what_is_written_across_rotations() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        std::fs::write(older(&log), b"old\n").unwrap();
        std::fs::write(&log, b"one\n").unwrap();
        let mut f = Follow::new(&log);
        assert_eq!(f.read_new().unwrap(), b"old\none\n");
        assert_eq!(f.read_new().unwrap(), b"");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"two\n")
            .unwrap();
        assert_eq!(f.read_new().unwrap(), b"two\n");
        // Rotated as the keeper does: more written to the old file, renamed, a new one.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        std::fs::rename(&log, older(&log)).unwrap();
        std::fs::write(&log, b"four\n").unwrap();
        assert_eq!(f.read_new().unwrap(), b"three\nfour\n");
        assert_eq!(f.read_new().unwrap(), b"");
    }

    /// The keeper rotates at SEGMENT, keeps the newest output and ends with its writer.
    #[test]
    fn the_keeper_keeps_the_newest_output_within_two_segments() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        let fd = start_keeper(&log).unwrap();
        let mut w = std::os::unix::net::UnixStream::from(fd);
        let line = [b'x'; 1023];
        for i in 0..5 * SEGMENT / 1024 {
            w.write_all(&line).unwrap();
            w.write_all(if i % 2 == 0 { b"\n" } else { b"\r" }).unwrap();
        }
        w.write_all(b"THE-END\n").unwrap();
        drop(w);
        // The keeper ends at end of file; wait for the last line to land (guard only).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !read(&log).ends_with(b"THE-END\n") {
            assert!(
                std::time::Instant::now() < deadline,
                "the keeper lost the end"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let kept = read(&log);
        assert!(
            kept.len() as u64 <= 2 * SEGMENT + 64 * 1024,
            "{}",
            kept.len()
        );
        assert!(kept.len() as u64 >= SEGMENT, "{}", kept.len());
    }
}
