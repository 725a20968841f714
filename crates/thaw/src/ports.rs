//! Host addresses and free TCP ports: for port forwards, VNC displays and the
//! benchmark's peers. A VM's forwards and display listen on one address of this host,
//! its bind address ([`DEFAULT_BIND`], 127.0.0.1, unless `--bind` says otherwise). A
//! port picked here is free when picked; whoever binds it next gets it.

use std::net::Ipv4Addr;

/// Where forwards and displays listen unless told otherwise: only this host reaches them.
pub const DEFAULT_BIND: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// [`DEFAULT_BIND`], for serde's `default`.
pub fn default_bind() -> Ipv4Addr {
    DEFAULT_BIND
}

/// A bind address that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "bind address {0:?} is not an IPv4 address (e.g. 127.0.0.1, 0.0.0.0 or one of this host's)"
    )]
    Syntax(String),
    #[error("cannot bind to {addr}: it is not an address of this host ({source})")]
    NotLocal {
        addr: Ipv4Addr,
        #[source]
        source: std::io::Error,
    },
}

/// Parses a bind address as given on the command line or in a request body.
pub fn parse_bind(s: &str) -> Result<Ipv4Addr, BindError> {
    s.trim()
        .parse()
        .map_err(|_| BindError::Syntax(s.to_owned()))
}

/// Checks that `addr` is an address of this host by binding a port on it.
pub fn check_bind(addr: Ipv4Addr) -> Result<(), BindError> {
    std::net::TcpListener::bind((addr, 0))
        .map(drop)
        .map_err(|source| BindError::NotLocal { addr, source })
}

/// The address this host connects to, to reach what listens on `bind`: the bind
/// address itself, or loopback for the wildcard address.
pub fn reach(bind: Ipv4Addr) -> Ipv4Addr {
    if bind.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        bind
    }
}

/// A free TCP port on [`DEFAULT_BIND`], as the kernel hands it out.
pub fn free() -> std::io::Result<u16> {
    free_on(DEFAULT_BIND)
}

/// A free TCP port on `bind`, as the kernel hands it out.
pub fn free_on(bind: Ipv4Addr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((bind, 0))?.local_addr()?.port())
}

/// Whether `port` on `bind` can be bound now.
pub fn is_free_on(bind: Ipv4Addr, port: u16) -> bool {
    std::net::TcpListener::bind((bind, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picked_port_is_free_and_a_bound_one_is_not() {
        let port = free().unwrap();
        assert!(is_free_on(DEFAULT_BIND, port));
        let held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert!(!is_free_on(DEFAULT_BIND, port));
        drop(held);
    }

    #[test]
    fn bind_addresses_are_checked() {
        assert_eq!(parse_bind("0.0.0.0").unwrap(), Ipv4Addr::UNSPECIFIED);
        assert!(matches!(parse_bind("localhost"), Err(BindError::Syntax(_))));
        assert!(matches!(parse_bind("::1"), Err(BindError::Syntax(_))));
        check_bind(Ipv4Addr::LOCALHOST).unwrap();
        check_bind(Ipv4Addr::UNSPECIFIED).unwrap();
        // TEST-NET-3: no host has it.
        let e = check_bind(Ipv4Addr::new(203, 0, 113, 7)).unwrap_err();
        assert!(e.to_string().contains("not an address of this host"), "{e}");
        assert_eq!(reach(Ipv4Addr::UNSPECIFIED), Ipv4Addr::LOCALHOST);
        assert_eq!(
            reach(Ipv4Addr::new(127, 0, 0, 2)),
            Ipv4Addr::new(127, 0, 0, 2)
        );
    }
}
