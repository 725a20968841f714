//! The daemon's request bodies, decoded and checked as the handlers do: byte 0 picks
//! the endpoint, byte 1 the content type, the rest is the body. A refusal is a 4xx
//! with a one-line message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let content_type: Option<&[u8]> = match data[1] % 5 {
        0 => None,
        1 => Some(b"application/json"),
        2 => Some(b"application/json; charset=utf-8"),
        3 => Some(b"text/plain"),
        _ => Some(&data[2..data.len().min(10)]),
    };
    if let Err((status, msg)) = thaw_daemon::check_request_body(data[0], content_type, &data[2..]) {
        assert!((400..500).contains(&status), "{status}: {msg}");
        assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
    }
});
