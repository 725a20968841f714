//! The guest files a VM or a snapshot needs from outside its directory — the kernel,
//! the initrd and the base disk images — as symbolic links in its `guest/` directory:
//! `guest/kernel`, `guest/initrd`, `guest/base<i>`.
//!
//! Everything else refers to them through these links: QEMU is given the link's
//! target, and layer 0 of disk `i` is backed by `../guest/base<i>` (a relative name,
//! like every layer). So a snapshot pulled to another machine, whose guest files come
//! from the store and live elsewhere, needs only other links: its manifest and its
//! layers stay byte for byte what they were.

use std::path::{Path, PathBuf};

use crate::spec::MachineSpec;

pub const DIR: &str = "guest";

pub fn kernel(dir: &Path) -> PathBuf {
    dir.join(DIR).join("kernel")
}

pub fn initrd(dir: &Path) -> PathBuf {
    dir.join(DIR).join("initrd")
}

pub fn base(dir: &Path, i: usize) -> PathBuf {
    dir.join(DIR).join(format!("base{i}"))
}

/// How layer 0 of disk `i` names its backing file.
pub fn base_backing(i: usize) -> PathBuf {
    PathBuf::from(format!("../{DIR}/base{i}"))
}

/// Every link a directory for `spec` has: (link path, what it points to in `spec`).
fn links(dir: &Path, spec: &MachineSpec) -> Vec<(PathBuf, PathBuf)> {
    let mut v: Vec<(PathBuf, PathBuf)> = spec
        .kernel
        .iter()
        .map(|k| (kernel(dir), k.clone()))
        .collect();
    if let Some(i) = &spec.initrd {
        v.push((initrd(dir), i.clone()));
    }
    for (i, d) in spec.disks.iter().enumerate() {
        v.push((base(dir, i), d.base.clone()));
    }
    v
}

/// Creates `dir/guest/` with links to the files `spec` names (absolute paths).
pub fn link_spec(dir: &Path, spec: &MachineSpec) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join(DIR))?;
    for (link, target) in links(dir, spec) {
        std::os::unix::fs::symlink(target, link)?;
    }
    Ok(())
}

/// Gives `to` the same links as `from` (same targets).
pub fn copy_links(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to.join(DIR))?;
    for e in std::fs::read_dir(from.join(DIR))? {
        let e = e?;
        let target = std::fs::read_link(e.path())?;
        std::os::unix::fs::symlink(target, to.join(DIR).join(e.file_name()))?;
    }
    Ok(())
}

/// `spec` with its file paths replaced by the targets of `dir`'s links (where a link
/// exists): the files on this machine.
pub fn resolve(dir: &Path, spec: &MachineSpec) -> MachineSpec {
    let target = |link: PathBuf, fallback: &Path| {
        std::fs::read_link(link).unwrap_or_else(|_| fallback.to_owned())
    };
    let mut s = spec.clone();
    s.kernel = spec.kernel.as_ref().map(|k| target(kernel(dir), k));
    s.initrd = spec.initrd.as_ref().map(|i| target(initrd(dir), i));
    for (i, d) in s.disks.iter_mut().enumerate() {
        d.base = target(base(dir, i), &d.base);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_made_copied_and_resolved() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let spec = MachineSpec {
            machine: "pc".into(),
            memory_mib: 64,
            cpus: 1,
            kernel: Some("/k/vmlinuz".into()),
            initrd: Some("/k/initrd".into()),
            cmdline: String::new(),
            accel: crate::Accel::Tcg,
            disks: vec![crate::spec::DiskSpec {
                base: "/img/base.raw".into(),
                format: crate::spec::DiskFormat::Raw,
                readonly: false,
            }],
            net: None,
            clock_port: false,
            firmware: Default::default(),
            display: None,
        };
        link_spec(&a, &spec).unwrap();
        copy_links(&a, &b).unwrap();
        assert_eq!(
            std::fs::read_link(base(&b, 0)).unwrap(),
            Path::new("/img/base.raw")
        );
        // Elsewhere, other links: the resolved spec names this machine's files.
        std::fs::remove_file(kernel(&b)).unwrap();
        std::os::unix::fs::symlink("/store/files/abc", kernel(&b)).unwrap();
        let r = resolve(&b, &spec);
        assert_eq!(r.kernel.as_deref(), Some(Path::new("/store/files/abc")));
        assert_eq!(r.initrd.as_deref(), Some(Path::new("/k/initrd")));
        assert_eq!(resolve(&d.path().join("none"), &spec), spec);
    }
}
