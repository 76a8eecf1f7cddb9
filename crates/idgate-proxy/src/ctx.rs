//! What one request carries through the stages of [`crate::pipeline`]: the facts it arrived
//! with and what each stage learned, for the stages after it and for the request's record.
//!
//! A stage reads what it needs from the context and writes what it learns into it; nothing
//! is passed from stage to stage by hand. Making a context allocates nothing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper::body::Incoming;
use idgate_auth::{Caller, Principal};
use idgate_h1::RequestBody;
use tokio::sync::SemaphorePermit;

use crate::access_log::{Decision, Record};
use crate::conn::ConnInfo;
use crate::problem::Refusal;
use crate::routes::{PathParams, Route, UnroutedPath};
use crate::service::{BODY_BUDGET_KIB, Services};
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
    body_budget: Option<SemaphorePermit<'r>>,
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
    /// Headers a stage adds to the response the caller gets.
    pub response_headers: HeaderMap,
    /// The object the path names, once the ownership check found it the caller's.
    pub owned_object: Option<idgate_store::ObjectId>,
    pub decision: Decision,
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
    /// The request's record was made; a request dropped before (its caller went away) still
    /// gets its audit record.
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
            response_headers: HeaderMap::new(),
            owned_object: None,
            decision: Decision::Allowed,
            audit_permit: None,
            uri: None,
            bytes_in,
            bytes_out: None,
            failover: None,
            recorded: false,
        }
    }

    /// The whole request body, read once and kept: every stage that needs it (a signer, a
    /// validator) shares the one copy. Read up to `limit` and never past the route's
    /// `max_body_bytes`, within `timeout`, and within the gateway's budget for buffered
    /// bodies (`Busy` when it is spent). On `BodyTooLarge` the rest stays in `body`, to be
    /// read away beside the answer. A copy already read is held to `limit` too: a later
    /// stage's smaller limit is not passed by an earlier stage's read.
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
        // All buffered bodies together stay within one budget: many streams each sending the
        // largest body must not exhaust memory.
        let want = http_body::Body::size_hint(&body)
            .exact()
            .unwrap_or(limit)
            .min(limit);
        let kib = u32::try_from(want.div_ceil(1024).max(1))
            .unwrap_or(BODY_BUDGET_KIB)
            .min(BODY_BUDGET_KIB);
        let budget = &self.services.body_budget;
        match tokio::time::timeout(Duration::from_secs(1), budget.acquire_many(kib)).await {
            Ok(Ok(permit)) => self.body_budget = Some(permit),
            _ => {
                // Refused before any of it was read: read away beside the answer.
                self.body = Some(body);
                return Err(Refusal::Busy);
            }
        }
        // A trickled body must not hold the connection (and its buffer) for ever.
        let read = tokio::time::timeout(timeout, read_whole(&mut body, limit))
            .await
            .map_err(|_| Refusal::BadBody {
                reason: "the request body did not arrive in time".to_owned(),
            })?;
        match read {
            Ok(bytes) => {
                self.buffered_body = Some(bytes.clone());
                Ok(bytes)
            }
            Err(refusal) => {
                if matches!(refusal, Refusal::BodyTooLarge) {
                    self.body = Some(body);
                }
                Err(refusal)
            }
        }
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

    /// Hands the request's record to its consumers: the access log, the audit trail and
    /// the request metrics.
    pub fn record(&mut self, status: StatusCode) {
        let route = self.route_name();
        let latency = self.start.elapsed();
        self.recorded = true;
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
        if let Some(incidents) = &self.services.incidents {
            self.feed_incidents(incidents.feed(), status);
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
    /// label is formatted only for a failed request whose caller is not yet noted.
    fn feed_incidents(&self, feed: &idgate_incidents::Feed, status: StatusCode) {
        let upstream_5xx = self.upstream_status.is_some_and(|s| s.is_server_error());
        let gateway_failed = matches!(self.decision, Decision::Failed(_));
        let upstream = self.upstream();
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
            failed: gateway_failed
                || upstream_5xx
                || (status.is_server_error() && upstream.is_some()),
            upstream_error: upstream.is_some()
                && (upstream_5xx || (gateway_failed && self.upstream_status.is_none())),
            upstream_latency: self.upstream_latency,
            caller,
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
            Some(p) => Some(p.to_string()),
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
/// connection while it was served) is recorded in the audit trail all the same, as status
/// 499: a request that reached the gateway never goes unrecorded.
impl Drop for RequestCtx<'_> {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        if let Some(trail) = &self.services.audit {
            let permit = self.audit_permit.take();
            let status = StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST);
            self.with_record(status, self.start.elapsed(), |record| {
                let facts = self.audit_facts();
                crate::audit::request(trail, record, &facts, self.conn.remote, permit);
            });
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
