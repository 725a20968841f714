//! Push and pull against S3 endpoints that misbehave: one that accepts connections
//! and never answers must fail within the timeout the user set, in one line that
//! names the endpoint and the limit.

mod common;

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::Env;

/// A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte.
/// Its thread holds the connections open until the test process ends.
fn silent_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held: Vec<TcpStream> = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    endpoint
}

fn with_remote(env: Env, endpoint: &str) -> Env {
    env.with_env("THAW_S3_ENDPOINT", endpoint)
        .with_env("AWS_ACCESS_KEY_ID", "thaw-test-key")
        .with_env("AWS_SECRET_ACCESS_KEY", "thaw-test-secret")
        .with_env("AWS_REGION", "us-east-1")
}

#[test]
fn a_silent_s3_endpoint_fails_push_and_pull_within_the_set_timeout() {
    let endpoint = silent_endpoint();
    let env = with_remote(Env::new(), &endpoint).with_env("THAW_S3_TIMEOUT", "2");
    env.boot("vm", &[]);
    env.json(&["snapshot", "vm", "s", "--stop"]);
    let expected = format!("{endpoint} did not answer within 2 s");
    for args in [["push", "s", "s3://thaw/x"], ["pull", "t", "s3://thaw/x"]] {
        let started = Instant::now();
        let run = env.run(&args);
        let took = started.elapsed();
        println!("thaw {args:?} took {took:?}: {}", run.stderr.trim());
        run.fails_with(&expected);
        // Not a timing assertion: only a bound far above 2 s and far below the
        // 180 s that object_store's defaults (30 s a try, 3 min of retries) take.
        assert!(
            took < Duration::from_secs(60),
            "thaw {args:?} took {took:?}"
        );
    }
    // The pulled tag was never written.
    assert!(!env.snapshot_dirs().contains(&"t".to_owned()));
    env.ok(&["store", "verify"]);
}

#[test]
fn an_s3_timeout_that_is_not_a_number_is_refused_in_one_line() {
    for (name, value) in [
        ("THAW_S3_TIMEOUT", "soon"),
        ("THAW_S3_CONNECT_TIMEOUT", "0"),
    ] {
        let env = with_remote(Env::new(), "http://127.0.0.1:9").with_env(name, value);
        env.run(&["pull", "t", "s3://thaw/x"])
            .fails_with(&format!("{name}=\"{value}\" is not a number of seconds"));
    }
}

/// With no credentials anywhere, push and pull say in one line which variables to
/// set, before any network call: the endpoint (a listener that counts connections)
/// sees none.
#[test]
fn s3_with_no_credentials_fails_in_one_line_without_a_network_call() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let env = Env::new()
        .with_env("THAW_S3_ENDPOINT", &endpoint)
        // Deterministic on any host: no instance metadata service as a last resort.
        .with_env("AWS_EC2_METADATA_DISABLED", "true");
    for args in [["push", "s", "s3://thaw/x"], ["pull", "t", "s3://thaw/x"]] {
        let mut cmd = env.command(&args);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
            if k != "AWS_EC2_METADATA_DISABLED" {
                cmd.env_remove(k);
            }
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "thaw {args:?} succeeded");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(
            lines[0].contains("no S3 credentials for s3://thaw/x: set AWS_ACCESS_KEY_ID")
                && lines[0].contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
            "{stderr}"
        );
    }
    assert!(
        listener.accept().is_err(),
        "the endpoint was contacted without credentials"
    );
}

/// Chunk files in a home's store.
#[cfg(feature = "garage")]
fn stored_chunks(env: &Env) -> usize {
    common::dir_names(&env.path().join("store/chunks"))
        .iter()
        .map(|d| common::dir_names(&env.path().join("store/chunks").join(d)).len())
        .sum()
}

/// Runs `thaw pull TAG URL` in `env`, kills Garage node `victim` once the pull has
/// stored its first chunk, and returns the pull's outcome.
#[cfg(feature = "garage")]
fn pull_killing(
    env: &Env,
    cluster: &mut common::s3::Garage,
    victim: usize,
    args: &[&str],
) -> common::Run {
    let child = env
        .command(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while stored_chunks(env) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.kill(victim);
    println!(
        "killed garage node {victim} after {} chunks",
        stored_chunks(env)
    );
    let out = child.wait_with_output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Through a three-node Garage cluster (every object on all three): a node that
/// dies during a pull leaves two, enough for every read, and the pull completes;
/// when the node the client talks to dies, the pull fails in one line and the home
/// has no snapshot, and in both cases the store verifies.
#[cfg(feature = "garage")]
#[test]
fn a_garage_node_stopped_during_a_pull_leaves_a_whole_snapshot_or_none() {
    let mut cluster = common::s3::Garage::start();
    cluster.create_bucket("thaw");
    let to_node0 = cluster.env(0);
    let endpoint0 = cluster.endpoint(0);
    let on = |env: Env| {
        to_node0
            .clone()
            .into_iter()
            .fold(env, |e, (k, v)| e.with_env(&k, &v))
            .with_env("THAW_S3_TIMEOUT", "10")
    };
    let a = on(Env::new());
    a.boot("vm", &[]);
    a.sh("vm", "echo from-a > /tmp/origin");
    a.json(&["snapshot", "vm", "s", "--stop"]);
    a.json(&["push", "s", "s3://thaw/fleet"]);

    // Node 2 dies; nodes 0 (which the client asks) and 1 hold every object.
    let b = on(Env::new());
    let run = pull_killing(
        &b,
        &mut cluster,
        2,
        &["--json", "pull", "s", "s3://thaw/fleet"],
    );
    assert_eq!(run.code, 0, "pull with a node down: {}", run.stderr);
    let clone = b.json(&["restore", "s", "--name", "c"]);
    assert_eq!(clone[0]["name"], "c");
    assert_eq!(b.sh("c", "cat /tmp/origin"), "from-a\n");
    b.ok(&["stop", "--all"]);
    b.ok(&["store", "verify"]);

    // Node 0, the client's, dies: the pull fails in one line, or had finished.
    let c = on(Env::new());
    let run = pull_killing(&c, &mut cluster, 0, &["pull", "s", "s3://thaw/fleet"]);
    println!(
        "pull with its endpoint killed: {}{}",
        run.stdout, run.stderr
    );
    if run.code == 0 {
        let clone = c.json(&["restore", "s", "--name", "c"]);
        assert_eq!(
            c.sh(clone[0]["name"].as_str().unwrap(), "cat /tmp/origin"),
            "from-a\n"
        );
        c.ok(&["stop", "--all"]);
    } else {
        run.fails_with("cannot pull from s3://thaw/fleet");
        let said = |what: &str| run.stderr.contains(&format!("{endpoint0} {what}"));
        assert!(
            said("did not answer within 10 s")
                || run.stderr.contains(&format!("cannot reach {endpoint0} ")),
            "the line says the endpoint is gone: {}",
            run.stderr
        );
        assert!(!c.listed("s"), "a failed pull lists no snapshot");
        assert!(
            !c.snapshot_dirs()
                .iter()
                .any(|d| d == "s" || d.starts_with(".tmp")),
            "{:?}",
            c.snapshot_dirs()
        );
    }
    c.ok(&["store", "verify"]);
}
