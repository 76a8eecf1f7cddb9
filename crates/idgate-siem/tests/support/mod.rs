//! What the exporter's tests share: a PKI made with rcgen, a strict in-process syslog
//! collector over real TLS sockets, sink configurations, and a wait helper.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub mod rfc5424;
pub mod rsyslog;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use idgate_config::{
    BufferLimits, Facility, OnFull, Severity, SiemConfig, SiemSink, SinkKind, SyslogSinkConfig,
    SyslogTls,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

pub use rfc5424::Message;

/// Waits until `cond` holds, for at most `limit`; false when it never did.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA with a server certificate (localhost, 127.0.0.1) and a client certificate, in a
/// directory of their own; `other_ca` signs nothing the gateway trusts.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for prefix in ["", "other-"] {
            let mut ca_params = CertificateParams::default();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
            let mut server = CertificateParams::default();
            server.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ];
            server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let server_key = KeyPair::generate().unwrap();
            let server_cert = server.signed_by(&server_key, &ca).unwrap();
            let mut client = CertificateParams::default();
            client.subject_alt_names = vec![SanType::DnsName("gateway.test".try_into().unwrap())];
            client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let client_key = KeyPair::generate().unwrap();
            let client_cert = client.signed_by(&client_key, &ca).unwrap();
            let w = |name: &str, pem: String| {
                let path = dir.path().join(format!("{prefix}{name}"));
                std::fs::write(&path, pem).unwrap();
                if name.ends_with(".key") {
                    // Keys are private, as the sink requires of its client key.
                    std::fs::set_permissions(
                        &path,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .unwrap();
                }
            };
            w("ca.pem", ca.pem());
            w("server.pem", server_cert.pem());
            w("server.key", server_key.serialize_pem());
            w("client.pem", client_cert.pem());
            w("client.key", client_key.serialize_pem());
        }
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// TLS settings of a sink trusting this PKI's CA, with its client certificate if asked.
    pub fn sink_tls(&self, client_cert: bool) -> SyslogTls {
        SyslogTls {
            server_name: "localhost".to_owned(),
            ca: Some(self.path("ca.pem")),
            client_cert: client_cert.then(|| (self.path("client.pem"), self.path("client.key"))),
        }
    }

    /// A collector's TLS: the server certificate of this CA (or of the other one), requiring
    /// a client certificate of this CA when `mtls`.
    pub fn server_config(&self, prefix: &str, mtls: bool) -> Arc<rustls::ServerConfig> {
        let chain =
            vec![CertificateDer::from_pem_file(self.path(&format!("{prefix}server.pem"))).unwrap()];
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{prefix}server.key"))).unwrap();
        let provider = idgate_tls::crypto_provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let config = if mtls {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
                .unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config.with_single_cert(chain, key).unwrap())
    }
}

/// A syslog sink to 127.0.0.1:`port` with `buffer_events` of buffer, quick to reconnect.
pub fn syslog_sink(
    name: &str,
    port: u16,
    tls: Option<SyslogTls>,
    buffer_events: usize,
) -> SiemSink {
    SiemSink {
        name: name.to_owned(),
        key: "siem.sinks[0]".to_owned(),
        buffer: BufferLimits {
            events: buffer_events,
            bytes: 64 << 20,
            on_full: OnFull::DropNewest,
        },
        kind: SinkKind::Syslog(Box::new(SyslogSinkConfig {
            host: "127.0.0.1".to_owned(),
            port,
            tls,
            facility: Facility::from_name("local0").unwrap(),
            severity: Severity::from_name("info").unwrap(),
            msgid: "audit".to_owned(),
            hostname: Some("gw-test".to_owned()),
            sd_id: None,
            utf8_bom: false,
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(200),
            replay_bytes: 1 << 20,
        })),
    }
}

pub fn siem(sinks: Vec<SiemSink>) -> SiemConfig {
    SiemConfig {
        sinks,
        shutdown_timeout: Duration::from_secs(5),
    }
}

/// How a request's record ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed, the upstream answered 200.
    Allowed,
    /// Denied by the gateway: 403 `not_in_allow_list`.
    Denied,
    /// Allowed, not carried out: 504 `upstream-timeout`.
    Failed,
    /// Allowed, the upstream answered 502.
    Upstream5xx,
}

