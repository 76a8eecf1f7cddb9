//! Genuine events reach the subscriber over mutual TLS, signed with its secret, in order per
//! session; a subscriber that is down gets them once it is back; the outbox holds no event
//! in clear.

use std::time::Duration;

use super::*;
use crate::assert_eventually;

const GATEWAY_ID: &str = "spiffe://example.org/idgate";

#[tokio::test]
async fn events_reach_a_mutual_tls_subscriber_signed_with_its_secret() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let gw = Gateway::start(
            &webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new()),
            &[],
        )
        .await;
        let client = provider_client(&pki, gw.port);
        let t = now_secs();
        let mut keys = Vec::new();
        for n in 0..3 {
            let r = post_signed(
                &client,
                DIDIT_SECRET,
                &envelope(&format!("evt-{n}"), "sess-1", n, t),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert_eq!(r.json()["status"], "accepted");
            keys.push(r.json()["event_id"].as_str().unwrap().to_owned());
        }
        assert_eventually!(sub.processed().len() == 3, "got {:?}", sub.got());
        let got = sub.processed();
        for (n, d) in got.iter().enumerate() {
            assert!(d.signature_ok, "idgate-signature checks out: {d:?}");
            assert_eq!(d.peer.as_deref(), Some(GATEWAY_ID), "the gateway's SVID");
            assert_eq!(d.event_id, keys[n], "in order, with the key the provider was told");
            assert_eq!(d.body["event_id"], format!("evt-{n}"));
        }
        assert_eq!(sub.got().len(), 3, "each once");
        // The subscriber has answered the third delivery; the gateway counts it once that
        // answer is back, which may be a moment later.
        let delivered =
            r#"idgate_webhook_deliveries_total{webhook="didit",subscriber="kyc",outcome="delivered"} 3"#;
        assert_eventually!(
            admin_get(gw.admin_port, "/metrics")
                .await
                .is_ok_and(|(_, m)| m.contains(delivered)),
            "the deliveries are not counted: {}",
            admin_get(gw.admin_port, "/metrics").await.map(|(_, m)| m).unwrap_or_default()
        );
    })
    .await;
}

#[tokio::test]
async fn a_subscriber_that_is_down_gets_every_event_in_order_once_it_is_back() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let mut sub = Subscriber::start(&pki).await;
        sub.down();
        let gw = Gateway::start(
            &webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new()),
            &[],
        )
        .await;
        let client = provider_client(&pki, gw.port);
        let t = now_secs();
        for n in 0..6 {
            let session = format!("sess-{}", n % 2);
            let mut e = envelope(&format!("evt-{n}"), &session, n, t);
            e["decision"] = json!({"full_name": "Ada Lovelace"});
            let r = post_signed(&client, DIDIT_SECRET, &e).await.unwrap();
            assert_eq!(r.status, 200);
        }
        // Kept, retried, and never in clear in the state file.
        assert_eventually!(
            gw.output()
                .contains("webhook delivery failed; it will be retried"),
            "no retry:\n{}",
            gw.output()
        );
        let state = std::fs::read(dir.path().join("state.redb")).unwrap();
        assert!(
            !state.windows(12).any(|w| w == b"Ada Lovelace"),
            "the outbox is encrypted at rest"
        );
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains(r#"outcome="retried""#),
            "retries are counted: {metrics}"
        );

        sub.up().await;
        assert_eventually!(sub.processed().len() == 6, "got {:?}", sub.got());
        for session in ["sess-0", "sess-1"] {
            let seqs: Vec<u64> = sub
                .processed()
                .iter()
                .filter(|d| d.body["session_id"] == session)
                .map(|d| d.body["metadata"]["seq"].as_u64().unwrap())
                .collect();
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            assert_eq!(seqs, sorted, "{session} in order");
        }
        assert!(sub.processed().iter().all(|d| d.signature_ok));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sub.got().len(), 6, "nothing twice");
    })
    .await;
}

#[tokio::test]
async fn a_didit_simple_event_delivers_only_the_fields_its_signature_covers() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let mut simple = toml::Table::new();
        simple.insert("scheme".into(), "didit-simple".into());
        let gw = Gateway::start(&webhook_config(&pki, dir.path(), &sub.url(), simple), &[]).await;
        let client = provider_client(&pki, gw.port);
        let t = now_secs();
        // X-Signature-Simple covers "{timestamp}:{session_id}:{status}:{webhook_type}" only:
        // whoever holds a signed event can put anything in the rest of the body.
        let mut e = envelope("evt-unsigned", "sess-1", 1, t);
        e["decision"] = json!({"full_name": "Ada Lovelace", "status": "Approved"});
        e["vendor_data"] = "user-42".into();
        let r = post_signed(&client, DIDIT_SECRET, &e).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eventually!(!sub.processed().is_empty(), "got {:?}", sub.got());
        let d = &sub.processed()[0];
        assert!(d.signature_ok, "re-signed for the subscriber: {d:?}");
        assert_eq!(
            d.body,
            json!({
                "session_id": "sess-1",
                "status": "In Progress",
                "timestamp": t,
                "webhook_type": "status.updated",
            }),
            "only the signed fields"
        );
        assert_eq!(d.event_id, r.json()["event_id"].as_str().unwrap());
    })
    .await;
}
