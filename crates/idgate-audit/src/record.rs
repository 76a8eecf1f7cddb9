//! What a record says, and its JSON: one request as an OCSF API Activity (class 6003), one
//! refused connection or failed handshake as an OCSF Network Activity (class 4001). Field
//! names follow OCSF where they fit; what OCSF has no place for is under `unmapped`.
//! `docs/audit.md` has the mapping.
//!
//! Both are borrowed from the request's or connection's own values: making one allocates
//! nothing, and its members are written once, on the caller's thread, into a reused buffer.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use crate::json;

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// How the gateway decided on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Forwarded upstream, or answered by a built-in target.
    Allowed,
    /// Refused for what the request is or who sent it; the problem slug says why.
    Denied(&'a str),
    /// Allowed, but not carried out (an upstream or credential failure); the slug says why.
    Failed(&'a str),
    /// Allowed, and answered otherwise than by the route's upstream (`fallback:cache`,
    /// `fallback:failover`).
    AllowedBy(&'a str),
    /// Neither allowed nor refused: the caller went away before the gateway decided
    /// (`client-closed`).
    Undecided(&'a str),
}

/// OCSF `severity_id` and its caption: how much a record wants a reader's attention. The
/// SIEM export's syslog severity follows it (1 `info`, 2 `notice`, 3 `warning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    /// Served.
    Informational = 1,
    /// Turned away for what the request is or who sent it: a denied request, a refused
    /// connection, a failed handshake.
    Low = 2,
    /// Not carried out: the gateway or the upstream failed it (a `failed` decision, a 5xx).
    Medium = 3,
}

impl Severity {
    /// `,"severity_id":N,"severity":"…"`.
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(match self {
            Self::Informational => b",\"severity_id\":1,\"severity\":\"Informational\"",
            Self::Low => b",\"severity_id\":2,\"severity\":\"Low\"",
            Self::Medium => b",\"severity_id\":3,\"severity\":\"Medium\"",
        });
    }
}

impl Decision<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        let (word, slug) = match self {
            Self::Allowed => ("allowed", None),
            Self::Denied(s) => ("denied:", Some(s)),
            Self::Failed(s) => ("failed:", Some(s)),
            Self::AllowedBy(s) => ("allowed:", Some(s)),
            Self::Undecided(s) => ("undecided:", Some(s)),
        };
        out.extend_from_slice(word.as_bytes());
        if let Some(slug) = slug {
            // Slugs are the gateway's own words; escaped all the same.
            json::str_inner(out, slug);
        }
        out.push(b'"');
    }
}

/// Which authentication layers produced an identity for the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthLayers {
    pub mtls: bool,
    pub api_key: bool,
    pub jwt: bool,
    pub jwt_svid: bool,
}

/// One request, as the audit trail records it. Never a secret, a header value, a body or a
/// query string; the path only as the route allows (see `path`).
#[derive(Debug, Clone)]
pub struct ApiActivity<'a> {
    pub time: SystemTime,
    /// The request's id as the caller and the logs know it: the caller's `x-request-id`
    /// when it sent one, else the gateway's own (`api.request.uid`).
    pub request_id: &'a str,
    /// The gateway's own id for the request when `request_id` is the caller's
    /// (`unmapped.gateway_request_id`): a caller may send any id, another request's too, so
    /// that the record also carries one that no caller chose.
    pub uid: Option<&'a str>,
    /// The SPIFFE ID of the connection's client certificate.
    pub peer: Option<&'a str>,
    /// The principal authorization accepted (or every one refused), as the access log names
    /// it: a SPIFFE ID, `apikey:NAME`, `client:ID`, `sub:SUBJECT@ISSUER`.
    pub caller: Option<&'a str>,
    pub auth_layers: AuthLayers,
    pub remote: SocketAddr,
    pub method: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub version: &'a str,
    /// The route's name; `-` when none matched.
    pub route: &'a str,
    /// The request's path: its canonical form, or the route's template where the route marks
    /// its path parameters personal.
    pub path: Option<&'a str>,
    /// The route's path template.
    pub template: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub upstream_latency: Option<Duration>,
    /// The upstream credential's label and version (never its value).
    pub credential: Option<(&'a str, &'a str)>,
    pub decision: Decision<'a>,
    pub latency: Duration,
    /// The request body's length, when announced.
    pub bytes_in: Option<u64>,
    /// The response body's length, when known before it was sent.
    pub bytes_out: Option<u64>,
}

