//! What one request carries through the stages of [`crate::pipeline`]: the facts it arrived
//! with and what each stage learned, for the stages after it and for the request's record.
//!
//! A stage reads what it needs from the context and writes what it learns into it; nothing
//! is passed from stage to stage by hand. Making a context allocates nothing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper::body::Incoming;
use idgate_auth::{Caller, Principal};
use idgate_h1::RequestBody;

use crate::access_log::{Decision, Record};
use crate::conn::ConnInfo;
use crate::problem::Refusal;
use crate::routes::{PathParams, Route, UnroutedPath};
use crate::service::{BodyBudget, BodyShare, Services};
use crate::snapshot::Snapshot;

/// Which of the caller's principals authorization accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorized {
    Workload,
    ApiKey,
    Token,
    JwtSvid,
}

/// The upstream credential a forwarded request was sent with: its label and version, never
/// its value.
#[derive(Debug, Clone)]
pub struct CredentialUse<'r> {
    pub label: &'r Arc<str>,
    pub version: Arc<str>,
    /// The OAuth2 token sent, handed back if the upstream refuses it.
    pub issued: Option<idgate_secrets::oauth2::Issued>,
}

/// One request's context, from its arrival to its record.
#[derive(Debug)]
pub struct RequestCtx<'r> {
    // What the request arrived with.
    pub conn: &'r Arc<ConnInfo>,
    /// The configuration in force when the request arrived, kept to its end.
    pub snapshot: &'r Snapshot,
    pub services: &'r Services,
    pub request_id: HeaderValue,
    /// The gateway's own id when `request_id` is the caller's and an audit trail records
    /// the request: its record then also carries an id that no caller chose.
    pub own_id: Option<HeaderValue>,
    pub start: Instant,
    pub method: Method,
    pub version: Version,
    /// The request body while no stage has taken it: one that is refused reads it away.
    pub body: Option<Incoming>,
    /// The whole body, once a stage needed it (see [`RequestCtx::read_body`]).
    pub buffered_body: Option<Bytes>,
    /// Its share of the gateway's budget for buffered bodies, held to the request's end.
    body_budget: Option<BodyShare>,
    /// The body is announced with `Expect: 100-continue`: a refusal must not invite it.
    pub expects_continue: bool,

    // What the stages learn.
    /// The matched route (a configured one or a built-in target).
    pub route: Option<&'r Route>,
    /// What the route's path template captured, as spans of the canonical path.
    pub params: PathParams<'r>,
    /// Every identity authentication established.
    pub caller: Option<Caller>,
    /// The principal of `caller` that authorization accepted.
    pub authorized: Option<Authorized>,
    pub credential: Option<CredentialUse<'r>>,
    pub upstream_status: Option<StatusCode>,
    /// From sending the request upstream to its response head.
    pub upstream_latency: Option<Duration>,
    /// When the request was sent upstream (to the failover upstream, once it went there):
    /// how long an upstream kept a request whose caller went away before it answered.
    pub upstream_sent: Option<Instant>,
    /// Headers a stage adds to the response the caller gets.
    pub response_headers: AddedHeaders,
    /// The object the path names, once the ownership check found it the caller's.
    pub owned_object: Option<idgate_store::ObjectId>,
    pub decision: Decision,
    /// The gateway has decided to serve the request: every check passed and its record has
    /// its place. Until then a caller that goes away leaves the request undecided.
    pub admitted: bool,
    /// The request's place in the audit queue, reserved before it is served.
    pub audit_permit: Option<idgate_audit::Permit>,
    /// The request target in its canonical form, kept for the audit trail (which records its
    /// path, never its query) when there is one.
    pub uri: Option<http::Uri>,
    /// The request body's announced length.
    pub bytes_in: Option<u64>,
    /// The response body's length, when known before it is sent.
    pub bytes_out: Option<u64>,
    /// The route's failover upstream, once the request went there (`resilience.rs`).
    pub failover: Option<&'r crate::upstream::Upstream>,
    /// The primary upstream's failed attempt, and how long it took to answer if it did,
    /// while the request falls back: incident detection hears of it once the fallback ends,
    /// or, when the caller goes away first, with the request's record.
    pub primary_failed: Option<(&'r crate::upstream::Upstream, Option<Duration>)>,
    /// The request's record was made; a request dropped before (its caller went away) gets
    /// its record when its context is dropped.
    recorded: bool,
}

