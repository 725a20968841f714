//! Two hosts: network namespaces A and B, each with its own thawd, `$THAW_HOME` and
//! guest cache, and an S3 server in a third, S: s3s-fs, or (with `--features garage`)
//! a three-node Garage cluster. A snapshot made on A is pushed, pulled on B (which
//! has no copy of the guest files) and restored there; the clone has A's state.
//!
//! Then B's thawd also listens on TCP with TLS (a CA and certificate made here with
//! rcgen) and a tokens file, and S's namespace — the orchestrator, which reaches B only
//! over the veth link — drives it with `thaw` and `THAW_HOST`/`THAW_TOKEN`/`THAW_CA`:
//! follows its events, has it pull the snapshot (an operation of B's daemon, with B's S3
//! settings), configures a warm pool, restores from it, runs a command in the clone,
//! reads its console (`thaw logs`), scrapes `/metrics` (curl), and a wrong token is refused in one line.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use serde_json::Value;

/// The namespaces and the veth links between them; removed on drop.
struct Net {
    names: Vec<String>,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2)");
    assert!(st.success(), "ip {args:?} failed");
}

impl Net {
    /// S is linked to A by 10.77.1.0/24 and to B by 10.77.2.0/24 (S is .1, the host .2).
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let names: Vec<String> = ["s", "a", "b"]
            .iter()
            .map(|n| format!("thaw-{n}-{id}"))
            .collect();
        let net = Net { names };
        let (s, a, b) = (&net.names[0], &net.names[1], &net.names[2]);
        for ns in &net.names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        for (host, subnet, tag) in [(a, 1, "a"), (b, 2, "b")] {
            let (sv, hv) = (format!("ts{tag}{id}"), format!("th{tag}{id}"));
            ip(&[
                "link", "add", &sv, "netns", s, "type", "veth", "peer", "name", &hv, "netns", host,
            ]);
            ip(&[
                "-n",
                s,
                "addr",
                "add",
                &format!("10.77.{subnet}.1/24"),
                "dev",
                &sv,
            ]);
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("10.77.{subnet}.2/24"),
                "dev",
                &hv,
            ]);
            ip(&["-n", s, "link", "set", &sv, "up"]);
            ip(&["-n", host, "link", "set", &hv, "up"]);
        }
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One host: a namespace, a home, a guest cache, the endpoint it reaches S at, and
/// its thawd.
struct Host {
    ns: String,
    home: tempfile::TempDir,
    /// Its own guest cache (B), or the machine's (A, where the guest was built).
    cache: Option<tempfile::TempDir>,
    endpoint: String,
    /// Access key id and secret.
    keys: (&'static str, &'static str),
    daemon: Option<Child>,
}

