//! Requests allowed, denied, rate-limited, refused for a bad API key, answered slowly and
//! timed out upstream: each counted by route, status and decision, timed in the gateway's
//! and the upstream's histograms, and nothing the callers sent in any label.

use std::time::Duration;

use crate::support::*;

use super::{assert_nothing_private, scrape};

/// What callers send that must never reach the metrics.
const SESSION: &str = "sess-5a1c0ffee-private";
const HEADER_VALUE: &str = "note-7f3e9c1b-private";
const PROVIDER_KEY: &str = "prov-key-0c4f2b7e-secret";

const SLOW: Duration = Duration::from_millis(300);

/// The gateway: `decision` (ONBOARDING) and `limited` (one a minute per workload) and
/// `either` (mTLS or an API key) on the HTTPS `provider` with a header credential, `slow`
/// on an upstream answering after [`SLOW`], `stalled` on one slower than its 200 ms
/// request timeout.
async fn gateway(pki: &Pki, ups: &[&TestUpstream; 3]) -> Gateway {
    let pepper = pki.path().join("pepper");
    write_private(&pepper, b"0123456789abcdef0123456789abcdef-pepper");
    let any = toml::toml! { any = ["mtls", "api_key"] };
    let per_workload = table([
        ("name", "per-workload".into()),
        ("key", strings(&["spiffe_id"])),
        ("rate", "1/m".into()),
    ]);
    let mut stalled = UpstreamSpec::new("stalled", &ups[2].url(false));
    stalled.request_timeout = Some("200ms".to_owned());
    let config = base_config(pki)
        .section(
            "api_keys",
            table([
                ("store", path_value(&pki.path().join("keys.redb"))),
                ("pepper", format!("file:{}", pepper.display()).into()),
            ]),
        )
        .section("rate_limits", toml::Value::Array(vec![per_workload.into()]))
        .upstream(
            UpstreamSpec::new("provider", &ups[0].url(true))
                .ca(&pki.files.bundle)
                .credential(CredentialSpec::header(
                    "x-provider-key",
                    "env:TEST_PROVIDER_KEY",
                )),
        )
        .upstream(UpstreamSpec::new("slow", &ups[1].url(false)))
        .upstream(stalled)
        .route(RouteSpec::new(
            "decision",
            &["GET"],
            "/v3/session/{session_id}/decision/",
            "provider",
            &[ONBOARDING],
        ))
        .route(
            RouteSpec::get("limited", "/v1/limited", "provider")
                .with("rate_limits", strings(&["per-workload"])),
        )
        .route(
            RouteSpec::new(
                "either",
                &["GET"],
                "/v3/sessions/",
                "provider",
                &[ONBOARDING, "apikey:batch"],
            )
            .with("auth", toml::Value::Array(vec![any.into()])),
        )
        .route(RouteSpec::get("slow", "/v1/slow", "slow"))
        .route(RouteSpec::get("stalled", "/v1/stalled", "stalled"));
    Gateway::start(&config, &[("TEST_PROVIDER_KEY", PROVIDER_KEY)]).await
}

