//! thaw: boot a virtual machine once, checkpoint it, and restore it — or many
//! independent clones of it — in milliseconds instead of booting again.
//!
//! QEMU is the engine. Guest RAM lives in a file that the booted VM maps shared; a
//! snapshot is the device state (migration stream with `x-ignore-shared`) plus that
//! file; a restore maps the file private in a fresh QEMU started with
//! `-incoming defer`, so its cost does not grow with RAM size. See `docs/` for the
//! snapshot format.
//!
//! The CLI and the daemon are thin shells over the operations: [`boot`], [`control`]
//! (exec, list, stop, resume), [`snapshot::take`], [`snapshot::catalog`] (list, remove),
//! [`restore`] (clones, one at a time in [`clone`], or from a warm [`pool`]), [`reset`].
//! Machines boot a kernel or their disk through [`firmware`] (SeaBIOS or UEFI), and may
//! have a [`display`] served over VNC.

pub mod about;
pub mod accel;
pub mod agent;
pub mod boot;
pub mod bootstub;
pub mod cancel;
pub mod clockport;
pub mod clone;
pub mod console;
pub mod control;
pub mod disk;
pub mod display;
pub mod firmware;
pub mod fsutil;
pub mod guest;
pub mod guestio;
pub mod guestref;
pub mod home;
pub mod lazy;
pub mod lazy_restore;
pub mod lazyfs;
pub mod lifetime;
pub mod mapped;
pub mod migration;
pub mod park;
pub mod pool;
pub mod ports;
pub mod profile;
pub mod qcow2;
pub mod qemu;
pub mod ready;
pub mod record;
pub mod reset;
pub mod restore;
pub mod screen;
pub mod snapshot;
pub mod spec;
pub mod store;
mod sys;
pub mod up;
pub mod vm;

pub use accel::Accel;
pub use home::{Home, SnapshotTag, VmName};
pub use spec::MachineSpec;
pub use thaw_qmp::QemuVersion;

/// Milliseconds, rounded to the microsecond (how every report gives durations).
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// An error and its causes on one line ("a: b: c"), each cause said once.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
