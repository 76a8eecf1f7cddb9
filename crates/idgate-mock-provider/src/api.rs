//! The provider API: route, authenticate, answer. The order is the real provider's (a
//! Django REST framework service): an unknown path is 404 before any credential is looked
//! at, then the credential (401), then the method (405), then the handler.
//!
//! Endpoints (every Didit path also under `/v2/`; the trailing slash is optional):
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v3/session/` | 201 the session (the unfinished one with the same `vendor_data` if any) |
//! | GET | `/v3/session/{id}/decision/` | 200 the decision, 404 unknown |
//! | GET | `/v3/sessions/?limit=&offset=&vendor_data=&status=…` | 200 `{count,next,previous,results}` (see [`crate::list`]) |
//! | PATCH | `/v3/session/{id}/update-status/` | 200 `{session_id}` for a finished session, else 400 (see [`crate::flow`]) |
//! | DELETE | `/v3/session/{id}/delete/` | 204 |
//! | GET, POST | `/v3/workflows/` | 200 list / 201 created |
//! | GET, PATCH, DELETE | `/v3/workflows/{uuid}/` | 200 / 200 / 204 |
//! | POST | `/v1/sessions` (Veriff mode) | 201 Veriff's session shape, a new session each time |
//! | GET | `/v1/sessions/{id}/decision` (Veriff mode) | 200 Veriff's decision shape |
//! | POST | `/mock/session/{id}/status/` (not Didit's) | the verifying user's step, see [`crate::flow`] |
//! | GET | `/healthz` | 200, no credential needed |
//!
//! Creating a session and every change of its status send a `status.updated` webhook when
//! one is configured.
//!
//! `HEAD` is answered wherever `GET` is, with the same status and headers and no body, as
//! a Django view answers it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::auth::Authenticator;
use crate::data::{self, ApiVersion};
use crate::store::{self, MockState, NewSession, SeenRequest};
use crate::webhook::WebhookSender;
use crate::{flow, list};

/// Larger bodies are refused with 413.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every request handler shares.
pub(crate) struct App {
    pub(crate) state: Arc<MockState>,
    pub(crate) auth: Authenticator,
    pub(crate) webhook: Option<Arc<WebhookSender>>,
    /// `https` or `http`, for the absolute links in paginated answers.
    pub(crate) scheme: &'static str,
    pub(crate) fallback_host: String,
    pub(crate) session_url_base: String,
    /// See [`crate::MockConfig::veriff_abandoned_code`].
    pub(crate) veriff_abandoned_code: Option<u16>,
}

pub(crate) type Resp = Response<Full<Bytes>>;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(crate) fn detail(status: StatusCode, detail: &str) -> Resp {
    json_response(status, &json!({ "detail": detail }))
}

pub(crate) fn not_found() -> Resp {
    detail(StatusCode::NOT_FOUND, "Not found.")
}

fn empty(status: StatusCode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Health,
    CreateSession(ApiVersion),
    Decision(ApiVersion, &'a str),
    UpdateStatus(ApiVersion, &'a str),
    DeleteSession(ApiVersion, &'a str),
    ListSessions(ApiVersion),
    Workflows(ApiVersion),
    Workflow(ApiVersion, &'a str),
    VeriffCreate,
    VeriffDecision(&'a str),
    /// Not Didit's: the verifying user's step in the hosted flow.
    MockStatus(&'a str),
}

impl<'a> Route<'a> {
    fn parse(path: &'a str, veriff: bool) -> Option<Self> {
        let path = path.strip_prefix('/')?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let segments: Vec<&str> = path.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return None;
        }
        let route = match segments.as_slice() {
            ["healthz"] => Self::Health,
            [version @ ("v2" | "v3"), rest @ ..] => {
                let v = if *version == "v2" {
                    ApiVersion::V2
                } else {
                    ApiVersion::V3
                };
                match rest {
                    ["session"] => Self::CreateSession(v),
                    ["session", id, "decision"] => Self::Decision(v, id),
                    ["session", id, "update-status"] => Self::UpdateStatus(v, id),
                    ["session", id, "delete"] => Self::DeleteSession(v, id),
                    ["sessions"] => Self::ListSessions(v),
                    ["workflows"] => Self::Workflows(v),
                    ["workflows", id] => Self::Workflow(v, id),
                    _ => return None,
                }
            }
            ["mock", "session", id, "status"] => Self::MockStatus(id),
            ["v1", "sessions"] if veriff => Self::VeriffCreate,
            ["v1", "sessions", id, "decision"] if veriff => Self::VeriffDecision(id),
            _ => return None,
        };
        Some(route)
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Self::Health | Self::Decision(..) | Self::ListSessions(_) | Self::VeriffDecision(_) => {
                &[Method::GET]
            }
            Self::CreateSession(_) | Self::VeriffCreate | Self::MockStatus(_) => &[Method::POST],
            Self::UpdateStatus(..) => &[Method::PATCH],
            Self::DeleteSession(..) => &[Method::DELETE],
            Self::Workflows(_) => &[Method::GET, Method::POST],
            Self::Workflow(..) => &[Method::GET, Method::PATCH, Method::DELETE],
        }
    }

    /// Whether the route takes `method`: HEAD wherever GET is.
    fn allows(self, method: &Method) -> bool {
        let methods = self.methods();
        methods.contains(method) || (*method == Method::HEAD && methods.contains(&Method::GET))
    }

    /// The `Allow` header's methods.
    fn allow_header(self) -> String {
        let mut names = Vec::new();
        for m in self.methods() {
            names.push(m.as_str());
            if *m == Method::GET {
                names.push(Method::HEAD.as_str());
            }
        }
        names.join(", ")
    }
}

/// Answers one request and records it for [`MockState`].
pub(crate) async fn handle(app: Arc<App>, req: http::Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let (body, resp) = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => {
            let body = collected.to_bytes();
            let mut resp = respond(&app, &parts, &body).await;
            if parts.method == Method::HEAD {
                resp = without_body(resp);
            }
            (body, resp)
        }
        Err(e) if e.is::<http_body_util::LengthLimitError>() => (
            Bytes::new(),
            detail(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large."),
        ),
        Err(_) => (
            Bytes::new(),
            detail(
                StatusCode::BAD_REQUEST,
                "The request body could not be read.",
            ),
        ),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    // The path only: session ids are not personal data, query strings may be (vendor_data).
    tracing::info!(
        method = %parts.method,
        path = parts.uri.path(),
        status = resp.status().as_u16(),
        "request"
    );
    app.state.record(SeenRequest {
        method: parts.method.to_string(),
        path_and_query,
        version: parts.version,
        headers: parts.headers,
        body,
        status: resp.status().as_u16(),
    });
    resp
}

async fn respond(app: &App, parts: &Parts, body: &Bytes) -> Resp {
    if let Some(status) = app.state.take_injected_failure() {
        return injected_failure(status);
    }
    let latency = app.state.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let Some(route) = Route::parse(parts.uri.path(), app.auth.is_veriff()) else {
        return not_found();
    };
    if route == Route::Health {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    if let Err(refused) = app
        .auth
        .check(&parts.method, path_and_query, &parts.headers, body)
    {
        tracing::info!(path = parts.uri.path(), "credential refused");
        return json_response(StatusCode::UNAUTHORIZED, &refused.0);
    }
    if !route.allows(&parts.method) {
        let mut resp = detail(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("Method \"{}\" not allowed.", parts.method),
        );
        if let Ok(v) = HeaderValue::from_str(&route.allow_header()) {
            resp.headers_mut().insert(ALLOW, v);
        }
        return resp;
    }
    // HEAD is GET without the body (which `handle` takes off).
    let method = if parts.method == Method::HEAD {
        Method::GET
    } else {
        parts.method.clone()
    };
    let query = parts.uri.query().unwrap_or("");
    match route {
        Route::Health => json_response(StatusCode::OK, &json!({"status": "ok"})),
        Route::CreateSession(_) => create_session(app, body),
        Route::Decision(v, id) => match app.state.session(id) {
            Some(s) => json_response(StatusCode::OK, &data::decision(&s, v)),
            None => not_found(),
        },
        Route::ListSessions(_) => list::list_sessions(app, parts, query),
        Route::UpdateStatus(_, id) => flow::update_status(app, id, body),
        Route::MockStatus(id) => flow::flow_step(app, id, body),
        Route::DeleteSession(_, id) => {
            if app.state.delete_session(id) {
                empty(StatusCode::NO_CONTENT)
            } else {
                not_found()
            }
        }
        Route::Workflows(_) if method == Method::GET => {
            let list: Vec<Value> = app.state.workflows().iter().map(|w| w.to_json()).collect();
            json_response(StatusCode::OK, &Value::Array(list))
        }
        Route::Workflows(_) => create_workflow(app, body),
        Route::Workflow(_, id) => workflow(app, &method, id, body),
        Route::VeriffCreate => veriff_create(app, body),
        Route::VeriffDecision(id) => match app.state.session(id) {
            Some(s) => json_response(
                StatusCode::OK,
                &data::veriff_decision(&s, app.veriff_abandoned_code),
            ),
            None => json_response(
                StatusCode::NOT_FOUND,
                &json!({"status": "fail", "code": "1818", "message": "Session not found"}),
            ),
        },
    }
}

/// The answer to a HEAD: the GET's status and headers, its length, no body.
fn without_body(resp: Resp) -> Resp {
    let (mut head, body) = resp.into_parts();
    if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
        head.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
    Response::from_parts(head, Full::new(Bytes::new()))
}

fn injected_failure(status: u16) -> Resp {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = detail(
        status,
        status.canonical_reason().unwrap_or("Injected failure"),
    );
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// A 4xx the handler answers with instead of going on.
pub(crate) struct Reject(StatusCode, Value);

impl From<Reject> for Resp {
    fn from(r: Reject) -> Self {
        json_response(r.0, &r.1)
    }
}

/// The body as a JSON object, or the 400 Django REST framework would answer.
pub(crate) fn json_object(body: &[u8]) -> Result<Map<String, Value>, Reject> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Reject(
            StatusCode::BAD_REQUEST,
            json!({"detail": "Invalid data. Expected a dictionary."}),
        )),
        Err(e) => Err(Reject(
            StatusCode::BAD_REQUEST,
            json!({"detail": format!("JSON parse error - {e}")}),
        )),
    }
}

/// A 400 naming the field, in both of DRF's shapes (`detail` and `{field: [message]}`).
pub(crate) fn field_error(field: &str, message: &str) -> Reject {
    Reject(
        StatusCode::BAD_REQUEST,
        json!({ "detail": format!("{field}: {message}"), field: [message] }),
    )
}

fn optional_string(map: &Map<String, Value>, field: &str) -> Result<Option<String>, Reject> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(field_error(field, "Not a valid string.")),
    }
}

fn optional_object(map: &Map<String, Value>, field: &str) -> Result<Value, Reject> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(_) => Err(field_error(field, "Expected a dictionary of items.")),
    }
}

fn parse_new_session(body: &[u8]) -> Result<NewSession, Reject> {
    let map = json_object(body)?;
    let workflow_id = match map.get("workflow_id") {
        None | Some(Value::Null) => {
            return Err(field_error("workflow_id", "This field is required."));
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(field_error("workflow_id", "This field may not be blank."));
        }
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(_) => return Err(field_error("workflow_id", "Must be a valid UUID.")),
    };
    Ok(NewSession {
        workflow_id,
        vendor_data: optional_string(&map, "vendor_data")?,
        // Didit stores metadata as given (an object, usually).
        metadata: map.get("metadata").cloned().unwrap_or(Value::Null),
        callback: optional_string(&map, "callback")?,
        contact_details: optional_object(&map, "contact_details")?,
        expected_details: optional_object(&map, "expected_details")?,
    })
}

fn create_session(app: &App, body: &[u8]) -> Resp {
    let new = match parse_new_session(body) {
        Ok(n) => n,
        Err(r) => return r.into(),
    };
    let (session, created) = app.state.create_session(
        new,
        &app.session_url_base,
        10,
        store::Reuse::UnfinishedByVendorData,
    );
    tracing::info!(
        session_id = %session.id,
        session_number = session.number,
        created,
        "session"
    );
    // Didit sends the new session's first status, Not Started, at once.
    if created && let Some(webhook) = &app.webhook {
        webhook.status_updated(&session);
    }
    json_response(StatusCode::CREATED, &data::created_session(&session))
}

pub(crate) fn host(app: &App, parts: &Parts) -> String {
    parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_else(|| app.fallback_host.clone())
}

fn create_workflow(app: &App, body: &[u8]) -> Resp {
    let map = match json_object(body) {
        Ok(m) => m,
        Err(r) => return r.into(),
    };
    let label = match map.get("workflow_label") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
        Some(Value::String(_)) => {
            return field_error("workflow_label", "This field may not be blank.").into();
        }
        None | Some(Value::Null) => {
            return field_error("workflow_label", "This field is required.").into();
        }
        Some(_) => return field_error("workflow_label", "Not a valid string.").into(),
    };
    let features = match store::features_from_body(&map) {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return field_error("features", &e.to_string()).into(),
    };
    let w = app.state.create_workflow(label, features);
    json_response(StatusCode::CREATED, &w.to_json())
}

fn workflow(app: &App, method: &Method, id: &str, body: &[u8]) -> Resp {
    if *method == Method::DELETE {
        return if app.state.delete_workflow(id) {
            empty(StatusCode::NO_CONTENT)
        } else {
            not_found()
        };
    }
    if *method == Method::GET {
        return match app.state.workflow(id) {
            Some(w) => json_response(StatusCode::OK, &w.to_json()),
            None => not_found(),
        };
    }
    // PATCH
    if app.state.workflow(id).is_none() {
        return not_found();
    }
    let map = match json_object(body) {
        Ok(m) => m,
        Err(r) => return r.into(),
    };
    let label = match map.get("workflow_label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(_) => return field_error("workflow_label", "Not a valid label.").into(),
    };
    let features = match store::features_from_body(&map) {
        Ok(f) => f,
        Err(e) => return field_error("features", &e.to_string()).into(),
    };
    match app.state.update_workflow(id, label, features) {
        Some(w) => json_response(StatusCode::OK, &w.to_json()),
        None => not_found(),
    }
}

/// Veriff's `POST /v1/sessions`: `{"verification": {"callback", "person", "vendorData"}}`.
/// Each is a new session: the same `vendorData` twice makes two.
fn veriff_create(app: &App, body: &[u8]) -> Resp {
    let fail = |message: &str| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"status": "fail", "code": "1102", "message": message}),
        )
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return fail("Request body is not a JSON object");
    };
    let Some(Value::Object(verification)) = map.get("verification") else {
        return fail("Mandatory parameter verification is missing");
    };
    let text = |name: &str| match verification.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let new = NewSession {
        workflow_id: store::DEFAULT_WORKFLOW_ID.to_owned(),
        vendor_data: text("vendorData"),
        metadata: Value::Null,
        callback: text("callback"),
        ..NewSession::default()
    };
    let (session, _) = app.state.create_session(
        new,
        "https://alchemy.veriff.com/v/",
        40,
        store::Reuse::Never,
    );
    json_response(
        StatusCode::CREATED,
        &json!({
            "status": "success",
            "verification": {
                "id": session.id,
                "url": session.url,
                "vendorData": session.vendor_data,
                "host": "https://alchemy.veriff.com",
                "status": "created",
                "sessionToken": session.token,
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            Route::parse("/v3/session/", false),
            Some(Route::CreateSession(ApiVersion::V3))
        );
        assert_eq!(
            Route::parse("/v2/session/abc/decision/", false),
            Some(Route::Decision(ApiVersion::V2, "abc"))
        );
        assert_eq!(
            Route::parse("/v3/session/abc/decision", false),
            Some(Route::Decision(ApiVersion::V3, "abc"))
        );
        assert_eq!(Route::parse("/v3/session//decision/", false), None);
        assert_eq!(Route::parse("/v4/session/", false), None);
        assert_eq!(Route::parse("/v1/sessions", false), None);
        assert_eq!(
            Route::parse("/v1/sessions", true),
            Some(Route::VeriffCreate)
        );
        assert_eq!(Route::parse("", false), None);
    }
}
