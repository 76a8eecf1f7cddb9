//! The masking profiles the examples ship, applied to the mock provider's Didit webhooks on
//! their way through the gateway to a subscriber: `crm` of examples/webhooks.toml lets only
//! the statuses through, `kyc-minimal` of examples/kyc-minimal.toml finds its fields inside
//! the webhook envelope as well as in a decision answer.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use idgate_mock_provider::{AuthMode, DEFAULT_WORKFLOW_ID, MockConfig, MockHandle, WebhookTarget};

use super::*;
use crate::assert_eventually;
use crate::masking::kyc_minimal;

const PROVIDER_KEY: &str = "didit-api-key-for-the-example-profiles";
const PSEUDONYM_KEY: &str = "pseudonym-key-for-the-example-profiles-0123456789";
const REVIEW_COMMENT: &str = "Spoke to Carmen Española on +34600000000: the selfie is hers";

/// The profile `name` of examples/`file`, as the example ships it.
fn example_profile(file: &str, name: &str) -> toml::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(file);
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    config["masking"]["profiles"][name].clone()
}

/// One call to the mock's Didit API, as a customer makes it: the status and the JSON body.
async fn didit_call(mock: &MockHandle, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let tcp = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("x-api-key", PROVIDER_KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// What the subscriber got of a session approved after a review, under `profile` (named
/// `name`), and the decision as Didit's API answers it whole.
async fn approved_after_review(name: &str, profile: toml::Value) -> (Delivery, Value) {
    let pki = Pki::default_pki();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(&pki).await;
    let mut config = webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new()).section(
        "masking",
        table([("profiles", table([(name, profile)]).into())]),
    );
    let subscriber = &mut config.sections["webhooks"][0]["subscribers"][0];
    subscriber
        .as_table_mut()
        .unwrap()
        .insert("masking".into(), name.into());
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
    // Everything a customer may attach to a session, with the person's data in it.
    let (status, created) = didit_call(
        &mock,
        "POST",
        "/v3/session/",
        &json!({
            "workflow_id": DEFAULT_WORKFLOW_ID,
            "vendor_data": "user-crm-1",
            "metadata": {"crm_note": "called Carmen at home"},
            "contact_details": {"email": "carmen.espanola@example.org", "phone": "+34600000000"},
            "expected_details": {"first_name": "Carmen", "date_of_birth": "1980-01-01"},
        }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["session_id"].as_str().unwrap().to_owned();
    mock.advance(&id, "In Progress").unwrap();
    mock.advance(&id, "In Review").unwrap();
    let (status, answer) = didit_call(
        &mock,
        "PATCH",
        &format!("/v3/session/{id}/update-status/"),
        &json!({"new_status": "Approved", "comment": REVIEW_COMMENT}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    let approved = || {
        sub.processed()
            .into_iter()
            .find(|d| d.body["status"] == "Approved")
    };
    assert_eventually!(approved().is_some(), "got {:?}", sub.got());
    let delivery = approved().unwrap();
    assert!(delivery.signature_ok, "{delivery:?}");
    let (status, decision) = didit_call(
        &mock,
        "GET",
        &format!("/v3/session/{id}/decision/"),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    // Didit's API and its webhook tell of the same review.
    assert_eq!(decision["reviews"][0]["comment"], REVIEW_COMMENT);
    (delivery, decision)
}

/// Every leaf value of `v` (strings, numbers, booleans, nulls) with its path, `a.b[0].c`.
fn leaves(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                leaves(child, &path, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                leaves(child, &format!("{at}[{i}]"), out);
            }
        }
        leaf => out.push((at.to_owned(), leaf.clone())),
    }
}

/// The personal values of a Didit decision (and of what the customer attached to its
/// session), read from the decision as the API answers it: the ID verification's personal
/// fields, the images and videos, the links and everything the customer attached.
fn personal_values(decision: &Value) -> Vec<String> {
    let idv = &decision["id_verifications"][0];
    let mut out: Vec<String> = [
        "document_number",
        "personal_number",
        "first_name",
        "last_name",
        "full_name",
        "date_of_birth",
        "date_of_issue",
        "expiration_date",
        "place_of_birth",
        "address",
        "formatted_address",
    ]
    .iter()
    .filter_map(|k| idv[*k].as_str().map(str::to_owned))
    .collect();
    for key in ["street_1", "postal_code", "city"] {
        out.push(idv["parsed_address"][key].as_str().unwrap().to_owned());
    }
    // Every image and video is under the mock's media host.
    out.push("media.didit-mock.invalid".to_owned());
    out.push(decision["session_url"].as_str().unwrap().to_owned());
    out.push(decision["vendor_data"].as_str().unwrap().to_owned());
    out.push(REVIEW_COMMENT.to_owned());
    out.extend(
        [
            "called Carmen at home",
            "carmen.espanola@example.org",
            "+34600000000",
            "Carmen",
        ]
        .map(str::to_owned),
    );
    for v in &out {
        assert!(
            decision.to_string().contains(v.as_str()) || v.starts_with("media."),
            "{v} is not in the decision"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crm_profile_of_the_webhooks_example_passes_no_personal_data_of_a_didit_decision() {
    within(async {
        let (delivery, decision) =
            approved_after_review("crm", example_profile("webhooks.toml", "crm")).await;
        let text = delivery.body.to_string();
        for v in personal_values(&decision) {
            assert!(!text.contains(v.as_str()), "{v} reached crm: {text}");
        }
        // What crm gets is the statuses, nothing else: every value left is one of these.
        let mut got = Vec::new();
        leaves(&delivery.body, "", &mut got);
        let allowed = |path: &str| {
            matches!(
                path,
                "event_id"
                    | "webhook_type"
                    | "timestamp"
                    | "created_at"
                    | "session_id"
                    | "status"
                    | "workflow_id"
                    | "decision.status"
            ) || [
                "id_verifications",
                "liveness_checks",
                "face_matches",
                "aml_screenings",
            ]
            .iter()
            .any(|check| {
                path.strip_prefix(&format!("decision.{check}["))
                    .and_then(|rest| rest.split_once("].status"))
                    .is_some_and(|(i, tail)| i.parse::<usize>().is_ok() && tail.is_empty())
            })
        };
        for (path, value) in &got {
            assert!(allowed(path), "{path} = {value} reached crm: {text}");
        }
        // ... and the statuses are there.
        assert_eq!(delivery.body["status"], "Approved");
        assert_eq!(delivery.body["decision"]["status"], "Approved");
        for check in [
            "id_verifications",
            "liveness_checks",
            "face_matches",
            "aml_screenings",
        ] {
            assert_eq!(
                delivery.body["decision"][check][0]["status"], decision[check][0]["status"],
                "{check}: {text}"
            );
        }
        assert_eq!(delivery.body["session_id"], decision["session_id"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_comment_in_a_didit_webhook_is_redacted_for_a_kyc_minimal_subscriber() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("pseudonym.key");
        write_private(&key, PSEUDONYM_KEY.as_bytes());
        let profile = kyc_minimal(&format!("file:{}", key.display()));
        let (delivery, decision) = approved_after_review("kyc-minimal", profile).await;
        let text = delivery.body.to_string();
        let review = &delivery.body["decision"]["reviews"][0];
        assert_eq!(review["comment"], "[redacted]", "{text}");
        assert_eq!(review["new_status"], "Approved");
        assert!(!text.contains("Spoke to Carmen"), "{text}");
        // The rest of the profile reaches into the envelope too.
        let idv = &delivery.body["decision"]["id_verifications"][0];
        assert_eq!(idv["date_of_issue"], "2021", "{text}");
        assert_eq!(idv["full_name"], "[redacted]");
        let original = &decision["id_verifications"][0];
        assert!(!text.contains(original["date_of_issue"].as_str().unwrap()));
        assert!(!text.contains(original["document_number"].as_str().unwrap()));
    })
    .await;
}
