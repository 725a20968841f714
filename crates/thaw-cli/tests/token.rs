//! `thaw token new NAME --tokens FILE`: prints a new token once, keeps only its SHA-256
//! in the file (made 0600), refuses a name already there in one line; with --json the
//! token, its name and the file.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::Env;

#[test]
fn token_new_prints_the_token_once_and_keeps_its_hash() {
    let env = Env::new();
    let file = env.path().join("tokens");
    let f = file.to_str().unwrap();
    let run = env.ok(&["token", "new", "ci", "--tokens", f]);
    let token = run.stdout.trim().to_owned();
    assert!(token.starts_with("thaw_") && token.len() > 40, "{token:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("ci:") && !text.contains(&token), "{text}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let second = env.json(&["token", "new", "ops", "--tokens", f]);
    assert_eq!(second["name"], "ops");
    assert!(second["token"].as_str().unwrap().starts_with("thaw_"));
    assert_ne!(second["token"].as_str().unwrap(), token);
    env.run(&["token", "new", "ci", "--tokens", f])
        .fails_with("a token named ci is already in the file");
    // thawd reads the file: both tokens are accepted by the same check it runs.
    let tokens = thaw_daemon::tokens::Tokens::load(&file).unwrap();
    assert_eq!(tokens.check(&token).as_deref(), Some("ci"));
    assert_eq!(
        tokens.check(second["token"].as_str().unwrap()).as_deref(),
        Some("ops")
    );
}
