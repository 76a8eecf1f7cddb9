//! Logs: no secret ever in them, one access line per request, and the log filter obeyed.

use crate::assert_eventually;
use crate::support::*;

use super::{
    DECISION, PROVIDER_HEADER, PROVIDER_TOKEN, PROVIDER_TOKEN_ENV, Setup, access_lines, pki,
    provider_upstream, with_standard_routes,
};

const CALLER_KEY: &str = "caller-api-key-7f3e9b21";
const CALLER_BEARER: &str = "caller-bearer-c0ffee55";

/// One request that is forwarded (200), one denied (403) and one to a closed port (502),
/// each carrying caller credentials, through a gateway logging JSON at `level`. Returns the
/// gateway (its output holds the logs) and (request id, status, route, peer) per request.
async fn requests_carrying_secrets(
    level: &str,
) -> (
    Gateway,
    TestUpstream,
    Vec<(String, u16, &'static str, &'static str)>,
) {
    let pki = pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let closed = ClosedPort::new();
    let config = with_standard_routes(
        base_config(&pki)
            .json_log(level)
            .upstream(provider_upstream(
                "provider",
                &upstream.url(true),
                &pki.files.bundle,
            ))
            .upstream(provider_upstream(
                "down",
                &closed.url("https"),
                &pki.files.bundle,
            )),
        "provider",
    )
    .route(RouteSpec::get("down-route", "/down/{x}", "down"));
    let gw = Gateway::start(&config, &[(PROVIDER_TOKEN_ENV, PROVIDER_TOKEN)]).await;
    let port = gw.port;
    let bearer = format!("Bearer {CALLER_BEARER}");
    let creds = [
        ("x-api-key", CALLER_KEY),
        ("authorization", bearer.as_str()),
    ];
    let onboarding = Client::new(&pki, Some(ONBOARDING), port, false);
    let frontend = Client::new(&pki, Some(FRONTEND), port, true);
    let mut sent = Vec::new();
    for (client, path, status, route, peer) in [
        (&onboarding, DECISION, 200, "decision", ONBOARDING),
        (&frontend, DECISION, 403, "decision", FRONTEND),
        (&onboarding, "/down/1", 502, "down-route", ONBOARDING),
    ] {
        let r = client.send("GET", path, &creds, "").await.unwrap();
        assert_eq!(r.status, status, "{path}: {:?}", r.body);
        let rid = r.header("x-request-id").unwrap().to_owned();
        sent.push((rid, status, route, peer));
    }
    assert_eq!(
        upstream.last().headers.get(PROVIDER_HEADER).unwrap(),
        PROVIDER_TOKEN,
        "the test's provider key was really in use"
    );
    (gw, upstream, sent)
}

fn assert_no_secret_in_output(gw: &Gateway) {
    let out = gw.output();
    for secret in [PROVIDER_TOKEN, CALLER_KEY, CALLER_BEARER] {
        assert!(
            !out.contains(secret),
            "{secret:?} appears in the gateway output:\n{out}"
        );
    }
}

#[tokio::test]
async fn secrets_never_appear_in_logs_and_access_log_has_one_line_per_request() {
    within(async {
        let (gw, _upstream, sent) = requests_carrying_secrets("info").await;
        assert_eventually!(
            access_lines(&gw).len() >= sent.len(),
            "expected {} access-log lines; output:\n{}",
            sent.len(),
            gw.output()
        );
        let lines = access_lines(&gw);
        assert_eq!(
            lines.len(),
            sent.len(),
            "one access line per request: {lines:?}"
        );
        for (rid, status, route, peer) in &sent {
            let line = lines
                .iter()
                .find(|l| l.get("request_id").and_then(|v| v.as_str()) == Some(rid.as_str()))
                .unwrap_or_else(|| panic!("no access line for request {rid}: {lines:?}"));
            assert_eq!(line["peer"], *peer, "{line:?}");
            assert_eq!(line["route"], *route, "{line:?}");
            assert_eq!(
                line["status"].as_u64(),
                Some(u64::from(*status)),
                "{line:?}"
            );
            assert!(
                line.get("latency_us").and_then(|v| v.as_u64()).is_some(),
                "{line:?}"
            );
        }
        assert_no_secret_in_output(&gw);
    })
    .await
}

#[tokio::test]
async fn secrets_stay_out_of_logs_even_at_trace_level() {
    within(async {
        let (mut gw, _upstream, sent) = requests_carrying_secrets("trace").await;
        assert_eventually!(
            access_lines(&gw).len() >= sent.len(),
            "expected {} access-log lines; output:\n{}",
            sent.len(),
            gw.output()
        );
        // The access lines and the rest of the log leave through different writer threads:
        // stopped, the gateway has written everything, and all of it is searched.
        gw.assert_never_logged(&[PROVIDER_TOKEN, CALLER_KEY, CALLER_BEARER])
            .await;
    })
    .await
}

#[tokio::test]
async fn access_lines_follow_the_log_filter() {
    within(async {
        let (mut gw, _upstream, sent) = requests_carrying_secrets("info,idgate::access=off").await;
        assert!(sent.iter().any(|(_, status, _, _)| *status == 502));
        // The refused request's warning is written: the access lines, filtered out, are not.
        let refused = || {
            json_lines(&gw.output())
                .iter()
                .any(|l| l.get("message").and_then(|m| m.as_str()) == Some("request refused"))
        };
        assert_eventually!(refused(), "no refusal warning; output:\n{}", gw.output());
        // Stopped, the gateway has written all it ever will.
        gw.stop().await;
        assert!(access_lines(&gw).is_empty(), "{}", gw.output());
    })
    .await
}

/// rustls writes through the `log` crate; its lines join the gateway's log at the level the
/// configuration asks for, and not below it.
#[tokio::test]
async fn rustls_lines_reach_the_log_at_the_configured_level() {
    within(async {
        // rustls says which suite it chose ("decided upon suite …") before the client's
        // missing certificate ends the handshake; the reason is the gateway's own line.
        let rustls_line = |gw: &Gateway| {
            json_lines(&gw.output()).into_iter().any(|l| {
                l.get("target")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.starts_with("rustls::"))
                    && l.get("message")
                        .and_then(|m| m.as_str())
                        .is_some_and(|m| m.starts_with("decided upon suite"))
                    && l.get("level").and_then(|v| v.as_str()) == Some("DEBUG")
            })
        };
        for (level, shown) in [("info,rustls=debug", true), ("info", false)] {
            let s =
                Setup::start_with(UpstreamMode::Echo, |c| c.log = Some(LogSpec::json(level))).await;
            // No client certificate: the handshake fails.
            assert!(s.client(None).get(DECISION).await.is_err());
            assert_eventually!(
                !log_lines(&s.gw, "idgate::tls", "TLS handshake refused").is_empty(),
                "the refused handshake was not logged:\n{}",
                s.gw.output()
            );
            assert_eq!(
                rustls_line(&s.gw),
                shown,
                "level {level}:\n{}",
                s.gw.output()
            );
        }
    })
    .await
}
