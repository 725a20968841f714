//! Kernel modules for the guests' initramfs.
//!
//! Debian's cloud kernel has the virtio block and network drivers as modules, xz-compressed
//! (`virtio_blk.ko.xz`), and its package ships no `modules.dep` (dpkg's postinst runs
//! depmod). So the modules are found by walking `lib/modules/<version>/kernel`, decompressed
//! with `xz` (busybox's `insmod` loads plain ELF only), and ordered by the `depends=` field
//! of each module's `.modinfo` section: every module comes after the ones it needs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::initramfs::Tree;
use super::{command_error_line, spawn_error, GuestBuildError};
use crate::fsutil::Context;

/// Where the modules go in the initramfs, as `<name>.ko`.
pub(crate) const DIR: &str = "lib/modules";
/// The file listing the modules' names in load order, one per line; init loads them so.
pub(crate) const ORDER_FILE: &str = "lib/modules/order";

/// A module ready for `insmod`: its name (with `_`, as the kernel spells it) and its plain
/// ELF contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

/// The only `lib/modules/<version>` directory under `root` (an unpacked kernel package).
pub(crate) fn version_dir(root: &Path) -> Option<PathBuf> {
    let mut dirs = fs::read_dir(root.join("lib/modules"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path());
    let dir = dirs.next()?;
    dirs.next().is_none().then_some(dir)
}

/// `wanted` and every module they depend on, dependencies first, read from `version_dir`.
/// `package` names the kernel package in errors.
pub(crate) fn collect(
    version_dir: &Path,
    wanted: &[&str],
    package: &str,
) -> Result<Vec<Module>, GuestBuildError> {
    let index = index(&version_dir.join("kernel"))?;
    let mut loaded: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let order = load_order(wanted, |name| {
        let path = index.get(name).ok_or_else(|| GuestBuildError::NoModule {
            package: package.to_owned(),
            module: name.to_owned(),
        })?;
        let data = decompress(path)?;
        let deps =
            depends(&data).ok_or_else(|| GuestBuildError::BadModule { path: path.clone() })?;
        loaded.insert(name.to_owned(), data);
        Ok::<_, GuestBuildError>(deps)
    })?;
    Ok(order
        .into_iter()
        .map(|name| {
            let data = loaded.remove(&name).expect("every ordered module was read");
            Module { name, data }
        })
        .collect())
}

/// Adds the modules to `tree` as `/lib/modules/<name>.ko` and their load order as
/// `/lib/modules/order`.
pub(crate) fn install(tree: &mut Tree, modules: &[Module]) {
    let mut order = String::new();
    for m in modules {
        tree.file(&format!("{DIR}/{}.ko", m.name), 0o644, m.data.clone());
        order.push_str(&m.name);
        order.push('\n');
    }
    tree.file(ORDER_FILE, 0o644, order.into_bytes());
}

/// Orders `wanted` and their dependencies so that each name comes after every name
/// `deps` gives for it; each name once, `deps` called once per name. A dependency cycle
/// (which modprobe would refuse too) is broken where it closes.
pub(crate) fn load_order<E>(
    wanted: &[&str],
    mut deps: impl FnMut(&str) -> Result<Vec<String>, E>,
) -> Result<Vec<String>, E> {
    let mut order = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    // Depth-first, iterative: (name, its dependencies, how many of them are done).
    let mut stack: Vec<(String, Vec<String>, usize)> = Vec::new();
    for &root in wanted {
        if !seen.insert(root.to_owned()) {
            continue;
        }
        stack.push((root.to_owned(), deps(root)?, 0));
        while let Some((_, children, next)) = stack.last_mut() {
            if let Some(child) = children.get(*next).cloned() {
                *next += 1;
                if seen.insert(child.clone()) {
                    let grandchildren = deps(&child)?;
                    stack.push((child, grandchildren, 0));
                }
            } else {
                let (name, _, _) = stack.pop().expect("the stack is not empty");
                order.push(name);
            }
        }
    }
    Ok(order)
}

/// Every module file under `dir`, by module name.
fn index(dir: &Path) -> Result<BTreeMap<String, PathBuf>, GuestBuildError> {
    let mut found = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).at("list the kernel's modules", &dir)? {
            let entry = entry.at("list the kernel's modules", &dir)?;
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            } else if let Some(name) = entry.file_name().to_str().and_then(module_name) {
                found.insert(name, path);
            }
        }
    }
    Ok(found)
}

/// The module name of a module file: `net_failover.ko.xz` → `net_failover`. The kernel
/// treats `-` and `_` alike in module names and reports them with `_`.
pub(crate) fn module_name(file_name: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file_name.strip_suffix(ext))?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// A module's plain contents, uncompressed with the matching tool if it is compressed.
fn decompress(path: &Path) -> Result<Vec<u8>, GuestBuildError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return Ok(fs::read(path).at("read a kernel module", path)?);
    };
    let output = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .map_err(|source| spawn_error(tool, source))?;
    if !output.status.success() {
        return Err(GuestBuildError::Decompress {
            path: path.to_owned(),
            stderr_line: command_error_line(&output),
        });
    }
    Ok(output.stdout)
}

