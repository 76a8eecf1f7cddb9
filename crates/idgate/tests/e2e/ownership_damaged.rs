//! A damaged ownership record in the shared state: the request it answers is refused, and
//! the object's id (from the request's path: a verification session's id is personal data)
//! appears nowhere in what the gateway writes.

use crate::support::*;

/// An id the path carries, as a verification session's would.
const SESSION: &str = "5e55c0de-7a1b-4c2d-9e8f-0a1b2c3d4e5f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ownership_record_never_puts_the_object_id_in_the_log() {
    within(async {
        let Some(redis) = idgate_store::redis_testing::RedisServer::start() else {
            return;
        };
        // A live record for the session in the route's namespace (its upstream's name), whose
        // owner is no name a record can hold.
        let seeded = redis.query(&format!(
            r#"HSET idgate:o:{{provider:{SESSION}}} o "\x01" d 4102444800000000"#
        ));
        assert_eq!(seeded, ":2\r\n", "{seeded}");

        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(
                RouteSpec::new(
                    "decision",
                    &["GET"],
                    "/v3/session/{session_id}/decision/",
                    "provider",
                    &[ONBOARDING],
                )
                .with("owner_param", "session_id"),
            )
            .section(
                "state",
                table([("backend", "redis".into()), ("url", redis.url().into())]),
            );
        let mut gw = Gateway::start(&config, &[TRACE_LOG]).await;

        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let r = client
            .get(&format!("/v3/session/{SESSION}/decision/"))
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(
            r.json()["type"],
            "https://idgate.dev/problems/state-unavailable"
        );
        assert!(upstream.requests().is_empty());
        gw.assert_never_logged(&[SESSION]).await;
        // The failure itself is logged, with the record named otherwise.
        let output = gw.output();
        assert!(
            output.contains("ownership record #") && output.contains("cannot be read"),
            "{output}"
        );
    })
    .await;
}
