//! One connection to a collector: TCP, then TLS through the workspace's outbound client
//! builder (the collector's roots, an optional client certificate, no ALPN), with blocking
//! writes bounded by a timeout. Plain TCP only when the configuration says
//! `insecure_plaintext = true`.
//!
//! The TLS files are read again at each connection, so a renewed client certificate or CA
//! is used from the next connection on without a restart.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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
    let roots =
        idgate_tls::roots::roots_with_ca(tls.ca.as_deref()).map_err(|e| at("ca")(e.into()))?;
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
        tcp.set_nodelay(true)?;
        tcp.set_write_timeout(Some(cfg.write_timeout))?;
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
        Ok(Self { transport })
    }

    /// Writes `bytes` whole: returns only when all of it reached the socket, or with the
    /// error that makes this connection unusable (a timeout included).
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        match &mut self.transport {
            Transport::Plain(tcp) => tcp.write_all(bytes)?,
            Transport::Tls(conn, tcp) => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    // rustls takes as much as its outgoing buffer allows; it is emptied
                    // into the socket before more is given.
                    let n = conn.writer().write(rest)?;
                    rest = &rest[n..];
                    while conn.wants_write() {
                        conn.write_tls(tcp)?;
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
