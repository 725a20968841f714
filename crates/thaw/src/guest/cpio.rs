//! A writer for the "newc" cpio format, the one the Linux kernel unpacks as an initramfs.
//!
//! Every entry is a 110-byte ASCII header (the magic `070701` and thirteen 8-digit hex
//! fields), the NUL-terminated name padded to a multiple of four bytes, then the data
//! padded the same way. The archive ends with an entry named `TRAILER!!!`.
//!
//! The writer does not invent parent directories: the kernel's unpacker does not create
//! them either, so the caller adds a directory entry before anything inside it. Names are
//! written without a leading `/`. Every entry has uid, gid and mtime 0, so the same input
//! gives a byte-identical archive.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a newc archive entry by entry; [`NewcWriter::finish`] adds the trailer.
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
}

/// The header fields of one entry that the caller chooses.
struct Header<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

impl<W: Write> NewcWriter<W> {
    pub fn new(out: W) -> Self {
        NewcWriter { out, next_ino: 1 }
    }

    /// Adds a directory. `perm` holds the permission bits only (e.g. `0o755`).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])
    }

    /// Adds a regular file with `data` as its contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// Adds a symbolic link; newc stores the target as the entry's data.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (e.g. `/dev/console`, 5:1).
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_entry(
            &Header {
                name: TRAILER,
                mode: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
            },
            0,
            &[],
        )?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') || name == TRAILER {
            return Err(invalid(format!("{path:?} cannot be a cpio entry name")));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| invalid(format!("{path} is larger than the 4 GiB newc allows")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.write_entry(
            &Header {
                name,
                mode,
                nlink,
                size,
                rdev,
            },
            ino,
            data,
        )
    }

    fn write_entry(&mut self, h: &Header<'_>, ino: u32, data: &[u8]) -> io::Result<()> {
        let namesize = u32::try_from(h.name.len() + 1)
            .map_err(|_| invalid(format!("{} is too long a cpio name", h.name)))?;
        let mut header = Vec::with_capacity(HEADER_LEN + h.name.len() + 4);
        header.extend_from_slice(MAGIC);
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check.
        for field in [
            ino, h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
        ] {
            header.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        header.extend_from_slice(h.name.as_bytes());
        header.push(0);
        header.resize(header.len() + pad4(header.len()), 0);
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        self.out.write_all(&[0; 3][..pad4(data.len())])?;
        Ok(())
    }
}

/// How many zero bytes bring `len` to a multiple of four.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One entry as read back from an archive.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Parsed {
        pub ino: u32,
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        pub nlink: u32,
        pub mtime: u32,
        pub rdev: (u32, u32),
        pub name: String,
        pub data: Vec<u8>,
    }

    /// A strict newc reader: checks magic, alignment, the name's NUL and the padding
    /// bytes, and that the archive ends right after the trailer.
    pub(crate) fn parse(mut buf: &[u8]) -> Vec<Parsed> {
        let total = buf.len();
        let mut entries = Vec::new();
        loop {
            assert_eq!((total - buf.len()) % 4, 0, "entry not 4-byte aligned");
            assert_eq!(&buf[..6], MAGIC, "bad magic");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(s.bytes().all(|b| b.is_ascii_hexdigit()), "field {s:?}");
                u32::from_str_radix(s, 16).unwrap()
            };
            let (size, namesize) = (field(6) as usize, field(11) as usize);
            assert_eq!(field(12), 0, "check field must be 0 for newc");
            let name_end = HEADER_LEN + namesize;
            assert_eq!(buf[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&buf[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_owned();
            let data_start = name_end + pad4(name_end);
            assert!(buf[name_end..data_start].iter().all(|&b| b == 0));
            let data_end = data_start + size;
            let next = data_end + pad4(data_end);
            assert!(buf[data_end..next].iter().all(|&b| b == 0));
            let entry = Parsed {
                ino: field(0),
                mode: field(1),
                uid: field(2),
                gid: field(3),
                nlink: field(4),
                mtime: field(5),
                rdev: (field(9), field(10)),
                name,
                data: buf[data_start..data_end].to_vec(),
            };
            buf = &buf[next..];
            if entry.name == TRAILER {
                assert!(buf.is_empty(), "bytes after the trailer");
                return entries;
            }
            entries.push(entry);
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut w = NewcWriter::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.file("/bin/busybox", 0o755, b"\x7fELF-ish").unwrap();
        w.symlink("/bin/sh", "busybox").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.file("/empty", 0o644, b"").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 4, 0);

        let entries = parse(&out);
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "bin/sh", "dev/console", "empty"]
        );
        let [dir, file, link, console, empty] = &entries[..] else {
            unreachable!()
        };
        assert_eq!((dir.mode, dir.nlink), (0o040_755, 2));
        assert_eq!(
            (file.mode, file.data.as_slice()),
            (0o100_755, &b"\x7fELF-ish"[..])
        );
        assert_eq!(
            (link.mode, link.data.as_slice()),
            (0o120_777, &b"busybox"[..])
        );
        assert_eq!((console.mode, console.rdev), (0o020_600, (5, 1)));
        assert!(empty.data.is_empty());
        for e in &entries {
            assert_eq!((e.uid, e.gid, e.mtime), (0, 0, 0));
        }
        let mut inos: Vec<_> = entries.iter().map(|e| e.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), entries.len(), "inode numbers are unique");
    }

    #[test]
    fn pads_names_and_data_of_every_length() {
        // Name lengths 1..=8 and data lengths 0..=8 cover every padding remainder.
        let mut w = NewcWriter::new(Vec::new());
        for n in 1..=8 {
            let name = "abcdefgh"[..n].to_owned();
            w.file(&name, 0o644, &vec![b'x'; n - 1]).unwrap();
        }
        let entries = parse(&w.finish().unwrap());
        assert_eq!(entries.len(), 8);
        for (n, e) in (1..=8).zip(&entries) {
            assert_eq!(e.name.len(), n);
            assert_eq!(e.data.len(), n - 1);
        }
    }

    #[test]
    fn trailer_matches_what_the_kernel_expects() {
        let out = NewcWriter::new(Vec::new()).finish().unwrap();
        // Header, "TRAILER!!!\0" (11 bytes) and padding to 124.
        assert_eq!(out.len(), 124);
        assert!(out.starts_with(b"070701"));
        assert_eq!(&out[HEADER_LEN..HEADER_LEN + 11], b"TRAILER!!!\0");
        assert!(parse(&out).is_empty());
    }

    #[test]
    fn refuses_names_it_cannot_write() {
        let mut w = NewcWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
    }
}
