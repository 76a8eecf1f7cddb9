//! Status webhooks to the customer, as Didit sends them: a `status.updated` event when a
//! session is created and on every change of its status, the envelope in canonical JSON
//! signed three ways (see [`crate::didit_webhook`]), from `DiditWebhook/2.0`, retried on
//! 5xx and 404 (and when no answer came) twice, about 1 and 4 minutes later — times
//! multiplied by the target's `retry_scale`, so that tests take milliseconds.
//!
//! Every attempt carries the time it is sent: its `timestamp` (and `X-Timestamp`) is set
//! and the body signed again just before each POST. Didit's documents say receivers reject
//! events whose signed `timestamp` is older than 300 s, and that retries come about 1 and 4
//! minutes after a failure, but not whether a retry is signed anew; a retry that kept the
//! first attempt's time would reach a receiver with that window more than 300 s late and
//! could never be accepted, so the mock signs each attempt at send time (the only way a
//! provider's retries can work against such a receiver). The event's `event_id` stays the
//! same on every attempt.
//!
//! One session's events go out one after the other, in the order they happened (an event
//! waits while the one before it is retried); different sessions' events go out in
//! parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use http_body_util::{BodyExt, Full};
use idgate_tls::client::{HttpsClient, OutboundClient};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::data::{self, ApiVersion};
use crate::didit_webhook;
use crate::store::{DeliveryOutcome, MockState, Session, WebhookDelivery};
use crate::{MockError, WebhookTarget, util};

/// Attempts per webhook, the first included: Didit retries a failed delivery about twice.
pub const MAX_ATTEMPTS: u32 = 3;
/// Didit's waits before the second and the third attempt (about 1 and 4 minutes), before
/// the target's `retry_scale`. Each is counted from the end of the failed attempt before it.
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(240)];
/// Didit's webhook client.
pub const USER_AGENT_VALUE: &str = "DiditWebhook/2.0 +https://didit.me";
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// One event waiting for its turn. Its `timestamp` is set when each attempt is sent.
struct Queued {
    event_id: String,
    envelope: Value,
}

type WebhookClient = HttpsClient<Full<Bytes>>;

pub(crate) struct WebhookSender {
    client: WebhookClient,
    url: Uri,
    secret: SecretString,
    application_id: String,
    state: Arc<MockState>,
    retry_delays: [Duration; 2],
    /// Each session's queue, served by a task of its own.
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Queued>>>,
}

