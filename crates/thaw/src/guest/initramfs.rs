//! The guests' initramfs, written as an uncompressed newc cpio: static busybox and an
//! `/init` script; for the default guest also Debian's qemu-ga with the shared libraries it
//! loads.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::NewcWriter;
use super::{command_error_line, GuestBuildError};
use crate::fsutil::Context;

/// PID 1 of the guest; see `init.sh` for what it does and why.
pub(crate) const INIT_SCRIPT: &str = include_str!("init.sh");

const BUSYBOX: &str = "/bin/busybox";

/// `/sbin/hwclock` in the default guest. qemu-ga runs `hwclock -w` after every
/// `guest-set-time`, which thaw sends to every clone it restores; busybox's hwclock
/// then writes the RTC, a few emulated port accesses and a process start that the
/// clone's first answer waits for. QEMU's RTC follows the host's clock (the default
/// `-rtc base=utc,clock=host`), also across a snapshot, so the write changes nothing:
/// it is skipped, and anything else goes to busybox (as the Debian guest does).
pub(crate) const HWCLOCK_SCRIPT: &str = r#"#!/bin/busybox sh
# thaw: skip "hwclock -w" (see thaw's guest/initramfs.rs); pass anything else on.
[ "$*" = "-w" ] && exit 0
exec /bin/busybox hwclock "$@"
"#;
const QEMU_GA: &str = "/usr/sbin/qemu-ga";

/// The files and directories of an initramfs, kept sorted by path so that every parent
/// directory is written before what it holds.
#[derive(Default)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
}

enum Node {
    Dir,
    File { perm: u32, data: Vec<u8> },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

impl Tree {
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.insert(path, Node::File { perm, data });
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Node::Symlink(target.to_owned()));
    }

    pub(crate) fn dir(&mut self, path: &str) {
        self.insert(path, Node::Dir);
    }

    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.insert(path, Node::CharDevice { major, minor });
    }

    /// Inserts `node` at `path` and a directory for every missing ancestor: the kernel's
    /// unpacker does not create parents, so a file under a missing directory would be lost.
    fn insert(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/');
        for (i, _) in path.match_indices('/') {
            self.nodes.entry(path[..i].to_owned()).or_insert(Node::Dir);
        }
        self.nodes.insert(path.to_owned(), node);
    }

    /// Regular files, and the bytes they hold.
    pub(crate) fn file_stats(&self) -> (usize, u64) {
        self.nodes
            .values()
            .fold((0, 0), |(n, bytes), node| match node {
                Node::File { data, .. } => (n + 1, bytes + data.len() as u64),
                _ => (n, bytes),
            })
    }

    pub(crate) fn write_to<W: Write>(&self, out: W) -> io::Result<W> {
        let mut w = NewcWriter::new(out);
        for (path, node) in &self.nodes {
            match node {
                Node::Dir => w.dir(path, 0o755)?,
                Node::File { perm, data } => w.file(path, *perm, data)?,
                Node::Symlink(target) => w.symlink(path, target)?,
                Node::CharDevice { major, minor } => w.char_device(path, 0o600, *major, *minor)?,
            }
        }
        w.finish()
    }
}

/// Collects the default guest's files from the host: [`busybox_tree`] with [`INIT_SCRIPT`],
/// and qemu-ga with its shared libraries. `progress` gets one line.
pub(crate) fn collect(progress: &mut dyn FnMut(&str)) -> Result<Tree, GuestBuildError> {
    let mut tree = busybox_tree(INIT_SCRIPT)?;
    for dir in ["tmp", "run", "root"] {
        tree.dir(dir);
    }
    // qemu-ga's defaults (pidfile, state) live in /var/run.
    tree.symlink("var/run", "../run");
    tree.file("etc/hostname", 0o644, b"thaw\n".to_vec());
    // qemu-ga's guest-set-time runs /sbin/hwclock -w after settimeofday and fails the
    // command when that cannot run.
    tree.file("sbin/hwclock", 0o755, HWCLOCK_SCRIPT.as_bytes().to_vec());
    // The guest side of the clock channel, with what it links (glibc's, as qemu-ga's).
    tree.file(super::clock::GUEST_PATH, 0o755, super::clock::read()?);
    let clock_libs = shared_libraries(&super::clock::binary()?)?;

    tree.file(
        QEMU_GA,
        0o755,
        read(QEMU_GA, "qemu-guest-agent", "read qemu-ga")?,
    );
    let mut libs = shared_libraries(Path::new(QEMU_GA))?;
    libs.extend(clock_libs);
    libs.sort();
    libs.dedup();
    progress(&format!(
        "collecting busybox, qemu-ga and {} shared libraries",
        libs.len()
    ));
    for lib in &libs {
        // ldd prints the path the loader searches (e.g. /lib/x86_64-linux-gnu/libc.so.6);
        // the file there is often a symlink, so store the resolved contents under that name.
        let data = std::fs::read(lib).at("read a shared library of qemu-ga", lib)?;
        tree.file(&lib.to_string_lossy(), 0o755, data);
    }
    Ok(tree)
}

