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

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};
use idgate_webhooks::Endpoint;
use idgate_webhooks::intake::{self, Event, Intake};
use idgate_webhooks::verify::{Rejected, Verified};
use tokio::sync::Semaphore;

use crate::body::ProxyBody;
use crate::ctx::RequestCtx;
use crate::problem::{Refusal, WebhookRefusal};

/// Bodies up to this size are verified on the worker that read them; larger ones on a
/// blocking thread. A provider's event is a few KiB.
const VERIFY_INLINE_BYTES: usize = 64 * 1024;

/// How long a large body waits for a free verification slot (at most the listener's
/// `body_timeout`) before it is answered 503.
const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// The large bodies verified at once, in the whole process: one per core. Past that they
/// wait their turn here, not in the blocking pool, which state reads, outbox pushes and
/// secret fetches share.
static VERIFY_SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Arc::new(Semaphore::new(cores))
});

/// A provider's event whose signature and time are verified: what [`keep`] keeps.
pub(crate) struct Genuine<'r> {
    endpoint: &'r Endpoint,
    verified: Verified,
    body: Bytes,
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
        // thread, not on the worker that serves every other request, and on no more threads
        // at once than there are cores.
        let shared = Arc::clone(shared);
        let headers = req.headers.clone();
        let copy = body.clone();
        let wait = VERIFY_WAIT.min(snapshot.request_limits.body_timeout);
        let share = ctx.lend_body_share();
        let job = move || shared.verify(&headers, &copy, now);
        match off_worker(&VERIFY_SLOTS, wait, share, job).await {
            Ok((verified, share)) => {
                ctx.keep_body_share(share);
                verified
            }
            Err(OffWorker::Busy) => {
                return Err(Refusal::WebhookUnavailable {
                    reason: format!(
                        "webhook {}: no verification slot freed within {wait:?}",
                        endpoint.name
                    ),
                });
            }
            Err(OffWorker::Stopped(e)) => {
                return Err(Refusal::Internal {
                    reason: format!("webhook {}: verification stopped: {e}", endpoint.name),
                });
            }
        }
    }
    .map_err(|r| refused(r, &endpoint.name))?;
    Ok(Genuine {
        endpoint,
        verified,
        body,
    })
}

/// Why [`off_worker`] did not run its job to the end.
#[derive(Debug)]
enum OffWorker {
    /// No slot freed in time.
    Busy,
    /// The job panicked.
    Stopped(tokio::task::JoinError),
}

/// Runs `job` on a blocking thread once one of `slots` is free (waiting at most `wait`), and
/// hands back its result with `held`. The slot and `held` (the body's share of the budget)
/// go with the job: should the caller go away and this future be dropped, the job still
/// holds both until it ends, so neither the body it reads nor its thread is ever
/// unaccounted for.
async fn off_worker<T, H>(
    slots: &Arc<Semaphore>,
    wait: Duration,
    held: H,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<(T, H), OffWorker>
where
    T: Send + 'static,
    H: Send + 'static,
{
    let slot = match tokio::time::timeout(wait, Arc::clone(slots).acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => return Err(OffWorker::Busy),
    };
    tokio::task::spawn_blocking(move || {
        let done = job();
        drop(slot);
        (done, held)
    })
    .await
    .map_err(OffWorker::Stopped)
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
    } = genuine;
    // Kept as of now, not as of the signature's check: the waits since (a verification slot,
    // room in the audit queue) may have taken longer than the outbox's hold, and a copy must
    // never become deliverable before its replay check has ended.
    let now = SystemTime::now();
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;
    use crate::service::BodyBudget;

    /// Waits for `cond`, failing the test past a deadline.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_webhook_posts_are_verified_at_most_n_at_a_time() {
        const N: usize = 2;
        let slots = Arc::new(Semaphore::new(N));
        let budget = BodyBudget::new(64);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(Mutex::new(Vec::new()));
        let mut gates = Vec::new();
        let mut posts = Vec::new();
        for i in 0..N + 2 {
            let (open, gate) = mpsc::channel::<()>();
            gates.push(open);
            let mut share = budget.share();
            assert!(share.cover(4 * 1024, Duration::ZERO).await);
            let (running, most, entered) = (running.clone(), most.clone(), entered.clone());
            let job = move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                entered.lock().unwrap().push(i);
                let _ = gate.recv();
                running.fetch_sub(1, Ordering::SeqCst);
                i
            };
            let slots = slots.clone();
            posts.push(tokio::spawn(async move {
                off_worker(&slots, Duration::from_secs(30), share, job)
                    .await
                    .map(|(i, _share)| i)
            }));
        }
        until("N verifications to start", || {
            entered.lock().unwrap().len() == N
        })
        .await;
        assert_eq!(slots.available_permits(), 0);
        assert_eq!(budget.available_kib(), 64 - 4 * (N + 2));

        // Every slot is taken: a post that cannot wait its turn is refused.
        let refused = off_worker(&slots, Duration::from_millis(20), (), || ()).await;
        assert!(matches!(refused, Err(OffWorker::Busy)), "{refused:?}");

        // A caller goes away while its body is verified: the job keeps its slot and its
        // body's share of the budget until it ends.
        let first = entered.lock().unwrap()[0];
        posts[first].abort();
        assert!((&mut posts[first]).await.unwrap_err().is_cancelled());
        assert_eq!(slots.available_permits(), 0);
        assert_eq!(budget.available_kib(), 64 - 4 * (N + 2));
        gates[first].send(()).unwrap();
        until("the third verification to start", || {
            entered.lock().unwrap().len() == N + 1
        })
        .await;
        assert_eq!(budget.available_kib(), 64 - 4 * (N + 1));
        assert_eq!(running.load(Ordering::SeqCst), N);

        for gate in &gates {
            let _ = gate.send(());
        }
        for (i, post) in posts.into_iter().enumerate() {
            if i != first {
                assert_eq!(post.await.unwrap().unwrap(), i);
            }
        }
        assert_eq!(most.load(Ordering::SeqCst), N);
        assert_eq!(budget.available_kib(), 64);
    }
}