impl Outcome {
    /// Its decision and status, as the record writes them.
    pub fn decision_and_status(self) -> (&'static str, u16) {
        match self {
            Self::Allowed => ("allowed", 200),
            Self::Denied => ("denied:not_in_allow_list", 403),
            Self::Failed => ("failed:upstream-timeout", 504),
            Self::Upstream5xx => ("allowed", 502),
        }
    }
}

/// The event numbered `i`: the audit entry `seq` = `i` holding a request's record, every
/// third one denied, the others allowed.
pub fn event(i: usize) -> String {
    let outcome = if i.is_multiple_of(3) {
        Outcome::Denied
    } else {
        Outcome::Allowed
    };
    api_record(i, outcome)
}

/// The audit entry `seq` holding a request's record (`idgate_audit::ApiActivity`, OCSF API
/// Activity) that ended as `outcome`, byte for byte as the trail writes it and hands it to
/// the exporter.
pub fn api_record(seq: usize, outcome: Outcome) -> String {
    use idgate_audit::{ApiActivity, AuthLayers, Decision};
    let request_id = format!("req-{seq:08}");
    let workload = "spiffe://example.org/ns/kyc/sa/onboarding";
    let (decision, status) = match outcome {
        Outcome::Allowed => (Decision::Allowed, 200),
        Outcome::Denied => (Decision::Denied("not_in_allow_list"), 403),
        Outcome::Failed => (Decision::Failed("upstream-timeout"), 504),
        Outcome::Upstream5xx => (Decision::Allowed, 502),
    };
    let sent_upstream = matches!(outcome, Outcome::Allowed | Outcome::Upstream5xx);
    let record = ApiActivity {
        time: record_time(seq),
        request_id: &request_id,
        uid: None,
        peer: Some(workload),
        caller: Some(workload),
        auth_layers: AuthLayers {
            mtls: true,
            ..AuthLayers::default()
        },
        remote: "10.0.3.7:51234".parse().unwrap(),
        method: "GET",
        version: "HTTP/1.1",
        route: "decision",
        path: Some("/v3/session/{session_id}/decision/"),
        template: Some("/v3/session/{session_id}/decision/"),
        status,
        upstream: Some("didit"),
        upstream_status: sent_upstream.then_some(status),
        upstream_latency: sent_upstream.then_some(Duration::from_micros(1204)),
        credential: Some(("didit", "env")),
        decision,
        latency: Duration::from_micros(2548),
        bytes_in: None,
        bytes_out: Some(512),
    };
    let mut members = Vec::new();
    record.write_members(&mut members);
    entry(seq, &members)
}

/// The audit entry `seq` holding a refused connection's record
/// (`idgate_audit::ConnectionEvent`, OCSF Network Activity).
pub fn connection_record(seq: usize) -> String {
    use idgate_audit::{ConnectionEvent, ConnectionOutcome};
    let record = ConnectionEvent {
        time: record_time(seq),
        remote: "192.0.2.1".parse().unwrap(),
        port: Some(40_000),
        via: None,
        peer: None,
        outcome: ConnectionOutcome::Refused,
        reason: "max_connections_per_ip",
        stage: "at accept",
        detail: None,
    };
    let mut members = Vec::new();
    record.write_members(&mut members);
    entry(seq, &members)
}

fn record_time(seq: usize) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_millis(1_795_452_348_053 + seq as u64)
}

