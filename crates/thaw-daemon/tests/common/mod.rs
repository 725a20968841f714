//! Harness for the daemon's end-to-end tests: the real `thawd` binary started as a
//! child in a private `$THAW_HOME`, real QEMU, the default guest (the daemon builds it
//! into `$THAW_CACHE` if missing). Every answer is checked against docs/openapi.json.

#![allow(dead_code)]

pub mod openapi;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thaw_daemon::client::Client;

pub const THAWD: &str = env!("CARGO_BIN_EXE_thawd");

/// A daemon in its own temporary home. Dropping it kills the daemon and every process
/// that mentions the home (its VMs).
pub struct Daemon {
    dir: tempfile::TempDir,
    args: Vec<String>,
    /// Environment variables the daemon gets besides the test's (S3 settings).
    env: Vec<(String, String)>,
    child: Option<Child>,
    client: Option<Client>,
}

impl Daemon {
    /// Starts `thawd ARGS` in a new home and waits until it answers.
    pub async fn start(args: &[&str]) -> Daemon {
        Daemon::start_with_env(args, &[]).await
    }

    /// [`Daemon::start`] with these environment variables besides the test's.
    pub async fn start_with_env(args: &[&str], env: &[(String, String)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("thawd-e2e-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        let mut d = Daemon {
            dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.to_vec(),
            child: None,
            client: None,
        };
        d.restart().await;
        d
    }

    /// `$THAW_HOME`.
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn socket(&self) -> PathBuf {
        self.home().join("thawd.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("thawd.log")
    }

    /// The daemon's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon runs").id()
    }

    /// A `thawd` command for this home (not started).
    pub fn command(&self, args: &[&str]) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut c = Command::new(THAWD);
        c.args(args)
            .env("THAW_HOME", self.home())
            .env("THAW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Starts the daemon again in the same home (after it was killed or ended).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the daemon still runs");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut child = self.command(&args).spawn().expect("start thawd");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("thawd exited at start ({status}):\n{}", self.log());
            }
            if let Some(c) = Client::connect_async(&self.socket()).await {
                self.client = Some(c);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "thawd did not answer within 120 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon runs");
        child.kill().unwrap();
        child.wait().unwrap();
        self.client = None;
    }

    /// SIGTERM; returns how the daemon exited.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon runs");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        self.client = None;
        status
    }

    /// One request; the answer is checked against docs/openapi.json (and, when it
    /// succeeded, the request body too).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = self.client.as_ref().expect("daemon runs");
        let (status, answer) = client
            .request(method, path, body.clone())
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()));
        let spec = openapi::spec();
        spec.check_response(method, path, status, &answer);
        if (200..300).contains(&status) {
            if let Some(b) = &body {
                spec.check_request(method, path, b);
            }
        }
        (status, answer)
    }

    /// [`Daemon::call`], asserting the status.
    pub async fn expect(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let (got, answer) = self.call(method, path, body).await;
        assert_eq!(
            got,
            status,
            "{method} {path} answered {got}: {answer}\n--- thawd log ---\n{}",
            self.log()
        );
        answer
    }

    /// Asserts a 4xx (exactly `status`) with a one-line error mentioning `needle`.
    pub async fn refused(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
        needle: &str,
    ) {
        let answer = self.expect(method, path, body, status).await;
        let msg = answer["error"].as_str().expect("an error message");
        assert!(!msg.contains('\n'), "error is not one line: {msg:?}");
        assert!(
            msg.contains(needle),
            "{method} {path}: error {msg:?} does not mention {needle:?}"
        );
    }

    /// A request written by hand (for bodies the client would never send: broken
    /// JSON, another content type). The answer is checked against docs/openapi.json.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: thawd\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(ct) = content_type {
            req.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, rest) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let value: Value = serde_json::from_str(rest)
            .unwrap_or_else(|e| panic!("answer body is not JSON ({e}): {rest:?}"));
        openapi::spec().check_response(method, path, status, &value);
        (status, value)
    }

    /// [`Daemon::raw`], asserting the status and a one-line error mentioning `needle`.
    pub fn raw_refused(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &str,
        status: u16,
        needle: &str,
    ) {
        let (got, answer) = self.raw(method, path, content_type, body);
        assert_eq!(
            got, status,
            "{method} {path} {body:?} answered {got}: {answer}"
        );
        let msg = answer["error"].as_str().expect("an error message");
        assert!(
            !msg.contains('\n') && msg.contains(needle),
            "{method} {path} {body:?}: error {msg:?} does not mention {needle:?}"
        );
    }

    pub async fn boot(&self, name: &str, extra: Value) -> Value {
        let mut body = json!({ "name": name });
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        self.expect("POST", "/v1/vms", Some(body), 201).await
    }

    /// Runs a command in a VM; asserts exit 0 and returns stdout.
    pub async fn sh(&self, vm: &str, script: &str) -> String {
        let out = self
            .expect(
                "POST",
                &format!("/v1/vms/{vm}/exec"),
                Some(json!({ "command": ["/bin/sh", "-c", script] })),
                200,
            )
            .await;
        assert_eq!(out["exit_code"], 0, "{vm}: {script}: {out}");
        out["stdout"].as_str().unwrap().to_owned()
    }

    pub async fn vms(&self) -> Vec<Value> {
        let v = self.expect("GET", "/v1/vms", None, 200).await;
        v.as_array().unwrap().clone()
    }

    pub async fn vm_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .vms()
            .await
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }

    pub async fn snapshot_tags(&self) -> Vec<String> {
        let v = self.expect("GET", "/v1/snapshots", None, 200).await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["tag"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Polls GET /v1/pools until `tag`'s pool has `ready` clones ready.
    pub async fn wait_pool_ready(&self, tag: &str, ready: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let pools = self.expect("GET", "/v1/pools", None, 200).await;
            let pool = pools
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["tag"] == tag)
                .cloned();
            if let Some(p) = &pool {
                if p["ready"] == ready {
                    return p.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "pool {tag} not ready with {ready} within 180 s: {pool:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Live processes whose command line mentions this home (QEMU: VMs and pool), but
    /// not the daemon's keeper.
    pub fn processes(&self) -> Vec<u32> {
        processes_mentioning(&self.home())
    }

    /// The daemon's pool keeper (`thawd --pool-keeper HOME`), if it runs.
    pub fn keepers(&self) -> Vec<u32> {
        thawd_processes_mentioning(&self.home())
    }

    /// Pids recorded in `$THAW_HOME/vms/*/vm.json`.
    pub fn recorded_vm_pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.home().join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("vm.json")).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter_map(|v| v["pid"].as_u64())
            .map(|p| p as u32)
            .collect()
    }

    /// Live pooled processes: started under `$THAW_HOME/pool` and not (yet) taken.
    /// A clone taken from the pool keeps the pool path in its command line but has a
    /// VM record.
    pub fn pool_processes(&self) -> Vec<u32> {
        let vms = self.recorded_vm_pids();
        processes_mentioning(&self.home().join("pool"))
            .into_iter()
            .filter(|p| !vms.contains(p))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.processes().into_iter().chain(self.keepers()) {
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
        end_lazy_server(&self.home());
        if std::thread::panicking() {
            eprintln!(
                "--- thawd log ({}) ---\n{}",
                self.home().display(),
                self.log()
            );
        }
    }
}

/// Ends the lazy snapshot server of the home at `home` (restores of snapshots kept
/// once start it), if one runs, and detaches its mount: it would otherwise go idle
/// and exit by itself, after the home is removed.
pub fn end_lazy_server(home: &Path) {
    thaw::lazy::stop_server(&thaw::Home::new(home));
}

/// Live processes other than `thawd` whose command line mentions `dir`.
pub fn processes_mentioning(dir: &Path) -> Vec<u32> {
    processes_where(dir, |cmd| !cmd.starts_with(THAWD.as_bytes()))
}

/// Live `thawd` processes whose command line mentions `dir` (the pool keeper).
pub fn thawd_processes_mentioning(dir: &Path) -> Vec<u32> {
    processes_where(dir, |cmd| cmd.starts_with(THAWD.as_bytes()))
}

fn processes_where(dir: &Path, keep: impl Fn(&[u8]) -> bool) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes().to_vec();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let live = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z') && !r.starts_with('X'));
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            live && keep(&cmd) && cmd.windows(needle.len()).any(|w| w == needle.as_slice())
        })
        .collect()
}

/// The parent pid of `pid`, from /proc.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until `cond` holds (polling), or panics with `what`.
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} (waited {timeout:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Children of `pid` that have exited and were never waited for (`<defunct>`).
pub fn zombie_children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let parent = fields.next().and_then(|p| p.parse::<u32>().ok());
            state == Some("Z") && parent == Some(pid)
        })
        .collect()
}

/// SIGKILL to `pid`, as something outside thaw would send it.
pub fn kill9(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill");
}
