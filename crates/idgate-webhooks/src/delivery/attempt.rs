//! One delivery attempt of one claimed message: open it, mask it for the subscriber, sign
//! it, post it, and settle the claim by the answer (ack, nack for a retry, or bury).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, USER_AGENT};
use http_body_util::{BodyExt as _, Full, Limited};
use idgate_config::NonJson;
use idgate_mask::{MaskError, Pseudonymizer, media};
use idgate_secrets::HmacKey;
use idgate_secrets::hmac::SignError;
use idgate_store::{Claimed, NewMessage, Queue};

use super::retry::{Verdict, classify, next_attempt, retry_after};
use super::signature::{
    EVENT_ID_HEADER, SIGNATURE_HEADER, event_id_signable, header_value, signed_message,
    signed_message_v2,
};
use super::{Deliverer, Subscriber, SubscriberMask};
use crate::metrics::Attempt;
use crate::outbox::OpenError;

/// The most of a subscriber's answer read (and thrown away), so its connection can be
/// used again.
const MAX_ANSWER: usize = 64 * 1024;

const USER_AGENT_VALUE: &str = concat!("idgate-webhooks/", env!("CARGO_PKG_VERSION"));

/// Why a message is not sent this time.
enum NotSent {
    /// For good: a dead letter.
    Refused(String),
    /// Worth another attempt.
    Retry(String),
}

/// Delivers `message` to `sub` and settles its claim. Errors are logged, never returned:
/// an unsettled claim runs out and the message is tried again.
///
/// A message claimed again past its maximum age (by more than a lease, so that a retry due
/// just before it is still made) is not tried again but buried: its earlier attempts may
/// never have settled (a claim whose answer was lost, a gateway killed mid-attempt), and
/// only a settled attempt would otherwise end its retries. One claimed for the first time
/// (a backlog after an outage longer than its maximum age) is tried once.
pub(super) async fn deliver(d: &Deliverer, sub: &Subscriber, message: Claimed) {
    if message.lease.attempt > 1 && past_max_age(sub, &message, SystemTime::now()) {
        let verdict = Verdict::Refused {
            reason: format!(
                "past its maximum age of {:?} when claimed again, after {} attempt(s)",
                sub.retry.max_age,
                message.lease.attempt.saturating_sub(1)
            ),
        };
        settle(d, sub, &message, verdict).await;
        return;
    }
    // Opened, masked and signed in what the lease leaves beyond the post itself: a message
    // still being made ready (a slow or busy HSM) when another replica could claim it is
    // not sent, so no two attempts overlap.
    let ready_by = time_to_make_ready(message.lease.until, SystemTime::now(), sub.timeout);
    let ready = async {
        let (event, body) = prepare(sub, &message).await?;
        let signature = sign(sub, &event, &body).await?;
        Ok::<_, NotSent>((event, body, signature))
    };
    // A timeout polls its future once before it looks at the clock: with no time left, the
    // message is not even opened.
    let made_ready = if ready_by.is_zero() {
        Err(())
    } else {
        tokio::time::timeout(ready_by, ready).await.map_err(|_| ())
    };
    let verdict = match made_ready {
        Ok(Ok((event, body, signature))) => post(d, sub, &event, body, signature).await,
        Ok(Err(NotSent::Refused(reason))) => Verdict::Refused { reason },
        Ok(Err(NotSent::Retry(reason))) => Verdict::Retry {
            reason,
            after: None,
        },
        Err(_) => Verdict::Retry {
            reason: format!(
                "not ready to send within the lease (opening, masking and signing took over {ready_by:?}): not sent"
            ),
            after: None,
        },
    };
    settle(d, sub, &message, verdict).await;
}

/// How long opening, masking and signing a message may take: what the lease (until
/// `until`) leaves at `now` beyond the post's own `timeout`; nothing when it leaves less.
fn time_to_make_ready(until: SystemTime, now: SystemTime, timeout: Duration) -> Duration {
    until
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .saturating_sub(timeout)
}

