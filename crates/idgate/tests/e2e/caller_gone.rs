//! A request whose caller goes away before its answer, once it was forwarded: over HTTP/1.1
//! the caller closes its connection, over HTTP/2 it resets the stream. Either way the
//! request has its access line (status 499, `allowed:client-closed`) and is counted, as an
//! answered one is.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::assert_eventually;
use crate::support::*;

/// The access line of the request `id`, once it is in the gateway's output.
fn access_line(gw: &Gateway, id: &str) -> Option<serde_json::Value> {
    log_lines(gw, "idgate::access", "request")
        .into_iter()
        .find(|l| l.get("request_id").and_then(|v| v.as_str()) == Some(id))
        .map(|l| serde_json::to_value(l).unwrap())
}

/// `idgate_requests_total` of the route `route` with status 499 and decision
/// `allowed:client-closed`, and `idgate_request_duration_seconds_count` of the route.
async fn counted(gw: &Gateway) -> (f64, f64) {
    let (status, text) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let value = |name: &str, labels: &[&str]| {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    (
        value(
            "idgate_requests_total",
            &[
                r#"route="route""#,
                r#"status="499""#,
                r#"decision="allowed""#,
                r#"reason="client-closed""#,
            ],
        ),
        value(
            "idgate_request_duration_seconds_count",
            &[r#"route="route""#],
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_goes_away_before_its_answer_has_an_access_line_and_is_counted() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Delay(Duration::from_secs(40))).await;
        let gw = OneRoute {
            url: &upstream.url(false),
            ..OneRoute::default()
        }
        .start(&pki, &[])
        .await;
        assert_eq!(counted(&gw).await, (0.0, 0.0));

        // HTTP/1.1: the caller closes its connection once the request is with the upstream.
        let mut tls = tls_to(&pki, &gw, false).await;
        tls.write_all(
            b"GET /v1/slow HTTP/1.1\r\nhost: localhost\r\nx-request-id: gone-over-http1\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eventually!(
            upstream.requests().len() == 1,
            "the request did not reach the upstream"
        );
        tls.shutdown().await.unwrap();
        drop(tls);
        assert_eventually!(
            access_line(&gw, "gone-over-http1").is_some(),
            "no access line for the request whose caller went away:\n{}",
            gw.output()
        );
        let line = access_line(&gw, "gone-over-http1").unwrap();
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["decision"], "allowed:client-closed", "{line}");
        assert_eq!(line["route"], "route", "{line}");
        assert_eq!(line["version"], "HTTP/1.1", "{line}");
        assert_eq!(line["caller"], ONBOARDING, "{line}");
        assert!(line.get("upstream_status").is_none(), "{line}");
        assert_eq!(counted(&gw).await, (1.0, 1.0));

        // HTTP/2: the caller resets the stream; its connection stays open.
        let (mut h2, connection) = h2::client::handshake(tls_to(&pki, &gw, true).await)
            .await
            .unwrap();
        let connection = tokio::spawn(connection);
        let request = http::Request::get(format!("https://localhost:{}/v1/slow", gw.port))
            .header("x-request-id", "gone-over-http2")
            .body(())
            .unwrap();
        let (response, mut stream) = h2.send_request(request, true).unwrap();
        assert_eventually!(
            upstream.requests().len() == 2,
            "the request did not reach the upstream"
        );
        stream.send_reset(h2::Reason::CANCEL);
        assert_eventually!(
            access_line(&gw, "gone-over-http2").is_some(),
            "no access line for the request whose stream was reset:\n{}",
            gw.output()
        );
        let line = access_line(&gw, "gone-over-http2").unwrap();
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["decision"], "allowed:client-closed", "{line}");
        assert_eq!(line["version"], "HTTP/2.0", "{line}");
        assert_eq!(counted(&gw).await, (2.0, 2.0));
        drop((response, h2));
        connection.abort();
    })
    .await;
}

/// Incident detection hears of a request whose caller gave up on the upstream only what the
/// upstream showed: kept past `latency_p99`, the request counts as an answer at least that
/// slow, and never as an upstream error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_on_a_slow_upstream_counts_as_its_latency_and_never_as_its_error() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Delay(Duration::from_secs(40))).await;
        let work = tempfile::tempdir().unwrap();
        let incidents = table([
            ("dir", path_value(&work.path().join("incidents"))),
            ("window", "3s".into()),
            ("min_requests", 1.into()),
            ("latency_p99", "100ms".into()),
        ]);
        let gw = Gateway::start(
            &OneRoute {
                url: &upstream.url(false),
                ..OneRoute::default()
            }
            .config(&pki)
            .section("incidents", incidents),
            &[],
        )
        .await;

        let mut tls = tls_to(&pki, &gw, false).await;
        tls.write_all(b"GET /v1/slow HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        assert_eventually!(
            upstream.requests().len() == 1,
            "the request did not reach the upstream"
        );
        // The upstream has kept it past latency_p99 (and the 250 ms bucket's edge above it)
        // when the caller goes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tls.shutdown().await.unwrap();
        drop(tls);

        assert_eventually!(
            admin_get(gw.admin_port, "/incidents")
                .await
                .unwrap()
                .1
                .contains("upstream_latency"),
            "no incident opened:\n{}",
            gw.output()
        );
        // Every incident of a tick is stored before the first is listed: the directory
        // holds all there are.
        let mut stored: Vec<String> = std::fs::read_dir(work.path().join("incidents"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".json"))
            .collect();
        stored.sort();
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert!(
            stored[0].ends_with("-upstream_latency-provider.json"),
            "{stored:?}"
        );
    })
    .await;
}
