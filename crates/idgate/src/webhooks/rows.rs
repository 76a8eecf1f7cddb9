//! How `idgate webhooks` shows messages: a row of a listing (from a message's bookkeeping
//! and its clear header, never its body) and the tables they make.

use std::time::{Duration, SystemTime};

use idgate_store::{MessageInfo, MessageState};
use idgate_webhooks::outbox;

use crate::keys::rfc3339;

/// One message as listed: its bookkeeping and its clear header.
pub(super) struct Row {
    pub(super) info: MessageInfo,
    pub(super) header: Option<outbox::Header>,
}

impl Row {
    /// When the gateway received the event (a copy kept after delivery was written later).
    fn received(&self) -> SystemTime {
        self.header.as_ref().map_or(self.info.enqueued_at, |h| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(h.received_at)
        })
    }

    pub(super) fn cells(&self, id: &str, delivered: bool) -> Vec<String> {
        let h = self.header.as_ref();
        vec![
            id.to_owned(),
            state_text(&self.info, delivered),
            self.info.attempts.to_string(),
            self.info.order_key.clone().unwrap_or_else(|| "-".into()),
            h.map_or_else(|| "?".into(), |h| h.event.clone()),
            h.and_then(|h| h.event_type.clone())
                .unwrap_or_else(|| "-".into()),
            rfc3339(self.received()),
            self.info.last_error.clone().unwrap_or_else(|| "-".into()),
        ]
    }

    pub(super) fn json(&self, id: &str, delivered: bool) -> serde_json::Value {
        let h = self.header.as_ref();
        serde_json::json!({
            "id": id,
            "state": state_text(&self.info, delivered),
            "attempts": self.info.attempts,
            "session": self.info.order_key,
            "event": h.map(|h| &h.event),
            "type": h.and_then(|h| h.event_type.as_ref()),
            "received": rfc3339(self.received()),
            "last_error": self.info.last_error,
        })
    }
}

pub(super) fn state_text(info: &MessageInfo, delivered: bool) -> String {
    match info.state {
        _ if delivered => "delivered".into(),
        MessageState::Ready => "pending".into(),
        // Not yet tried: written, and held for its replay check.
        MessageState::Waiting { until } if info.attempts == 0 => {
            format!("held until {}", rfc3339(until))
        }
        MessageState::Waiting { until } => format!("retry at {}", rfc3339(until)),
        MessageState::Leased { .. } => "delivering".into(),
        MessageState::Dead => "dead".into(),
    }
}

pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}
