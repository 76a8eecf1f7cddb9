//! `[siem]`: where audit events are exported for a SIEM — JSON lines to stdout or a file,
//! syslog (RFC 5424) over TLS (RFC 5425) — and how much each sink may buffer while its
//! destination is away.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::context::Ctx;

/// The exporters' sinks and how long a clean exit waits for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiemConfig {
    pub sinks: Vec<SiemSink>,
    /// How long a clean exit waits for the sinks to write what they hold.
    pub shutdown_timeout: Duration,
}

/// One destination of the exported events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiemSink {
    /// Distinct among the sinks; the `sink` label of the metrics and the name in logs.
    pub name: String,
    /// Where the sink is in the file (`siem.sinks[1]`), for errors found when it starts.
    pub key: String,
    pub buffer: BufferLimits,
    pub kind: SinkKind,
}

/// What a sink holds while its destination cannot take events, and what it gives up when
/// that is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    pub events: usize,
    pub bytes: usize,
    pub on_full: OnFull,
}

/// Which events a full buffer loses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// The event that does not fit (what is buffered stays in order, with no gap inside).
    #[default]
    DropNewest,
    /// The oldest buffered events, to make room.
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// JSON lines on the process's standard output.
    Stdout,
    /// JSON lines appended to a file, reopened when an outside tool rotates it.
    File { path: PathBuf },
    /// Syslog messages over TCP, with TLS unless the configuration says otherwise.
    Syslog(Box<SyslogSinkConfig>),
}

impl SinkKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File { .. } => "file",
            Self::Syslog(_) => "syslog",
        }
    }
}

/// A syslog collector and the header fields of the messages sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogSinkConfig {
    /// Host name or IP address, resolved again at each connection.
    pub host: String,
    pub port: u16,
    /// TLS to the collector; `None` only with `insecure_plaintext = true`.
    pub tls: Option<SyslogTls>,
    pub facility: Facility,
    /// The severity of an event that names none (by its severity, decision or status).
    pub severity: Severity,
    /// MSGID of every message: 1–32 printable ASCII characters.
    pub msgid: String,
    /// HOSTNAME of every message; the machine's host name when not given.
    pub hostname: Option<String>,
    /// The SD-ID of a structured-data element carrying the event's class, decision and
    /// status; no structured data (`-`) when not given.
    pub sd_id: Option<String>,
    /// Whether MSG starts with a byte order mark (RFC 5424 §6.4).
    pub utf8_bom: bool,
    pub connect_timeout: Duration,
    /// How long one write may make no progress before the connection is given up.
    pub write_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How many bytes of the last frames written are sent again after a connection breaks.
    pub replay_bytes: usize,
}

/// How the gateway authenticates the collector and itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTls {
    /// The name the collector's certificate must hold (SNI too).
    pub server_name: String,
    /// Roots for the collector's certificate; the platform's roots when not given.
    pub ca: Option<PathBuf>,
    /// A certificate chain and its key, for collectors that authenticate their senders.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// A syslog facility (RFC 5424 §6.2.1), 0–23.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(u8);

impl Facility {
    /// The names `facility` accepts, in code order.
    pub const NAMES: [&'static str; 24] = [
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
        "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2",
        "local3", "local4", "local5", "local6", "local7",
    ];
    pub const LOCAL0: Self = Self(16);

    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| u8::try_from(i).ok())
            .map(Self)
    }

    pub fn code(self) -> u8 {
        self.0
    }
}

/// A syslog severity (RFC 5424 §6.2.1), 0 (emergency) to 7 (debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Severity(u8);

