//! Names and paths: every kind of name thaw takes — VM names, snapshot tags, `reset
//! --to`, pools, push/pull/export/evict tags, `up` — with `/`, `..`, 300 characters,
//! unicode, a leading `-` or `.`, empty: each refused with one line, and nothing is
//! created outside `$THAW_HOME`. (NUL cannot be passed in an argument; the daemon's
//! tests send it in paths and bodies.) Names that are valid but long work end to end.
//! And everything thaw keeps is private: files 0600, directories 0700, sockets
//! without group or other bits, the daemon's socket 0600.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{dir_names, Env};

/// The bad names, and a word their refusal must contain.
fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        ("a/b".into(), "contains '/'"),
        ("..".into(), "contains '..'"),
        ("../escaped".into(), "contains '/'"),
        ("x..y".into(), "contains '..'"),
        ("x".repeat(300), "longer than 64 characters"),
        ("é".into(), "use only letters"),
        ("名前".into(), "use only letters"),
        ("snow☃man".into(), "use only letters"),
        ("-x".into(), "starts with '.' or '-'"),
        (".hidden".into(), "starts with '.' or '-'"),
        ("".into(), "empty"),
        ("sp ace".into(), "use only letters"),
        ("tab\tname".into(), "use only letters"),
        ("new\nline".into(), "use only letters"),
    ]
}

/// Everything under `dir`, recursively, as relative paths.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn every_kind_of_bad_name_is_refused_with_one_line_and_nothing_escapes_home() {
    // The home three levels down in a private directory: a name that escaped with
    // `..` would show up in one of the levels above it.
    let env = Env::new();
    let outer = tempfile::tempdir().unwrap();
    let home = outer.path().join("a/b/c/home");
    std::fs::create_dir_all(&home).unwrap();
    let env = env.with_env("THAW_HOME", home.to_str().unwrap());
    let before = tree(outer.path());
    let cwd = tempfile::tempdir().unwrap();
    let export = cwd.path().join("out.thaw");
    let export = export.to_str().unwrap();

    let mut tried = 0;
    for (name, why) in bad_names() {
        let n = name.as_str();
        let (as_name, as_to) = (format!("--name={n}"), format!("--to={n}"));
        // `--` (or `--opt=`) so that a leading '-' reaches thaw as a name, not as an
        // option.
        let mut cases: Vec<Vec<&str>> = vec![
            vec!["boot", "--", n],
            vec!["snapshot", "--", n, "t"],
            vec!["snapshot", "vm", "--", n],
            vec!["restore", "--", n],
            vec!["restore", "t", &as_name],
            vec!["reset", "--", n],
            vec!["reset", "vm", &as_to],
            vec!["stop", "--", n],
            vec!["resume", "--", n],
            vec!["rm", "--", n],
            vec!["logs", "--", n],
            vec!["pool", "--size", "1", "--", n],
            vec!["push", "--", n, "s3://b/p"],
            vec!["pull", "--", n, "s3://b/p"],
            vec!["export", "--", n, export],
            vec!["store", "evict", "--", n],
            vec!["up", "--", n],
        ];
        if !n.starts_with('-') {
            // Its command follows `--`, so the name cannot.
            cases.push(vec!["exec", n, "--", "true"]);
        }
        for args in cases {
            let r = env
                .command(&args)
                .current_dir(cwd.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&r.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_ne!(r.status.code(), Some(0), "thaw {args:?} succeeded");
            assert_eq!(lines.len(), 1, "thaw {args:?}: not one line: {stderr:?}");
            // A name of its own line ("new\nline") is refused by clap's parser, which
            // quotes it escaped; every other refusal says why.
            assert!(
                lines[0].contains(why) || n.contains('\n'),
                "thaw {args:?}: {:?} does not say {why:?}",
                lines[0]
            );
            tried += 1;
        }
    }
    // An option-like name without `--` is an unknown option, also one line.
    for args in [
        vec!["boot", "-x"],
        vec!["snapshot", "vm", "-t"],
        vec!["rm", "--x"],
    ] {
        let r = env.run(&args);
        r.fails_with("(see --help)");
        tried += 1;
    }
    assert_eq!(
        tree(outer.path()),
        before,
        "something was created outside $THAW_HOME (or in it)"
    );
    assert!(
        dir_names(&home).iter().all(|d| d != "x"),
        "{:?}",
        tree(&home)
    );
    assert!(!Path::new(export).exists(), "an export was written");
    assert!(!cwd.path().join("escaped").exists());
    println!("names: {tried} bad names tried, {tried} refused with one line");
}

