//! The Didit API: sessions, decisions, listing, status updates, deletion, workflows, and
//! the `x-api-key` check.

use idgate_mock_provider::{AuthMode, DEFAULT_WORKFLOW_ID, MockConfig, MockError, WebhookTarget};
use serde_json::{Value, json};

use crate::support::{API_KEY, Client, Pki, didit_mock, is_uuid_v4, loopback, start_mock};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lifecycle_as_didit_allows_it() {
    let pki = Pki::new();
    let mock = didit_mock(&pki, None).await;
    assert!(mock.url().starts_with("https://127.0.0.1:"));
    let c = Client::https(&pki, mock.addr());

    // Create.
    let create = json!({
        "workflow_id": DEFAULT_WORKFLOW_ID,
        "vendor_data": "user-42",
        "callback": "https://app.example/kyc/done",
        "metadata": {"plan": "gold"},
    });
    let r = c.didit("POST", "/v3/session/", &create).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let s = r.json();
    let id = s["session_id"].as_str().unwrap().to_owned();
    assert!(is_uuid_v4(&id), "{id}");
    assert_eq!(s["session_number"], 1);
    assert_eq!(s["status"], "Not Started");
    assert_eq!(s["vendor_data"], "user-42");
    assert_eq!(s["metadata"], json!({"plan": "gold"}));
    assert_eq!(s["workflow_id"], DEFAULT_WORKFLOW_ID);
    assert_eq!(s["callback"], "https://app.example/kyc/done");
    let token = s["session_token"].as_str().unwrap();
    assert!(!token.is_empty());
    assert!(s["url"].as_str().unwrap().ends_with(token));

    // Same vendor_data, session unfinished: the same session again, still 201.
    let r = c.didit("POST", "/v3/session/", &create).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json(), s);

    // Another user: a new session.
    let r = c
        .didit(
            "POST",
            "/v3/session/",
            &json!({"workflow_id": DEFAULT_WORKFLOW_ID, "vendor_data": "user-7"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let other = r.json();
    assert_ne!(other["session_id"], s["session_id"]);
    assert_eq!(other["session_number"], 2);

    // Nobody has started the session: no checks ran, every block is null.
    let decision = format!("/v3/session/{id}/decision/");
    let d = c.didit("GET", &decision, &Value::Null).await.json();
    assert_eq!(d["session_id"], id.as_str());
    assert_eq!(d["status"], "Not Started");
    assert_eq!(d["session_kind"], "user");
    assert!(d["environment"].is_string() && d["workflow_version"].is_number());
    for block in [
        "id_verifications",
        "liveness_checks",
        "face_matches",
        "aml_screenings",
    ] {
        assert_eq!(d[block], Value::Null, "{block}");
    }

    // The customer cannot decide an unfinished session.
    let update = format!("/v3/session/{id}/update-status/");
    let r = c
        .didit("PATCH", &update, &json!({"new_status": "Approved"}))
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.json()["detail"].as_str().unwrap().contains("Not Started"));

    // The user opens the link (the mock's stand-in for the hosted page), then finishes.
    let step = format!("/mock/session/{id}/status/");
    let r = c.didit("POST", &step, &json!({"status": "Approved"})).await;
    assert_eq!(r.status, 400, "not before it started: {:?}", r.body);
    let r = c
        .didit("POST", &step, &json!({"status": "In Progress"}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json(), json!({"session_id": id, "status": "In Progress"}));
    let r = c.send("POST", &step, &[], b"{}").await;
    assert_eq!(
        r.status, 401,
        "the mock's own route takes the credential too"
    );
    mock.advance(&id, "In Review").unwrap();
    assert!(mock.advance(&id, "Not Started").is_err());
    assert!(mock.advance(&id, "Maybe").is_err());
    assert!(mock.advance("no-such-session", "In Progress").is_err());

    // Now the checks have run: the decision (v3: arrays of checks) has the person.
    let r = c.didit("GET", &decision, &Value::Null).await;
    assert_eq!(r.status, 200);
    let d = r.json();
    assert_eq!(d["status"], "In Review");
    assert_eq!(d["vendor_data"], "user-42");
    assert_eq!(
        d["features"],
        json!(["ID_VERIFICATION", "LIVENESS", "FACE_MATCH", "AML"])
    );
    let idv = &d["id_verifications"][0];
    for field in [
        "document_type",
        "document_number",
        "personal_number",
        "first_name",
        "last_name",
        "full_name",
        "date_of_birth",
        "gender",
        "nationality",
        "place_of_birth",
        "address",
        "formatted_address",
        "expiration_date",
        "date_of_issue",
        "issuing_state",
    ] {
        assert!(
            idv[field].as_str().is_some_and(|v| !v.is_empty()),
            "id_verification.{field}: {idv}"
        );
    }
    assert_eq!(idv["full_name"], "Carmen Española Española");
    assert!(idv["age"].as_u64().is_some_and(|a| a >= 18));
    assert!(idv["parsed_address"]["city"].is_string());
    for image in ["portrait_image", "front_image", "back_image"] {
        assert!(idv[image].as_str().unwrap().starts_with("https://"));
    }
    for (list, node) in [
        ("id_verifications", "feature_ocr"),
        ("liveness_checks", "feature_liveness"),
        ("face_matches", "feature_face"),
        ("aml_screenings", "feature_aml"),
    ] {
        let items = d[list].as_array().unwrap();
        assert_eq!(items.len(), 1, "{list}");
        assert_eq!(items[0]["node_id"], node);
        assert!(items[0]["status"].is_string());
        assert!(items[0]["warnings"].is_array());
    }
    assert_eq!(d["face_matches"][0]["status"], "In Review");

    // Decision (v2: one object per check), over HTTP/2.
    let h2 = Client::https_h2(&pki, mock.addr());
    let r = h2
        .didit("GET", &format!("/v2/session/{id}/decision/"), &Value::Null)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let d2 = r.json();
    assert_eq!(
        d2["id_verification"]["document_number"],
        idv["document_number"]
    );
    for single in ["liveness", "face_match", "aml"] {
        assert!(d2[single]["node_id"].is_string(), "{single}");
    }
    assert!(d2.get("id_verifications").is_none());

    // In Review is finished: the customer decides it, and is told only the session id.
    for (to, status) in [("In Review", 400), ("Maybe", 400), ("Approved", 200)] {
        let r = c
            .didit(
                "PATCH",
                &update,
                &json!({"new_status": to, "comment": "documents checked"}),
            )
            .await;
        assert_eq!(r.status, status, "{to}: {:?}", r.body);
    }
    let r = c
        .didit("PATCH", &update, &json!({"new_status": "Declined"}))
        .await;
    assert_eq!(r.json(), json!({"session_id": id}));
    assert_eq!(
        mock.state().session_status(&id).as_deref(),
        Some("Declined")
    );
    let d = c.didit("GET", &decision, &Value::Null).await.json();
    assert_eq!(d["reviews"].as_array().unwrap().len(), 2);
    assert_eq!(d["reviews"][0]["comment"], "documents checked");

    // The session is finished: the same vendor_data now starts a new one.
    let r = c.didit("POST", "/v3/session/", &create).await;
    assert_eq!(r.status, 201);
    let third = r.json()["session_id"].as_str().unwrap().to_owned();
    assert_ne!(third, id);

    // List: newest first, limit/offset pages with DRF's absolute links, filters.
    let port = mock.addr().port();
    let l = c.didit("GET", "/v3/sessions/", &Value::Null).await.json();
    assert_eq!(l["count"], 3);
    assert_eq!(
        (l["next"].clone(), l["previous"].clone()),
        (Value::Null, Value::Null)
    );
    let l = c
        .didit("GET", "/v3/sessions/?limit=1&offset=1", &Value::Null)
        .await
        .json();
    assert_eq!(l["results"].as_array().unwrap().len(), 1);
    let row = &l["results"][0];
    assert_eq!(row["session_number"], 2);
    assert_eq!(row["full_name"], Value::Null, "its checks never ran");
    assert_eq!(
        l["next"],
        format!("https://localhost:{port}/v3/sessions/?limit=1&offset=2")
    );
    assert_eq!(
        l["previous"],
        format!("https://localhost:{port}/v3/sessions/?limit=1")
    );
    let l = c
        .didit("GET", "/v3/sessions/?limit=1&offset=2", &Value::Null)
        .await
        .json();
    let row = &l["results"][0];
    assert_eq!(row["session_id"], id.as_str());
    assert_eq!(row["session_url"], s["url"]);
    assert_eq!(row["full_name"], "Carmen Española Española");
    assert_eq!(row["document_type"], "Identity Card");
    assert_eq!(row["country"], "ESP");
    assert_eq!(
        row["features"][0],
        json!({"feature": "ID_VERIFICATION", "status": "Declined"})
    );
    assert_eq!(l["next"], Value::Null);
    let l = c
        .didit("GET", "/v3/sessions/?offset=9", &Value::Null)
        .await
        .json();
    assert_eq!(
        (l["count"].clone(), l["results"].clone()),
        (json!(3), json!([]))
    );
    for (query, count) in [
        ("vendor_data=user-42", 2),
        ("status=Declined", 1),
        ("status=Not+Started", 2),
        ("country=ESP", 1),
        ("search=espa%C3%B1ola", 1),
        ("search=USER-7", 1),
        (&format!("search={}", &id[..8]), 1),
        (&format!("workflow_id={DEFAULT_WORKFLOW_ID}"), 3),
        ("session_kind=business", 0),
        ("date_from=2000-01-01&date_to=2999-12-31", 3),
        ("date_to=2000-01-01", 0),
    ] {
        let l = c
            .didit("GET", &format!("/v3/sessions/?{query}"), &Value::Null)
            .await
            .json();
        assert_eq!(l["count"], count, "{query}");
    }

    // Delete, then it is gone.
    let r = c
        .didit("DELETE", &format!("/v3/session/{id}/delete/"), &Value::Null)
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let r = c.didit("GET", &decision, &Value::Null).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"detail": "Not found."}));
    let r = c
        .didit("DELETE", &format!("/v3/session/{id}/delete/"), &Value::Null)
        .await;
    assert_eq!(r.status, 404);

    // What the mock saw.
    let state = mock.state();
    assert_eq!(state.request_count("/v3/session/"), 4);
    assert_eq!(state.last_credential("x-api-key").as_deref(), Some(API_KEY));
    mock.shutdown().await;
}