impl<'r> RequestCtx<'r> {
    pub fn new(
        snapshot: &'r Snapshot,
        conn: &'r Arc<ConnInfo>,
        services: &'r Services,
        parts: &http::request::Parts,
        body: Incoming,
    ) -> Self {
        let (request_id, own_id) = match parts.headers.get(&crate::service::X_REQUEST_ID) {
            Some(v) if crate::service::valid_request_id(v) => (
                v.clone(),
                services.audit.is_some().then(|| services.ids.next()),
            ),
            _ => (services.ids.next(), None),
        };
        let bytes_in = http_body::Body::size_hint(&body).exact();
        Self {
            conn,
            snapshot,
            services,
            request_id,
            own_id,
            start: Instant::now(),
            method: parts.method.clone(),
            version: parts.version,
            body: Some(body),
            buffered_body: None,
            body_budget: None,
            expects_continue: parts.headers.contains_key(http::header::EXPECT),
            route: None,
            params: PathParams::default(),
            caller: None,
            authorized: None,
            credential: None,
            upstream_status: None,
            upstream_latency: None,
            upstream_sent: None,
            response_headers: AddedHeaders::default(),
            owned_object: None,
            decision: Decision::Allowed,
            admitted: false,
            audit_permit: None,
            uri: None,
            bytes_in,
            bytes_out: None,
            failover: None,
            primary_failed: None,
            recorded: false,
        }
    }

    /// The whole request body, read once and kept: every stage that needs it (a signer, a
    /// validator) shares the one copy. Read up to `limit` and never past the route's
    /// `max_body_bytes`, within `timeout`, and within the gateway's budget for buffered
    /// bodies, taken as the bytes arrive (`Busy` when it is spent). On `BodyTooLarge` and
    /// `Busy` what was read is let go and the rest stays in `body`, to be read away beside
    /// the answer. A copy already read is held to `limit` too: a later stage's smaller limit
    /// is not passed by an earlier stage's read.
    pub async fn read_body(&mut self, limit: u64, timeout: Duration) -> Result<Bytes, Refusal> {
        let limit = limit.min(self.max_body_bytes());
        if let Some(bytes) = &self.buffered_body {
            if bytes.len() as u64 > limit {
                return Err(Refusal::BodyTooLarge);
            }
            return Ok(bytes.clone());
        }
        let Some(mut body) = self.body.take() else {
            return Err(Refusal::Internal {
                reason: "the request body was taken before it was read".to_owned(),
            });
        };
        let budget = &self.services.body_budget;
        // A trickled body must not hold the connection (and its buffer) for ever.
        let read = tokio::time::timeout(timeout, read_within_budget(&mut body, limit, budget))
            .await
            .map_err(|_| Refusal::BadBody {
                reason: "the request body did not arrive in time".to_owned(),
            })?;
        match read {
            Ok((bytes, share)) => {
                self.body_budget = Some(share);
                self.buffered_body = Some(bytes.clone());
                Ok(bytes)
            }
            Err(refusal) => {
                if matches!(refusal, Refusal::BodyTooLarge | Refusal::Busy) {
                    self.body = Some(body);
                }
                Err(refusal)
            }
        }
    }

    /// Lends the buffered body's share of the budget to a job that reads the body on past
    /// the request, should its caller go away first: the share goes with the job, and
    /// [`RequestCtx::keep_body_share`] takes it back when the job ends.
    pub(crate) fn lend_body_share(&mut self) -> Option<BodyShare> {
        self.body_budget.take()
    }