/// The longest valid names (64 characters) through boot, snapshot, restore and reset.
/// A reset prepared its clone in `vms/.reset-<name>-<pid>/`, whose QMP socket path
/// was then longer than a Unix socket allows: a VM with a valid 64-character name
/// could be booted and restored but not reset.
#[test]
fn a_vm_with_a_64_character_name_can_be_reset() {
    let env = Env::new();
    let vm = "v".repeat(64);
    let tag = "t".repeat(64);
    let clone = format!("c{}", "-".repeat(62) + "9");
    env.boot(&vm, &["--memory", "128"]);
    env.json(&["snapshot", &vm, &tag]);
    env.json(&["restore", &tag, "--name", &clone]);
    let r = env.json(&["reset", &clone]);
    assert_eq!(r["name"], clone.as_str(), "{r}");
    assert_eq!(env.sh(&clone, "echo ok"), "ok\n");
    let r = env.json(&["reset", &vm, "--to", &tag]);
    assert_eq!(r["snapshot"], tag.as_str(), "{r}");
    // A count of clones whose derived names would be too long is refused, one line.
    env.run(&["restore", &tag, "--count", "2"])
        .fails_with("longer than 64 characters");
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
}

/// Mode bits of every entry under `dir`, by relative path (symlinks skipped).
fn modes(dir: &Path) -> Vec<(String, u32, &'static str)> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u32, &'static str)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue; // gone meanwhile
            };
            let t = m.file_type();
            let kind = if t.is_symlink() {
                continue;
            } else if t.is_dir() {
                "dir"
            } else if t.is_socket() {
                "socket"
            } else {
                "file"
            };
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, m.permissions().mode() & 0o7777, kind));
            if t.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// With the default umask (022) everything thaw wrote — guest RAM, snapshots, the
/// store, the daemon's database — was readable by every local user.
#[test]
fn snapshot_files_the_store_and_the_sockets_are_private() {
    let env = Env::new();
    let img = tempfile::tempdir().unwrap();
    let base = img.path().join("data.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    env.boot(
        "vm",
        &[
            "--profile",
            "default",
            "--memory",
            "128",
            "--disk",
            base.to_str().unwrap(),
        ],
    );
    env.json(&["snapshot", "vm", "s"]);
    env.json(&["restore", "s", "--name", "c"]);
    // Pinned: its plain RAM image is among the files checked (s is kept once: its
    // RAM is the lazy server's file, checked under lazy/mnt).
    env.json(&["snapshot", "c", "child", "--pin"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.thaw");
    env.json(&["export", "s", file.to_str().unwrap()]);
    env.json(&["store", "evict", "s"]);
    env.json(&["restore", "s", "--name", "d"]); // served lazily from the store
                                                // The daemon, for its socket, database and lock.
    let mut serve = env
        .command(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = env.path().join("thawd.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "thaw serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    env.json(&["pools"]);

    let all = modes(env.path());
    let mut bad = Vec::new();
    for (path, mode, kind) in &all {
        let ok = match *kind {
            "dir" => *mode == 0o700,
            "file" => *mode == 0o600,
            _ if path == "thawd.sock" => *mode == 0o600,
            _ => mode & 0o077 == 0,
        };
        if !ok {
            bad.push(format!("{kind} {path} {mode:o}"));
        }
    }
    let export_mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(serve.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let _ = serve.wait();
    assert!(
        all.iter().any(|(p, _, _)| p.starts_with("store/chunks/"))
            && all.iter().any(|(p, _, _)| p == "snapshots/child/memory")
            && all.iter().any(|(p, _, _)| p.starts_with("lazy/mnt/"))
            && all
                .iter()
                .any(|(p, _, k)| *k == "socket" && p.ends_with("qmp.sock")),
        "the walk missed what it is about: {all:?}"
    );
    assert!(
        bad.is_empty(),
        "not private ({} of {}): {bad:#?}",
        bad.len(),
        all.len()
    );
    assert_eq!(export_mode, 0o600, "the export holds guest RAM too");
    println!(
        "modes: {} entries under $THAW_HOME checked, all private",
        all.len()
    );
}
