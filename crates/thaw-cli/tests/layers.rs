//! Layered snapshots: snapshots of restored clones, chains of them, the tree they
//! form, and `thaw reset`. On the default guest, with a disk.

mod common;

use common::{assert_clock_close, host_port, names, Env};

/// Writes `word` into the guest's RAM (tmpfs) and onto its disk.
fn write(env: &Env, vm: &str, word: &str) {
    env.sh(
        vm,
        &format!("echo {word} > /tmp/{word} && echo {word} > /mnt/{word} && sync"),
    );
}

/// What the guest has of `words`, in RAM and on disk (read past the page cache).
fn seen(env: &Env, vm: &str, words: &[&str]) -> (String, String) {
    let list = words.join(" ");
    let ram = env.sh(
        vm,
        &format!("for w in {list}; do cat /tmp/$w 2>/dev/null; done | tr '\\n' ' '"),
    );
    let disk = env.sh(
        vm,
        &format!(
            "echo 3 > /proc/sys/vm/drop_caches; for w in {list}; do cat /mnt/$w 2>/dev/null; done | tr '\\n' ' '"
        ),
    );
    (ram.trim().to_owned(), disk.trim().to_owned())
}

/// boot → write A → snapshot s1 → restore c1 → write B → snapshot s2 (of the clone) →
/// restore c2 → write C → snapshot s3 → 3 clones of s3: each sees A, B and C in RAM
/// and on disk; s1 and s2 still restore to their own state; writes in one clone reach
/// no other; the snapshots form the tree s1 → s2 → s3.
/// Returns the directory of the base image, which must outlive the snapshots.
fn chain(env: &Env, boot_args: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let base = common::ext4_image(dir.path(), "base.raw");
    let mut args = vec!["--profile", "default", "--disk", base.to_str().unwrap()];
    args.extend_from_slice(boot_args);
    env.boot("orig", &args);
    env.sh("orig", "mkdir -p /mnt && mount /dev/vda /mnt");
    write(env, "orig", "A");
    let s1 = env.json(&["snapshot", "orig", "s1"]);
    assert!(s1["parent"].is_null(), "{s1}");
    env.json(&["restore", "s1", "--name", "c1"]);
    write(env, "c1", "B");
    let s2 = env.json(&["snapshot", "c1", "s2"]);
    assert_eq!(s2["parent"], "s1", "{s2}");
    assert_eq!(s2["ram_copy"], "mapped-ram");
    env.json(&["restore", "s2", "--name", "c2"]);
    write(env, "c2", "C");
    let s3 = env.json(&["snapshot", "c2", "s3"]);
    assert_eq!(s3["parent"], "s2", "{s3}");

    let abc = ["A", "B", "C"];
    let clones = names(&env.json(&["restore", "s3", "--count", "3"]));
    for n in &clones {
        assert_eq!(seen(env, n, &abc), ("A B C".into(), "A B C".into()), "{n}");
        assert_clock_close(env, n);
    }
    // Each layer still restores to its own state.
    env.json(&["restore", "s1", "--name", "at-s1"]);
    assert_eq!(seen(env, "at-s1", &abc), ("A".into(), "A".into()));
    env.json(&["restore", "s2", "--name", "at-s2"]);
    assert_eq!(seen(env, "at-s2", &abc), ("A B".into(), "A B".into()));
    // A write in one clone of s3 reaches no other clone, nor the VMs it came from.
    write(env, &clones[0], "D");
    let others = clones[1..]
        .iter()
        .map(String::as_str)
        .chain(["c2", "c1", "orig", "at-s2"]);
    for other in others {
        assert_eq!(
            seen(env, other, &["D"]),
            (String::new(), String::new()),
            "{other} sees D"
        );
    }
    assert_eq!(seen(env, &clones[0], &["D"]), ("D".into(), "D".into()));
    // The VMs the chain came from still have their own state.
    assert_eq!(seen(env, "c1", &abc), ("A B".into(), "A B".into()));

    let tree = env.json(&["snapshots"]);
    let by_tag = |t: &str| {
        tree.as_array()
            .unwrap()
            .iter()
            .find(|s| s["tag"] == t)
            .unwrap_or_else(|| panic!("no {t} in {tree}"))
            .clone()
    };
    assert!(by_tag("s1")["parent"].is_null());
    assert_eq!(by_tag("s2")["parent"], "s1");
    assert_eq!(by_tag("s3")["parent"], "s2");
    assert_eq!(by_tag("s1")["children"], serde_json::json!(["s2"]));
    let order: Vec<&str> = tree
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tag"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["s1", "s2", "s3"],
        "parents are listed before children"
    );
    let text = env.ok(&["snapshots"]).stdout;
    assert!(text.contains("└ s2"), "the text shows the tree: {text}");

    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty(), "QEMU left running");
    // Stopped VMs took their files; every snapshot is complete on its own.
    env.json(&["restore", "s3", "--name", "late"]);
    assert_eq!(seen(env, "late", &abc), ("A B C".into(), "A B C".into()));
    dir
}