    /// Takes back the share [`RequestCtx::lend_body_share`] lent, held to the request's end.
    pub(crate) fn keep_body_share(&mut self, share: Option<BodyShare>) {
        self.body_budget = share;
    }

    /// A body that was refused before any of it was sent goes back to be read away beside
    /// the answer (one read whole already needs nothing more).
    pub fn give_back(&mut self, body: RequestBody) {
        if let RequestBody::Stream(b) = body {
            self.body = Some(b.into_inner());
        }
    }

    /// The body to send on: as it streams in (held to the route's `max_body_bytes` and the
    /// listener's `body_timeout`), or as read by [`RequestCtx::read_body`].
    pub fn take_body(&mut self) -> Result<RequestBody, Refusal> {
        match (self.body.take(), self.buffered_body.clone()) {
            (Some(body), _) => Ok(RequestBody::Stream(idgate_h1::CallerBody::new(
                body,
                self.max_body_bytes(),
                self.snapshot.request_limits.body_timeout,
            ))),
            (None, Some(bytes)) => Ok(RequestBody::Buffered(bytes)),
            (None, None) => Err(Refusal::Internal {
                reason: "the request body was taken before forwarding".to_owned(),
            }),
        }
    }

    /// The largest body the request may have: its route's limit.
    pub fn max_body_bytes(&self) -> u64 {
        self.route.map_or(u64::MAX, |r| r.max_body_bytes)
    }

    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// The route's name for logs and metrics; `-` before (or without) a route.
    pub fn route_name(&self) -> &'r Arc<str> {
        self.route.map_or(&self.services.route_none, |r| &r.name)
    }

    /// The upstream the route sends to, if it sends to one (its failover upstream, once the
    /// request went there).
    pub fn upstream(&self) -> Option<&'r crate::upstream::Upstream> {
        if let Some(secondary) = self.failover {
            return Some(secondary);
        }
        match self.route?.target {
            crate::routes::Target::Upstream(i) => self.snapshot.upstreams.get(i),
            crate::routes::Target::TokenEndpoint | crate::routes::Target::Webhook(_) => None,
        }
    }

    /// The principal authorization accepted.
    pub fn principal(&self) -> Option<Principal<'_>> {
        let caller = self.caller.as_ref()?;
        match self.authorized? {
            Authorized::Workload => caller.spiffe_id.as_ref().map(Principal::Workload),
            Authorized::ApiKey => caller.api_key.as_deref().map(Principal::ApiKey),
            Authorized::Token => caller.token.as_ref().map(Principal::Token),
            Authorized::JwtSvid => caller.jwt_svid.as_ref().map(Principal::JwtSvid),
        }
    }

    /// Hands the request's record to its consumers: the access log, the audit trail, the
    /// request metrics and incident detection.
    pub fn record(&mut self, status: StatusCode) {
        self.recorded = true;
        if let Some(incidents) = &self.services.incidents {
            self.feed_incidents(incidents.feed(), status, self.upstream_latency);
        }
        self.write_record(status);
    }

    /// The record of a request whose caller went away before its answer: status 499, in
    /// the access log, the audit trail and the metrics alike. Its decision is the one the
    /// gateway had already made: a request a stage refused (or failed) while it still had
    /// work to finish (a failed login's lockout count) keeps `denied:…` (`failed:…`); one the
    /// gateway had decided to serve becomes `allowed:client-closed`, and one it had not
    /// decided on yet (its credential, a check or its place in the audit queue still awaited)
    /// `undecided:client-closed`: it was never allowed. Incident
    /// detection hears what the upstream showed: its answer if it gave one, or, when it
    /// kept the request past the latency threshold, that time as a latency at least that
    /// long. A caller that gives up sooner says nothing of the upstream, and is no failure.
    fn record_unanswered(&mut self) {
        self.recorded = true;
        let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
        if let Some(incidents) = &self.services.incidents {
            let threshold = incidents.latency_threshold();
            let kept = self
                .upstream_sent
                .filter(|_| self.upstream_latency.is_none())
                .map(|sent| sent.elapsed())
                .filter(|&kept| kept >= threshold);
            self.feed_incidents(incidents.feed(), status, self.upstream_latency.or(kept));
            // A primary that failed before the failover upstream took the request: its
            // failure stands, whatever became of the request.
            if self.failover.is_some()
                && let Some((primary, latency)) = self.primary_failed.take()
            {
                self.feed_upstream(incidents.feed(), Some(primary), false, true, latency, false);
            }
        }
        if !matches!(self.decision, Decision::Denied(_) | Decision::Failed(_)) {
            self.decision = if self.admitted {
                Decision::AllowedBy(crate::access_log::CLIENT_CLOSED)
            } else {
                Decision::Undecided(crate::access_log::CLIENT_CLOSED)
            };
        }
        self.write_record(status);
    }

    /// The record's access line, audit record and request metrics.
    fn write_record(&mut self, status: StatusCode) {
        let route = self.route_name();
        let latency = self.start.elapsed();
        let permit = self.audit_permit.take();
        if self.services.access_log.is_some() || self.services.audit.is_some() {
            self.with_record(status, latency, |record| {
                if let Some(log) = &self.services.access_log {
                    log.write(record);
                }
                if let Some(trail) = &self.services.audit {
                    let facts = self.audit_facts();
                    crate::audit::request(trail, record, &facts, self.conn.remote, permit);
                }
            });
        }
        let metrics = &self.services.metrics;
        let kept = self.route.map(|r| &r.metrics);
        metrics.request(route, kept, status.as_u16(), self.decision, latency);
        if let Some(took) = self.upstream_latency
            && let Some(upstream) = self.upstream()
        {
            metrics.upstream_answered(&upstream.name, &upstream.latency_kept, took);
        }
    }

    /// Counts the request for incident detection: nothing is allocated, the principal's
    /// label is formatted only for a failed request whose caller is not yet noted. A cached
    /// answer stands for an upstream failure (of the upstream named last): it is counted as
    /// one, whatever the caller got. `upstream_latency`: how long the upstream took.
    fn feed_incidents(
        &self,
        feed: &idgate_incidents::Feed,
        status: StatusCode,
        upstream_latency: Option<Duration>,
    ) {
        let from_cache = self.decision == Decision::AllowedBy(crate::access_log::FALLBACK_CACHE);
        let upstream_5xx = self.upstream_status.is_some_and(|s| s.is_server_error());
        let gateway_failed = matches!(self.decision, Decision::Failed(_));
        let upstream = self.upstream();
        let failed = !from_cache
            && (gateway_failed || upstream_5xx || (status.is_server_error() && upstream.is_some()));
        self.feed_upstream(
            feed,
            upstream,
            failed,
            // The upstream failed it only if it was sent: a request refused before (the
            // shared state down under `fail_closed`, the credential unavailable, the audit
            // queue full) says nothing of the upstream.
            upstream.is_some()
                && (from_cache
                    || upstream_5xx
                    || (gateway_failed
                        && self.upstream_status.is_none()
                        && self.upstream_sent.is_some())),
            upstream_latency,
            from_cache,
        );
    }

    /// Counts, for incident detection, the primary upstream's failed attempt at a request
    /// the failover upstream went on with: the request's record (and its own count) names
    /// the secondary alone, and the primary's failure would go unseen. `served`: a fallback
    /// answered the caller; else the request failed.
    pub(crate) fn feed_failed_over(&mut self, served: bool) {
        let Some((primary, latency)) = self.primary_failed.take() else {
            return;
        };
        if let Some(incidents) = &self.services.incidents {
            self.feed_upstream(
                incidents.feed(),
                Some(primary),
                !served,
                true,
                latency,
                served,
            );
        }
    }

    fn feed_upstream(
        &self,
        feed: &idgate_incidents::Feed,
        upstream: Option<&crate::upstream::Upstream>,
        failed: bool,
        upstream_error: bool,
        upstream_latency: Option<Duration>,
        fallback: bool,
    ) {
        let principal = self.principal();
        let peer = self.conn.peer.as_ref().map(|p| p.as_str());
        let caller: Option<&dyn std::fmt::Display> = match (&principal, &peer) {
            (Some(p), _) => Some(p),
            (None, Some(peer)) => Some(peer),
            (None, None) => None,
        };
        feed.request(&idgate_incidents::RequestEvent {
            route: self.route_name(),
            upstream: upstream.map(|u| &*u.name),
            failed,
            upstream_error,
            upstream_latency,
            caller,
            fallback,
        });
    }

    /// The request's record, made for `f` (borrowed from the context: nothing is copied but
    /// a non-workload principal's label).
    fn with_record<T>(
        &self,
        status: StatusCode,
        latency: Duration,
        f: impl FnOnce(&Record<'_>) -> T,
    ) -> T {
        let peer = self.conn.peer.as_ref().map(|p| p.as_str());
        // The principal that was authorized, or every one refused. Before authorization
        // (and on mTLS alone) the peer is all that is known, and no label is made.
        let label = match self.principal() {
            Some(Principal::Workload(_)) => None,
            Some(p) => Some(p.label()),
            None => self.caller.as_ref().and_then(Caller::label),
        };
        f(&Record {
            time: SystemTime::now(),
            request_id: self.request_id(),
            peer,
            caller: label.as_deref().or(peer),
            remote: self.conn.remote.ip(),
            method: &self.method,
            version: self.version,
            route: self.route_name(),
            status: status.as_u16(),
            upstream_status: self.upstream_status.map(|s| s.as_u16()),
            credential: self.credential.as_ref().map(|c| (&**c.label, &*c.version)),
            decision: self.decision,
            latency,
        })
    }

    /// What the audit trail records beyond the access line.
    fn audit_facts(&self) -> crate::audit::AuditFacts<'_> {
        let (path, template) = self.audit_path();
        let caller = self.caller.as_ref();
        crate::audit::AuditFacts {
            path,
            template,
            uid: self.own_id.as_ref().and_then(|v| v.to_str().ok()),
            auth_layers: idgate_audit::AuthLayers {
                mtls: caller.is_some_and(|c| c.spiffe_id.is_some()),
                api_key: caller.is_some_and(|c| c.api_key.is_some()),
                jwt: caller.is_some_and(|c| c.token.is_some()),
                jwt_svid: caller.is_some_and(|c| c.jwt_svid.is_some()),
            },
            upstream: self.upstream().map(|u| &*u.name),
            upstream_latency: self.upstream_latency,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
        }
    }

    /// The path and template the audit trail records: the canonical path, or the template
    /// where the route's parameters are personal. A request refused before it had a route
    /// (on arrival, or by routing: 404, 405) is held to the same promise by the route table:
    /// the template of a personal route on its path whatever the method, or no path at all
    /// for a near miss of one. Only such a refusal pays for the lookup.
    fn audit_path(&self) -> (Option<&str>, Option<&str>) {
        let path = self.uri.as_ref().map(http::Uri::path);
        let Some(route) = self.route else {
            return match path.map(|p| self.snapshot.routes.unrouted_path(p)) {
                None | Some(UnroutedPath::Withheld) => (None, None),
                Some(UnroutedPath::AsSent) => (path, None),
                Some(UnroutedPath::Template(template)) => (Some(template), Some(template)),
            };
        };
        let template = Some(&*route.template).filter(|t| !t.is_empty());
        if route.audit.personal_path_params {
            (template, template)
        } else {
            (path, template)
        }
    }
}

