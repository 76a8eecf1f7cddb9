//! `GET /v3/sessions/`: the sessions, newest first, filtered, in Django REST framework's
//! limit/offset pages (`{count, next, previous, results}`, absolute links).
//!
//! Query: `limit` (default 50, at most [`MAX_LIMIT`]; an unreadable one is the default),
//! `offset` (default 0), and the filters `vendor_data`, `status`, `workflow_id`,
//! `session_kind`, `country`, `date_from`, `date_to` (`YYYY-MM-DD`, on the creation date,
//! both inclusive) and `search` (part of the session id, `vendor_data` or the person's
//! name).

use http::StatusCode;
use http::request::Parts;
use serde_json::json;

use crate::api::{App, Resp, host, json_response};
use crate::data;
use crate::store::Session;
use crate::util;

const DEFAULT_LIMIT: usize = 50;
/// Larger limits are capped.
pub(crate) const MAX_LIMIT: usize = 200;

/// Every session passes a filter that is absent or empty.
struct Filters<'a> {
    pairs: &'a [(String, String)],
}

impl<'a> Filters<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn keep(&self, s: &Session) -> bool {
        let created = util::iso_date(s.created_at_micros.div_euclid(1_000_000));
        let person = data::listed_person(s);
        let eq = |name: &str, value: Option<&str>| self.get(name).is_none_or(|f| Some(f) == value);
        eq("vendor_data", s.vendor_data.as_deref())
            && eq("status", Some(s.status.as_str()))
            && eq("workflow_id", Some(s.workflow_id.as_str()))
            && eq("session_kind", Some("user"))
            && eq("country", person.map(|p| p.nationality))
            && self.get("date_from").is_none_or(|d| created.as_str() >= d)
            && self.get("date_to").is_none_or(|d| created.as_str() <= d)
            && self.get("search").is_none_or(|q| {
                let q = q.to_lowercase();
                s.id.contains(&q)
                    || s.vendor_data
                        .as_deref()
                        .is_some_and(|v| v.to_lowercase().contains(&q))
                    || person.is_some_and(|p| p.full_name().to_lowercase().contains(&q))
            })
    }
}

/// A number from the query as DRF reads it: unreadable or negative is the default.
fn number(pairs: &[(String, String)], name: &str) -> Option<usize> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse::<usize>().ok())
}

pub(crate) fn list_sessions(app: &App, parts: &Parts, query: &str) -> Resp {
    let pairs = util::parse_query(query);
    let filters = Filters { pairs: &pairs };
    let sessions: Vec<Session> = app
        .state
        .sessions_newest_first()
        .into_iter()
        .filter(|s| filters.keep(s))
        .collect();
    let limit = number(&pairs, "limit")
        .filter(|n| *n > 0)
        .map_or(DEFAULT_LIMIT, |n| n.min(MAX_LIMIT));
    let offset = number(&pairs, "offset").unwrap_or(0);
    let count = sessions.len();
    let results: Vec<_> = sessions
        .iter()
        .skip(offset)
        .take(limit)
        .map(data::session_row)
        .collect();
    // DRF's links: the request's own query with `limit` and `offset` replaced; the first
    // page's `previous` has no `offset`.
    let link = |offset: Option<usize>| -> String {
        let mut q: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "limit" && k != "offset")
            .cloned()
            .collect();
        q.push(("limit".to_owned(), limit.to_string()));
        if let Some(offset) = offset {
            q.push(("offset".to_owned(), offset.to_string()));
        }
        format!(
            "{}://{}{}?{}",
            app.scheme,
            host(app, parts),
            parts.uri.path(),
            util::encode_query(&q)
        )
    };
    let next = (offset.saturating_add(limit) < count).then(|| link(Some(offset + limit)));
    let previous = (offset > 0).then(|| {
        if offset <= limit {
            link(None)
        } else {
            link(Some(offset - limit))
        }
    });
    json_response(
        StatusCode::OK,
        &json!({"count": count, "next": next, "previous": previous, "results": results}),
    )
}
