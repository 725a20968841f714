//! thaw's benchmarks, apart from the product: `thaw bench` runs the `thaw-bench`
//! binary of this crate. Everything here drives the `thaw` library (and a `thawd`
//! served in-process) as a user would, and measures it.
//!
//! - [`restores`]: cold boot against restore, snapshot pause, reset, restores from the
//!   store, per RAM size (plain `thaw bench`, with or without a warm pool).
//! - [`compare`]: the same guest restored by every method people use today and by
//!   thaw (`--compare`). Each method lives in its own module ([`peer`]: savevm and
//!   migration to a compressed file; [`libvirt`]; [`bare`]: the mechanism alone;
//!   [`daemon`]: through a real `thawd`); they share only [`method`] and [`sample`].
//! - [`density`]: many clones at once and the memory they cost (`--density`).
//!
//! Module dependencies point one way: `compare` → the methods → `method` → `sample`.

pub mod bare;
pub mod compare;
pub mod daemon;
pub mod density;
pub mod lazy;
pub mod libvirt;
pub mod method;
pub mod peer;
pub mod restores;
pub mod sample;