/// Whether an http:// webhook may go to this host: loopback only, so that no event crosses
/// a network in clear text.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl WebhookSender {
    pub(crate) fn new(
        target: &WebhookTarget,
        application_id: String,
        state: Arc<MockState>,
    ) -> Result<Self, MockError> {
        let url: Uri = target
            .url
            .parse()
            .map_err(|e| MockError::WebhookUrl(format!("{}: {e}", target.url)))?;
        let host = url
            .host()
            .ok_or_else(|| MockError::WebhookUrl(format!("{}: no host", target.url)))?;
        match url.scheme_str() {
            Some("https") => {}
            Some("http") if is_loopback_host(host) => {}
            Some("http") => {
                return Err(MockError::WebhookUrl(format!(
                    "{}: http:// is only allowed to a loopback host; use https://",
                    target.url
                )));
            }
            _ => {
                return Err(MockError::WebhookUrl(format!(
                    "{}: expected an https:// (or loopback http://) URL",
                    target.url
                )));
            }
        }

        let roots = idgate_tls::roots::roots_with_ca(target.ca.as_deref())?;
        let client = OutboundClient::new(roots, Duration::from_secs(5))
            .build()
            .map_err(|e| MockError::Tls(e.to_string()))?;
        // Scaled down only (and `mul_f64` below cannot overflow).
        if !(0.0..=1.0).contains(&target.retry_scale) {
            return Err(MockError::Usage(format!(
                "webhook retry scale {}: expected a number from 0 to 1",
                target.retry_scale
            )));
        }
        Ok(Self {
            client,
            url,
            secret: target.secret.clone(),
            application_id,
            state,
            retry_delays: RETRY_DELAYS.map(|d| d.mul_f64(target.retry_scale)),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// The `status.updated` envelope for a session as it is now: `vendor_data`,
    /// `workflow_id` and `metadata` only when the session has them, `decision` for
    /// Approved, Declined, In Review and Abandoned. `timestamp` is the time now; each
    /// attempt sets it again when it is sent.
    fn envelope(&self, event_id: &str, session: &Session) -> Value {
        let mut envelope = json!({
            "event_id": event_id,
            "webhook_type": "status.updated",
            "timestamp": util::unix_now(),
            "created_at": session.created_at_micros.div_euclid(1_000_000),
            "application_id": self.application_id,
            "environment": "sandbox",
            "session_id": session.id,
            "status": session.status.as_str(),
        });
        if let Value::Object(map) = &mut envelope {
            if let Some(vendor_data) = &session.vendor_data {
                map.insert("vendor_data".to_owned(), json!(vendor_data));
            }
            if !session.workflow_id.is_empty() {
                map.insert("workflow_id".to_owned(), json!(session.workflow_id));
            }
            if !session.metadata.is_null() {
                map.insert("metadata".to_owned(), session.metadata.clone());
            }
            if session.status.webhook_has_decision() {
                map.insert(
                    "decision".to_owned(),
                    data::decision(session, ApiVersion::V3),
                );
            }
        }
        envelope
    }

    /// Queues a `status.updated` event for the session as it is now; it goes out after the
    /// session's earlier events.
    pub(crate) fn status_updated(self: &Arc<Self>, session: &Session) {
        let event_id = util::uuid_v4();
        let envelope = self.envelope(&event_id, session);
        self.state.webhook_started(WebhookDelivery {
            event_id: event_id.clone(),
            session_id: session.id.clone(),
            status: session.status.as_str().to_owned(),
            attempts: 0,
            outcome: DeliveryOutcome::Pending,
        });
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = queues.entry(session.id.clone()).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
            // Weak: the queue (in `self`) must not keep `self` alive. When the mock is
            // dropped, the queue's sender goes with it and the task ends.
            let sender = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let Some(sender) = sender.upgrade() else {
                        break;
                    };
                    sender.deliver(event.event_id, event.envelope).await;
                }
            });
            tx
        });
        // The queue's task lives as long as the sender: sending cannot fail before.
        let _ = queue.send(Queued { event_id, envelope });
    }

    async fn deliver(&self, event_id: String, envelope: Value) {
        let schedule = Schedule {
            state: &self.state,
            secret: self.secret.expose_secret(),
            delays: &self.retry_delays,
        };
        schedule
            .run(&event_id, envelope, &SystemClock, |signed| {
                self.attempt(signed)
            })
            .await;
    }

    /// One POST; the receiver's status, or why there was none.
    async fn attempt(&self, signed: didit_webhook::SignedWebhook) -> Result<u16, AttemptError> {
        let mut req = http::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, USER_AGENT_VALUE);
        for (name, value) in signed.headers() {
            let mut value =
                HeaderValue::from_str(value).map_err(|_| AttemptError::UnsendableHeader)?;
            value.set_sensitive(true);
            req = req.header(name, value);
        }
        let req = req.body(Full::new(Bytes::from(signed.body)))?;
        let send = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            // Drain the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            Ok(status)
        };
        tokio::time::timeout(ATTEMPT_TIMEOUT, send)
            .await
            .map_err(|_| AttemptError::TimedOut)?
    }
}

/// Where an event's attempts read the time and wait for the next: the system's clock and
/// Tokio's timer, or a test's.
trait Clock {
    /// Seconds since the Unix epoch.
    fn unix_now(&self) -> i64;
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> i64 {
        util::unix_now()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

/// One event's attempts: what they share apart from how a POST is made and what time it is.
struct Schedule<'a> {
    state: &'a MockState,
    secret: &'a str,
    delays: &'a [Duration; 2],
}

impl Schedule<'_> {
    /// Sends the event by `send` until it is taken, refused for good, or out of attempts.
    /// Before each attempt the envelope's `timestamp` is set to the clock's time and the
    /// envelope signed again (see the module documentation).
    async fn run<S, F>(&self, event_id: &str, mut envelope: Value, clock: &impl Clock, send: S)
    where
        S: Fn(didit_webhook::SignedWebhook) -> F,
        F: Future<Output = Result<u16, AttemptError>>,
    {
        for attempt in 1..=MAX_ATTEMPTS {
            if let Value::Object(map) = &mut envelope {
                map.insert("timestamp".to_owned(), json!(clock.unix_now()));
            }
            let signed = didit_webhook::sign(self.secret, &envelope);
            let result = send(signed).await;
            let retry = match &result {
                Ok(status) if (200..300).contains(status) => {
                    tracing::info!(%event_id, attempt, status, "webhook delivered");
                    self.state.webhook_progress(
                        event_id,
                        attempt,
                        DeliveryOutcome::Delivered { status: *status },
                    );
                    return;
                }
                Ok(status) => *status >= 500 || *status == 404,
                // No answer at all (refused, reset, timed out): failed like a 5xx. Didit's
                // documents name 5xx and 404 only; a receiver that never answered has not
                // taken the event either.
                Err(_) => true,
            };
            let reason = match result {
                Ok(status) => format!("the receiver answered {status}"),
                Err(e) => e.to_string(),
            };
            let delay = usize::try_from(attempt - 1)
                .ok()
                .and_then(|i| self.delays.get(i));
            let Some(delay) = delay.filter(|_| retry) else {
                tracing::warn!(%event_id, attempt, %reason, "webhook not delivered; giving up");
                self.state
                    .webhook_progress(event_id, attempt, DeliveryOutcome::Failed { reason });
                return;
            };
            tracing::info!(%event_id, attempt, %reason, retry_in_ms = delay.as_millis() as u64, "webhook attempt failed; retrying");
            self.state
                .webhook_progress(event_id, attempt, DeliveryOutcome::Pending);
            clock.sleep(*delay).await;
        }
    }
}

