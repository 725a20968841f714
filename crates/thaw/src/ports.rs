//! Free TCP ports on 127.0.0.1: for port forwards, VNC displays and the benchmark's
//! peers. A port picked here is free when picked; whoever binds it next gets it.

/// A free TCP port on 127.0.0.1, as the kernel hands it out.
pub fn free() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Whether `port` on 127.0.0.1 can be bound now.
pub fn is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picked_port_is_free_and_a_bound_one_is_not() {
        let port = free().unwrap();
        assert!(is_free(port));
        let held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(!is_free(port));
        drop(held);
    }
}
