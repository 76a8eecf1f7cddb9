//! What a connection established, shared by all its requests: the peer's SPIFFE ID, its
//! client's address (and the load balancer's it came through), whether it is a trusted
//! proxy, its certificate's thumbprint, and the flag by which a request asks the connection
//! to linger on close.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::HeaderValue;
use idgate_tls::SpiffeId;

/// What the connection established, shared by all its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: Option<SpiffeId>,
    /// The client's address: the peer's, or the one its load balancer named in a PROXY
    /// protocol header. Rules, limits, forwarding headers and logs all use this one.
    pub remote: SocketAddr,
    /// The load balancer the connection came through, when it sent a PROXY header.
    pub via: Option<SocketAddr>,
    /// The client's IP as a header value, made once per connection for `x-forwarded-for`.
    pub remote_ip: HeaderValue,
    /// Whether the peer is one of `listener.trusted_proxies`, whose forwarding headers are
    /// passed on.
    pub trusted_proxy: bool,
    /// RFC 8705 thumbprint of the client certificate (`x5t#S256`), for bound tokens.
    pub cert_thumbprint: Option<String>,
    /// Asked for when an HTTP/1.1 answer leaves the caller still sending.
    pub(crate) linger_on_close: LingerOnClose,
}

/// Set when an answer goes out on an HTTP/1.1 connection that is to close while its caller
/// may still be sending the request body (see `lingering_close.rs`).
#[derive(Debug, Default)]
pub(crate) struct LingerOnClose(AtomicBool);

impl LingerOnClose {
    pub(crate) fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub(crate) fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one source is, for `max_connections_per_ip`, `source_ip` rate limits and lockouts:
/// an IPv4 address, or an IPv6 /64 (the smallest network one host is given, whose addresses
/// it can use at will).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}