// Every value a caller or peer chooses is cut to a bound of its own (at a character
// boundary) and marked (`<member>_truncated` under `unmapped`), so that no request can swell
// its record; with JSON escaping (six bytes at most for one) a record stays far below the
// longest line the reader takes. The writer still writes any record past
// `writer::MAX_RECORD` in a bounded form (see there).

/// The longest path a record keeps.
pub const MAX_PATH: usize = 1024;
/// The longest method a record keeps: methods are short tokens (`PROPPATCH`,
/// `UPDATEREDIRECTREF`); a longer one is a caller's invention.
pub const MAX_METHOD: usize = 32;
/// The longest caller or peer a record keeps: a SPIFFE ID is at most 2048 bytes; a
/// caller's other forms (`jwt-svid:…`, `sub:SUBJECT@ISSUER`) take a little more.
pub const MAX_IDENTITY: usize = 4096;
/// The longest request id a record keeps (the gateway keeps a caller's own up to 128).
pub const MAX_REQUEST_ID: usize = 128;
/// The longest detail of a refused connection (a TLS error's words) a record keeps.
pub const MAX_DETAIL: usize = 256;

fn metadata(out: &mut Vec<u8>, uid: Option<&str>) {
    json::key(out, "metadata");
    out.push(b'{');
    if let Some(uid) = uid {
        out.extend_from_slice(b"\"uid\":");
        json::str(out, uid);
        out.push(b',');
    }
    out.extend_from_slice(
        b"\"product\":{\"name\":\"idgate\",\"vendor_name\":\"idgate\",\"version\":\"",
    );
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\"},\"version\":\"");
    out.extend_from_slice(OCSF_VERSION.as_bytes());
    out.extend_from_slice(b"\"}");
}

fn time(out: &mut Vec<u8>, t: SystemTime) {
    let ms = json::millis(t);
    out.extend_from_slice(b"\"time\":");
    json::num(out, ms);
    json::key(out, "time_dt");
    json::datetime(out, ms);
}

fn endpoint(out: &mut Vec<u8>, name: &str, ip: IpAddr, port: Option<u16>) {
    json::key(out, name);
    out.extend_from_slice(b"{\"ip\":\"");
    // An address's text needs no escaping. IPv4, the common case, without the formatter.
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                json::num(out, octet.into());
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
    if let Some(port) = port {
        out.extend_from_slice(b",\"port\":");
        json::num(out, port.into());
    }
    out.push(b'}');
}

