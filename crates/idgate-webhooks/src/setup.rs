//! Putting `[[webhooks]]` into use: each webhook's endpoint (its secrets, its outbox key,
//! which subscriber gets which event type) and every subscriber's delivery. Loading is
//! blocking (secrets and keys are read), and happens with every configuration snapshot:
//! at start-up, at each reload, and in `idgate check`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use idgate_config::{EventTimeConfig, EventTimeFormat, WebhookConfig, WebhookScheme};
use idgate_secrets::{ExposeSecret, SecretBox, SecretError};

use crate::delivery::{Plan, Subscriber, SubscriberError, SubscriberMask};
use crate::outbox::{KeyError, OutboxKeys};
use crate::verify::{self, EventTime, Rejected, Scheme, TimeFormat, UnknownName, V2Form, Verified};

/// How long a replay key is remembered for a scheme that signs no timestamp (Sumsub, Veriff,
/// Onfido), unless the webhook says otherwise. Without a signed time, a replay is
/// recognised only while its key is remembered, so this is long: far past the providers'
/// own retries (Sumsub's last is after 18 hours), and with `event_time` the age past which
/// an event is refused as stale (less the tolerance).
pub const UNTIMED_REPLAY_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// One webhook's endpoint, ready for the requests it gets.
pub struct Endpoint {
    pub name: Arc<str>,
    pub path: String,
    pub scheme: Scheme,
    /// The current secret, then the previous one during a rotation.
    secrets: Vec<SecretBox<[u8]>>,
    pub tolerance: Duration,
    /// How long an event's replay key is remembered.
    pub replay_window: Duration,
    /// For a scheme that signs no timestamp: where the signed body holds the event's own
    /// time, checked by [`Endpoint::verify`].
    pub event_time: Option<EventTime>,
    pub max_body_bytes: u64,
    pub keys: Arc<OutboxKeys>,
    /// Each subscriber's name and the event types it takes (none: every type).
    subscribers: Vec<(String, Vec<String>)>,
    /// The `retry.max_age` and `dead_letter_retention` of the subscribers, recorded with
    /// each event written for them (`delivery::record_written`).
    pub(crate) keep: (Duration, Duration),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("scheme", &self.scheme)
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Checks a provider's request: its signature and signed timestamp (`verify::verify`)
    /// and, where the webhook names one, the event's own time. That time must be no older
    /// than the replay window less the tolerance, and no further ahead than the tolerance:
    /// any copy of an event young enough to be accepted then arrives while the first one's
    /// replay key is still remembered.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Verified, Rejected> {
        let mut verified = verify::verify(
            &self.scheme,
            &self.secrets(),
            headers,
            body,
            now,
            self.tolerance,
        )?;
        // Only for schemes whose signature covers the whole body: the time read is signed.
        if let Some(spec) = &self.event_time
            && verified.body_signed
        {
            let window = verify::event_time::Window {
                now,
                max_age: self.replay_window.saturating_sub(self.tolerance),
                max_ahead: self.tolerance,
            };
            verified.timestamp = Some(verify::event_time::check(spec, body, window)?);
        }
        Ok(verified)
    }

    /// The secrets to check a signature with, the current one first.
    pub fn secrets(&self) -> Vec<&[u8]> {
        self.secrets.iter().map(|s| s.expose_secret()).collect()
    }

    /// The subscribers an event of `event_type` goes to.
    pub fn subscribers_for(&self, event_type: Option<&str>) -> Vec<&str> {
        self.subscribers
            .iter()
            .filter(|(_, events)| {
                events.is_empty() || event_type.is_some_and(|t| events.iter().any(|e| e == t))
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// The webhooks of one configuration: their endpoints (by index, as routes name them) and
/// the delivery plan of their subscribers.
#[derive(Debug, Default)]
pub struct Webhooks {
    /// Shared, so that a large body's verification can run on a blocking thread.
    pub endpoints: Vec<Arc<Endpoint>>,
    pub plan: Arc<Plan>,
}

/// A webhook setting that validated but cannot be put into use; `key` is under
/// `webhooks[i]`.
#[derive(Debug, thiserror::Error)]
#[error("webhook {webhook}: {problem}")]
pub struct SetupError {
    pub webhook: String,
    /// Dotted key path: `webhooks[0].subscribers[1].secret`.
    pub key: String,
    #[source]
    pub problem: SetupProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupProblem {
    #[error("v2_form: {0}")]
    V2Form(UnknownName),
    #[error("secret: {0}")]
    Secret(SecretError),
    #[error("outbox key: {0}")]
    OutboxKey(KeyError),
    #[error("subscriber {subscriber}: {source}")]
    Subscriber {
        subscriber: String,
        source: SubscriberError,
    },
}

impl Webhooks {
    /// Loads every webhook; `masks` gives the masking profile at an index of `[masking]`.
    pub fn load(
        configs: &[WebhookConfig],
        masks: impl Fn(usize) -> Option<SubscriberMask>,
    ) -> Result<Self, Vec<SetupError>> {
        let mut errors = Vec::new();
        let mut endpoints = Vec::new();
        let mut subscribers = Vec::new();
        for (i, w) in configs.iter().enumerate() {
            let error = |key: String, problem| SetupError {
                webhook: w.name.clone(),
                key,
                problem,
            };
            let mut secrets = Vec::new();
            for (n, s) in w.secrets.iter().enumerate() {
                match s.fetch() {
                    Ok(f) => secrets.push(f.value),
                    Err(e) => {
                        let key = if n == 0 { "secret" } else { "previous_secret" };
                        errors.push(error(
                            format!("webhooks[{i}].{key}"),
                            SetupProblem::Secret(e),
                        ));
                    }
                }
            }
            let scheme = match scheme(w) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(error(
                        format!("webhooks[{i}].v2_form"),
                        SetupProblem::V2Form(e),
                    ));
                    continue;
                }
            };
            let keys = match OutboxKeys::load(&w.outbox_keys) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    errors.push(error(
                        format!("webhooks[{i}].outbox_key"),
                        SetupProblem::OutboxKey(e),
                    ));
                    continue;
                }
            };
            for (n, s) in w.subscribers.iter().enumerate() {
                let mask = s.masking.and_then(&masks);
                match Subscriber::load(w, s, keys.clone(), mask) {
                    Ok(sub) => subscribers.push(Arc::new(sub)),
                    Err(e) => errors.push(error(
                        format!("webhooks[{i}].subscribers[{n}].{}", e.key()),
                        SetupProblem::Subscriber {
                            subscriber: s.name.clone(),
                            source: e,
                        },
                    )),
                }
            }
            endpoints.push(Arc::new(Endpoint {
                name: w.name.as_str().into(),
                path: w.path.clone(),
                scheme,
                secrets,
                tolerance: w.tolerance,
                replay_window: w.replay_window.unwrap_or(if scheme.signs_timestamp() {
                    // An event is taken while its timestamp is within the tolerance on either
                    // side of the clock.
                    w.tolerance * 2
                } else {
                    UNTIMED_REPLAY_WINDOW
                }),
                // A scheme that signs its own timestamp has no use for it (refused at load).
                event_time: w
                    .event_time
                    .as_ref()
                    .filter(|_| !scheme.signs_timestamp())
                    .map(event_time),
                max_body_bytes: w.max_body_bytes,
                keys,
                subscribers: w
                    .subscribers
                    .iter()
                    .map(|s| (s.name.clone(), s.events.clone()))
                    .collect(),
                keep: (w.retry.max_age, w.dead_letter_retention),
            }));
        }
        if errors.is_empty() {
            Ok(Self {
                endpoints,
                plan: Arc::new(Plan { subscribers }),
            })
        } else {
            Err(errors)
        }
    }
}

