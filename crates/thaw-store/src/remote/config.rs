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
    /// Where the credentials come from when no static keys are given (see
    /// [`RemoteConfig::from_env`]).
    pub credentials: CredentialSource,
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
            .field("credentials", &self.credentials)
            .field("region", &self.region)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Where a remote's credentials come from, in the order of the standard AWS chain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialSource {
    /// Static keys ([`RemoteConfig::access_key_id`] and the secret), or none asked
    /// for yet (a config made by [`RemoteConfig::parse`] and filled in by hand).
    #[default]
    Keys,
    /// `AssumeRoleWithWebIdentity` (Kubernetes IRSA, GitHub's OIDC): a token file
    /// and a role.
    WebIdentity {
        token_file: String,
        role_arn: String,
        session_name: Option<String>,
        sts_endpoint: Option<String>,
    },
    /// A container credentials endpoint (ECS tasks, EKS pod identity).
    Container {
        relative_uri: Option<String>,
        full_uri: Option<String>,
        token_file: Option<String>,
    },
    /// The EC2 instance metadata service: this host looks like an EC2 instance.
    InstanceMetadata,
    /// No signature at all (`AWS_SKIP_SIGNATURE=true`): public buckets.
    Anonymous,
}

/// The variables that give credentials, for the message when none do.
const CREDENTIAL_VARIABLES: &str = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
     (and AWS_SESSION_TOKEN for temporary keys), or AWS_WEB_IDENTITY_TOKEN_FILE and \
     AWS_ROLE_ARN, or AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI, or \
     AWS_SKIP_SIGNATURE=true for a public bucket";