#[test]
fn a_chain_of_snapshots_of_clones_restores_every_layer() {
    let env = Env::new();
    chain(&env, &[]);
}

#[test]
fn a_chain_of_snapshots_of_clones_with_two_vcpus() {
    let env = Env::new();
    let _base = chain(&env, &["--cpus", "2"]);
    let c = env.json(&["restore", "s3"]);
    let name = c[0]["name"].as_str().unwrap();
    assert_eq!(env.sh(name, "grep -c ^processor /proc/cpuinfo"), "2\n");
}

/// A parent with children cannot be removed (one line, nothing removed); a child can,
/// without touching its parent; `--recursive` removes a whole subtree.
#[test]
fn removing_a_parent_is_refused_while_it_has_children() {
    let env = Env::new();
    env.boot("orig", &[]);
    env.sh("orig", "echo A > /tmp/A");
    env.json(&["snapshot", "orig", "p"]);
    env.json(&["restore", "p", "--name", "c"]);
    env.json(&["snapshot", "c", "k1"]);
    env.json(&["snapshot", "c", "k2"]);
    let before = env.snapshot_dirs();
    env.run(&["rm", "p"]).fails_with(
        "snapshot p has children (k1): remove them first, or remove all with --recursive",
    );
    assert_eq!(env.snapshot_dirs(), before, "nothing was removed");
    // k2's parent is k1 (the clone's last snapshot); k1 has a child too.
    env.run(&["rm", "k1"]).fails_with("has children (k2)");
    let removed = env.json(&["rm", "k2"]);
    assert_eq!(removed["removed"], serde_json::json!(["k2"]));
    let c = env.json(&["restore", "p", "--name", "still"]);
    assert_eq!(env.sh(c[0]["name"].as_str().unwrap(), "cat /tmp/A"), "A\n");
    env.json(&["snapshot", "still", "k3"]);
    let removed = env.json(&["rm", "p", "--recursive"]);
    assert_eq!(removed["removed"], serde_json::json!(["k1", "k3", "p"]));
    assert!(env.snapshot_dirs().is_empty(), "{:?}", env.snapshot_dirs());
}

/// `thaw reset`: a file written after the restore is gone, the host port is the same,
/// the VM Generation ID is fresh (urandom gives other bytes than before the reset,
/// from the same point of the guest), and the clock is set.
#[test]
fn reset_goes_back_to_the_snapshot_keeping_name_and_port() {
    let env = Env::new();
    env.boot("orig", &["--port", "0:80"]);
    env.sh("orig", "echo kept > /tmp/kept");
    env.json(&["snapshot", "orig", "base"]);
    let c = env.json(&["restore", "base", "--name", "web"]);
    let port = host_port(&c[0], 80);
    let random = "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
    let before = env.sh("web", random);
    env.sh("web", "echo scratch > /tmp/scratch");
    let r = env.json(&["reset", "web"]);
    assert_eq!(r["snapshot"], "base");
    assert_eq!(r["name"], "web");
    assert_eq!(host_port(&r, 80), port, "the host port is kept");
    assert_ne!(r["pid"], c[0]["pid"], "a new QEMU");
    let ls = env.json(&["ls"]);
    let web = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .unwrap();
    assert_eq!(host_port(web, 80), port);
    assert_eq!(web["state"], "running");
    assert_eq!(
        env.sh("web", "test -e /tmp/scratch && echo present || echo gone"),
        "gone\n"
    );
    assert_eq!(env.sh("web", "cat /tmp/kept"), "kept\n");
    let after = env.sh("web", random);
    assert_ne!(before, after, "the same random bytes after the reset");
    assert_clock_close(&env, "web");
    // The forward reaches the reset guest.
    env.sh(
        "web",
        "mkdir -p /www && echo hello > /www/index.html && httpd -h /www -p 80",
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.ends_with("hello\n"), "{out}");

    // A booted VM resets to the last snapshot taken of it, or to a named one.
    env.sh("orig", "echo later > /tmp/later");
    env.json(&["reset", "orig"]);
    assert_eq!(
        env.sh("orig", "test -e /tmp/later && echo present || echo gone"),
        "gone\n"
    );
    env.boot("fresh", &[]);
    env.run(&["reset", "fresh"])
        .fails_with("VM fresh was booted and no snapshot was taken of it: name one with --to TAG");
    env.json(&["reset", "fresh", "--to", "base"]);
    assert_eq!(env.sh("fresh", "cat /tmp/kept"), "kept\n");
    env.run(&["reset", "web", "--to", "nope"])
        .fails_with("no snapshot tagged nope");
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
    assert!(env.vm_dirs().is_empty(), "{:?}", env.vm_dirs());
}

