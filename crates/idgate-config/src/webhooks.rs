//! Provider webhooks: `[[webhooks]]`, one endpoint per provider account (its path, signature
//! scheme, secrets, timestamp tolerance and source addresses) with its outbox (encryption
//! key, retries, retention), and `[[webhooks.subscribers]]`, the services each verified
//! event is delivered to.
//!
//! Secrets are references, read when the configuration is put into use. A webhook's path is
//! the gateway's own: it may not be a route's, nor the token endpoint's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use idgate_secrets::SecretRef;
use ipnet::IpNet;
use serde::Deserialize;

use crate::context::Ctx;
use crate::{RouteConfig, StateBackend, auth, fold_template, network, parse_duration};

/// How old a signed timestamp may be, unless the webhook says otherwise.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
/// The largest event body taken, unless the webhook says otherwise.
pub const DEFAULT_WEBHOOK_BODY: u64 = 1024 * 1024;
/// No webhook takes a larger body: provider events are small JSON documents.
const MAX_WEBHOOK_BODY: u64 = 16 * 1024 * 1024;
/// The most subscribers one webhook may have.
const MAX_SUBSCRIBERS: usize = 32;
/// The most event types one subscriber's filter may name.
const MAX_EVENT_TYPES: usize = 64;
/// The most keys in an `event_time` field's path.
const MAX_EVENT_TIME_DEPTH: usize = 8;

/// `[[webhooks]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Letters, digits, `_` and `-`: it names the webhook's queues, metrics and CLI ids.
    pub name: String,
    /// The exact path providers post to (no template).
    pub path: String,
    pub scheme: WebhookScheme,
    /// For `didit-v2`: which canonical form `X-Signature-V2` signs (`unescaped`, `ascii`,
    /// `timestamp:unescaped`, `timestamp:ascii`; the verifier's default when absent). Read
    /// when the configuration is put into use.
    pub v2_form: Option<String>,
    /// For `sumsub`: whether `HMAC_SHA1_HEX` digests are taken.
    pub allow_sha1: bool,
    /// The signing secret, then the previous one while a rotation is under way.
    pub secrets: Vec<SecretRef>,
    /// How far a signed timestamp may be from the gateway's clock (and, with
    /// `event_time`, how far ahead of it an event's own time may be).
    pub tolerance: Duration,
    /// How long an event's replay key is remembered; `None` for the default: twice the
    /// tolerance for a scheme that signs a timestamp, 30 days for one that does not. Where
    /// a time is checked (a signed timestamp, or `event_time`) it is at least twice the
    /// tolerance, so that no event still young enough to be taken outlives its key.
    pub replay_window: Option<Duration>,
    /// For `sumsub`, `veriff` and `onfido`, which sign no timestamp: where the signed body
    /// holds the event's own time, so that events older than the replay window are refused
    /// as stale. `None`: no time is read (none is documented for these providers), and a
    /// replay is recognised only while its key is remembered.
    pub event_time: Option<EventTimeConfig>,
    /// When not empty, only these source networks may post (compared canonically).
    pub source_cidrs: Vec<IpNet>,
    pub max_body_bytes: u64,
    /// The AES-256-GCM key of the outbox at rest, then older keys still to be read.
    pub outbox_keys: Vec<SecretRef>,
    pub retry: RetryPolicy,
    /// How long one delivery attempt may take, connecting included.
    pub delivery_timeout: Duration,
    /// How long a delivered event is kept (for `idgate webhooks show` and `replay`); zero
    /// for not at all.
    pub retention: Duration,
    /// How long a dead letter is kept past the event's maximum age.
    pub dead_letter_retention: Duration,
    pub subscribers: Vec<SubscriberConfig>,
}