#[tokio::test]
async fn requests_are_counted_by_route_status_and_decision_and_timed() {
    within(async {
        let pki = Pki::default_pki();
        let provider = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let slow = TestUpstream::http(UpstreamMode::Delay(SLOW)).await;
        let stalled = TestUpstream::http(UpstreamMode::Delay(Duration::from_secs(3))).await;
        let gw = gateway(&pki, &[&provider, &slow, &stalled]).await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, true);
        let decision_path = format!("/v3/session/{SESSION}/decision/");
        let bogus_key = format!("idg_{}_{}", "k".repeat(16), "q".repeat(52));

        let mut request_ids = Vec::new();
        let mut expect = |reply: Reply, status: u16| {
            assert_eq!(reply.status, status, "{:?}", reply.body);
            request_ids.push(reply.header("x-request-id").unwrap().to_owned());
        };
        let note = [("x-trace-note", HEADER_VALUE)];
        expect(
            onboarding
                .send("GET", &decision_path, &note, "")
                .await
                .unwrap(),
            200,
        );
        expect(
            frontend
                .send("GET", &decision_path, &note, "")
                .await
                .unwrap(),
            403,
        );
        expect(onboarding.get("/v1/limited").await.unwrap(), 200);
        expect(onboarding.get("/v1/limited").await.unwrap(), 429);
        let with_key = [("x-api-key", bogus_key.as_str())];
        expect(
            onboarding
                .send("GET", "/v3/sessions/", &with_key, "")
                .await
                .unwrap(),
            401,
        );
        expect(onboarding.get("/v1/slow").await.unwrap(), 200);
        expect(onboarding.get("/v1/stalled").await.unwrap(), 504);
        expect(
            onboarding
                .get(&format!("/nowhere/{SESSION}"))
                .await
                .unwrap(),
            404,
        );

        let (m, text) = scrape(&gw).await;
        let requests = |route, status, decision, reason: Option<&str>| {
            let mut labels = vec![("route", route), ("status", status), ("decision", decision)];
            labels.extend(reason.map(|r| ("reason", r)));
            m.value("idgate_requests_total", &labels)
        };
        assert_eq!(
            requests("decision", "200", "allowed", None),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            requests("decision", "403", "denied", Some("forbidden")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            requests("limited", "200", "allowed", None),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            requests("limited", "429", "denied", Some("rate-limited")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            requests("either", "401", "denied", Some("invalid-api-key")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            requests("slow", "200", "allowed", None),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            requests("stalled", "504", "failed", Some("upstream-timeout")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            requests("-", "404", "denied", Some("no-route")),
            Some(1.0),
            "{text}"
        );
        // Eight requests, eight series: nothing counted twice or left out.
        assert_eq!(
            m.series_of("idgate_requests_total")
                .map(|(_, v)| v)
                .sum::<f64>(),
            8.0
        );

        assert_eq!(
            m.value(
                "idgate_rate_limited_total",
                &[("route", "limited"), ("limit", "per-workload")]
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            m.value(
                "idgate_auth_failures_total",
                &[("reason", "invalid-api-key")]
            ),
            Some(1.0),
            "{text}"
        );
        // The credential went out with the two requests that reached the provider.
        assert_eq!(
            m.value(
                "idgate_upstream_credential_uses_total",
                &[("credential", "provider"), ("version", "env")]
            ),
            Some(2.0),
            "{text}"
        );

        // The gateway's histogram: every request by its route; the slow one above 250 ms.
        let gateway = |route: &str, le: &str| {
            m.value(
                "idgate_request_duration_seconds_bucket",
                &[("route", route), ("le", le)],
            )
        };
        let count = |name: &str, label: &str, value: &str| m.value(name, &[(label, value)]);
        for (route, n) in [
            ("decision", 2.0),
            ("limited", 2.0),
            ("either", 1.0),
            ("-", 1.0),
        ] {
            assert_eq!(
                count("idgate_request_duration_seconds_count", "route", route),
                Some(n)
            );
        }
        assert_eq!(gateway("slow", "0.25"), Some(0.0), "{text}");
        assert_eq!(gateway("slow", "30.0"), Some(1.0), "{text}");
        assert_eq!(gateway("stalled", "0.1"), Some(0.0), "{text}");
        assert_eq!(gateway("stalled", "+Inf"), Some(1.0), "{text}");
        let sum = count("idgate_request_duration_seconds_sum", "route", "slow").unwrap();
        assert!((SLOW.as_secs_f64()..5.0).contains(&sum), "{text}");

        // The upstreams' histogram: answers only (a timeout has none), by upstream.
        let upstream = |name: &str, le: &str| {
            m.value(
                "idgate_upstream_duration_seconds_bucket",
                &[("upstream", name), ("le", le)],
            )
        };
        assert_eq!(
            count(
                "idgate_upstream_duration_seconds_count",
                "upstream",
                "provider"
            ),
            Some(2.0)
        );
        assert_eq!(
            count("idgate_upstream_duration_seconds_count", "upstream", "slow"),
            Some(1.0)
        );
        assert_eq!(upstream("slow", "0.25"), Some(0.0), "{text}");
        assert_eq!(upstream("slow", "30.0"), Some(1.0), "{text}");
        let sum = count("idgate_upstream_duration_seconds_sum", "upstream", "slow").unwrap();
        assert!((SLOW.as_secs_f64()..5.0).contains(&sum), "{text}");
        assert_eq!(
            count(
                "idgate_upstream_duration_seconds_count",
                "upstream",
                "stalled"
            ),
            None
        );

        // Every handshake succeeded: each reason is there, at zero.
        let refused: Vec<_> = m.series_of("idgate_tls_handshake_failures_total").collect();
        assert_eq!(refused.len(), 11, "{text}");
        assert!(refused.iter().all(|(_, v)| *v == 0.0), "{text}");

        let mut private = vec![
            SESSION,
            HEADER_VALUE,
            PROVIDER_KEY,
            bogus_key.as_str(),
            &bogus_key[4..20],
            ONBOARDING,
            FRONTEND,
            "/v3/",
            "/v1/",
            "/nowhere",
        ];
        private.extend(request_ids.iter().map(String::as_str));
        assert_nothing_private(&m, &text, &private);
    })
    .await;
}
