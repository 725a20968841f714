//! The mapped-ram header parser. The input is repeated to fill a 64 GiB file, so that
//! block headers at 1 MiB boundaries and beyond are read from it too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let file_len = 64u64 << 30;
    let mut read = |buf: &mut [u8], at: u64| {
        if at >= file_len {
            return Ok(0);
        }
        let n = buf.len().min((file_len - at) as usize);
        let mut done = 0;
        while done < n {
            let from = ((at + done as u64) % data.len() as u64) as usize;
            let k = (n - done).min(data.len() - from);
            buf[done..done + k].copy_from_slice(&data[from..from + k]);
            done += k;
        }
        Ok(n)
    };
    let _ = thaw::mapped::blocks_with(file_len, &mut read);
    let _ = thaw::mapped::blocks_in(data);
});
