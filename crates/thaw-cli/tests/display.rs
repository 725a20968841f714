//! Graphical guests over VNC, restored with their screen: the screen of the original,
//! paused right before a `--stop` snapshot, and the screens of its clones right after
//! restore (still paused) are pixel-identical; once resumed, a real VNC client
//! (vncdotool) reads each clone's screen from that clone's own port; keys typed into one
//! clone change that clone's screen only. A VNC port that is taken is refused before
//! anything starts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Env;
use serde_json::Value;

/// The guest's screen (`thaw-screen` on tty1, 16x32 font): the clock is text line 2,
/// pixel rows 32..64, and changes every second; everything else changes only when typed.
const CLOCK_ROWS: std::ops::Range<usize> = 32..64;
const PASSWORD: &str = "thaw-vnc";

/// An RGB image.
#[derive(PartialEq, Eq)]
struct Pixels {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{} image", self.width, self.height)
    }
}

impl Pixels {
    fn read(path: &Path) -> Pixels {
        let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        let rgb = match info.color_type {
            png::ColorType::Rgb => buf,
            png::ColorType::Rgba => buf.chunks(4).flat_map(|p| p[..3].to_vec()).collect(),
            other => panic!("{}: unexpected PNG color type {other:?}", path.display()),
        };
        Pixels {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        }
    }

    /// The image without the clock's rows.
    fn without_clock(&self) -> Vec<u8> {
        let row = self.width * 3;
        (0..self.height)
            .filter(|y| !CLOCK_ROWS.contains(y))
            .flat_map(|y| self.rgb[y * row..(y + 1) * row].to_vec())
            .collect()
    }

    fn lit(&self) -> usize {
        self.rgb.iter().filter(|&&b| b > 0x40).count()
    }
}

fn screenshot(env: &Env, vm: &str, dir: &Path, label: &str) -> Pixels {
    let file = dir.join(format!("{vm}-{label}.png"));
    let shot = env.json(&["screenshot", vm, file.to_str().unwrap()]);
    assert_eq!(shot["file"], file.to_str().unwrap());
    Pixels::read(&file)
}

