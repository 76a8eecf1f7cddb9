//! `[listener]`: where and how the gateway accepts connections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use idgate_tls::TlsVersion;

use crate::context::Ctx;
use crate::{ConfigErrors, TrustedProxies, raw};

/// Whether the listener demands a client certificate during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub tls_min_version: TlsVersion,
    pub client_auth: ClientAuth,
    pub handshake_timeout: Duration,
    /// HTTP/1.1: a keep-alive connection with no request for this long is closed.
    /// HTTP/2: the interval of keep-alive pings (a peer that does not answer is dropped).
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
    /// A connection older than this is closed once its in-flight requests end (HTTP/1.1)
    /// or told to go away (HTTP/2); `None`: only the client certificate's expiry ends it.
    pub max_connection_age: Option<Duration>,
    pub max_header_bytes: usize,
    /// A response the caller stops reading: when writing to it makes no progress for this
    /// long, the HTTP/1.1 connection is closed or the HTTP/2 stream reset.
    pub send_timeout: Duration,
    /// Proxies whose `x-forwarded-for` (and other forwarding headers) are passed on; from
    /// any other peer they are replaced by the peer's own address.
    pub trusted_proxies: TrustedProxies,
    /// Load balancers that announce their client with a PROXY protocol header.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// Open connections of one SPIFFE ID, counted after the handshake.
    pub max_connections_per_identity: usize,
    /// Header fields of one request (HTTP/1.1 and HTTP/2): more are answered 431.
    pub max_header_count: usize,
    /// From an HTTP/1.1 connection's first bytes to its first complete request head.
    pub header_timeout: Duration,
    /// The longest wait for the next piece of a request body being forwarded.
    pub body_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Connections in their TLS handshake at once: a connection holds a place from its
    /// admission until its handshake ends, so that peers that never finish theirs cannot
    /// take every connection.
    pub max_handshakes: usize,
    /// Connections in their TLS handshake at once from one client address.
    pub max_handshakes_per_ip: usize,
    /// `max_handshakes` and `max_handshakes_per_ip` as the file writes them (`None`: a share
    /// of the connection caps), so that a reload can size them against the caps the process
    /// runs with (see [`ListenerConfig::with_caps_of`]).
    handshakes_written: (Option<u32>, Option<u32>),
}

impl ListenerConfig {
    /// This listener as a process that started with `running` puts it into use: the socket
    /// and the connection caps (`max_connections`, `max_connections_per_ip`,
    /// `max_connections_per_identity`) are sized once, at start, and stay as `running` has
    /// them; the handshake caps, a share of them, are sized again against those. A
    /// `max_handshakes` above the running `max_connections` is refused (`file` is where it
    /// is written): it would let stalled handshakes take every connection.
    pub fn with_caps_of(
        mut self,
        running: &ListenerConfig,
        file: &Path,
    ) -> Result<Self, ConfigErrors> {
        self.bind = running.bind;
        self.max_connections = running.max_connections;
        self.max_connections_per_ip = running.max_connections_per_ip;
        self.max_connections_per_identity = running.max_connections_per_identity;
        let mut cx = Ctx {
            file,
            base: file.parent().unwrap_or(Path::new("")),
            errors: Vec::new(),
            check_secrets: false,
        };
        (self.max_handshakes, self.max_handshakes_per_ip) = handshake_caps(
            &mut cx,
            self.handshakes_written,
            (self.max_connections, self.max_connections_per_ip),
            true,
        );
        if cx.errors.is_empty() {
            Ok(self)
        } else {
            Err(ConfigErrors(cx.errors))
        }
    }
}

/// `listener.proxy_protocol`: connections from `from` must start with a PROXY protocol
/// header (v1 or v2), read within `timeout`; from any other address none is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    pub from: Vec<ipnet::IpNet>,
    pub timeout: Duration,
}

impl ProxyProtocolConfig {
    /// Whether a connection from `ip` comes through a configured load balancer.
    pub fn from_balancer(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.from.iter().any(|n| n.contains(&ip))
    }
}