/// Whether `message`'s run of attempts began longer ago than its maximum age and a lease.
fn past_max_age(sub: &Subscriber, message: &Claimed, now: SystemTime) -> bool {
    message
        .attempts_since
        .checked_add(sub.retry.max_age)
        .and_then(|t| t.checked_add(sub.lease()))
        .is_some_and(|deadline| deadline < now)
}

/// The event's idempotency key and the body to send.
async fn prepare(sub: &Subscriber, message: &Claimed) -> Result<(String, Bytes), NotSent> {
    let (header, body) = sub
        .keys
        .open(sub.queue.as_str(), &message.payload)
        .map_err(|e| match e {
            // Sealed by a replica that already has a key this one does not (a rotation
            // under way, one replica at a time): this one, once reloaded, or another opens it.
            OpenError::UnknownKey(_) => {
                NotSent::Retry(format!("the outbox message cannot be opened yet: {e}"))
            }
            _ => NotSent::Refused(format!("the outbox message cannot be opened: {e}")),
        })?;
    let body = match &sub.mask {
        None => body,
        Some(mask) => masked(mask, body).await?,
    };
    Ok((header.event, Bytes::from(body)))
}

/// The body as the subscriber's masking profile lets it see it.
///
/// A body that begins like a JSON object or array but cannot be read here (a lone
/// surrogate escape, nesting past the parser's limit, a byte-order mark, trailing bytes)
/// is refused: the rules could not be applied to it, yet a more lenient reader at the
/// subscriber may well read it, and with it the values the profile hides.
///
/// Any other body that is not JSON passes only under `non_json = "pass"`, and only when its
/// first bytes show a type the profile's `pass_types` names (a PDF, an image), as an
/// answer without a `Content-Type` does on a route: the outbox keeps no type for an event,
/// so text (form fields, XML, CSV), which would carry the values the profile hides, is
/// refused.
async fn masked(mask: &SubscriberMask, body: Vec<u8>) -> Result<Vec<u8>, NotSent> {
    let mut doc = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(doc) => doc,
        Err(e) if looks_like_json(&body) => {
            // serde_json's message names what is wrong and where (line, column), never
            // the text itself.
            return Err(NotSent::Refused(format!(
                "the event looks like JSON but cannot be read ({e}), so masking profile {} cannot be applied to it",
                mask.profile_name
            )));
        }
        Err(_) => {
            return match &mask.non_json {
                NonJson::Pass(types) if media::sniff(&body).is_some_and(|t| types.passes(t)) => {
                    Ok(body)
                }
                NonJson::Pass(_) => Err(NotSent::Refused(format!(
                    "the event is not JSON, and its first bytes are not those of a type masking profile {} passes (pass_types)",
                    mask.profile_name
                ))),
                NonJson::Block => Err(NotSent::Refused(format!(
                    "the event is not JSON, and masking profile {} lets only JSON through",
                    mask.profile_name
                ))),
            };
        }
    };
    let pseudonyms = Pseudonyms {
        key: mask.key.as_deref(),
        started: Instant::now(),
    };
    match mask.profile.mask(&mut doc, &pseudonyms).await {
        Ok(_) => serde_json::to_vec(&doc)
            .map_err(|e| NotSent::Refused(format!("the masked event cannot be written: {e}"))),
        Err(MaskError::Blocked(b)) => Err(NotSent::Refused(format!(
            "masking profile {}: {b}",
            mask.profile_name
        ))),
        // The same event holds as many values the next time: retrying cannot help.
        Err(e @ MaskError::TooManyPseudonyms { .. }) => Err(NotSent::Refused(format!(
            "masking profile {}: {e}",
            mask.profile_name
        ))),
        Err(e) => Err(NotSent::Retry(format!(
            "masking profile {}: {e}",
            mask.profile_name
        ))),
    }
}

