//! One event as a syslog message (RFC 5424) in an octet-counted frame (RFC 5425 §4.3):
//!
//! ```text
//! MSGLEN SP <PRI>1 SP TIMESTAMP SP HOSTNAME SP idgate SP PROCID SP MSGID SP SD SP [BOM]JSON
//! ```
//!
//! PRI is the configured facility and a severity read from the event (its OCSF
//! `severity_id`, else its `decision`, else its OCSF `status_id`, else its
//! `http_response.code`), or the configured one. TIMESTAMP is when the event was exported,
//! in UTC with microseconds. STRUCTURED-DATA is `-`, or with an `sd_id` configured one
//! element carrying the event's `class_uid`, `decision` and `status`, escaped as §6.3.3
//! says. MSG is the JSON as given, with the UTF-8 byte order mark only when configured:
//! RFC 5424 §6.4 declares UTF-8 by it, but RFC 8259 §8.1 forbids it in front of a JSON text
//! and most collectors' JSON parsers fail on it.

use std::borrow::Cow;
use std::time::SystemTime;

use idgate_config::{Severity, SyslogSinkConfig};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::Event;

const BOM: &[u8] = b"\xEF\xBB\xBF";
const APP_NAME: &str = "idgate";

/// What an event may say about its own severity; every field is optional, and an event
/// that is not a JSON object of this shape gives no hints.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Hints<'a> {
    /// OCSF `severity_id`: 1 informational … 6 fatal.
    #[serde(default)]
    pub(crate) severity_id: Option<u64>,
    /// The gateway's decision: `allowed`, `denied:<slug>`, `failed:<slug>`.
    #[serde(default, borrow)]
    pub(crate) decision: Option<Cow<'a, str>>,
    /// OCSF `status_id`: 1 success, 2 failure.
    #[serde(default)]
    pub(crate) status_id: Option<u64>,
    #[serde(default)]
    pub(crate) class_uid: Option<u64>,
    #[serde(default)]
    pub(crate) http_response: Option<HttpResponse>,
    /// OCSF's place for fields it has no name for; `unmapped.decision` counts as `decision`.
    #[serde(default, borrow)]
    pub(crate) unmapped: Option<Unmapped<'a>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct HttpResponse {
    #[serde(default)]
    pub(crate) code: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Unmapped<'a> {
    #[serde(default, borrow)]
    pub(crate) decision: Option<Cow<'a, str>>,
}

impl<'a> Hints<'a> {
    /// The hints of `json`, or none when it is not a JSON object of the expected shape.
    pub(crate) fn of(json: &'a [u8]) -> Self {
        serde_json::from_slice(json).unwrap_or_default()
    }

    fn decision(&self) -> Option<&str> {
        self.decision
            .as_deref()
            .or_else(|| self.unmapped.as_ref()?.decision.as_deref())
    }

    fn status(&self) -> Option<u64> {
        self.http_response.as_ref()?.code
    }
}

/// The syslog severity of an event: from its OCSF severity, its decision, its OCSF status or
/// its HTTP status, in that order; `default` when it says nothing.
pub(crate) fn severity_of(hints: &Hints<'_>, default: Severity) -> Severity {
    if let Some(id) = hints.severity_id {
        match id {
            1 => return Severity::INFO,
            2 => return Severity::NOTICE,
            3 => return Severity::WARNING,
            4 => return Severity::ERR,
            5 => return Severity::CRIT,
            6 => return Severity::ALERT,
            _ => {} // 0 unknown, 99 other
        }
    }
    if let Some(d) = hints.decision() {
        if d == "allowed" {
            return Severity::INFO;
        }
        if d.starts_with("denied") {
            return Severity::NOTICE;
        }
        if d.starts_with("failed") {
            return Severity::WARNING;
        }
    }
    match hints.status_id {
        Some(1) => return Severity::INFO,
        Some(2) => return Severity::NOTICE,
        _ => {}
    }
    match hints.status() {
        Some(100..=399) => Severity::INFO,
        Some(400..=499) => Severity::NOTICE,
        Some(500..=599) => Severity::WARNING,
        _ => default,
    }
}

/// What every message of one sink has in common.
pub(crate) struct Header {
    facility: u8,
    default_severity: Severity,
    hostname: String,
    procid: String,
    msgid: String,
    sd_id: Option<String>,
    bom: bool,
}

impl Header {
    pub(crate) fn new(cfg: &SyslogSinkConfig) -> Self {
        Self {
            facility: cfg.facility.code(),
            default_severity: cfg.severity,
            hostname: cfg.hostname.clone().unwrap_or_else(local_hostname),
            procid: std::process::id().to_string(),
            msgid: cfg.msgid.clone(),
            sd_id: cfg.sd_id.clone(),
            bom: cfg.utf8_bom,
        }
    }

