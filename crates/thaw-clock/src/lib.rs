//! The clock channel's protocol, shared by the guest side (`thaw-clock`, in the guest)
//! and the host side (`thaw`'s restore).
//!
//! Why a channel of its own: a clone resumed from a snapshot has the snapshot's time,
//! so thaw sets the guest's clock before it calls the clone ready. qemu-ga's
//! `guest-set-time` does set it, but then always starts `hwclock` in a new process,
//! and in a clone that has just resumed under TCG every code path of that (fork,
//! exec, the dynamic loader) is translated again: ~75 ms with no hwclock at all,
//! ~300 ms with one, where the clock itself is a single system call. `thaw-clock`
//! runs in the guest from boot, waits on its own virtio-serial port
//! (`org.thaw.clock.0`) and makes that one call.
//!
//! One line each way, ASCII:
//! - host → guest: `SET <unix-ns> <id>`
//! - guest → host: `OK <id> <guest-unix-ns-after-setting>` or `ERR <id> <reason>`
//!
//! `<id>` ties an answer to its request (a stale answer of an earlier, abandoned
//! request is skipped).

/// The virtio-serial port's name in the guest.
pub const PORT_NAME: &str = "org.thaw.clock.0";

/// A request: set the clock to `ns` nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Set {
    pub ns: i128,
    pub id: u64,
}

impl Set {
    pub fn line(&self) -> String {
        format!("SET {} {}\n", self.ns, self.id)
    }

    pub fn parse(line: &str) -> Option<Set> {
        let mut it = line.trim_end().split(' ');
        if it.next()? != "SET" {
            return None;
        }
        let ns = it.next()?.parse().ok()?;
        let id = it.next()?.parse().ok()?;
        it.next().is_none().then_some(Set { ns, id })
    }
}

/// The guest's answer to a [`Set`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Set; the guest's clock right after, in nanoseconds since the Unix epoch.
    Ok {
        id: u64,
        guest_ns: i128,
    },
    Err {
        id: u64,
        reason: String,
    },
}

impl Answer {
    pub fn id(&self) -> u64 {
        match self {
            Answer::Ok { id, .. } | Answer::Err { id, .. } => *id,
        }
    }

    pub fn line(&self) -> String {
        match self {
            Answer::Ok { id, guest_ns } => format!("OK {id} {guest_ns}\n"),
            // One line, whatever the reason says.
            Answer::Err { id, reason } => format!("ERR {id} {}\n", reason.replace('\n', " ")),
        }
    }

    pub fn parse(line: &str) -> Option<Answer> {
        let line = line.trim_end();
        let (kind, rest) = line.split_once(' ')?;
        let (id, rest) = rest.split_once(' ')?;
        let id = id.parse().ok()?;
        match kind {
            "OK" => Some(Answer::Ok {
                id,
                guest_ns: rest.parse().ok()?,
            }),
            "ERR" => Some(Answer::Err {
                id,
                reason: rest.to_owned(),
            }),
            _ => None,
        }
    }
}

/// Sets the calling system's real-time clock to `ns` since the Unix epoch and returns
/// the clock read right after.
pub fn set_clock(ns: i128) -> std::io::Result<i128> {
    use rustix::time::{clock_gettime, clock_settime, ClockId, Timespec};
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    if ns < 0 {
        return Err(invalid());
    }
    let ts = Timespec {
        tv_sec: i64::try_from(ns / 1_000_000_000).map_err(|_| invalid())?,
        tv_nsec: (ns % 1_000_000_000) as _,
    };
    clock_settime(ClockId::Realtime, ts)?;
    let now = clock_gettime(ClockId::Realtime);
    Ok(i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec))
}

/// Answers one request line (the guest side's whole work).
pub fn answer(line: &str, set: impl FnOnce(i128) -> std::io::Result<i128>) -> Option<Answer> {
    let req = Set::parse(line)?;
    Some(match set(req.ns) {
        Ok(guest_ns) => Answer::Ok {
            id: req.id,
            guest_ns,
        },
        Err(e) => Answer::Err {
            id: req.id,
            reason: e.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_answers_round_trip() {
        let set = Set {
            ns: 1_765_000_000_123_456_789,
            id: 7,
        };
        assert_eq!(Set::parse(&set.line()), Some(set));
        for a in [
            Answer::Ok {
                id: 7,
                guest_ns: 1_765_000_000_123_999_999,
            },
            Answer::Err {
                id: 8,
                reason: "Operation not permitted (os error 1)".into(),
            },
        ] {
            assert_eq!(Answer::parse(&a.line()), Some(a));
        }
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in ["", "SET", "SET 1", "SET x 1", "SET 1 2 3", "GET 1 2"] {
            assert_eq!(Set::parse(bad), None, "{bad:?}");
        }
        for bad in ["", "OK", "OK 1", "OK x 1", "OK 1 y", "NO 1 2"] {
            assert_eq!(Answer::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_error_reason_stays_on_one_line() {
        let a = Answer::Err {
            id: 1,
            reason: "two\nlines".into(),
        };
        assert_eq!(a.line(), "ERR 1 two lines\n");
    }

    #[test]
    fn answering_sets_the_requested_time_and_reports_failure() {
        let ok = answer("SET 42 3\n", |ns| Ok(ns + 1)).unwrap();
        assert_eq!(
            ok,
            Answer::Ok {
                id: 3,
                guest_ns: 43
            }
        );
        let err = answer("SET 42 4\n", |_| {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        })
        .unwrap();
        assert!(matches!(err, Answer::Err { id: 4, .. }));
        assert_eq!(answer("hello", Ok), None);
    }

    #[test]
    fn a_negative_time_is_refused_before_any_system_call() {
        assert!(set_clock(-1).is_err());
    }
}