/// A request whose future is dropped before its record was made (its caller closed the
/// connection or reset the stream while it was served, or the drain cut its connection) is
/// recorded all the same, with status 499: a request that reached the gateway never goes
/// unrecorded. Nothing here waits: the record is handed over as an answered one's is.
impl Drop for RequestCtx<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.record_unanswered();
        }
    }
}

/// How long a body waits for room in the budget for buffered bodies before it is refused
/// `Busy`.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Reads `body` whole, up to `limit`, its share of `budget` growing with the buffer that
/// holds it: a body that stalls holds room for what it sent (at most twice that), never for
/// what it only announced. `Busy` when the share cannot grow within
/// [`BUDGET_WAIT`]; on `Busy` and `BodyTooLarge` what was read is let go (with its share)
/// and the rest is still in `body`.
async fn read_within_budget<B>(
    body: &mut B,
    limit: u64,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyShare), Refusal>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt as _;
    let hint = body.size_hint();
    if hint.lower() > limit {
        return Err(Refusal::BodyTooLarge);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // Room is made for what arrives, never for more than was announced.
    let bound = hint
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .map_or(limit, |n| n.min(limit));
    let mut share = budget.share();
    let mut whole = Whole::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::BadBody {
            reason: e.to_string(),
        })?;
        // Trailers are nothing a stage reads.
        let Some(data) = frame.into_data().ok().filter(|d| !d.is_empty()) else {
            continue;
        };
        if whole.len().saturating_add(data.len()) > limit {
            return Err(Refusal::BodyTooLarge);
        }
        let size = whole.size_with(data.len(), bound);
        if !share.cover(size, BUDGET_WAIT).await {
            return Err(Refusal::Busy);
        }
        whole.push(data, size);
    }
    Ok((whole.into_bytes(), share))
}