/// A provider's signature scheme (see `docs/webhooks.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookScheme {
    /// Didit `X-Signature`: HMAC-SHA256 of the raw body.
    Didit,
    /// Didit `X-Signature-V2`: HMAC-SHA256 of the body's canonical JSON.
    DiditV2,
    /// Didit `X-Signature-Simple`: HMAC-SHA256 of `timestamp:session_id:status:webhook_type`.
    DiditSimple,
    /// Sumsub `X-Payload-Digest` with `X-Payload-Digest-Alg`.
    Sumsub,
    /// Veriff `X-HMAC-SIGNATURE`.
    Veriff,
    /// Onfido `X-SHA2-Signature`.
    Onfido,
    /// Persona `Persona-Signature: t=…,v1=…`.
    Persona,
}

impl WebhookScheme {
    pub const NAMES: [&'static str; 7] = [
        "didit",
        "didit-v2",
        "didit-simple",
        "sumsub",
        "veriff",
        "onfido",
        "persona",
    ];

    /// Whether the provider signs a timestamp the verifier checks against the tolerance
    /// (Didit's body `timestamp`, Persona's `t`).
    pub fn signs_timestamp(self) -> bool {
        matches!(
            self,
            Self::Didit | Self::DiditV2 | Self::DiditSimple | Self::Persona
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Didit => "didit",
            Self::DiditV2 => "didit-v2",
            Self::DiditSimple => "didit-simple",
            Self::Sumsub => "sumsub",
            Self::Veriff => "veriff",
            Self::Onfido => "onfido",
            Self::Persona => "persona",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Didit,
            Self::DiditV2,
            Self::DiditSimple,
            Self::Sumsub,
            Self::Veriff,
            Self::Onfido,
            Self::Persona,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
}

/// `event_time = { field = "…", format = "…" }`: a field of the signed body holding the
/// event's own time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeConfig {
    /// The path of object keys to the field (`"payload.timestamp"` is `["payload",
    /// "timestamp"]`).
    pub field: Vec<String>,
    pub format: EventTimeFormat,
}

/// How an `event_time` field writes the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTimeFormat {
    /// A JSON integer: seconds since the Unix epoch.
    Unix,
    /// A JSON integer: milliseconds since the Unix epoch.
    UnixMillis,
    /// A string, RFC 3339 with its offset: `2026-05-04T10:20:30Z`, `…30.5+02:00`.
    Rfc3339,
    /// A string `YYYY-MM-DD HH:MM:SS[.fff]` (or with `T`) without an offset, in UTC.
    NaiveUtc,
}

impl EventTimeFormat {
    pub const NAMES: [&'static str; 4] = ["unix", "unix_ms", "rfc3339", "naive_utc"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Unix => "unix",
            Self::UnixMillis => "unix_ms",
            Self::Rfc3339 => "rfc3339",
            Self::NaiveUtc => "naive_utc",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Unix, Self::UnixMillis, Self::Rfc3339, Self::NaiveUtc]
            .into_iter()
            .find(|f| f.name() == s)
    }
}

/// When a failed delivery is tried again: a delay drawn at random up to `base` doubled for
/// each earlier attempt (at most `max`), until the event is `max_age` old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[[webhooks.subscribers]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberConfig {
    /// Letters, digits, `_` and `-`, unique within its webhook.
    pub name: String,
    /// `https://`, or `http://` to a loopback address.
    pub url: Uri,
    /// The key of the `idgate-signature` HMAC the subscriber checks.
    pub secret: SecretRef,
    /// An index into `[masking]`'s profiles, applied to each event before it is sent.
    pub masking: Option<usize>,
    /// The event types delivered; empty for every type.
    pub events: Vec<String>,
    /// Extra roots for the subscriber's certificate (a private CA, the SPIFFE bundle).
    pub ca: Option<PathBuf>,
}

