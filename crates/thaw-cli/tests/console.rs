//! The serial console log stays bounded however much the guest writes, keeps the newest
//! output, and its keeper ends with the VM.

mod common;

use common::Env;

/// What `console::SEGMENT` is: the log is rotated at 1 MiB, two files at most.
const SEGMENT: usize = 1 << 20;

/// Pids of processes holding a descriptor on something under `dir` (a console keeper
/// writing into a VM directory).
fn holding_files_under(dir: &std::path::Path) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| target.starts_with(dir))
        })
        .collect()
}

#[test]
fn a_flooding_guest_keeps_its_console_log_bounded() {
    let env = Env::new();
    env.boot("flood", &["--ready-serial", "THAW-GUEST-READY"]);
    let written = 3 * SEGMENT;
    env.ok(&[
        "exec",
        "--timeout",
        "900",
        "flood",
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "yes flood-line-0123456789abcdefghijklmnopqrstuvwxyz | head -c {written} \
             > /dev/ttyS0; echo FLOOD-DONE > /dev/ttyS0"
        ),
    ]);
    // The keeper writes what QEMU sent; wait until the last line is there (the
    // deadline is a deadlock guard only).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let logs = loop {
        let out = env
            .command(&["logs", "flood"])
            .output()
            .expect("run thaw logs");
        assert!(out.status.success());
        if out.stdout.ends_with(b"FLOOD-DONE\n") || out.stdout.ends_with(b"FLOOD-DONE\r\n") {
            break out.stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "thaw logs does not show the newest line"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let dir = env.path().join("vms/flood");
    let on_disk: u64 = ["console.log", "console.log.1"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        on_disk <= (2 * SEGMENT + 64 * 1024) as u64,
        "the console takes {on_disk} bytes on disk after {written} were written"
    );
    assert!(
        logs.len() >= SEGMENT,
        "thaw logs kept only {} bytes",
        logs.len()
    );
    assert!(
        logs.len() < written,
        "thaw logs printed {} bytes",
        logs.len()
    );
    env.ok(&["stop", "flood"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !holding_files_under(env.path()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a process still holds files of the stopped VM: {:?}",
            holding_files_under(env.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
