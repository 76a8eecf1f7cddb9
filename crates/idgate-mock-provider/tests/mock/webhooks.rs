//! Status webhooks as Didit sends them: an event when a session is created and on each
//! change, `decision` for Approved, Declined, In Review and Abandoned, optional fields only
//! when the session has them, Didit's User-Agent and canonical body, signatures checked by
//! Python and by the gateway's verifier; retries on 5xx and 404 on Didit's (scaled)
//! schedule; one session's events in order.

use std::time::{Duration, SystemTime};

use idgate_mock_provider::{
    AuthMode, DEFAULT_WORKFLOW_ID, DeliveryOutcome, MockHandle, WEBHOOK_MAX_ATTEMPTS,
    WEBHOOK_USER_AGENT,
};
use idgate_webhooks::verify::{self, Scheme, V2Form};
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::{
    Client, Pki, Received, Receiver, WEBHOOK_SECRET, didit_mock, is_uuid_v4, loopback, py_hmac,
    python, start_mock, unix_now, webhook_to,
};

/// Verifies a Didit webhook with Python alone: the three HMACs, and that the raw body is
/// exactly what `json.dumps(sort_keys=True, separators=(",", ":"))` writes.
fn python_webhook_check(raw: &[u8]) -> Value {
    let out = python(
        r#"
import hmac, hashlib, json, sys
secret = sys.argv[1].encode()
raw = sys.stdin.buffer.read()
def shorten(d):
    if isinstance(d, dict): return {k: shorten(v) for k, v in d.items()}
    if isinstance(d, list): return [shorten(v) for v in d]
    if isinstance(d, float) and d.is_integer(): return int(d)
    return d
body = shorten(json.loads(raw))
ascii_form = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
utf8_form = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
simple = f"{body['timestamp']}:{body['session_id']}:{body['status']}:{body['webhook_type']}".encode()
sig = lambda m: hmac.new(secret, m, hashlib.sha256).hexdigest()
print(json.dumps({"v1": sig(raw), "v2": sig(utf8_form), "simple": sig(simple),
                  "canonical": ascii_form == raw}))
"#,
        &[WEBHOOK_SECRET],
        raw,
    );
    serde_json::from_str(&out).unwrap()
}

/// The gateway's verifier accepts the delivery under each of Didit's three schemes.
fn gateway_verifies(hook: &Received) -> verify::Verified {
    let secrets: [&[u8]; 1] = [WEBHOOK_SECRET.as_bytes()];
    let check = |scheme: Scheme| {
        verify::verify(
            &scheme,
            &secrets,
            &hook.headers,
            &hook.body,
            SystemTime::now(),
            verify::DEFAULT_TOLERANCE,
        )
        .unwrap_or_else(|e| panic!("{scheme:?}: {e}"))
    };
    let v1 = check(Scheme::DiditSignature);
    check(Scheme::DiditSignatureV2(V2Form::default()));
    check(Scheme::DiditSignatureSimple);
    v1
}

fn body(hook: &Received) -> Value {
    serde_json::from_slice(&hook.body).unwrap()
}

