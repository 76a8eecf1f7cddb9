//! The webhook endpoint, a built-in target (`Target::Webhook`), in two steps: [`verify`]
//! reads a provider's event whole (within the webhook's body limit) and checks its signature
//! with the webhook's secrets and its signed time (or, where the webhook names one, the
//! event's own time) with the webhook's windows (`Endpoint::verify`); [`keep`] keeps a
//! genuine event — what the signature covers of it — durably in the outbox, for each
//! subscriber that wants it, before the provider gets its 2xx (`idgate_webhooks::intake`).
//!
//! Between the two, the pipeline takes the place of the request's record in the audit
//! queue: only a post whose signature is verified takes one, so posts that are unsigned,
//! forged, or whose body never comes cannot hold the places of requests that are served.
//!
//! A forged, re-signed, stale or replayed event is refused with a 401 problem, recorded
//! like any refusal, and never kept. An event the store cannot keep gets a 503: the
//! provider retries it. The source-address rule is the route's (`admission.rs`, 403).

use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use idgate_webhooks::Endpoint;
use idgate_webhooks::intake::{self, Event, Intake};
use idgate_webhooks::verify::{Rejected, Verified};

use crate::body::ProxyBody;
use crate::ctx::RequestCtx;
use crate::problem::{Refusal, WebhookRefusal};

/// Bodies up to this size are verified on the worker that read them; larger ones on a
/// blocking thread. A provider's event is a few KiB.
const VERIFY_INLINE_BYTES: usize = 64 * 1024;

/// A provider's event whose signature and time are verified: what [`keep`] keeps.
pub(crate) struct Genuine<'r> {
    endpoint: &'r Endpoint,
    verified: Verified,
    body: Bytes,
    /// When it was verified: the time the event is received at.
    now: SystemTime,
}

/// Reads a provider's post to webhook `index` of the snapshot whole and verifies its
/// signature and time; anything else is refused.
pub(crate) async fn verify<'r>(
    ctx: &mut RequestCtx<'r>,
    req: &http::request::Parts,
    index: usize,
) -> Result<Genuine<'r>, Refusal> {
    let snapshot = ctx.snapshot;
    let Some(shared) = snapshot.webhooks.endpoints.get(index) else {
        return Err(Refusal::Internal {
            reason: format!("no webhook at index {index}"),
        });
    };
    let endpoint: &'r Endpoint = shared;
    if req.method != Method::POST {
        return Err(Refusal::MethodNotAllowed {
            allow: HeaderValue::from_static("POST"),
        });
    }
    let body = ctx
        .read_body(
            endpoint.max_body_bytes,
            snapshot.request_limits.body_timeout,
        )
        .await?;
    let now = SystemTime::now();
    let verified = if body.len() <= VERIFY_INLINE_BYTES {
        endpoint.verify(&req.headers, &body, now)
    } else {
        // Before its signature is checked, a large body is parsed (some schemes sign its
        // canonical form): anybody's post costs that CPU, so it is spent on a blocking
        // thread, not on the worker that serves every other request.
        let shared = std::sync::Arc::clone(shared);
        let headers = req.headers.clone();
        let body = body.clone();
        tokio::task::spawn_blocking(move || shared.verify(&headers, &body, now))
            .await
            .map_err(|e| Refusal::Internal {
                reason: format!("webhook {}: verification stopped: {e}", endpoint.name),
            })?
    }
    .map_err(|r| refused(r, &endpoint.name))?;
    Ok(Genuine {
        endpoint,
        verified,
        body,
        now,
    })
}

/// Keeps a genuine event in the outbox for its subscribers and answers the provider; a
/// replay of an event kept before is refused.
pub(crate) async fn keep(
    ctx: &mut RequestCtx<'_>,
    genuine: Genuine<'_>,
) -> Result<Response<ProxyBody>, Refusal> {
    let Genuine {
        endpoint,
        verified,
        body,
        now,
    } = genuine;
    let event = Event {
        event_id: verified.event_id.as_deref(),
        session_id: verified.session_id.as_deref(),
        event_type: verified.event_type.as_deref(),
        replay_key: &verified.replay_key,
    };
    // Only what the signature covers is kept and delivered (Didit Simple signs four fields,
    // not the body): the rest of such a body is anybody's.
    let kept = verified.deliverable(&body);
    let intake = intake::accept(&ctx.services.state, endpoint, event, kept, now)
        .await
        .map_err(|e| Refusal::WebhookUnavailable {
            reason: format!("webhook {}: {e}", endpoint.name),
        })?;
    match intake {
        Intake::Replayed => Err(Refusal::WebhookRefused {
            why: WebhookRefusal::Replayed,
            reason: format!(
                "webhook {}: the event was received before ({})",
                endpoint.name,
                verified.event_id.as_deref().unwrap_or("no event id")
            ),
        }),
        Intake::Accepted { key, subscribers } => {
            if let Some(d) = ctx.services.deliverer.get() {
                d.wake();
            }
            tracing::info!(
                request_id = ctx.request_id(),
                webhook = &*endpoint.name,
                event = key.as_str(),
                event_type = verified.event_type.as_deref().unwrap_or("-"),
                subscribers,
                previous_secret = verified.secret_index > 0,
                "webhook event accepted"
            );
            Ok(accepted(&key))
        }
    }
}

/// The refusal for what the verifier found; the log learns the detail (never a secret or
/// a header's value).
fn refused(r: Rejected, webhook: &str) -> Refusal {
    let why = match r {
        Rejected::Stale { .. } | Rejected::Future { .. } => WebhookRefusal::Stale,
        _ => WebhookRefusal::Signature,
    };
    let reason = format!("webhook {webhook}: {r}");
    if let Rejected::Secrets { .. } = r {
        return Refusal::Internal { reason };
    }
    Refusal::WebhookRefused { why, reason }
}

/// `200 {"status":"accepted","event_id":KEY}`.
fn accepted(key: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"status": "accepted", "event_id": key}).to_string();
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