impl Host {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, common::THAW])
            .args(args)
            .env("THAW_HOME", self.home.path())
            .env("THAW_S3_ENDPOINT", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", self.keys.0)
            .env("AWS_SECRET_ACCESS_KEY", self.keys.1)
            .env("AWS_REGION", "us-east-1")
            .env_remove("THAW_NO_DAEMON")
            .env_remove("THAW_LOG");
        if let Some(cache) = &self.cache {
            c.env("THAW_CACHE", cache.path());
        }
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        // Before the subcommand: after `exec ... --` it would be the guest's.
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.command(&a).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "[{}] thaw {args:?}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "[{}] thaw {args:?}: not JSON ({e}): {}",
                self.ns,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn sh(&self, vm: &str, script: &str) -> String {
        self.json(&["exec", vm, "--", "/bin/sh", "-c", script])["stdout"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn serve(&mut self, extra: &[&str]) {
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        let child = self
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let sock = self.home.path().join("thawd.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "thawd in {} did not start",
                self.ns
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.command(&["stop", "--all"]).output();
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        for pid in common::processes_mentioning(self.home.path()) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// An S3 server running in namespace S: what keeps it running, its port, its keys.
struct Server {
    _running: Box<dyn std::any::Any>,
    port: u16,
    keys: (&'static str, &'static str),
}

/// s3s-fs, with bucket `thaw`.
fn s3s_fs_in(ns: &str) -> Server {
    let server = S3Server::start_on("0.0.0.0", Some(&["ip", "netns", "exec", ns]));
    let port = server.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    Server {
        _running: Box::new(server),
        port,
        keys: (ACCESS_KEY, SECRET_KEY),
    }
}

#[test]
fn a_snapshot_made_on_host_a_restores_on_host_b() {
    a_snapshot_made_on_host_a_restores_on_host_b_through(s3s_fs_in);
}

/// Three Garage nodes in S, with bucket `thaw`; the hosts talk to the first.
#[cfg(feature = "garage")]
#[test]
fn a_snapshot_made_on_host_a_restores_on_host_b_through_garage() {
    use common::s3::{garage, Garage};
    a_snapshot_made_on_host_a_restores_on_host_b_through(|ns| {
        let cluster = Garage::start_on("0.0.0.0", &["ip", "netns", "exec", ns]);
        cluster.create_bucket("thaw");
        Server {
            port: cluster.nodes[0].s3_port,
            _running: Box::new(cluster),
            keys: (garage::GARAGE_ACCESS_KEY, garage::GARAGE_SECRET_KEY),
        }
    });
}

fn a_snapshot_made_on_host_a_restores_on_host_b_through(start: impl FnOnce(&str) -> Server) {
    // The default guest for A, built into A's cache from the shared one.
    let _guest = common::Env::new();
    let net = Net::new();
    let server = start(&net.names[0]);
    let port = server.port;
    let host = |ns: &str, subnet: u8, cache| Host {
        ns: ns.to_owned(),
        home: tempfile::tempdir().unwrap(),
        cache,
        endpoint: format!("http://10.77.{subnet}.1:{port}"),
        keys: server.keys,
        daemon: None,
    };
    // A has the guest (the machine's cache); B has a cache of its own, empty.
    let mut a = host(&net.names[1], 1, None);
    let mut b = host(&net.names[2], 2, Some(tempfile::tempdir().unwrap()));
    // S answers from A's namespace.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let probe = Command::new("ip")
            .args([
                "netns",
                "exec",
                &a.ns,
                "bash",
                "-c",
                &format!("echo > /dev/tcp/10.77.1.1/{port}"),
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if probe.success() {
            break;
        }
        assert!(Instant::now() < deadline, "S3 server unreachable from A");
        std::thread::sleep(Duration::from_millis(100));
    }
    a.serve(&[]);
    let tls = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(tls.path(), "10.77.2.2");
    let tokens = tls.path().join("tokens");
    let token = b.json(&["token", "new", "orchestrator", "--tokens", path(&tokens)]);
    let token = token["token"].as_str().unwrap().to_owned();
    b.serve(&[
        "--listen",
        "10.77.2.2:7420",
        "--tls-cert",
        path(&cert),
        "--tls-key",
        path(&key),
        "--tokens",
        path(&tokens),
    ]);

    a.json(&["boot", "web"]);
    a.sh("web", "echo made-on-a > /tmp/origin; hostname host-a");
    a.json(&["snapshot", "web", "golden"]);
    // Through A's thawd (named by THAW_HOST): an operation of the daemon, polled.
    let sock = format!("unix://{}", a.home.path().join("thawd.sock").display());
    let out = a
        .command(&["--json", "push", "golden", "s3://thaw/fleet"])
        .env("THAW_HOST", &sock)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(pushed["chunks_moved"].as_u64().unwrap() > 0, "{pushed}");

    let orchestrator = Remote {
        ns: net.names[0].clone(),
        home: tempfile::tempdir().unwrap(),
        token,
        ca,
    };
    let (mut follower, events) = orchestrator.follow();
    // Through B's thawd: the orchestrator has no S3 settings, B's daemon has.
    let pulled = orchestrator.json(&["pull", "golden", "s3://thaw/fleet"]);
    assert_eq!(pulled["tag"], "golden");
    let e = next(&events, "operation.done");
    assert_eq!(
        (&e["kind"], &e["tag"]),
        (&"pull".into(), &"golden".into()),
        "{e}"
    );
    assert!(e.get("error").is_none(), "{e}");
    let clone = b.json(&["restore", "golden", "--name", "copy"]);
    assert_eq!(clone[0]["name"], "copy");
    assert_eq!(
        b.sh("copy", "cat /tmp/origin; hostname"),
        "made-on-a\nhost-a\n"
    );
    assert!(
        !b.cache.as_ref().unwrap().path().join("guests").exists(),
        "B has no guest files of its own"
    );
    // B's daemon serves the clone like any other VM.
    let vms = b.json(&["ls"]);
    assert_eq!(vms[0]["name"], "copy");
    assert_eq!(vms[0]["state"], "running");

    orchestrator.drives_b(&events);
    let _ = follower.kill();
    let _ = follower.wait();
    drop(net);
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A CA and a certificate for `ip` signed by it, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &Path, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "thaw two-hosts CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![ip.to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// The orchestrator: `thaw` in namespace S with B's thawd as `THAW_HOST`, and a home
/// of its own with no daemon.
struct Remote {
    ns: String,
    home: tempfile::TempDir,
    token: String,
    ca: PathBuf,
}

const B_HOST: &str = "https://10.77.2.2:7420";

impl Remote {
    fn command(&self, token: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, common::THAW])
            .args(args)
            .env("THAW_HOME", self.home.path())
            .env("THAW_HOST", B_HOST)
            .env("THAW_TOKEN", token)
            .env("THAW_CA", &self.ca)
            .env_remove("THAW_NO_DAEMON")
            .env_remove("THAW_LOG")
            .stdin(Stdio::null());
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.command(&self.token, &a).output().unwrap();
        assert!(
            out.status.success(),
            "[orchestrator] thaw {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `GET /metrics` from S with curl.
    fn metrics(&self, token: &str) -> (String, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "curl",
                "-sS",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{B_HOST}/metrics"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.to_owned(), body.to_owned())
    }

    /// Follows B's events from S with `thaw events --json` (one object per line).
    fn follow(&self) -> (Child, std::sync::mpsc::Receiver<Value>) {
        let mut follower = self
            .command(&self.token, &["--json", "events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, events) = std::sync::mpsc::channel::<Value>();
        let stdout = follower.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).expect("one JSON object per line");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        // Give the subscription a moment: what comes next (a pull) takes seconds, and
        // its end is what is waited for.
        std::thread::sleep(Duration::from_millis(500));
        (follower, events)
    }

    fn drives_b(&self, events: &std::sync::mpsc::Receiver<Value>) {
        let next = |what: &str| next(events, what);

        let pool = self.json(&["pool", "golden", "--size", "1"]);
        assert_eq!(pool["tag"], "golden", "{pool}");
        let e = next("pool.refilled");
        assert_eq!(
            (&e["type"], &e["tag"]),
            (&"pool.refilled".into(), &"golden".into()),
            "{e}"
        );

        let clone = self.json(&["restore", "golden", "--name", "remote-1"]);
        assert_eq!(clone[0]["name"], "remote-1", "{clone}");
        assert_eq!(clone[0]["breakdown"]["source"], "pool", "{clone}");
        let e = next("vm.created");
        assert_eq!(
            (&e["type"], &e["vm"]),
            (&"vm.created".into(), &"remote-1".into()),
            "{e}"
        );
        assert_eq!(e["snapshot"], "golden", "{e}");
        let e = next("vm.ready");
        assert_eq!(
            (&e["type"], &e["vm"]),
            (&"vm.ready".into(), &"remote-1".into()),
            "{e}"
        );
        assert_eq!(e["source"], "pool", "{e}");

        let out = self.json(&["exec", "remote-1", "--", "/bin/sh", "-c", "cat /tmp/origin"]);
        assert_eq!(out["stdout"], "made-on-a\n", "{out}");

        // The clone's console, through B's thawd.
        self.json(&[
            "exec",
            "remote-1",
            "--",
            "/bin/sh",
            "-c",
            "echo console-over-tls > /dev/console",
        ]);
        let logs = self.json(&["logs", "remote-1"]);
        assert!(
            logs["console"]
                .as_str()
                .unwrap()
                .contains("console-over-tls"),
            "{logs}"
        );

        let (status, text) = self.metrics(&self.token);
        assert_eq!(status, "200", "{text}");
        assert!(
            text.lines()
                .any(|l| l == "thaw_restores_total{source=\"pool\"} 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");

        // A wrong token: 401 for curl, one line and exit 1 for thaw; nothing changes.
        let (status, text) = self.metrics("thaw_wrong");
        assert_eq!(status, "401", "{text}");
        let out = self.command("thaw_wrong", &["ls"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("token"), "{stderr}");
        let vms = self.json(&["ls"]);
        let mut names: Vec<&str> = vms
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["copy", "remote-1"], "{vms}");
    }
}

/// The next event of type `what`, skipping others (B's own commands cause some).
fn next(events: &std::sync::mpsc::Receiver<Value>, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = events
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no event {what}: {e}"));
        if e["type"] == what {
            return e;
        }
    }
}
