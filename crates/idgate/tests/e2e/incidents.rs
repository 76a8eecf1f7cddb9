//! Incident detection end to end: the upstream killed under load opens an incident (on the
//! admin listener, announced signed to the notification receiver), which grows while the
//! outage lasts and closes after recovery; its report names the route, the count of failed
//! requests the clients saw and the audit record range; a restart keeps it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::assert_eventually;
use crate::config::{strings, table};
use crate::support::*;

const NOTIFY_SECRET: &str = "incident-notify-secret-4b1d";

/// A plain HTTP upstream that can be killed (listener and every connection closed) and
/// brought back on the same port.
struct KillableUpstream {
    addr: SocketAddr,
    stop: Option<watch::Sender<bool>>,
}

impl KillableUpstream {
    async fn start(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let mut stopped_accept = stopped.clone();
                let tcp = tokio::select! {
                    _ = stopped_accept.changed() => return,
                    a = listener.accept() => match a { Ok((tcp, _)) => tcp, Err(_) => continue },
                };
                let mut stopped_conn = stopped.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{\"ok\":true}")))
                                .unwrap(),
                        )
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped_conn.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            stop: Some(stop),
        }
    }

    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

/// The notification receiver: every POST's signature header and body.
async fn notify_receiver() -> (SocketAddr, Arc<Mutex<Vec<(String, Bytes)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let sig = req
                            .headers()
                            .get("idgate-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push((sig, body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::new(),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

/// Clients sending `GET /v1/kyc` back to back until `stop`: (answered 200, failed).
fn load(pki: &Pki, port: u16, stop: Arc<AtomicBool>) -> (Arc<AtomicU64>, Arc<AtomicU64>) {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let client = Client::new(pki, Some(ONBOARDING), port, false);
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn = client.connect().await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match conn.send("GET", "/v1/kyc", &[], "").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        assert!(r.status >= 500, "status {}", r.status);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => panic!("the gateway dropped a client connection: {e}"),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    (ok, failed)
}

fn incidents_section(dir: &Path, notify: Option<SocketAddr>) -> toml::Table {
    let mut t = toml::Table::new();
    if let Some(notify) = notify {
        let mut notify_t = toml::Table::new();
        notify_t.insert(
            "url".into(),
            format!("http://{notify}/hooks/incidents").into(),
        );
        notify_t.insert("secret".into(), "env:INCIDENT_NOTIFY_SECRET".into());
        t.insert("notify".into(), notify_t.into());
    }
    t.insert("dir".into(), dir.display().to_string().into());
    t.insert("window".into(), "3s".into());
    t.insert("close_after".into(), "2s".into());
    t.insert("min_requests".into(), 5.into());
    t.insert(
        "critical_routes".into(),
        vec![toml::Value::from("route")].into(),
    );
    t.insert("region".into(), "eu-central-1".into());
    t
}

fn audit_section(keys: &Path, dir: &Path) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("dir".into(), dir.display().to_string().into());
    t.insert(
        "signing_key".into(),
        format!("file:{}", keys.join("audit-signing.pem").display()).into(),
    );
    t.insert("sync_interval".into(), "20ms".into());
    t
}

async fn admin_json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = admin_get(port, path).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The incident's JSON once `cond` holds for it.
async fn incident_when(
    port: u16,
    cond: impl Fn(&serde_json::Value) -> bool,
    limit: Duration,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let list = admin_json(port, "/incidents").await;
        for i in list["incidents"].as_array().unwrap() {
            let id = i["id"].as_str().unwrap();
            let full = admin_json(port, &format!("/incidents/{id}")).await;
            if cond(&full) {
                return full;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no such incident: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_outage_opens_an_incident_that_closes_after_recovery_and_is_reported() {
    within_limit(Duration::from_secs(120), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let keys = work.path().join("keys");
        let (code, out, err) = idgate_cli(&["audit", "keygen", "--out", keys.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        let incidents_dir = work.path().join("incidents");
        let (notify_addr, notified) = notify_receiver().await;
        let mut upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
        let url = format!("http://{}", upstream.addr);
        let config = OneRoute {
            url: &url,
            ..OneRoute::default()
        }
        .config(&pki)
        .section("audit", audit_section(&keys, &work.path().join("trail")))
        .section(
            "incidents",
            incidents_section(&incidents_dir, Some(notify_addr)),
        );
        let env = [("INCIDENT_NOTIFY_SECRET", NOTIFY_SECRET)];
        let mut gw = Gateway::start(&config, &env).await;

        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = load(&pki, gw.port, stop.clone());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            ok.load(Ordering::Relaxed) > 20,
            "the load is served before the outage"
        );
        assert_eq!(failed.load(Ordering::Relaxed), 0);
        let list = admin_json(gw.admin_port, "/incidents").await;
        assert_eq!(list["incidents"].as_array().unwrap().len(), 0, "{list}");

        upstream.kill();
        let open = incident_when(
            gw.admin_port,
            |i| i["state"] == "open",
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(open["rule"], "upstream_errors");
        assert_eq!(open["subject"], "provider");
        assert_eq!(
            open["severity"], "critical",
            "major, raised: the route is critical"
        );
        let id = open["id"].as_str().unwrap().to_owned();
        let timeline = |i: &serde_json::Value| i["timeline"].as_array().unwrap().len();
        assert_eq!(timeline(&open), 2, "first seen, threshold crossed: {open}");
        // It grows while the outage lasts.
        let first_count = open["requests_failed"].as_u64().unwrap();
        let grown = incident_when(
            gw.admin_port,
            |i| i["id"] == id.as_str() && i["requests_failed"].as_u64().unwrap() > first_count,
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(grown["state"], "open");

        // The upstream comes back on the same port: recovering, then closed.
        let _upstream = KillableUpstream::start(upstream.addr).await;
        let closed = incident_when(
            gw.admin_port,
            |i| i["id"] == id.as_str() && i["state"] == "closed",
            Duration::from_secs(20),
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client_failures = failed.load(Ordering::Relaxed);
        assert!(client_failures > 0);
        assert_eq!(
            closed["requests_failed"].as_u64().unwrap(),
            client_failures,
            "the incident counts what the clients saw: {closed}"
        );
        assert!(timeline(&closed) > timeline(&open), "{closed}");
        let kinds: Vec<&str> = closed["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.last(), Some(&"recovered"), "{kinds:?}");
        assert!(kinds.contains(&"recovering"), "{kinds:?}");
        let first_seq = closed["audit"]["first_seq"].as_u64().unwrap();
        let last_seq = closed["audit"]["last_seq"].as_u64().unwrap();
        assert!(first_seq <= last_seq, "{closed}");
        assert_eq!(closed["affected"]["routes"][0], "route");
        assert_eq!(
            closed["classification"]["geographical_spread"],
            "eu-central-1"
        );
        assert_eq!(
            closed["classification"]["critical_services_affected"][0],
            "route"
        );

        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains(
                "idgate_incidents_opened_total{rule=\"upstream_errors\",severity=\"critical\"} 1"
            ),
            "{metrics}"
        );
        assert!(metrics.contains("idgate_incidents_open 0"), "{metrics}");

        // Notified, signed: opened, then closed.
        assert_eventually!(
            notified
                .lock()
                .unwrap()
                .iter()
                .any(|(_, b)| String::from_utf8_lossy(b).contains("\"closed\"")),
            "the close is notified"
        );
        let notes = notified.lock().unwrap().clone();
        let mut events = Vec::new();
        for (sig, body) in &notes {
            let t = sig
                .strip_prefix("t=")
                .and_then(|r| r.split(',').next())
                .unwrap();
            let mut signed = format!("{t}.").into_bytes();
            signed.extend_from_slice(body);
            assert_eq!(
                sig,
                &format!("t={t},v1={}", hex_hmac(NOTIFY_SECRET, &signed))
            );
            let json: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(json["incident"]["id"], id.as_str());
            events.push(json["event"].as_str().unwrap().to_owned());
        }
        assert_eq!(
            events.first().map(String::as_str),
            Some("opened"),
            "{events:?}"
        );
        assert_eq!(
            events.last().map(String::as_str),
            Some("closed"),
            "{events:?}"
        );

        // The report, from the stored file.
        let config_path = gw.config_path.to_str().unwrap().to_owned();
        let (code, md, err) = run(std::process::Command::new(bin())
            .args([
                "incidents",
                "report",
                &id,
                "--format",
                "md",
                "--config",
                &config_path,
            ])
            .env("INCIDENT_NOTIFY_SECRET", NOTIFY_SECRET));
        assert_eq!(code, 0, "{err}");
        assert!(md.contains("- Routes: `route`"), "{md}");
        assert!(
            md.contains(&format!("- Requests failed: **{client_failures}**")),
            "{md}"
        );
        assert!(
            md.contains(&format!("Entries `seq` {first_seq} to {last_seq}")),
            "{md}"
        );
        assert!(md.contains("idgate audit show --config"), "{md}");

        // A restart keeps it.
        gw.signal("TERM");
        assert!(
            gw.wait_exit(Duration::from_secs(30))
                .is_some_and(|s| s.success())
        );
        // The report's extraction command finds every failed request in the trail.
        let trail = work.path().join("trail");
        let (since, until) = (
            closed["audit"]["since"].as_str().unwrap(),
            closed["audit"]["until"].as_str().unwrap(),
        );
        let (code, records, err) = idgate_cli(&[
            "audit",
            "show",
            "--since",
            since,
            "--until",
            until,
            "--route",
            "route",
            "--status",
            "5xx",
            trail.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(records.lines().count() as u64, client_failures, "{records}");
        let gw = Gateway::start(&config, &env).await;
        let after = admin_json(gw.admin_port, &format!("/incidents/{id}")).await;
        assert_eq!(after, closed);
        let (code, list, err) = idgate_cli(&[
            "incidents",
            "list",
            "--dir",
            incidents_dir.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(list.contains(&id) && list.contains("closed"), "{list}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_open_when_the_gateway_is_killed_is_closed_as_interrupted_at_restart() {
    within_limit(Duration::from_secs(90), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let incidents_dir = work.path().join("incidents");
        let mut upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
        let url = format!("http://{}", upstream.addr);
        let config = OneRoute {
            url: &url,
            ..OneRoute::default()
        }
        .config(&pki)
        .section("incidents", incidents_section(&incidents_dir, None));
        let mut gw = Gateway::start(&config, &[]).await;
        upstream.kill();
        let stop = Arc::new(AtomicBool::new(false));
        let _load = load(&pki, gw.port, stop.clone());
        let open = incident_when(
            gw.admin_port,
            |i| i["state"] == "open",
            Duration::from_secs(15),
        )
        .await;
        let id = open["id"].as_str().unwrap().to_owned();
        stop.store(true, Ordering::Relaxed);
        gw.signal("KILL");
        let _ = gw.wait_exit(Duration::from_secs(10));

        let gw = Gateway::start(&config, &[]).await;
        let after = admin_json(gw.admin_port, &format!("/incidents/{id}")).await;
        assert_eq!(after["state"], "interrupted", "{after}");
        assert!(after["closed_at"].is_string(), "{after}");
        let last = after["timeline"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(last["kind"], "interrupted", "{after}");
        let said = "incident left open by a stopped gateway: closed as interrupted";
        let lines = log_lines(&gw, "idgate_incidents::service", said);
        assert_eq!(lines.len(), 1, "{}", gw.output());
        assert_eq!(lines[0]["incident"], id.as_str());
    })
    .await;
}

/// The route on `url`, its upstream's breaker opening after three failures, and `incidents`
/// where the error-ratio rule needs more requests than a test sends: only the breaker can
/// open an incident.
fn breaker_config(pki: &Pki, url: &str, mut incidents: toml::Table) -> GatewayConfig {
    let mut breaker = toml::Table::new();
    breaker.insert("consecutive_failures".into(), 3.into());
    breaker.insert("open_duration".into(), "30s".into());
    let mut upstream_extra = toml::Table::new();
    upstream_extra.insert("breaker".into(), breaker.into());
    incidents.insert("min_requests".into(), 100_000.into());
    OneRoute {
        url,
        upstream_extra,
        ..OneRoute::default()
    }
    .config(pki)
    .section("incidents", incidents)
}

/// Requests to the route of [`breaker_config`], its upstream down, until its breaker opens
/// and the incident is open.
async fn open_the_breaker(pki: &Pki, gw: &Gateway) -> serde_json::Value {
    let client = Client::new(pki, Some(ONBOARDING), gw.port, false);
    let mut slugs = Vec::new();
    for _ in 0..6 {
        let r = client.get("/v1/kyc").await.unwrap();
        slugs.push(r.status);
    }
    assert!(slugs.contains(&503), "the breaker never opened: {slugs:?}");
    incident_when(
        gw.admin_port,
        |i| i["rule"] == "breaker_open",
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_breaker_opening_opens_a_breaker_incident() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let mut upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
        let url = format!("http://{}", upstream.addr);
        let incidents = incidents_section(&work.path().join("incidents"), None);
        let gw = Gateway::start(&breaker_config(&pki, &url, incidents), &[]).await;
        upstream.kill();
        let open = open_the_breaker(&pki, &gw).await;
        assert_eq!(open["state"], "open", "{open}");
        assert_eq!(open["subject"], "provider", "{open}");
        assert_eq!(
            open["affected"]["upstreams"],
            serde_json::json!(["provider"]),
            "{open}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_incident_notification_names_the_receiver_by_its_host_alone() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let mut upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
        let url = format!("http://{}", upstream.addr);
        // A receiver that closes every connection unanswered, its URL with a query worth
        // keeping out of the log.
        let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = receiver.local_addr().unwrap();
        let hang_up = tokio::spawn(async move {
            while let Ok((tcp, _)) = receiver.accept().await {
                drop(tcp);
            }
        });
        let query_secret = "notify-query-token-7c2e";
        let mut notify = toml::Table::new();
        notify.insert(
            "url".into(),
            format!("http://{closed}/hooks/incidents?token={query_secret}").into(),
        );
        notify.insert("secret".into(), "env:INCIDENT_NOTIFY_SECRET".into());
        notify.insert("attempts".into(), 2.into());
        notify.insert("timeout".into(), "1s".into());
        let mut incidents = incidents_section(&work.path().join("incidents"), None);
        incidents.insert("notify".into(), notify.into());
        let gw = Gateway::start(
            &breaker_config(&pki, &url, incidents),
            &[("INCIDENT_NOTIFY_SECRET", NOTIFY_SECRET)],
        )
        .await;
        upstream.kill();
        open_the_breaker(&pki, &gw).await;
        let target = "idgate_incidents::notify";
        assert_eventually!(
            !log_lines(&gw, target, "incident notification given up").is_empty(),
            "no notification given up; output:\n{}",
            gw.output()
        );
        let retried = log_lines(&gw, target, "incident notification failed; retrying");
        let given_up = log_lines(&gw, target, "incident notification given up");
        for line in retried.iter().chain(&given_up) {
            assert_eq!(line["host"], "127.0.0.1", "{line:?}");
            assert!(!line.contains_key("url"), "{line:?}");
        }
        assert!(!gw.output().contains(query_secret), "{}", gw.output());
        hang_up.abort();
    })
    .await;
}

/// The breaker of [`breaker_config`] opened (an incident open), then the configuration
/// reloaded with `change` made to it: the incident once closed, the gateway's metrics
/// then, and the notifications received. The breaker stays open for five minutes by
/// itself, so only what the reload does can close the incident within the test.
async fn breaker_incident_after_a_reload(
    change: impl FnOnce(&mut GatewayConfig),
) -> (serde_json::Value, String, Vec<serde_json::Value>) {
    let pki = Pki::default_pki();
    let work = tempfile::tempdir().unwrap();
    let mut upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
    let url = format!("http://{}", upstream.addr);
    let (notify_addr, notified) = notify_receiver().await;
    let incidents = incidents_section(&work.path().join("incidents"), Some(notify_addr));
    let mut config = breaker_config(&pki, &url, incidents);
    config.upstreams[0].extra["breaker"]
        .as_table_mut()
        .unwrap()
        .insert("open_duration".into(), "300s".into());
    let env = [("INCIDENT_NOTIFY_SECRET", NOTIFY_SECRET)];
    let gw = Gateway::start(&config, &env).await;
    upstream.kill();
    let open = open_the_breaker(&pki, &gw).await;
    assert_eq!(open["state"], "open", "{open}");
    let id = open["id"].as_str().unwrap().to_owned();

    change(&mut config);
    std::fs::write(&gw.config_path, config.to_toml()).unwrap();
    gw.signal("HUP");
    let reloaded =
        "configuration reloaded: routes, upstreams, credentials and authentication replaced";
    assert_eventually!(
        !log_lines(&gw, "idgate_proxy::gateway", reloaded).is_empty(),
        "no reload:\n{}",
        gw.output()
    );
    let closed = incident_when(
        gw.admin_port,
        |i| i["id"] == id.as_str() && i["state"] == "closed",
        Duration::from_secs(15),
    )
    .await;
    let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    let closing_notified = || {
        notified.lock().unwrap().iter().any(|(_, b)| {
            let n: serde_json::Value = serde_json::from_slice(b).unwrap();
            n["event"] == "closed" && n["incident"]["id"] == id.as_str()
        })
    };
    assert_eventually!(closing_notified(), "the closing is not announced");
    let notes = notified
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).unwrap())
        .collect();
    (closed, metrics, notes)
}

/// What [`breaker_incident_after_a_reload`] gave: the incident closed because its breaker
/// went, its downtime no longer counted, nothing open left, the breaker's gauge gone.
fn assert_closed_with_the_breaker(closed: &serde_json::Value, metrics: &str) {
    let kinds: Vec<&str> = closed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"breaker_closed"), "{closed}");
    assert_eq!(kinds.last(), Some(&"recovered"), "{closed}");
    let downtime = closed["classification"]["service_downtime_secs"]
        .as_u64()
        .unwrap();
    let duration = closed["classification"]["duration_secs"].as_u64().unwrap();
    assert!(downtime < duration, "{closed}");
    assert!(metrics.contains("idgate_incidents_open 0"), "{metrics}");
    assert!(
        !metrics.contains("idgate_upstream_breaker_state{upstream=\"provider\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_removed_by_a_reload_while_its_breaker_is_open_closes_its_breaker_incident() {
    within_limit(Duration::from_secs(60), async {
        let (closed, metrics, _) = breaker_incident_after_a_reload(|config| {
            config.upstreams[0].name = "provider-b".into();
            config.routes[0].upstream = Some("provider-b".into());
        })
        .await;
        assert_closed_with_the_breaker(&closed, &metrics);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_breaker_removed_by_a_reload_while_open_closes_its_breaker_incident() {
    within_limit(Duration::from_secs(60), async {
        let (closed, metrics, _) = breaker_incident_after_a_reload(|config| {
            config.upstreams[0].extra.remove("breaker");
        })
        .await;
        assert_closed_with_the_breaker(&closed, &metrics);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_interrupted_by_a_restart_is_announced_as_closed() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let mut upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
        let url = format!("http://{}", upstream.addr);
        let (notify_addr, notified) = notify_receiver().await;
        let incidents = incidents_section(&work.path().join("incidents"), Some(notify_addr));
        let config = breaker_config(&pki, &url, incidents);
        let env = [("INCIDENT_NOTIFY_SECRET", NOTIFY_SECRET)];
        let mut gw = Gateway::start(&config, &env).await;
        upstream.kill();
        let open = open_the_breaker(&pki, &gw).await;
        let id = open["id"].as_str().unwrap().to_owned();
        let event_of = |event: &str| {
            notified
                .lock()
                .unwrap()
                .iter()
                .map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).unwrap())
                .find(|n| n["event"] == event && n["incident"]["id"] == id.as_str())
        };
        assert_eventually!(event_of("opened").is_some(), "the opening is not announced");
        gw.signal("KILL");
        let _ = gw.wait_exit(Duration::from_secs(10));
        assert!(event_of("closed").is_none());

        let gw = Gateway::start(&config, &env).await;
        assert_eventually!(
            event_of("closed").is_some(),
            "the closing at restart is not announced; output:\n{}",
            gw.output()
        );
        let closed = event_of("closed").unwrap();
        assert_eq!(closed["incident"]["state"], "interrupted", "{closed}");
        let stored = admin_json(gw.admin_port, &format!("/incidents/{id}")).await;
        assert_eq!(closed["incident"], stored);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failing_over_to_its_secondary_still_opens_an_upstream_errors_incident_for_the_primary()
 {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let down = ClosedPort::new();
        let secondary = TestUpstream::http(UpstreamMode::Echo).await;
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("down", &down.url("http")))
            .upstream(UpstreamSpec::new("second", &secondary.url(false)))
            .route(RouteSpec::get("route", "/v1/{*rest}", "down").with("failover", "second"))
            .section(
                "incidents",
                incidents_section(&work.path().join("incidents"), None),
            );
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        // Every caller is answered, by the secondary: the primary is down all along.
        for n in 0..10 {
            let r = client.get(&format!("/v1/kyc/{n}")).await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
        let open = incident_when(
            gw.admin_port,
            |i| {
                i["rule"] == "upstream_errors"
                    && i["subject"] == "down"
                    && i["actions"]["fallbacks_served"] == 10
            },
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(open["requests_failed"], 0, "{open}");
        assert_eq!(open["affected"]["routes"], serde_json::json!(["route"]));
        let list = admin_json(gw.admin_port, "/incidents").await;
        assert!(
            list["incidents"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["subject"] != "second"),
            "the secondary answered well: {list}"
        );
    })
    .await;
}

/// The same when the callers go away while the secondary works on their requests: the
/// primary's failure is counted with each request's record, not lost with its future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failing_over_is_counted_even_when_the_callers_leave_before_the_secondary_answers()
 {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let down = ClosedPort::new();
        let secondary = TestUpstream::http(UpstreamMode::Delay(Duration::from_secs(40))).await;
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("down", &down.url("http")))
            .upstream(UpstreamSpec::new("second", &secondary.url(false)))
            .route(RouteSpec::get("route", "/v1/{*rest}", "down").with("failover", "second"))
            .section(
                "incidents",
                incidents_section(&work.path().join("incidents"), None),
            );
        let gw = Gateway::start(&config, &[]).await;
        for n in 0..6 {
            let mut tls = tls_to(&pki, &gw, false).await;
            let request = format!("GET /v1/kyc/{n} HTTP/1.1\r\nhost: localhost\r\n\r\n");
            tls.write_all(request.as_bytes()).await.unwrap();
            assert_eventually!(
                secondary.requests().len() == n + 1,
                "the request did not reach the secondary"
            );
            tls.shutdown().await.unwrap();
        }
        let open = incident_when(
            gw.admin_port,
            |i| i["rule"] == "upstream_errors" && i["subject"] == "down",
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(open["requests_failed"], 0, "{open}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_down_behind_cached_answers_still_opens_an_upstream_errors_incident() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let key = work.path().join("fallback.key");
        write_private(&key, b"q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq8s=");
        let mut upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new(
                "cached",
                &format!("http://{}", upstream.addr),
            ))
            .route(RouteSpec::get("route", "/v1/{*rest}", "cached").with(
                "fallback",
                table([("cache", true.into()), ("max_age", "60s".into())]),
            ))
            .section(
                "fallback",
                table([("key", format!("file:{}", key.display()).into())]),
            )
            .section(
                "incidents",
                incidents_section(&work.path().join("incidents"), None),
            );
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let fresh = client.get("/v1/kyc").await.unwrap();
        assert_eq!(fresh.status, 200, "{:?}", fresh.body);
        upstream.kill();
        // Every caller is answered, from the cache: the upstream is down all along.
        for _ in 0..10 {
            let r = client.get("/v1/kyc").await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert!(r.header("warning").is_some(), "a stale answer");
        }
        let open = incident_when(
            gw.admin_port,
            |i| i["rule"] == "upstream_errors" && i["actions"]["fallbacks_served"] == 10,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(open["subject"], "cached", "{open}");
        assert_eq!(open["requests_failed"], 0, "{open}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_json_file_in_the_incidents_dir_does_not_stop_the_gateway() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let incidents_dir = work.path().join("incidents");
        std::fs::create_dir(&incidents_dir).unwrap();
        std::fs::write(incidents_dir.join("notes.json"), b"{\"todo\": 1}").unwrap();
        std::fs::write(incidents_dir.join("zz-broken.json"), b"{\"id\": ").unwrap();
        let upstream = KillableUpstream::start("127.0.0.1:0".parse().unwrap()).await;
        let url = format!("http://{}", upstream.addr);
        let config = OneRoute {
            url: &url,
            ..OneRoute::default()
        }
        .config(&pki)
        .section("incidents", incidents_section(&incidents_dir, None));
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(client.get("/v1/kyc").await.unwrap().status, 200);
        let list = admin_json(gw.admin_port, "/incidents").await;
        assert_eq!(list["incidents"], serde_json::json!([]), "{list}");
        let said = "a file in the incidents directory is not an incident: skipped";
        let lines = log_lines(&gw, "idgate_incidents::service", said);
        assert_eq!(lines.len(), 2, "{}", gw.output());
        assert!(
            lines.iter().any(|l| l["error"]
                .as_str()
                .is_some_and(|e| e.contains("notes.json"))),
            "{lines:?}"
        );
        // The files are left as they were, for someone to look at.
        assert!(incidents_dir.join("zz-broken.json").exists());
    })
    .await;
}

#[tokio::test]
async fn requests_the_gateway_refuses_before_sending_them_are_not_counted_against_the_upstream() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let work = tempfile::tempdir().unwrap();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        // The shared state is a port nobody listens on, and the route's limit fails closed:
        // every request is refused (503 state-unavailable) before it is sent.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let state_url = format!("redis://{}", unused.local_addr().unwrap());
        drop(unused);
        let state = table([
            ("backend", "redis".into()),
            ("url", state_url.into()),
            ("timeout", "50ms".into()),
        ]);
        let limit = table([
            ("name", "per-workload".into()),
            ("key", strings(&["spiffe_id"])),
            ("rate", "100/s".into()),
        ]);
        let config = base_config(&pki)
            .section("state", state)
            .section("rate_limits", toml::Value::Array(vec![limit.into()]))
            .section(
                "incidents",
                incidents_section(&work.path().join("incidents"), None),
            )
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(
                RouteSpec::new("route", &["GET"], "/v1/kyc", "provider", &[ONBOARDING])
                    .with("rate_limits", strings(&["per-workload"]))
                    .with("on_state_error", "fail_closed"),
            );
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for _ in 0..30 {
            let r = client.get("/v1/kyc").await.unwrap();
            assert_eq!(r.status, 503, "{:?}", r.body);
            assert_eq!(
                r.json()["type"],
                "https://idgate.dev/problems/state-unavailable"
            );
        }
        // Past a detection tick (every second): the upstream was never asked, so no
        // upstream_errors incident names it.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let list = admin_json(gw.admin_port, "/incidents").await;
        for i in list["incidents"].as_array().unwrap() {
            let id = i["id"].as_str().unwrap();
            let full = admin_json(gw.admin_port, &format!("/incidents/{id}")).await;
            assert_ne!(full["rule"], "upstream_errors", "{full}");
        }
        assert!(upstream.requests().is_empty());
    })
    .await;
}
