//! A request refused while the gateway still had work to finish for it (a wrong credential's
//! lockout count, written to the state backend) whose caller goes away meanwhile: its record
//! keeps the refusal (status 499, `denied:…`), never `allowed:client-closed`; one whose
//! caller goes away before the gateway decided on it is `undecided:client-closed`.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::assert_eventually;
use crate::support::*;

/// The sum of `idgate_auth_failures_total`.
async fn auth_failures(gw: &Gateway) -> f64 {
    let (status, text) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with("idgate_auth_failures_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// The access line of the request `id`, once it is in the gateway's output.
fn access_line(gw: &Gateway, id: &str) -> Option<serde_json::Value> {
    log_lines(gw, "idgate::access", "request")
        .into_iter()
        .find(|l| l.get("request_id").and_then(|v| v.as_str()) == Some(id))
        .map(|l| serde_json::to_value(l).unwrap())
}

/// A route that takes the SVID alone or with an API key, lockouts by source on `redis`, whose
/// calls may wait 30 s.
fn config_on(
    pki: &Pki,
    upstream: &TestUpstream,
    redis: &idgate_store::redis_testing::RedisServer,
) -> GatewayConfig {
    let pepper = pki.path().join("pepper");
    write_private(&pepper, b"0123456789abcdef0123456789abcdef-pepper");
    let any = toml::toml! { any = ["mtls", "api_key"] };
    base_config(pki)
        .section(
            "api_keys",
            table([
                ("store", path_value(&pki.path().join("keys.redb"))),
                ("pepper", format!("file:{}", pepper.display()).into()),
            ]),
        )
        .section(
            "lockout",
            table([
                ("max_failures", 100.into()),
                ("window", "1m".into()),
                ("cooldown", "1m".into()),
                ("by", strings(&["source_ip"])),
            ]),
        )
        .section(
            "state",
            table([
                ("backend", "redis".into()),
                ("url", redis.url().into()),
                // The lockout count waits on the paused server for the whole test.
                ("timeout", "30s".into()),
            ]),
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(
            RouteSpec::new("route", &["GET"], "/v1/{*rest}", "provider", &[ONBOARDING])
                .with("auth", toml::Value::Array(vec![any.into()])),
        )
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// The commands `redis` has processed, the `INFO` asking included.
fn processed(redis: &idgate_store::redis_testing::RedisServer) -> u64 {
    redis
        .query("INFO stats")
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the gateway's start-up traffic to `redis` is over: its webhook outbox's first
/// housekeeping (a script, which `CLIENT PAUSE WRITE` holds like a write) has run, and
/// nothing else has come for a moment. The gateway speaks to Redis over one connection, and
/// Redis answers a connection's commands in order: a script caught by the pause would hold
/// the lockout read behind it, which these tests need answered.
async fn settled(redis: &idgate_store::redis_testing::RedisServer) {
    assert_eventually!(
        redis
            .query("INFO commandstats")
            .contains("cmdstat_evalsha:"),
        "no script reached Redis at start-up"
    );
    loop {
        let before = processed(redis);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // One for the INFO that read `before`.
        if processed(redis) <= before + 1 {
            return;
        }
    }
}

/// Sends `request` (its `x-request-id` is `id`) on `tls`, waits until its wrong credential is
/// counted (its lockout count then waits on the paused server), and goes away: the
/// request's access line.
async fn counted_then_gone(
    mut tls: Tls,
    gw: &Gateway,
    request: &str,
    id: &str,
) -> serde_json::Value {
    tls.write_all(request.as_bytes()).await.unwrap();
    assert_eventually!(
        auth_failures(gw).await >= 1.0,
        "the wrong credential was not counted:\n{}",
        gw.output()
    );
    gone(tls, gw, id).await
}

/// Closes `tls` while its request `id` is still unanswered: the request's access line, once
/// it is written.
async fn gone(mut tls: Tls, gw: &Gateway, id: &str) -> serde_json::Value {
    assert!(access_line(gw, id).is_none(), "answered");
    tls.shutdown().await.unwrap();
    drop(tls);
    assert_eventually!(
        access_line(gw, id).is_some(),
        "no access line for the request whose caller went away:\n{}",
        gw.output()
    );
    access_line(gw, id).unwrap()
}

/// A TLS connection to the gateway with the onboarding workload's SVID.
async fn connect(pki: &Pki, gw: &Gateway) -> Tls {
    let (cert, key) = pki.workload(ONBOARDING);
    let tls = tls_client_config(
        &pki.files.bundle,
        Some((&cert, &key)),
        false,
        rustls::DEFAULT_VERSIONS,
    );
    let tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_after_a_wrong_api_key_is_recorded_as_denied() {
    within(async {
        let Some(redis) = idgate_store::redis_testing::RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let config = config_on(&pki, &upstream, &redis);
        let gw = Gateway::start(&config, &[]).await;
        settled(&redis).await;

        // Writes wait; the lockout check (a read) goes through, the count (a write) waits.
        assert!(redis.query("CLIENT PAUSE 40000 WRITE").starts_with("+OK"));
        let tls = connect(&pki, &gw).await;
        let wrong = format!("idg_{}_{}", "a".repeat(16), "b".repeat(52));
        let request = format!(
            "GET /v1/anything HTTP/1.1\r\nhost: localhost\r\nx-api-key: {wrong}\r\nx-request-id: gone-after-a-wrong-key\r\n\r\n"
        );
        let line = counted_then_gone(tls, &gw, &request, "gone-after-a-wrong-key").await;
        assert_eq!(line["status"], 499, "{line}");
        let decision = line["decision"].as_str().unwrap();
        assert!(decision.starts_with("denied:"), "{line}");
        redis.query("CLIENT UNPAUSE");
    })
    .await;
}

/// A request whose caller goes away while the gateway has not decided on it yet (its
/// lockout check waits on a state backend that does not answer): its record says so
/// (`undecided:client-closed`, status 499), never `allowed`, since nothing allowed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_before_the_gateway_decided_is_not_recorded_as_allowed() {
    within(async {
        let Some(redis) = idgate_store::redis_testing::RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let config = config_on(&pki, &upstream, &redis);
        let gw = Gateway::start(&config, &[]).await;
        // The SVID alone, which the route takes: only the lockout check stands before it.
        let mut tls = connect(&pki, &gw).await;
        redis.pause();
        tls.write_all(
            b"GET /v1/anything HTTP/1.1\r\nhost: localhost\r\nx-request-id: gone-undecided\r\n\r\n",
        )
        .await
        .unwrap();
        // Time for the gateway to read the request; had it not, there would be no line at
        // all below, never a wrong one.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let line = gone(tls, &gw, "gone-undecided").await;
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["decision"], "undecided:client-closed", "{line}");
        assert!(upstream.requests().is_empty());
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("idgate_requests_total{")
                    && l.contains(r#"decision="undecided""#)
                    && l.contains(r#"reason="client-closed""#)
                    && l.ends_with(" 1")),
            "{metrics}"
        );
        redis.resume();
    })
    .await;
}

/// The same at the token endpoint: a wrong client secret is refused (`invalid_client`)
/// before its lockout count is written; a caller that goes away meanwhile is recorded
/// `denied:invalid_client`, never allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_after_a_wrong_client_secret_is_recorded_as_denied() {
    within(async {
        let Some(redis) = idgate_store::redis_testing::RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let state = table([
            ("backend", "redis".into()),
            ("url", redis.url().into()),
            ("timeout", "30s".into()),
        ]);
        let config = crate::rate_limits::token_lockout_config(&pki, &upstream, Some(state));
        let gw = Gateway::start(&config, &[]).await;
        settled(&redis).await;
        assert!(redis.query("CLIENT PAUSE 40000 WRITE").starts_with("+OK"));
        let tls = connect(&pki, &gw).await;
        let form = "grant_type=client_credentials";
        let request = format!(
            "POST /oauth2/token HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nx-request-id: gone-after-a-wrong-secret\r\n\r\n{form}",
            crate::rate_limits::batch_basic("wrong"),
            form.len()
        );
        let line = counted_then_gone(tls, &gw, &request, "gone-after-a-wrong-secret").await;
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["decision"], "denied:invalid_client", "{line}");
        redis.query("CLIENT UNPAUSE");
    })
    .await;
}