/// Why a delivery attempt got no status from the receiver.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("unsendable header")]
    UnsendableHeader,
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("{}", Chain(.0))]
    Send(#[from] idgate_tls::client::RequestError),
    #[error("timed out")]
    TimedOut,
}

/// An error and its causes, `a: b: c`: the client's top error ("client error
/// (Connect)") hides whether the connection was refused or TLS failed.
struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::UNIX_EPOCH;

    use http::{HeaderMap, HeaderName};
    use idgate_webhooks::verify::{self, Rejected, Scheme};

    use super::*;

    const SECRET: &str = "didit-webhook-secret-for-the-schedule";

    /// A clock that moves only when the schedule waits or an attempt takes its time.
    struct TestClock(AtomicI64);

    impl TestClock {
        fn advance(&self, by: Duration) {
            let secs = i64::try_from(by.as_secs()).unwrap();
            self.0.fetch_add(secs, Ordering::SeqCst);
        }
    }

    impl Clock for TestClock {
        fn unix_now(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }

        fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
            self.advance(duration);
            std::future::ready(())
        }
    }

    /// What the gateway's Didit check (`X-Signature`, default tolerance) says of `signed`
    /// arriving at `now`.
    fn gateway_check(signed: &didit_webhook::SignedWebhook, now: i64) -> Result<(), Rejected> {
        let mut headers = HeaderMap::new();
        for (name, value) in signed.headers() {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap());
        verify::verify(
            &Scheme::DiditSignature,
            &[SECRET.as_bytes()],
            &headers,
            &signed.body,
            at,
            verify::DEFAULT_TOLERANCE,
        )
        .map(|_| ())
    }

    #[tokio::test]
    async fn the_last_retry_is_fresh_at_the_gateways_default_tolerance_after_two_attempts_timed_out()
     {
        const QUEUED_AT: i64 = 1_800_000_000;
        let clock = TestClock(AtomicI64::new(QUEUED_AT));
        let state = MockState::new();
        state.webhook_started(WebhookDelivery {
            event_id: "evt-1".to_owned(),
            session_id: "s-1".to_owned(),
            status: "Approved".to_owned(),
            attempts: 0,
            outcome: DeliveryOutcome::Pending,
        });
        let envelope = json!({
            "event_id": "evt-1",
            "webhook_type": "status.updated",
            "timestamp": QUEUED_AT,
            "session_id": "s-1",
            "status": "Approved",
        });
        let schedule = Schedule {
            state: &state,
            secret: SECRET,
            delays: &RETRY_DELAYS,
        };
        // Each attempt as it arrives: when, what, and whether the gateway takes it. The
        // first two reach a receiver that never answers, so the mock waits out its timeout.
        let arrived = Mutex::new(Vec::new());
        let (clock, arrived_ref) = (&clock, &arrived);
        schedule
            .run("evt-1", envelope, clock, |signed| {
                let at = clock.unix_now();
                let verdict = gateway_check(&signed, at);
                let body: Value = serde_json::from_slice(&signed.body).unwrap();
                let mut arrived = arrived_ref.lock().unwrap();
                arrived.push((at, body, verdict));
                let attempt = arrived.len();
                async move {
                    if attempt < 3 {
                        clock.advance(ATTEMPT_TIMEOUT);
                        Err(AttemptError::TimedOut)
                    } else {
                        Ok(200)
                    }
                }
            })
            .await;

        let arrived = arrived.into_inner().unwrap();
        assert_eq!(arrived.len(), 3);
        let (last_at, last_body, last_verdict) = &arrived[2];
        // Two timeouts and Didit's two waits: the last attempt leaves well past the
        // tolerance after the event was queued ...
        assert_eq!(*last_at - QUEUED_AT, 10 + 60 + 10 + 240);
        assert!(u64::try_from(*last_at - QUEUED_AT).unwrap() > verify::DEFAULT_TOLERANCE.as_secs());
        // ... yet the gateway takes it: it carries the time it was sent.
        assert_eq!(*last_verdict, Ok(()), "{last_body}");
        assert_eq!(last_body["timestamp"], *last_at);
        for (at, body, verdict) in &arrived {
            assert_eq!(body["timestamp"], *at);
            assert_eq!(body["event_id"], "evt-1");
            assert_eq!(*verdict, Ok(()));
        }
        let delivery = &state.webhook_deliveries()[0];
        assert_eq!(delivery.attempts, 3);
        assert_eq!(delivery.outcome, DeliveryOutcome::Delivered { status: 200 });
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("127.8.9.1"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("example.org"));
        assert!(!is_loopback_host("10.0.0.1"));
    }
}
