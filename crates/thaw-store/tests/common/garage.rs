//! A three-node Garage cluster (a distributed S3-compatible store) on this machine,
//! for the remote tests: every node keeps its metadata and blocks in a temp
//! directory and listens on loopback ports (or on every address of a network
//! namespace the test made, when it is started through `ip netns exec`). Every
//! object is stored on all three nodes (replication factor 3); a read or write
//! needs two of them. The cluster is killed and its files removed on drop.
//!
//! Garage is installed by scripts/setup-garage.sh (`cargo install garage --locked`).
//! Only std and tempfile here: the thaw-store and thaw-cli tests both include this file.

#![allow(dead_code)] // each test file uses a different part

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Garage's key ids are `GK` and 24 hex digits, its secrets 64 hex digits.
pub const GARAGE_ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const GARAGE_SECRET_KEY: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const RPC_SECRET: &str = "a7c5d9e1f3b20476a7c5d9e1f3b20476a7c5d9e1f3b20476a7c5d9e1f3b20476";
const NODES: usize = 3;
/// How long a node may take to listen, and the cluster to agree on its layout.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct GarageNode {
    child: Option<Child>,
    config: PathBuf,
    rpc_port: u16,
    pub s3_port: u16,
}

pub struct Garage {
    pub nodes: Vec<GarageNode>,
    binary: PathBuf,
    /// `ip netns exec NS` or nothing.
    wrap: Vec<String>,
    /// The address the test reaches the nodes' S3 ports at.
    host: String,
    pub dir: tempfile::TempDir,
}

pub fn find_garage() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("garage"));
    let in_cargo_home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/garage"));
    on_path
        .chain(in_cargo_home)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "garage is not installed, and the Garage tests need it: run scripts/setup-garage.sh \
                 (cargo install garage --locked)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Garage {
    /// Three nodes on 127.0.0.1, with bucket-less keys imported; see [`Garage::start_on`].
    pub fn start() -> Garage {
        Garage::start_on("127.0.0.1", &[])
    }

    /// Three nodes run through `wrap` (e.g. `ip netns exec NS`), listening on
    /// `host` (`0.0.0.0` inside a namespace; the test must reach the S3 ports
    /// from where it runs only when `wrap` is empty), connected, with a layout of
    /// three zones applied and the test key imported.
    pub fn start_on(host: &str, wrap: &[&str]) -> Garage {
        let binary = find_garage();
        let dir = tempfile::Builder::new()
            .prefix("thaw-garage-")
            .tempdir()
            .unwrap();
        let mut garage = Garage {
            nodes: Vec::new(),
            binary,
            wrap: wrap.iter().map(|s| s.to_string()).collect(),
            host: if host == "0.0.0.0" { "127.0.0.1" } else { host }.to_owned(),
            dir,
        };
        for n in 0..NODES {
            let node = garage.write_config(n, host);
            garage.nodes.push(node);
            garage.spawn(n);
        }
        garage.wait_for_rpc();
        let ids: Vec<String> = (0..NODES)
            .map(|n| {
                let out = garage.cli_ok(n, &["node", "id", "-q"]);
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect();
        for id in &ids[1..] {
            garage.cli_ok(0, &["node", "connect", id]);
        }
        for (n, id) in ids.iter().enumerate() {
            let short = id.split('@').next().unwrap();
            let zone = format!("z{n}");
            garage.cli_ok(0, &["layout", "assign", "-z", &zone, "-c", "1G", short]);
        }
        garage.cli_ok(0, &["layout", "apply", "--version", "1"]);
        garage.cli_retry(
            0,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                "thaw-test",
                GARAGE_ACCESS_KEY,
                GARAGE_SECRET_KEY,
            ],
        );
        garage
    }

    fn write_config(&self, n: usize, host: &str) -> GarageNode {
        let root = self.dir.path().join(format!("node{n}"));
        std::fs::create_dir_all(&root).unwrap();
        let (rpc_port, s3_port) = (free_port(), free_port());
        let config = root.join("garage.toml");
        let text = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "{host}:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{RPC_SECRET}"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "{host}:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
            root = root.display(),
        );
        std::fs::write(&config, text).unwrap();
        GarageNode {
            child: None,
            config,
            rpc_port,
            s3_port,
        }
    }

    fn command(&self, n: usize) -> Command {
        let mut argv: Vec<String> = self.wrap.clone();
        argv.push(self.binary.display().to_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .arg("-c")
            .arg(&self.nodes[n].config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self, n: usize) {
        let log = self.dir.path().join(format!("node{n}/server.log"));
        let child = self
            .command(n)
            .arg("server")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start garage: {e}"));
        self.nodes[n].child = Some(child);
    }

    /// `garage -c NODE ARGS`.
    pub fn cli(&self, n: usize, args: &[&str]) -> Output {
        self.command(n).args(args).output().expect("run garage")
    }

    fn cli_ok(&self, n: usize, args: &[&str]) -> Output {
        let out = self.cli(n, args);
        assert!(
            out.status.success(),
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Bucket and key commands right after the layout is applied can fail until
    /// every node has it: retried until they succeed or [`START_TIMEOUT`].
    fn cli_retry(&self, n: usize, args: &[&str]) -> Output {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = self.cli(n, args);
            if out.status.success() {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "garage {args:?} still fails: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every node answers its RPC port (`garage node id` asks the node itself).
    fn wait_for_rpc(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        for n in 0..NODES {
            while !self.cli(n, &["node", "id", "-q"]).status.success() {
                if let Some(status) = self.nodes[n].child.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "garage node {n} exited with {status}: {}",
                        std::fs::read_to_string(
                            self.dir.path().join(format!("node{n}/server.log"))
                        )
                        .unwrap_or_default()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "garage node {n} did not answer on port {}",
                    self.nodes[n].rpc_port
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Creates `bucket` and lets the test key read and write it.
    pub fn create_bucket(&self, bucket: &str) {
        self.cli_retry(0, &["bucket", "create", bucket]);
        self.cli_retry(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                bucket,
                "--key",
                GARAGE_ACCESS_KEY,
            ],
        );
        // The S3 API answers for the bucket once the node serving it sees it.
        if self.wrap.is_empty() {
            let deadline = Instant::now() + START_TIMEOUT;
            while TcpStream::connect((self.host.as_str(), self.nodes[0].s3_port)).is_err() {
                assert!(Instant::now() < deadline, "garage's S3 port never opened");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Node `n`'s S3 endpoint, as the test reaches it.
    pub fn endpoint(&self, n: usize) -> String {
        format!("http://{}:{}", self.host, self.nodes[n].s3_port)
    }

    /// Kills node `n` (SIGKILL) and waits for it.
    pub fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.nodes[n].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for n in 0..self.nodes.len() {
            self.kill(n);
        }
    }
}
