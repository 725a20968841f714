//! VM lifetimes and labels: `--ttl 10m` and `--label team=ci` on boot and restore.
//!
//! Both live in the VM's record ([`VmState::labels`], [`VmState::expires_unix_ms`]), so
//! an expiry holds across a daemon restart. A VM whose time has passed is stopped and
//! removed by [`reap_expired`]: thawd calls it every second and when it starts; without
//! a daemon, `thaw ls` (and every command listing VMs) calls it, so expiry is enforced
//! when thaw next runs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Labels of a VM: keys and values as [`check_label`] allows them.
pub type Labels = BTreeMap<String, String>;

/// The longest a label key or value may be.
pub const MAX_LABEL_LEN: usize = 63;
/// The most labels one VM may have.
pub const MAX_LABELS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LifetimeError {
    #[error(
        "bad ttl {0:?}: expected a duration like 30s, 10m, 2h or 1d (a bare number is seconds)"
    )]
    Ttl(String),
    #[error("ttl must be more than 0 seconds")]
    TtlZero,
    #[error("bad label {0:?}: expected KEY=VALUE")]
    LabelForm(String),
    #[error("bad label key {0:?}: 1 to 63 characters of a-z A-Z 0-9 . _ - /, starting with a letter or digit")]
    LabelKey(String),
    #[error("bad label value {0:?}: up to 63 characters of a-z A-Z 0-9 . _ - /")]
    LabelValue(String),
    #[error("too many labels: at most {MAX_LABELS}")]
    TooMany,
    #[error("bad filter {0:?}: expected label=KEY=VALUE")]
    Filter(String),
}

/// A duration as `--ttl` and the API's `ttl` take it: a number followed by `s`, `m`,
/// `h` or `d`, or a bare number of seconds; more than zero and at most a year.
pub fn parse_ttl(s: &str) -> Result<Duration, LifetimeError> {
    let bad = || LifetimeError::Ttl(s.to_owned());
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(mult).ok_or_else(bad)?;
    if secs == 0 {
        return Err(LifetimeError::TtlZero);
    }
    if secs > 366 * 86_400 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

fn value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Checks one label's key and value.
pub fn check_label(key: &str, value: &str) -> Result<(), LifetimeError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_LEN
        && key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key.chars().all(value_char);
    if !key_ok {
        return Err(LifetimeError::LabelKey(key.to_owned()));
    }
    if value.len() > MAX_LABEL_LEN || !value.chars().all(value_char) {
        return Err(LifetimeError::LabelValue(value.to_owned()));
    }
    Ok(())
}

/// Checks every label of `labels`.
pub fn check_labels(labels: &Labels) -> Result<(), LifetimeError> {
    if labels.len() > MAX_LABELS {
        return Err(LifetimeError::TooMany);
    }
    labels.iter().try_for_each(|(k, v)| check_label(k, v))
}

/// `KEY=VALUE`, checked.
pub fn parse_label(s: &str) -> Result<(String, String), LifetimeError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| LifetimeError::LabelForm(s.to_owned()))?;
    check_label(k, v)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// What a boot or restore gives its VMs: labels and a time to live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub labels: Labels,
    pub ttl: Option<Duration>,
}

impl Lifetime {
    /// From the wire form (`ttl` as [`parse_ttl`] takes it), checked.
    pub fn from_wire(ttl: Option<&str>, labels: &Labels) -> Result<Lifetime, LifetimeError> {
        check_labels(labels)?;
        Ok(Lifetime {
            labels: labels.clone(),
            ttl: ttl.map(parse_ttl).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.ttl.is_none()
    }
}

/// `label=KEY=VALUE` as `--filter` and `?label=` take it: a VM matches when it has
/// every label of the filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelFilter {
    pub labels: Vec<(String, String)>,
}

impl LabelFilter {
    /// From `--filter` arguments (`label=KEY=VALUE` each).
    pub fn parse_filters<S: AsRef<str>>(filters: &[S]) -> Result<LabelFilter, LifetimeError> {
        let mut labels = Vec::new();
        for f in filters {
            let f = f.as_ref();
            let rest = f
                .strip_prefix("label=")
                .ok_or_else(|| LifetimeError::Filter(f.to_owned()))?;
            labels.push(parse_label(rest).map_err(|_| LifetimeError::Filter(f.to_owned()))?);
        }
        Ok(LabelFilter { labels })
    }

    /// From the API's `label` query values (`KEY=VALUE` each).
    pub fn parse_labels<S: AsRef<str>>(labels: &[S]) -> Result<LabelFilter, LifetimeError> {
        Ok(LabelFilter {
            labels: labels
                .iter()
                .map(|l| parse_label(l.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When a TTL given now ends.
pub fn expiry_from_now(ttl: Duration) -> u64 {
    now_unix_ms().saturating_add(ttl.as_millis() as u64)
}

/// Whole seconds left until `expires_unix_ms` (0 once passed).
pub fn secs_left(expires_unix_ms: u64) -> u64 {
    expires_unix_ms.saturating_sub(now_unix_ms()).div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_their_unit() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_ttl("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn bad_ttls_are_refused() {
        for bad in [
            "",
            "s",
            "10x",
            "-5s",
            "1.5m",
            "10 m",
            "m10",
            "99999999999999999999",
            "400d",
        ] {
            assert!(
                matches!(parse_ttl(bad), Err(LifetimeError::Ttl(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse_ttl("0s"), Err(LifetimeError::TtlZero));
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(
            parse_label("team=ci"),
            Ok(("team".to_owned(), "ci".to_owned()))
        );
        assert_eq!(parse_label("job="), Ok(("job".to_owned(), String::new())));
        assert!(matches!(
            parse_label("team"),
            Err(LifetimeError::LabelForm(_))
        ));
        assert!(matches!(parse_label("=x"), Err(LifetimeError::LabelKey(_))));
        assert!(matches!(
            parse_label("a b=x"),
            Err(LifetimeError::LabelKey(_))
        ));
        assert!(matches!(
            parse_label("a=x y"),
            Err(LifetimeError::LabelValue(_))
        ));
        let long = "k".repeat(MAX_LABEL_LEN + 1);
        assert!(matches!(
            parse_label(&format!("{long}=v")),
            Err(LifetimeError::LabelKey(_))
        ));
        let many: Labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert_eq!(check_labels(&many), Err(LifetimeError::TooMany));
    }

    #[test]
    fn filters_match_every_label() {
        let f = LabelFilter::parse_filters(&["label=team=ci", "label=job=7"]).unwrap();
        let mut l: Labels = [("team".into(), "ci".into())].into();
        assert!(!f.matches(&l));
        l.insert("job".into(), "7".into());
        assert!(f.matches(&l));
        l.insert("job".into(), "8".into());
        assert!(!f.matches(&l));
        assert!(LabelFilter::default().matches(&Labels::new()));
        for bad in ["team=ci", "label=team", "label=", "name=x"] {
            assert!(
                matches!(
                    LabelFilter::parse_filters(&[bad]),
                    Err(LifetimeError::Filter(_))
                ),
                "{bad:?}"
            );
        }
    }
}
