//! `thaw bench --compare`'s `thaw-bare` method: the mechanism thaw is built on and
//! nothing more, so that what thaw's own restore adds is measured beside it.

use std::time::Instant;

use thaw::qemu::Qemu;
use thaw::ready::ReadySpec;
use thaw::{Home, SnapshotTag, VmName};

use crate::method::{CompareError, MethodReport, Sample};
use crate::peer;

/// The mechanism thaw is built on and nothing more: a QEMU that maps the snapshot's RAM
/// image private, loads its device state with `x-ignore-shared`, `cont`, and the agent
/// answers `guest-ping` (then the profile's check). No snapshot check, the snapshot's
/// own VM Generation ID, no clock set: what thaw's restore adds to it is the difference
/// between this row and thaw's.
pub async fn method(
    home: &Home,
    qemu: &Qemu,
    runs: u32,
    ready: &ReadySpec,
    tag: &SnapshotTag,
    mem: u32,
    progress: &mut dyn FnMut(&str),
) -> Result<MethodReport, CompareError> {
    let snap = thaw::snapshot::Snapshot::open(home, tag)?;
    let mut samples = Vec::new();
    for i in 0..runs {
        progress(&format!(
            "{mem} MiB: bare mechanism: restore {}/{}",
            i + 1,
            runs
        ));
        let dir = home.root().join(format!("bare-{mem}-{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| CompareError::io("create", &dir, e))?;
        let paths = thaw::vm::VmPaths { dir: dir.clone() };
        let name: VmName = format!("m{mem}-bare-{i}").parse().expect("valid name");
        let t0 = Instant::now();
        let prepared = thaw::clone::prepare(
            qemu,
            &snap,
            paths,
            name,
            thaw::clone::StartOptions {
                keep_vmgenid: true,
                die_with_owner: true,
                hashes: None,
            },
            thaw::clone::Ports::Fresh(thaw::ports::DEFAULT_BIND),
        )
        .await;
        let mut clone = match prepared {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let measured = async {
            clone.resume().await?;
            let running_ms = thaw::ms(t0.elapsed());
            peer::wait_agent_ready(
                Some(clone.qmp()),
                &clone.paths,
                &clone.paths.agent(),
                ready,
                &clone.state.ports,
            )
            .await?;
            Ok::<_, CompareError>(Sample {
                running_ms: Some(running_ms),
                ready_ms: thaw::ms(t0.elapsed()),
            })
        }
        .await;
        clone.discard().await;
        let _ = std::fs::remove_dir_all(&dir);
        samples.push(measured?);
    }
    Ok(MethodReport::new("thaw-bare", BARE, mem).with_samples(&[], &samples))
}

const BARE: &str = "bare mechanism (map + agent ping)";
