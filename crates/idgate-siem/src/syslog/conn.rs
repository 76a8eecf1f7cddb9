//! One connection to a collector: TCP, then TLS through the workspace's outbound client
//! builder (the collector's roots, an optional client certificate, no ALPN), with blocking
//! writes bounded by a timeout. Plain TCP only when the configuration says
//! `insecure_plaintext = true`.
//!
//! The TLS files are read again at each connection, so a renewed client certificate or CA
//! is used from the next connection on without a restart.
//!
//! The socket is set up for the replay window (`super::Replay`): its send buffer is capped
//! so that what the collector's kernel has not acknowledged always fits in the window,
//! keepalive and a TCP user timeout end a connection whose collector vanished, and the
//! bytes written are counted so that, when the connection ends, what the kernel still had
//! unacknowledged can be told from what the collector's host had taken
//! ([`Conn::unacknowledged`]).

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate_config::{SyslogSinkConfig, SyslogTls};
use idgate_tls::client::OutboundClient;
use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use crate::StartProblem;

/// Why a connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    #[error("TLS settings: {0}")]
    Setup(#[from] StartProblem),
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    /// Typical of a collector that refuses the client certificate after a TLS 1.3
    /// handshake, or the gateway's name (rsyslog's `PermittedPeer`), or of a load balancer
    /// without a backend.
    #[error("the collector closed the connection right after it was opened")]
    ClosedAtOnce,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The TLS client configuration of one sink, built from its files.
pub(crate) fn tls_config(
    tls: &SyslogTls,
    key: &str,
) -> Result<Arc<rustls::ClientConfig>, crate::StartError> {
    let at = |k: &'static str| {
        move |p: StartProblem| crate::StartError {
            key: format!("{key}.{k}"),
            problem: p,
        }
    };
    let roots = collector_roots(tls.ca.as_deref()).map_err(|e| at("ca")(e.into()))?;
    // Connect and write timeouts are the socket's; this one is never used.
    let mut client = OutboundClient::new(roots, Duration::from_secs(5)).no_alpn();
    if let Some((cert, key_file)) = &tls.client_cert {
        let certified = client_certificate(cert, key_file).map_err(|p| {
            // The error names the file at fault; so does the key path.
            let about_key = match &p {
                StartProblem::ClientKey(_) => true,
                StartProblem::ClientCert(
                    idgate_tls::MaterialError::Read { path, .. }
                    | idgate_tls::MaterialError::Invalid { path, .. },
                ) => path == key_file,
                _ => false,
            };
            at(if about_key {
                "client_key"
            } else {
                "client_cert"
            })(p)
        })?;
        client = client.client_certificate(Arc::new(certified));
    }
    let config = client.tls_config().map_err(|e| at("ca")(e.into()))?;
    Ok(Arc::new(config))
}

