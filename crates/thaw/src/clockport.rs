//! The host side of the clock channel: sets a resumed clone's clock through its
//! `org.thaw.clock.0` port, where the guest's `thaw-clock` makes one system call
//! (see the `thaw_clock` crate for why, and for the protocol). QEMU connects the port
//! to two FIFOs in the VM's directory (`clock.in`, host → guest; `clock.out`, guest →
//! host), made before QEMU starts.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use thaw_clock::{Answer, Set};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// Setting the clock through the port failed; the caller falls back to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ClockPortError {
    #[error("open the clock channel {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the clock channel failed")]
    Io(#[from] std::io::Error),
    #[error("thaw-clock in the guest did not answer within {0:?}")]
    Silent(Duration),
    #[error("thaw-clock in the guest could not set the clock: {0}")]
    Refused(String),
    #[error("the guest clock stayed {lag_ms} ms behind after {attempts} attempts")]
    Behind { lag_ms: i128, attempts: u32 },
}

/// The FIFO QEMU reads what the guest is sent from.
fn to_guest(base: &Path) -> PathBuf {
    suffixed(base, ".in")
}

/// The FIFO QEMU writes what the guest answers into.
fn from_guest(base: &Path) -> PathBuf {
    suffixed(base, ".out")
}

fn suffixed(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Makes the two FIFOs of the channel at `base` (private to the owner); ones already
/// there are kept.
pub fn make_pipe(base: &Path) -> std::io::Result<()> {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    for path in [to_guest(base), from_guest(base)] {
        match mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// How often a request is sent again when the guest's clock came out more than the
/// tolerance behind (it answered late: the first answer of a clone that has just
/// resumed runs code the emulator translates for the first time; the next is quick).
/// The lag measured is the round trip, an upper bound of the clock's error: on a host
/// at a load of 5 per core three round trips in a row took over 100 ms, so a few more
/// tries (each one round trip) spare the agent path's much slower `hwclock`.
const ATTEMPTS: u32 = 6;

/// Sets the guest's clock to the host's through the channel at `base`, until it is
/// within `tolerance`; gives up after `wait`. Returns how many requests it took.
pub async fn set(base: &Path, tolerance: Duration, wait: Duration) -> Result<u32, ClockPortError> {
    let deadline = Instant::now() + wait;
    let open = |path: PathBuf, e: std::io::Error| ClockPortError::Open { path, source: e };
    // QEMU holds both FIFOs open for reading and writing, so neither open blocks.
    let out = from_guest(base);
    let mut rx = pipe::OpenOptions::new()
        .open_receiver(&out)
        .map_err(|e| open(out.clone(), e))?;
    let input = to_guest(base);
    let mut tx = pipe::OpenOptions::new()
        .open_sender(&input)
        .map_err(|e| open(input.clone(), e))?;
    let mut pending = Vec::new();
    drain(&mut rx)?;
    let mut lag_ms = 0;
    for attempt in 1..=ATTEMPTS {
        let id = u64::from(attempt) | (u64::from(std::process::id()) << 8);
        tx.write_all(Set { ns: now_ns(), id }.line().as_bytes())
            .await?;
        let answer = loop {
            if let Some(a) = next_answer(&mut pending) {
                if a.id() == id {
                    break a;
                }
                continue; // an earlier request's answer
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut buf = [0u8; 256];
            match tokio::time::timeout(left, read_some(&mut rx, &mut buf)).await {
                Err(_) => return Err(ClockPortError::Silent(wait)),
                Ok(Ok(n)) => pending.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e.into()),
            }
        };
        match answer {
            Answer::Err { reason, .. } => return Err(ClockPortError::Refused(reason)),
            Answer::Ok { guest_ns, .. } => {
                let lag = now_ns() - guest_ns;
                lag_ms = lag / 1_000_000;
                tracing::debug!(attempt, lag_ms, "clock set through the clock channel");
                if lag.unsigned_abs() <= tolerance.as_nanos() {
                    return Ok(attempt);
                }
            }
        }
    }
    Err(ClockPortError::Behind {
        lag_ms,
        attempts: ATTEMPTS,
    })
}

/// Reads what is there (at least one byte), waiting for it.
async fn read_some(rx: &mut pipe::Receiver, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        rx.readable().await?;
        match rx.try_read(buf) {
            // No writer: QEMU keeps one open, so this is a QEMU that ended.
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Drops answers left over from requests nobody waited for.
fn drain(rx: &mut pipe::Receiver) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match rx.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The next whole line in `pending` that parses as an answer (others are skipped).
fn next_answer(pending: &mut Vec<u8>) -> Option<Answer> {
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        if let Some(a) = std::str::from_utf8(&line).ok().and_then(Answer::parse) {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    /// A stand-in for QEMU and the guest: holds both FIFOs open as QEMU does, and
    /// answers each request as `thaw-clock` would, with the guest clock `behind` the
    /// requested time on the first `late` answers.
    fn fake_guest(base: &Path, late: u32, behind: Duration) -> std::thread::JoinHandle<()> {
        let rd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(to_guest(base))
            .unwrap();
        let mut wr = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(from_guest(base))
            .unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(rd);
            let mut n = 0;
            let mut line = String::new();
            // Garbage and a stale answer first: both must be skipped.
            wr.write_all(b"noise\nOK 1 5\n").unwrap();
            while lines.read_line(&mut line).unwrap() > 0 {
                n += 1;
                let lag = if n <= late {
                    behind.as_nanos() as i128
                } else {
                    0
                };
                let a = thaw_clock::answer(&line, |ns| Ok(ns - lag)).unwrap();
                wr.write_all(a.line().as_bytes()).unwrap();
                line.clear();
                if n == ATTEMPTS {
                    return;
                }
            }
        })
    }

    #[tokio::test]
    async fn the_clock_is_set_and_a_late_answer_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("clock");
        make_pipe(&base).unwrap();
        make_pipe(&base).unwrap(); // kept when there
        let _guest = fake_guest(&base, 1, Duration::from_secs(1));
        let wait = Duration::from_secs(10);
        let attempts = set(&base, Duration::from_millis(50), wait).await.unwrap();
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn a_guest_that_stays_behind_fails_after_every_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("clock");
        make_pipe(&base).unwrap();
        let _guest = fake_guest(&base, ATTEMPTS, Duration::from_secs(1));
        let err = set(&base, Duration::from_millis(50), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClockPortError::Behind { attempts: ATTEMPTS, lag_ms } if lag_ms >= 1000),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_guest_without_thaw_clock_is_reported_silent() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("clock");
        make_pipe(&base).unwrap();
        // QEMU's ends, nobody answering.
        let _held: Vec<_> = [to_guest(&base), from_guest(&base)]
            .into_iter()
            .map(|p| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .unwrap()
            })
            .collect();
        let err = set(&base, Duration::from_millis(50), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ClockPortError::Silent(_)), "{err:?}");
    }

    #[tokio::test]
    async fn no_channel_is_an_open_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("clock");
        let err = set(&base, Duration::from_millis(50), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("clock.out"), "{err}");
    }
}
