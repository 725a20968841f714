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
