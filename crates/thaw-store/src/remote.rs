//! Remotes: a bucket and prefix on an S3-compatible server, and push / pull of
//! chunks and manifests.
//!
//! In the bucket, `<prefix>/chunks/<64 hex>` holds a chunk's zstd frame, byte
//! for byte as it is stored locally, and `<prefix>/manifests/<name>.json` a
//! manifest. [`push`] uploads the manifest after every chunk, so a manifest in
//! the bucket never names a missing chunk; [`pull_chunks`] verifies each chunk
//! before it becomes visible in the local store.
//!
//! Which chunks a remote already has is learned by listing `<prefix>/chunks/`
//! once (one request per 1,000 chunks) rather than by a HEAD per chunk: a first
//! push of a 4 GiB RAM image is 65,536 chunks, 65,536 HEADs but at most 66 list
//! pages. The cost is listing chunks that other snapshots use, which stays
//! small next to uploading.
//!
//! Every request has a deadline, retries included ([`RemoteConfig::request_timeout`],
//! `THAW_S3_TIMEOUT`), and every connection attempt one of its own
//! ([`RemoteConfig::connect_timeout`], `THAW_S3_CONNECT_TIMEOUT`): a server that
//! accepts connections and never answers fails a push or pull with
//! [`RemoteError::Timeout`] instead of holding it for minutes.

mod config;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::chunk::{self, ChunkDefect, MAX_CHUNK_SIZE};
use crate::fsio::IoError;
use crate::manifest::{
    validate_manifest_name, InvalidManifestName, ManifestError, MAX_MANIFEST_BYTES,
};
use crate::store::{ChunkError, ChunkWriter};
use crate::{ChunkId, Progress, Store};
use config::seconds;
pub use config::{CredentialSource, RemoteConfig, RemoteConfigError};

/// Uploads or downloads in flight at once.
const PARALLEL_TRANSFERS: usize = 8;

/// A request to the remote failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "{endpoint} did not answer within {} ({step} {key}); THAW_S3_TIMEOUT sets the limit",
        seconds(*limit)
    )]
    Timeout {
        endpoint: String,
        step: &'static str,
        key: String,
        limit: Duration,
    },
    #[error("cannot reach {endpoint} ({step} {key}): {cause}")]
    Unreachable {
        endpoint: String,
        step: &'static str,
        key: String,
        cause: String,
    },
    #[error("cannot {step} {key}")]
    Request {
        step: &'static str,
        key: String,
        /// Boxed: object_store's error is large, and every result carries it.
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{key} is larger than the {limit}-byte limit")]
    TooLarge { key: String, limit: u64 },
}

/// The builder set to take its credentials from `source` (static keys are set apart).
fn with_credentials(builder: AmazonS3Builder, source: &CredentialSource) -> AmazonS3Builder {
    use object_store::aws::AmazonS3ConfigKey as Key;
    let set = |b: AmazonS3Builder, key: Key, value: &Option<String>| match value {
        Some(v) => b.with_config(key, v),
        None => b,
    };
    match source {
        CredentialSource::Keys | CredentialSource::InstanceMetadata => builder,
        CredentialSource::Anonymous => builder.with_skip_signature(true),
        CredentialSource::WebIdentity {
            token_file,
            role_arn,
            session_name,
            sts_endpoint,
        } => {
            let b = builder
                .with_config(Key::WebIdentityTokenFile, token_file)
                .with_config(Key::RoleArn, role_arn);
            let b = set(b, Key::RoleSessionName, session_name);
            set(b, Key::StsEndpoint, sts_endpoint)
        }
        CredentialSource::Container {
            relative_uri,
            full_uri,
            token_file,
        } => {
            let b = set(builder, Key::ContainerCredentialsRelativeUri, relative_uri);
            let b = set(b, Key::ContainerCredentialsFullUri, full_uri);
            set(b, Key::ContainerAuthorizationTokenFile, token_file)
        }
    }
}

