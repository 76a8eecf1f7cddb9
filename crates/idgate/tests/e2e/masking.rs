//! Response masking with the mock provider's Didit decisions, through the `kyc-minimal`
//! profile exactly as `examples/kyc-minimal.toml` ships it: none of the masked values reach
//! a masked caller, an `allow` caller sees the whole decision, pseudonyms are stable per
//! key and differ across keys (two profiles, a key rotation), and a key held in a PKCS#11
//! token makes the same pseudonyms as the same key in a file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use idgate_mock_provider::MockHandle;

use crate::assert_eventually;
use crate::ownership::{PROVIDER_KEY, didit_mock};
use crate::support::*;

const KEY_A: &str = "pseudonym-key-a-7c1e0f5b9d2a4c6e8f0a1b3c";
const KEY_B: &str = "pseudonym-key-b-2f4d6b8a0c1e3a5c7e9b0d2f";
const V3: &str = "/v3/session/{session_id}/decision/";
const V2: &str = "/v2/session/{session_id}/decision/";

/// The `kyc-minimal` profile of examples/kyc-minimal.toml, with its key at `key`.
pub(crate) fn kyc_minimal(key: &str) -> toml::Value {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kyc-minimal.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let mut config: toml::Table = toml::from_str(&text).unwrap();
    let mut profile = config
        .remove("masking")
        .and_then(|m| m.as_table()?.get("profiles")?.get("kyc-minimal").cloned())
        .expect("examples/kyc-minimal.toml has [masking.profiles.kyc-minimal]");
    if let Some(t) = profile.as_table_mut() {
        t.insert("pseudonym_key".to_owned(), key.into());
    }
    profile
}

/// `[masking]` with these profiles.
fn masking(profiles: &[(&str, toml::Value)]) -> toml::Table {
    table([(
        "profiles",
        toml::Value::Table(
            profiles
                .iter()
                .map(|(n, p)| ((*n).to_owned(), p.clone()))
                .collect(),
        ),
    )])
}

/// A key file only its owner can read, under `dir`.
fn key_file(dir: &Path, name: &str, key: &str) -> PathBuf {
    let path = dir.join(name);
    write_private(&path, key.as_bytes());
    path
}

