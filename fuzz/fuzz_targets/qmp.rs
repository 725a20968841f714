//! QMP parsing: the greeting (first line) and every line after it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    if let Some(first) = lines.next() {
        let _ = thaw_qmp::parse_greeting(first);
    }
    for line in lines {
        let _ = thaw_qmp::parse_message(line);
    }
});
