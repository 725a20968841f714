//! `thaw up`, the boot cache: the first run cold-boots and caches, the next restores;
//! a changed input (one byte of the initrd) boots again; two at once boot once; with
//! a remote, a fresh machine pulls instead of booting.

mod common;

use common::s3::S3Server;
use common::Env;
use serde_json::Value;

fn default_guest() -> (String, String, String) {
    let out = std::process::Command::new(common::THAW)
        .args(["guest", "build", "--json"])
        .output()
        .unwrap();
    let g: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        g["kernel"].as_str().unwrap().to_owned(),
        g["initrd"].as_str().unwrap().to_owned(),
        g["cmdline"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn the_first_up_boots_the_next_restores_and_a_changed_input_boots_again() {
    let env = Env::new();
    let printed = env.ok(&["up", "a", "--print-key"]).stdout;
    let first = env.json(&["up", "a"]);
    assert_eq!(first["path"], "booted", "{first}");
    assert_eq!(printed, format!("{}\n", first["key"].as_str().unwrap()));
    let tag = first["tag"].as_str().unwrap().to_owned();
    assert!(tag.starts_with("up-"), "{tag}");
    env.sh("a", "echo in-a > /tmp/x");
    let second = env.json(&["up", "b"]);
    assert_eq!(second["path"], "restored", "{second}");
    assert_eq!(second["tag"], tag);
    assert_eq!(
        env.sh("b", "test -e /tmp/x && echo leaked || echo clean"),
        "clean\n",
        "b restored the snapshot, not a's later state"
    );
    // Another memory size is another machine: another key.
    let bigger = env.json(&["up", "c", "--memory", "320"]);
    assert_eq!(bigger["path"], "booted");
    assert_ne!(bigger["tag"], tag);

    // One byte of the initrd changed (appended after the cpio trailer, harmless to
    // the guest): a new key, a cold boot.
    let (kernel, initrd, cmdline) = default_guest();
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("initrd");
    let mut bytes = std::fs::read(&initrd).unwrap();
    bytes.push(0);
    std::fs::write(&changed, &bytes).unwrap();
    let args = [
        "--kernel",
        &kernel,
        "--initrd",
        changed.to_str().unwrap(),
        "--append",
        &cmdline,
    ];
    let mut up = vec!["up", "d"];
    up.extend_from_slice(&args);
    let mut print = up.clone();
    print.push("--print-key");
    let printed = env.json(&print);
    let d = env.json(&up);
    assert_eq!(d["path"], "booted", "{d}");
    assert_eq!((&printed["key"], &printed["tag"]), (&d["key"], &d["tag"]));
    assert_ne!(d["tag"], tag);
    let mut up = vec!["up", "e"];
    up.extend_from_slice(&args);
    assert_eq!(env.json(&up)["path"], "restored");
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}

#[test]
fn two_ups_at_once_boot_once() {
    let env = Env::new();
    let spawn = |name: &str| {
        env.command(&["up", name, "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (x, y) = (spawn("x"), spawn("y"));
    let mut paths = Vec::new();
    for c in [x, y] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        paths.push(v["path"].as_str().unwrap().to_owned());
    }
    paths.sort();
    assert_eq!(paths, ["booted", "restored"], "exactly one cold boot");
    let snaps = env.json(&["snapshots"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1, "{snaps}");
}

#[test]
fn up_with_a_remote_pulls_on_a_fresh_machine_instead_of_booting() {
    let server = S3Server::start();
    let with_remote = |env: Env| {
        server
            .env()
            .into_iter()
            .fold(env, |e, (k, v)| e.with_env(&k, &v))
    };
    let a = with_remote(Env::new());
    let first = a.json(&["up", "a", "--remote", "s3://thaw/cache"]);
    assert_eq!(first["path"], "booted");
    assert_eq!(first["pushed"], true);
    let b = with_remote(Env::new());
    let there = b.json(&["up", "b", "--remote", "s3://thaw/cache"]);
    assert_eq!(there["path"], "pulled", "{there}");
    assert_eq!(there["tag"], first["tag"]);
    assert_eq!(b.sh("b", "echo hi"), "hi\n");
}

/// `--print-key` without a boot: the key alone on stdout, another one for another
/// kernel, disk or option, the same one with a remote that would not answer (it is not
/// asked: a listener standing in for it sees no connection), and nothing started or
/// written in the home.
#[test]
fn print_key_needs_no_boot_and_no_network_and_changes_with_every_input() {
    use std::net::TcpListener;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let env = Env::new()
        .with_env("THAW_S3_ENDPOINT", &endpoint)
        .with_env("AWS_ENDPOINT_URL", &endpoint)
        .with_env("AWS_ACCESS_KEY_ID", "bogus")
        .with_env("AWS_SECRET_ACCESS_KEY", "bogus");
    let key = |extra: &[&str]| {
        let mut args = vec!["up", "k", "--print-key"];
        args.extend_from_slice(extra);
        let out = env.ok(&args).stdout;
        let key = out.strip_suffix('\n').unwrap_or(&out).to_owned();
        assert!(
            key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()),
            "one key alone on stdout: {out:?}"
        );
        key
    };
    let base = key(&[]);
    assert_eq!(key(&[]), base, "the same inputs, the same key");
    assert_eq!(
        key(&["--remote", "s3://bucket/prefix"]),
        base,
        "the remote is not an input"
    );
    let json = env.json(&["up", "k", "--print-key", "--remote", "s3://bucket/prefix"]);
    assert_eq!(json["key"], base.as_str());
    assert_eq!(json["tag"], format!("up-{}", &base[..16]));

    let mut keys = vec![base.clone()];
    for option in [
        &["--memory", "320"][..],
        &["--cpus", "2"],
        &["--machine", "q35"],
        &["--port", "0:80"],
        &["--ready-port", "22", "--port", "0:22"],
        &["--no-net"],
    ] {
        keys.push(key(option));
    }

    // A kernel changed by one byte (a copy, so the cached guest stays as it is).
    let (kernel, initrd, cmdline) = default_guest();
    let dir = tempfile::tempdir().unwrap();
    let own = |k: &str| key(&["--kernel", k, "--initrd", &initrd, "--append", &cmdline]);
    keys.push(own(&kernel));
    let changed = dir.path().join("kernel");
    let mut bytes = std::fs::read(&kernel).unwrap();
    bytes.push(0);
    std::fs::write(&changed, &bytes).unwrap();
    keys.push(own(changed.to_str().unwrap()));

    // A disk, then the same disk with one byte changed.
    let disk = dir.path().join("data.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let with_disk = || key(&["--profile", "default", "--disk", disk.to_str().unwrap()]);
    keys.push(with_disk());
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[4096] = 1;
    std::fs::write(&disk, &bytes).unwrap();
    keys.push(with_disk());

    let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "every input changes the key: {keys:?}"
    );

    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the remote was contacted"
    );
    assert!(env.processes().is_empty(), "no QEMU was started");
    assert_eq!(
        common::dir_names(env.path()),
        Vec::<String>::new(),
        "nothing written in THAW_HOME"
    );
}
