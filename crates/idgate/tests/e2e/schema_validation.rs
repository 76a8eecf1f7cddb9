//! Request bodies checked against the JSON Schemas shipped in `examples/schemas/`, through
//! the mock provider's Didit API: what fails never reaches the provider, and the answer
//! says where it failed without repeating what was sent.

use std::path::Path;

use crate::ownership::{PROVIDER_KEY, didit_mock};
use crate::support::*;

fn schema(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/schemas")
        .join(name)
        .display()
        .to_string()
}

#[tokio::test]
async fn bodies_must_match_the_route_schema_before_they_go_upstream() {
    within(async {
        let pki = Pki::default_pki();
        let mock = didit_mock().await;
        let config = base_config(&pki)
            .upstream(
                UpstreamSpec::new("didit", &mock.url())
                    .credential(CredentialSpec::header("x-api-key", "env:DIDIT_KEY")),
            )
            .route(
                RouteSpec::new("create", &["POST"], "/v3/session/", "didit", &[ONBOARDING])
                    .with("schema", schema("didit-session-create.json")),
            )
            .route(
                RouteSpec::new("workflows", &["POST"], "/v3/workflows/", "didit", &[ONBOARDING])
                    .with("schema", schema("didit-workflow-create.json")),
            );
        let gw = Gateway::start(&config, &[("DIDIT_KEY", PROVIDER_KEY)]).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let post = |path: &'static str, headers: &'static [(&'static str, &'static str)], body: &'static str| {
            let c = c.clone();
            async move { c.send("POST", path, headers, body).await.unwrap() }
        };

        let r = post(
            "/v3/session/",
            &[("content-type", "application/json; charset=utf-8")],
            r#"{"workflow_id":"wf-1","vendor_data":"u-1","contact_details":{"email":"a@example.com"}}"#,
        )
        .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let r = post(
            "/v3/workflows/",
            &[("content-type", "application/json")],
            r#"{"workflow_label":"KYC","features":[{"feature":"OCR"},"LIVENESS"]}"#,
        )
        .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let reached = mock.state().total_requests();
        assert_eq!(reached, 2);

        // Mass assignment: a field the schema does not name.
        let r = post(
            "/v3/session/",
            &[("content-type", "application/json")],
            r#"{"workflow_id":"wf-1","is_admin":"yes-secret-flag"}"#,
        )
        .await;
        assert_eq!(r.status, 422, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["type"], "https://idgate.dev/problems/schema-violation");
        assert_eq!(v["errors"][0]["pointer"], "/is_admin");
        assert!(!String::from_utf8_lossy(&r.body).contains("yes-secret-flag"));

        // Personal data in the wrong shape: named by pointer, never echoed.
        let r = post(
            "/v3/session/",
            &[("content-type", "application/json")],
            r#"{"vendor_data":"x","contact_details":{"email":"jane.doe.at.home"}}"#,
        )
        .await;
        assert_eq!(r.status, 422, "{:?}", r.body);
        let mut pointers: Vec<String> = r.json()["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["pointer"].as_str().unwrap().to_owned())
            .collect();
        pointers.sort();
        assert_eq!(pointers, ["/contact_details/email", "/workflow_id"]);
        assert!(!String::from_utf8_lossy(&r.body).contains("jane.doe"));

        let r = post("/v3/session/", &[("content-type", "text/plain")], r#"{"workflow_id":"w"}"#).await;
        assert_eq!(r.status, 415, "{:?}", r.body);
        assert_eq!(r.json()["type"], "https://idgate.dev/problems/unsupported-media-type");
        let r = post("/v3/session/", &[], r#"{"workflow_id":"w"}"#).await;
        assert_eq!(r.status, 415);

        let r = post("/v3/session/", &[("content-type", "application/json")], "{\"workflow_id\":\n \"w\" secret").await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["type"], "https://idgate.dev/problems/invalid-json");
        assert!(v["detail"].as_str().unwrap().contains("line 2, column"), "{v}");
        assert!(!v.to_string().contains("secret"));

        let r = post("/v3/workflows/", &[("content-type", "application/json")], r#"{"workflow_label":"x","features":["TELEPATHY"]}"#).await;
        assert_eq!(r.status, 422, "{:?}", r.body);

        // Read one way here and another upstream: a member named twice (the schema would
        // judge the last, an upstream may keep the first), two content types (an upstream
        // may read the body by the second).
        let r = post(
            "/v3/session/",
            &[("content-type", "application/json")],
            r#"{"workflow_id":"wf-1","callback":"http://evil.example/","callback":"https://ok.example/"}"#,
        )
        .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        let v = r.json();
        assert_eq!(v["type"], "https://idgate.dev/problems/invalid-json");
        assert!(v["detail"].as_str().unwrap().contains("a member name given twice"), "{v}");
        assert!(!v.to_string().contains("evil"));
        for h2 in [false, true] {
            let c = Client::new(&pki, Some(ONBOARDING), gw.port, h2);
            let r = c
                .send(
                    "POST",
                    "/v3/session/",
                    &[
                        ("content-type", "application/json"),
                        ("content-type", "application/x-www-form-urlencoded"),
                    ],
                    r#"{"workflow_id":"wf-1","vendor_data":"&is_admin=true&x="}"#,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 415, "h2 {h2}: {:?}", r.body);
        }

        assert_eq!(mock.state().total_requests(), reached, "a refused body reached the provider");
    })
    .await;
}
