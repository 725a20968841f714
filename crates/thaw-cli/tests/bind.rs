//! `--bind ADDR`: a VM's port forwards and VNC display listen on the address asked for
//! (127.0.0.1 unless told), at boot, restore, `up` and across `reset`; a bad address
//! is refused in one line with nothing left behind.
//!
//! 127.0.0.2 is an address of every Linux host other than 127.0.0.1 (the whole of
//! 127.0.0.0/8 is on `lo`): what listens on it is not reached through 127.0.0.1, and
//! the other way round.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use common::{host_port, Env};
use serde_json::Value;

const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The body of `GET /` through a forward at `addr:port`.
fn http_get(addr: Ipv4Addr, port: u16) -> String {
    let mut s = TcpStream::connect((addr, port))
        .unwrap_or_else(|e| panic!("connect to {addr}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.rsplit("\r\n\r\n").next().unwrap_or("").to_owned()
}

/// Nothing listens on `addr:port`: a connection is refused.
fn refused(addr: Ipv4Addr, port: u16) {
    let e = TcpStream::connect((addr, port))
        .map(drop)
        .expect_err(&format!("{addr}:{port} accepted a connection"));
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

/// The first bytes a VNC server sends: its protocol version.
fn vnc_banner(addr: Ipv4Addr, port: u16) -> String {
    let mut s = TcpStream::connect((addr, port))
        .unwrap_or_else(|e| panic!("connect to VNC at {addr}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 12];
    s.read_exact(&mut b).unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

fn listed<'a>(ls: &'a Value, name: &str) -> &'a Value {
    ls.as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {ls}"))
}

/// Boot, restore and reset bound to 127.0.0.2: the forward and the display answer
/// there and not on 127.0.0.1; `ls`, `inspect` and the reports say the address; a
/// restore bound to 0.0.0.0 answers on both; one without `--bind` on 127.0.0.1 only.
#[test]
fn forwards_and_display_listen_on_the_bind_address() {
    let env = Env::new();
    let a = env.boot(
        "a",
        &[
            "--bind",
            "127.0.0.2",
            "--port",
            "0:8080",
            "--display",
            "vnc",
        ],
    );
    assert_eq!(a["bind"], "127.0.0.2", "{a}");
    let port = host_port(&a, 8080);
    env.sh(
        "a",
        "mkdir -p /www && echo hello > /www/index.html && httpd -p 8080 -h /www",
    );
    assert_eq!(http_get(ELSEWHERE, port), "hello\n");
    refused(Ipv4Addr::LOCALHOST, port);
    let vnc = a["vnc"]["port"].as_u64().unwrap() as u16;
    assert!(vnc_banner(ELSEWHERE, vnc).starts_with("RFB "));
    refused(Ipv4Addr::LOCALHOST, vnc);
    let ls = env.json(&["ls"]);
    assert_eq!(listed(&ls, "a")["bind"], "127.0.0.2", "{ls}");
    let inspected = env.json(&["inspect", "a"]);
    assert_eq!(inspected["record"]["bind"], "127.0.0.2", "{inspected}");
    assert_eq!(inspected["live"]["bind"], "127.0.0.2", "{inspected}");
    let human = env.ok(&["ls"]).stdout;
    assert!(
        human.contains(&format!("127.0.0.2:{port} -> 8080")),
        "{human}"
    );

    env.json(&["snapshot", "a", "s"]);
    let c = env.json(&[
        "restore",
        "s",
        "--name",
        "c",
        "--bind",
        "127.0.0.2",
        "--ready-port",
        "8080",
    ]);
    assert_eq!(c[0]["bind"], "127.0.0.2", "{c}");
    let cport = host_port(&c[0], 8080);
    assert_ne!(cport, port, "every clone has its own host port");
    assert_eq!(http_get(ELSEWHERE, cport), "hello\n");
    refused(Ipv4Addr::LOCALHOST, cport);
    let cvnc = c[0]["vnc"]["port"].as_u64().unwrap() as u16;
    assert!(vnc_banner(ELSEWHERE, cvnc).starts_with("RFB "));
    refused(Ipv4Addr::LOCALHOST, cvnc);

    // A reset keeps the VM's address, host port and VNC port.
    env.sh("c", "echo changed > /www/index.html");
    assert_eq!(http_get(ELSEWHERE, cport), "changed\n");
    let r = env.json(&["reset", "c"]);
    assert_eq!(r["bind"], "127.0.0.2", "{r}");
    assert_eq!(host_port(&r, 8080), cport, "{r}");
    assert_eq!(
        http_get(ELSEWHERE, cport),
        "hello\n",
        "back to the snapshot"
    );
    refused(Ipv4Addr::LOCALHOST, cport);
    assert!(vnc_banner(ELSEWHERE, cvnc).starts_with("RFB "));
    refused(Ipv4Addr::LOCALHOST, cvnc);
    let ls = env.json(&["ls"]);
    assert_eq!(listed(&ls, "c")["bind"], "127.0.0.2", "{ls}");

    // 0.0.0.0: every address of the host; readiness connects through loopback.
    let all = env.json(&[
        "restore",
        "s",
        "--name",
        "all",
        "--bind",
        "0.0.0.0",
        "--ready-port",
        "8080",
    ]);
    assert_eq!(all[0]["bind"], "0.0.0.0", "{all}");
    let aport = host_port(&all[0], 8080);
    assert_eq!(http_get(Ipv4Addr::LOCALHOST, aport), "hello\n");
    assert_eq!(http_get(ELSEWHERE, aport), "hello\n");

    // Without --bind: 127.0.0.1, as before.
    let near = env.json(&["restore", "s", "--name", "near", "--ready-port", "8080"]);
    assert_eq!(near[0]["bind"], "127.0.0.1", "{near}");
    let nport = host_port(&near[0], 8080);
    assert_eq!(http_get(Ipv4Addr::LOCALHOST, nport), "hello\n");
    refused(ELSEWHERE, nport);
}

/// `thaw up --bind`: the VM it hands over (booted, then restored from the cache)
/// listens on the address asked for.
#[test]
fn up_binds_where_asked() {
    let env = Env::new();
    let first = env.json(&["up", "u1", "--bind", "127.0.0.2", "--port", "0:8080"]);
    assert_eq!(first["path"], "booted", "{first}");
    assert_eq!(first["bind"], "127.0.0.2", "{first}");
    let second = env.json(&["up", "u2", "--bind", "127.0.0.2", "--port", "0:8080"]);
    assert_eq!(second["path"], "restored", "{second}");
    assert_eq!(second["bind"], "127.0.0.2", "{second}");
    let ls = env.json(&["ls"]);
    for name in ["u1", "u2"] {
        let vm = listed(&ls, name);
        assert_eq!(vm["bind"], "127.0.0.2", "{ls}");
        env.sh(
            name,
            "mkdir -p /www && echo up > /www/index.html && httpd -p 8080 -h /www",
        );
        let port = host_port(vm, 8080);
        assert_eq!(http_get(ELSEWHERE, port), "up\n");
        refused(Ipv4Addr::LOCALHOST, port);
    }
}

/// A bind address that is not an IPv4 address, or not one of this host's: one line,
/// exit 1, no VM, no QEMU.
#[test]
fn a_bad_bind_address_is_refused_before_anything_starts() {
    let env = Env::new();
    env.boot("a", &[]);
    env.json(&["snapshot", "a", "s", "--stop"]);
    let cases: [(&[&str], &str); 6] = [
        (&["boot", "b", "--bind", "nonsense"], "not an IPv4 address"),
        (&["boot", "b", "--bind", "::1"], "not an IPv4 address"),
        // TEST-NET-3: no host has it.
        (
            &["boot", "b", "--bind", "203.0.113.7"],
            "not an address of this host",
        ),
        (
            &["restore", "s", "--bind", "300.1.1.1"],
            "not an IPv4 address",
        ),
        (
            &["restore", "s", "--bind", "203.0.113.7"],
            "not an address of this host",
        ),
        (
            &["up", "u", "--bind", "203.0.113.7"],
            "not an address of this host",
        ),
    ];
    for (args, needle) in cases {
        let r = env.run(args);
        r.fails_with(needle);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(env.processes().is_empty(), "{args:?} left a QEMU");
        assert!(
            env.vm_dirs().is_empty(),
            "{args:?} left {:?}",
            env.vm_dirs()
        );
    }
    let json = env.run(&["boot", "b", "--bind", "203.0.113.7", "--json"]);
    assert_eq!(json.code, 1);
    assert!(json.json()["error"]
        .as_str()
        .unwrap()
        .contains("not an address of this host"));
}