impl Severity {
    /// The names `severity` accepts, in code order.
    pub const NAMES: [&'static str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    pub const ALERT: Self = Self(1);
    pub const CRIT: Self = Self(2);
    pub const ERR: Self = Self(3);
    pub const WARNING: Self = Self(4);
    pub const NOTICE: Self = Self(5);
    pub const INFO: Self = Self(6);

    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| u8::try_from(i).ok())
            .map(Self)
    }

    pub fn code(self) -> u8 {
        self.0
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSiem {
    #[serde(default)]
    sinks: Vec<toml::Value>,
    #[serde(default)]
    shutdown_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    buffer_events: Option<u32>,
    #[serde(default)]
    buffer_bytes: Option<u64>,
    #[serde(default)]
    on_full: Option<String>,
    // file
    #[serde(default)]
    path: Option<String>,
    // syslog
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    client_cert: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    insecure_plaintext: Option<bool>,
    #[serde(default)]
    facility: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    msgid: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    sd_id: Option<String>,
    #[serde(default)]
    utf8_bom: Option<bool>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    write_timeout: Option<String>,
    #[serde(default)]
    reconnect_min: Option<String>,
    #[serde(default)]
    reconnect_max: Option<String>,
    #[serde(default)]
    replay_bytes: Option<u64>,
}

const DEFAULT_BUFFER_EVENTS: u32 = 100_000;
const DEFAULT_BUFFER_BYTES: u64 = 64 << 20;
/// A buffer larger than this would let a collector outage take the gateway's memory.
const MAX_BUFFER_BYTES: u64 = 4 << 30;
const DEFAULT_REPLAY_BYTES: u64 = 1 << 20;
const MAX_REPLAY_BYTES: u64 = 256 << 20;
/// The smallest window that still covers the socket's send queue: Linux keeps a send buffer
/// of at least 4,608 bytes whatever is asked, and a window under about four times that
/// would hold less than the kernel may leave unacknowledged.
const MIN_REPLAY_BYTES: u64 = 16 << 10;

pub(crate) fn parse(cx: &mut Ctx<'_>, raw: RawSiem) -> SiemConfig {
    let shutdown_timeout = cx.duration(
        "siem.shutdown_timeout",
        raw.shutdown_timeout,
        Duration::from_secs(5),
    );
    let mut sinks: Vec<SiemSink> = Vec::new();
    for (i, value) in raw.sinks.into_iter().enumerate() {
        let key = format!("siem.sinks[{i}]");
        let Some(s) = cx.section::<RawSink>(&key, value) else {
            continue;
        };
        if let Some(sink) = sink(cx, &key, s) {
            if sinks.iter().any(|other| other.name == sink.name) {
                cx.err(
                    format!("{key}.name"),
                    format!(
                        "another sink is named \"{}\": give each sink of one kind a distinct name",
                        sink.name
                    ),
                );
            }
            sinks.push(sink);
        }
    }
    if sinks.is_empty() && cx.errors.is_empty() {
        cx.err(
            "siem.sinks",
            "[siem] names no sink: add [[siem.sinks]] with kind = \"stdout\", \"file\" or \"syslog\"",
        );
    }
    SiemConfig {
        sinks,
        shutdown_timeout,
    }
}

fn sink(cx: &mut Ctx<'_>, key: &str, s: RawSink) -> Option<SiemSink> {
    let at = |k: &str| format!("{key}.{k}");
    let syslog_only = [
        ("address", s.address.is_some()),
        ("server_name", s.server_name.is_some()),
        ("ca", s.ca.is_some()),
        ("client_cert", s.client_cert.is_some()),
        ("client_key", s.client_key.is_some()),
        ("insecure_plaintext", s.insecure_plaintext.is_some()),
        ("facility", s.facility.is_some()),
        ("severity", s.severity.is_some()),
        ("msgid", s.msgid.is_some()),
        ("hostname", s.hostname.is_some()),
        ("sd_id", s.sd_id.is_some()),
        ("utf8_bom", s.utf8_bom.is_some()),
        ("connect_timeout", s.connect_timeout.is_some()),
        ("write_timeout", s.write_timeout.is_some()),
        ("reconnect_min", s.reconnect_min.is_some()),
        ("reconnect_max", s.reconnect_max.is_some()),
        ("replay_bytes", s.replay_bytes.is_some()),
    ];
    if s.kind != "syslog" {
        for (k, set) in syslog_only {
            if set {
                cx.err(
                    at(k),
                    format!("only for kind = \"syslog\" (this is \"{}\")", s.kind),
                );
            }
        }
    }
    if s.kind != "file" && s.path.is_some() {
        cx.err(
            at("path"),
            format!("only for kind = \"file\" (this is \"{}\")", s.kind),
        );
    }
    let buffer = buffer(cx, key, &s);
    let kind = match s.kind.as_str() {
        "stdout" => SinkKind::Stdout,
        "file" => match &s.path {
            Some(p) if !p.is_empty() => SinkKind::File { path: cx.path(p) },
            _ => {
                cx.err(
                    at("path"),
                    "missing: a file sink needs the path it appends to",
                );
                return None;
            }
        },
        "syslog" => SinkKind::Syslog(Box::new(syslog(cx, key, &s)?)),
        other => {
            cx.err(
                at("kind"),
                format!("\"{other}\" is not a sink: use \"stdout\", \"file\" or \"syslog\""),
            );
            return None;
        }
    };
    let name = s.name.unwrap_or_else(|| kind.name().to_owned());
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        cx.err(
            at("name"),
            "must be 1-64 characters of letters, digits, '-', '_' or '.'",
        );
    }
    Some(SiemSink {
        name,
        key: key.to_owned(),
        buffer,
        kind,
    })
}