/// A remote could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    #[error("invalid remote {url:?}: {why} (expected s3://bucket/prefix)")]
    Url { url: String, why: String },
    #[error("{name}={value:?} is not a number of seconds above 0")]
    Timeout { name: &'static str, value: String },
    #[error("no S3 credentials for {url}: set {CREDENTIAL_VARIABLES}")]
    NoCredentials { url: String },
    #[error("{set} is set but {missing} is not: both are needed")]
    HalfCredentials {
        set: &'static str,
        missing: &'static str,
    },
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
            credentials: CredentialSource::Keys,
            region: "us-east-1".into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Parses `url` and takes the endpoint, region, credentials and timeouts from the
    /// environment ([`RemoteConfig::from_vars`] with the process's variables).
    ///
    /// # Errors
    /// As [`RemoteConfig::from_vars`].
    pub fn from_env(url: &str) -> Result<RemoteConfig, RemoteConfigError> {
        RemoteConfig::from_vars(url, |name| std::env::var(name).ok())
    }

    /// Parses `url` and takes the rest from the variables `var` gives (empty ones
    /// count as unset), before any network call:
    /// - the endpoint: `THAW_S3_ENDPOINT`, else `AWS_ENDPOINT_URL_S3`, else
    ///   `AWS_ENDPOINT_URL` (else AWS itself);
    /// - the region: `AWS_REGION`, else `AWS_DEFAULT_REGION` (else `us-east-1`);
    /// - the credentials, in the order of the standard AWS chain: static keys
    ///   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); web
    ///   identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, optionally
    ///   `AWS_ROLE_SESSION_NAME`, `AWS_ENDPOINT_URL_STS`); a container endpoint
    ///   (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`, optionally
    ///   `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`); `AWS_SKIP_SIGNATURE=true` (a public
    ///   bucket, unsigned); the instance metadata service when this host is an EC2
    ///   instance (its firmware says so; `AWS_EC2_METADATA_DISABLED=true` turns that
    ///   off). None of these: [`RemoteConfigError::NoCredentials`], which names them;
    /// - the timeouts in seconds (decimals allowed): `THAW_S3_CONNECT_TIMEOUT`
    ///   (default 5) and `THAW_S3_TIMEOUT` (default 30).
    ///
    /// # Errors
    /// As [`RemoteConfig::parse`]; no credentials, or half of a pair; a timeout is
    /// not a positive number.
    pub fn from_vars(
        url: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<RemoteConfig, RemoteConfigError> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let mut config = RemoteConfig::parse(url)?;
        config.endpoint = var("THAW_S3_ENDPOINT")
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"));
        if let Some(region) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            config.region = region;
        }
        config.access_key_id = var("AWS_ACCESS_KEY_ID");
        config.secret_access_key = var("AWS_SECRET_ACCESS_KEY");
        config.session_token = var("AWS_SESSION_TOKEN");
        config.credentials = credential_source(&config, &var, on_ec2)?;
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

/// The first source of the standard chain that `var` (and this host) offers.
fn credential_source(
    config: &RemoteConfig,
    var: &impl Fn(&str) -> Option<String>,
    on_ec2: impl Fn() -> bool,
) -> Result<CredentialSource, RemoteConfigError> {
    let is_true = |name: &str| var(name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let pair = |a: &'static str, b: &'static str| match (var(a), var(b)) {
        (Some(x), Some(y)) => Ok(Some((x, y))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(RemoteConfigError::HalfCredentials { set: a, missing: b }),
        (None, Some(_)) => Err(RemoteConfigError::HalfCredentials { set: b, missing: a }),
    };
    if pair("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")?.is_some() {
        return Ok(CredentialSource::Keys);
    }
    if let Some((token_file, role_arn)) = pair("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")? {
        return Ok(CredentialSource::WebIdentity {
            token_file,
            role_arn,
            session_name: var("AWS_ROLE_SESSION_NAME"),
            sts_endpoint: var("AWS_ENDPOINT_URL_STS"),
        });
    }
    let relative_uri = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
    let full_uri = var("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    if relative_uri.is_some() || full_uri.is_some() {
        return Ok(CredentialSource::Container {
            relative_uri,
            full_uri,
            token_file: var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        });
    }
    if is_true("AWS_SKIP_SIGNATURE") {
        return Ok(CredentialSource::Anonymous);
    }
    if !is_true("AWS_EC2_METADATA_DISABLED") && on_ec2() {
        return Ok(CredentialSource::InstanceMetadata);
    }
    Err(RemoteConfigError::NoCredentials { url: config.url() })
}

/// Whether this host is an EC2 instance, as its firmware tells (no network call): the
/// DMI vendor of Nitro instances, or the `ec2` prefix of Xen instances' UUID.
fn on_ec2() -> bool {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    read("/sys/class/dmi/id/board_vendor").contains("Amazon")
        || read("/sys/class/dmi/id/sys_vendor").contains("Amazon")
        || read("/sys/hypervisor/uuid")
            .to_ascii_lowercase()
            .starts_with("ec2")
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

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn credentials_follow_the_standard_chain() {
        let url = "s3://bucket/p";
        let keys = [
            ("AWS_ACCESS_KEY_ID", "AKIA"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("AWS_ROLE_ARN", "arn:r"),
        ];
        let c = RemoteConfig::from_vars(url, vars(&keys)).unwrap();
        assert_eq!(
            c.credentials,
            CredentialSource::Keys,
            "static keys come first"
        );
        assert_eq!(c.access_key_id.as_deref(), Some("AKIA"));

        let web = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/ci"),
            ("AWS_ROLE_SESSION_NAME", "job-7"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/creds"),
        ];
        let c = RemoteConfig::from_vars(url, vars(&web)).unwrap();
        assert_eq!(
            c.credentials,
            CredentialSource::WebIdentity {
                token_file: "/var/run/secrets/token".into(),
                role_arn: "arn:aws:iam::1:role/ci".into(),
                session_name: Some("job-7".into()),
                sts_endpoint: None,
            }
        );

        let container = [(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://169.254.170.23/v1",
        )];
        let c = RemoteConfig::from_vars(url, vars(&container)).unwrap();
        assert!(matches!(
            c.credentials,
            CredentialSource::Container {
                full_uri: Some(_),
                relative_uri: None,
                ..
            }
        ));

        let public = [("AWS_SKIP_SIGNATURE", "true")];
        let c = RemoteConfig::from_vars(url, vars(&public)).unwrap();
        assert_eq!(c.credentials, CredentialSource::Anonymous);
    }

    #[test]
    fn no_credentials_is_one_line_naming_the_variables() {
        let none = RemoteConfig::parse("s3://bucket/p").unwrap();
        let err = credential_source(&none, &vars(&[]), || false).unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("no S3 credentials for s3://bucket/p: set AWS_ACCESS_KEY_ID"));
        for v in [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ROLE_ARN",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ] {
            assert!(line.contains(v), "{line}");
        }
        // On EC2 the instance metadata service is the last resort, unless disabled.
        assert_eq!(
            credential_source(&none, &vars(&[]), || true).unwrap(),
            CredentialSource::InstanceMetadata
        );
        let disabled = [("AWS_EC2_METADATA_DISABLED", "true")];
        assert!(credential_source(&none, &vars(&disabled), || true).is_err());
        let half = [("AWS_ACCESS_KEY_ID", "AKIA")];
        assert_eq!(
            credential_source(&none, &vars(&half), || true)
                .unwrap_err()
                .to_string(),
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: both are needed"
        );
    }

    #[test]
    fn endpoint_and_region_come_from_the_aws_variables_too() {
        let v = [
            ("AWS_ENDPOINT_URL", "http://generic:9000"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_SKIP_SIGNATURE", "true"),
        ];
        let c = RemoteConfig::from_vars("s3://bucket", vars(&v)).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://generic:9000"));
        assert_eq!(c.region, "eu-west-3");
        let v = [
            ("AWS_ENDPOINT_URL", "http://generic:9000"),
            ("AWS_ENDPOINT_URL_S3", "http://s3-only:9000"),
            ("AWS_REGION", "ap-south-1"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_SKIP_SIGNATURE", "true"),
        ];
        let c = RemoteConfig::from_vars("s3://bucket", vars(&v)).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://s3-only:9000"));
        assert_eq!(c.region, "ap-south-1");
        let v = [
            ("THAW_S3_ENDPOINT", "http://thaw:1"),
            ("AWS_ENDPOINT_URL_S3", "http://x:2"),
            ("AWS_SKIP_SIGNATURE", "true"),
        ];
        let c = RemoteConfig::from_vars("s3://bucket", vars(&v)).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://thaw:1"));
    }
}