/// A bucket and prefix on an S3-compatible server.
#[derive(Clone)]
pub struct Remote {
    pub(crate) client: Arc<dyn ObjectStore>,
    pub(crate) prefix: ObjectPath,
    url: String,
    /// The server's URL, for messages.
    pub(crate) endpoint: String,
    pub(crate) request_timeout: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

fn plain_http(endpoint: &str) -> bool {
    endpoint.starts_with("http://")
}

/// Makes ring the process's rustls crypto provider, once: the S3 client's reqwest is
/// built without a provider of its own (`rustls-no-provider`, so that aws-lc-rs and its
/// cmake build stay out of thaw) and asks for the process default.
pub fn install_crypto() {
    // Err only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Remote {
    /// A client for the remote `config` describes. Plain `http://` endpoints
    /// are allowed (local test servers, MinIO on a LAN). Nothing is sent yet.
    ///
    /// # Errors
    /// The client cannot be built from `config`.
    pub fn new(config: &RemoteConfig) -> Result<Remote, RemoteConfigError> {
        install_crypto();
        // The request's own deadline ([`Remote::within`]) bounds the whole of it;
        // object_store's per-attempt timeout and retry window are set to the same
        // limit so that no retry starts after it (by default they allow 3 minutes).
        let mut options = ClientOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout);
        if config.endpoint.as_deref().is_some_and(plain_http) {
            // A new connection per request to a plain-HTTP endpoint (a server on this
            // host or LAN: it costs a round trip, no TLS handshake). A kept-alive
            // connection to a server that does not set TCP_NODELAY (s3s-fs does not)
            // stalls each response's last segment until the client's delayed ACK,
            // 40 ms, which made a 64 KiB chunk cost 35 ms instead of 2.
            options = options.with_pool_max_idle_per_host(0);
        }
        let retry = RetryConfig {
            retry_timeout: config.request_timeout,
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_client_options(options)
            .with_retry(retry);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(plain_http(endpoint));
        }
        if let Some(key) = &config.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &config.session_token {
            builder = builder.with_token(token);
        }
        builder = with_credentials(builder, &config.credentials);
        let client = builder
            .build()
            .map_err(|source| RemoteConfigError::Client {
                url: config.url(),
                source,
            })?;
        let prefix = ObjectPath::parse(&config.prefix).map_err(|e| RemoteConfigError::Url {
            url: config.url(),
            why: e.to_string(),
        })?;
        let endpoint = match &config.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => format!("https://s3.{}.amazonaws.com", config.region),
        };
        Ok(Remote {
            client: Arc::new(client),
            prefix,
            url: config.url(),
            endpoint,
            request_timeout: config.request_timeout,
        })
    }

    /// [`Remote::new`] with [`RemoteConfig::from_env`].
    ///
    /// # Errors
    /// As those two.
    pub fn from_env(url: &str) -> Result<Remote, RemoteConfigError> {
        Remote::new(&RemoteConfig::from_env(url)?)
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn chunks_dir(&self) -> ObjectPath {
        self.prefix.clone().join("chunks")
    }

    fn manifests_dir(&self) -> ObjectPath {
        self.prefix.clone().join("manifests")
    }

    pub(crate) fn chunk_key(&self, id: &ChunkId) -> ObjectPath {
        self.chunks_dir().join(id.to_hex().as_str())
    }

    fn manifest_key(&self, name: &str) -> ObjectPath {
        self.manifests_dir().join(format!("{name}.json").as_str())
    }

    pub(crate) fn describe(&self, key: &ObjectPath) -> String {
        // Keys carry the prefix already: show them under the bucket.
        let bucket = self
            .url
            .trim_start_matches("s3://")
            .split('/')
            .next()
            .unwrap_or("");
        format!("s3://{bucket}/{key}")
    }

    /// Runs `request` (`step` on `key`) within the request timeout.
    pub(crate) async fn within<T>(
        &self,
        step: &'static str,
        key: &ObjectPath,
        request: impl Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        let timeout = || RemoteError::Timeout {
            endpoint: self.endpoint.clone(),
            step,
            key: self.describe(key),
            limit: self.request_timeout,
        };
        match tokio::time::timeout(self.request_timeout, request).await {
            Err(_elapsed) => Err(timeout()),
            Ok(Err(RemoteError::Request { source, step, key })) => match http_kind(&source) {
                // object_store's own per-attempt timeout can fire on the same tick.
                Some(HttpErrorKind::Timeout) => Err(timeout()),
                // Its retries are spent: say so in a few words, not its whole chain.
                Some(HttpErrorKind::Connect) => Err(RemoteError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    step,
                    key,
                    cause: root_cause(&source),
                }),
                _ => Err(RemoteError::Request { source, step, key }),
            },
            Ok(result) => result,
        }
    }

    pub(crate) fn request_err(
        &self,
        step: &'static str,
        key: &ObjectPath,
    ) -> impl Fn(object_store::Error) -> RemoteError + '_ {
        let key = self.describe(key);
        move |source| RemoteError::Request {
            step,
            key: key.clone(),
            source: Box::new(source),
        }
    }

    /// The objects under `dir`, one listing page at a time, each page within the
    /// request timeout.
    async fn list(&self, dir: &ObjectPath) -> Result<Vec<object_store::ObjectMeta>, RemoteError> {
        let mut listing = self.client.list(Some(dir));
        let mut metas = Vec::new();
        let err = self.request_err("list", dir);
        // The page's error goes through `within` too, to be classified.
        while let Some(meta) = self
            .within("list", dir, async {
                listing.next().await.transpose().map_err(&err)
            })
            .await?
        {
            metas.push(meta);
        }
        Ok(metas)
    }

    /// Every chunk the remote holds, with its stored size.
    pub(crate) async fn list_chunks(&self) -> Result<HashMap<ChunkId, u64>, RemoteError> {
        let mut chunks = HashMap::new();
        for meta in self.list(&self.chunks_dir()).await? {
            if let Some(id) = meta
                .location
                .filename()
                .and_then(|n| n.parse::<ChunkId>().ok())
            {
                chunks.insert(id, meta.size);
            }
        }
        Ok(chunks)
    }

    /// The object at `key`, refused past `limit` bytes; `None` if absent. The
    /// request and its body together get one request timeout.
    pub(crate) async fn get_capped(
        &self,
        key: &ObjectPath,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, RemoteError> {
        self.within("get", key, async {
            let result = match self.client.get(key).await {
                Ok(result) => result,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(self.request_err("get", key)(e)),
            };
            let too_large = || RemoteError::TooLarge {
                key: self.describe(key),
                limit,
            };
            if result.meta.size > limit {
                return Err(too_large());
            }
            let mut body = result.into_stream();
            let mut bytes = Vec::new();
            while let Some(piece) = body.next().await {
                let piece = piece.map_err(self.request_err("read", key))?;
                if (bytes.len() + piece.len()) as u64 > limit {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&piece);
            }
            Ok(Some(bytes))
        })
        .await
    }

    async fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.within("put", key, async {
            self.client
                .put(key, PutPayload::from(bytes))
                .await
                .map(drop)
                .map_err(self.request_err("put", key))
        })
        .await
    }
}

