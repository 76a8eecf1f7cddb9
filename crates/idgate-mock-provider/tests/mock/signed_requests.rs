//! Sumsub and Veriff request signatures, signed in the tests by Python's `hmac`.

use idgate_mock_provider::{AuthMode, DEFAULT_WORKFLOW_ID, MockConfig, MockHandle};
use serde_json::json;

use crate::support::{Client, Pki, loopback, py_hmac, start_mock, unix_now};

const APP_TOKEN: &str = "sbx:app-token-0123";
const SUMSUB_SECRET: &str = "sumsub-secret-key";
const VERIFF_CLIENT: &str = "veriff-publishable-key";
const VERIFF_SECRET: &str = "veriff-shared-secret";

async fn sumsub_mock() -> MockHandle {
    // Plain HTTP on loopback: also covers the no-TLS listener.
    start_mock(loopback(AuthMode::Sumsub {
        app_token: APP_TOKEN.into(),
        secret: SUMSUB_SECRET.into(),
    }))
    .await
}

/// Sends a Sumsub-signed request; `sign_*` say what is signed, to tamper.
#[allow(clippy::too_many_arguments)]
async fn sumsub(
    c: &Client,
    method: &str,
    path: &str,
    body: &str,
    ts: i64,
    sign_path: &str,
    sign_body: &str,
    token: &str,
) -> crate::support::Reply {
    let ts = ts.to_string();
    let sig = py_hmac(
        SUMSUB_SECRET,
        format!("{ts}{method}{sign_path}{sign_body}").as_bytes(),
    );
    c.send(
        method,
        path,
        &[
            ("x-app-token", token),
            ("x-app-access-ts", &ts),
            ("x-app-access-sig", &sig),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn sumsub_mode_accepts_valid_signatures_and_rejects_tampering() {
    let mock = sumsub_mock().await;
    let c = Client::http(mock.addr());
    let body =
        json!({"workflow_id": DEFAULT_WORKFLOW_ID, "vendor_data": "applicant-1"}).to_string();
    let now = unix_now();

    let r = sumsub(
        &c,
        "POST",
        "/v3/session/",
        &body,
        now,
        "/v3/session/",
        &body,
        APP_TOKEN,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // The query string is part of what is signed.
    let path = "/v3/sessions/?vendor_data=applicant-1&limit=5";
    let r = sumsub(&c, "GET", path, "", now, path, "", APP_TOKEN).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"], 1);
    let r = sumsub(&c, "GET", path, "", now, "/v3/sessions/", "", APP_TOKEN).await;
    assert_eq!(r.status, 401);

    // Within the ±300 s window.
    let r = sumsub(&c, "GET", path, "", now - 250, path, "", APP_TOKEN).await;
    assert_eq!(r.status, 200);

    let refusals = [
        // Tampered body.
        (
            "POST",
            body.replace("applicant-1", "applicant-2"),
            now,
            body.clone(),
            APP_TOKEN,
        ),
        // Stale timestamp, correctly signed (well past 300 s, so that the seconds this test
        // takes cannot bring it back into the window).
        ("POST", body.clone(), now - 400, body.clone(), APP_TOKEN),
        // From the future.
        ("POST", body.clone(), now + 400, body.clone(), APP_TOKEN),
        // Wrong app token.
        ("POST", body.clone(), now, body.clone(), "sbx:other"),
    ];
    for (method, sent, ts, signed, token) in refusals {
        let r = sumsub(
            &c,
            method,
            "/v3/session/",
            &sent,
            ts,
            "/v3/session/",
            &signed,
            token,
        )
        .await;
        assert_eq!(r.status, 401, "ts={ts} token={token}");
        let e = r.json();
        assert_eq!(e["code"], 401);
        assert!(e["description"].is_string());
    }

    // Missing signature; uppercase hex (Sumsub sends lowercase); a Didit key alone.
    let ts = now.to_string();
    let r = c
        .send(
            "GET",
            "/v3/sessions/",
            &[("x-app-token", APP_TOKEN), ("x-app-access-ts", &ts)],
            b"",
        )
        .await;
    assert_eq!(r.status, 401);
    let sig = py_hmac(SUMSUB_SECRET, format!("{ts}GET/v3/sessions/").as_bytes()).to_uppercase();
    let r = c
        .send(
            "GET",
            "/v3/sessions/",
            &[
                ("x-app-token", APP_TOKEN),
                ("x-app-access-ts", &ts),
                ("x-app-access-sig", &sig),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 401);
    let r = c
        .send("GET", "/v3/sessions/", &[("x-api-key", APP_TOKEN)], b"")
        .await;
    assert_eq!(r.status, 401);

    assert_eq!(
        mock.state().last_credential("x-api-key").as_deref(),
        Some(APP_TOKEN)
    );
    assert_eq!(mock.state().session_ids().len(), 1);
}

async fn veriff(
    c: &Client,
    method: &str,
    path: &str,
    body: &str,
    signed: &str,
    client: &str,
) -> crate::support::Reply {
    let sig = py_hmac(VERIFF_SECRET, signed.as_bytes());
    c.send(
        method,
        path,
        &[
            ("x-auth-client", client),
            ("x-hmac-signature", &sig),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn veriff_mode_signs_bodies_and_session_ids() {
    let pki = Pki::new();
    let mock = start_mock(
        loopback(AuthMode::Veriff {
            client: VERIFF_CLIENT.into(),
            secret: VERIFF_SECRET.into(),
        })
        .with_tls(pki.cert(), pki.key()),
    )
    .await;
    assert_eq!(mock.mode(), "veriff");
    let c = Client::https(&pki, mock.addr());

    // POST: the raw body is signed.
    let body = json!({"verification": {"callback": "https://app.example/done", "person": {"firstName": "Erika", "lastName": "Mustermann"}, "vendorData": "cust-9"}}).to_string();
    let r = veriff(&c, "POST", "/v1/sessions", &body, &body, VERIFF_CLIENT).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let created = r.json();
    assert_eq!(created["status"], "success");
    assert_eq!(created["verification"]["status"], "created");
    assert_eq!(created["verification"]["vendorData"], "cust-9");
    let id = created["verification"]["id"].as_str().unwrap().to_owned();

    // GET: the session id is signed.
    let path = format!("/v1/sessions/{id}/decision");
    let r = veriff(&c, "GET", &path, "", &id, VERIFF_CLIENT).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json(), json!({"status": "success", "verification": null}));
    // ... not the (empty) body.
    let r = veriff(&c, "GET", &path, "", "", VERIFF_CLIENT).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["status"], "fail");

    // The user goes through the flow; the session waits for a review.
    mock.advance(&id, "In Progress").unwrap();
    mock.advance(&id, "In Review").unwrap();
    // PATCH on the Didit-shaped endpoint: the body is signed.
    let patch = json!({"new_status": "Approved"}).to_string();
    let r = veriff(
        &c,
        "PATCH",
        &format!("/v3/session/{id}/update-status/"),
        &patch,
        &patch,
        VERIFF_CLIENT,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = veriff(&c, "GET", &path, "", &id, VERIFF_CLIENT).await;
    let v = r.json();
    assert_eq!(v["verification"]["status"], "approved");
    assert_eq!(v["verification"]["code"], 9001);
    assert_eq!(v["verification"]["vendorData"], "cust-9");
    assert!(v["verification"]["person"]["firstName"].is_string());
    assert!(v["verification"]["document"]["number"].is_string());

    // A GET without /sessions/{id} in its path signs the (empty) body.
    let r = veriff(
        &c,
        "GET",
        &format!("/v3/session/{id}/decision/"),
        "",
        "",
        VERIFF_CLIENT,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "Approved");

    // Refusals: a tampered body (a signature sent with a creation must match), wrong
    // client, unknown session (after a valid signature).
    let r = veriff(
        &c,
        "POST",
        "/v1/sessions",
        &body.replace("cust-9", "cust-10"),
        &body,
        VERIFF_CLIENT,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = veriff(&c, "POST", "/v1/sessions", &body, &body, "other-client").await;
    assert_eq!(r.status, 401);
    let r = veriff(
        &c,
        "GET",
        "/v1/sessions/nope/decision",
        "",
        "nope",
        VERIFF_CLIENT,
    )
    .await;
    assert_eq!(r.status, 404);

    assert_eq!(
        mock.state().last_credential("X-AUTH-CLIENT").as_deref(),
        Some(VERIFF_CLIENT)
    );
    assert_eq!(mock.state().session_ids(), vec![id]);
}

async fn veriff_mock(config: impl FnOnce(MockConfig) -> MockConfig) -> MockHandle {
    start_mock(config(loopback(AuthMode::Veriff {
        client: VERIFF_CLIENT.into(),
        secret: VERIFF_SECRET.into(),
    })))
    .await
}

/// Creates a Veriff session for `vendor_data` (signed): its id.
async fn veriff_session(c: &Client, vendor_data: &str) -> String {
    let body = json!({"verification": {"vendorData": vendor_data}}).to_string();
    let r = veriff(c, "POST", "/v1/sessions", &body, &body, VERIFF_CLIENT).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["verification"]["id"].as_str().unwrap().to_owned()
}

/// The `verification` of a session's decision (signed with its id).
async fn veriff_verification(c: &Client, id: &str) -> serde_json::Value {
    let path = format!("/v1/sessions/{id}/decision");
    let r = veriff(c, "GET", &path, "", id, VERIFF_CLIENT).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["verification"].clone()
}

#[tokio::test]
async fn veriff_mode_creates_a_session_without_a_signature() {
    let mock = veriff_mock(|c| c).await;
    let c = Client::http(mock.addr());
    let body = json!({"verification": {"vendorData": "cust-unsigned"}}).to_string();
    let unsigned = |client: &'static str| {
        let (c, body) = (&c, body.clone());
        async move {
            c.send(
                "POST",
                "/v1/sessions",
                &[
                    ("x-auth-client", client),
                    ("content-type", "application/json"),
                ],
                body.as_bytes(),
            )
            .await
        }
    };

    // Session creation needs the client key, not a signature.
    let r = unsigned(VERIFF_CLIENT).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.json()["verification"]["id"].as_str().unwrap().to_owned();
    assert_eq!(mock.state().session_ids(), vec![id.clone()]);
    let r = unsigned("other-client").await;
    assert_eq!(r.status, 401);

    // Every other call still needs one.
    let r = c
        .send(
            "GET",
            &format!("/v1/sessions/{id}/decision"),
            &[("x-auth-client", VERIFF_CLIENT)],
            b"",
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "1812");
    let r = c
        .send(
            "POST",
            &format!("/mock/session/{id}/status/"),
            &[("x-auth-client", VERIFF_CLIENT)],
            br#"{"status":"In Progress"}"#,
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        mock.state().session_status(&id).as_deref(),
        Some("Not Started")
    );
}

#[tokio::test]
async fn veriff_decision_codes_follow_providers_md() {
    let mock = veriff_mock(|c| c).await;
    let c = Client::http(mock.addr());
    let session = |path: &[&str]| {
        let c = &c;
        let mock = &mock;
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        async move {
            let id = veriff_session(c, "cust-codes").await;
            for status in &path {
                mock.advance(&id, status).unwrap();
            }
            id
        }
    };

    // Not decided yet: no verification.
    let started = session(&["In Progress"]).await;
    assert_eq!(
        veriff_verification(&c, &started).await,
        serde_json::Value::Null
    );

    let cases = [
        (
            &["In Progress", "Approved"][..],
            "approved",
            json!(9001),
            None,
        ),
        (
            &["In Progress", "Declined"][..],
            "declined",
            json!(9102),
            Some((102, "Suspected document tampering")),
        ),
        (
            &["In Progress", "In Review"][..],
            "review",
            json!(9121),
            None,
        ),
        (&["Expired"][..], "expired", json!(9104), None),
        // Veriff's code for an abandoned session is not settled: none unless configured,
        // and never expired's 9104.
        (
            &["In Progress", "Abandoned"][..],
            "abandoned",
            serde_json::Value::Null,
            None,
        ),
    ];
    for (path, status, code, reason) in cases {
        let id = session(path).await;
        let v = veriff_verification(&c, &id).await;
        assert_eq!(v["status"], status, "{path:?}: {v}");
        assert_eq!(v["code"], code, "{path:?}: {v}");
        assert_eq!(v["reasonCode"], json!(reason.map(|r| r.0)), "{path:?}: {v}");
        assert_eq!(v["reason"], json!(reason.map(|r| r.1)), "{path:?}: {v}");
        // The person is only known once the checks ran.
        let read = !matches!(status, "expired" | "abandoned");
        assert_eq!(v["person"].is_object(), read, "{path:?}: {v}");
        assert_eq!(v["document"].is_object(), read, "{path:?}: {v}");
    }

    // Resubmission (the customer's call on a finished session): 9103, reason 207, an
    // expired document.
    let id = session(&["In Progress", "Declined"]).await;
    let patch = json!({"new_status": "Resubmitted"}).to_string();
    let r = veriff(
        &c,
        "PATCH",
        &format!("/v3/session/{id}/update-status/"),
        &patch,
        &patch,
        VERIFF_CLIENT,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = veriff_verification(&c, &id).await;
    assert_eq!(
        (&v["status"], &v["code"], &v["reasonCode"]),
        (&json!("resubmission_requested"), &json!(9103), &json!(207)),
        "{v}"
    );

    // Veriff promises no vendorData idempotency: the same vendorData twice is two sessions.
    let sessions = mock.state().session_ids();
    assert_eq!(sessions.len(), 7);
    let unique: std::collections::HashSet<_> = sessions.iter().collect();
    assert_eq!(unique.len(), sessions.len());

    // A deployment that knows the abandoned code configures it.
    let configured = veriff_mock(|c| c.with_veriff_abandoned_code(9199)).await;
    let c = Client::http(configured.addr());
    let id = veriff_session(&c, "cust-abandons").await;
    configured.advance(&id, "In Progress").unwrap();
    configured.advance(&id, "Abandoned").unwrap();
    let v = veriff_verification(&c, &id).await;
    assert_eq!(
        (&v["status"], &v["code"]),
        (&json!("abandoned"), &json!(9199))
    );
}