/// A live snapshot is consistent: a guest that keeps writing a counter to RAM and to
/// its disk while the snapshot is taken gives clones whose RAM counter and disk
/// counter agree. The loop writes the disk (O_DIRECT, synced) between an "intent" and
/// a "done" mark in RAM; at any instant the disk holds `done` or `intent`. Each clone
/// checks that before every step; a snapshot that caught RAM and disk at different
/// moments breaks it in the clone's first step.
#[test]
fn a_live_snapshot_catches_ram_and_disk_at_the_same_instant() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("counter.raw");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    env.boot(
        "w",
        &["--profile", "default", "--disk", base.to_str().unwrap()],
    );
    let script = r#"
cat > /tmp/loop.sh <<'EOF'
read_disk() { dd if=/dev/vda bs=512 count=1 iflag=direct 2>/dev/null | tr -d ' \0'; }
i=0; echo 0 > /tmp/done; echo 0 > /tmp/intent
printf '%-512s' 0 | dd of=/dev/vda bs=512 count=1 oflag=direct conv=fsync,notrunc 2>/dev/null
while :; do
  d=$(read_disk); done_=$(cat /tmp/done); intent=$(cat /tmp/intent)
  if [ "$d" != "$done_" ] && [ "$d" != "$intent" ]; then
    echo "MISMATCH disk=$d done=$done_ intent=$intent" >> /tmp/mismatch
  fi
  i=$((done_ + 1))
  echo $i > /tmp/intent
  printf '%-512s' $i | dd of=/dev/vda bs=512 count=1 oflag=direct conv=fsync,notrunc 2>/dev/null
  echo $i > /tmp/done
done
EOF
setsid sh /tmp/loop.sh > /dev/null 2>&1 < /dev/null &
n=0; while [ $n -lt 300 ]; do
  v=$(cat /tmp/done 2>/dev/null); [ "${v:-0}" -gt 0 ] && break; sleep 0.1; n=$((n + 1))
done
cat /tmp/done"#;
    let started: u64 = env.sh("w", script).trim().parse().unwrap();
    assert!(started > 0, "the loop runs");
    for tag in ["s1", "s2", "s3"] {
        let s = env.json(&["snapshot", "w", tag]);
        assert_eq!(s["ram_copy"], "mapped-ram", "{s}");
        let c = env.json(&["restore", tag, "--name", &format!("c-{tag}")]);
        let name = c[0]["name"].as_str().unwrap();
        // Let the clone's loop run some steps (each checks), then look.
        let at_restore: u64 = env.sh(name, "cat /tmp/done").trim().parse().unwrap();
        env.sh(name, "sleep 1");
        let later: u64 = env.sh(name, "cat /tmp/done").trim().parse().unwrap();
        assert!(
            later > at_restore,
            "{name}: the loop did not go on ({at_restore} → {later})"
        );
        assert_eq!(
            env.sh(name, "cat /tmp/mismatch 2>/dev/null; true"),
            "",
            "{name}: RAM and disk disagree"
        );
        env.ok(&["stop", name]);
    }
    // The original kept running through the snapshots, consistent too.
    assert_eq!(env.sh("w", "cat /tmp/mismatch 2>/dev/null; true"), "");
}
