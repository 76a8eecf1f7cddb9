//! Changing a session's status, by the customer (`PATCH /v3/session/{id}/update-status/`)
//! or by the verifying user (the hosted flow Didit runs, simulated here by
//! `POST /mock/session/{id}/status/` and [`crate::MockHandle::advance`]). Either way the
//! change follows Didit's rules ([`crate::status`]) and sends a `status.updated` webhook
//! when the status changed.

use http::StatusCode;
use serde_json::{Value, json};

use crate::api::{App, Resp, detail, field_error, json_object, json_response, not_found};
use crate::store::{ChangedBy, Session, Status, StatusRefused};

/// Why a session could not be moved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("no session {0}")]
    UnknownSession(String),
    #[error("\"{0}\" is not a Didit status")]
    UnknownStatus(String),
    #[error("a session cannot go from \"{from}\" to \"{to}\"")]
    NotAllowed {
        from: &'static str,
        to: &'static str,
    },
}

/// Changes the status and, when it changed, sends the webhook.
fn change(app: &App, id: &str, to: Status, by: ChangedBy) -> Result<Session, StatusRefused> {
    let (session, from) = app.state.change_status(id, to, by)?;
    tracing::info!(
        session_id = %session.id,
        from = from.as_str(),
        to = session.status.as_str(),
        "status changed"
    );
    if from != session.status
        && let Some(webhook) = &app.webhook
    {
        webhook.status_updated(&session);
    }
    Ok(session)
}

/// The verifying user's (or Didit's own) step: see [`crate::MockHandle::advance`].
pub(crate) fn advance(app: &App, id: &str, status: &str) -> Result<Session, FlowError> {
    let to = Status::parse(status).ok_or_else(|| FlowError::UnknownStatus(status.to_owned()))?;
    change(app, id, to, ChangedBy::Flow).map_err(|e| match e {
        StatusRefused::NotFound => FlowError::UnknownSession(id.to_owned()),
        StatusRefused::NotAllowed { from } => FlowError::NotAllowed {
            from: from.as_str(),
            to: to.as_str(),
        },
    })
}

/// `POST /mock/session/{id}/status/` `{"status": "In Progress"}`: the user's step.
/// 200 `{session_id, status}`, 400 for a step Didit's flow does not take, 404 unknown.
pub(crate) fn flow_step(app: &App, id: &str, body: &[u8]) -> Resp {
    let map = match json_object(body) {
        Ok(m) => m,
        Err(r) => return r.into(),
    };
    let Some(Value::String(status)) = map.get("status") else {
        return field_error("status", "This field is required.").into();
    };
    match advance(app, id, status) {
        Ok(session) => json_response(
            StatusCode::OK,
            &json!({"session_id": session.id, "status": session.status.as_str()}),
        ),
        Err(FlowError::UnknownSession(_)) => not_found(),
        Err(e) => detail(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `PATCH /v3/session/{id}/update-status/`: `new_status` Approved, Declined or
/// Resubmitted (with optional `comment`, `send_email`, `email_address`,
/// `nodes_to_resubmit`), for a finished session only. Answers `{session_id}`.
pub(crate) fn update_status(app: &App, id: &str, body: &[u8]) -> Resp {
    if app.state.session(id).is_none() {
        return not_found();
    }
    let map = match json_object(body) {
        Ok(m) => m,
        Err(r) => return r.into(),
    };
    let status = match map.get("new_status") {
        None | Some(Value::Null) => {
            return field_error("new_status", "This field is required.").into();
        }
        Some(Value::String(s)) => match Status::parse(s).filter(|st| st.settable_by_api()) {
            Some(st) => st,
            None => {
                return field_error("new_status", &format!("\"{s}\" is not a valid choice."))
                    .into();
            }
        },
        Some(_) => return field_error("new_status", "Not a valid string.").into(),
    };
    let comment = match map.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c.clone()),
        Some(_) => return field_error("comment", "Not a valid string.").into(),
    };
    match change(app, id, status, ChangedBy::Api { comment }) {
        Ok(session) => json_response(StatusCode::OK, &json!({"session_id": session.id})),
        Err(StatusRefused::NotFound) => not_found(),
        Err(StatusRefused::NotAllowed { from }) => detail(
            StatusCode::BAD_REQUEST,
            &format!(
                "The session status can only be updated once the session is finished; it is \"{}\".",
                from.as_str()
            ),
        ),
    }
}
