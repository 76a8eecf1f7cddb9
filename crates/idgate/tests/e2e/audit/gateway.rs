//! The gateway's audit trail over real sockets: one record per request and per refused
//! handshake or connection, nothing secret or personal in it, a SIGKILL under load and the
//! gap the restart records, `fail_closed` and `block` when the queue is full, encryption at
//! rest, and a checkpoint key held in SoftHSM.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{HandSealed, TrailKeys};
use crate::assert_eventually;
use crate::support::*;

const PROVIDER_KEY: &str = "sk_live_audit_provider_9f8e7d6c";

/// `[audit]` writing into `dir`, signed with `keys`, synced every 20 ms, with `extra` keys.
pub(super) fn audit_section(
    keys: &TrailKeys,
    dir: &Path,
    extra: &[(&str, toml::Value)],
) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("dir".into(), dir.display().to_string().into());
    t.insert(
        "signing_key".into(),
        format!("file:{}", keys.signing().display()).into(),
    );
    t.insert(
        "public_keys".into(),
        vec![toml::Value::from(keys.public().display().to_string())].into(),
    );
    t.insert("sync_interval".into(), "20ms".into());
    t.insert("checkpoint_every".into(), 50.into());
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// The decision route (`GET /v3/session/{session_id}/decision/`, its parameter personal) on
/// `upstream`, with the trail in `dir`.
fn config(pki: &Pki, upstream: &TestUpstream, keys: &TrailKeys, dir: &Path) -> GatewayConfig {
    let url = upstream.url(true);
    let mut config = OneRoute::kyc_decision(&url).config(pki);
    config.routes[0]
        .extra
        .insert("personal_path_params".into(), true.into());
    config.section("audit", audit_section(keys, dir, &[]))
}

pub(super) fn stop(gw: &mut Gateway) {
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.output());
}