/// Whether `body` begins as a JSON object or array would, to a reader more lenient than
/// serde_json: past whitespace, byte-order marks and NUL bytes (a UTF-16 or UTF-32 text,
/// which some readers decode), the first byte is `{` or `[`. Only such values hold members
/// a masking rule names (a rule never names the whole document).
fn looks_like_json(body: &[u8]) -> bool {
    const SKIPPED: &[u8] = b" \t\n\r\x0b\x0c\0\xef\xbb\xbf\xfe\xff";
    body.iter()
        .find(|b| !SKIPPED.contains(b))
        .is_some_and(|b| matches!(b, b'{' | b'['))
}

/// The tags of pseudonyms, from the profile's key.
struct Pseudonyms<'a> {
    key: Option<&'a HmacKey>,
    started: Instant,
}

#[derive(Debug, thiserror::Error)]
enum PseudonymError {
    #[error("the profile has no pseudonym key")]
    NoKey,
    #[error(transparent)]
    Sign(#[from] SignError),
}

impl Pseudonymizer for Pseudonyms<'_> {
    type Error = PseudonymError;

    async fn macs(&self, inputs: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, PseudonymError> {
        let key = self.key.ok_or(PseudonymError::NoKey)?;
        Ok(key.sign_all(self.started, inputs).await?.0)
    }
}

/// The `idgate-signature` value for `event` and `body`, signed now.
async fn sign(sub: &Subscriber, event: &str, body: &[u8]) -> Result<HeaderValue, NotSent> {
    if !event_id_signable(event) {
        return Err(NotSent::Refused(
            "the event's id cannot be signed".to_owned(),
        ));
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Both in one call: with a key in a PKCS#11 token, one trip to it.
    let messages = [signed_message(t, body), signed_message_v2(t, event, body)];
    let unsigned = |why: String| NotSent::Retry(format!("the delivery could not be signed{why}"));
    let (macs, _version) = sub
        .secret
        .sign_all(Instant::now(), &messages)
        .await
        .map_err(|e| unsigned(format!(": {e}")))?;
    let [v1, v2] = macs.as_slice() else {
        return Err(unsigned(String::new()));
    };
    let value = header_value(
        t,
        &idgate_codec::hex::encode(v1),
        &idgate_codec::hex::encode(v2),
    );
    HeaderValue::from_str(&value)
        .map_err(|_| NotSent::Refused("the event's headers cannot be written".to_owned()))
}

/// Posts the signed body; the verdict on what came back.
async fn post(
    d: &Deliverer,
    sub: &Subscriber,
    event: &str,
    body: Bytes,
    signature: HeaderValue,
) -> Verdict {
    let retry = |reason: String| Verdict::Retry {
        reason,
        after: None,
    };
    // Before the Workload API delivered the gateway's first SVID there is nothing to present.
    let Some(svid) = (d.svid)() else {
        return retry("the gateway has no SVID yet".to_owned());
    };
    let client = match sub.client(svid) {
        Ok(c) => c,
        Err(e) => return retry(format!("no HTTPS client: {e}")),
    };
    let Ok(event_id) = HeaderValue::from_str(event) else {
        return Verdict::Refused {
            reason: "the event's headers cannot be written".to_owned(),
        };
    };
    let request = Request::post(sub.url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .header(SIGNATURE_HEADER, signature)
        .header(EVENT_ID_HEADER, event_id)
        .body(Full::new(body));
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            return Verdict::Refused {
                reason: format!("the request cannot be made: {e}"),
            };
        }
    };
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, sub.retry.max_age));
        // Read what little the subscriber says, so the connection can serve the next one.
        let _ = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await;
        Ok::<_, idgate_tls::client::RequestError>((status, after))
    };
    match tokio::time::timeout(sub.timeout, exchange).await {
        Ok(Ok((status, after))) => classify(status, after),
        Ok(Err(e)) => retry(format!(
            "the subscriber could not be reached: {}",
            error_chain(&e)
        )),
        Err(_) => retry(format!(
            "the subscriber did not answer within {:?}",
            sub.timeout
        )),
    }
}