/// A body as it is read whole: its first piece kept as it came (a body that arrives in one
/// piece is never copied), then every piece in one buffer, which grows by doubling (copies
/// stay linear in the body) but never past the body's announced length or its limit.
#[derive(Default)]
struct Whole {
    first: Bytes,
    rest: Vec<u8>,
}

impl Whole {
    fn len(&self) -> usize {
        if self.rest.is_empty() {
            self.first.len()
        } else {
            self.rest.len()
        }
    }

    /// The memory the body holds once `more` bytes are added (`bound` and `len + more` at
    /// most), which its share of the budget must cover first.
    fn size_with(&self, more: usize, bound: usize) -> usize {
        let len = self.len().saturating_add(more);
        if self.len() == 0 {
            len
        } else if len <= self.rest.capacity() {
            self.rest.capacity()
        } else {
            self.len().saturating_mul(2).min(bound).max(len)
        }
    }

    /// Adds `data`, in a buffer of `size` when it must grow (from [`Whole::size_with`]).
    fn push(&mut self, data: Bytes, size: usize) {
        if self.len() == 0 {
            self.first = data;
            return;
        }
        if self.rest.is_empty() {
            let first = std::mem::take(&mut self.first);
            self.rest.reserve_exact(size);
            self.rest.extend_from_slice(&first);
        } else if size > self.rest.capacity() {
            self.rest.reserve_exact(size - self.rest.len());
        }
        self.rest.extend_from_slice(&data);
    }

