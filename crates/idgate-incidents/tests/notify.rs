//! The notification webhook over a real socket: signed, retried after a failure.

#![allow(clippy::expect_used)]

use std::time::Duration;

use idgate_config::IncidentNotifyConfig;
use idgate_incidents::ChangeKind;
use idgate_incidents::notify::{Notifier, signature};
use idgate_secrets::SecretRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Reads one HTTP/1.1 request (head and Content-Length body) and answers `status`.
async fn one_request(listener: &TcpListener, status: u16) -> (String, Vec<u8>) {
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