fn file_ref(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// What a pseudonym of `value` under `key` must be: `ps_` and base64url(HMAC-SHA256).
fn expected_pseudonym(key: &str, value: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let tag = ring::hmac::sign(&k, value.as_bytes());
    format!(
        "ps_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

/// The Didit routes: sessions created by onboarding, the v3 decision masked with `v3`
/// (onboarding sees all), the v2 decision with `v2`.
fn config(pki: &Pki, mock: &MockHandle, v3: &str, v2: &str) -> GatewayConfig {
    let allow = ["spiffe://example.org/ns/kyc/*", FRONTEND];
    base_config(pki)
        .upstream(
            UpstreamSpec::new("didit", &mock.url())
                .credential(CredentialSpec::header("x-api-key", "env:DIDIT_KEY")),
        )
        .route(RouteSpec::new(
            "create",
            &["POST"],
            "/v3/session/",
            "didit",
            &[ONBOARDING],
        ))
        .route(
            RouteSpec::new("decision", &["GET"], V3, "didit", &allow).with(
                "masking",
                table([
                    ("default", v3.into()),
                    (
                        "by_caller",
                        toml::Value::Array(vec![toml::Value::Table(table([
                            ("callers", strings(&[ONBOARDING])),
                            ("profile", "allow".into()),
                        ]))]),
                    ),
                ]),
            ),
        )
        .route(RouteSpec::new("decision-v2", &["GET"], V2, "didit", &allow).with("masking", v2))
}

async fn create(c: &Client, vendor_data: &str) -> String {
    let body = format!(
        r#"{{"workflow_id":"wf-1","vendor_data":"{vendor_data}","metadata":{{"crm_note":"called Carmen at home"}},"contact_details":{{"email":"carmen.espanola@example.org","phone":"+34600000000"}}}}"#
    );
    let r = c
        .send(
            "POST",
            "/v3/session/",
            &[("content-type", "application/json")],
            &body,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["session_id"].as_str().unwrap().to_owned()
}

/// The user goes through the provider's flow and is approved: only then does the
/// decision carry the checks' personal data.
fn finish(mock: &MockHandle, id: &str) {
    mock.advance(id, "In Progress").unwrap();
    mock.advance(id, "Approved").unwrap();
}

/// The body of a 200 answer, checked against its Content-Length.
fn whole(r: &Reply) -> String {
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(r.body.len())
    );
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// Every value the kyc-minimal profile must keep from a masked caller, read from the
/// decision an `allow` caller got.
fn masked_values(full: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let idv = &full["id_verifications"][0];
    for key in [
        "document_number",
        "personal_number",
        "first_name",
        "last_name",
        "full_name",
        "date_of_birth",
        "date_of_issue",
        "place_of_birth",
        "address",
        "formatted_address",
        "portrait_image",
        "front_image",
        "back_image",
    ] {
        if let Some(s) = idv[key].as_str() {
            out.push(s.to_owned());
        }
    }
    for key in ["street_1", "postal_code"] {
        out.push(idv["parsed_address"][key].as_str().unwrap().to_owned());
    }
    for key in ["reference_image", "video_url"] {
        out.push(full["liveness_checks"][0][key].as_str().unwrap().to_owned());
    }
    out.push(full["session_url"].as_str().unwrap().to_owned());
    out.push(full["vendor_data"].as_str().unwrap().to_owned());
    out.extend(
        [
            "carmen.espanola@example.org",
            "+34600000000",
            "called Carmen at home",
        ]
        .map(str::to_owned),
    );
    out
}

#[tokio::test]
async fn a_didit_decision_through_kyc_minimal_holds_none_of_the_masked_values() {
    within(async {
        let pki = Pki::default_pki();
        let mock = didit_mock().await;
        let dir = tempfile::tempdir().unwrap();
        let a = file_ref(&key_file(dir.path(), "a", KEY_A));
        let b = file_ref(&key_file(dir.path(), "b", KEY_B));
        let config = config(&pki, &mock, "kyc-minimal", "kyc-minimal-b").section(
            "masking",
            masking(&[
                ("kyc-minimal", kyc_minimal(&a)),
                ("kyc-minimal-b", kyc_minimal(&b)),
            ]),
        );
        let mut gw = Gateway::start(&config, &[("DIDIT_KEY", PROVIDER_KEY), TRACE_LOG]).await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, true);
        let id = create(&onboarding, "user-42").await;
        finish(&mock, &id);
        let path = V3.replace("{session_id}", &id);

        // The onboarding service may see everything: the whole decision, as Didit sent it.
        let full = onboarding.get(&path).await.unwrap();
        let full_text = whole(&full);
        let full = full.json();
        assert_eq!(full["id_verifications"][0]["document_number"], "BAA000589");
        let secrets = masked_values(&full);
        for s in &secrets {
            assert!(
                full_text.contains(s.as_str()),
                "{s} not in the full decision"
            );
        }

        // Anyone else: none of it, over HTTP/2 here.
        let masked = frontend.get(&path).await.unwrap();
        let text = whole(&masked);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s} leaked: {text}");
        }
        let m = masked.json();
        let idv = &m["id_verifications"][0];
        assert_eq!(idv["document_number"], "******589");
        assert_eq!(idv["date_of_birth"], "1980");
        assert_eq!(idv["full_name"], "[redacted]");
        assert!(idv.get("personal_number").is_none() && idv.get("parsed_address").is_none());
        assert_eq!(
            m["aml_screenings"][0]["screened_data"]["date_of_birth"],
            "1980"
        );
        // What a downstream system decides on is still there.
        for key in ["session_id", "status", "workflow_id", "features"] {
            assert_eq!(m[key], full[key], "{key}");
        }
        for (check, keys) in [
            (
                "id_verifications",
                &[
                    "status",
                    "document_type",
                    "issuing_state",
                    "age",
                    "warnings",
                ][..],
            ),
            ("face_matches", &["status", "score"][..]),
            ("aml_screenings", &["status", "total_hits", "hits"][..]),
        ] {
            for key in keys {
                assert_eq!(m[check][0][key], full[check][0][key], "{check}.{key}");
            }
        }

        // Pseudonyms: the keyed HMAC of the value, the same on every request, another
        // under another key.
        let ps = m["vendor_data"].as_str().unwrap().to_owned();
        assert_eq!(ps, expected_pseudonym(KEY_A, "user-42"));
        let again = frontend.get(&path).await.unwrap().json();
        assert_eq!(again["vendor_data"], ps.as_str());
        let other_key = frontend
            .get(&V2.replace("{session_id}", &id))
            .await
            .unwrap()
            .json();
        assert_eq!(
            other_key["vendor_data"],
            expected_pseudonym(KEY_B, "user-42").as_str()
        );
        assert_ne!(other_key["vendor_data"], ps.as_str());
        // The v2 shape (one object per check) is masked by the same `..` rules.
        assert_eq!(other_key["id_verification"]["date_of_birth"], "1980");
        // Another user, another pseudonym.
        let id2 = create(&onboarding, "user-43").await;
        let other_user = frontend
            .get(&V3.replace("{session_id}", &id2))
            .await
            .unwrap()
            .json();
        assert_eq!(
            other_user["vendor_data"],
            expected_pseudonym(KEY_A, "user-43").as_str()
        );
        // Neither key is in the log, nor the provider's key, nor the document number.
        gw.assert_never_logged(&[KEY_A, KEY_B, PROVIDER_KEY, "BAA000589"])
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_didit_decision_through_kyc_minimal_holds_no_issue_date() {
    within(async {
        let pki = Pki::default_pki();
        let mock = didit_mock().await;
        let dir = tempfile::tempdir().unwrap();
        let a = file_ref(&key_file(dir.path(), "a", KEY_A));
        let config = config(&pki, &mock, "kyc-minimal", "kyc-minimal")
            .section("masking", masking(&[("kyc-minimal", kyc_minimal(&a))]));
        let gw = Gateway::start(&config, &[("DIDIT_KEY", PROVIDER_KEY)]).await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let id = create(&onboarding, "user-issued").await;
        finish(&mock, &id);

        let full = onboarding
            .get(&V3.replace("{session_id}", &id))
            .await
            .unwrap()
            .json();
        let issued = full["id_verifications"][0]["date_of_issue"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(issued.len(), "2021-06-02".len(), "{issued}");
        // Both shapes of the decision: the issue date is cut to its year, as the birth date.
        for (path, idv) in [(V3, "/id_verifications/0"), (V2, "/id_verification")] {
            let masked = frontend
                .get(&path.replace("{session_id}", &id))
                .await
                .unwrap();
            let text = whole(&masked);
            assert!(!text.contains(issued.as_str()), "{path}: {text}");
            let idv = masked.json().pointer(idv).unwrap().clone();
            assert_eq!(idv["date_of_issue"], issued[..4], "{path}: {idv}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_key_in_the_token_makes_the_pseudonyms_of_the_same_key_in_a_file() {
    within(async {
        let token = SoftHsmToken::new();
        let (code, out, err) = token.hsm(
            &[
                "import-secret",
                "--kind",
                "hmac",
                "--uri",
                &token.uri("pseudonym-key"),
            ],
            KEY_A,
        );
        assert_eq!(code, 0, "{out}{err}");
        let pki = Pki::default_pki();
        let mock = didit_mock().await;
        let dir = tempfile::tempdir().unwrap();
        let file = file_ref(&key_file(dir.path(), "a", KEY_A));
        let config = config(&pki, &mock, "in-file", "in-token").section(
            "masking",
            masking(&[
                ("in-file", kyc_minimal(&file)),
                ("in-token", kyc_minimal(&token.uri("pseudonym-key"))),
            ]),
        );
        let gw = Gateway::start(
            &config,
            &[
                ("DIDIT_KEY", PROVIDER_KEY),
                ("SOFTHSM2_CONF", token.conf().to_str().unwrap()),
            ],
        )
        .await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let id = create(&onboarding, "user-hsm-7").await;
        let from_file = frontend
            .get(&V3.replace("{session_id}", &id))
            .await
            .unwrap();
        let from_token = frontend
            .get(&V2.replace("{session_id}", &id))
            .await
            .unwrap();
        let expected = expected_pseudonym(KEY_A, "user-hsm-7");
        assert_eq!(from_file.json()["vendor_data"], expected.as_str());
        assert_eq!(
            from_token.json()["vendor_data"],
            expected.as_str(),
            "{}",
            gw.output()
        );
        assert!(!whole(&from_token).contains("user-hsm-7"));
    })
    .await;
}

#[tokio::test]
async fn a_rotated_key_file_gives_new_pseudonyms_without_a_restart() {
    within(async {
        let pki = Pki::default_pki();
        let mock = didit_mock().await;
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path(), "key", KEY_A);
        let mut profile = kyc_minimal(&file_ref(&path));
        profile
            .as_table_mut()
            .unwrap()
            .insert("refresh_interval".into(), "200ms".into());
        let config = config(&pki, &mock, "kyc-minimal", "allow")
            .section("masking", masking(&[("kyc-minimal", profile)]));
        let gw = Gateway::start(&config, &[("DIDIT_KEY", PROVIDER_KEY)]).await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let id = create(&onboarding, "user-rot").await;
        let url = V3.replace("{session_id}", &id);
        let pseudonym = || async {
            frontend.get(&url).await.unwrap().json()["vendor_data"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(pseudonym().await, expected_pseudonym(KEY_A, "user-rot"));
        // `allow` on the v2 route: that caller gets vendor_data as it is.
        let plain = frontend
            .get(&V2.replace("{session_id}", &id))
            .await
            .unwrap()
            .json();
        assert_eq!(plain["vendor_data"], "user-rot");

        key_file(dir.path(), "key", KEY_B);
        let rotated = expected_pseudonym(KEY_B, "user-rot");
        assert_eventually!(pseudonym().await == rotated, "the new key was never used");
        assert_eventually!(
            gw.output().contains("pseudonym key rotated"),
            "the rotation was not logged"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_reads_a_masked_answer_whole_by_its_length_over_http1_and_http2() {
    within(async {
        let pki = Pki::default_pki();
        let mock = didit_mock().await;
        let dir = tempfile::tempdir().unwrap();
        let a = file_ref(&key_file(dir.path(), "a", KEY_A));
        let config = config(&pki, &mock, "kyc-minimal", "kyc-minimal")
            .section("masking", masking(&[("kyc-minimal", kyc_minimal(&a))]));
        let gw = Gateway::start(&config, &[("DIDIT_KEY", PROVIDER_KEY)]).await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let id = create(&onboarding, "user-curl").await;
        finish(&mock, &id);
        let (cert, key) = pki.workload(FRONTEND);
        for flag in ["--http1.1", "--http2"] {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "20", "-D", "-", flag, "--cacert"])
                .arg(&pki.files.bundle)
                .arg("--cert")
                .arg(&cert)
                .arg("--key")
                .arg(&key)
                .arg(gw.url(&V3.replace("{session_id}", &id)));
            let (code, out, err) =
                tokio::task::spawn_blocking(move || run_bounded(&mut cmd, Duration::from_secs(30)))
                    .await
                    .unwrap();
            assert_eq!(code, 0, "curl {flag}: {err}\n{out}");
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with("HTTP/"), "{head}");
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().to_owned())
                })
                .unwrap_or_else(|| panic!("no content-length: {head}"));
            assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{flag}");
            assert!(
                !body.contains("BAA000589") && !body.contains("user-curl"),
                "{body}"
            );
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(body).unwrap()["vendor_data"],
                expected_pseudonym(KEY_A, "user-curl").as_str()
            );
        }
    })
    .await;
}
