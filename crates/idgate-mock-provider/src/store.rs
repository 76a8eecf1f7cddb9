//! The mock's memory: verification sessions, workflows, and what it has seen (requests,
//! credential headers, webhook deliveries) for tests to inspect through [`MockState`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

pub(crate) use crate::status::Status;
use crate::util;

/// The workflow every mock starts with, so that demos and tests have a `workflow_id` to use
/// without creating one first.
pub const DEFAULT_WORKFLOW_ID: &str = "6f1c2e0a-8d4b-4c3e-9a7f-2b5d8e1c4a90";

/// The checks a session runs when its `workflow_id` names no workflow the mock knows.
const DEFAULT_FEATURES: [&str; 4] = ["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "AML"];

/// Requests kept for inspection; older ones are dropped.
const MAX_SEEN_REQUESTS: usize = 10_000;

/// Headers that carry provider credentials. Their values are kept only in memory for tests
/// to inspect, and never logged.
pub(crate) const CREDENTIAL_HEADERS: [&str; 7] = [
    "x-api-key",
    "x-app-token",
    "x-app-access-ts",
    "x-app-access-sig",
    "x-auth-client",
    "x-hmac-signature",
    "authorization",
];

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) number: u64,
    pub(crate) token: String,
    pub(crate) url: String,
    pub(crate) vendor_data: Option<String>,
    pub(crate) metadata: Value,
    pub(crate) status: Status,
    pub(crate) workflow_id: String,
    pub(crate) callback: Option<String>,
    pub(crate) contact_details: Value,
    pub(crate) expected_details: Value,
    pub(crate) features: Vec<String>,
    pub(crate) reviews: Vec<Value>,
    pub(crate) created_at_micros: i64,
    /// The workflow has run its checks (the session reached a status with results once):
    /// the decision's check blocks are filled from then on.
    pub(crate) checks_run: bool,
}

/// What a create request asks for, already validated.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewSession {
    pub(crate) workflow_id: String,
    pub(crate) vendor_data: Option<String>,
    pub(crate) metadata: Value,
    pub(crate) callback: Option<String>,
    pub(crate) contact_details: Value,
    pub(crate) expected_details: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct Workflow {
    pub(crate) id: String,
    pub(crate) label: String,
    /// Workflow feature names as clients send them (`OCR`, `LIVENESS`, ...).
    pub(crate) features: Vec<String>,
    pub(crate) is_default: bool,
    pub(crate) created_at_micros: i64,
    pub(crate) updated_at_micros: i64,
}

impl Workflow {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "uuid": self.id,
            "workflow_id": self.id,
            "workflow_label": self.label,
            "workflow_type": "kyc",
            "features": self.features.iter().map(|f| json!({"feature": f})).collect::<Vec<_>>(),
            "is_default": self.is_default,
            "created_at": util::iso8601_micros(self.created_at_micros),
            "updated_at": util::iso8601_micros(self.updated_at_micros),
        })
    }

    /// The checks a session of this workflow runs, as decisions name them.
    fn session_features(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for f in &self.features {
            let name = match f.as_str() {
                "OCR" => "ID_VERIFICATION",
                other => other,
            };
            if !out.iter().any(|x| x == name) {
                out.push(name.to_owned());
            }
        }
        out
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The status the mock answered with.
    pub status: u16,
}

/// What became of one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Still being attempted.
    Pending,
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// Given up: a final error status, or every attempt failed.
    Failed { reason: String },
}

/// One webhook the mock sent (or is sending).
#[derive(Debug, Clone)]
pub struct WebhookDelivery {
    pub event_id: String,
    pub session_id: String,
    pub status: String,
    pub attempts: u32,
    pub outcome: DeliveryOutcome,
}

#[derive(Default)]
struct Inner {
    sessions: Vec<Session>,
    next_number: u64,
    workflows: Vec<Workflow>,
    requests: VecDeque<SeenRequest>,
    counts: HashMap<String, u64>,
    total: u64,
    last_credentials: Vec<(String, String)>,
    webhooks: Vec<WebhookDelivery>,
    /// (remaining count, status) of injected failures.
    fail_next: Option<(usize, u16)>,
    latency: Duration,
}

