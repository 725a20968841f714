//! The one place with `unsafe`: process set-up that must run between fork and exec,
//! and the signal mask.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{getpid, getppid, set_parent_process_death_signal, Signal};

/// Makes the command's process receive SIGKILL when the thread that spawns it exits
/// (`PR_SET_PDEATHSIG`). Used for the QEMU processes of a warm pool whose owner wants
/// them to die with it (`pool::Orphans::DieWithOwner`). Spawn from a thread that lives
/// as long as the owner (a runtime worker, not a short-lived blocking-pool thread): the
/// signal follows the spawning *thread*.
pub fn kill_with_parent(cmd: &mut Command) {
    let parent = getpid();
    // SAFETY: the closure runs in the child after fork and before exec. It only makes
    // two system calls (prctl, getppid) through rustix, which allocate nothing and
    // take no locks, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before prctl took effect.
            if getppid() != Some(parent) {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
}

/// The seccomp filter of [`refuse_huge_page_advice`]: `madvise(_, _, MADV_HUGEPAGE)`
/// fails with EINVAL, every other system call is let through. None on an
/// architecture seccompiler does not know.
pub fn huge_page_advice_filter() -> Option<seccompiler::BpfProgram> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).ok()?;
    let advice = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::MADV_HUGEPAGE as u64,
    )
    .ok()?;
    let rules = [(
        libc::SYS_madvise,
        vec![SeccompRule::new(vec![advice]).ok()?],
    )];
    let filter = SeccompFilter::new(
        rules.into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EINVAL as u32),
        arch,
    )
    .ok()?;
    filter.try_into().ok()
}

/// Makes `madvise(MADV_HUGEPAGE)` fail in the command's process (`filter`, from
/// [`huge_page_advice_filter`]). QEMU advises huge pages on all guest RAM and ignores
/// the error. For RAM mapped from a lazily served file the advice does harm: the
/// kernel then reads two huge pages (4 MiB) around every first touch of the mapping,
/// whatever the file system's readahead, so a guest touching one page fetches 64
/// chunks; without it, it reads the file system's readahead (one chunk).
pub fn refuse_huge_page_advice(cmd: &mut Command, filter: seccompiler::BpfProgram) {
    // SAFETY: the closure runs in the child after fork and before exec. The filter was
    // built before the fork; applying it makes two system calls (prctl for
    // no_new_privs, seccomp) and allocates only on its error path, when the spawn
    // fails anyway.
    unsafe {
        cmd.pre_exec(move || seccompiler::apply_filter(&filter).map_err(std::io::Error::other));
    }
}

/// Starts the console keeper of a VM: a process of its own that reads what QEMU writes
/// to the serial port from `from` (QEMU holds the other end of this socket) and
/// appends it to `name` in the directory `dir`. When that file reaches `segment` bytes
/// it is renamed to `old` (replacing the one before) and a new one starts, so the two
/// hold the newest output and never more than about `2 * segment` bytes. It ends when
/// `from` reaches end of file, that is when QEMU has exited (or closed the socket).
///
/// The keeper is forked twice (so no one has to reap it) and never execs: it runs a
/// loop of plain system calls, in a session of its own (no terminal's signals reach
/// it), with every other descriptor closed (it must not keep another VM's QMP or agent
/// connection open). It works relative to a descriptor of `dir`, so a VM directory
/// that moves (a pool clone given its name) keeps its console.
pub fn start_console_keeper(
    from: std::os::fd::OwnedFd,
    dir: &std::path::Path,
    name: &std::ffi::CStr,
    old: &std::ffi::CStr,
    segment: u64,
) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    let dir = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let (from_fd, dir_fd) = (from.as_raw_fd(), dir.as_raw_fd());
    // SAFETY: fork in a multi-threaded process: the child (and its child) only make
    // async-signal-safe system calls through libc (fork, _exit, setsid, dup2, close,
    // close_range, sigaction defaults, prctl, openat, read, write, renameat, lseek) on
    // memory prepared before the fork (the names) or on its own stack; it allocates
    // nothing and takes no lock, and never returns into the parent's code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(std::io::Error::last_os_error()),
        0 => unsafe {
            // SAFETY: see above; the intermediate child exits at once, the keeper
            // (its child) is reparented to init or the nearest subreaper.
            if libc::fork() != 0 {
                libc::_exit(0);
            }
            keep_console(from_fd, dir_fd, name, old, segment)
        },
        pid => {
            let mut status = 0;
            // SAFETY: waits for the intermediate child, which exits at once.
            while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
            Ok(())
        }
    }
}