/// The smallest initramfs: `init` as `/init`, static busybox as `/bin/busybox` (and
/// `/bin/sh`), `/dev/console`, the mount points `proc`, `sys`, `dev`, and the directories
/// `busybox --install` fills.
pub(crate) fn busybox_tree(init: &str) -> Result<Tree, GuestBuildError> {
    let mut tree = Tree::default();
    for dir in [
        "proc", "sys", "dev", "etc", "bin", "sbin", "usr/bin", "usr/sbin",
    ] {
        tree.dir(dir);
    }
    // The kernel opens /dev/console for init before /init runs; without the node init
    // would start with no stdin/stdout. devtmpfs later mounts over /dev.
    tree.char_device("dev/console", 5, 1);
    tree.file("init", 0o755, init.as_bytes().to_vec());
    let busybox = read(BUSYBOX, "busybox-static", "read busybox")?;
    if elf_is_dynamic(&busybox) != Some(false) {
        return Err(GuestBuildError::BusyboxNotStatic {
            path: BUSYBOX.into(),
        });
    }
    tree.file(BUSYBOX, 0o755, busybox);
    tree.symlink("bin/sh", "busybox");
    Ok(tree)
}

fn read(path: &str, package: &'static str, step: &'static str) -> Result<Vec<u8>, GuestBuildError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            GuestBuildError::MissingTool {
                tool: path.to_owned(),
                package,
            }
        } else {
            GuestBuildError::Io(crate::fsutil::IoError::new(step, path, source))
        }
    })
}

/// The shared libraries `binary` loads, dynamic loader included, as `ldd` resolves them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, GuestBuildError> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|source| super::spawn_error("ldd", source))?;
    if !output.status.success() {
        return Err(GuestBuildError::ListLibraries {
            path: binary.to_owned(),
            stderr_line: command_error_line(&output),
        });
    }
    parse_ldd(&String::from_utf8_lossy(&output.stdout)).map_err(|library| {
        GuestBuildError::MissingLibrary {
            binary: binary.to_owned(),
            library,
        }
    })
}

/// Parses `ldd` output into the absolute paths to copy. Lines look like
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2
/// (0x...)` for the loader, and `linux-vdso.so.1 (0x...)` for the vDSO, which the kernel
/// provides. A library ldd could not find is returned as the error.
pub(crate) fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = match line.split_once(" => ") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_owned());
                }
                rest.split(" (").next().unwrap_or(rest).trim()
            }
            None => line.split(" (").next().unwrap_or(line).trim(),
        };
        if path.starts_with('/') && !libs.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// Whether an x86-64 ELF file asks for a dynamic loader (has a PT_INTERP program header).
/// None when `elf` is not a little-endian 64-bit x86-64 ELF file.
pub(crate) fn elf_is_dynamic(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" || u16_at(0x12)? != EM_X86_64 {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::super::cpio::tests::parse;
    use super::*;

    const LDD_QEMU_GA: &str = "\
\tlinux-vdso.so.1 (0x00007f213e2be000)
\tlibudev.so.1 => /lib/x86_64-linux-gnu/libudev.so.1 (0x00007f213e179000)
\tlibglib-2.0.so.0 => /lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x00007f213e02d000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f213dd63000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f213e2c0000)
\tlibpcre2-8.so.0 => /lib/x86_64-linux-gnu/libpcre2-8.so.0 (0x00007f213dcc9000)
";

    #[test]
    fn ldd_output_gives_libraries_and_loader_but_not_the_vdso() {
        let libs = parse_ldd(LDD_QEMU_GA).unwrap();
        let libs: Vec<_> = libs.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libudev.so.1",
                "/lib/x86_64-linux-gnu/libglib-2.0.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
                "/lib/x86_64-linux-gnu/libpcre2-8.so.0",
            ]
        );
    }

    #[test]
    fn ldd_missing_library_is_an_error_naming_it() {
        let out = "\tlibfoo.so.1 => not found\n\tlibc.so.6 => /lib/libc.so.6 (0x1)\n";
        assert_eq!(parse_ldd(out), Err("libfoo.so.1".to_owned()));
    }

    #[test]
    fn ldd_of_a_static_program_lists_nothing() {
        assert_eq!(parse_ldd("\tnot a dynamic executable\n"), Ok(vec![]));
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(vec![]));
    }

    /// A minimal ELF64 header with one program header of type `p_type`.
    fn elf_with_phdr(p_type: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&p_type.to_le_bytes());
        elf
    }

    #[test]
    fn elf_interpreter_header_marks_a_dynamic_program() {
        assert_eq!(elf_is_dynamic(&elf_with_phdr(3)), Some(true));
        assert_eq!(elf_is_dynamic(&elf_with_phdr(1)), Some(false));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh\n"), None);
        let mut truncated = elf_with_phdr(1);
        truncated.truncate(66);
        assert_eq!(elf_is_dynamic(&truncated), None);
    }

    #[test]
    fn tree_adds_every_parent_directory_before_its_children() {
        let mut tree = Tree::default();
        tree.file("/lib/x86_64-linux-gnu/libc.so.6", 0o755, b"libc".to_vec());
        tree.file("/lib64/ld-linux-x86-64.so.2", 0o755, b"ld".to_vec());
        tree.symlink("/sbin/hwclock", "../bin/busybox");
        tree.char_device("/dev/console", 5, 1);
        assert_eq!(tree.file_stats(), (2, 6));
        let entries = parse(&tree.write_to(Vec::new()).unwrap());
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "lib",
                "lib/x86_64-linux-gnu",
                "lib/x86_64-linux-gnu/libc.so.6",
                "lib64",
                "lib64/ld-linux-x86-64.so.2",
                "sbin",
                "sbin/hwclock",
            ]
        );
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                let p = entries.iter().position(|d| d.name == parent);
                assert!(p.is_some_and(|p| p < i), "{} before its parent", e.name);
                assert_eq!(entries[p.unwrap()].mode & 0o170_000, 0o040_000);
            }
        }
    }
}