/// A screen capture through a real VNC client connecting to `port` with the password.
fn vnc_capture(port: u16, out: &Path) -> Pixels {
    let script = format!(
        "from vncdotool import api\n\
         c = api.connect('127.0.0.1::{port}', password={PASSWORD:?}, timeout=60)\n\
         c.captureScreen({:?})\n\
         c.disconnect()\n\
         api.shutdown()\n",
        out.to_str().unwrap()
    );
    let run = Command::new("python3")
        .args(["-W", "ignore", "-c", &script])
        .output()
        .expect("run python3 (install it with scripts/setup-test.sh)");
    assert!(
        run.status.success(),
        "vncdotool could not capture 127.0.0.1:{port}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    Pixels::read(out)
}

fn require_vncdotool() {
    let ok = Command::new("python3")
        .args(["-c", "import vncdotool.api"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "vncdotool is missing: run scripts/setup-test.sh (pip install vncdotool)"
    );
}

fn vm<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no VM {name} in {list}"))
}

fn vnc_port(v: &Value) -> u16 {
    v["vnc"]["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("no VNC port: {v}")) as u16
}

/// Waits (observing, no fixed sleep) until `vm`'s screen outside the clock differs
/// from `before`.
fn wait_screen_change(env: &Env, vm: &str, dir: &Path, before: &Pixels) -> Pixels {
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        let now = screenshot(env, vm, dir, &format!("typed-{i}"));
        if now.without_clock() != before.without_clock() {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{vm}'s screen did not change after typing"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}

#[test]
fn clones_restore_the_screen_and_each_serves_and_types_on_its_own() {
    require_vncdotool();
    let env = Env::new();
    let build = env.run(&["guest", "build", "--profile", "debian-vnc"]);
    assert_eq!(build.code, 0, "building the image failed: {}", build.stderr);
    let dir = tempfile::tempdir().unwrap();
    let pw: PathBuf = dir.path().join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let pw = pw.to_str().unwrap();

    let g = env.boot(
        "g",
        &[
            "--profile",
            "debian-vnc",
            "--vnc-password-file",
            pw,
            "--vnc-websocket",
            "--timeout",
            "300",
        ],
    );
    assert!(g["vnc"]["port"].as_u64().unwrap() >= 5900, "{g}");
    assert!(g["vnc"]["websocket"].is_u64(), "{g}");
    // The screen is drawn (the guest marks it) ...
    env.sh(
        "g",
        "i=0; until [ -e /run/thaw-screen.drawn ] || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done; \
         test -e /run/thaw-screen.drawn",
    );
    let drawn = screenshot(&env, "g", dir.path(), "drawn");
    assert!(drawn.lit() > 0, "the screen is black");
    // ... and shows what is typed (the keys reach the guest before the snapshot).
    env.ok(&["type", "g", "Typed before the snapshot!"]);
    env.ok(&["key", "g", "ret"]);
    wait_screen_change(&env, "g", dir.path(), &drawn);

    // Paused, the original's screen holds still; the snapshot keeps exactly it.
    env.json(&["pause", "g"]);
    let original = screenshot(&env, "g", dir.path(), "paused");
    env.json(&["snapshot", "g", "s", "--stop"]);
    let clones = env.json(&[
        "restore",
        "s",
        "--count",
        "3",
        "--paused",
        "--vnc-password-file",
        pw,
    ]);
    let names: Vec<String> = clones
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 3);
    let list = env.json(&["ls"]);
    let mut ports = Vec::new();
    for n in &names {
        let v = vm(&list, n);
        assert_eq!(v["state"], "paused", "{v}");
        ports.push(vnc_port(v));
        ports.push(v["vnc"]["websocket"].as_u64().unwrap() as u16);
        let restored = screenshot(&env, n, dir.path(), "restored");
        assert_eq!(
            restored, original,
            "{n}'s screen right after restore is not, pixel for pixel, the original's"
        );
    }
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        6,
        "every clone has its own VNC and websocket ports"
    );

    // Resumed, a VNC client reads each clone's screen from the clone's own port.
    let mut before = Vec::new();
    for n in &names {
        env.json(&["resume", n]);
        let port = vnc_port(vm(&env.json(&["ls"]), n));
        let captured = vnc_capture(port, &dir.path().join(format!("{n}-vnc.png")));
        let dumped = screenshot(&env, n, dir.path(), "running");
        assert_eq!(
            (captured.width, captured.height),
            (dumped.width, dumped.height)
        );
        assert_eq!(
            captured.without_clock(),
            dumped.without_clock(),
            "{n}: the VNC client saw another screen than QEMU's screendump"
        );
        before.push(dumped);
    }

    // Keys typed into the first clone change its screen, and no other's.
    env.ok(&["type", names[0].as_str(), "only in the first clone"]);
    env.ok(&["key", names[0].as_str(), "ret"]);
    let after = wait_screen_change(&env, &names[0], dir.path(), &before[0]);
    assert_ne!(after.without_clock(), before[0].without_clock());
    for (n, b) in names.iter().zip(&before).skip(1) {
        let now = screenshot(&env, n, dir.path(), "after");
        assert_eq!(
            now.without_clock(),
            b.without_clock(),
            "{n}'s screen changed when the first clone was typed into"
        );
    }
    env.ok(&["stop", "--all"]);
    assert!(env.processes().is_empty());
}

#[test]
fn a_vnc_port_that_is_taken_is_refused_before_anything_starts() {
    let env = Env::new();
    let build = env.run(&["guest", "build", "--profile", "debian-vnc"]);
    assert_eq!(build.code, 0, "building the image failed: {}", build.stderr);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    env.run(&["boot", "g", "--profile", "debian-vnc", "--vnc-port", &port])
        .fails_with(&format!("VNC port {port} is already in use"));
    env.run(&[
        "boot",
        "g",
        "--profile",
        "debian-bios",
        "--vnc-port",
        "5999",
    ])
    .fails_with("add --display vnc");
    env.run(&["boot", "g", "--profile", "debian-vnc", "--vnc-port", "80"])
        .fails_with("below 5900");
    assert!(env.processes().is_empty());
    assert!(
        env.vm_dirs().is_empty(),
        "stray VM state: {:?}",
        env.vm_dirs()
    );
}