/// What kind of transport failure made object_store give up on `error`, if one did.
fn http_kind(error: &object_store::Error) -> Option<HttpErrorKind> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return Some(http.kind());
        }
        cause = e.source();
    }
    None
}

/// The innermost error's message (`Connection refused (os error 111)`).
fn root_cause(error: &object_store::Error) -> String {
    let mut last: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// What [`push`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Chunks uploaded.
    pub chunks_sent: u64,
    /// Chunks the remote already had.
    pub chunks_present: u64,
    /// Bytes uploaded for chunks (stored, compressed size).
    pub bytes_sent: u64,
    /// Bytes of the manifest uploaded.
    pub manifest_bytes: u64,
}

/// [`push`] failed; the remote's manifest was not written (chunks already sent stay).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot push manifest {name:?}")]
    Manifest {
        name: String,
        #[source]
        source: ManifestError,
    },
    #[error("cannot push to {url}: a local chunk cannot be used")]
    Chunk {
        url: String,
        #[source]
        source: ChunkError,
    },
    #[error("cannot push to {url}")]
    Remote {
        url: String,
        #[source]
        source: RemoteError,
    },
}

/// Uploads to `remote` the chunks in `chunk_ids` it lacks, then the local
/// manifest `manifest_name`, last. Each chunk is re-verified before upload, so
/// a damaged local chunk never reaches the bucket. Uploads run
/// eight at a time.
///
/// # Errors
/// The manifest is missing locally, a chunk is missing or damaged locally (the
/// error names it), or a request fails. A failed push can simply be retried.
pub async fn push(
    store: &Store,
    remote: &Remote,
    manifest_name: &str,
    chunk_ids: &[ChunkId],
    progress: &mut dyn Progress,
) -> Result<PushReport, PushError> {
    let manifest = store
        .get_manifest(manifest_name)
        .map_err(|source| PushError::Manifest {
            name: manifest_name.into(),
            source,
        })?;
    let remote_err = |source| PushError::Remote {
        url: remote.url.clone(),
        source,
    };
    let chunk_err = |source| PushError::Chunk {
        url: remote.url.clone(),
        source,
    };
    let mut seen = HashSet::new();
    let wanted: Vec<ChunkId> = chunk_ids
        .iter()
        .copied()
        .filter(|id| seen.insert(*id))
        .collect();
    let on_remote = remote.list_chunks().await.map_err(remote_err)?;
    let to_send: Vec<ChunkId> = wanted
        .iter()
        .copied()
        .filter(|id| !on_remote.contains_key(id))
        .collect();
    let mut total = 0;
    for id in &to_send {
        match std::fs::metadata(store.chunk_path(id)) {
            Ok(meta) => total += meta.len(),
            Err(_) => {
                return Err(chunk_err(ChunkError::Missing {
                    id: *id,
                    path: store.chunk_path(id),
                }))
            }
        }
    }
    let mut report = PushReport {
        chunks_present: (wanted.len() - to_send.len()) as u64,
        ..PushReport::default()
    };
    progress.start(&format!("push {manifest_name} to {}", remote.url), total);
    let mut uploads = futures::stream::iter(to_send)
        .map(|id| async move {
            let store = store.clone();
            let stored = blocking(move || store.read_stored_verified(&id))
                .await
                .map_err(chunk_err)?;
            let len = stored.len() as u64;
            remote
                .put(&remote.chunk_key(&id), stored)
                .await
                .map_err(remote_err)?;
            Ok::<u64, PushError>(len)
        })
        .buffer_unordered(PARALLEL_TRANSFERS);
    while let Some(len) = uploads.try_next().await? {
        report.chunks_sent += 1;
        report.bytes_sent += len;
        progress.advance(len);
    }
    report.manifest_bytes = manifest.len() as u64;
    remote
        .put(&remote.manifest_key(manifest_name), manifest)
        .await
        .map_err(remote_err)?;
    progress.finish();
    tracing::info!(
        manifest = manifest_name,
        remote = %remote.url,
        chunks_sent = report.chunks_sent,
        bytes_sent = report.bytes_sent,
        "pushed"
    );
    Ok(report)
}

