//! Where a remote is and how to reach it: the bucket, prefix, endpoint, keys and
//! timeouts, from a URL and the environment.

use std::time::Duration;

use object_store::path::Path as ObjectPath;

/// How long one connection attempt may take unless `THAW_S3_CONNECT_TIMEOUT` says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, retries included, unless `THAW_S3_TIMEOUT` says.
/// A chunk is at most 16 MiB: 30 s is 0.5 MB/s.
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a remote is and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// Server URL for S3-compatible servers (`http://127.0.0.1:9000`); `None`
    /// for AWS itself.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
    /// Region; `us-east-1` unless told otherwise.
    pub region: String,
    /// How long one attempt to open a connection may take.
    pub connect_timeout: Duration,
    /// How long one request may take from its start to its last byte, retries
    /// included; past it the request fails with [`RemoteError::Timeout`].
    pub request_timeout: Duration,
}

impl std::fmt::Debug for RemoteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("region", &self.region)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// A remote could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    #[error("invalid remote {url:?}: {why} (expected s3://bucket/prefix)")]
    Url { url: String, why: String },
    #[error("{name}={value:?} is not a number of seconds above 0")]
    Timeout { name: &'static str, value: String },
    #[error("cannot set up the S3 client for {url}")]
    Client {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

impl RemoteConfig {
    /// Parses `s3://bucket[/prefix]`, with no endpoint or credentials, region
    /// `us-east-1` and the default timeouts.
    ///
    /// # Errors
    /// Not an `s3://` URL, or the bucket name or prefix is not valid.
    pub fn parse(url: &str) -> Result<RemoteConfig, RemoteConfigError> {
        let bad = |why: &str| RemoteConfigError::Url {
            url: url.into(),
            why: why.into(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.contains("..")
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3-63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() {
            ObjectPath::parse(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?;
        }
        Ok(RemoteConfig {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            region: "us-east-1".into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Parses `url` and takes the endpoint and credentials from the environment:
    /// `THAW_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, and `AWS_REGION` (default `us-east-1`); and the
    /// timeouts in seconds (decimals allowed): `THAW_S3_CONNECT_TIMEOUT` (default
    /// 5) and `THAW_S3_TIMEOUT` (default 30).
    ///
    /// # Errors
    /// As [`RemoteConfig::parse`], or a timeout is not a positive number.
    pub fn from_env(url: &str) -> Result<RemoteConfig, RemoteConfigError> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let mut config = RemoteConfig::parse(url)?;
        config.endpoint = var("THAW_S3_ENDPOINT");
        config.access_key_id = var("AWS_ACCESS_KEY_ID");
        config.secret_access_key = var("AWS_SECRET_ACCESS_KEY");
        config.session_token = var("AWS_SESSION_TOKEN");
        if let Some(region) = var("AWS_REGION") {
            config.region = region;
        }
        for (name, slot) in [
            ("THAW_S3_CONNECT_TIMEOUT", &mut config.connect_timeout),
            ("THAW_S3_TIMEOUT", &mut config.request_timeout),
        ] {
            if let Some(value) = var(name) {
                *slot = parse_seconds(&value).ok_or(RemoteConfigError::Timeout { name, value })?;
            }
        }
        Ok(config)
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        match self.prefix.as_str() {
            "" => format!("s3://{}", self.bucket),
            prefix => format!("s3://{}/{prefix}", self.bucket),
        }
    }
}

/// `"2"`, `"0.5"`: a finite number of seconds above 0 (and below a year).
pub(super) fn parse_seconds(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs > 0.0 && secs < 365.0 * 86_400.0).then(|| Duration::from_secs_f64(secs))
}

/// `2 s`, `0.5 s`.
pub(super) fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = RemoteConfig::parse("s3://thaw-cache/ci/snapshots/").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str()),
            ("thaw-cache", "ci/snapshots")
        );
        assert_eq!(c.url(), "s3://thaw-cache/ci/snapshots");
        let c = RemoteConfig::parse("s3://bucket").unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.prefix.as_str(), c.region.as_str()),
            ("bucket", "", "us-east-1")
        );
        for bad in [
            "http://b/p",
            "s3://",
            "s3://UPPER/p",
            "s3://ab",
            "s3://b..c/../x",
            "s3://bucket/a//b",
        ] {
            assert!(RemoteConfig::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn timeouts_default_well_under_a_minute_and_parse_as_seconds() {
        let c = RemoteConfig::parse("s3://bucket").unwrap();
        assert!(c.connect_timeout < c.request_timeout);
        assert!(c.request_timeout < Duration::from_secs(60));
        assert_eq!(parse_seconds("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_seconds(" 0.5 "), Some(Duration::from_millis(500)));
        for bad in ["", "0", "-1", "soon", "inf", "NaN", "1e12"] {
            assert_eq!(parse_seconds(bad), None, "{bad:?} accepted");
        }
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = RemoteConfig::parse("s3://bucket/p").unwrap();
        c.secret_access_key = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
