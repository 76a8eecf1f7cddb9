//! Fallback when the upstream fails: the caller's own last good answer from the encrypted
//! cache, served stale with `Age` and `Warning` and masked on the way out, never another
//! caller's and never past `max_age`; and the failover upstream, which takes a GET when the
//! primary is down or fails it, and a POST only when nothing of it reached the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::assert_eventually;
use crate::resilience_upstream::Flaky;
use crate::support::*;

/// A plain HTTP upstream that answers `{"n": …, "path": …, "secret": …}` (200, `private`,
/// or `no-store` while `no_store`), or 503 while `failing`, and can be killed: its listener
/// and every connection close.
struct Switchable {
    port: u16,
    failing: Arc<AtomicBool>,
    no_store: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Switchable {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let failing = Arc::new(AtomicBool::new(false));
        let no_store = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (f, s, ns) = (failing.clone(), served.clone(), no_store.clone());
        let mut stop_accepting = stopped.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = stop_accepting.changed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let (f, s, ns, mut stopped) = (f.clone(), s.clone(), ns.clone(), stopped.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        let (f, s, ns) = (f.clone(), s.clone(), ns.clone());
                        async move {
                            let pq = req.uri().path_and_query().map(|p| p.to_string());
                            let resp = if f.load(Ordering::SeqCst) {
                                http::Response::builder()
                                    .status(503)
                                    .body(Full::new(Bytes::from_static(b"down for maintenance")))
                            } else {
                                let n = s.fetch_add(1, Ordering::SeqCst) + 1;
                                let body = serde_json::json!({
                                    "n": n,
                                    "path": pq,
                                    "secret": "document-4711",
                                });
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .header(
                                        "cache-control",
                                        if ns.load(Ordering::SeqCst) {
                                            "no-store"
                                        } else {
                                            "private"
                                        },
                                    )
                                    .body(Full::new(Bytes::from(body.to_string())))
                            };
                            Ok::<_, std::convert::Infallible>(resp.unwrap())
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    tokio::select! {
                        _ = builder.serve_connection(TokioIo::new(tcp), svc) => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            failing,
            no_store,
            served,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&self) {
        let _ = self.stop.send(true);
    }
}

/// The cache's key in a file only its owner reads; its reference.
fn key_ref(dir: &std::path::Path) -> String {
    let path = dir.join("fallback.key");
    write_private(&path, b"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8s=");
    format!("file:{}", path.display())
}

fn access_line(gw: &Gateway, request_id: &str) -> std::collections::HashMap<String, Value> {
    log_lines(gw, "idgate::access", "request")
        .into_iter()
        .find(|l| l.get("request_id").and_then(Value::as_str) == Some(request_id))
        .unwrap_or_else(|| panic!("no access line for {request_id}:\n{}", gw.output()))
}

fn problem(r: &Reply) -> String {
    r.json()["type"]
        .as_str()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upstream_is_answered_with_the_callers_own_cached_answer_masked_until_it_is_too_old()
 {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let up = Switchable::start().await;
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("p", &up.url()).with("request_timeout", "2s"))
            .route(
                RouteSpec::new("r", &["GET"], "/v1/{*rest}", "p", &[ONBOARDING, FRONTEND])
                    .with(
                        "fallback",
                        table([("cache", true.into()), ("max_age", "3s".into())]),
                    )
                    .with("masking", table([("default", "hide".into())])),
            )
            .section("fallback", table([("key", key_ref(dir.path()).into())]))
            .section(
                "masking",
                toml::from_str::<toml::Table>(
                    r#"
[profiles.hide]
rules = [{ path = "$.secret", action = "drop" }]
"#,
                )
                .unwrap(),
            );
        let gw = Gateway::start(&config, &[]).await;
        let alice = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let bob = Client::new(&pki, Some(FRONTEND), gw.port, false);

        let fresh = alice.get("/v1/a?x=1").await.unwrap();
        assert_eq!(fresh.status, 200, "{:?}", fresh.body);
        assert!(fresh.header("warning").is_none());
        assert_eq!(fresh.json()["n"], 1);
        assert!(fresh.json().get("secret").is_none(), "{:?}", fresh.body);

        // The upstream answers 503: the last good answer, masked again, says it is stale.
        up.failing.store(true, Ordering::SeqCst);
        let stale = alice.get("/v1/a?x=1").await.unwrap();
        assert_eq!(stale.status, 200, "{:?}", stale.body);
        assert_eq!(stale.header("warning"), Some("110 - \"Response is Stale\""));
        assert!(stale.header("age").is_some());
        assert_eq!(stale.json()["n"], 1);
        assert_eq!(stale.json()["path"], "/v1/a?x=1");
        assert_eq!(up.served.load(Ordering::SeqCst), 1);
        assert!(!String::from_utf8_lossy(&stale.body).contains("document-4711"));
        assert_eq!(
            stale
                .header("content-length")
                .map(|l| l.parse::<usize>().unwrap()),
            Some(stale.body.len())
        );

        // Killed: still the caller's own answer, and only for its own path and query.
        up.kill();
        let stale = alice.get("/v1/a?x=1").await.unwrap();
        assert_eq!((stale.status, stale.json()["n"].clone()), (200, 1.into()));
        assert_eq!(stale.header("warning"), Some("110 - \"Response is Stale\""));
        let rid = stale.header("x-request-id").unwrap().to_owned();
        let other_query = alice.get("/v1/a?x=2").await.unwrap();
        assert_eq!(
            (other_query.status, problem(&other_query).as_str()),
            (502, "upstream-unreachable")
        );
        // Another caller never gets it: its failure stands.
        let other_caller = bob.get("/v1/a?x=1").await.unwrap();
        assert_eq!(
            (other_caller.status, problem(&other_caller).as_str()),
            (502, "upstream-unreachable"),
            "{:?}",
            other_caller.body
        );
        assert!(other_caller.header("warning").is_none());

        assert_eventually!(
            log_lines(&gw, "idgate::access", "request").len() >= 5,
            "access lines:\n{}",
            gw.output()
        );
        let line = access_line(&gw, &rid);
        assert_eq!(line["decision"], "allowed:fallback:cache");
        assert_eq!(line["status"], 200);

        // Past max_age, the failure stands.
        tokio::time::sleep(Duration::from_millis(3200)).await;
        let too_old = alice.get("/v1/a?x=1").await.unwrap();
        assert_eq!(
            (too_old.status, problem(&too_old).as_str()),
            (502, "upstream-unreachable")
        );
        // The key never reaches the log.
        assert!(!gw.output().contains("q83vEjRWeJq83vEjRWeJq83"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_upstream_takes_a_get_but_never_a_post_that_reached_the_primary() {
    within(async {
        let pki = Pki::default_pki();
        let down = ClosedPort::new();
        let sick = Switchable::start().await;
        sick.failing.store(true, Ordering::SeqCst);
        let secondary = TestUpstream::http(UpstreamMode::Echo).await;
        let config = base_config(&pki)
            .upstream(
                UpstreamSpec::new("down", &down.url("http"))
                    .credential(CredentialSpec::header("x-api-key", "env:PRIMARY_KEY")),
            )
            .upstream(
                UpstreamSpec::new("sick", &sick.url())
                    .credential(CredentialSpec::header("x-api-key", "env:PRIMARY_KEY")),
            )
            .upstream(
                UpstreamSpec::new("second", &secondary.url(false))
                    .credential(CredentialSpec::header("x-api-key", "env:SECOND_KEY")),
            )
            .route(
                RouteSpec::new(
                    "d",
                    &["GET", "POST"],
                    "/down/{*rest}",
                    "down",
                    &[ONBOARDING],
                )
                .with("failover", "second"),
            )
            .route(
                RouteSpec::new(
                    "s",
                    &["GET", "POST"],
                    "/sick/{*rest}",
                    "sick",
                    &[ONBOARDING],
                )
                .with("failover", "second"),
            );
        let gw = Gateway::start(
            &config,
            &[
                ("PRIMARY_KEY", "primary-key-1"),
                ("SECOND_KEY", "second-key-2"),
            ],
        )
        .await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let json = [("content-type", "application/json")];

        // The primary is down: nothing reached it, so a GET and a POST both fail over,
        // each with the secondary's own credential.
        let r = c.get("/down/a").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.header("x-upstream"), Some("test"));
        let seen = secondary.last();
        assert_eq!(
            (seen.method.as_str(), seen.path_and_query.as_str()),
            ("GET", "/down/a")
        );
        assert_eq!(seen.headers["x-api-key"], "second-key-2");
        let rid = r.header("x-request-id").unwrap().to_owned();
        let r = c
            .send("POST", "/down/b", &json, r#"{"k":1}"#)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let seen = secondary.last();
        assert_eq!(
            (seen.method.as_str(), &seen.body[..]),
            ("POST", &b"{\"k\":1}"[..])
        );

        // The primary answers 503: a GET is sent again to the secondary ...
        let r = c.get("/sick/a").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(secondary.last().path_and_query, "/sick/a");
        // ... a POST that reached it is not: its answer stands.
        let before = secondary.requests().len();
        let r = c
            .send("POST", "/sick/b", &json, r#"{"k":2}"#)
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(&r.body[..], b"down for maintenance");
        assert_eq!(secondary.requests().len(), before);

        assert_eventually!(
            log_lines(&gw, "idgate::access", "request").len() >= 4,
            "access lines:\n{}",
            gw.output()
        );
        assert_eq!(
            access_line(&gw, &rid)["decision"],
            "allowed:fallback:failover"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_marked_no_store_is_never_kept() {
    within(async {
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let up = Switchable::start().await;
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("p", &up.url()))
            .route(
                RouteSpec::new("r", &["GET"], "/v1/{*rest}", "p", &[ONBOARDING])
                    .with("fallback", table([("cache", true.into())])),
            )
            .section("fallback", table([("key", key_ref(dir.path()).into())]));
        let gw = Gateway::start(&config, &[]).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        up.no_store.store(true, Ordering::SeqCst);
        assert_eq!(c.get("/v1/private").await.unwrap().status, 200);
        up.no_store.store(false, Ordering::SeqCst);
        assert_eq!(c.get("/v1/kept").await.unwrap().status, 200);
        up.failing.store(true, Ordering::SeqCst);
        let r = c.get("/v1/private").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (503, &b"down for maintenance"[..]));
        let r = c.get("/v1/kept").await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("warning"), Some("110 - \"Response is Stale\""));
        assert_eq!(r.json()["path"], "/v1/kept");
    })
    .await;
}

/// The value of one metric series (0 when it is not there yet).
async fn metric(gw: &Gateway, series: &str) -> u64 {
    let metrics = admin_get(gw.admin_port, "/metrics").await.unwrap().1;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_the_primary_never_reaches_the_failover_upstream_after_a_retry() {
    within(async {
        let pki = Pki::default_pki();
        // The primary's endpoints: one refuses connections, the other reads the request and
        // never answers.
        let refusing = ClosedPort::new();
        let stalling = Flaky::start().await;
        stalling.hang.store(true, Ordering::SeqCst);
        let secondary = Flaky::start().await;
        let config = base_config(&pki)
            .upstream(
                UpstreamSpec::new("primary", "")
                    .with(
                        "endpoints",
                        strings(&[&refusing.url("http"), &stalling.url()]),
                    )
                    .with(
                        "retry",
                        table([("attempts", 2.into()), ("backoff", "5ms".into())]),
                    )
                    .with("first_byte_timeout", "300ms")
                    .with("request_timeout", "3s")
                    // A signed request: its body is read whole, so a retry can send it again.
                    .credential(CredentialSpec::scheme(
                        "veriff",
                        "env:VERIFF_CLIENT",
                        "env:VERIFF_SECRET",
                    )),
            )
            .upstream(UpstreamSpec::new("second", &secondary.url()))
            .route(
                RouteSpec::new("r", &["POST"], "/v1/{*rest}", "primary", &[ONBOARDING])
                    .with("failover", "second"),
            );
        let gw = Gateway::start(
            &config,
            &[
                ("VERIFF_CLIENT", "veriff-client"),
                ("VERIFF_SECRET", "veriff-secret-0123456789"),
            ],
        )
        .await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let retried = "idgate_upstream_retries_total{upstream=\"primary\",reason=\"connect\"}";
        // Each request's first endpoint is a random pick of the two: go on until one was
        // refused its connection first and retried on the stalling endpoint (forty requests
        // miss that once in 2^40 runs).
        let mut sent = 0;
        while metric(&gw, retried).await == 0 {
            assert!(
                sent < 40,
                "no request was retried after a refused connection"
            );
            let r = c
                .send(
                    "POST",
                    "/v1/payments",
                    &[("content-type", "application/json")],
                    r#"{"amount":1}"#,
                )
                .await
                .unwrap();
            // The primary's failure stands.
            assert_eq!(
                (r.status, problem(&r).as_str()),
                (504, "upstream-timeout"),
                "{:?}",
                r.body
            );
            sent += 1;
        }
        assert_eventually!(
            stalling.seen().len() == sent,
            "the stalling endpoint saw {:?} of {sent}",
            stalling.seen()
        );
        assert!(
            secondary.seen().is_empty(),
            "the failover upstream got {:?}",
            secondary.seen()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_the_primary_answered_never_reaches_the_failover_upstream_when_its_retry_sends_nothing()
 {
    within(async {
        let pki = Pki::default_pki();
        // The primary's endpoints: one answers 503, the other refuses connections.
        let failing = Flaky::start().await;
        failing.status.store(503, Ordering::SeqCst);
        let refusing = ClosedPort::new();
        let secondary = Flaky::start().await;
        let config = base_config(&pki)
            .upstream(
                UpstreamSpec::new("primary", "")
                    .with(
                        "endpoints",
                        strings(&[&failing.url(), &refusing.url("http")]),
                    )
                    .with(
                        "retry",
                        table([
                            ("attempts", 1.into()),
                            ("backoff", "5ms".into()),
                            ("idempotency_key", true.into()),
                        ]),
                    )
                    .credential(CredentialSpec::scheme(
                        "veriff",
                        "env:VERIFF_CLIENT",
                        "env:VERIFF_SECRET",
                    )),
            )
            .upstream(UpstreamSpec::new("second", &secondary.url()))
            .route(
                RouteSpec::new("r", &["POST"], "/v1/{*rest}", "primary", &[ONBOARDING])
                    .with("failover", "second"),
            );
        let gw = Gateway::start(
            &config,
            &[
                ("VERIFF_CLIENT", "veriff-client"),
                ("VERIFF_SECRET", "veriff-secret-0123456789"),
            ],
        )
        .await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let retried = "idgate_upstream_retries_total{upstream=\"primary\",reason=\"status\"}";
        // Go on until a request met the 503 first: its retry (allowed by the
        // Idempotency-Key) found no connection, and sent nothing.
        let mut sent = 0;
        while metric(&gw, retried).await == 0 {
            assert!(sent < 40, "no request was retried after a 503");
            let r = c
                .send(
                    "POST",
                    "/v1/payments",
                    &[
                        ("content-type", "application/json"),
                        ("idempotency-key", "pay-1"),
                    ],
                    r#"{"amount":1}"#,
                )
                .await
                .unwrap();
            assert!(matches!(r.status, 502 | 503), "{} {:?}", r.status, r.body);
            sent += 1;
        }
        assert_eq!(failing.seen().len(), sent);
        assert!(
            secondary.seen().is_empty(),
            "the failover upstream got {:?}",
            secondary.seen()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_record_names_the_secondarys_credential_never_the_primarys() {
    within(async {
        let pki = Pki::default_pki();
        let down = ClosedPort::new();
        let secondary = TestUpstream::http(UpstreamMode::Echo).await;
        let labelled = |label: &str, env: &str| CredentialSpec {
            label: Some(label.to_owned()),
            ..CredentialSpec::header("x-api-key", env)
        };
        let config = base_config(&pki)
            .upstream(
                UpstreamSpec::new("down", &down.url("http"))
                    .credential(labelled("primary-cred", "env:PRIMARY_KEY")),
            )
            .upstream(UpstreamSpec::new("bare", &secondary.url(false)))
            .upstream(
                UpstreamSpec::new("keyed", &secondary.url(false))
                    .credential(labelled("second-cred", "env:SECOND_KEY")),
            )
            .route(RouteSpec::get("to-bare", "/bare/{*rest}", "down").with("failover", "bare"))
            .route(RouteSpec::get("to-keyed", "/keyed/{*rest}", "down").with("failover", "keyed"));
        let gw = Gateway::start(
            &config,
            &[
                ("PRIMARY_KEY", "primary-key-1"),
                ("SECOND_KEY", "second-key-2"),
            ],
        )
        .await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let bare = c.get("/bare/a").await.unwrap();
        assert_eq!(bare.status, 200, "{:?}", bare.body);
        assert!(!secondary.last().headers.contains_key("x-api-key"));
        let keyed = c.get("/keyed/a").await.unwrap();
        assert_eq!(keyed.status, 200, "{:?}", keyed.body);
        assert_eq!(secondary.last().headers["x-api-key"], "second-key-2");

        assert_eventually!(
            log_lines(&gw, "idgate::access", "request").len() >= 2,
            "access lines:\n{}",
            gw.output()
        );
        let line = access_line(&gw, bare.header("x-request-id").unwrap());
        assert_eq!(line["decision"], "allowed:fallback:failover");
        assert!(
            line.get("credential").is_none_or(Value::is_null),
            "the record names {:?}",
            line.get("credential")
        );
        let line = access_line(&gw, keyed.header("x-request-id").unwrap());
        assert_eq!(line["credential"], "second-cred");
    })
    .await;
}
