//! The CLI drives a daemon elsewhere with Docker's habits (issue 21): `THAW_HOST`
//! (`https://HOST:PORT` or `unix:///path`), `THAW_TOKEN` / `THAW_TOKEN_FILE`, `THAW_CA`,
//! and `-H` over `THAW_HOST`. The client runs in a home of its own, empty: what it
//! boots, lists and stops is the daemon's. A configured daemon that cannot be used (not
//! there, wrong or no token, a certificate the client does not trust) is one line and a
//! non-zero exit, never a silent local run. `thaw pause` / `resume` go through it too. Certificates are made here with rcgen.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::Env;

/// A CA and a certificate for `localhost` and 127.0.0.1 signed by it, as PEM files in
/// `dir`: (ca.pem, cert.pem, key.pem).
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "thaw test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `thaw serve` in its own home; SIGTERM when dropped.
struct Serve(Child);

impl Serve {
    fn start(env: &Env, args: &[&str], socket: &Path) -> Serve {
        let mut a = vec!["serve"];
        a.extend_from_slice(args);
        let child = env
            .command(&a)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut serve = Serve(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !socket.exists() {
            assert!(
                serve.0.try_wait().unwrap().is_none(),
                "thaw serve exited at start"
            );
            assert!(Instant::now() < deadline, "thaw serve did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        serve
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.0.wait();
    }
}

/// `inspect`, `export` and `import` through the daemon (issue 21, item 3): the VM and
/// the snapshot are the daemon's, the export file is written here (streamed), an
/// import sends a file from here; bad ones are one line and leave nothing.
fn snapshots_as_files_through_the_daemon(client: &Env, daemon_home: &Env) {
    let vm = client.json(&["inspect", "web"]);
    assert_eq!(vm["kind"], "vm", "{vm}");
    assert_eq!(vm["live"]["name"], "web", "{vm}");
    assert_eq!(vm["live"]["state"], "running", "{vm}");
    assert!(
        vm.get("record").is_none(),
        "the record is the daemon host's: {vm}"
    );
    let snap = client.json(&["inspect", "base"]);
    assert_eq!(snap["kind"], "snapshot", "{snap}");
    assert_eq!(snap["tag"], "base", "{snap}");
    client
        .run(&["inspect", "nothing"])
        .fails_with("no VM or snapshot named \"nothing\"");

    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("base.thaw");
    let exported = client.json(&["export", "base", file.to_str().unwrap()]);
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(exported["bytes"], size, "{exported}");
    assert!(exported["chunks"].as_u64().unwrap() > 0, "{exported}");
    assert!(
        client.snapshot_dirs().is_empty(),
        "the client's home stays empty"
    );
    let missing = files.path().join("none.thaw");
    client
        .run(&["export", "nope", missing.to_str().unwrap()])
        .fails_with("nope");
    assert_eq!(
        std::fs::read_dir(files.path()).unwrap().count(),
        1,
        "a refused export leaves no file"
    );

    // Imported back under its tag once the daemon no longer has it.
    client
        .run(&["import", file.to_str().unwrap()])
        .fails_with("base");
    client.json(&["rm", "base"]);
    assert!(!client.listed("base"));
    let imported = client.json(&["import", file.to_str().unwrap()]);
    assert_eq!(imported["imported"], "base", "{imported}");
    assert!(client.listed("base"));
    assert!(daemon_home.snapshot_dirs().contains(&"base".to_owned()));
    let clone = client.json(&["restore", "base", "--name", "back"]);
    assert_eq!(clone[0]["name"], "back", "{clone}");
    assert_eq!(client.sh("back", "echo imported"), "imported\n");
    client.ok(&["stop", "back"]);

    // Not an export: refused, nothing added, no scratch file left in the daemon's home.
    let junk = files.path().join("junk.thaw");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    client
        .run(&["import", junk.to_str().unwrap()])
        .fails_with("importing the file failed");
    let empty = files.path().join("empty.thaw");
    std::fs::write(&empty, b"").unwrap();
    client
        .run(&["import", empty.to_str().unwrap()])
        .fails_with("empty");
    let tags: Vec<String> = client
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tag"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tags, ["base"]);
    let scratch: Vec<String> = common::dir_names(daemon_home.path())
        .into_iter()
        .filter(|n| n.starts_with(".import-") || n.starts_with(".export-"))
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
}

/// `thaw up` through the daemon (issue 21, item 3): the daemon's operation boots into
/// its cache, then restores from it; the VMs are the daemon's, bound where asked (item
/// 6: a remote client can reach what it brought up); refusals are one line.
fn up_through_the_daemon(client: &Env, daemon_home: &Env) {
    let args = ["--memory", "128", "--port", "0:8080", "--bind", "127.0.0.2"];
    let mut first = vec!["up", "u1"];
    first.extend_from_slice(&args);
    let booted = client.json(&first);
    assert_eq!(booted["path"], "booted", "{booted}");
    assert_eq!(booted["name"], "u1", "{booted}");
    assert_eq!(booted["bind"], "127.0.0.2", "{booted}");
    let tag = booted["tag"].as_str().unwrap().to_owned();
    let mut second = vec!["up", "u2"];
    second.extend_from_slice(&args);
    let restored = client.json(&second);
    assert_eq!(restored["path"], "restored", "{restored}");
    assert_eq!(restored["tag"], tag.as_str(), "{restored}");
    assert_eq!(restored["bind"], "127.0.0.2", "{restored}");
    assert!(client.vm_dirs().is_empty(), "the client's home stays empty");
    let on_daemon = daemon_home.vm_dirs();
    assert!(on_daemon.contains(&"u1".to_owned()) && on_daemon.contains(&"u2".to_owned()));
    assert!(client.listed(&tag));
    let vms = client.json(&["ls"]);
    let u2 = vms
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "u2")
        .unwrap_or_else(|| panic!("{vms}"));
    assert_eq!(u2["state"], "running", "{vms}");
    assert_eq!(u2["bind"], "127.0.0.2", "{vms}");
    assert_eq!(
        client.sh("u2", "echo up through thawd"),
        "up through thawd\n"
    );
    client
        .run(&["up", "u1", "--memory", "128"])
        .fails_with("already exists");
    client
        .run(&["up", "u3", "--bind", "203.0.113.7"])
        .fails_with("not an address of this host");
    assert!(!daemon_home.vm_dirs().contains(&"u3".to_owned()));
    client.ok(&["stop", "u1", "u2"]);
}

#[test]
fn the_cli_drives_a_daemon_over_tls_with_a_token_or_says_why_not() {
    let daemon_home = Env::new();
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(files.path());
    let tokens = files.path().join("tokens");
    let token = daemon_home
        .ok(&["token", "new", "cli", "--tokens", tokens.to_str().unwrap()])
        .stdout
        .trim()
        .to_owned();
    let port = free_port();
    // A socket away from the home's default: found only through unix://.
    let socket = files.path().join("elsewhere.sock");
    let listen = format!("127.0.0.1:{port}");
    let _serve = Serve::start(
        &daemon_home,
        &[
            "--socket",
            socket.to_str().unwrap(),
            "--listen",
            &listen,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
        ],
        &socket,
    );
    let url = format!("https://localhost:{port}");
    let ca = ca.to_str().unwrap();
    let client = Env::new()
        .with_env("THAW_HOST", &url)
        .with_env("THAW_TOKEN", &token)
        .with_env("THAW_CA", ca);

    // The whole way through TLS: boot, exec, snapshot, list, stop.
    let booted = client.boot("web", &["--memory", "128"]);
    assert_eq!(booted["name"], "web", "{booted}");
    assert_eq!(client.sh("web", "echo over tls"), "over tls\n");
    client.json(&["snapshot", "web", "base"]);
    client.json(&["pause", "web"]);
    assert_eq!(client.state_of("web"), "paused");
    client.json(&["resume", "web"]);
    assert_eq!(client.state_of("web"), "running");
    assert!(client.listed("base"));
    // ... and all of it is the daemon's: the client's own home has none of it.
    assert!(client.vm_dirs().is_empty() && client.snapshot_dirs().is_empty());
    assert!(daemon_home.vm_dirs().contains(&"web".to_owned()));

    // The token from a file; -H over THAW_HOST.
    let token_file = files.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let dead = format!("https://127.0.0.1:{}", free_port());
    let by_file = Env::new()
        .with_env("THAW_HOST", &dead)
        .with_env("THAW_TOKEN_FILE", token_file.to_str().unwrap())
        .with_env("THAW_CA", ca);
    let vms = by_file.json(&["ls", "-H", &url]);
    assert_eq!(vms[0]["name"], "web", "{vms}");
    // The daemon started with --socket is found with unix://, no token needed.
    let unix = Env::new().with_env("THAW_HOST", &format!("unix://{}", socket.display()));
    assert_eq!(unix.state_of("web"), "running");

    // A configured daemon that cannot be used: one line, non-zero, nothing run here.
    let refused = |env: Env, needle: &str| {
        env.run(&["ls"]).fails_with(needle);
        let json = env.run(&["ls", "--json"]);
        assert_ne!(json.code, 0);
        assert!(json.json()["error"].as_str().unwrap().contains(needle));
    };
    let wrong_token = Env::new()
        .with_env("THAW_HOST", &url)
        .with_env("THAW_TOKEN", "thaw_not-the-token")
        .with_env("THAW_CA", ca);
    refused(
        wrong_token,
        &format!("thawd at {url} refused the token (set THAW_TOKEN or THAW_TOKEN_FILE)"),
    );
    let no_token = Env::new()
        .with_env("THAW_HOST", &url)
        .with_env("THAW_CA", ca);
    refused(no_token, "refused the token");
    let no_ca = Env::new()
        .with_env("THAW_HOST", &url)
        .with_env("THAW_TOKEN", &token);
    refused(no_ca, &format!("TLS with thawd at {url} failed"));
    let missing_ca = Env::new()
        .with_env("THAW_HOST", &url)
        .with_env("THAW_TOKEN", &token)
        .with_env("THAW_CA", "/nonexistent/ca.pem");
    refused(missing_ca, "cannot read THAW_CA=/nonexistent/ca.pem");
    let unreachable = Env::new()
        .with_env("THAW_HOST", &dead)
        .with_env("THAW_TOKEN", &token);
    refused(unreachable, &format!("cannot reach thawd at {dead}"));
    let gone_socket = Env::new().with_env("THAW_HOST", "unix:///nonexistent/thawd.sock");
    refused(
        gone_socket,
        "could not connect to thawd at /nonexistent/thawd.sock",
    );
    refused(
        Env::new().with_env("THAW_HOST", "tcp://localhost:2375"),
        "THAW_HOST=\"tcp://localhost:2375\" is not unix:///PATH or https://HOST:PORT",
    );
    // A command thawd does not serve yet is not run on this host instead.
    client
        .run(&["gc"])
        .fails_with("this command does not run through thawd yet");
    snapshots_as_files_through_the_daemon(&client, &daemon_home);
    up_through_the_daemon(&client, &daemon_home);
    // `logs` goes through it: the console of the daemon's VM.
    let logs = client.run(&["logs", "web"]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    // So do the screen's commands: the daemon's answer, in one line.
    client
        .run(&["screenshot", "web", "/tmp/never-written.png"])
        .fails_with("has no display");
    client
        .run(&["key", "web", "ret"])
        .fails_with("has no display");

    client.ok(&["stop", "web"]);
    assert_eq!(client.state_of("web"), "absent");
    assert!(
        daemon_home.vm_dirs().is_empty(),
        "{:?}",
        daemon_home.vm_dirs()
    );
}