/// What [`pull_chunks`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Chunks downloaded (and verified, and stored).
    pub chunks_fetched: u64,
    /// Chunks the local store already had.
    pub chunks_present: u64,
    /// Bytes downloaded (stored, compressed size).
    pub bytes_fetched: u64,
}

/// A pull failed; every chunk it stored is complete and verified, so a retry
/// fetches only the rest.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    InvalidName(#[from] InvalidManifestName),
    #[error("no manifest named {name:?} on {url}")]
    ManifestNotFound { name: String, url: String },
    #[error("chunk {id} is not on {url} (no object {key})")]
    ChunkMissing {
        id: ChunkId,
        url: String,
        key: String,
    },
    #[error("chunk {id} from {key} is damaged, and was not stored: {defect}")]
    ChunkDamaged {
        id: ChunkId,
        key: String,
        defect: ChunkDefect,
    },
    #[error("cannot pull from {url}")]
    Remote {
        url: String,
        #[source]
        source: RemoteError,
    },
    #[error("cannot store pulled chunks")]
    Local(#[source] IoError),
}

/// The bytes of manifest `name` on `remote` (at most [`MAX_MANIFEST_BYTES`]).
///
/// # Errors
/// The name is invalid, there is no such manifest, it is too large, or the
/// request fails.
pub async fn fetch_manifest(remote: &Remote, name: &str) -> Result<Vec<u8>, PullError> {
    validate_manifest_name(name)?;
    remote
        .get_capped(&remote.manifest_key(name), MAX_MANIFEST_BYTES)
        .await
        .map_err(|source| PullError::Remote {
            url: remote.url.clone(),
            source,
        })?
        .ok_or_else(|| PullError::ManifestNotFound {
            name: name.into(),
            url: remote.url.clone(),
        })
}

