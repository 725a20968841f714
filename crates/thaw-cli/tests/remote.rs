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
    for (name, value) in [("THAW_S3_TIMEOUT", "soon"), ("THAW_S3_CONNECT_TIMEOUT", "0")] {
        let env = with_remote(Env::new(), "http://127.0.0.1:9").with_env(name, value);
        env.run(&["pull", "t", "s3://thaw/x"])
            .fails_with(&format!("{name}=\"{value}\" is not a number of seconds"));
    }
}
