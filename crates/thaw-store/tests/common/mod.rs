//! Test support: real S3 servers on 127.0.0.1 (s3s-fs; a three-node Garage
//! cluster), and test data.

#![allow(dead_code)] // each test file uses a different part

pub mod garage;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thaw_store::{Remote, RemoteConfig};

pub use garage::Garage;

pub const ACCESS_KEY: &str = "thaw-test-key";
pub const SECRET_KEY: &str = "thaw-test-secret";

/// An s3s-fs server serving a temp directory, killed on drop.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub data: tempfile::TempDir,
}

fn find_s3s_fs() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("s3s-fs"));
    let in_cargo_home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/s3s-fs"));
    on_path
        .chain(in_cargo_home)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "s3s-fs is not installed, and the remote tests need it: run scripts/setup-s3.sh \
                 (cargo install s3s-fs@0.14.1 --features binary --locked)"
            )
        })
}

impl S3Server {
    /// Starts s3s-fs on a free port of 127.0.0.1 and waits until it accepts connections.
    pub fn start() -> S3Server {
        let binary = find_s3s_fs();
        let data = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = data.path().join("s3s-fs.log");
        let root = data.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(data.path().join("s3s-fs.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            data,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                let err = std::fs::read_to_string(server.data.path().join("s3s-fs.err"))
                    .unwrap_or_default();
                panic!("s3s-fs exited with {status} before listening: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Creates a bucket: s3s-fs keeps each bucket as a directory of its root.
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir(self.data.path().join("root").join(bucket)).unwrap();
    }
}

impl TestS3 for S3Server {
    fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    fn keys(&self) -> (&'static str, &'static str) {
        (ACCESS_KEY, SECRET_KEY)
    }

    fn create_bucket(&self, bucket: &str) {
        S3Server::create_bucket(self, bucket);
    }
}

impl TestS3 for Garage {
    /// The first node's: a client talks to one node, which asks the others.
    fn endpoint(&self) -> String {
        Garage::endpoint(self, 0)
    }

    fn keys(&self) -> (&'static str, &'static str) {
        (garage::GARAGE_ACCESS_KEY, garage::GARAGE_SECRET_KEY)
    }

    fn create_bucket(&self, bucket: &str) {
        Garage::create_bucket(self, bucket);
    }
}

/// What the remote tests need of a server, so each runs against s3s-fs and Garage.
pub trait TestS3 {
    fn endpoint(&self) -> String;
    /// Access key id and secret.
    fn keys(&self) -> (&'static str, &'static str);
    fn create_bucket(&self, bucket: &str);

    fn config(&self, url: &str) -> RemoteConfig {
        let (key, secret) = self.keys();
        let mut config = RemoteConfig::parse(url).unwrap();
        config.endpoint = Some(self.endpoint());
        config.access_key_id = Some(key.into());
        config.secret_access_key = Some(secret.into());
        config
    }

    fn remote(&self, url: &str) -> Remote {
        Remote::new(&self.config(url)).unwrap()
    }

    /// A plain object_store client on `bucket`, to tamper with objects.
    fn raw_client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        let (key, secret) = self.keys();
        thaw_store::install_crypto();
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(key)
            .with_secret_access_key(secret)
            .build()
            .unwrap()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic bytes that do not compress (xorshift64*).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn hash_file(path: &Path) -> String {
    use std::io::Read;
    let mut hasher = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().to_hex().to_string()
}