/// The largest `listener.max_header_bytes` accepted.
const MAX_HEADER_BYTES: usize = 256 * 1024;

/// The count `listener.NAME` sets (`default` when it is not set): more than zero and at most
/// the `listener.CAP` it is a share of; a count out of bounds is refused and the nearest
/// bound stands in for it.
fn count_within(
    cx: &mut Ctx<'_>,
    (name, value): (&str, Option<u32>),
    default: usize,
    (cap_name, cap): (&str, usize),
) -> usize {
    match value {
        None => default,
        Some(0) => {
            cx.err(format!("listener.{name}"), "must be more than zero");
            1
        }
        Some(n) if n as usize > cap => {
            cx.err(
                format!("listener.{name}"),
                format!("must not be more than listener.{cap_name}"),
            );
            cap
        }
        Some(n) => n as usize,
    }
}

/// `max_handshakes` and `max_handshakes_per_ip`, as `written` or by default a share of
/// `max_connections` and `max_connections_per_ip`; `running`: those are the caps the process
/// started with, not the file's, and a refusal says so.
fn handshake_caps(
    cx: &mut Ctx<'_>,
    (all, per_ip): (Option<u32>, Option<u32>),
    (max_connections, max_connections_per_ip): (usize, usize),
    running: bool,
) -> (usize, usize) {
    let cap_name = if running {
        format!(
            "max_connections the process runs with ({max_connections}; a new value takes effect at restart)"
        )
    } else {
        "max_connections".to_owned()
    };
    // A legitimate handshake takes milliseconds: these places are held by peers that are
    // slow, or that mean to be. Small configurations keep a place for every connection.
    let max_handshakes = count_within(
        cx,
        ("max_handshakes", all),
        (max_connections / 4).max(64.min(max_connections)),
        (&cap_name, max_connections),
    );
    let cap_name = if running && all.is_none() {
        format!(
            "max_handshakes ({max_handshakes}, a share of the max_connections the process runs with)"
        )
    } else {
        "max_handshakes".to_owned()
    };
    let max_handshakes_per_ip = count_within(
        cx,
        ("max_handshakes_per_ip", per_ip),
        // A client host warming up its connection pool opens many at once.
        (max_connections_per_ip / 4)
            .max(64.min(max_connections_per_ip))
            .min(max_handshakes),
        (&cap_name, max_handshakes),
    );
    (max_handshakes, max_handshakes_per_ip)
}