    /// Appends the frame of `event` to `out`; `msg` is scratch space, reused.
    pub(crate) fn frame(&self, event: &Event, msg: &mut Vec<u8>, out: &mut Vec<u8>) {
        let hints = Hints::of(&event.json);
        let severity = severity_of(&hints, self.default_severity);
        let mut num = itoa::Buffer::new();
        msg.clear();
        msg.push(b'<');
        msg.extend_from_slice(
            num.format(u16::from(self.facility) * 8 + u16::from(severity.code()))
                .as_bytes(),
        );
        msg.extend_from_slice(b">1 ");
        timestamp(event.at, msg);
        for field in [&self.hostname, APP_NAME, &self.procid, &self.msgid] {
            msg.push(b' ');
            msg.extend_from_slice(field.as_bytes());
        }
        msg.push(b' ');
        match &self.sd_id {
            None => msg.push(b'-'),
            Some(id) => structured_data(id, &hints, msg),
        }
        msg.push(b' ');
        if self.bom {
            msg.extend_from_slice(BOM);
        }
        msg.extend_from_slice(&event.json);
        out.extend_from_slice(num.format(msg.len()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(msg);
    }
}

/// `[ID class_uid="…" decision="…" status="…"]`, with the parameters the event has.
fn structured_data(id: &str, hints: &Hints<'_>, out: &mut Vec<u8>) {
    let mut num = itoa::Buffer::new();
    out.push(b'[');
    out.extend_from_slice(id.as_bytes());
    if let Some(class) = hints.class_uid {
        param("class_uid", num.format(class), out);
    }
    if let Some(d) = hints.decision() {
        param("decision", d, out);
    }
    if let Some(s) = hints.status() {
        param("status", num.format(s), out);
    }
    out.push(b']');
}

/// ` NAME="VALUE"` with `"`, `\` and `]` escaped by a backslash (RFC 5424 §6.3.3).
fn param(name: &str, value: &str, out: &mut Vec<u8>) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// `2026-03-01T12:34:56.123456Z`: RFC 3339 in UTC with microseconds (RFC 5424 §6.2.3).
fn timestamp(at: SystemTime, out: &mut Vec<u8>) {
    let t = OffsetDateTime::from(at);
    let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
    let (h, mi, s, us) = (t.hour(), t.minute(), t.second(), t.microsecond());
    let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z");
    out.extend_from_slice(text.as_bytes());
}

/// The machine's host name as the kernel knows it, or `-` (NILVALUE) when it cannot be read
/// or is not a valid HOSTNAME field.
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn hints(json: &str) -> Severity {
        severity_of(&Hints::of(json.as_bytes()), Severity::INFO)
    }

    #[test]
    fn severity_follows_the_event() {
        assert_eq!(
            hints(r#"{"severity_id":4,"decision":"allowed"}"#),
            Severity::ERR
        );
        assert_eq!(
            hints(r#"{"decision":"denied:not_in_allow_list"}"#),
            Severity::NOTICE
        );
        assert_eq!(
            hints(r#"{"unmapped":{"decision":"failed:upstream_timeout"}}"#),
            Severity::WARNING
        );
        assert_eq!(hints(r#"{"status_id":2}"#), Severity::NOTICE);
        assert_eq!(
            hints(r#"{"http_response":{"code":503}}"#),
            Severity::WARNING
        );
        assert_eq!(hints(r#"{"http_response":{"code":200}}"#), Severity::INFO);
        assert_eq!(
            severity_of(&Hints::of(b"not json"), Severity::NOTICE),
            Severity::NOTICE
        );
        assert_eq!(
            severity_of(&Hints::of(br#"{"severity_id":"high"}"#), Severity::CRIT),
            Severity::CRIT,
            "a field of another type gives no hints"
        );
    }

    fn header(sd_id: Option<&str>, bom: bool) -> Header {
        Header {
            facility: 13,
            default_severity: Severity::INFO,
            hostname: "gw-1".to_owned(),
            procid: "42".to_owned(),
            msgid: "audit".to_owned(),
            sd_id: sd_id.map(str::to_owned),
            bom,
        }
    }

    fn frame(h: &Header, json: &str) -> String {
        let event = Event {
            at: UNIX_EPOCH + Duration::from_micros(1_772_368_496_000_007),
            json: json.as_bytes().into(),
        };
        let mut out = Vec::new();
        h.frame(&event, &mut Vec::new(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn frames_are_octet_counted_rfc5424_messages() {
        let json = r#"{"class_uid":6003,"decision":"denied:rate_limited"}"#;
        let f = frame(&header(None, false), json);
        let msg = format!("<109>1 2026-03-01T12:34:56.000007Z gw-1 idgate 42 audit - {json}");
        assert_eq!(f, format!("{} {msg}", msg.len()));
    }

    #[test]
    fn structured_data_escapes_its_values_and_the_bom_is_optional() {
        let json =
            r#"{"class_uid":6003,"decision":"denied:a\"b]c\\d","http_response":{"code":403}}"#;
        let f = frame(&header(Some("idgate@32473"), true), json);
        let (len, msg) = f.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<109>1 "), "{msg}");
        assert!(
            msg.contains(
                r#" audit [idgate@32473 class_uid="6003" decision="denied:a\"b\]c\\d" status="403"] "#
            ),
            "{msg}"
        );
        assert!(msg.ends_with(&format!("\u{feff}{json}")));
    }
}