/// `members` in a chain entry, as the trail's writer seals one (the link to the entry before
/// is made up: the exporter does not read it).
fn entry(seq: usize, members: &[u8]) -> String {
    let prev = idgate_audit::Digest::of(&seq.to_le_bytes());
    let mut line = format!(r#"{{"seq":{seq},"prev":"{}","entry":"record","#, prev.hex());
    line.push_str(std::str::from_utf8(members).unwrap());
    let hash = idgate_audit::Digest::of(line.as_bytes());
    line.push_str(&format!(r#","hash":"{}"}}"#, hash.hex()));
    line
}

/// The `seq` of a received JSON message.
pub fn seq(msg: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(msg).unwrap();
    v["seq"].as_u64().unwrap() as usize
}

/// Checks that `seqs` is every number it holds, each first seen in increasing order (later
/// repeats are the frames sent again after a broken connection); returns the distinct ones.
pub fn distinct_in_order(seqs: &[usize]) -> Vec<usize> {
    let mut seen = std::collections::BTreeSet::new();
    let mut first = Vec::new();
    for &s in seqs {
        if seen.insert(s) {
            first.push(s);
        }
    }
    assert!(
        first.windows(2).all(|w| w[0] < w[1]),
        "out of order: {first:?}"
    );
    first
}

#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<Message>>,
    errors: Mutex<Vec<String>>,
    /// Every byte read off the TCP connections, before TLS.
    raw: Mutex<Vec<u8>>,
    handshakes_failed: Mutex<u32>,
    conns: Mutex<Vec<TcpStream>>,
    /// Connections accepted, over the receiver's whole life.
    accepted: Mutex<u32>,
}

/// A syslog collector on loopback: TLS (or plain TCP), octet-counted frames, each message
/// parsed strictly; kill and restart it on the same port.
pub struct Receiver {
    pub port: u16,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Closes a connection that brought nothing for this long, as Filebeat's TCP input does.
    idle_close: Option<Duration>,
}

impl Receiver {
    pub fn start(port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::with_idle_close(port, tls, None)
    }

    /// A receiver that closes each connection once it has been idle for `idle`.
    pub fn with_idle_close(
        port: u16,
        tls: Option<Arc<rustls::ServerConfig>>,
        idle: Option<Duration>,
    ) -> Self {
        let mut r = Self {
            port,
            tls,
            shared: Arc::default(),
            stop: Arc::default(),
            accept: None,
            idle_close: idle,
        };
        r.listen();
        r
    }

    fn listen(&mut self) {
        let listener = (0..50)
            .find_map(|_| {
                TcpListener::bind(("127.0.0.1", self.port))
                    .map_err(|_| std::thread::sleep(Duration::from_millis(50)))
                    .ok()
            })
            .expect("bind the collector's port");
        self.port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, shared, tls) = (self.stop.clone(), self.shared.clone(), self.tls.clone());
        let idle = self.idle_close;
        self.accept = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false).unwrap();
                        tcp.set_read_timeout(idle).unwrap();
                        shared.conns.lock().unwrap().push(tcp.try_clone().unwrap());
                        *shared.accepted.lock().unwrap() += 1;
                        let (shared, tls, stop) = (shared.clone(), tls.clone(), stop.clone());
                        std::thread::spawn(move || serve(tcp, tls, &shared, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Closes the listener and every connection at once, as a collector that died.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn restart(&mut self) {
        self.listen();
    }

    pub fn messages(&self) -> Vec<Message> {
        self.shared.messages.lock().unwrap().clone()
    }

    pub fn seqs(&self) -> Vec<usize> {
        self.messages().iter().map(|m| seq(&m.msg)).collect()
    }

    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    pub fn raw(&self) -> Vec<u8> {
        self.shared.raw.lock().unwrap().clone()
    }

    pub fn handshakes_failed(&self) -> u32 {
        *self.shared.handshakes_failed.lock().unwrap()
    }

    /// Connections accepted so far, refused handshakes included.
    pub fn accepted(&self) -> u32 {
        *self.shared.accepted.lock().unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads off a connection, keeping a copy of every byte.
struct Recording<'a> {
    tcp: TcpStream,
    shared: &'a Shared,
}

impl Read for Recording<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.shared.raw.lock().unwrap().extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

impl Write for Recording<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

fn serve(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    shared: &Shared,
    stop: &AtomicBool,
) {
    // `kill` keeps a clone of the connection: ending it here must close it for the sink too.
    let closer = tcp.try_clone().unwrap();
    let io = Recording { tcp, shared };
    let mut stream: Box<dyn Read + '_> = match tls {
        None => Box::new(io),
        Some(config) => {
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            let mut io = io;
            while conn.is_handshaking() {
                if conn.complete_io(&mut io).is_err() {
                    *shared.handshakes_failed.lock().unwrap() += 1;
                    let _ = closer.shutdown(Shutdown::Both);
                    return;
                }
            }
            Box::new(rustls::StreamOwned::new(conn, io))
        }
    };
    let mut pending = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
        }
        match rfc5424::frames(&mut pending) {
            Ok(frames) => {
                for f in frames {
                    match rfc5424::parse(&f) {
                        Ok(m) => shared.messages.lock().unwrap().push(m),
                        Err(e) => shared.errors.lock().unwrap().push(e),
                    }
                }
            }
            Err(e) => {
                shared.errors.lock().unwrap().push(e);
                break;
            }
        }
    }
    drop(stream);
    let _ = closer.shutdown(Shutdown::Both);
}

/// The complete lines of a file (none when it does not exist). The server may still be
/// writing it: a last line without its newline is half written, and is left for a later
/// read.
pub fn read_lines(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete.lines().map(str::to_owned).collect()
}
