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
    /// The header is read unopened, so its time is anybody's: one past what a time can hold
    /// falls back to when the store took the message.
    fn received(&self) -> SystemTime {
        self.header
            .as_ref()
            .and_then(|h| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(h.received_at)))
            .unwrap_or(self.info.enqueued_at)
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

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use idgate_store::MessageId;

    use super::*;

    fn row(received_at: u64, enqueued_at: SystemTime) -> Row {
        Row {
            info: MessageInfo {
                id: MessageId::parse("1").unwrap(),
                state: MessageState::Dead,
                attempts: 3,
                max_attempts: u32::MAX,
                order_key: Some("sess-1".into()),
                enqueued_at,
                attempts_since: enqueued_at,
                last_error: None,
            },
            header: Some(outbox::Header {
                webhook: "didit".into(),
                subscriber: "kyc".into(),
                queue: "webhook.didit.kyc".into(),
                key: "0011223344556677".into(),
                event: "evt_0".into(),
                event_type: Some("status.updated".into()),
                received_at,
            }),
        }
    }

    #[test]
    fn a_row_with_an_absurd_received_at_is_listed() {
        let enqueued = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // The clear header is read unopened: any u64 can be there.
        for received_at in [u64::MAX, 1 << 63] {
            let row = row(received_at, enqueued);
            let cells = row.cells("didit/kyc/1", false);
            assert_eq!(cells[4], "evt_0");
            assert_eq!(cells[6], rfc3339(enqueued), "{received_at}");
            assert_eq!(
                row.json("didit/kyc/1", false)["received"],
                rfc3339(enqueued)
            );
        }
        // A time a header can hold is the one shown.
        let row = row(1_700_000_000, enqueued);
        assert_eq!(row.cells("didit/kyc/1", false)[6], "2023-11-14T22:13:20Z");
    }
}