/// The modules a module needs: the `depends=` entry of its `.modinfo` section (NUL-separated
/// `key=value` strings). None when `elf` is not a 64-bit little-endian ELF file with that
/// section.
pub(crate) fn depends(elf: &[u8]) -> Option<Vec<String>> {
    let modinfo = section(elf, ".modinfo")?;
    let mut deps = Vec::new();
    for entry in modinfo.split(|&b| b == 0) {
        if let Some(list) = entry.strip_prefix(b"depends=") {
            let list = std::str::from_utf8(list).ok()?;
            deps.extend(
                list.split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.replace('-', "_")),
            );
        }
    }
    Some(deps)
}

/// The contents of the section called `name` of a 64-bit little-endian ELF file.
fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)).ok();
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(0x28)?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    // (name offset, data offset, size) of section `i`.
    let header = |i: usize| {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(h)? as usize, u64_at(h + 24)?, u64_at(h + 32)?))
    };
    let bytes = |off: usize, len: usize| elf.get(off..off.checked_add(len)?);
    let (_, strtab_off, strtab_len) = header(shstrndx)?;
    let strtab = bytes(strtab_off, strtab_len)?;
    for i in 0..shnum {
        let (name_off, off, len) = header(i)?;
        let this = strtab.get(name_off..)?;
        let this = &this[..this.iter().position(|&b| b == 0)?];
        if this == name.as_bytes() {
            return bytes(off, len);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 relocatable file with a `.modinfo` section holding `modinfo`.
    pub(crate) fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        // Section 0 is the null section; 1 the name table; 2 .modinfo.
        let mut sh = |name: u32, off: usize, len: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(len as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, strtab_off, shstrtab.len());
        sh(11, info_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_depends_lists_the_needed_modules() {
        let m = fake_module(b"license=GPL\0depends=net_failover,virtio-ring\0intree=Y\0");
        assert_eq!(
            depends(&m),
            Some(vec!["net_failover".into(), "virtio_ring".into()])
        );
        assert_eq!(
            depends(&fake_module(b"depends=\0vermagic=6.12\0")),
            Some(vec![])
        );
        assert_eq!(depends(&fake_module(b"license=GPL\0")), Some(vec![]));
        assert_eq!(depends(b"not an elf file"), None);
        let mut truncated = fake_module(b"depends=failover\0");
        truncated.truncate(100);
        assert_eq!(depends(&truncated), None);
    }

    #[test]
    fn module_names_drop_the_extension_and_use_underscores() {
        assert_eq!(
            module_name("virtio_net.ko.xz").as_deref(),
            Some("virtio_net")
        );
        assert_eq!(module_name("dm-mod.ko").as_deref(), Some("dm_mod"));
        assert_eq!(module_name("x.ko.zst").as_deref(), Some("x"));
        assert_eq!(module_name("modules.dep"), None);
        assert_eq!(module_name(".ko"), None);
    }

    fn graph<'a>(
        edges: &'a [(&'a str, &'a [&'a str])],
    ) -> impl FnMut(&str) -> Result<Vec<String>, String> + 'a {
        move |name| {
            edges
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, d)| d.iter().map(|s| (*s).to_owned()).collect())
                .ok_or_else(|| name.to_owned())
        }
    }

    #[test]
    fn dependencies_load_first_and_once() {
        // The Debian 6.12 cloud kernel's virtio drivers.
        let edges: &[(&str, &[&str])] = &[
            ("virtio_blk", &[]),
            ("virtio_net", &["net_failover"]),
            ("net_failover", &["failover"]),
            ("failover", &[]),
        ];
        assert_eq!(
            load_order(&["virtio_blk", "virtio_net"], graph(edges)).unwrap(),
            ["virtio_blk", "failover", "net_failover", "virtio_net"]
        );
        // A diamond, and a module asked for that another one already pulled in.
        let diamond: &[(&str, &[&str])] =
            &[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])];
        assert_eq!(
            load_order(&["a", "d", "a"], graph(diamond)).unwrap(),
            ["d", "b", "c", "a"]
        );
    }

    #[test]
    fn a_missing_module_or_a_cycle_does_not_hang() {
        let edges: &[(&str, &[&str])] = &[("a", &["gone"])];
        assert_eq!(load_order(&["a"], graph(edges)), Err("gone".to_owned()));
        let cycle: &[(&str, &[&str])] = &[("a", &["b"]), ("b", &["a"])];
        assert_eq!(load_order(&["a"], graph(cycle)).unwrap(), ["b", "a"]);
    }

    #[test]
    fn collect_reads_a_package_tree() {
        let root = tempfile::tempdir().unwrap();
        let ver = root.path().join("lib/modules/6.12.0-test");
        fs::create_dir_all(ver.join("kernel/drivers/net")).unwrap();
        fs::create_dir_all(ver.join("kernel/net/core")).unwrap();
        fs::write(
            ver.join("kernel/drivers/net/net_failover.ko"),
            fake_module(b"depends=failover\0"),
        )
        .unwrap();
        fs::write(
            ver.join("kernel/net/core/failover.ko"),
            fake_module(b"depends=\0"),
        )
        .unwrap();
        assert_eq!(version_dir(root.path()), Some(ver.clone()));
        let mods = collect(&ver, &["net_failover"], "linux-image-test").unwrap();
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["failover", "net_failover"]);
        let err = collect(&ver, &["virtio_blk"], "linux-image-test").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the guest kernel package linux-image-test has no module virtio_blk"
        );
    }
}
