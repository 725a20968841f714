//! `thaw-clock PORT`: the guest side of thaw's clock channel (see the library's docs).
//! Runs in the guest from boot; reads requests from the virtio-serial port `PORT`
//! (e.g. `/dev/virtio-ports/org.thaw.clock.0`), sets the clock, answers.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let Some(port) = std::env::args_os().nth(1) else {
        eprintln!(
            "usage: thaw-clock PORT (the virtio-serial port {})",
            thaw_clock::PORT_NAME
        );
        return ExitCode::from(2);
    };
    loop {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&port)
        {
            Ok(f) => f,
            Err(e) => {
                eprintln!("thaw-clock: cannot open {}: {e}", port.to_string_lossy());
                return ExitCode::FAILURE;
            }
        };
        let mut writer = match file.try_clone() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("thaw-clock: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut reader = BufReader::new(file);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                // The host side is not connected (a virtio port then reads as end of
                // file): wait and open it again.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("thaw-clock: read: {e}");
                    break;
                }
            }
            if let Some(a) = thaw_clock::answer(&line, thaw_clock::set_clock) {
                if let Err(e) = writer.write_all(a.line().as_bytes()) {
                    eprintln!("thaw-clock: write: {e}");
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