fn verify(keys: &TrailKeys, dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let public = keys.public();
    let mut args = vec!["audit", "verify", "--key", public.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    idgate_cli(&args)
}

/// Every entry of the trail in `dir`, as `idgate audit show --all` prints them.
pub(super) fn entries(dir: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["audit", "show", "--all"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let (code, out, err) = idgate_cli(&args);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn class(entries: &[serde_json::Value], class_uid: u64) -> Vec<&serde_json::Value> {
    entries
        .iter()
        .filter(|e| e["class_uid"].as_u64() == Some(class_uid))
        .collect()
}

fn all_bytes(dir: &Path) -> String {
    idgate_audit::files::list(dir)
        .unwrap()
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_and_refused_handshake_has_exactly_one_record() {
    within_limit(Duration::from_secs(120), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let mut gw = Gateway::start(
            &config(&pki, &upstream, &keys, trail.path()),
            &[("TEST_PROVIDER_KEY", PROVIDER_KEY)],
        )
        .await;
        let session = "f3a1c9e2-7b44-4e0a-9d1b-5c2e8a7f6b31";
        let path = format!("/v3/session/{session}/decision/");
        let clients: Vec<Client> = (0..4)
            .map(|_| Client::new(&pki, Some(ONBOARDING), gw.port, false))
            .collect();
        let load = paced_load(
            clients,
            &path,
            Duration::from_millis(5),
            Duration::from_millis(1500),
        )
        .await;
        assert!(load.admitted > 100, "{load:?}");
        // Refused requests: a workload not on the allow list, a path no route has.
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let mut ids = HashSet::new();
        for _ in 0..5 {
            let r = frontend.get(&path).await.unwrap();
            assert_eq!(r.status, 403);
            ids.insert(r.header("x-request-id").unwrap().to_owned());
            let r = frontend.get("/nowhere").await.unwrap();
            assert_eq!(r.status, 404);
            ids.insert(r.header("x-request-id").unwrap().to_owned());
        }
        // Two requests naming the same id: a caller chooses its `x-request-id`, and each
        // record also carries an id of the gateway's own.
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for _ in 0..2 {
            let r = onboarding
                .send("GET", &path, &[("x-request-id", "chosen-by-caller")], "")
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.header("x-request-id"), Some("chosen-by-caller"));
        }
        // Handshakes without a client certificate, refused by the listener.
        let anonymous = Client::new(&pki, None, gw.port, false);
        for _ in 0..3 {
            let refused = match anonymous.connect().await {
                Err(_) => true,
                Ok(mut c) => c.send("GET", &path, &[], "").await.is_err(),
            };
            assert!(refused);
        }
        stop(&mut gw);

        let (code, out, err) = verify(&keys, trail.path(), &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("sealed"), "{out}");
        let entries = entries(trail.path(), &[]);
        let requests = class(&entries, 6003);
        assert_eq!(
            requests.len() as u64,
            load.admitted + load.refused + 12,
            "one record per request"
        );
        let uids: HashSet<&str> = requests
            .iter()
            .map(|r| r["metadata"]["uid"].as_str().unwrap())
            .collect();
        assert_eq!(
            uids.len(),
            requests.len() - 1,
            "request ids are unique, but the one chosen twice"
        );
        assert!(ids.iter().all(|id| uids.contains(id.as_str())));
        let chosen: Vec<_> = requests
            .iter()
            .filter(|r| r["api"]["request"]["uid"] == "chosen-by-caller")
            .collect();
        assert_eq!(chosen.len(), 2, "{chosen:?}");
        let own: HashSet<&str> = chosen
            .iter()
            .filter_map(|r| r["unmapped"]["gateway_request_id"].as_str())
            .filter(|uid| uid.len() == 32 && !uids.contains(uid))
            .collect();
        assert_eq!(own.len(), 2, "{chosen:?}");
        assert!(
            requests
                .iter()
                .filter(|r| r["unmapped"].get("gateway_request_id").is_some())
                .count()
                == 2,
            "only a caller's own id brings the gateway's beside it"
        );
        let denied = requests
            .iter()
            .filter(|r| r["status_detail"] == "denied:forbidden")
            .count();
        assert_eq!(denied, 5);
        let allowed = requests
            .iter()
            .find(|r| r["http_response"]["code"] == 200)
            .unwrap();
        assert_eq!(allowed["actor"]["user"]["uid"], ONBOARDING);
        assert_eq!(allowed["api"]["operation"], "route");
        assert_eq!(allowed["api"]["service"]["name"], "provider");
        assert_eq!(
            allowed["http_request"]["url"]["path"],
            "/v3/session/{session_id}/decision/"
        );
        assert_eq!(
            allowed["unmapped"]["auth_layers"],
            serde_json::json!(["mtls"])
        );
        let handshakes = class(&entries, 4001);
        assert_eq!(handshakes.len(), 3, "{handshakes:?}");
        assert!(
            handshakes
                .iter()
                .all(|h| h["status_detail"] == "tls_handshake")
        );
        // Neither the provider's key nor the personal path parameter is anywhere.
        let raw = all_bytes(trail.path());
        assert!(
            !raw.contains(PROVIDER_KEY) && !raw.contains(session),
            "{raw:.2000}"
        );

        // The real trail, tampered with: verify names the first bad entry every time.
        let files = idgate_audit::files::list(trail.path()).unwrap();
        super::mutate_and_verify(&files, &keys.public(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_routing_on_a_personal_route_records_its_template_not_the_path() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let config = config(&pki, &upstream, &keys, trail.path())
            .section("network", toml::toml! { deny_user_agents = ["sqlmap*"] });
        let mut gw = Gateway::start(&config, &[("TEST_PROVIDER_KEY", PROVIDER_KEY)]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let session = "c9d27e51-0b6a-4f3e-8a14-7e5d2b9f0c68";
        let path = format!("/v3/session/{session}/decision/");
        // (method, path, headers, status, the path recorded)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a [(&'a str, &'a str)],
            u16,
            Option<&'a str>,
        );
        let template = "/v3/session/{session_id}/decision/";
        let near_miss = format!("/v3/session/{session}/decision");
        let cases: [Case<'_>; 5] = [
            // A method the personal route does not take: 405 from routing.
            ("DELETE", &path, &[], 405, Some(template)),
            ("HEAD", &path, &[], 405, Some(template)),
            // A user agent `[network]` denies: 403 on arrival, before any route.
            (
                "GET",
                &path,
                &[("user-agent", "sqlmap/1.8")],
                403,
                Some(template),
            ),
            // No route, but the path begins as the personal route's does: no path.
            ("GET", &near_miss, &[], 404, None),
            // No route, nothing personal could be meant: the path as sent.
            ("GET", "/nowhere/else", &[], 404, Some("/nowhere/else")),
        ];
        let mut sent = Vec::new();
        for (method, path, headers, status, _) in &cases {
            let r = client.send(method, path, headers, "").await.unwrap();
            assert_eq!(r.status, *status, "{method} {path}");
            sent.push(r.header("x-request-id").unwrap().to_owned());
        }
        stop(&mut gw);

        let raw = all_bytes(trail.path());
        assert!(!raw.contains(session), "{raw:.3000}");
        let entries = entries(trail.path(), &[]);
        let requests = class(&entries, 6003);
        for ((method, _, _, status, recorded), id) in cases.iter().zip(&sent) {
            let record = requests
                .iter()
                .find(|r| r["metadata"]["uid"] == id.as_str())
                .unwrap_or_else(|| panic!("{method} {status}: no record"));
            assert_eq!(record["http_response"]["code"], *status);
            assert_eq!(
                record["http_request"]["url"]["path"].as_str(),
                *recorded,
                "{method} {status}: {record}"
            );
            let template_recorded = record["unmapped"]["path_template"].as_str();
            assert_eq!(
                template_recorded,
                recorded.filter(|p| *p == template),
                "{record}"
            );
        }
    })
    .await;
}

/// Requests on `clients` until the gateway stops answering; how many were answered 200.
async fn until_it_dies(clients: Vec<Client>, path: String) -> u64 {
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in clients {
        let (answered, path) = (answered.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = c.connect().await else {
                return;
            };
            while let Ok(r) = conn.send("GET", &path, &[], "").await {
                assert_eq!(r.status, 200);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    answered.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_under_load_leaves_a_verifiable_chain_and_the_restart_records_the_gap() {
    within_limit(Duration::from_secs(120), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let config = config(&pki, &upstream, &keys, trail.path());
        let env = [("TEST_PROVIDER_KEY", PROVIDER_KEY)];
        let mut gw = Gateway::start(&config, &env).await;
        let clients = (0..4)
            .map(|_| Client::new(&pki, Some(ONBOARDING), gw.port, false))
            .collect();
        let load = tokio::spawn(until_it_dies(clients, "/v3/session/s1/decision/".into()));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        gw.signal("KILL");
        assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
        let answered = load.await.unwrap();
        assert!(answered > 50, "{answered}");

        // The chain verifies up to what was written before the kill; its end is open, a
        // batch the kill cut short included.
        let (code, out, err) = verify(&keys, trail.path(), &[]);
        assert_eq!(code, 3, "{out}{err}");
        let (code, out, err) = verify(&keys, trail.path(), &["--allow-open"]);
        assert_eq!(code, 0, "{out}{err}");
        let last_written = idgate_cli(&["audit", "show", trail.path().to_str().unwrap()])
            .1
            .lines()
            .count() as u64;
        // A record is made before its answer goes out: up to one per connection may be in
        // the trail without its answer having reached the client.
        assert!(
            last_written <= answered + 4 && last_written > 0,
            "{last_written} of {answered}"
        );

        // The restart finds the open end and records the gap; the trail is whole again.
        let mut gw = Gateway::start(&config, &env).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(c.get("/v3/session/s2/decision/").await.unwrap().status, 200);
        stop(&mut gw);
        assert!(
            gw.output()
                .contains("the previous run did not close its file"),
            "{}",
            gw.output()
        );
        let (code, out, err) = verify(&keys, trail.path(), &[]);
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(out.matches("gap: ").count(), 1, "{out}");
        let entries = entries(trail.path(), &[]);
        let gap = entries.iter().find(|e| e["entry"] == "gap").unwrap();
        let before_gap = entries
            .iter()
            .take_while(|e| e["entry"] != "gap")
            .filter(|e| e["entry"] != "open")
            .last()
            .unwrap();
        assert_eq!(gap["gap"]["last_seq"], before_gap["seq"]);
    })
    .await;
}

/// Writes into `dir` a trail someone sealed by hand up to entry `u64::MAX - 3`: an opening
/// and a `shutdown` checkpoint signed with `keys`. A start continues it with its own opening
/// and checkpoint, and the next record takes the last sequence number there is.
fn trail_at_its_last_numbers(keys: &TrailKeys, dir: &Path) {
    let first = u64::MAX - 4;
    let name = idgate_audit::files::file_name(first, std::time::SystemTime::now());
    let mut hand = HandSealed::new(keys, first, &"0".repeat(64));
    hand.open(&name, None);
    hand.checkpoint(Some("shutdown"));
    std::fs::write(dir.join(name), hand.take()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_once_the_audit_writer_has_stopped_and_liveness_only_where_a_restart_mends_it()
{
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        trail_at_its_last_numbers(&keys, trail.path());
        let config = config(&pki, &upstream, &keys, trail.path());
        let mut gw = Gateway::start(&config, &[("TEST_PROVIDER_KEY", PROVIDER_KEY)]).await;
        let admin = gw.admin_port;
        assert_eq!(admin_get(admin, "/readyz").await.unwrap().0, 200);
        assert_eq!(admin_get(admin, "/healthz").await.unwrap().0, 200);
        let metrics = admin_get(admin, "/metrics").await.unwrap().1;
        assert!(
            metrics.lines().any(|l| l == "idgate_audit_halted 0"),
            "{metrics}"
        );

        // The one record there is room for takes the chain's last number: the writer stops,
        // and every request after it is refused rather than served unrecorded.
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(
            client.get("/v3/session/s1/decision/").await.unwrap().status,
            200
        );
        // (One that took its place before the writer stopped may still be served; its record
        // is counted as lost.)
        assert_eventually!(
            client.get("/v3/session/s2/decision/").await.unwrap().status == 503,
            "requests are still served after the chain ran out"
        );

        // The replica says so: not ready (out of the load balancer) and a gauge to alert
        // on; still live, since a restart cannot go on from an exhausted chain (only a
        // failed sync, which a restart mends, fails liveness too).
        let (status, body) = admin_get(admin, "/readyz").await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("audit_sequence_exhausted"), "{body}");
        let (status, body) = admin_get(admin, "/healthz").await.unwrap();
        assert_eq!(status, 200, "{body}");
        let metrics = admin_get(admin, "/metrics").await.unwrap().1;
        assert!(
            metrics.lines().any(|l| l == "idgate_audit_halted 1"),
            "{metrics}"
        );
        assert!(
            gw.output().contains("sequence numbers are exhausted"),
            "{}",
            gw.output()
        );
        gw.signal("TERM");
        assert!(
            gw.wait_exit(Duration::from_secs(30)).is_some(),
            "{}",
            gw.output()
        );
        // What was written holds: the record that took the last number among it.
        let (code, out, err) = verify(&keys, trail.path(), &["--allow-open"]);
        assert_eq!(code, 0, "{out}{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_fails_closed_with_503_or_makes_block_routes_wait() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        // The upstream holds each request long enough for the refused one to be sent and
        // answered while the queue's one place is taken, on a busy machine too.
        let upstream_delay = Duration::from_secs(2);
        let upstream = TestUpstream::https(&pki, UpstreamMode::Delay(upstream_delay)).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let url = upstream.url(true);
        let mut config = OneRoute {
            path: "/closed/{*rest}",
            ..OneRoute::kyc_decision(&url)
        }
        .config(&pki);
        config.routes[0]
            .extra
            .insert("on_audit_full".into(), "fail_closed".into());
        let mut wait = RouteSpec::new(
            "waits",
            &["GET"],
            "/waits/{*rest}",
            "provider",
            &[ONBOARDING],
        );
        wait.extra.insert("on_audit_full".into(), "block".into());
        let config = config.route(wait).section(
            "audit",
            audit_section(
                &keys,
                trail.path(),
                // Far longer than the wait for the place (one upstream delay).
                &[
                    ("queue_capacity", 1.into()),
                    ("block_timeout", "10s".into()),
                ],
            ),
        );
        let mut gw = Gateway::start(&config, &[("TEST_PROVIDER_KEY", PROVIDER_KEY)]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        // The one place is held by a request waiting for its upstream: it took the place
        // before it was forwarded, and keeps it until its record is written.
        let (c1, c2) = (client.clone(), client.clone());
        let slow = tokio::spawn(async move { c1.get("/closed/a").await.unwrap().status });
        assert_eventually!(
            upstream.requests().len() == 1,
            "the first request did not reach the upstream"
        );
        let started = Instant::now();
        let refused = c2.get("/closed/b").await.unwrap();
        let took = started.elapsed();
        assert_eq!(refused.status, 503);
        // Refused without waiting. Waiting for the place instead (what `block` does) would
        // last until the first request's answer, an upstream delay (2 s) after it reached the
        // upstream, and then be served `200` after another delay (or refused at
        // `block_timeout`, 10 s). The bound is well under one delay and leaves a busy machine
        // plenty of time for a fresh connection and the refusal.
        assert!(took < upstream_delay * 3 / 4, "refused after {took:?}");
        assert_eq!(
            refused.json()["type"],
            "https://idgate.dev/problems/audit-unavailable"
        );
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(slow.await.unwrap(), 200);

        // On a block route the second request waits for the place, then is served.
        let c1 = client.clone();
        let slow = tokio::spawn(async move { c1.get("/waits/a").await.unwrap().status });
        assert_eventually!(
            upstream.requests().len() == 2,
            "the first waiting request did not reach the upstream"
        );
        let started = Instant::now();
        let waited = client.get("/waits/b").await.unwrap();
        let took = started.elapsed();
        assert_eq!(waited.status, 200);
        // It waited for the place (until the first one's answer, an upstream delay after it
        // reached the upstream) before it was forwarded, and then waited for its own answer:
        // about two delays. Served without waiting, it would have taken one.
        assert!(took >= upstream_delay * 3 / 2, "served after {took:?}");
        assert_eq!(slow.await.unwrap(), 200);

        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_audit_refused_total{policy=\"fail_closed\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("idgate_audit_queue_depth"), "{metrics}");
        stop(&mut gw);
        let entries = entries(trail.path(), &[]);
        let failed = class(&entries, 6003)
            .into_iter()
            .filter(|r| r["status_detail"] == "failed:audit-unavailable")
            .count();
        assert_eq!(failed, 1, "the refused request is recorded too");
        assert_eq!(class(&entries, 6003).len(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_trail_needs_its_key_and_refused_connections_are_recorded() {
    within_limit(Duration::from_secs(60), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let keys = TrailKeys::new(true);
        let trail = tempfile::tempdir().unwrap();
        // An API key, made with the CLI before the gateway starts.
        let pepper = keys.dir.path().join("pepper");
        write_private(&pepper, b"0123456789abcdef0123456789abcdef-pepper");
        let pepper = format!("file:{}", pepper.display());
        let store = keys.dir.path().join("keys.redb");
        let (code, api_key, err) = idgate_cli(&[
            "keys",
            "create",
            "--store",
            store.to_str().unwrap(),
            "--pepper",
            &pepper,
            "--name",
            "batch",
        ]);
        assert_eq!(code, 0, "{err}");
        let api_key = api_key.trim().to_owned();
        let bogus = format!("idg_{}_{}", "a".repeat(16), "b".repeat(52));
        let url = upstream.url(true);
        let mut route = OneRoute {
            allow: &["spiffe://example.org/ns/kyc/*", "apikey:batch"],
            ..OneRoute::kyc_decision(&url)
        };
        route
            .listener_extra
            .insert("max_connections_per_ip".into(), 1.into());
        let enc = format!("file:{}", keys.encryption().display());
        let mut config = route.config(&pki).section(
            "audit",
            audit_section(
                &keys,
                trail.path(),
                &[("encryption_key", enc.clone().into())],
            ),
        );
        config.routes[0].extra.insert(
            "auth".into(),
            toml::Value::Array(vec![toml::toml! { any = ["mtls", "api_key"] }.into()]),
        );
        let config = config.section(
            "api_keys",
            table([("store", path_value(&store)), ("pepper", pepper.into())]),
        );
        let mut gw = Gateway::start(&config, &[("TEST_PROVIDER_KEY", PROVIDER_KEY)]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let mut held = client.connect().await.unwrap();
        let path = "/v3/session/abc123/decision/";
        let r = held
            .send("GET", path, &[("x-api-key", &api_key)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let r = held
            .send("GET", path, &[("x-api-key", &bogus)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 401);
        // A second connection from the same address is refused at accept.
        assert!(match client.connect().await {
            Err(_) => true,
            Ok(mut c) => c
                .send("GET", "/v3/session/x/decision/", &[], "")
                .await
                .is_err(),
        });
        drop(held);
        stop(&mut gw);

        let raw = all_bytes(trail.path());
        assert!(
            !raw.contains("abc123") && !raw.contains("decision"),
            "{raw:.500}"
        );
        // Without its key the trail is not judged: a usage problem, not a broken trail.
        let (code, _, err) = verify(&keys, trail.path(), &[]);
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("no encryption key was given") && err.contains("--decrypt-key"),
            "{err}"
        );
        let (code, out, err) = verify(&keys, trail.path(), &["--decrypt-key", &enc]);
        assert_eq!(code, 0, "{out}{err}");
        let entries = entries(trail.path(), &["--decrypt-key", &enc]);
        let request = class(&entries, 6003);
        assert_eq!(request.len(), 2);
        // Not personal on this route: the path as sent.
        assert_eq!(
            request[0]["http_request"]["url"]["path"],
            "/v3/session/abc123/decision/"
        );
        // The caller by the key's name and the layers it used; never a key itself.
        assert_eq!(request[0]["actor"]["user"]["uid"], "apikey:batch");
        assert_eq!(
            request[0]["unmapped"]["auth_layers"],
            serde_json::json!(["mtls", "api_key"])
        );
        assert_eq!(request[1]["status_detail"], "denied:invalid-api-key");
        let text = serde_json::to_string(&entries).unwrap();
        for secret in [api_key.as_str(), bogus.as_str(), PROVIDER_KEY] {
            assert!(!text.contains(secret) && !raw.contains(secret));
        }
        let refused = class(&entries, 4001);
        assert!(
            refused
                .iter()
                .any(|r| r["status_detail"] == "max_connections_per_ip" && r["activity_id"] == 5),
            "{refused:?}"
        );
        // The gateway's configuration gives the directory, the public key and the key.
        for command in ["verify", "show"] {
            let mut cmd = Command::new(bin());
            cmd.args(["audit", command, "--config"])
                .arg(&gw.config_path)
                .env("TEST_PROVIDER_KEY", PROVIDER_KEY);
            let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(30));
            assert_eq!(code, 0, "{command}: {out}{err}");
            assert!(out.contains("sealed") || out.contains("abc123"), "{out}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_can_be_signed_by_a_key_held_in_softhsm() {
    within_limit(Duration::from_secs(90), async {
        let token = SoftHsmToken::new();
        let uri = token.uri("audit-signing");
        let public: PathBuf = token.dir.path().join("audit-signing.pub");
        let mut keygen = Command::new(bin());
        keygen
            .args(["audit", "keygen", "--pkcs11", &uri, "--public-out"])
            .arg(&public)
            .env("SOFTHSM2_CONF", token.conf());
        let (code, out, err) = run_bounded(&mut keygen, Duration::from_secs(30));
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("not extractable"), "{out}");
        let (code, list, err) = token.hsm(&["list", "--uri", &uri], "");
        assert_eq!(code, 0, "{err}");
        assert!(
            list.contains("private-key") && list.contains("audit-signing"),
            "{list}"
        );

        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let keys = TrailKeys::new(false);
        let trail = tempfile::tempdir().unwrap();
        let url = upstream.url(true);
        let mut section = audit_section(&keys, trail.path(), &[]);
        section.insert("signing_key".into(), uri.clone().into());
        section.insert(
            "public_keys".into(),
            vec![toml::Value::from(public.display().to_string())].into(),
        );
        let config = OneRoute::kyc_decision(&url)
            .config(&pki)
            .section("audit", section);
        let conf = token.conf();
        let mut gw = Gateway::start(
            &config,
            &[
                ("TEST_PROVIDER_KEY", PROVIDER_KEY),
                ("SOFTHSM2_CONF", conf.to_str().unwrap()),
            ],
        )
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for i in 0..3 {
            let r = client
                .get(&format!("/v3/session/{i}/decision/"))
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
        stop(&mut gw);
        let (code, out, err) = idgate_cli(&[
            "audit",
            "verify",
            "--key",
            public.to_str().unwrap(),
            trail.path().to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("3 records") && out.contains("sealed"), "{out}");
    })
    .await;
}

#[test]
fn check_names_an_unusable_audit_key() {
    let pki = Pki::default_pki();
    let keys = TrailKeys::new(false);
    let trail = tempfile::tempdir().unwrap();
    let bad = keys.dir.path().join("not-a-key.pem");
    write_private(
        &bad,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let mut section = audit_section(&keys, trail.path(), &[]);
    section.insert(
        "signing_key".into(),
        format!("file:{}", bad.display()).into(),
    );
    let config = OneRoute::kyc_decision("https://127.0.0.1:9")
        .config(&pki)
        .section("audit", section);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("idgate.toml");
    std::fs::write(&file, config.to_toml()).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["check", "--config"])
        .arg(&file)
        .env("TEST_PROVIDER_KEY", PROVIDER_KEY);
    let (code, out, err) = run_bounded(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("audit.signing_key") && err.contains("not a PKCS#8"),
        "{err}"
    );
    // `check` reads the keys but writes nothing.
    assert_eq!(std::fs::read_dir(trail.path()).unwrap().count(), 0);
}
