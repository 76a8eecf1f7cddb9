//! Webhook delivery: retries on 5xx and 404, gives up on other errors, signs every attempt
//! the same way.

use idgate_mock_provider::{AuthMode, DEFAULT_WORKFLOW_ID, DeliveryOutcome, WEBHOOK_MAX_ATTEMPTS};
use serde_json::json;

use crate::assert_eventually;
use crate::support::{Client, Receiver, WEBHOOK_SECRET, loopback, py_hmac, start_mock, webhook_to};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_and_404_then_gives_up_on_4xx() {
    // Plain HTTP to a loopback receiver: 503, 404, then 200 for the first event; 400 for
    // the second.
    let receiver = Receiver::http(vec![503, 404, 200, 400]).await;
    let mock = start_mock(
        loopback(AuthMode::DiditApiKey("k".into())).with_webhook(webhook_to(
            format!("http://127.0.0.1:{}/hook", receiver.addr.port()),
            None,
        )),
    )
    .await;
    let c = Client::http(mock.addr());
    let key = [("x-api-key", "k"), ("content-type", "application/json")];
    let s = c
        .send(
            "POST",
            "/v3/session/",
            &key,
            json!({"workflow_id": DEFAULT_WORKFLOW_ID, "vendor_data": "José Müller"})
                .to_string()
                .as_bytes(),
        )
        .await
        .json();
    let id = s["session_id"].as_str().unwrap();
    let update = |status: &'static str| {
        let c = c.clone();
        let path = format!("/v3/session/{id}/update-status/");
        async move {
            c.send(
                "PATCH",
                &path,
                &[("x-api-key", "k")],
                json!({"new_status": status}).to_string().as_bytes(),
            )
            .await
        }
    };

    assert_eq!(update("In Review").await.status, 200);
    assert_eventually!(
        matches!(
            mock.state()
                .webhook_deliveries()
                .first()
                .map(|d| &d.outcome),
            Some(DeliveryOutcome::Delivered { status: 200 })
        ),
        "not delivered: {:?}",
        mock.state().webhook_deliveries()
    );
    assert_eq!(mock.state().webhook_deliveries()[0].attempts, 3);
    let got = receiver.received();
    assert_eq!(got.len(), 3);
    // Every attempt carries the same bytes and signatures.
    for hook in &got {
        assert_eq!(hook.body, got[0].body);
        assert_eq!(hook.header("x-signature"), got[0].header("x-signature"));
        assert_eq!(
            hook.header("x-signature"),
            py_hmac(WEBHOOK_SECRET, &hook.body)
        );
    }
    // vendor_data "José Müller" is escaped on the wire; V2 signs the UTF-8 form.
    let raw = std::str::from_utf8(&got[0].body).unwrap();
    assert!(
        raw.contains(r#""vendor_data":"Jos\u00e9 M\u00fcller""#),
        "{raw}"
    );
    let utf8 = raw
        .replace(r"\u00e9", "é")
        .replace(r"\u00fc", "ü")
        .replace(r"\u00f1", "ñ");
    assert_eq!(
        got[0].header("x-signature-v2"),
        py_hmac(WEBHOOK_SECRET, utf8.as_bytes())
    );
    assert_ne!(
        got[0].header("x-signature-v2"),
        got[0].header("x-signature")
    );
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["status"], "In Review");
    assert_eq!(body["decision"]["face_matches"][0]["status"], "In Review");

    // A 400 is final: one attempt.
    assert_eq!(update("Declined").await.status, 200);
    assert_eventually!(
        matches!(
            mock.state().webhook_deliveries().get(1).map(|d| &d.outcome),
            Some(DeliveryOutcome::Failed { .. })
        ),
        "not failed: {:?}",
        mock.state().webhook_deliveries()
    );
    assert_eq!(mock.state().webhook_deliveries()[1].attempts, 1);
    assert_eq!(receiver.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_bounded_attempts_when_the_receiver_is_down() {
    // A port with nothing listening, held for the whole test: the socket is bound but never
    // listens, so a delivery is refused and no other socket can take the port meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let mock = start_mock(
        loopback(AuthMode::DiditApiKey("k".into()))
            .with_webhook(webhook_to(format!("http://localhost:{port}/hook"), None)),
    )
    .await;
    let c = Client::http(mock.addr());
    let s = c
        .send(
            "POST",
            "/v3/session/",
            &[("x-api-key", "k")],
            json!({"workflow_id": "any-workflow"})
                .to_string()
                .as_bytes(),
        )
        .await
        .json();
    let r = c
        .send(
            "PATCH",
            &format!(
                "/v3/session/{}/update-status/",
                s["session_id"].as_str().unwrap()
            ),
            &[("x-api-key", "k")],
            br#"{"new_status":"Approved"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eventually!(
        matches!(
            mock.state()
                .webhook_deliveries()
                .first()
                .map(|d| &d.outcome),
            Some(DeliveryOutcome::Failed { .. })
        ),
        "still trying: {:?}",
        mock.state().webhook_deliveries()
    );
    assert_eq!(
        mock.state().webhook_deliveries()[0].attempts,
        WEBHOOK_MAX_ATTEMPTS
    );
}