/// The trust anchors for the collector's certificate: with `ca`, that file's certificates
/// and nothing else (the channel carries the audit trail's plaintext, so a certificate that
/// some public CA of the platform issued for the collector's name must not do); without it,
/// the platform's roots. Blocking.
pub(crate) fn collector_roots(
    ca: Option<&Path>,
) -> Result<rustls::RootCertStore, idgate_tls::roots::CaFileError> {
    use idgate_tls::roots::CaFileError;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let Some(path) = ca else {
        return Ok(idgate_tls::roots::platform_roots().clone());
    };
    let mut store = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).map_err(|source| CaFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    for cert in certs {
        let cert = cert.map_err(|source| CaFileError::BadPem {
            path: path.to_owned(),
            source,
        })?;
        store.add(cert).map_err(|source| CaFileError::Unusable {
            path: path.to_owned(),
            source,
        })?;
    }
    if store.is_empty() {
        return Err(CaFileError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(store)
}

fn client_certificate(cert: &Path, key: &Path) -> Result<rustls::sign::CertifiedKey, StartProblem> {
    use idgate_secrets::ExposeSecret as _;
    let cert_pem = std::fs::read(cert).map_err(|source| idgate_tls::MaterialError::Read {
        path: cert.to_owned(),
        source,
    })?;
    // The key is a secret: read as a `file:` secret is (a regular file of mode 0600 or
    // stricter, owned by the gateway's user or root, checked on the handle it is read from),
    // so that another local user can neither read it nor put another in its place.
    let key_pem = idgate_secrets::SecretRef::File(key.to_owned())
        .resolve()
        .map_err(StartProblem::ClientKey)?;
    Ok(idgate_tls::material::parse_svid(
        cert,
        &cert_pem,
        key,
        key_pem.expose_secret().as_bytes(),
        &idgate_tls::crypto_provider(),
    )?)
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<ClientConnection>, TcpStream),
}

pub(crate) struct Conn {
    transport: Transport,
    /// Bytes handed to the socket since the handshake.
    written: u64,
}

/// How long a new connection is watched for the collector's verdict before the first
/// write: a TLS 1.3 collector judges the client certificate after the client's side of the
/// handshake is done, and rsyslog checks the peer's name after it; either closes at once.
const SETTLE: Duration = Duration::from_millis(500);

/// Keepalive on an idle connection: first probe after this long, then every
/// `KEEPALIVE_INTERVAL`, `KEEPALIVE_PROBES` unanswered probes ending it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 3;
/// Data the collector's host has not acknowledged for this long ends the connection (and
/// the keepalive's wait too), so a collector that vanished is noticed within a minute.
const USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The socket's send buffer: a quarter of the replay window (Linux doubles the value set,
/// and may go one segment past it), so that everything the collector's host has not
/// acknowledged is in the window.
fn send_buffer(replay_bytes: usize) -> Option<usize> {
    (replay_bytes > 0).then_some(replay_bytes / 4)
}

/// Sets the socket up for the sink: no Nagle, a write timeout, keepalive, a user timeout,
/// and a send buffer no larger than the replay window can cover.
fn tune(tcp: &TcpStream, cfg: &SyslogSinkConfig) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.set_write_timeout(Some(cfg.write_timeout))?;
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    if let Some(size) = send_buffer(cfg.replay_bytes) {
        sock.set_send_buffer_size(size)?;
    }
    Ok(())
}

