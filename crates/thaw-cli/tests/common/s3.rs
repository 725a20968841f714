//! Real S3-compatible servers for the store's end-to-end tests: s3s-fs
//! (installed by scripts/setup-s3.sh) on 127.0.0.1, and a three-node Garage
//! cluster (scripts/setup-garage.sh; the tests that use it need `--features
//! garage`); killed on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../thaw-store/tests/common/garage.rs"]
pub mod garage;

pub use garage::Garage;

pub const ACCESS_KEY: &str = "thaw-test-key";
pub const SECRET_KEY: &str = "thaw-test-secret";

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
                "s3s-fs is not installed: run scripts/setup-test.sh (it runs scripts/setup-s3.sh)"
            )
        })
}

impl S3Server {
    /// Starts s3s-fs on a free port with one bucket, `thaw`.
    pub fn start() -> S3Server {
        Self::start_on("127.0.0.1", None)
    }

    /// Starts it listening on `host`, run through `wrap` (e.g. `ip netns exec NS`).
    pub fn start_on(host: &str, wrap: Option<&[&str]>) -> S3Server {
        let data = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = data.path().join("root");
        std::fs::create_dir_all(root.join("thaw")).unwrap();
        let binary = find_s3s_fs();
        let mut argv: Vec<String> = wrap.unwrap_or(&[]).iter().map(|s| s.to_string()).collect();
        argv.push(binary.display().to_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .args(["--host", host, "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data.path().join("s3s-fs.err")).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start s3s-fs: {e}"));
        let server = S3Server {
            child,
            endpoint: format!("http://{host}:{port}"),
            data,
        };
        if wrap.is_none() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while TcpStream::connect((host, port)).is_err() {
                assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server
    }

    /// The environment thaw reads the remote's endpoint and keys from.
    pub fn env(&self) -> Vec<(String, String)> {
        remote_env(&self.endpoint, ACCESS_KEY, SECRET_KEY)
    }

    /// The directory holding the objects of `prefix` in bucket `thaw`.
    pub fn objects(&self, prefix: &str) -> PathBuf {
        self.data.path().join("root/thaw").join(prefix)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `THAW_S3_ENDPOINT`, the keys and the region.
pub fn remote_env(endpoint: &str, key: &str, secret: &str) -> Vec<(String, String)> {
    vec![
        ("THAW_S3_ENDPOINT".into(), endpoint.into()),
        ("AWS_ACCESS_KEY_ID".into(), key.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), secret.into()),
        ("AWS_REGION".into(), "us-east-1".into()),
    ]
}

impl Garage {
    /// The environment that sends thaw to node `n`'s S3 API.
    pub fn env(&self, n: usize) -> Vec<(String, String)> {
        remote_env(
            &self.endpoint(n),
            garage::GARAGE_ACCESS_KEY,
            garage::GARAGE_SECRET_KEY,
        )
    }
}
