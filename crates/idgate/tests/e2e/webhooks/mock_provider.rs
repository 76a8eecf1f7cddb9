//! The mock provider's webhooks, sent as Didit sends them (a `status.updated` event when a
//! session is created and on every change, the decision on Approved, its three signatures),
//! through the gateway's endpoint to a subscriber that sees them through the `kyc-minimal`
//! masking profile, each session's events in order.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use idgate_mock_provider::{
    AuthMode, DEFAULT_WORKFLOW_ID, DeliveryOutcome, MockConfig, WebhookTarget,
};

use super::*;
use crate::assert_eventually;
use crate::masking::kyc_minimal;

const PROVIDER_KEY: &str = "didit-api-key-for-the-webhook-tests";
const PSEUDONYM_KEY: &str = "pseudonym-key-for-the-webhook-tests-0123456789";

/// Creates a session on the mock, as a caller of Didit's API does: its id.
async fn create_session(mock: &idgate_mock_provider::MockHandle, vendor_data: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = json!({"workflow_id": DEFAULT_WORKFLOW_ID, "vendor_data": vendor_data});
    let req = http::Request::post("/v3/session/")
        .header("host", "localhost")
        .header("x-api-key", PROVIDER_KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 201);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_providers_didit_webhooks_reach_a_masked_subscriber_in_session_order() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let sub = Subscriber::start(&pki).await;
        let key = dir.path().join("pseudonym.key");
        write_private(&key, PSEUDONYM_KEY.as_bytes());
        let mut config = webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new()).section(
            "masking",
            table([(
                "profiles",
                table([(
                    "kyc-minimal",
                    kyc_minimal(&format!("file:{}", key.display())),
                )])
                .into(),
            )]),
        );
        let subscriber = &mut config.sections["webhooks"][0]["subscribers"][0];
        subscriber
            .as_table_mut()
            .unwrap()
            .insert("masking".into(), "kyc-minimal".into());
        let gw = Gateway::start(&config, &[]).await;

        let target = WebhookTarget::new(gw.url(WEBHOOK_PATH), DIDIT_SECRET.to_owned().into())
            .with_ca(&pki.files.bundle)
            .with_retry_scale(0.001);
        let mock = idgate_mock_provider::start(
            MockConfig::new(
                any_port(),
                AuthMode::DiditApiKey(PROVIDER_KEY.to_owned().into()),
            )
            .with_webhook(target),
        )
        .await
        .unwrap();
        let a = create_session(&mock, "user-7").await;
        let b = create_session(&mock, "user-8").await;
        mock.advance(&a, "In Progress").unwrap();
        mock.advance(&b, "In Progress").unwrap();
        mock.advance(&a, "Approved").unwrap();
        mock.advance(&b, "Abandoned").unwrap();

        assert_eventually!(sub.processed().len() == 6, "got {:?}", sub.got());
        let statuses = |session: &str| -> Vec<String> {
            sub.processed()
                .iter()
                .filter(|d| d.body["session_id"] == session)
                .map(|d| d.body["status"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(statuses(&a), ["Not Started", "In Progress", "Approved"]);
        assert_eq!(statuses(&b), ["Not Started", "In Progress", "Abandoned"]);
        for d in sub.processed() {
            assert!(d.signature_ok, "{d:?}");
            assert_eq!(d.body["webhook_type"], "status.updated");
            // Masked for this subscriber: the caller's join key pseudonymized.
            let vendor = d.body["vendor_data"].as_str().unwrap();
            assert!(vendor.starts_with("ps_"), "{vendor}");
        }
        let approved = sub
            .processed()
            .into_iter()
            .find(|d| d.body["status"] == "Approved")
            .unwrap();
        let id = &approved.body["decision"]["id_verifications"][0];
        assert!(id.is_object(), "{}", approved.body);
        assert_ne!(id["full_name"], "Carmen Española Española");
        assert!(id.get("portrait_image").is_none());
        // Didit's view: every webhook was taken (200) at the first attempt.
        let deliveries = mock.state().webhook_deliveries();
        assert_eq!(deliveries.len(), 6);
        assert!(
            deliveries
                .iter()
                .all(|d| matches!(d.outcome, DeliveryOutcome::Delivered { .. })),
            "{deliveries:?}"
        );
    })
    .await;
}