/// The verifier's reading of a webhook's `event_time`.
fn event_time(c: &EventTimeConfig) -> EventTime {
    EventTime {
        field: c.field.clone(),
        format: match c.format {
            EventTimeFormat::Unix => TimeFormat::Unix,
            EventTimeFormat::UnixMillis => TimeFormat::UnixMillis,
            EventTimeFormat::Rfc3339 => TimeFormat::Rfc3339,
            EventTimeFormat::NaiveUtc => TimeFormat::NaiveUtc,
        },
    }
}

/// The verifier's scheme for a webhook's settings.
fn scheme(w: &WebhookConfig) -> Result<Scheme, UnknownName> {
    Ok(match w.scheme {
        WebhookScheme::Didit => Scheme::DiditSignature,
        WebhookScheme::DiditV2 => Scheme::DiditSignatureV2(match &w.v2_form {
            None => V2Form::default(),
            Some(form) => form.parse()?,
        }),
        WebhookScheme::DiditSimple => Scheme::DiditSignatureSimple,
        WebhookScheme::Sumsub => Scheme::SumsubDigest {
            allow_sha1: w.allow_sha1,
        },
        WebhookScheme::Veriff => Scheme::Veriff,
        WebhookScheme::Onfido => Scheme::Onfido,
        WebhookScheme::Persona => Scheme::Persona,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use idgate_config::{RetryPolicy, SubscriberConfig};
    use idgate_secrets::SecretRef;

    use super::*;

    fn file(dir: &std::path::Path, name: &str, content: &str) -> SecretRef {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        SecretRef::File(p)
    }

    /// A subscriber's secret of the least length the gateway takes: 32 bytes.
    const SUBSCRIBER_SECRET: &str = "subscriber secret of 32 bytes..!";

    fn config(dir: &std::path::Path, scheme: WebhookScheme) -> WebhookConfig {
        WebhookConfig {
            name: "p".into(),
            path: "/webhooks/p".into(),
            scheme,
            v2_form: None,
            allow_sha1: false,
            secrets: vec![file(dir, "secret", "provider secret")],
            tolerance: Duration::from_secs(300),
            replay_window: None,
            event_time: None,
            source_cidrs: Vec::new(),
            max_body_bytes: 1 << 20,
            outbox_keys: vec![file(dir, "outbox.key", &"0f".repeat(32))],
            retry: RetryPolicy::default(),
            delivery_timeout: Duration::from_secs(5),
            retention: Duration::ZERO,
            dead_letter_retention: Duration::ZERO,
            subscribers: vec![SubscriberConfig {
                name: "s".into(),
                url: "https://localhost:1/".parse().unwrap(),
                secret: file(dir, "sub", SUBSCRIBER_SECRET),
                masking: None,
                events: Vec::new(),
                ca: None,
            }],
        }
    }

    #[test]
    fn schemes_and_replay_windows_follow_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let mut sumsub = config(dir.path(), WebhookScheme::Sumsub);
        sumsub.allow_sha1 = true;
        let mut v2 = config(dir.path(), WebhookScheme::DiditV2);
        v2.name = "v2".into();
        v2.v2_form = Some("timestamp:ascii".into());
        v2.replay_window = Some(Duration::from_secs(900));
        let w = Webhooks::load(&[sumsub, v2], |_| None).unwrap();
        assert_eq!(
            w.endpoints[0].scheme,
            Scheme::SumsubDigest { allow_sha1: true }
        );
        assert_eq!(
            w.endpoints[0].replay_window,
            Duration::from_secs(30 * 24 * 3600)
        );
        assert_eq!(
            w.endpoints[1].scheme,
            Scheme::DiditSignatureV2("timestamp:ascii".parse().unwrap())
        );
        assert_eq!(w.endpoints[1].replay_window, Duration::from_secs(900));
        assert_eq!(w.plan.subscribers.len(), 2);
        let didit = Webhooks::load(&[config(dir.path(), WebhookScheme::Didit)], |_| None).unwrap();
        assert_eq!(didit.endpoints[0].replay_window, Duration::from_secs(600));
        assert!(!format!("{:?}", didit.endpoints[0]).contains("provider secret"));
    }

    /// A Sumsub request for `body`, signed with the endpoint's secret.
    fn sumsub_request(body: &str) -> HeaderMap {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"provider secret");
        let digest = idgate_codec::hex::encode(ring::hmac::sign(&key, body.as_bytes()).as_ref());
        let mut h = HeaderMap::new();
        h.insert("x-payload-digest", digest.parse().unwrap());
        h
    }

    #[test]
    fn an_untimed_event_older_than_its_replay_window_is_refused_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut sumsub = config(dir.path(), WebhookScheme::Sumsub);
        sumsub.event_time = Some(EventTimeConfig {
            field: vec!["createdAt".into()],
            format: EventTimeFormat::Unix,
        });
        sumsub.replay_window = Some(Duration::from_secs(24 * 3600));
        let w = Webhooks::load(&[sumsub], |_| None).unwrap();
        let endpoint = &w.endpoints[0];
        let sent = 1_800_000_000u64;
        let body =
            format!(r#"{{"applicantId":"a-1","createdAt":{sent},"type":"applicantReviewed"}}"#);
        let h = sumsub_request(&body);
        let at = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(sent + secs);
        let day = 24 * 3600;
        // Accepted while any copy of it would still find its replay key: the key lives for
        // the window from acceptance, the event's time may be up to the tolerance ahead.
        let v = endpoint.verify(&h, body.as_bytes(), at(0)).unwrap();
        assert_eq!(v.timestamp, Some(at(0)));
        assert!(endpoint.verify(&h, body.as_bytes(), at(day - 300)).is_ok());
        // The same signed body a day later: its key is forgotten, so it is stale.
        assert_eq!(
            endpoint.verify(&h, body.as_bytes(), at(day - 299)),
            Err(Rejected::Stale {
                age_secs: (day - 299) as i64
            })
        );
        assert_eq!(
            endpoint.verify(&h, body.as_bytes(), at(day + 1)),
            Err(Rejected::Stale {
                age_secs: (day + 1) as i64
            })
        );
        // From further ahead than the tolerance: refused, or its key would expire first.
        let early = std::time::UNIX_EPOCH + Duration::from_secs(sent - 301);
        assert_eq!(
            endpoint.verify(&h, body.as_bytes(), early),
            Err(Rejected::Future { ahead_secs: 301 })
        );
        // Without the time the webhook says every event carries: refused, never taken on
        // the replay key alone.
        let untimed = r#"{"applicantId":"a-1","type":"applicantReviewed"}"#;
        assert_eq!(
            endpoint.verify(&sumsub_request(untimed), untimed.as_bytes(), at(0)),
            Err(Rejected::Missing("event time"))
        );
        // A forgery is a forgery first, whatever its time says.
        assert_eq!(
            endpoint.verify(&sumsub_request("{}"), body.as_bytes(), at(0)),
            Err(Rejected::BadSignature)
        );
    }

    #[test]
    fn without_an_event_time_an_untimed_scheme_remembers_replay_keys_for_thirty_days() {
        let dir = tempfile::tempdir().unwrap();
        let w = Webhooks::load(&[config(dir.path(), WebhookScheme::Onfido)], |_| None).unwrap();
        assert_eq!(w.endpoints[0].event_time, None);
        assert_eq!(w.endpoints[0].replay_window, UNTIMED_REPLAY_WINDOW);
        assert_eq!(UNTIMED_REPLAY_WINDOW, Duration::from_secs(30 * 24 * 3600));
    }

    #[test]
    fn what_cannot_be_put_into_use_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut bad = config(dir.path(), WebhookScheme::DiditV2);
        bad.v2_form = Some("latin1".into());
        let mut short = config(dir.path(), WebhookScheme::Didit);
        short.outbox_keys = vec![file(dir.path(), "short.key", "too short")];
        short
            .secrets
            .push(SecretRef::Env("IDGATE_TEST_UNSET_SECRET".into()));
        let mut no_ca = config(dir.path(), WebhookScheme::Persona);
        no_ca.subscribers[0].ca = Some(dir.path().join("missing.pem"));
        let errors = Webhooks::load(&[bad, short, no_ca], |_| None).unwrap_err();
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "webhooks[0].v2_form",
                "webhooks[1].previous_secret",
                "webhooks[1].outbox_key",
                "webhooks[2].subscribers[0].ca",
            ]
        );
        assert!(errors[2].to_string().contains("32 bytes"), "{}", errors[2]);
    }

    #[test]
    fn a_subscriber_secret_shorter_than_32_bytes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(SUBSCRIBER_SECRET.len(), 32);
        // The provider's own secret (15 bytes here) is used as the provider issued it.
        assert!(Webhooks::load(&[config(dir.path(), WebhookScheme::Didit)], |_| None).is_ok());
        let mut short = config(dir.path(), WebhookScheme::Didit);
        let secret = &SUBSCRIBER_SECRET[..31];
        short.subscribers[0].secret = file(dir.path(), "short-sub", secret);
        let errors = Webhooks::load(&[short], |_| None).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "webhooks[0].subscribers[0].secret");
        let message = errors[0].to_string();
        assert!(
            message.contains("31 bytes is too short for a key; use at least 32"),
            "{message}"
        );
        assert!(!message.contains(secret), "{message}");
    }
}