impl SubscriberConfig {
    /// Whether an event of `event_type` goes to this subscriber (an event without a type
    /// goes only to subscribers of every type).
    pub fn wants(&self, event_type: Option<&str>) -> bool {
        self.events.is_empty() || event_type.is_some_and(|t| self.events.iter().any(|e| e == t))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    name: String,
    path: String,
    scheme: String,
    #[serde(default)]
    v2_form: Option<String>,
    #[serde(default)]
    allow_sha1: Option<bool>,
    secret: String,
    #[serde(default)]
    previous_secret: Option<String>,
    #[serde(default)]
    tolerance: Option<String>,
    #[serde(default)]
    replay_window: Option<String>,
    #[serde(default)]
    event_time: Option<RawEventTime>,
    #[serde(default)]
    source_cidrs: Vec<String>,
    #[serde(default)]
    max_body_bytes: Option<i64>,
    outbox_key: String,
    #[serde(default)]
    outbox_previous_keys: Vec<String>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    delivery_timeout: Option<String>,
    #[serde(default)]
    retention: Option<String>,
    #[serde(default)]
    dead_letter_retention: Option<String>,
    #[serde(default)]
    subscribers: Vec<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    max: Option<String>,
    #[serde(default)]
    max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEventTime {
    field: String,
    format: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubscriber {
    name: String,
    url: String,
    secret: String,
    #[serde(default)]
    masking: Option<String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    ca: Option<String>,
}

/// What webhooks are checked against: the routes (whose paths they may not take), whether
/// the token endpoint is on, the masking profiles that loaded (and those that did not), and
/// the `[state]` backend their outbox and replay keys are kept in.
pub(crate) struct Neighbours<'a> {
    pub(crate) routes: &'a [RouteConfig],
    pub(crate) token_endpoint: bool,
    pub(crate) profiles: &'a crate::masking::ProfileNames,
    pub(crate) state: &'a StateBackend,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A duration that may be zero (`"0s"`).
fn duration_or_zero(cx: &mut Ctx<'_>, key: &str, v: Option<String>, default: Duration) -> Duration {
    match v {
        None => default,
        Some(s) => parse_duration(&s).unwrap_or_else(|e| {
            cx.err(key, e.to_string());
            default
        }),
    }
}

pub(crate) fn section(
    cx: &mut Ctx<'_>,
    items: Vec<(usize, RawWebhook)>,
    around: &Neighbours<'_>,
) -> Vec<WebhookConfig> {
    let mut out: Vec<WebhookConfig> = Vec::new();
    for (i, w) in items {
        let key = format!("webhooks[{i}]");
        let before = cx.errors.len();
        if !is_name(&w.name) {
            cx.err(
                format!("{key}.name"),
                "a webhook name is 1 to 64 letters, digits, '_' and '-'",
            );
        } else if out.iter().any(|o| o.name == w.name) {
            cx.err(
                format!("{key}.name"),
                format!("another webhook is named \"{}\"", w.name),
            );
        }
        check_path(cx, &format!("{key}.path"), &w.path, around);
        if let Some(other) = out.iter().find(|o| o.path == w.path) {
            cx.err(
                format!("{key}.path"),
                format!("webhook \"{}\" already takes {}", other.name, w.path),
            );
        }
        let scheme = WebhookScheme::parse(&w.scheme).unwrap_or_else(|| {
            cx.err(
                format!("{key}.scheme"),
                format!(
                    "\"{}\" is not a webhook scheme: write {}",
                    w.scheme,
                    WebhookScheme::NAMES.join(", ")
                ),
            );
            WebhookScheme::Didit
        });
        if w.v2_form.is_some() && scheme != WebhookScheme::DiditV2 {
            cx.err(
                format!("{key}.v2_form"),
                "is for scheme = \"didit-v2\" only",
            );
        }
        if w.allow_sha1.is_some() && scheme != WebhookScheme::Sumsub {
            cx.err(
                format!("{key}.allow_sha1"),
                "is for scheme = \"sumsub\" only",
            );
        }
        let mut secrets: Vec<SecretRef> = auth::available(cx, &format!("{key}.secret"), &w.secret)
            .into_iter()
            .collect();
        if let Some(p) = &w.previous_secret {
            secrets.extend(auth::available(cx, &format!("{key}.previous_secret"), p));
        }
        let tolerance = cx.duration(&format!("{key}.tolerance"), w.tolerance, DEFAULT_TOLERANCE);
        let event_time = w
            .event_time
            .and_then(|t| event_time(cx, &format!("{key}.event_time"), scheme, t));
        let replay_window = w.replay_window.map(|s| {
            let unread = cx.errors.len();
            let window = cx.duration(&format!("{key}.replay_window"), Some(s), DEFAULT_TOLERANCE);
            // A window that did not parse has its own error.
            let read = cx.errors.len() == unread;
            if read && (scheme.signs_timestamp() || event_time.is_some()) {
                check_replay_window(cx, &format!("{key}.replay_window"), window, tolerance);
            }
            window
        });
        // A broken [state] has its own errors (and reads as the memory backend).
        let state_broken = cx
            .errors
            .iter()
            .any(|e| e.key == "state" || e.key.starts_with("state."));
        if *around.state == StateBackend::Memory && !state_broken {
            cx.err(
                key.clone(),
                "[state] is the in-memory backend (backend = \"memory\", the default), which loses the outbox and the replay keys at exit: providers would be answered 2xx for events a restart drops, and replays taken again after it; set [state] backend = \"redb\" (one machine) or \"redis\" (replicas)",
            );
        }
        let source_cidrs = network::cidr_list(cx, &format!("{key}.source_cidrs"), &w.source_cidrs);
        let max_body_bytes = match w.max_body_bytes {
            None => DEFAULT_WEBHOOK_BODY,
            Some(n) => match u64::try_from(n) {
                Ok(n @ 1..=MAX_WEBHOOK_BODY) => n,
                _ => {
                    cx.err(
                        format!("{key}.max_body_bytes"),
                        format!("must be between 1 and {MAX_WEBHOOK_BODY}"),
                    );
                    DEFAULT_WEBHOOK_BODY
                }
            },
        };
        let mut outbox_keys: Vec<SecretRef> =
            auth::available(cx, &format!("{key}.outbox_key"), &w.outbox_key)
                .into_iter()
                .collect();
        for (n, k) in w.outbox_previous_keys.iter().enumerate() {
            outbox_keys.extend(auth::available(
                cx,
                &format!("{key}.outbox_previous_keys[{n}]"),
                k,
            ));
        }
        let retry = retry(cx, &key, w.retry);
        let delivery_timeout = cx.duration(
            &format!("{key}.delivery_timeout"),
            w.delivery_timeout,
            Duration::from_secs(10),
        );
        let retention = duration_or_zero(
            cx,
            &format!("{key}.retention"),
            w.retention,
            Duration::from_secs(7 * 24 * 3600),
        );
        let dead_letter_retention = duration_or_zero(
            cx,
            &format!("{key}.dead_letter_retention"),
            w.dead_letter_retention,
            Duration::from_secs(30 * 24 * 3600),
        );
        let subscribers = subscribers(cx, &key, w.subscribers, around);
        if cx.errors.len() == before {
            out.push(WebhookConfig {
                name: w.name,
                path: w.path,
                scheme,
                v2_form: w.v2_form,
                allow_sha1: w.allow_sha1.unwrap_or(false),
                secrets,
                tolerance,
                replay_window,
                event_time,
                source_cidrs,
                max_body_bytes,
                outbox_keys,
                retry,
                delivery_timeout,
                retention,
                dead_letter_retention,
                subscribers,
            });
        }
    }
    out
}

/// A replay window shorter than twice the tolerance would forget an event's key while a copy
/// of it is still young enough to be accepted: an event is taken while its time is within
/// the tolerance on either side of the clock.
fn check_replay_window(cx: &mut Ctx<'_>, key: &str, window: Duration, tolerance: Duration) {
    let least = tolerance.saturating_mul(2);
    if window < least {
        cx.err(
            key,
            format!(
                "is {}s, shorter than twice the tolerance ({}s): an event is accepted while its time is within the tolerance on either side of the clock, so a captured one would be accepted again once its replay key is forgotten; make it at least \"{}s\"",
                window.as_secs(),
                least.as_secs(),
                least.as_secs()
            ),
        );
    }
}

/// `event_time`: only for the schemes that sign no timestamp (the others have a signed one);
/// a dotted path of plain keys, and a format by name.
fn event_time(
    cx: &mut Ctx<'_>,
    key: &str,
    scheme: WebhookScheme,
    raw: RawEventTime,
) -> Option<EventTimeConfig> {
    if scheme.signs_timestamp() {
        cx.err(
            key,
            format!(
                "is for scheme = \"sumsub\", \"veriff\" or \"onfido\" only: \"{}\" signs its own timestamp",
                scheme.name()
            ),
        );
        return None;
    }
    let field: Vec<String> = raw.field.split('.').map(str::to_owned).collect();
    let field_ok = field.len() <= MAX_EVENT_TIME_DEPTH && field.iter().all(|k| is_name(k));
    if !field_ok {
        cx.err(
            format!("{key}.field"),
            format!(
                "must be a dotted path of 1 to {MAX_EVENT_TIME_DEPTH} object keys of letters, digits, '_' and '-', like \"payload.timestamp\""
            ),
        );
    }
    let format = EventTimeFormat::parse(&raw.format);
    if format.is_none() {
        cx.err(
            format!("{key}.format"),
            format!(
                "\"{}\" is not a time format: write {}",
                raw.format,
                EventTimeFormat::NAMES.join(", ")
            ),
        );
    }
    match (field_ok, format) {
        (true, Some(format)) => Some(EventTimeConfig { field, format }),
        _ => None,
    }
}

/// A webhook's path: absolute, literal, and nobody else's.
fn check_path(cx: &mut Ctx<'_>, key: &str, path: &str, around: &Neighbours<'_>) {
    if !path.starts_with('/') || path == "/" {
        cx.err(
            key,
            "must be an absolute path below /, like \"/webhooks/didit\"",
        );
        return;
    }
    if path.contains(['{', '}', '?', '#']) {
        cx.err(
            key,
            "is matched exactly: no {parameters}, query or fragment",
        );
        return;
    }
    if around.token_endpoint
        && matches!(
            path,
            "/oauth2/token" | "/.well-known/jwks.json" | "/.well-known/oauth-authorization-server"
        )
    {
        cx.err(
            key,
            format!("{path} is served by the built-in [token_endpoint]; pick another path"),
        );
        return;
    }
    // A route whose template would take the path loses those requests to the webhook,
    // which is matched first: refused, so that no route is shadowed in silence.
    for r in around.routes {
        let mut exact = matchit::Router::new();
        let mut taken = exact.insert(r.path.as_str(), ()).is_ok() && exact.at(path).is_ok();
        if !taken && r.case_insensitive {
            let mut folded = matchit::Router::new();
            taken = folded.insert(fold_template(&r.path), ()).is_ok()
                && folded.at(&path.to_ascii_lowercase()).is_ok();
        }
        if taken {
            cx.err(
                key,
                format!(
                    "route \"{}\" ({}) takes {path} too; give the webhook a path no route matches",
                    r.name, r.path
                ),
            );
        }
    }
}

fn retry(cx: &mut Ctx<'_>, key: &str, raw: Option<RawRetry>) -> RetryPolicy {
    let d = RetryPolicy::default();
    let Some(r) = raw else { return d };
    let base = cx.duration(&format!("{key}.retry.base"), r.base, d.base);
    let max = cx.duration(&format!("{key}.retry.max"), r.max, d.max);
    let max_age = cx.duration(&format!("{key}.retry.max_age"), r.max_age, d.max_age);
    if max < base {
        cx.err(format!("{key}.retry.max"), "must be at least retry.base");
    }
    RetryPolicy { base, max, max_age }
}

fn subscribers(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: Vec<toml::Value>,
    around: &Neighbours<'_>,
) -> Vec<SubscriberConfig> {
    if raw.is_empty() {
        cx.err(
            format!("{key}.subscribers"),
            "missing: add [[webhooks.subscribers]] with the services events go to",
        );
    } else if raw.len() > MAX_SUBSCRIBERS {
        cx.err(
            format!("{key}.subscribers"),
            format!("has {} subscribers; at most {MAX_SUBSCRIBERS}", raw.len()),
        );
    }
    let mut out: Vec<SubscriberConfig> = Vec::new();
    for (n, v) in raw.into_iter().enumerate() {
        let skey = format!("{key}.subscribers[{n}]");
        let Some(s) = cx.section::<RawSubscriber>(&skey, v) else {
            continue;
        };
        let before = cx.errors.len();
        if !is_name(&s.name) {
            cx.err(
                format!("{skey}.name"),
                "a subscriber name is 1 to 64 letters, digits, '_' and '-'",
            );
        } else if out.iter().any(|o| o.name == s.name) {
            cx.err(
                format!("{skey}.name"),
                format!("another subscriber of this webhook is named \"{}\"", s.name),
            );
        }
        let url = subscriber_url(cx, &format!("{skey}.url"), &s.url);
        let secret = auth::available(cx, &format!("{skey}.secret"), &s.secret);
        let masking = s.masking.as_deref().and_then(|name| {
            let profiles = around.profiles;
            // A profile with errors of its own has failed the configuration already.
            if profiles.broken.iter().any(|b| b == name) {
                return None;
            }
            let found = profiles.loaded.iter().position(|p| p == name);
            if found.is_none() {
                cx.err(
                    format!("{skey}.masking"),
                    format!("no masking profile is named \"{name}\""),
                );
            }
            found
        });
        if s.events.len() > MAX_EVENT_TYPES {
            cx.err(
                format!("{skey}.events"),
                format!(
                    "names {} event types; at most {MAX_EVENT_TYPES}",
                    s.events.len()
                ),
            );
        }
        for (e, t) in s.events.iter().enumerate() {
            if t.is_empty() || t.len() > 128 || t.chars().any(char::is_control) {
                cx.err(
                    format!("{skey}.events[{e}]"),
                    "an event type is 1 to 128 characters without control characters",
                );
            }
        }
        let ca =
            s.ca.as_deref()
                .map(|p| cx.existing_file(&format!("{skey}.ca"), p));
        if let (Some(url), Some(secret), true) = (url, secret, cx.errors.len() == before) {
            out.push(SubscriberConfig {
                name: s.name,
                url,
                secret,
                masking,
                events: s.events,
                ca,
            });
        }
    }
    out
}

/// `https://` anywhere; `http://` only to this machine, so that no event crosses a network
/// in clear text.
fn subscriber_url(cx: &mut Ctx<'_>, key: &str, url: &str) -> Option<Uri> {
    let Ok(uri) = url.parse::<Uri>() else {
        // Not echoed: a password may have been pasted into it.
        cx.err(key, "is not a URL: write https://HOST[:PORT]/PATH");
        return None;
    };
    let loopback = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    let reason = match uri.scheme_str() {
        _ if uri.host().is_none() => Some("has no host"),
        Some("https") => None,
        Some("http") if loopback => None,
        Some("http") => Some("must be https:// (http:// only to a loopback address)"),
        _ => Some("must start with https://"),
    };
    let reason = reason.or_else(|| {
        (url.contains('@') || url.contains('#')).then_some("must not carry user info or a fragment")
    });
    match reason {
        Some(reason) => {
            cx.err(key, reason);
            None
        }
        None => Some(uri),
    }
}

#[cfg(test)]
#[path = "webhooks_tests.rs"]
mod tests;