/// `s`, cut to at most `max` bytes at a character boundary.
fn capped(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

/// [`capped`], for a value that may be absent.
fn capped_opt(s: Option<&str>, max: usize) -> (Option<&str>, bool) {
    match s {
        Some(s) => {
            let (s, cut) = capped(s, max);
            (Some(s), cut)
        }
        None => (None, false),
    }
}

impl ApiActivity<'_> {
    /// A failure (the decision, or a 5xx from the upstream) is graver than a refusal, which
    /// is graver than a request served.
    fn severity(&self) -> Severity {
        match self.decision {
            Decision::Failed(_) => Severity::Medium,
            _ if self.status >= 500 => Severity::Medium,
            Decision::Denied(_) => Severity::Low,
            // The caller left: nothing was refused or failed.
            Decision::Allowed | Decision::AllowedBy(_) | Decision::Undecided(_) => {
                Severity::Informational
            }
        }
    }

    /// OCSF activity: 1 Create (POST), 2 Read (GET, HEAD), 3 Update (PUT, PATCH), 4 Delete,
    /// 99 Other.
    fn activity(&self) -> (u64, &'static str) {
        match self.method {
            "POST" => (1, "Create"),
            "GET" | "HEAD" => (2, "Read"),
            "PUT" | "PATCH" => (3, "Update"),
            "DELETE" => (4, "Delete"),
            _ => (99, "Other"),
        }
    }

    /// Appends the record's members (no braces) to `out`.
    pub fn write_members(&self, out: &mut Vec<u8>) {
        let (activity, activity_name) = self.activity();
        let (method, method_cut) = capped(self.method, MAX_METHOD);
        let (request_id, request_id_cut) = capped(self.request_id, MAX_REQUEST_ID);
        let (caller, caller_cut) = capped_opt(self.caller, MAX_IDENTITY);
        let (peer, peer_cut) = capped_opt(self.peer, MAX_IDENTITY);
        out.extend_from_slice(b"\"class_uid\":6003,\"class_name\":\"API Activity\",\"category_uid\":6,\"category_name\":\"Application Activity\",\"activity_id\":");
        json::num(out, activity);
        json::key(out, "activity_name");
        json::str(out, activity_name);
        json::key(out, "type_uid");
        json::num(out, 600_300 + activity);
        out.push(b',');
        time(out, self.time);
        let success = matches!(self.decision, Decision::Allowed | Decision::AllowedBy(_))
            && self.status < 400;
        self.severity().write(out);
        out.extend_from_slice(b",\"status_id\":");
        out.extend_from_slice(if success {
            b"1,\"status\":\"Success\""
        } else {
            b"2,\"status\":\"Failure\""
        });
        json::key(out, "status_code");
        out.push(b'"');
        json::num(out, self.status.into());
        out.push(b'"');
        json::key(out, "status_detail");
        self.decision.write(out);
        json::key(out, "duration");
        json::num(
            out,
            u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
        );
        metadata(out, Some(request_id));
        json::key(out, "actor");
        out.push(b'{');
        if let Some(caller) = caller.or(peer) {
            out.extend_from_slice(b"\"user\":{\"uid\":");
            json::str(out, caller);
            out.push(b'}');
        }
        out.push(b'}');
        endpoint(
            out,
            "src_endpoint",
            self.remote.ip(),
            Some(self.remote.port()),
        );
        json::key(out, "api");
        out.extend_from_slice(b"{\"operation\":");
        json::str(out, self.route);
        out.extend_from_slice(b",\"request\":{\"uid\":");
        json::str(out, request_id);
        out.push(b'}');
        if let Some(upstream) = self.upstream {
            out.extend_from_slice(b",\"service\":{\"name\":");
            json::str(out, upstream);
            out.push(b'}');
        }
        out.push(b'}');
        json::key(out, "http_request");
        out.extend_from_slice(b"{\"http_method\":");
        json::str(out, method);
        out.extend_from_slice(b",\"version\":");
        json::str(out, self.version);
        let mut cut = false;
        if let Some(path) = self.path {
            let (path, was_cut) = capped(path, MAX_PATH);
            cut = was_cut;
            out.extend_from_slice(b",\"url\":{\"path\":");
            json::str(out, path);
            out.push(b'}');
        }
        out.push(b'}');
        json::key(out, "http_response");
        out.extend_from_slice(b"{\"code\":");
        json::num(out, self.status.into());
        out.push(b'}');
        json::key(out, "unmapped");
        out.extend_from_slice(b"{\"decision\":");
        self.decision.write(out);
        json::key(out, "auth_layers");
        out.push(b'[');
        let layers = [
            (self.auth_layers.mtls, "\"mtls\""),
            (self.auth_layers.api_key, "\"api_key\""),
            (self.auth_layers.jwt, "\"jwt\""),
            (self.auth_layers.jwt_svid, "\"jwt_svid\""),
        ];
        let mut first = true;
        for (_, name) in layers.iter().filter(|(on, _)| *on) {
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(name.as_bytes());
        }
        out.push(b']');
        if let Some(peer) = peer {
            json::key(out, "peer");
            json::str(out, peer);
        }
        if let Some(t) = self.template {
            json::key(out, "path_template");
            json::str(out, t);
        }
        if let Some(uid) = self.uid {
            json::key(out, "gateway_request_id");
            json::str(out, capped(uid, MAX_REQUEST_ID).0);
        }
        for (was_cut, flag) in [
            (cut, &b",\"path_truncated\":true"[..]),
            (method_cut, b",\"method_truncated\":true"),
            (request_id_cut, b",\"request_id_truncated\":true"),
            (caller_cut, b",\"caller_truncated\":true"),
            (peer_cut, b",\"peer_truncated\":true"),
        ] {
            if was_cut {
                out.extend_from_slice(flag);
            }
        }
        if let Some(s) = self.upstream_status {
            json::key(out, "upstream_status");
            json::num(out, s.into());
        }
        if let Some(l) = self.upstream_latency {
            json::key(out, "upstream_latency_us");
            json::num(out, json::micros(l));
        }
        if let Some((label, version)) = self.credential {
            json::key(out, "credential");
            json::str(out, label);
            json::key(out, "credential_version");
            json::str(out, version);
        }
        json::key(out, "latency_us");
        json::num(out, json::micros(self.latency));
        if let Some(n) = self.bytes_in {
            json::key(out, "bytes_in");
            json::num(out, n);
        }
        if let Some(n) = self.bytes_out {
            json::key(out, "bytes_out");
            json::num(out, n);
        }
        out.push(b'}');
    }
}