    fn into_bytes(self) -> Bytes {
        if self.rest.is_empty() {
            self.first
        } else {
            Bytes::from(self.rest)
        }
    }
}

/// Reads the body whole, up to `limit`; on `BodyTooLarge` the rest is still in `body`.
pub(crate) async fn read_whole(body: &mut Incoming, limit: u64) -> Result<Bytes, Refusal> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit {
        return Err(Refusal::BodyTooLarge);
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match http_body_util::BodyExt::collect(limited).await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::BodyTooLarge),
        Err(e) => Err(Refusal::BadBody {
            reason: e.to_string(),
        }),
    }
}

/// Headers stages add to the answer, whoever made it; one added again replaces the value
/// added before, and each replaces the answer's own header of its name. A request gets none
/// or two (the rate limits' fields): they are kept in place, not in a map of their own,
/// which would be allocated and hashed for each request and hashed again when emptied
/// into the answer's.
#[derive(Debug, Default)]
pub struct AddedHeaders {
    inline: [Option<(HeaderName, HeaderValue)>; 2],
    more: Vec<(HeaderName, HeaderValue)>,
}

impl AddedHeaders {
    pub fn insert(&mut self, name: HeaderName, value: HeaderValue) {
        let mut added = self.inline.iter_mut().flatten().chain(self.more.iter_mut());
        if let Some(same) = added.find(|(n, _)| *n == name) {
            same.1 = value;
            return;
        }
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some((name, value)),
            None => self.more.push((name, value)),
        }
    }

    /// Moves every added header into `headers`, each replacing the values of its name.
    pub fn move_into(&mut self, headers: &mut HeaderMap) {
        let inline = self.inline.iter_mut().filter_map(Option::take);
        for (name, value) in inline.chain(self.more.drain(..)) {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::{Pin, pin};
    use std::task::{Context, Poll};

    use http_body::{Frame, SizeHint};
    use tokio::sync::mpsc;

    use super::*;

    /// A body whose pieces the test sends as it pleases; a length announced or not.
    struct Pieces {
        rx: mpsc::UnboundedReceiver<Bytes>,
        announced: Option<u64>,
    }

    fn pieces(announced: Option<u64>) -> (mpsc::UnboundedSender<Bytes>, Pieces) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Pieces { rx, announced })
    }

    impl http_body::Body for Pieces {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }

        fn size_hint(&self) -> SizeHint {
            self.announced
                .map_or_else(SizeHint::default, SizeHint::with_exact)
        }
    }

    fn kib(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n * 1024])
    }

    /// Polls `f` once: whatever it can do without waiting, it has done.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn a_stalled_body_holds_only_the_budget_for_what_it_sent() {
        let budget = BodyBudget::new(64);
        // No length and a limit past the whole budget: nothing is held for what may come.
        let (stalled_tx, mut stalled) = pieces(None);
        let mut stalled_read = pin!(read_within_budget(&mut stalled, 1 << 20, &budget));
        assert!(poll_once(&mut stalled_read).await.is_pending());
        assert_eq!(budget.available_kib(), 64);
        stalled_tx.send(kib(3)).unwrap();
        assert!(poll_once(&mut stalled_read).await.is_pending());
        assert_eq!(budget.available_kib(), 61, "it holds what it sent");

        // Another caller's body is read meanwhile, and holds its own size to the end.
        let (tx, mut other) = pieces(Some(8 * 1024));
        for _ in 0..8 {
            tx.send(kib(1)).unwrap();
        }
        drop(tx);
        let (bytes, share) = read_within_budget(&mut other, 1 << 20, &budget)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 8 * 1024);
        assert_eq!(share.kib(), 8);
        assert_eq!(budget.available_kib(), 53);
        drop(share);

        drop(stalled_tx);
        let (bytes, share) = stalled_read.await.unwrap();
        assert_eq!((bytes.len(), share.kib()), (3 * 1024, 3));
        drop(share);
        assert_eq!(budget.available_kib(), 64);
    }

    #[tokio::test]
    async fn a_body_refused_busy_lets_go_of_what_it_read_and_leaves_the_rest_unread() {
        let budget = BodyBudget::new(16);
        let mut other = budget.share();
        assert!(other.cover(8 * 1024, Duration::ZERO).await);

        let (tx, mut body) = pieces(None);
        tx.send(kib(4)).unwrap();
        tx.send(kib(8)).unwrap();
        tx.send(kib(1)).unwrap();
        let refused = read_within_budget(&mut body, 1 << 20, &budget).await;
        assert!(matches!(refused, Err(Refusal::Busy)), "{refused:?}");
        assert_eq!(budget.available_kib(), 8, "what it read is let go");
        // The rest stays in the body, to be read away beside the answer.
        assert_eq!(body.rx.recv().await.map(|b| b.len()), Some(1024));
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_and_lets_go_of_what_it_read() {
        let budget = BodyBudget::new(64);
        let (tx, mut announced) = pieces(Some(4 * 1024));
        tx.send(kib(4)).unwrap();
        let refused = read_within_budget(&mut announced, 1024, &budget).await;
        assert!(matches!(refused, Err(Refusal::BodyTooLarge)), "{refused:?}");
        assert_eq!(announced.rx.len(), 1, "refused before any of it was read");

        let (tx, mut unannounced) = pieces(None);
        tx.send(kib(1)).unwrap();
        tx.send(kib(1)).unwrap();
        let mut read = pin!(read_within_budget(&mut unannounced, 1024, &budget));
        assert!(matches!(
            poll_once(&mut read).await,
            Poll::Ready(Err(Refusal::BodyTooLarge))
        ));
        assert_eq!(budget.available_kib(), 64);
    }

    #[tokio::test]
    async fn a_body_read_in_pieces_holds_no_more_than_twice_what_arrived() {
        let budget = BodyBudget::new(1024);
        // Announced: the buffer ends at the announced length, and the share with it.
        let (tx, mut announced) = pieces(Some(10_000));
        for _ in 0..10 {
            tx.send(Bytes::from(vec![b'a'; 1000])).unwrap();
        }
        drop(tx);
        let (bytes, share) = read_within_budget(&mut announced, 1 << 20, &budget)
            .await
            .unwrap();
        assert_eq!(bytes, vec![b'a'; 10_000]);
        assert_eq!(share.kib(), 10);
        drop(share);

        let (tx, mut unannounced) = pieces(None);
        let mut read = pin!(read_within_budget(&mut unannounced, 1 << 20, &budget));
        for sent in 1..=40usize {
            tx.send(Bytes::from(vec![b'b'; 1000])).unwrap();
            assert!(poll_once(&mut read).await.is_pending());
            let held = 1024 - budget.available_kib();
            assert!(
                held <= 2 * (sent * 1000).div_ceil(1024),
                "{held} KiB for {sent}000 bytes"
            );
        }
        drop(tx);
        let (bytes, _share) = read.await.unwrap();
        assert_eq!(bytes, vec![b'b'; 40_000]);
    }

    #[tokio::test]
    async fn a_body_of_one_piece_is_kept_as_it_came() {
        let budget = BodyBudget::new(64);
        let (tx, mut body) = pieces(None);
        let piece = kib(2);
        tx.send(piece.clone()).unwrap();
        drop(tx);
        let (bytes, share) = read_within_budget(&mut body, 1 << 20, &budget)
            .await
            .unwrap();
        assert_eq!(bytes.as_ptr(), piece.as_ptr(), "not copied");
        assert_eq!(share.kib(), 2);
    }

    #[test]
    fn added_headers_replace_their_name_in_the_answer_and_each_other() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let value = |v: &'static str| HeaderValue::from_static(v);
        let mut added = AddedHeaders::default();
        added.insert(name("ratelimit"), value("first"));
        added.insert(name("ratelimit-policy"), value("p"));
        added.insert(name("x-third"), value("3"));
        added.insert(name("ratelimit"), value("second"));
        added.insert(name("x-third"), value("three"));
        let mut answer = HeaderMap::new();
        answer.append(name("ratelimit"), value("upstream's"));
        answer.append(name("ratelimit"), value("upstream's too"));
        answer.insert(name("content-type"), value("application/json"));
        added.move_into(&mut answer);
        let all = |n| answer.get_all(n).iter().collect::<Vec<_>>();
        assert_eq!(all("ratelimit"), ["second"]);
        assert_eq!(all("ratelimit-policy"), ["p"]);
        assert_eq!(all("x-third"), ["three"]);
        assert_eq!(all("content-type"), ["application/json"]);
        // Emptied: a second move adds nothing.
        let mut again = HeaderMap::new();
        added.move_into(&mut again);
        assert!(again.is_empty());
    }
}