/// An error with its causes, for the log (a connection error's cause says what happened).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Acks, nacks or buries the claim as the verdict says, and counts it.
async fn settle(d: &Deliverer, sub: &Subscriber, message: &Claimed, verdict: Verdict) {
    let now = SystemTime::now();
    let lease = &message.lease;
    let (outcome, result) = match verdict {
        Verdict::Delivered => {
            keep_copy(d, sub, message, now).await;
            (
                Attempt::Delivered,
                d.store.ack(&sub.queue, lease).await.map(|()| None),
            )
        }
        Verdict::Retry { reason, after } => {
            match next_attempt(
                &sub.retry,
                lease.attempt,
                message.attempts_since,
                now,
                after,
            ) {
                Some(at) => (
                    Attempt::Retried,
                    d.store
                        .nack(&sub.queue, lease, at, &reason)
                        .await
                        .map(|_| Some(reason)),
                ),
                None => {
                    let reason = format!(
                        "gave up after {} attempts, at the maximum age of {:?}: {reason}",
                        lease.attempt, sub.retry.max_age
                    );
                    (
                        Attempt::Dead,
                        d.store
                            .bury(&sub.queue, lease, &reason)
                            .await
                            .map(|()| Some(reason)),
                    )
                }
            }
        }
        Verdict::Refused { reason } => (
            Attempt::Dead,
            d.store
                .bury(&sub.queue, lease, &reason)
                .await
                .map(|()| Some(reason)),
        ),
    };
    // Counted once the store recorded it: an outcome it did not take is tried again.
    if result.is_ok() {
        d.metrics.attempt(&sub.webhook, &sub.name, outcome);
    }
    let (webhook, subscriber, id) = (&*sub.webhook, &*sub.name, lease.id.as_str());
    match (outcome, result) {
        (Attempt::Delivered, Ok(_)) => {
            tracing::info!(
                webhook,
                subscriber,
                id,
                attempt = lease.attempt,
                "webhook event delivered"
            );
        }
        (Attempt::Retried, Ok(reason)) => tracing::warn!(
            webhook,
            subscriber,
            id,
            attempt = lease.attempt,
            reason = reason.as_deref().unwrap_or(""),
            "webhook delivery failed; it will be retried"
        ),
        (Attempt::Dead, Ok(reason)) => tracing::error!(
            webhook,
            subscriber,
            id,
            attempt = lease.attempt,
            reason = reason.as_deref().unwrap_or(""),
            "webhook event is a dead letter"
        ),
        (_, Err(e)) => tracing::warn!(
            webhook,
            subscriber,
            id,
            error = %e,
            "the outcome of a webhook delivery could not be recorded; the event will be delivered again"
        ),
    }
}

/// Keeps a copy of a delivered message for its retention (still sealed), so that it can be
/// shown and replayed; purged when it comes due.
async fn keep_copy(d: &Deliverer, sub: &Subscriber, message: &Claimed, now: SystemTime) {
    if sub.retention.is_zero() {
        return;
    }
    let copy = NewMessage {
        payload: message.payload.clone(),
        order_key: None,
        max_attempts: u32::MAX,
        // `None` (a retention past the clock's range) only purges the copy sooner.
        not_before: now.checked_add(sub.retention),
    };
    if let Err(e) = d.store.push(&sub.delivered, copy, now).await {
        tracing::warn!(
            webhook = &*sub.webhook,
            subscriber = &*sub.name,
            error = %e,
            "cannot keep a copy of a delivered webhook event"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_made_ready_only_in_what_the_lease_leaves_beyond_the_post() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let timeout = Duration::from_secs(10);
        let secs = Duration::from_secs;
        // A fresh claim: the lease's margin.
        assert_eq!(time_to_make_ready(now + secs(15), now, timeout), secs(5));
        // Claimed a while ago (a busy deliverer): what is left of the margin.
        assert_eq!(time_to_make_ready(now + secs(12), now, timeout), secs(2));
        // Less left than the post may take, or the lease over: no time at all.
        assert_eq!(
            time_to_make_ready(now + secs(9), now, timeout),
            Duration::ZERO
        );
        assert_eq!(
            time_to_make_ready(now - secs(1), now, timeout),
            Duration::ZERO
        );
    }
}