/// What happened to a connection the gateway did not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionOutcome {
    /// Closed by a rule or limit (OCSF activity 5, Refuse).
    Refused,
    /// The TLS handshake failed or timed out (OCSF activity 4, Fail).
    HandshakeFailed,
}

/// One connection refused before or at TLS, as the audit trail records it.
#[derive(Debug, Clone)]
pub struct ConnectionEvent<'a> {
    pub time: SystemTime,
    /// The client's address (the one a load balancer's PROXY header named, if any)…
    pub remote: IpAddr,
    /// …and port, when known.
    pub port: Option<u16>,
    /// The load balancer the connection came through.
    pub via: Option<SocketAddr>,
    /// The client's SPIFFE ID, when its handshake got that far.
    pub peer: Option<&'a str>,
    pub outcome: ConnectionOutcome,
    /// Which rule or limit (`network_deny`, `max_connections_per_ip`, `tls_handshake`, …).
    pub reason: &'a str,
    /// Where: `at accept`, `before TLS`, `during TLS`, `after the handshake`.
    pub stage: &'a str,
    /// More words about it (the TLS alert, say), never a secret.
    pub detail: Option<&'a str>,
}

/// The OCSF class and activity members a connection record (or a summary of them) starts
/// with, and the comma after them.
fn network_activity(out: &mut Vec<u8>, outcome: ConnectionOutcome) {
    let (activity, name) = match outcome {
        ConnectionOutcome::Refused => (5, "Refuse"),
        ConnectionOutcome::HandshakeFailed => (4, "Fail"),
    };
    out.extend_from_slice(b"\"class_uid\":4001,\"class_name\":\"Network Activity\",\"category_uid\":4,\"category_name\":\"Network Activity\",\"activity_id\":");
    json::num(out, activity);
    json::key(out, "activity_name");
    json::str(out, name);
    json::key(out, "type_uid");
    json::num(out, 400_100 + activity);
    out.push(b',');
}