/// The names of the manifests on `remote`, sorted.
///
/// # Errors
/// The listing request fails.
pub async fn list_remote_manifests(remote: &Remote) -> Result<Vec<String>, RemoteError> {
    let metas = remote.list(&remote.manifests_dir()).await?;
    let mut names: Vec<String> = metas
        .iter()
        .filter_map(|m| {
            m.location
                .filename()?
                .strip_suffix(".json")
                .map(str::to_string)
        })
        .filter(|name| validate_manifest_name(name).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Downloads from `remote` the chunks in `ids` that the local store lacks.
/// Each is decompressed and hashed on arrival and written into the store (temp
/// file, sync, rename) only if it matches its id. When this returns `Ok`, every
/// chunk in `ids` is durable in the store; write the manifest after that.
///
/// # Errors
/// A chunk is missing on the remote or damaged (the error names it), a request
/// fails, or the store cannot be written. Chunks already stored stay: a retry
/// fetches only the rest.
pub async fn pull_chunks(
    store: &Store,
    remote: &Remote,
    ids: &[ChunkId],
    progress: &mut dyn Progress,
) -> Result<PullReport, PullError> {
    let remote_err = |source| PullError::Remote {
        url: remote.url.clone(),
        source,
    };
    let mut seen = HashSet::new();
    let wanted: Vec<ChunkId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
    let wanted_count = wanted.len();
    let (writer, needed) = {
        let store = store.clone();
        blocking(move || {
            // Taking the lock waits for a gc in progress.
            let writer = ChunkWriter::new(&store)?;
            let needed: Vec<ChunkId> = wanted
                .into_iter()
                .filter(|id| !writer.existing(id))
                .collect();
            Ok::<_, IoError>((Arc::new(writer), needed))
        })
        .await
        .map_err(PullError::Local)?
    };
    let mut report = PullReport {
        chunks_present: (wanted_count - needed.len()) as u64,
        ..PullReport::default()
    };
    let mut result = Ok(());
    if !needed.is_empty() {
        result = match remote.list_chunks().await {
            Err(e) => Err(remote_err(e)),
            Ok(sizes) => match needed.iter().find(|id| !sizes.contains_key(id)) {
                Some(id) => Err(PullError::ChunkMissing {
                    id: *id,
                    url: remote.url.clone(),
                    key: remote.describe(&remote.chunk_key(id)),
                }),
                None => {
                    let total = needed.iter().map(|id| sizes[id]).sum();
                    progress.start(&format!("pull from {}", remote.url), total);
                    fetch_all(remote, &writer, needed, &mut report, progress).await
                }
            },
        };
    }
    // Sync what was stored even when a later chunk failed, so a retry can rely on it.
    let finished = {
        let writer = Arc::clone(&writer);
        blocking(move || writer.finish()).await
    };
    result?;
    finished.map_err(PullError::Local)?;
    if report.chunks_fetched > 0 {
        progress.finish();
    }
    tracing::info!(
        remote = %remote.url,
        chunks_fetched = report.chunks_fetched,
        bytes_fetched = report.bytes_fetched,
        "pulled"
    );
    Ok(report)
}

async fn fetch_all(
    remote: &Remote,
    writer: &Arc<ChunkWriter>,
    needed: Vec<ChunkId>,
    report: &mut PullReport,
    progress: &mut dyn Progress,
) -> Result<(), PullError> {
    let mut downloads = futures::stream::iter(needed)
        .map(|id| async move {
            let key = remote.chunk_key(&id);
            let describe = remote.describe(&key);
            let stored = remote
                .get_capped(&key, chunk::max_stored_len())
                .await
                .map_err(|source| PullError::Remote {
                    url: remote.url.clone(),
                    source,
                })?
                .ok_or_else(|| PullError::ChunkMissing {
                    id,
                    url: remote.url.clone(),
                    key: describe.clone(),
                })?;
            let len = stored.len() as u64;
            let writer = Arc::clone(writer);
            blocking(move || {
                chunk::with_codec(|codec| {
                    let mut data = Vec::new();
                    codec.decode_verified(&id, &stored, MAX_CHUNK_SIZE as usize, None, &mut data)
                })
                .map_err(|defect| PullError::ChunkDamaged {
                    id,
                    key: describe,
                    defect,
                })?;
                writer.put(&id, &stored).map_err(PullError::Local)
            })
            .await?;
            Ok::<u64, PullError>(len)
        })
        .buffer_unordered(PARALLEL_TRANSFERS);
    while let Some(len) = downloads.try_next().await? {
        report.chunks_fetched += 1;
        report.bytes_fetched += len;
        progress.advance(len);
    }
    Ok(())
}

/// Runs blocking file work (hashing, decompressing, fsync) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("blocking task cancelled: {e}"),
        },
    }
}
