//! Putting `[[webhooks]]` into use: each webhook's endpoint (its secrets, its outbox key,
//! which subscriber gets which event type) and every subscriber's delivery. Loading is
//! blocking (secrets and keys are read), and happens with every configuration snapshot:
//! at start-up, at each reload, and in `idgate check`.

use std::sync::Arc;
use std::time::Duration;

use idgate_config::{WebhookConfig, WebhookScheme};
use idgate_secrets::{ExposeSecret, SecretBox, SecretError};

use crate::delivery::{Plan, Subscriber, SubscriberError, SubscriberMask};
use crate::outbox::{KeyError, OutboxKeys};
use crate::verify::{Scheme, UnknownName, V2Form};

/// How long a replay key is remembered for a scheme that signs no timestamp, unless the
/// webhook says otherwise: past the retries providers make of an event (Sumsub's last is
/// after 18 hours).
const UNTIMED_REPLAY_WINDOW: Duration = Duration::from_secs(24 * 3600);

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
    pub max_body_bytes: u64,
    pub keys: Arc<OutboxKeys>,
    /// Each subscriber's name and the event types it takes (none: every type).
    subscribers: Vec<(String, Vec<String>)>,
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
    pub endpoints: Vec<Endpoint>,
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
            endpoints.push(Endpoint {
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
                max_body_bytes: w.max_body_bytes,
                keys,
                subscribers: w
                    .subscribers
                    .iter()
                    .map(|s| (s.name.clone(), s.events.clone()))
                    .collect(),
            });
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
