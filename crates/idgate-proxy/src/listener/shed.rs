//! Load shedding past `max_connections`: a few connections over the limit at a time get a
//! quick `503` problem over HTTP/1.1 after their handshake, so that a client learns the
//! gateway is full rather than seeing a reset; the rest, and HTTP/2 ones, are closed.
//! A shed connection holds no place in `max_connections` and is bounded in time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::ListenerShared;
use crate::problem::ProblemKind;

/// Connections being answered 503 at once; past them, connections are closed at accept.
pub(super) const SHED_SLOTS: usize = 64;
/// The most a shed connection may take, handshake included.
const SHED_TIME: Duration = Duration::from_secs(3);
/// The most of a request head read before the answer.
const HEAD_BYTES: usize = 16 * 1024;

/// The whole HTTP/1.1 answer, made once per shed connection (this is the rare path).
fn answer() -> Vec<u8> {
    let kind = ProblemKind::Overloaded;
    let body = serde_json::json!({
        "type": kind.type_uri(),
        "title": kind.title(),
        "status": kind.status().as_u16(),
        "detail": "The gateway is at its connection limit. Retry shortly.",
    })
    .to_string();
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
         cache-control: no-store\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// Answers one connection over `max_connections` with 503 (HTTP/1.1) or closes it (HTTP/2).
pub(super) async fn shed(
    tcp: TcpStream,
    ip: IpAddr,
    shared: Arc<ListenerShared>,
    _slot: OwnedSemaphorePermit,
) {
    let served = tokio::time::timeout(SHED_TIME, async {
        let acceptor = shared.live.load().acceptor.clone();
        let mut tls = acceptor.accept(tcp).await.ok()?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            return None;
        }
        // Read the request head first: answering before it arrives and closing would make
        // the kernel reset the connection under the client's request, hiding the answer.
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 2048];
        let mut end = HeadEnd::default();
        while head.len() < HEAD_BYTES && !end.found(&head) {
            let n = tls.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        tls.write_all(&answer()).await.ok()?;
        tls.shutdown().await.ok()
    })
    .await;
    if !matches!(served, Ok(Some(()))) {
        tracing::debug!(remote = %ip, "shed connection closed without an answer");
    }
}

/// Looks for the blank line that ends a request head as its bytes arrive. Each call looks
/// only at what came since the last one (and the three bytes before, where the line may
/// have started): a head sent in one-byte TLS records costs one pass, not one per record.
#[derive(Debug, Default)]
struct HeadEnd {
    scanned: usize,
}

impl HeadEnd {
    /// Whether `head`, which only ever grows between calls, holds the end of a head.
    fn found(&mut self, head: &[u8]) -> bool {
        let from = self.scanned.saturating_sub(3);
        self.scanned = head.len();
        head.get(from..)
            .is_some_and(|new| new.windows(4).any(|w| w == b"\r\n\r\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_a_complete_problem_response() {
        let a = String::from_utf8(answer()).unwrap();
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "https://idgate.dev/problems/overloaded");
        assert_eq!(v["status"], 503);
    }

    #[test]
    fn the_end_of_a_head_is_found_however_the_bytes_are_split() {
        let raw = b"GET /v1/x HTTP/1.1\r\nhost: gw\r\nx-a: b\r\n\r\n";
        // Every pair of cuts: the end shows up with the last byte, never before.
        for first in 0..=raw.len() {
            for second in first..=raw.len() {
                let mut end = HeadEnd::default();
                let mut head = Vec::new();
                let mut found_at = None;
                for piece in [&raw[..first], &raw[first..second], &raw[second..]] {
                    head.extend_from_slice(piece);
                    if found_at.is_none() && end.found(&head) {
                        found_at = Some(head.len());
                    }
                }
                assert_eq!(found_at, Some(raw.len()), "cuts {first} {second}");
            }
        }
        // A byte at a time too, and not before the last.
        let mut end = HeadEnd::default();
        for n in 1..=raw.len() {
            assert_eq!(end.found(&raw[..n]), n == raw.len(), "byte {n}");
        }
    }

    #[test]
    fn bytes_already_searched_for_the_end_of_a_head_are_not_searched_again() {
        // Work linear in the head: were earlier bytes looked at again, the blank line
        // written over them after they were searched would be found.
        let mut head = b"GET / HTTP/1.1\r\nx: yz".to_vec();
        let mut end = HeadEnd::default();
        assert!(!end.found(&head));
        head[..4].copy_from_slice(b"\r\n\r\n");
        for b in *b"abc" {
            head.push(b);
            assert!(!end.found(&head));
        }
        // The three bytes before the new ones are looked at with them.
        head.extend_from_slice(b"\r\n\r");
        assert!(!end.found(&head));
        head.push(b'\n');
        assert!(end.found(&head));
    }
}