impl ConnectionEvent<'_> {
    /// Appends the record's members (no braces) to `out`.
    pub fn write_members(&self, out: &mut Vec<u8>) {
        network_activity(out, self.outcome);
        time(out, self.time);
        // A peer turned away, like a denied request.
        Severity::Low.write(out);
        out.extend_from_slice(b",\"status_id\":2,\"status\":\"Failure\"");
        json::key(out, "status_detail");
        json::str(out, self.reason);
        metadata(out, None);
        endpoint(out, "src_endpoint", self.remote, self.port);
        let (peer, peer_cut) = capped_opt(self.peer, MAX_IDENTITY);
        let (detail, detail_cut) = capped_opt(self.detail, MAX_DETAIL);
        if let Some(peer) = peer {
            json::key(out, "actor");
            out.extend_from_slice(b"{\"user\":{\"uid\":");
            json::str(out, peer);
            out.extend_from_slice(b"}}");
        }
        json::key(out, "unmapped");
        out.extend_from_slice(b"{\"stage\":");
        json::str(out, self.stage);
        if let Some(via) = self.via {
            json::key(out, "via");
            let _ = write!(out, "\"{via}\"");
        }
        if let Some(d) = detail {
            json::key(out, "detail");
            json::str(out, d);
        }
        if detail_cut {
            out.extend_from_slice(b",\"detail_truncated\":true");
        }
        if peer_cut {
            out.extend_from_slice(b",\"peer_truncated\":true");
        }
        out.push(b'}');
    }
}

/// Refused connections of one kind (outcome, reason, stage) that were not recorded one by
/// one, counted over `start`..`end`: an OCSF Network Activity aggregated with `count`,
/// `start_time` and `end_time`, and no address. The gateway writes one when refusals come
/// faster than it records them singly, so that a flood cannot fill the trail's disk and
/// still no refusal goes unaccounted.
#[derive(Debug, Clone)]
pub struct ConnectionSummary<'a> {
    pub start: SystemTime,
    pub end: SystemTime,
    pub outcome: ConnectionOutcome,
    /// As [`ConnectionEvent::reason`].
    pub reason: &'a str,
    /// As [`ConnectionEvent::stage`].
    pub stage: &'a str,
    /// How many refusals of this kind came in the interval and have no record of their own.
    pub count: u64,
}