/// The console keeper's loop (see [`start_console_keeper`]); never returns.
///
/// # Safety
/// Only in a forked child: it takes over descriptors 0 and 1 and closes all others.
unsafe fn keep_console(
    from: i32,
    dir: i32,
    name: &std::ffi::CStr,
    old: &std::ffi::CStr,
    segment: u64,
) -> ! {
    // SAFETY: plain system calls on descriptors this process owns after the fork.
    unsafe {
        libc::setsid();
        let _ = libc::prctl(libc::PR_SET_NAME, c"thaw-console".as_ptr());
        rename_command_line(b"thaw-console");
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_DFL);
        }
        // Forked from a thread of thaw's whose mask may block them (see
        // `InterruptsHeld`): the keeper takes signals like any process.
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::dup2(from, 0) < 0 || libc::dup2(dir, 1) < 0 {
            libc::_exit(1);
        }
        if libc::close_range(2, libc::c_uint::MAX, 0) != 0 {
            for fd in 2..4096 {
                libc::close(fd);
            }
        }
        let open = |trunc: i32| {
            libc::openat(
                1,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC | trunc,
                0o644,
            )
        };
        let mut log = open(0);
        let mut size = if log >= 0 {
            libc::lseek(log, 0, libc::SEEK_END).max(0) as u64
        } else {
            0
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = libc::read(0, buf.as_mut_ptr().cast(), buf.len());
            if n == 0 {
                libc::_exit(0);
            }
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                libc::_exit(1);
            }
            let n = n as usize;
            let mut done = 0;
            // A full disk or a removed directory loses output, never blocks QEMU.
            while log >= 0 && done < n {
                let w = libc::write(log, buf[done..n].as_ptr().cast(), n - done);
                if w <= 0 {
                    break;
                }
                done += w as usize;
            }
            size += n as u64;
            if size >= segment {
                libc::renameat(1, name.as_ptr(), 1, old.as_ptr());
                if log >= 0 {
                    libc::close(log);
                }
                log = open(libc::O_TRUNC);
                size = 0;
            }
        }
    }
}

/// Overwrites this process's command line (what `ps` and /proc/PID/cmdline show) with
/// `name`: a forked keeper must not look like the thaw or thawd command it was forked
/// from (tools find thaw's processes by their command lines). The arguments' memory is
/// found through /proc/self/stat (`arg_start`, `arg_end`); nothing is allocated.
///
/// # Safety
/// Only in a forked child that will never read its arguments again.
unsafe fn rename_command_line(name: &[u8]) {
    let mut buf = [0u8; 4096];
    // SAFETY: reads into a buffer on this stack; the argument area written below is
    // this process's own, writable, and spans [arg_start, arg_end).
    unsafe {
        let fd = libc::open(
            c"/proc/self/stat".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return;
        }
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        let Some((start, end)) = arg_area(&buf[..n.max(0) as usize]) else {
            return;
        };
        let len = end.saturating_sub(start);
        if len <= name.len() {
            return;
        }
        let area = std::slice::from_raw_parts_mut(start as *mut u8, len);
        area.fill(0);
        area[..name.len()].copy_from_slice(name);
    }
}

/// `arg_start` and `arg_end` (fields 48 and 49) of a /proc/PID/stat line. The command
/// name (field 2) may hold spaces and parentheses, so fields count from its last `)`.
fn arg_area(stat: &[u8]) -> Option<(usize, usize)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ' || b == b'\n')
        .filter(|f| !f.is_empty());
    // After the name comes field 3.
    let start = parse(fields.nth(48 - 3)?)?;
    let end = parse(fields.next()?)?;
    (start < end).then_some((start, end))
}

fn parse(digits: &[u8]) -> Option<usize> {
    digits.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(usize::from(d - b'0')))
            .flatten()
    })
}

/// SIGINT and SIGTERM held (blocked) in the thread that made this and in every thread
/// it starts from then on, until it is dropped: a signal that arrives meanwhile waits
/// instead of ending the process by its default action. thaw holds them from the
/// first line of `main` until its handlers are installed, so a Ctrl-C at any moment
/// of a command is handled by them. Threads started while they were held keep them
/// held (signals then go to the threads that take them); processes thaw starts get an
/// empty mask (std's `Command` resets it; the console keeper does too).
pub struct InterruptsHeld(libc::sigset_t);

impl InterruptsHeld {
    pub fn hold() -> InterruptsHeld {
        // SAFETY: `set` is a local signal set initialised by sigemptyset before use;
        // pthread_sigmask only changes the calling thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            InterruptsHeld(set)
        }
    }
}

impl Drop for InterruptsHeld {
    fn drop(&mut self) {
        // SAFETY: unblocks the set blocked in `hold`, in the calling thread only.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &self.0, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_argument_area_is_read_from_proc_stat() {
        let stat = std::fs::read("/proc/self/stat").unwrap();
        let (start, end) = super::arg_area(&stat).expect("fields 48 and 49");
        assert!(end - start >= std::env::args_os().next().unwrap().len());
        let odd = b"7 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 100 200 300\n";
        assert_eq!(super::arg_area(odd), Some((100, 200)));
    }
}
