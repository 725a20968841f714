//! Every file a snapshot makes QEMU open is the snapshot's own, or the guest file its
//! store record carried.
//!
//! QEMU opens what a snapshot names: the layers' backing files (names inside the qcow2
//! headers), the kernel, initrd and base disks (through the `guest/` links, see
//! `guestref`), the firmware's code and variables. A snapshot that arrives by import or
//! pull is not trusted: a layer whose header named `/etc/shadow` used to let its clones
//! read that file through their disk. So:
//!
//! - [`check_layers`] (every restore, and before an arrived snapshot is published):
//!   layer `k > 0` of disk `i` is backed by `d<i>.<k-1>.qcow2`, layer 0 by
//!   `../guest/base<i>`, the template by the top layer, each in the format thaw wrote,
//!   and no layer has an external data file or an incompatible feature thaw does not
//!   know. A qcow2 base that came from a store must name no other file either.
//! - [`check_record`] (import and pull): the record carries exactly the guest files its
//!   machine needs (so no link falls back to a path in the manifest), and a UEFI
//!   machine's firmware code is this host's OVMF.

use std::collections::BTreeSet;
use std::path::Path;

use crate::disk::layer_name;
use crate::guestref;
use crate::qcow2;
use crate::spec::DiskFormat;

use super::{layer_file, template_file, Manifest, SnapshotCheckError};

/// Checks the header of every qcow2 layer of the snapshot in `dir` (see the module
/// docs). Reads one cluster per layer.
pub fn check_layers(dir: &Path, m: &Manifest) -> Result<(), SnapshotCheckError> {
    if m.disks.len() != m.spec.disks.len() {
        return Err(SnapshotCheckError::ManifestCorrupt {
            tag: m.tag.clone(),
            why: format!(
                "{} disk chains for {} disks",
                m.disks.len(),
                m.spec.disks.len()
            ),
        });
    }
    for (i, chain) in m.disks.iter().enumerate() {
        let base = guestref::base_backing(i);
        let base = base.to_str().expect("thaw's names are UTF-8");
        let base_format = m.spec.disks[i].format.as_str();
        for k in 0..chain.layers {
            let (backing, format) = match k {
                0 => (base.to_owned(), base_format),
                k => (layer_name(i, k - 1), "qcow2"),
            };
            check_layer(dir, m, &layer_file(i, k), &backing, format)?;
        }
        if chain.layers > 0 {
            let top = layer_name(i, chain.layers - 1);
            check_layer(dir, m, &template_file(i), &top, "qcow2")?;
        }
    }
    Ok(())
}

fn check_layer(
    dir: &Path,
    m: &Manifest,
    file: &str,
    backing: &str,
    format: &str,
) -> Result<(), SnapshotCheckError> {
    qcow2::read(&dir.join(file))
        .and_then(|h| h.check(backing, format))
        .map_err(|defect| SnapshotCheckError::LayerRefused {
            tag: m.tag.clone(),
            file: file.to_owned(),
            defect: Box::new(defect),
        })
}

/// Checks that base disk `i` of the snapshot, at `path` (a file that came from a
/// store), names no other file, if it is qcow2.
pub fn check_stored_base(m: &Manifest, i: usize, path: &Path) -> Result<(), SnapshotCheckError> {
    if m.spec.disks.get(i).map(|d| d.format) != Some(DiskFormat::Qcow2) {
        return Ok(());
    }
    qcow2::read(path)
        .and_then(|h| h.check_standalone())
        .map_err(|defect| SnapshotCheckError::LayerRefused {
            tag: m.tag.clone(),
            file: format!("{}/base{i}", guestref::DIR),
            defect: Box::new(defect),
        })
}

/// The guest files a snapshot of this machine carries in its store record.
pub fn guest_entries(m: &Manifest) -> BTreeSet<String> {
    let mut want = BTreeSet::new();
    if m.spec.kernel.is_some() {
        want.insert(format!("{}/kernel", guestref::DIR));
    }
    if m.spec.initrd.is_some() {
        want.insert(format!("{}/initrd", guestref::DIR));
    }
    for i in 0..m.spec.disks.len() {
        want.insert(format!("{}/base{i}", guestref::DIR));
    }
    want
}