impl ConnectionSummary<'_> {
    /// Appends the record's members (no braces) to `out`.
    pub fn write_members(&self, out: &mut Vec<u8>) {
        network_activity(out, self.outcome);
        time(out, self.end);
        json::key(out, "start_time");
        json::num(out, json::millis(self.start));
        json::key(out, "end_time");
        json::num(out, json::millis(self.end));
        json::key(out, "count");
        json::num(out, self.count);
        Severity::Low.write(out);
        out.extend_from_slice(b",\"status_id\":2,\"status\":\"Failure\"");
        json::key(out, "status_detail");
        json::str(out, self.reason);
        metadata(out, None);
        json::key(out, "unmapped");
        out.extend_from_slice(b"{\"stage\":");
        json::str(out, self.stage);
        out.extend_from_slice(b",\"summary\":true}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    pub(crate) fn activity<'a>(request_id: &'a str, path: &'a str) -> ApiActivity<'a> {
        ApiActivity {
            time: UNIX_EPOCH + Duration::from_millis(1_795_452_348_053),
            request_id,
            uid: None,
            peer: Some("spiffe://example.org/ns/kyc/sa/onboarding"),
            caller: Some("apikey:partner"),
            auth_layers: AuthLayers {
                mtls: true,
                api_key: true,
                jwt: false,
                jwt_svid: false,
            },
            remote: "[::ffff:10.0.0.7]:51234".parse().unwrap(),
            method: "GET",
            version: "HTTP/1.1",
            route: "decision",
            path: Some(path),
            template: Some("/v3/session/{session_id}/decision/"),
            status: 200,
            upstream: Some("didit"),
            upstream_status: Some(200),
            upstream_latency: Some(Duration::from_micros(1200)),
            credential: Some(("didit", "3")),
            decision: Decision::Allowed,
            latency: Duration::from_micros(2548),
            bytes_in: None,
            bytes_out: Some(512),
        }
    }

    fn parse(members: &[u8]) -> serde_json::Value {
        let mut obj = b"{".to_vec();
        obj.extend_from_slice(members);
        obj.push(b'}');
        serde_json::from_slice(&obj).unwrap()
    }

    #[test]
    fn endpoints_write_addresses_as_their_display_does() {
        for ip in [
            "0.0.0.0",
            "10.0.0.7",
            "255.255.255.255",
            "192.168.100.1",
            "::1",
            "2001:db8::17",
            "::ffff:10.9.8.7",
            "fe80::1:2:3:4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = Vec::new();
            endpoint(&mut out, "e", ip, Some(443));
            let want = format!(",\"e\":{{\"ip\":\"{}\",\"port\":443}}", ip.to_canonical());
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    #[test]
    fn a_jwt_svid_caller_is_recorded_with_its_layer() {
        let mut a = activity("rid-2", "/v3/session/{session_id}/decision/");
        a.peer = None;
        a.caller = Some("jwt-svid:spiffe://example.org/ns/kyc/sa/onboarding");
        a.auth_layers = AuthLayers {
            jwt_svid: true,
            ..AuthLayers::default()
        };
        let mut out = Vec::new();
        a.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(
            v["actor"]["user"]["uid"],
            "jwt-svid:spiffe://example.org/ns/kyc/sa/onboarding"
        );
        assert_eq!(
            v["unmapped"]["auth_layers"],
            serde_json::json!(["jwt_svid"])
        );
    }

    #[test]
    fn an_api_record_is_ocsf_api_activity() {
        let mut out = Vec::new();
        activity("rid-1", "/v3/session/{session_id}/decision/").write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["class_uid"], 6003);
        assert_eq!(v["type_uid"], 600302);
        assert_eq!(v["time"], 1_795_452_348_053_u64);
        assert_eq!(v["time_dt"], "2026-11-23T16:45:48.053Z");
        assert_eq!(v["severity_id"], 1);
        assert_eq!(v["status_id"], 1);
        assert_eq!(v["status_code"], "200");
        assert_eq!(v["metadata"]["uid"], "rid-1");
        assert_eq!(v["metadata"]["version"], OCSF_VERSION);
        assert_eq!(v["actor"]["user"]["uid"], "apikey:partner");
        assert_eq!(v["src_endpoint"]["ip"], "10.0.0.7");
        assert_eq!(v["api"]["operation"], "decision");
        assert_eq!(v["api"]["service"]["name"], "didit");
        assert_eq!(
            v["http_request"]["url"]["path"],
            "/v3/session/{session_id}/decision/"
        );
        assert_eq!(v["http_response"]["code"], 200);
        assert_eq!(
            v["unmapped"]["auth_layers"],
            serde_json::json!(["mtls", "api_key"])
        );
        assert_eq!(v["unmapped"]["credential_version"], "3");
        assert_eq!(v["unmapped"]["bytes_out"], 512);
        assert!(v["unmapped"].get("bytes_in").is_none());
    }

    #[test]
    fn a_refusal_is_a_failure_with_its_reason_and_long_paths_are_cut() {
        let long = format!("/x/{}", "\u{e9}".repeat(MAX_PATH));
        let mut a = activity("rid-2", &long);
        a.decision = Decision::Denied("forbidden");
        a.status = 403;
        a.method = "DELETE";
        let mut out = Vec::new();
        a.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["status_id"], 2);
        assert_eq!(v["status_detail"], "denied:forbidden");
        assert_eq!(v["activity_id"], 4);
        assert!(v["http_request"]["url"]["path"].as_str().unwrap().len() <= MAX_PATH);
        assert_eq!(v["unmapped"]["path_truncated"], true);
    }

    #[test]
    fn a_record_also_carries_the_gateways_own_id_when_the_caller_chose_the_request_id() {
        let mut a = activity("chosen-by-caller", "/v1/x");
        let mut out = Vec::new();
        a.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["metadata"]["uid"], "chosen-by-caller");
        assert!(v["unmapped"].get("gateway_request_id").is_none());
        a.uid = Some("0f0e0d0c0b0a09080706050403020100");
        let mut out = Vec::new();
        a.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["metadata"]["uid"], "chosen-by-caller");
        assert_eq!(v["api"]["request"]["uid"], "chosen-by-caller");
        assert_eq!(
            v["unmapped"]["gateway_request_id"],
            "0f0e0d0c0b0a09080706050403020100"
        );
    }

    #[test]
    fn a_hostile_method_request_id_caller_and_peer_are_cut_and_marked() {
        // A 300,000-byte method once made a 301 KB entry that `verify` could never read past.
        let method = "X".repeat(300_000);
        let request_id = "r".repeat(1000);
        let caller = format!("sub:{}", "\u{1}".repeat(100_000));
        let peer = format!("spiffe://example.org/{}", "\u{e9}".repeat(100_000));
        let mut a = activity(&request_id, "/v1/x");
        a.method = &method;
        a.caller = Some(&caller);
        a.peer = Some(&peer);
        let mut out = Vec::new();
        a.write_members(&mut out);
        // Control characters are escaped six bytes each: still far below a line.
        assert!(out.len() < 64 * 1024, "{} bytes", out.len());
        let v = parse(&out);
        assert_eq!(v["http_request"]["http_method"], "X".repeat(MAX_METHOD));
        assert_eq!(v["activity_id"], 99);
        assert_eq!(v["metadata"]["uid"].as_str().unwrap().len(), MAX_REQUEST_ID);
        assert_eq!(v["api"]["request"]["uid"], v["metadata"]["uid"]);
        assert!(v["actor"]["user"]["uid"].as_str().unwrap().len() <= MAX_IDENTITY);
        let kept_peer = v["unmapped"]["peer"].as_str().unwrap();
        assert!(kept_peer.len() <= MAX_IDENTITY && peer.starts_with(kept_peer));
        for flag in [
            "method_truncated",
            "request_id_truncated",
            "caller_truncated",
            "peer_truncated",
        ] {
            assert_eq!(v["unmapped"][flag], true, "{flag}");
        }
        assert!(v["unmapped"].get("path_truncated").is_none());
        // Values within their bounds are kept whole and unmarked.
        let mut plain = Vec::new();
        activity("rid-1", "/v1/x").write_members(&mut plain);
        let v = parse(&plain);
        assert_eq!(v["http_request"]["http_method"], "GET");
        assert!(
            v["unmapped"]
                .as_object()
                .unwrap()
                .keys()
                .all(|k| !k.ends_with("_truncated"))
        );
    }

    #[test]
    fn a_refused_connections_peer_and_detail_are_cut_and_marked() {
        let peer = format!("spiffe://example.org/{}", "p".repeat(100_000));
        let detail = "\u{1}".repeat(10_000);
        let e = ConnectionEvent {
            time: UNIX_EPOCH,
            remote: "192.0.2.1".parse().unwrap(),
            port: None,
            via: None,
            peer: Some(&peer),
            outcome: ConnectionOutcome::Refused,
            reason: "max_connections_per_identity",
            stage: "after the handshake",
            detail: Some(&detail),
        };
        let mut out = Vec::new();
        e.write_members(&mut out);
        assert!(out.len() < 16 * 1024, "{} bytes", out.len());
        let v = parse(&out);
        assert_eq!(
            v["actor"]["user"]["uid"].as_str().unwrap().len(),
            MAX_IDENTITY
        );
        assert_eq!(v["unmapped"]["detail"].as_str().unwrap().len(), MAX_DETAIL);
        assert_eq!(v["unmapped"]["peer_truncated"], true);
        assert_eq!(v["unmapped"]["detail_truncated"], true);
    }

    #[test]
    fn an_answer_from_a_fallback_is_a_success_with_its_reason() {
        let mut a = activity("rid-3", "/v3/workflows/");
        a.decision = Decision::AllowedBy("fallback:cache");
        let mut out = Vec::new();
        a.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["status_id"], 1);
        assert_eq!(v["status_detail"], "allowed:fallback:cache");
    }

    #[test]
    fn a_request_left_before_the_gateway_decided_is_a_failure_and_never_allowed() {
        let mut a = activity("rid-5", "/v3/workflows/");
        a.decision = Decision::Undecided("client-closed");
        a.status = 499;
        let mut out = Vec::new();
        a.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["status_id"], 2);
        assert_eq!(v["status_detail"], "undecided:client-closed");
        assert_eq!(v["severity_id"], 1);
    }

    #[test]
    fn the_severity_follows_the_outcome() {
        let severity = |decision, status| {
            let mut a = activity("rid-4", "/v3/workflows/");
            a.decision = decision;
            a.status = status;
            let mut out = Vec::new();
            a.write_members(&mut out);
            let v = parse(&out);
            (v["severity_id"].as_u64().unwrap(), v["severity"].clone())
        };
        assert_eq!(
            severity(Decision::Allowed, 200),
            (1, "Informational".into())
        );
        assert_eq!(
            severity(Decision::AllowedBy("fallback:cache"), 200),
            (1, "Informational".into())
        );
        assert_eq!(
            severity(Decision::Allowed, 404),
            (1, "Informational".into()),
            "the upstream's own answer"
        );
        assert_eq!(
            severity(Decision::Denied("forbidden"), 403),
            (2, "Low".into())
        );
        assert_eq!(
            severity(Decision::Denied("rate-limited"), 429),
            (2, "Low".into())
        );
        assert_eq!(
            severity(Decision::Failed("upstream-timeout"), 504),
            (3, "Medium".into())
        );
        assert_eq!(
            severity(Decision::Allowed, 502),
            (3, "Medium".into()),
            "the upstream failed it"
        );
        for outcome in [
            ConnectionOutcome::Refused,
            ConnectionOutcome::HandshakeFailed,
        ] {
            let e = ConnectionEvent {
                time: UNIX_EPOCH,
                remote: "192.0.2.1".parse().unwrap(),
                port: None,
                via: None,
                peer: None,
                outcome,
                reason: "max_connections_per_ip",
                stage: "at accept",
                detail: None,
            };
            let mut out = Vec::new();
            e.write_members(&mut out);
            let v = parse(&out);
            assert_eq!(
                (v["severity_id"].as_u64(), v["severity"].as_str()),
                (Some(2), Some("Low"))
            );
        }
    }

    #[test]
    fn a_summary_of_refused_connections_is_aggregated_network_activity_without_an_address() {
        let s = ConnectionSummary {
            start: UNIX_EPOCH + Duration::from_millis(1_795_452_348_053),
            end: UNIX_EPOCH + Duration::from_millis(1_795_452_349_060),
            outcome: ConnectionOutcome::HandshakeFailed,
            reason: "tls_handshake",
            stage: "during TLS",
            count: 4321,
        };
        let mut out = Vec::new();
        s.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["class_uid"], 4001);
        assert_eq!(v["type_uid"], 400104);
        assert_eq!(v["count"], 4321);
        assert_eq!(v["start_time"], 1_795_452_348_053_u64);
        assert_eq!(v["end_time"], 1_795_452_349_060_u64);
        assert_eq!(v["time"], v["end_time"]);
        assert_eq!(v["status_detail"], "tls_handshake");
        assert_eq!(v["unmapped"]["stage"], "during TLS");
        assert_eq!(v["unmapped"]["summary"], true);
        assert!(v.get("src_endpoint").is_none() && v.get("actor").is_none());
    }

    #[test]
    fn a_refused_connection_is_ocsf_network_activity() {
        let e = ConnectionEvent {
            time: UNIX_EPOCH,
            remote: "192.0.2.1".parse().unwrap(),
            port: Some(4000),
            via: Some("10.0.0.1:443".parse().unwrap()),
            peer: None,
            outcome: ConnectionOutcome::HandshakeFailed,
            reason: "tls_handshake",
            stage: "during TLS",
            detail: Some("peer sent no certificates"),
        };
        let mut out = Vec::new();
        e.write_members(&mut out);
        let v = parse(&out);
        assert_eq!(v["class_uid"], 4001);
        assert_eq!(v["type_uid"], 400104);
        assert_eq!(v["status_detail"], "tls_handshake");
        assert_eq!(v["unmapped"]["via"], "10.0.0.1:443");
        assert!(v["metadata"].get("uid").is_none());
    }
}