/// The mock's shared state. Tests read what the mock saw and can inject failures.
pub struct MockState {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for MockState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockState").finish_non_exhaustive()
    }
}

impl MockState {
    pub(crate) fn new() -> Self {
        let now = util::unix_now_micros();
        let default = Workflow {
            id: DEFAULT_WORKFLOW_ID.to_owned(),
            label: "Standard KYC".to_owned(),
            features: ["OCR", "LIVENESS", "FACE_MATCH", "AML"]
                .map(str::to_owned)
                .to_vec(),
            is_default: true,
            created_at_micros: now,
            updated_at_micros: now,
        };
        Self {
            inner: Mutex::new(Inner {
                workflows: vec![default],
                next_number: 1,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking handler must not take the whole mock down with it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- for tests -------------------------------------------------------------------

    /// Every request received so far (the most recent 10 000), oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    pub fn last_request(&self) -> Option<SeenRequest> {
        self.lock().requests.back().cloned()
    }

    /// How many requests arrived for `path` (the path only, without the query).
    pub fn request_count(&self, path: &str) -> u64 {
        self.lock().counts.get(path).copied().unwrap_or(0)
    }

    /// Requests per path.
    pub fn request_counts(&self) -> HashMap<String, u64> {
        self.lock().counts.clone()
    }

    pub fn total_requests(&self) -> u64 {
        self.lock().total
    }

    /// The credential headers (`x-api-key`, `x-app-*`, `x-auth-client`, `x-hmac-signature`,
    /// `authorization`) of the most recent request, lowercase names with their values.
    /// Kept for tests only; the mock never logs them.
    pub fn last_credentials(&self) -> Vec<(String, String)> {
        self.lock().last_credentials.clone()
    }

    /// The value of one credential header on the most recent request.
    pub fn last_credential(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.lock()
            .last_credentials
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    /// The status of a session (`"Not Started"`, `"Approved"`, ...), if it exists.
    pub fn session_status(&self, session_id: &str) -> Option<String> {
        self.lock()
            .sessions
            .iter()
            .find(|s| s.id == session_id)
            .map(|s| s.status.as_str().to_owned())
    }

    /// Ids of the sessions that exist, oldest first.
    pub fn session_ids(&self) -> Vec<String> {
        self.lock().sessions.iter().map(|s| s.id.clone()).collect()
    }

    /// Webhooks sent or being sent, oldest first.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.lock().webhooks.clone()
    }

    /// Answers the next `count` requests (any path, before authentication) with `status`
    /// and a JSON body; 429 and 503 also carry `Retry-After: 1`. For testing a client's
    /// retries and circuit breaking.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.lock().fail_next = (count > 0).then_some((count, status));
    }

    /// Delays every answer by `latency` (zero turns it off). For testing timeouts.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    // ---- for the server --------------------------------------------------------------

    pub(crate) fn take_injected_failure(&self) -> Option<u16> {
        let mut inner = self.lock();
        let (left, status) = inner.fail_next?;
        inner.fail_next = (left > 1).then_some((left - 1, status));
        Some(status)
    }

    pub(crate) fn latency(&self) -> Duration {
        self.lock().latency
    }

    pub(crate) fn record(&self, seen: SeenRequest) {
        let path = seen
            .path_and_query
            .split_once('?')
            .map_or(seen.path_and_query.as_str(), |(p, _)| p)
            .to_owned();
        let credentials = CREDENTIAL_HEADERS
            .iter()
            .filter_map(|name| {
                seen.headers.get(*name).map(|v| {
                    (
                        (*name).to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
            })
            .collect();
        let mut inner = self.lock();
        *inner.counts.entry(path).or_insert(0) += 1;
        inner.total += 1;
        inner.last_credentials = credentials;
        if inner.requests.len() >= MAX_SEEN_REQUESTS {
            inner.requests.pop_front();
        }
        inner.requests.push_back(seen);
    }

    /// Creates a session or, with [`Reuse::UnfinishedByVendorData`], hands back the
    /// unfinished one with the same `vendor_data`. Returns the session and whether it is
    /// new.
    pub(crate) fn create_session(
        &self,
        new: NewSession,
        url_base: &str,
        token_len: usize,
        reuse: Reuse,
    ) -> (Session, bool) {
        let mut inner = self.lock();
        if reuse == Reuse::UnfinishedByVendorData
            && let Some(vendor_data) = new.vendor_data.as_deref().filter(|v| !v.is_empty())
            && let Some(existing) =
                inner.sessions.iter().rev().find(|s| {
                    s.vendor_data.as_deref() == Some(vendor_data) && s.status.is_unfinished()
                })
        {
            return (existing.clone(), false);
        }
        let features = inner
            .workflows
            .iter()
            .find(|w| w.id == new.workflow_id)
            .map(Workflow::session_features)
            .unwrap_or_else(|| DEFAULT_FEATURES.map(str::to_owned).to_vec());
        let number = inner.next_number;
        inner.next_number += 1;
        let token = util::token(token_len);
        let session = Session {
            id: util::uuid_v4(),
            number,
            url: format!("{url_base}{token}"),
            token,
            vendor_data: new.vendor_data,
            metadata: new.metadata,
            status: Status::NotStarted,
            workflow_id: new.workflow_id,
            callback: new.callback,
            contact_details: new.contact_details,
            expected_details: new.expected_details,
            features,
            reviews: Vec::new(),
            created_at_micros: util::unix_now_micros(),
            checks_run: false,
        };
        inner.sessions.push(session.clone());
        (session, true)
    }

    pub(crate) fn session(&self, id: &str) -> Option<Session> {
        self.lock().sessions.iter().find(|s| s.id == id).cloned()
    }

    /// Every session, newest first.
    pub(crate) fn sessions_newest_first(&self) -> Vec<Session> {
        self.lock().sessions.iter().rev().cloned().collect()
    }

    /// Moves a session to `to`, if `by` may: the customer's API only from a finished
    /// session to Approved, Declined or Resubmitted; the user's flow along Didit's
    /// transitions. Returns the session after the change and the status before it.
    pub(crate) fn change_status(
        &self,
        id: &str,
        to: Status,
        by: ChangedBy,
    ) -> Result<(Session, Status), StatusRefused> {
        let mut inner = self.lock();
        let session = inner
            .sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or(StatusRefused::NotFound)?;
        let from = session.status;
        let allowed = match &by {
            ChangedBy::Api { .. } => from.is_finished() && to.settable_by_api(),
            ChangedBy::Flow => from.flows_to(to),
        };
        if !allowed {
            return Err(StatusRefused::NotAllowed { from });
        }
        session.status = to;
        session.checks_run |= to.has_results();
        if let ChangedBy::Api { comment } = by {
            session.reviews.push(json!({
                "user": "api",
                "new_status": to.as_str(),
                "comment": comment,
                "created_at": util::iso8601_micros(util::unix_now_micros()),
            }));
        }
        Ok((session.clone(), from))
    }

    pub(crate) fn delete_session(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let before = inner.sessions.len();
        inner.sessions.retain(|s| s.id != id);
        inner.sessions.len() != before
    }

    pub(crate) fn workflows(&self) -> Vec<Workflow> {
        self.lock().workflows.clone()
    }

    pub(crate) fn workflow(&self, id: &str) -> Option<Workflow> {
        self.lock().workflows.iter().find(|w| w.id == id).cloned()
    }

    pub(crate) fn create_workflow(&self, label: String, features: Vec<String>) -> Workflow {
        let now = util::unix_now_micros();
        let w = Workflow {
            id: util::uuid_v4(),
            label,
            features,
            is_default: false,
            created_at_micros: now,
            updated_at_micros: now,
        };
        self.lock().workflows.push(w.clone());
        w
    }

    pub(crate) fn update_workflow(
        &self,
        id: &str,
        label: Option<String>,
        features: Option<Vec<String>>,
    ) -> Option<Workflow> {
        let mut inner = self.lock();
        let w = inner.workflows.iter_mut().find(|w| w.id == id)?;
        if let Some(label) = label {
            w.label = label;
        }
        if let Some(features) = features {
            w.features = features;
        }
        w.updated_at_micros = util::unix_now_micros();
        Some(w.clone())
    }

    pub(crate) fn delete_workflow(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let before = inner.workflows.len();
        inner.workflows.retain(|w| w.id != id);
        inner.workflows.len() != before
    }

    pub(crate) fn webhook_started(&self, delivery: WebhookDelivery) {
        self.lock().webhooks.push(delivery);
    }

    pub(crate) fn webhook_progress(&self, event_id: &str, attempts: u32, outcome: DeliveryOutcome) {
        let mut inner = self.lock();
        if let Some(d) = inner.webhooks.iter_mut().find(|d| d.event_id == event_id) {
            d.attempts = attempts;
            d.outcome = outcome;
        }
    }
}

/// Whether creating a session may hand back one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Didit: the same `vendor_data` with an unfinished session returns that session.
    UnfinishedByVendorData,
    /// Veriff, whose documents promise no such thing: every request is a new session.
    Never,
}

/// Who changes a session's status.
#[derive(Debug, Clone)]
pub(crate) enum ChangedBy {
    /// The customer, through `PATCH /v3/session/{id}/update-status/`.
    Api { comment: Option<String> },
    /// The verifying user on the hosted page, or Didit's timers and reviewers.
    Flow,
}

/// Why a status change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusRefused {
    NotFound,
    NotAllowed { from: Status },
}

/// Why a workflow's `features` were refused; the text goes to the client as the field's
/// error, as the provider words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FeaturesError {
    #[error("features: expected a list")]
    NotAList,
    #[error("features: each item needs a \"feature\" name")]
    NoName,
    #[error("features: empty feature name")]
    EmptyName,
}

/// Workflow features from a create or update body: `features: [{"feature": "OCR"}, ...]`
/// (or plain strings), or the older flat `is_ocr_enabled`-style flags.
pub(crate) fn features_from_body(
    body: &Map<String, Value>,
) -> Result<Option<Vec<String>>, FeaturesError> {
    if let Some(list) = body.get("features") {
        let Value::Array(items) = list else {
            return Err(FeaturesError::NotAList);
        };
        let mut out = Vec::new();
        for item in items {
            let name = match item {
                Value::String(s) => s.as_str(),
                Value::Object(o) => match o.get("feature") {
                    Some(Value::String(s)) => s.as_str(),
                    _ => return Err(FeaturesError::NoName),
                },
                _ => return Err(FeaturesError::NoName),
            };
            let name = name.trim().to_ascii_uppercase();
            if name.is_empty() {
                return Err(FeaturesError::EmptyName);
            }
            if !out.contains(&name) {
                out.push(name);
            }
        }
        return Ok(Some(out));
    }
    const FLAGS: [(&str, &str); 10] = [
        ("is_ocr_enabled", "OCR"),
        ("is_nfc_enabled", "NFC"),
        ("is_liveness_enabled", "LIVENESS"),
        ("is_face_match_enabled", "FACE_MATCH"),
        ("is_aml_enabled", "AML"),
        ("is_phone_verification_enabled", "PHONE"),
        ("is_email_verification_enabled", "EMAIL"),
        ("is_proof_of_address_enabled", "PROOF_OF_ADDRESS"),
        ("is_ip_analysis_enabled", "IP_ANALYSIS"),
        ("is_age_estimation_enabled", "AGE_ESTIMATION"),
    ];
    if !FLAGS.iter().any(|(flag, _)| body.contains_key(*flag)) {
        return Ok(None);
    }
    Ok(Some(
        FLAGS
            .iter()
            .filter(|(flag, _)| body.get(*flag) == Some(&Value::Bool(true)))
            .map(|(_, f)| (*f).to_owned())
            .collect(),
    ))
}