#[tokio::test]
async fn rejects_missing_or_wrong_api_key_with_detail() {
    let pki = Pki::new();
    let mock = didit_mock(&pki, None).await;
    let c = Client::https(&pki, mock.addr());
    let body = json!({"workflow_id": DEFAULT_WORKFLOW_ID}).to_string();

    let r = c.send("POST", "/v3/session/", &[], body.as_bytes()).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["detail"].is_string(), "{:?}", r.body);

    for path in ["/v3/session/", "/v2/session/"] {
        let r = c
            .send("POST", path, &[("x-api-key", "wrong")], body.as_bytes())
            .await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json(), json!({"detail": "Invalid API key."}));
    }
    // A key that is a prefix of the real one is wrong too.
    let r = c
        .send(
            "GET",
            "/v3/sessions/",
            &[("x-api-key", &API_KEY[..API_KEY.len() - 1])],
            b"",
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(mock.state().session_ids().is_empty());
    assert_eq!(
        mock.state().last_credential("x-api-key").as_deref(),
        Some(&API_KEY[..API_KEY.len() - 1])
    );

    // Routing comes first: an unknown path is 404 whatever the credential.
    let r = c.send("GET", "/v3/nope/", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"detail": "Not found."}));
    // Then the credential, then the method.
    let r = c.send("PUT", "/v3/session/", &[], b"").await;
    assert_eq!(r.status, 401);
    let r = c.didit("PUT", "/v3/session/", &Value::Null).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(r.json(), json!({"detail": "Method \"PUT\" not allowed."}));

    // Validation.
    let r = c
        .didit("POST", "/v3/session/", &json!({"vendor_data": "x"}))
        .await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert!(e["detail"].as_str().unwrap().contains("workflow_id"));
    assert_eq!(e["workflow_id"], json!(["This field is required."]));
    let r = c
        .send(
            "POST",
            "/v3/session/",
            &[("x-api-key", API_KEY)],
            b"{not json",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].is_string());
    let r = c
        .didit(
            "GET",
            "/v3/session/00000000-0000-4000-8000-000000000000/decision/",
            &Value::Null,
        )
        .await;
    assert_eq!(r.status, 404);
    let sid = c
        .didit(
            "POST",
            "/v3/session/",
            &json!({"workflow_id": DEFAULT_WORKFLOW_ID}),
        )
        .await
        .json()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = c
        .didit(
            "PATCH",
            &format!("/v3/session/{sid}/update-status/"),
            &json!({"new_status": "Maybe"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["new_status"][0]
            .as_str()
            .unwrap()
            .contains("Maybe")
    );

    // The health check needs no credential.
    let r = c.send("GET", "/healthz", &[], b"").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn workflows_crud_and_sessions_follow_their_features() {
    let pki = Pki::new();
    let mock = didit_mock(&pki, None).await;
    let c = Client::https(&pki, mock.addr());

    let r = c.didit("GET", "/v3/workflows/", &Value::Null).await;
    assert_eq!(r.status, 200);
    let list = r.json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|w| w["uuid"] == DEFAULT_WORKFLOW_ID)
    );

    let r = c
        .didit(
            "POST",
            "/v3/workflows/",
            &json!({"workflow_label": "Documents and AML", "features": [{"feature": "OCR"}, {"feature": "AML"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let w = r.json();
    let wid = w["uuid"].as_str().unwrap().to_owned();
    assert_eq!(w["workflow_label"], "Documents and AML");
    assert_eq!(
        w["features"],
        json!([{"feature": "OCR"}, {"feature": "AML"}])
    );

    let r = c
        .didit("GET", &format!("/v3/workflows/{wid}/"), &Value::Null)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uuid"], wid.as_str());

    let r = c
        .didit(
            "PATCH",
            &format!("/v3/workflows/{wid}/"),
            &json!({"workflow_label": "Docs + AML"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["workflow_label"], "Docs + AML");
    assert_eq!(r.json()["features"], w["features"]);

    // A session of this workflow runs only its checks.
    let s = c
        .didit("POST", "/v3/session/", &json!({"workflow_id": wid}))
        .await
        .json();
    let d = c
        .didit(
            "GET",
            &format!(
                "/v3/session/{}/decision/",
                s["session_id"].as_str().unwrap()
            ),
            &Value::Null,
        )
        .await
        .json();
    assert_eq!(d["features"], json!(["ID_VERIFICATION", "AML"]));
    assert_eq!(d["id_verifications"], Value::Null);
    let sid = s["session_id"].as_str().unwrap();
    mock.advance(sid, "In Progress").unwrap();
    mock.advance(sid, "Approved").unwrap();
    let d = c
        .didit("GET", &format!("/v3/session/{sid}/decision/"), &Value::Null)
        .await
        .json();
    assert_eq!(d["id_verifications"].as_array().unwrap().len(), 1);
    assert_eq!(d["aml_screenings"].as_array().unwrap().len(), 1);
    assert_eq!(d["liveness_checks"], Value::Null);
    assert_eq!(d["face_matches"], Value::Null);

    let r = c
        .didit("POST", "/v3/workflows/", &json!({"features": []}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["workflow_label"],
        json!(["This field is required."])
    );

    let r = c
        .didit("DELETE", &format!("/v3/workflows/{wid}/"), &Value::Null)
        .await;
    assert_eq!(r.status, 204);
    let r = c
        .didit("GET", &format!("/v3/workflows/{wid}/"), &Value::Null)
        .await;
    assert_eq!(r.status, 404);
    let r = c
        .didit("POST", &format!("/v3/workflows/{wid}/"), &Value::Null)
        .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn injected_failures_answer_before_anything_else() {
    let pki = Pki::new();
    let mock = didit_mock(&pki, None).await;
    let c = Client::https(&pki, mock.addr());
    mock.state().fail_next(2, 503);
    for _ in 0..2 {
        let r = c.didit("GET", "/v3/sessions/", &Value::Null).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    let r = c.didit("GET", "/v3/sessions/", &Value::Null).await;
    assert_eq!(r.status, 200);
    mock.state().fail_next(1, 429);
    let r = c.didit("GET", "/v3/sessions/", &Value::Null).await;
    assert_eq!(r.status, 429);
    assert_eq!(mock.state().total_requests(), 4);
}

#[tokio::test]
async fn refuses_plain_http_off_loopback_and_cleartext_webhooks_off_loopback() {
    let err = idgate_mock_provider::start(MockConfig::new(
        "0.0.0.0:0".parse().unwrap(),
        AuthMode::DiditApiKey("k".into()),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, MockError::PlainHttpNotLoopback(_)), "{err}");

    let config = loopback(AuthMode::DiditApiKey("k".into())).with_webhook(WebhookTarget::new(
        "http://hooks.example.org/didit",
        "s".into(),
    ));
    let err = idgate_mock_provider::start(config).await.unwrap_err();
    assert!(matches!(err, MockError::WebhookUrl(_)), "{err}");

    // Plain HTTP on loopback is fine.
    let mock = start_mock(loopback(AuthMode::DiditApiKey("k".into()))).await;
    assert!(mock.url().starts_with("http://127.0.0.1:"));
    let r = Client::http(mock.addr())
        .send("GET", "/v3/sessions/", &[("x-api-key", "k")], b"")
        .await;
    assert_eq!(r.status, 200);
}