pub(crate) fn parse(cx: &mut Ctx<'_>, l: raw::Listener) -> ListenerConfig {
    let bind = cx.socket_addr("listener.bind", &l.bind);
    let tls_min_version = match l.tls_min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            cx.err(
                "listener.tls_min_version",
                format!("\"{other}\" is not allowed: use \"1.2\" or \"1.3\" (older versions are insecure)"),
            );
            TlsVersion::Tls12
        }
    };
    let client_auth = match l.client_auth.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => {
            cx.err(
                "listener.client_auth",
                format!("\"{other}\" is not allowed: use \"required\" or \"optional\""),
            );
            ClientAuth::Required
        }
    };
    let max_connections = match l.max_connections {
        None => 10_000,
        Some(0) => {
            cx.err("listener.max_connections", "must be more than zero");
            1
        }
        Some(n) => n as usize,
    };
    let max_connections_per_ip = count_within(
        cx,
        ("max_connections_per_ip", l.max_connections_per_ip),
        512.min(max_connections),
        ("max_connections", max_connections),
    );
    let max_connection_age = l.max_connection_age.map(|v| {
        cx.duration(
            "listener.max_connection_age",
            Some(v),
            Duration::from_secs(3600),
        )
    });
    let max_header_bytes = match l.max_header_bytes {
        None => 64 * 1024,
        Some(n) if n < 1024 => {
            cx.err("listener.max_header_bytes", "must be at least 1024");
            1024
        }
        // No client needs more, and what a request carries (its method, its identities)
        // reaches logs and the audit trail: a bound keeps a hostile head from swelling them.
        Some(n) if n as usize > MAX_HEADER_BYTES => {
            cx.err(
                "listener.max_header_bytes",
                format!(
                    "must be at most {MAX_HEADER_BYTES} (256 KiB, four times the default): the gateway holds a request's whole header block in memory"
                ),
            );
            MAX_HEADER_BYTES
        }
        Some(n) => n as usize,
    };
    let mut trusted = Vec::new();
    for (n, entry) in l.trusted_proxies.iter().enumerate() {
        match TrustedProxies::parse_entry(entry) {
            Ok(net) => trusted.push(net),
            Err(e) => cx.err(format!("listener.trusted_proxies[{n}]"), e.to_string()),
        }
    }
    let proxy_protocol = l.proxy_protocol.map(|p| {
        let from = crate::network::believed_peers(cx, "listener.proxy_protocol.from", &p.from);
        if from.is_empty() {
            cx.err(
                "listener.proxy_protocol.from",
                "list the load balancers' addresses: no other peer may send a PROXY header",
            );
        }
        ProxyProtocolConfig {
            from,
            timeout: cx.duration(
                "listener.proxy_protocol.timeout",
                p.timeout,
                Duration::from_secs(5),
            ),
        }
    });
    let max_connections_per_identity = count_within(
        cx,
        (
            "max_connections_per_identity",
            l.max_connections_per_identity,
        ),
        256.min(max_connections),
        ("max_connections", max_connections),
    );
    let max_header_count = match l.max_header_count {
        None => 100,
        Some(n @ 1..=10_000) => n as usize,
        Some(_) => {
            cx.err("listener.max_header_count", "must be between 1 and 10000");
            100
        }
    };
    let max_concurrent_streams = match l.max_concurrent_streams {
        None => 100,
        Some(n @ 1..=10_000) => n,
        Some(_) => {
            cx.err(
                "listener.max_concurrent_streams",
                "must be between 1 and 10000",
            );
            100
        }
    };
    let handshakes_written = (l.max_handshakes, l.max_handshakes_per_ip);
    let (max_handshakes, max_handshakes_per_ip) = handshake_caps(
        cx,
        handshakes_written,
        (max_connections, max_connections_per_ip),
        false,
    );
    ListenerConfig {
        max_handshakes,
        max_handshakes_per_ip,
        handshakes_written,
        proxy_protocol,
        max_connections_per_identity,
        max_header_count,
        max_concurrent_streams,
        header_timeout: cx.duration(
            "listener.header_timeout",
            l.header_timeout,
            Duration::from_secs(10),
        ),
        body_timeout: cx.duration(
            "listener.body_timeout",
            l.body_timeout,
            Duration::from_secs(30),
        ),
        bind,
        tls_min_version,
        client_auth,
        handshake_timeout: cx.duration(
            "listener.handshake_timeout",
            l.handshake_timeout,
            Duration::from_secs(10),
        ),
        idle_timeout: cx.duration(
            "listener.idle_timeout",
            l.idle_timeout,
            Duration::from_secs(60),
        ),
        max_connections,
        max_connections_per_ip,
        max_connection_age,
        max_header_bytes,
        send_timeout: cx.duration(
            "listener.send_timeout",
            l.send_timeout,
            Duration::from_secs(30),
        ),
        trusted_proxies: TrustedProxies::new(trusted),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::test_support::BASE;

    /// `[listener]` with `keys` besides its address, or its problems as `key: reason`.
    fn listener(keys: &str) -> Result<super::ListenerConfig, Vec<String>> {
        let raw: crate::raw::Listener =
            toml::from_str(&format!("bind = \"127.0.0.1:8443\"\n{keys}")).unwrap();
        let mut cx = crate::context::Ctx {
            file: Path::new("idgate.toml"),
            base: Path::new("/etc/idgate"),
            errors: Vec::new(),
            check_secrets: false,
        };
        let l = super::parse(&mut cx, raw);
        cx.finish(l)
    }

    #[test]
    fn handshake_caps_default_to_a_share_of_the_connections_and_are_checked() {
        let l = listener("").unwrap();
        assert_eq!((l.max_handshakes, l.max_handshakes_per_ip), (2500, 128));
        let l = listener("max_connections_per_ip = 100").unwrap();
        assert_eq!((l.max_handshakes, l.max_handshakes_per_ip), (2500, 64));
        let l = listener("max_connections = 100").unwrap();
        assert_eq!((l.max_handshakes, l.max_handshakes_per_ip), (64, 64));
        let l = listener("max_connections = 2").unwrap();
        assert_eq!((l.max_handshakes, l.max_handshakes_per_ip), (2, 2));
        let l = listener("max_handshakes = 10").unwrap();
        assert_eq!((l.max_handshakes, l.max_handshakes_per_ip), (10, 10));
        assert_eq!(
            listener("max_handshakes = 0\nmax_handshakes_per_ip = 0").unwrap_err(),
            [
                "listener.max_handshakes: must be more than zero",
                "listener.max_handshakes_per_ip: must be more than zero",
            ]
        );
        assert_eq!(
            listener("max_connections = 10\nmax_handshakes = 11").unwrap_err(),
            ["listener.max_handshakes: must not be more than listener.max_connections"]
        );
        assert_eq!(
            listener("max_handshakes = 8\nmax_handshakes_per_ip = 9").unwrap_err(),
            ["listener.max_handshakes_per_ip: must not be more than listener.max_handshakes"]
        );
    }

    #[test]
    fn max_header_bytes_is_refused_past_its_upper_bound() {
        let file = Path::new("/etc/idgate/idgate.toml");
        let problems = |n: u32| {
            let text = BASE.replace("[identity]", &format!("max_header_bytes = {n}\n[identity]"));
            // The base file has problems of its own (its SVID files are not there).
            match crate::parse(file, &text) {
                Ok(_) => Vec::new(),
                Err(e) => {
                    e.0.into_iter()
                        .filter(|e| e.key.starts_with("listener."))
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                }
            }
        };
        assert_eq!(problems(262_144), Vec::<String>::new());
        assert_eq!(
            problems(300_000),
            [
                "/etc/idgate/idgate.toml: listener.max_header_bytes: must be at most 262144 (256 KiB, four times the default): the gateway holds a request's whole header block in memory"
            ]
        );
    }

    #[test]
    fn a_listener_on_the_admin_listener_s_address_is_refused() {
        let base = |listener: &str, admin: &str| {
            format!(
                "[listener]\nbind = \"{listener}\"\n{admin}[identity]\nsvid_cert = \"c\"\nsvid_key = \"k\"\n"
            )
        };
        let file = Path::new("/etc/idgate/idgate.toml");
        let overlap = |all: &[String]| {
            all.iter()
                .any(|p| p.starts_with("listener.bind: ") && p.contains("overlaps admin.bind"))
        };
        for (listener, admin) in [
            ("127.0.0.1:9901", ""),
            ("0.0.0.0:9901", ""),
            ("10.0.0.1:9443", "[admin]\nbind = \"0.0.0.0:9443\"\n"),
        ] {
            let all = crate::test_support::problems(file, &base(listener, admin), |_| true);
            assert!(overlap(&all), "{listener} {admin}: {all:#?}");
        }
        for (listener, admin) in [
            ("127.0.0.1:8443", ""),
            ("10.0.0.1:9901", ""),
            ("127.0.0.1:0", "[admin]\nbind = \"127.0.0.1:0\"\n"),
        ] {
            let all = crate::test_support::problems(file, &base(listener, admin), |_| true);
            assert!(!overlap(&all), "{listener} {admin}: {all:#?}");
        }
    }
}