impl Conn {
    /// Resolves the collector, connects (each address in turn) and, unless plaintext was
    /// asked for, completes the TLS handshake: a collector whose certificate does not
    /// verify is an error here, before anything is sent.
    pub(crate) fn open(
        cfg: &SyslogSinkConfig,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ConnError> {
        let addrs: Vec<_> = (cfg.host.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|source| ConnError::Resolve {
                host: cfg.host.clone(),
                source,
            })?
            .collect();
        let mut last = None;
        let mut tcp = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, cfg.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(mut tcp) = tcp else {
            return Err(match last {
                Some(e) => ConnError::Connect(e),
                None => ConnError::NoAddress {
                    host: cfg.host.clone(),
                },
            });
        };
        tune(&tcp, cfg)?;
        let transport = match (tls, &cfg.tls) {
            (Some(config), Some(t)) => {
                let name = ServerName::try_from(t.server_name.clone())
                    .map_err(|e| ConnError::Handshake(io::Error::other(e)))?;
                let mut conn = ClientConnection::new(config.clone(), name)
                    .map_err(|e| ConnError::Handshake(io::Error::other(e)))?;
                tcp.set_read_timeout(Some(cfg.connect_timeout))?;
                while conn.is_handshaking() {
                    conn.complete_io(&mut tcp).map_err(ConnError::Handshake)?;
                }
                // After the handshake nothing is read while blocking: see `peer_closed`.
                tcp.set_read_timeout(None)?;
                Transport::Tls(Box::new(conn), tcp)
            }
            _ => Transport::Plain(tcp),
        };
        let mut conn = Self {
            transport,
            written: 0,
        };
        conn.settle(SETTLE.min(cfg.connect_timeout))?;
        Ok(conn)
    }

    /// Waits up to `wait` for the collector to refuse the connection it just accepted; a
    /// TLS 1.3 collector that accepts sends its session tickets at once, which ends the wait.
    fn settle(&mut self, wait: Duration) -> Result<(), ConnError> {
        let end = Instant::now() + wait;
        let verdict = loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Ok(());
            }
            let tcp = match &self.transport {
                Transport::Plain(t) | Transport::Tls(_, t) => t,
            };
            tcp.set_read_timeout(Some(left))?;
            let read = match &mut self.transport {
                Transport::Plain(tcp) => tcp.read(&mut [0u8; 512]).map(|n| (n, false)),
                Transport::Tls(conn, tcp) => conn.read_tls(tcp).and_then(|n| {
                    if n == 0 {
                        return Ok((0, false));
                    }
                    let state = conn
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::ConnectionAborted, e))?;
                    let mut scratch = vec![0u8; state.plaintext_bytes_to_read()];
                    let _ = conn.reader().read(&mut scratch);
                    Ok((n, state.peer_has_closed()))
                }),
            };
            match read {
                Ok((0, _)) | Ok((_, true)) => break Err(ConnError::ClosedAtOnce),
                // Something that is not a close: the collector took the connection.
                Ok(_) => break Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {
                    break Err(ConnError::Handshake(e));
                }
                Err(_) => break Err(ConnError::ClosedAtOnce),
            }
        };
        let tcp = match &self.transport {
            Transport::Plain(t) | Transport::Tls(_, t) => t,
        };
        // After this nothing is read while blocking: see `peer_closed`.
        tcp.set_read_timeout(None)?;
        verdict
    }

    /// Bytes handed to the socket since the handshake.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// How many of the bytes handed to the socket its kernel still holds, not acknowledged
    /// by the collector's host (Linux's `SIOCOUTQ`, read from the kernel's socket table):
    /// `None` when it cannot be known, such as after the connection was reset (its socket
    /// is then out of the table).
    pub(crate) fn unacknowledged(&self) -> Option<u64> {
        let tcp = match &self.transport {
            Transport::Plain(t) | Transport::Tls(_, t) => t,
        };
        unacknowledged(tcp)
    }

    /// Writes `bytes` whole: returns only when all of it reached the socket, or with the
    /// error that makes this connection unusable (a timeout included).
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        match &mut self.transport {
            Transport::Plain(tcp) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    match tcp.write(rest) {
                        Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                        Ok(n) => {
                            self.written += n as u64;
                            rest = &rest[n..];
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Transport::Tls(conn, tcp) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    // rustls takes as much as its outgoing buffer allows; it is emptied
                    // into the socket before more is given.
                    let n = conn.writer().write(rest)?;
                    rest = &rest[n..];
                    while conn.wants_write() {
                        self.written += conn.write_tls(tcp)? as u64;
                    }
                    if n == 0 && !conn.wants_write() {
                        return Err(ConnError::Io(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "TLS connection takes no more data",
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether the collector closed the connection or broke it. A collector never sends
    /// application data (RFC 5425), so anything readable is a close, an alert or a TLS 1.3
    /// ticket, read here without waiting. Checked before each batch, so that a collector
    /// that went away is noticed before more frames are given to a dead socket.
    pub(crate) fn peer_closed(&mut self) -> bool {
        let tcp = match &self.transport {
            Transport::Plain(t) | Transport::Tls(_, t) => t,
        };
        if tcp.set_nonblocking(true).is_err() {
            return true;
        }
        let closed = match &mut self.transport {
            Transport::Plain(tcp) => {
                let mut scratch = [0u8; 512];
                loop {
                    match tcp.read(&mut scratch) {
                        Ok(0) => break true,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break true,
                    }
                }
            }
            Transport::Tls(conn, tcp) => loop {
                match conn.read_tls(tcp) {
                    Ok(0) => break true,
                    Ok(_) => match conn.process_new_packets() {
                        Err(_) => break true,
                        Ok(state) if state.peer_has_closed() => break true,
                        Ok(state) => {
                            let mut scratch = vec![0u8; state.plaintext_bytes_to_read()];
                            let _ = conn.reader().read(&mut scratch);
                        }
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            },
        };
        let tcp = match &self.transport {
            Transport::Plain(t) | Transport::Tls(_, t) => t,
        };
        closed || tcp.set_nonblocking(false).is_err()
    }

    /// Ends the connection cleanly (TLS close_notify), without waiting long for it.
    pub(crate) fn close(mut self) {
        if let Transport::Tls(conn, tcp) = &mut self.transport {
            conn.send_close_notify();
            let _ = tcp.set_write_timeout(Some(Duration::from_millis(200)));
            while conn.wants_write() {
                if conn.write_tls(tcp).is_err() {
                    break;
                }
            }
        }
    }
}

/// The send queue of `tcp` (bytes not yet acknowledged by the peer's host, sent or not),
/// as the kernel's socket table (`/proc/self/net/tcp`, `tcp6`) shows it: the `tx_queue` of
/// the row whose inode is the socket's. That is the value of the `SIOCOUTQ` ioctl, read
/// without `unsafe`. Read once per lost connection; `None` when the socket is not there.
fn unacknowledged(tcp: &TcpStream) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", tcp.as_raw_fd())).ok()?;
    let inode = link
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .to_owned();
    let tables: &[&str] = match tcp.local_addr() {
        Ok(a) if a.is_ipv4() => &["/proc/self/net/tcp"],
        Ok(_) => &["/proc/self/net/tcp6"],
        Err(_) => &["/proc/self/net/tcp", "/proc/self/net/tcp6"],
    };
    tables.iter().find_map(|table| {
        send_queue_in(io::BufReader::new(std::fs::File::open(table).ok()?), &inode)
    })
}

/// The `tx_queue` of the row of a `/proc/net/tcp` table whose inode is `inode`:
/// `sl local rem st tx_queue:rx_queue tr:when retrnsmt uid timeout inode …`.
fn send_queue_in(table: impl BufRead, inode: &str) -> Option<u64> {
    table.lines().skip(1).map_while(Result::ok).find_map(|row| {
        let fields: Vec<&str> = row.split_whitespace().collect();
        if fields.get(9) != Some(&inode) {
            return None;
        }
        let (tx, _rx) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(tx, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(port: u16, replay_bytes: usize) -> SyslogSinkConfig {
        SyslogSinkConfig {
            host: "127.0.0.1".to_owned(),
            port,
            tls: None,
            facility: idgate_config::Facility::from_name("local0").unwrap(),
            severity: idgate_config::Severity::from_name("info").unwrap(),
            msgid: "audit".to_owned(),
            hostname: Some("gw-test".to_owned()),
            sd_id: None,
            utf8_bom: false,
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(200),
            replay_bytes,
        }
    }

    #[test]
    fn a_syslog_connection_caps_its_send_buffer_to_the_replay_window_and_keeps_alive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conn = Conn::open(&config(port, 256 * 1024), None).unwrap();
        let _peer = listener.accept().unwrap();
        let Transport::Plain(tcp) = &conn.transport else {
            panic!("plain TCP was asked for")
        };
        let sock = socket2::SockRef::from(tcp);
        // Linux doubles the 64 KiB asked for: the kernel queues at most half the window.
        assert_eq!(sock.send_buffer_size().unwrap(), 128 * 1024);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }

    #[test]
    fn the_send_queue_is_read_from_the_kernels_socket_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n   \
            1: 0100007F:D2F0 0100007F:18EB 08 00001A2B:00000000 00:00000000 00000000     0        0 2222 1 0 20 4 30 10 -1\n";
        assert_eq!(send_queue_in(table.as_bytes(), "2222"), Some(0x1a2b));
        assert_eq!(send_queue_in(table.as_bytes(), "1111"), Some(0));
        assert_eq!(send_queue_in(table.as_bytes(), "3333"), None);
    }

    #[test]
    fn a_live_connections_send_queue_is_known() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut conn = Conn::open(&config(port, 1 << 20), None).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        conn.write_all(b"12 hello world").unwrap();
        let mut got = [0u8; 14];
        peer.read_exact(&mut got).unwrap();
        // Read by the peer, so acknowledged by its host (soon after: ACKs may be delayed).
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.unacknowledged() != Some(0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(conn.unacknowledged(), Some(0));
        assert_eq!(conn.written(), 14);
    }
}
