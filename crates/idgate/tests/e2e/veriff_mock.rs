//! The gateway's Veriff signatures against the mock provider in Veriff mode, which checks
//! them as Veriff documents them: every method the gateway signs is taken.

use idgate_mock_provider::{AuthMode, MockConfig};

use crate::support::*;

const VERIFF_CLIENT: &str = "veriff-client-for-the-mock";
const VERIFF_SECRET: &str = "veriff-shared-secret-for-the-mock-0123456789";

#[tokio::test]
async fn a_head_through_the_gateway_is_accepted_by_the_veriff_mock() {
    within(async {
        let pki = Pki::default_pki();
        let mock = idgate_mock_provider::start(MockConfig::new(
            any_port(),
            AuthMode::Veriff {
                client: VERIFF_CLIENT.to_owned().into(),
                secret: VERIFF_SECRET.to_owned().into(),
            },
        ))
        .await
        .unwrap();
        let config =
            base_config(&pki)
                .upstream(UpstreamSpec::new("veriff", &mock.url()).credential(
                    CredentialSpec::scheme("veriff", "env:VERIFF_CLIENT", "env:VERIFF_SECRET"),
                ))
                .route(RouteSpec::new(
                    "create",
                    &["POST"],
                    "/v1/sessions",
                    "veriff",
                    &[ONBOARDING],
                ))
                .route(RouteSpec::new(
                    "decision",
                    &["GET", "HEAD"],
                    "/v1/sessions/{session_id}/decision",
                    "veriff",
                    &[ONBOARDING],
                ));
        let mut gw = Gateway::start(
            &config,
            &[
                ("VERIFF_CLIENT", VERIFF_CLIENT),
                ("VERIFF_SECRET", VERIFF_SECRET),
                TRACE_LOG,
            ],
        )
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let created = client
            .send(
                "POST",
                "/v1/sessions",
                &[("content-type", "application/json")],
                r#"{"verification":{"vendorData":"cust-head"}}"#,
            )
            .await
            .unwrap();
        assert_eq!(created.status, 201, "{:?}", created.body);
        let id = created.json()["verification"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/v1/sessions/{id}/decision");

        // HEAD is signed as GET is (the session id), and the mock takes it as it takes GET.
        let head = client.send("HEAD", &path, &[], "").await.unwrap();
        let seen = mock.state().last_request().unwrap();
        assert_eq!(seen.method, "HEAD");
        assert_eq!((head.status, seen.status), (200, 200), "{:?}", gw.output());
        assert!(head.body.is_empty());
        let get = client.get(&path).await.unwrap();
        assert_eq!(get.status, 200, "{:?}", get.body);
        assert_eq!(get.json()["status"], "success");
        gw.assert_never_logged(&[VERIFF_SECRET]).await;
    })
    .await;
}
