//! The notification webhook over a real socket: signed, retried after a failure.

#![allow(clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use idgate_config::IncidentNotifyConfig;
use idgate_incidents::ChangeKind;
use idgate_incidents::notify::{Notifier, signature};
use idgate_secrets::SecretRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads one HTTP/1.1 request (head and Content-Length body) and answers `status`.
async fn one_request(listener: &TcpListener, status: u16) -> (String, Vec<u8>) {
    one_request_noted(listener, status, |_| {}).await
}

/// [`one_request`], handing the body to `note` before it answers.
async fn one_request_noted(
    listener: &TcpListener,
    status: u16,
    note: impl FnOnce(&[u8]),
) -> (String, Vec<u8>) {
    let (mut s, _) = listener.accept().await.expect("accept");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "closed before a whole request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.expect("read");
                buf.extend_from_slice(&chunk[..n]);
            }
            break (head, buf[end + 4..end + 4 + len].to_vec());
        }
    };
    note(&body);
    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    s.write_all(resp.as_bytes()).await.expect("write");
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_signed_over_t_dot_body_and_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("notify.key");
    std::fs::write(&key, "incident-secret").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let cfg = IncidentNotifyConfig {
        url: format!("http://{addr}/hooks/incidents")
            .parse()
            .expect("url"),
        secret: SecretRef::parse(&format!("file:{}", key.display()), dir.path()).expect("ref"),
        ca: None,
        attempts: 3,
        timeout: Duration::from_secs(2),
    };
    let metrics = idgate_incidents::IncidentMetrics::default();
    let notifier = Notifier::start(&cfg, &metrics).expect("start");
    let incident: idgate_incidents::Incident =
        serde_json::from_str(include_str!("fixtures/incident.json")).expect("fixture");
    notifier.send(ChangeKind::Opened, &incident);

    // The first attempt fails; the retry arrives and is accepted.
    let (_, first) = tokio::time::timeout(Duration::from_secs(10), one_request(&listener, 503))
        .await
        .expect("first attempt");
    let (head, body) = tokio::time::timeout(Duration::from_secs(10), one_request(&listener, 204))
        .await
        .expect("retry");
    assert_eq!(first, body, "the retry sends the same body");
    assert!(head.starts_with("POST /hooks/incidents HTTP/1.1"), "{head}");
    let sig = head
        .lines()
        .find_map(|l| l.strip_prefix("idgate-signature: "))
        .expect("signature header");
    let t: u64 = sig
        .strip_prefix("t=")
        .and_then(|r| r.split(',').next())
        .and_then(|t| t.parse().ok())
        .expect("t");
    assert_eq!(sig, signature(b"incident-secret", t, &body));
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(json["event"], "opened");
    assert_eq!(json["incident"]["id"], incident.id.as_str());
}

/// The notifier's configuration towards `addr`, its secret in `dir`.
fn notify_config(addr: std::net::SocketAddr, dir: &std::path::Path) -> IncidentNotifyConfig {
    let key = dir.join("notify.key");
    std::fs::write(&key, "incident-secret").expect("key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    IncidentNotifyConfig {
        url: format!("http://{addr}/hooks/incidents")
            .parse()
            .expect("url"),
        secret: SecretRef::parse(&format!("file:{}", key.display()), dir).expect("ref"),
        ca: None,
        attempts: 3,
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_notification_queued_at_shutdown_is_delivered_or_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut incident: idgate_incidents::Incident =
        serde_json::from_str(include_str!("fixtures/incident.json")).expect("fixture");
    incident.state = idgate_incidents::State::Closed;

    // A receiver that answers: the closing queued as the gateway stops has reached it by
    // the time the drain returns.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cfg = notify_config(listener.local_addr().expect("addr"), dir.path());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        one_request_noted(&listener, 204, |body| {
            seen.lock().expect("lock").push(body.to_vec())
        })
        .await
    });
    let metrics = idgate_incidents::IncidentMetrics::default();
    let notifier = Notifier::start(&cfg, &metrics).expect("start");
    notifier.send(ChangeKind::Closed, &incident);
    let left = tokio::time::timeout(
        Duration::from_secs(10),
        notifier.drain(Duration::from_secs(5)),
    )
    .await
    .expect("the drain keeps to its bound");
    assert_eq!(left, 0);
    let bodies = got.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 1, "delivered before the drain returned");
    let json: serde_json::Value = serde_json::from_slice(&bodies[0]).expect("json");
    assert_eq!(json["event"], "closed");

    // A receiver that never answers: the drain gives up at its bound and counts the
    // notification it could not send.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let cfg = notify_config(listener.local_addr().expect("addr"), dir.path());
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (conn, _) = listener.accept().await.expect("accept");
        // Holds the connection open and says nothing.
        let _ = held_rx.await;
        drop(conn);
    });
    let metrics = idgate_incidents::IncidentMetrics::default();
    let notifier = Notifier::start(&cfg, &metrics).expect("start");
    notifier.send(ChangeKind::Closed, &incident);
    let left = tokio::time::timeout(
        Duration::from_secs(10),
        notifier.drain(Duration::from_millis(300)),
    )
    .await
    .expect("the drain keeps to its bound");
    let _ = held_tx.send(());
    assert_eq!(left, 1);
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains("incident_notifications_unsent_total 1"),
        "{text}"
    );
}