fn buffer(cx: &mut Ctx<'_>, key: &str, s: &RawSink) -> BufferLimits {
    let events = match s.buffer_events.unwrap_or(DEFAULT_BUFFER_EVENTS) {
        0 => {
            cx.err(format!("{key}.buffer_events"), "must be at least 1");
            1
        }
        n => n as usize,
    };
    let bytes = match s.buffer_bytes.unwrap_or(DEFAULT_BUFFER_BYTES) {
        n @ 1024..=MAX_BUFFER_BYTES => n,
        _ => {
            cx.err(
                format!("{key}.buffer_bytes"),
                format!("must be between 1024 and {MAX_BUFFER_BYTES} (4 GiB)"),
            );
            DEFAULT_BUFFER_BYTES
        }
    };
    let on_full = match s.on_full.as_deref() {
        None | Some("drop_newest") => OnFull::DropNewest,
        Some("drop_oldest") => OnFull::DropOldest,
        Some(other) => {
            cx.err(
                format!("{key}.on_full"),
                format!("\"{other}\" is not a policy: use \"drop_newest\" or \"drop_oldest\""),
            );
            OnFull::DropNewest
        }
    };
    BufferLimits {
        events,
        bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
        on_full,
    }
}

fn syslog(cx: &mut Ctx<'_>, key: &str, s: &RawSink) -> Option<SyslogSinkConfig> {
    let at = |k: &str| format!("{key}.{k}");
    let Some(address) = &s.address else {
        cx.err(
            at("address"),
            "missing: a syslog sink needs the collector's HOST:PORT",
        );
        return None;
    };
    let Some((host, port)) = split_host_port(address) else {
        cx.err(
            at("address"),
            format!(
                "\"{address}\" is not HOST:PORT (an IPv6 address goes in brackets: \"[::1]:6514\")"
            ),
        );
        return None;
    };
    let plaintext = s.insecure_plaintext.unwrap_or(false);
    let tls = if plaintext {
        for (k, set) in [
            ("server_name", s.server_name.is_some()),
            ("ca", s.ca.is_some()),
            ("client_cert", s.client_cert.is_some()),
            ("client_key", s.client_key.is_some()),
        ] {
            if set {
                cx.err(
                    at(k),
                    "a TLS setting on a sink with insecure_plaintext = true: choose one",
                );
            }
        }
        None
    } else {
        let server_name = s.server_name.clone().unwrap_or_else(|| host.clone());
        if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            cx.err(
                at("server_name"),
                format!("\"{server_name}\" is not a DNS name or an IP address"),
            );
        }
        let ca = s.ca.as_ref().map(|p| cx.existing_file(&at("ca"), p));
        let client_cert = match (&s.client_cert, &s.client_key) {
            (Some(c), Some(k)) => Some((
                cx.existing_file(&at("client_cert"), c),
                cx.existing_file(&at("client_key"), k),
            )),
            (None, None) => None,
            (Some(_), None) => {
                cx.err(
                    at("client_key"),
                    "missing: client_cert needs its client_key",
                );
                None
            }
            (None, Some(_)) => {
                cx.err(
                    at("client_cert"),
                    "missing: client_key needs its client_cert",
                );
                None
            }
        };
        Some(SyslogTls {
            server_name,
            ca,
            client_cert,
        })
    };
    let facility = match s.facility.as_deref() {
        None => Facility::LOCAL0,
        Some(name) => Facility::from_name(name).unwrap_or_else(|| {
            cx.err(
                at("facility"),
                format!(
                    "\"{name}\" is not a facility: use one of {}",
                    Facility::NAMES.join(", ")
                ),
            );
            Facility::LOCAL0
        }),
    };
    let severity = match s.severity.as_deref() {
        None => Severity::INFO,
        Some(name) => Severity::from_name(name).unwrap_or_else(|| {
            cx.err(
                at("severity"),
                format!(
                    "\"{name}\" is not a severity: use one of {}",
                    Severity::NAMES.join(", ")
                ),
            );
            Severity::INFO
        }),
    };
    let msgid = s.msgid.clone().unwrap_or_else(|| "audit".to_owned());
    if !header_field(&msgid, 32) {
        cx.err(
            at("msgid"),
            "must be 1-32 printable ASCII characters without spaces",
        );
    }
    if let Some(h) = &s.hostname
        && !header_field(h, 255)
    {
        cx.err(
            at("hostname"),
            "must be 1-255 printable ASCII characters without spaces",
        );
    }
    if let Some(id) = &s.sd_id
        && !(header_field(id, 32) && !id.contains(['=', ']', '"']) && id.contains('@'))
    {
        cx.err(
            at("sd_id"),
            "must be NAME@NUMBER (your enterprise number), 1-32 printable ASCII characters without '=', ']', '\"' or spaces",
        );
    }
    let connect_timeout = cx.duration(
        &at("connect_timeout"),
        s.connect_timeout.clone(),
        Duration::from_secs(5),
    );
    let write_timeout = cx.duration(
        &at("write_timeout"),
        s.write_timeout.clone(),
        Duration::from_secs(10),
    );
    let reconnect_min = cx.duration(
        &at("reconnect_min"),
        s.reconnect_min.clone(),
        Duration::from_millis(100),
    );
    let reconnect_max = cx.duration(
        &at("reconnect_max"),
        s.reconnect_max.clone(),
        Duration::from_secs(30),
    );
    if reconnect_max < reconnect_min {
        cx.err(
            at("reconnect_max"),
            "must not be shorter than reconnect_min",
        );
    }
    let replay_bytes = match s.replay_bytes.unwrap_or(DEFAULT_REPLAY_BYTES) {
        n @ (0 | MIN_REPLAY_BYTES..=MAX_REPLAY_BYTES) => usize::try_from(n).unwrap_or(usize::MAX),
        n if n < MIN_REPLAY_BYTES => {
            cx.err(
                at("replay_bytes"),
                format!("must be 0 (no replay) or at least {MIN_REPLAY_BYTES} (16 KiB): the kernel may hold more unacknowledged bytes than a smaller window keeps"),
            );
            0
        }
        _ => {
            cx.err(
                at("replay_bytes"),
                format!("must be at most {MAX_REPLAY_BYTES} (256 MiB)"),
            );
            0
        }
    };
    Some(SyslogSinkConfig {
        host,
        port,
        tls,
        facility,
        severity,
        msgid,
        hostname: s.hostname.clone(),
        sd_id: s.sd_id.clone(),
        utf8_bom: s.utf8_bom.unwrap_or(false),
        connect_timeout,
        write_timeout,
        reconnect_min,
        reconnect_max,
        replay_bytes,
    })
}

/// `host:port` or `[v6]:port`, with a port above zero.
fn split_host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']')?;
            v6.parse::<std::net::Ipv6Addr>().ok()?;
            v6
        }
        None if host.contains(':') => return None,
        None => host,
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((host.to_owned(), port))
}

/// A header field of RFC 5424: 1 to `max` characters of PRINTUSASCII (33–126).
fn header_field(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (33..=126).contains(&b))
}

#[cfg(test)]
#[path = "siem_tests.rs"]
mod tests;