/// Checks a record that arrived (import, pull) before anything of it is written: its
/// guest files are exactly those the machine needs, and a UEFI machine runs this
/// host's OVMF. `names` are the record's file names.
pub fn check_record<'a>(
    m: &Manifest,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), SnapshotCheckError> {
    let corrupt = |why: String| SnapshotCheckError::ManifestCorrupt {
        tag: m.tag.clone(),
        why,
    };
    let prefix = format!("{}/", guestref::DIR);
    let have: BTreeSet<String> = names
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    let want = guest_entries(m);
    if let Some(missing) = want.difference(&have).next() {
        // Without it, the file the manifest names on the sending host would be used.
        return Err(corrupt(format!("the record carries no {missing}")));
    }
    if let Some(extra) = have.difference(&want).next() {
        let extra: String = extra.chars().take(80).collect();
        return Err(corrupt(format!("the record carries an unexpected {extra}")));
    }
    if let crate::firmware::Firmware::Uefi { code } = &m.spec.firmware {
        let ours = crate::firmware::ovmf().map(|o| o.code).ok();
        if ours.as_deref() != Some(code.as_path()) {
            return Err(SnapshotCheckError::FirmwareRefused {
                tag: m.tag.clone(),
                path: code.display().to_string().chars().take(120).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{FormatVersion, Memory, FORMAT_NAME};

    fn manifest(firmware: crate::firmware::Firmware) -> Manifest {
        Manifest {
            format: FORMAT_NAME.into(),
            version: FormatVersion { major: 2, minor: 1 },
            tag: "t".parse().unwrap(),
            created_unix_ms: 1,
            qemu_version: "10.0.2".parse().unwrap(),
            accel: crate::Accel::Tcg,
            spec: crate::MachineSpec {
                machine: "pc".into(),
                memory_mib: 16,
                cpus: 1,
                kernel: Some("/k".into()),
                initrd: Some("/i".into()),
                cmdline: String::new(),
                accel: crate::Accel::Tcg,
                firmware,
                display: None,
                disks: vec![crate::spec::DiskSpec {
                    base: "/img/base.raw".into(),
                    format: DiskFormat::Raw,
                    readonly: false,
                }],
                net: None,
                clock_port: false,
            },
            vmgenid: uuid::Uuid::nil(),
            source_vm: "web".parse().unwrap(),
            parent: None,
            memory: Memory::Raw,
            files: Default::default(),
            disks: vec![],
            checksum: None,
        }
    }

    /// A record without its initrd would have the restore use the manifest's path on
    /// this host (`guestref::resolve` falls back to it): any host file as the initrd.
    #[test]
    fn a_record_must_carry_exactly_its_guest_files() {
        let m = manifest(Default::default());
        let all = ["state", "guest/kernel", "guest/initrd", "guest/base0"];
        check_record(&m, all.into_iter()).unwrap();
        let err = check_record(&m, all.into_iter().filter(|n| *n != "guest/initrd"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("carries no guest/initrd"), "{err}");
        let err = check_record(&m, all.into_iter().chain(["guest/base1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unexpected guest/base1"), "{err}");
    }

    /// OVMF's code is mapped into the guest: a manifest naming another file as the
    /// firmware would let the guest read it.
    #[test]
    fn a_uefi_machine_must_run_this_hosts_ovmf() {
        let m = manifest(crate::firmware::Firmware::Uefi {
            code: "/etc/shadow".into(),
        });
        let all = ["guest/kernel", "guest/initrd", "guest/base0"];
        let err = check_record(&m, all.into_iter()).unwrap_err();
        assert!(
            matches!(err, SnapshotCheckError::FirmwareRefused { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("/etc/shadow"), "{err}");
    }
}
