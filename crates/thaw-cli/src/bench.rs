//! `thaw bench` runs the benchmarks, which live in their own crate and binary
//! (`thaw-bench`) so that the CLI carries none of their code or dependencies: this
//! execs that binary, found next to the running `thaw` (where `cargo build
//! --workspace` and an install put it) or else on PATH, with every argument as given.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// The benchmark's binary.
const BENCH: &str = "thaw-bench";

/// Replaces this process with `thaw-bench ARGS` (plus `--json` when thaw was given it
/// before `bench`); returns only if that cannot be done, with why.
pub fn exec(json: bool, args: &[OsString]) -> anyhow::Error {
    let Some(binary) = find() else {
        return anyhow::anyhow!(
            "thaw bench needs the {BENCH} binary, found neither next to thaw nor on PATH: \
             install it beside thaw (cargo build --workspace builds target/debug/{BENCH})"
        );
    };
    let mut command = std::process::Command::new(&binary);
    // Its usage and help then say `thaw bench`, as the user typed it.
    command.arg0("thaw bench");
    if json && !args.iter().any(|a| a == "--json") {
        command.arg("--json");
    }
    let error = command.args(args).exec();
    anyhow::Error::new(error).context(format!("could not run {}", binary.display()))
}

/// `thaw-bench` next to the running executable, else the first on PATH.
fn find() -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(BENCH))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(OsStr::new(BENCH)))
            .find(|p| p.is_file())
    })
}