/// The statuses of one session's events, in the order they arrived.
fn statuses(got: &[Received], session_id: &str) -> Vec<String> {
    got.iter()
        .map(body)
        .filter(|b| b["session_id"] == session_id)
        .map(|b| b["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn create(c: &Client, body: Value) -> String {
    let r = c.didit("POST", "/v3/session/", &body).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["session_id"].as_str().unwrap().to_owned()
}

fn all_delivered(mock: &MockHandle, n: usize) -> bool {
    let d = mock.state().webhook_deliveries();
    d.len() == n
        && d.iter()
            .all(|d| matches!(d.outcome, DeliveryOutcome::Delivered { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_webhooks_follow_the_session_as_didit_sends_them() {
    let pki = Pki::new();
    let receiver = Receiver::https(&pki, vec![]).await;
    let target = webhook_to(
        format!("https://localhost:{}/hooks/didit", receiver.addr.port()),
        Some(pki.bundle()),
    );
    let mock = didit_mock(&pki, Some(target)).await;
    let c = Client::https(&pki, mock.addr());
    let full = json!({
        "workflow_id": DEFAULT_WORKFLOW_ID,
        "vendor_data": "user-42",
        "metadata": {"plan": "gold"},
    });
    let a = create(&c, full.clone()).await;
    // The same vendor_data hands back the unfinished session: nothing new to tell.
    assert_eq!(create(&c, full).await, a);
    let b = create(&c, json!({"workflow_id": DEFAULT_WORKFLOW_ID})).await;
    mock.advance(&a, "In Progress").unwrap();
    mock.advance(&a, "Approved").unwrap();
    let r = c
        .didit(
            "PATCH",
            &format!("/v3/session/{a}/update-status/"),
            &json!({"new_status": "Declined"}),
        )
        .await;
    assert_eq!(r.status, 200);
    // The same status again changes nothing, and sends nothing.
    let r = c
        .didit(
            "PATCH",
            &format!("/v3/session/{a}/update-status/"),
            &json!({"new_status": "Declined"}),
        )
        .await;
    assert_eq!(r.status, 200);
    mock.advance(&b, "In Progress").unwrap();
    mock.advance(&b, "Abandoned").unwrap();

    assert_eventually!(
        all_delivered(&mock, 7),
        "not all delivered: {:?}",
        mock.state().webhook_deliveries()
    );
    let got = receiver.received();
    assert_eq!(got.len(), 7);
    assert_eq!(
        statuses(&got, &a),
        ["Not Started", "In Progress", "Approved", "Declined"]
    );
    assert_eq!(
        statuses(&got, &b),
        ["Not Started", "In Progress", "Abandoned"]
    );

    for hook in &got {
        let b = body(hook);
        let status = b["status"].as_str().unwrap();
        assert_eq!(b["webhook_type"], "status.updated");
        assert!(is_uuid_v4(b["event_id"].as_str().unwrap()));
        assert!(b["application_id"].is_string() && b["environment"].is_string());
        assert!(b["created_at"].is_i64());
        let ts = b["timestamp"].as_i64().unwrap();
        assert!((unix_now() - ts).abs() < 60);
        assert_eq!(hook.header("x-timestamp"), ts.to_string());
        assert_eq!(hook.header("user-agent"), WEBHOOK_USER_AGENT);
        assert_eq!(hook.header("content-type"), "application/json");
        // `decision` exactly for Approved, Declined, In Review and Abandoned.
        assert_eq!(
            b.get("decision").is_some(),
            ["Approved", "Declined", "In Review", "Abandoned"].contains(&status),
            "{status}: {b}"
        );
        // Optional fields only when the session has them.
        let session_a = b["session_id"] == a.as_str();
        assert_eq!(b.get("vendor_data").is_some(), session_a, "{b}");
        assert_eq!(b.get("metadata").is_some(), session_a, "{b}");
        assert_eq!(b["workflow_id"], DEFAULT_WORKFLOW_ID);

        // Every signature, checked by Python and by the gateway's verifier.
        let py = python_webhook_check(&hook.body);
        assert_eq!(py["canonical"], true, "not Python's canonical JSON");
        assert_eq!(hook.header("x-signature"), py["v1"].as_str().unwrap());
        assert_eq!(hook.header("x-signature-v2"), py["v2"].as_str().unwrap());
        assert_eq!(
            hook.header("x-signature-simple"),
            py["simple"].as_str().unwrap()
        );
        let v = gateway_verifies(hook);
        assert_eq!(v.event_id.as_deref(), b["event_id"].as_str());
        assert_eq!(v.session_id.as_deref(), b["session_id"].as_str());
    }

    // The Approved event carries the decision, personal data escaped on the wire.
    let approved = got
        .iter()
        .find(|h| body(h)["status"] == "Approved")
        .unwrap();
    let b = body(approved);
    assert_eq!(
        b["decision"]["id_verifications"][0]["full_name"],
        "Carmen Española Española"
    );
    assert_eq!(b["metadata"], json!({"plan": "gold"}));
    let raw = std::str::from_utf8(&approved.body).unwrap();
    assert!(approved.body.is_ascii() && raw.contains(r"Espa\u00f1ola"));
    // The whole-number float score went out as an integer.
    assert!(raw.contains(r#""score":0,"#));
    // The name with "ñ" makes the escaped and unescaped forms, and so V1 and V2, differ.
    assert_ne!(
        approved.header("x-signature"),
        approved.header("x-signature-v2")
    );
    // Abandoned: a decision, but the checks never ran.
    let abandoned = got
        .iter()
        .find(|h| body(h)["status"] == "Abandoned")
        .unwrap();
    assert_eq!(body(abandoned)["decision"]["id_verifications"], Value::Null);
    for d in mock.state().webhook_deliveries() {
        assert_eq!(d.attempts, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_5xx_and_404_on_didits_schedule_then_gives_up_on_4xx() {
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
    let r = c
        .send(
            "POST",
            "/v3/session/",
            &[("x-api-key", "k")],
            json!({"workflow_id": DEFAULT_WORKFLOW_ID, "vendor_data": "José Müller"})
                .to_string()
                .as_bytes(),
        )
        .await;
    let id = r.json()["session_id"].as_str().unwrap().to_owned();

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
    // Every attempt carries the same event, with the time it was sent, signed anew.
    let without_time = |hook: &Received| {
        let mut b = body(hook);
        b.as_object_mut().unwrap().remove("timestamp");
        b
    };
    for (hook, previous) in got.iter().zip(std::iter::once(&got[0]).chain(&got)) {
        assert_eq!(without_time(hook), without_time(&got[0]));
        assert!(body(hook)["timestamp"].as_i64() >= body(previous)["timestamp"].as_i64());
        assert_eq!(
            hook.header("x-timestamp"),
            body(hook)["timestamp"].to_string()
        );
        assert_eq!(
            hook.header("x-signature"),
            py_hmac(WEBHOOK_SECRET, &hook.body)
        );
        gateway_verifies(hook);
    }
    // Didit's ~1 and ~4 minutes, scaled by 0.001.
    let gaps = [got[1].at - got[0].at, got[2].at - got[1].at];
    assert!(
        gaps[0] >= Duration::from_millis(60) && gaps[1] >= Duration::from_millis(240),
        "{gaps:?}"
    );
    assert!(gaps.iter().all(|g| *g < Duration::from_secs(5)), "{gaps:?}");
    // vendor_data "José Müller" is escaped on the wire; V2 signs the UTF-8 form.
    let raw = std::str::from_utf8(&got[0].body).unwrap();
    assert!(
        raw.contains(r#""vendor_data":"Jos\u00e9 M\u00fcller""#),
        "{raw}"
    );
    let utf8 = raw.replace(r"\u00e9", "é").replace(r"\u00fc", "ü");
    assert_eq!(
        got[0].header("x-signature-v2"),
        py_hmac(WEBHOOK_SECRET, utf8.as_bytes())
    );

    // A 400 is final: one attempt.
    let r = c
        .send(
            "POST",
            &format!("/mock/session/{id}/status/"),
            &[("x-api-key", "k")],
            br#"{"status":"In Progress"}"#,
        )
        .await;
    assert_eq!(r.status, 200);
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
async fn a_sessions_events_wait_for_the_one_being_retried() {
    let receiver = Receiver::http(vec![503]).await;
    let mock = start_mock(
        loopback(AuthMode::DiditApiKey("k".into())).with_webhook(webhook_to(
            format!("http://127.0.0.1:{}/hook", receiver.addr.port()),
            None,
        )),
    )
    .await;
    let c = Client::http(mock.addr());
    let r = c
        .send(
            "POST",
            "/v3/session/",
            &[("x-api-key", "k")],
            json!({"workflow_id": DEFAULT_WORKFLOW_ID})
                .to_string()
                .as_bytes(),
        )
        .await;
    let id = r.json()["session_id"].as_str().unwrap().to_owned();
    // While Not Started waits for its retry, the session moves on twice.
    mock.advance(&id, "In Progress").unwrap();
    mock.advance(&id, "In Review").unwrap();
    assert_eventually!(
        all_delivered(&mock, 3),
        "{:?}",
        mock.state().webhook_deliveries()
    );
    assert_eq!(
        statuses(&receiver.received(), &id),
        ["Not Started", "Not Started", "In Progress", "In Review"]
    );
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
    let r = c
        .send(
            "POST",
            "/v3/session/",
            &[("x-api-key", "k")],
            json!({"workflow_id": "any-workflow"})
                .to_string()
                .as_bytes(),
        )
        .await;
    assert_eq!(r.status, 201);
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
