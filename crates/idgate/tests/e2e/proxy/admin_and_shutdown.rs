//! The admin endpoints, and shutdown on SIGTERM: exit 0, every access line written,
//! idle connections closed and in-flight requests finished. A SIGHUP while the gateway
//! starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::assert_eventually;
use crate::openbao::config_with;
use crate::support::*;
use crate::vault::{FakeHttps, Handler, json_response};

use super::{DECISION, Setup, access_lines, assert_problem};

// --------------------------------------------------------------------------------- admin

#[tokio::test]
async fn health_endpoints_answer_on_admin_port_and_not_on_public_listener() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        for path in ["/healthz", "/readyz"] {
            let (status, body) = admin_get(s.gw.admin_port, path).await.unwrap();
            assert_eq!(status, 200, "admin {path}: {body}");
            for c in [s.client(Some(ONBOARDING)), s.client_h2(Some(ONBOARDING))] {
                let r = c.get(path).await.unwrap();
                assert_problem(&r, 404, &[]);
            }
        }
        assert!(s.upstream.requests().is_empty());
    })
    .await
}

// ------------------------------------------------------------------------------ shutdown

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_0() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Echo).await;
        let r = s.client(Some(ONBOARDING)).get(DECISION).await.unwrap();
        assert_eq!(r.status, 200);
        s.gw.signal("TERM");
        let status = s.gw.wait_exit(Duration::from_secs(15));
        let status = status.unwrap_or_else(|| {
            panic!(
                "still running 15s after SIGTERM; output:\n{}",
                s.gw.output()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}; output:\n{}",
            s.gw.output()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_writes_the_access_line_of_every_request_before_exiting() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Delay(Duration::from_millis(300))).await;
        let (_, metrics) = admin_get(s.gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_access_log_dropped_total 0"),
            "{metrics}"
        );
        let clients: Vec<_> = (0..5).map(|_| s.client(Some(ONBOARDING))).collect();
        let in_flight: Vec<_> = clients
            .into_iter()
            .map(|c| tokio::spawn(async move { c.get(DECISION).await }))
            .collect();
        assert_eventually!(
            s.upstream.requests().len() == in_flight.len(),
            "the requests did not reach the upstream"
        );
        // Their lines are made as the gateway stops: it must write them before it exits.
        s.gw.signal("TERM");
        let mut rids = Vec::new();
        for r in in_flight {
            let r = r.await.unwrap().expect("the in-flight request is answered");
            assert_eq!(r.status, 200, "{:?}", r.body);
            rids.push(r.header("x-request-id").unwrap().to_owned());
        }
        let status = s.gw.wait_exit(Duration::from_secs(15));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "output:\n{}",
            s.gw.output()
        );
        assert_eventually!(
            access_lines(&s.gw).len() >= rids.len(),
            "expected {} access lines; output:\n{}",
            rids.len(),
            s.gw.output()
        );
        let lines = access_lines(&s.gw);
        for rid in &rids {
            let mine = |l: &&std::collections::HashMap<String, serde_json::Value>| {
                l.get("request_id").and_then(|v| v.as_str()) == Some(rid)
            };
            assert_eq!(lines.iter().filter(mine).count(), 1, "one line for {rid}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_idle_keep_alive_connections_exits_0_promptly() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Echo).await;
        let mut h1 = s.client(Some(ONBOARDING)).connect().await.unwrap();
        let mut h2 = s.client_h2(Some(ONBOARDING)).connect().await.unwrap();
        assert_eq!(h1.send("GET", DECISION, &[], "").await.unwrap().status, 200);
        assert_eq!(h2.send("GET", DECISION, &[], "").await.unwrap().status, 200);
        // Both connections stay open and idle while the gateway is told to stop.
        s.gw.signal("TERM");
        let started = Instant::now();
        let status = s.gw.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "still running 15s after SIGTERM; output:\n{}",
                s.gw.output()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}; output:\n{}",
            s.gw.output()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "idle connections held the shutdown for {:?}",
            started.elapsed()
        );
        drop((h1, h2));
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    within(async {
        let mut s = Setup::start(UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let client = s.client(Some(ONBOARDING));
        let in_flight = tokio::spawn(async move { client.get(DECISION).await });
        assert_eventually!(
            s.upstream.requests().len() == 1,
            "the request did not reach the upstream"
        );
        s.gw.signal("TERM");
        let r = in_flight
            .await
            .unwrap()
            .expect("the in-flight request is answered");
        assert_eq!(r.status, 200, "{:?}", r.body);
        let status = s.gw.wait_exit(Duration::from_secs(15)).unwrap_or_else(|| {
            panic!(
                "still running 15s after SIGTERM; output:\n{}",
                s.gw.output()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "{status:?}; output:\n{}",
            s.gw.output()
        );
    })
    .await
}

// ------------------------------------------------------------------------------- start-up

/// Vault's answers for one token and one KV v2 secret (`secret/idgate/didit`).
fn vault_answer(
    parts: &http::request::Parts,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    match parts.uri.path() {
        "/v1/auth/token/lookup-self" => json_response(
            200,
            &json!({"data": {"ttl": 0, "renewable": false, "policies": ["idgate"]}}),
        ),
        "/v1/secret/data/idgate/didit" => json_response(
            200,
            &json!({
                "data": {
                    "data": {"api_key": "key-from-vault"},
                    "metadata": {
                        "created_time": "2026-11-02T10:00:00.000000000Z",
                        "custom_metadata": null, "deletion_time": "",
                        "destroyed": false, "version": 1
                    }
                },
                "lease_id": "", "renewable": false, "lease_duration": 0, "mount_type": "kv"
            }),
        ),
        _ => json_response(404, &json!({"errors": []})),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_while_the_gateway_starts_neither_ends_it_nor_is_lost() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        // Vault holds every answer until released: the gateway's start waits on it.
        let (release, released) = tokio::sync::watch::channel(false);
        let asked = Arc::new(AtomicBool::new(false));
        let handler: Handler = {
            let asked = asked.clone();
            Arc::new(move |parts, _body| {
                let asked = asked.clone();
                let mut released = released.clone();
                Box::pin(async move {
                    asked.store(true, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    vault_answer(&parts)
                })
            })
        };
        let vault = FakeHttps::start(&pki, handler).await;
        let config = config_with(
            &pki,
            &upstream,
            "vault:secret/idgate/didit#api_key",
            Some(VaultSpec {
                address: vault.url(),
                ca: Some(pki.files.bundle.clone()),
                timeout: Some("30s".into()),
                token: Some("env:VAULT_TOKEN".into()),
                extra: toml::Table::new(),
            }),
        );
        let mut gw = Gateway::spawn(&config, &[("VAULT_TOKEN", "s.start-up-token")]);
        assert_eventually!(
            asked.load(Ordering::SeqCst),
            "the gateway did not ask Vault; output:\n{}",
            gw.output()
        );
        // Still starting: its secrets are not read yet.
        gw.signal("HUP");
        release.send_replace(true);
        // Fails with the gateway's exit status if the signal ended it.
        gw.serving().await;
        assert_eventually!(
            gw.output()
                .contains("SIGHUP: reloading TLS material and configuration"),
            "the SIGHUP of the start-up was lost; output:\n{}",
            gw.output()
        );
        assert_eventually!(
            gw.output().contains("configuration reloaded"),
            "the SIGHUP's reload did not complete; output:\n{}",
            gw.output()
        );
        let r = Client::new(&pki, Some(ONBOARDING), gw.port, false)
            .get("/v3/session/s-1/decision/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            upstream.last().headers.get("x-api-key").unwrap(),
            "key-from-vault"
        );
    })
    .await
}
