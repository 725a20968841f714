//! A restored VM never boots its kernel again, yet QEMU reads the whole `-kernel` and
//! `-initrd` when it starts (about 20 MB for the default guest): a restore only needs
//! the option ROM that `-kernel` adds (its RAM block is part of the migration stream),
//! and the guest runs with `-no-reboot`, so a reboot ends QEMU rather than booting the
//! kernel from fw_cfg. [`kernel_stub`] writes a stand-in: the kernel's own real-mode
//! header and setup sectors with an empty payload. QEMU loads it like the kernel (the
//! same boot protocol, so the same option ROM) and the restore reads a few KiB of the
//! kernel instead of all of it, and none of the initrd; for a lazily served snapshot
//! that is one chunk fetched instead of two whole files.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the setup header starts, and the offsets in it that are read here (see the
/// Linux x86 boot protocol).
const SETUP_SECTS: usize = 0x1f1;
const MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
/// The stand-in's payload: non-empty, as a kernel's is, and otherwise unused.
const PAYLOAD: usize = 4096;

/// The name of the stand-in in a clone's directory.
pub const FILE: &str = "kernel-stub";

/// Writes a stand-in for `kernel` to `dir/kernel-stub` and returns its path, or `None`
/// when `kernel` is not a bzImage of boot protocol 2.00 or later (an ELF or multiboot
/// kernel is loaded differently by QEMU, so it is passed whole as before).
pub fn kernel_stub(kernel: &Path, dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let mut file = std::fs::File::open(kernel)?;
    let mut header = [0u8; 1024];
    if read_full(&mut file, &mut header)? < header.len() {
        return Ok(None);
    }
    let Some(setup_len) = setup_len(&header) else {
        return Ok(None);
    };
    let mut stub = vec![0u8; setup_len + PAYLOAD];
    stub[..header.len()].copy_from_slice(&header);
    if read_full(&mut file, &mut stub[header.len()..setup_len])? < setup_len - header.len() {
        return Ok(None);
    }
    let path = dir.join(FILE);
    std::fs::write(&path, &stub)?;
    Ok(Some(path))
}

/// The length of the real-mode part (boot sector and setup sectors) of a bzImage
/// header, or `None` if `header` is not one QEMU loads as a Linux kernel.
fn setup_len(header: &[u8; 1024]) -> Option<usize> {
    if &header[..4] == b"\x7fELF" || &header[MAGIC..MAGIC + 4] != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes([header[VERSION], header[VERSION + 1]]);
    if version < 0x200 {
        return None;
    }
    let sects = match header[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    Some((sects + 1) * 512)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(sects: u8, version: u16, len: usize) -> Vec<u8> {
        let mut k: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        k[SETUP_SECTS] = sects;
        k[MAGIC..MAGIC + 4].copy_from_slice(b"HdrS");
        k[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes());
        k
    }

    #[test]
    fn a_bzimage_gets_its_setup_sectors_and_an_empty_payload() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let image = bzimage(27, 0x20f, 1 << 20);
        std::fs::write(&kernel, &image).unwrap();
        let stub = kernel_stub(&kernel, dir.path()).unwrap().unwrap();
        let bytes = std::fs::read(stub).unwrap();
        assert_eq!(bytes.len(), 28 * 512 + PAYLOAD);
        assert_eq!(&bytes[..28 * 512], &image[..28 * 512]);
        assert!(bytes[28 * 512..].iter().all(|&b| b == 0));
    }

    #[test]
    fn zero_setup_sectors_mean_four() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, bzimage(0, 0x20f, 8192)).unwrap();
        let stub = kernel_stub(&kernel, dir.path()).unwrap().unwrap();
        assert_eq!(
            std::fs::metadata(stub).unwrap().len() as usize,
            5 * 512 + PAYLOAD
        );
    }

    #[test]
    fn other_kernels_are_passed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k");
        let mut elf = bzimage(27, 0x20f, 1 << 16);
        elf[..4].copy_from_slice(b"\x7fELF");
        let old = bzimage(4, 0x1ff, 1 << 16);
        let mut plain = bzimage(4, 0x20f, 1 << 16);
        plain[MAGIC] = b'X';
        let short = bzimage(60, 0x20f, 4096);
        for image in [elf, old, plain, short, vec![0u8; 100]] {
            std::fs::write(&kernel, &image).unwrap();
            assert_eq!(kernel_stub(&kernel, dir.path()).unwrap(), None);
        }
        assert!(!dir.path().join(FILE).exists());
    }
}
