//! Several gateway processes sharing one real Redis (a server and a six-node Cluster): a
//! rate limit holds across replicas, a key revoked through the CLI is refused by every
//! replica within a second, and a Redis killed under load leaves each route to its
//! `on_state_error` until it is back.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use idgate_store::redis_testing::{RedisCluster, RedisServer};

use crate::support::*;

const PATH: &str = "/v1/anything";
const PEPPER: &str = "r3dis-replicas-pepper-0123456789abcdefABCDEF";

/// `[state]` on Redis: one server's URL, or a Cluster's nodes.
fn redis_state(nodes: &[String]) -> toml::Table {
    match nodes {
        [url] => table([("backend", "redis".into()), ("url", url.as_str().into())]),
        _ => table([
            ("backend", "redis".into()),
            (
                "cluster",
                toml::Value::Array(nodes.iter().map(|n| n.as_str().into()).collect()),
            ),
            // The Cluster's first connection finds the slots: give it room on a busy machine.
            ("timeout", "250ms".into()),
        ]),
    }
}

/// A gateway with one limited route for ONBOARDING on the Redis at `nodes`.
async fn replica(
    pki: &Pki,
    upstream: &TestUpstream,
    nodes: &[String],
    limit: toml::Table,
) -> Gateway {
    let config = base_config(pki)
        .section("state", redis_state(nodes))
        .section("rate_limits", toml::Value::Array(vec![limit.into()]))
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(
            RouteSpec::new("route", &["GET"], "/v1/{*rest}", "provider", &[ONBOARDING])
                .with("rate_limits", strings(&["per-workload"])),
        );
    Gateway::start(&config, &[]).await
}

/// Sends ten times `rate` a second for three seconds, spread over the replicas' ports, and
/// checks that the admitted count stays within 5% of what the limit allows.
async fn shared_limit_holds(nodes: Vec<String>) {
    const RATE: f64 = 20.0;
    const BURST: f64 = 5.0;
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let limit = table([
        ("name", "per-workload".into()),
        ("key", strings(&["spiffe_id"])),
        ("rate", "20/s".into()),
        ("burst", 5.into()),
    ]);
    let a = replica(&pki, &upstream, &nodes, limit.clone()).await;
    let b = replica(&pki, &upstream, &nodes, limit).await;
    // The first call on a fresh connection pool may take longer: warm both up first, with
    // a workload of its own budget.
    for gw in [&a, &b] {
        let other = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let _ = other.get(PATH).await;
    }
    // Ten times the rate, spread over both replicas: each sender 25 a second.
    let senders = (0..8)
        .map(|i| {
            let port = if i % 2 == 0 { a.port } else { b.port };
            Client::new(&pki, Some(ONBOARDING), port, false)
        })
        .collect();
    let count = paced_load(
        senders,
        PATH,
        Duration::from_millis(40),
        Duration::from_secs(3),
    )
    .await;
    let elapsed = count.elapsed.as_secs_f64();
    let admitted = count.admitted as f64;
    let refused = count.refused as f64;
    let allowed = RATE * elapsed + BURST;
    println!(
        "two replicas: {admitted} admitted, {refused} refused in {elapsed:.2}s; {allowed:.1} allowed"
    );
    assert!(
        refused >= 2.0 * admitted,
        "the load was not several times the limit: {admitted} admitted, {refused} refused"
    );
    // Each replica alone would have admitted up to the whole limit: together they admit it
    // once.
    assert!(
        admitted <= 1.05 * allowed,
        "{admitted} admitted in {elapsed:.2}s across two replicas, at most {allowed:.1} allowed"
    );
    assert!(
        admitted >= 0.95 * RATE * elapsed,
        "{admitted} admitted in {elapsed:.2}s: under 95% of the limit"
    );
    for gw in [&a, &b] {
        assert!(!gw.output().contains("panicked"), "{}", gw.output());
    }
}

#[tokio::test]
async fn two_replicas_on_one_redis_admit_the_limit_once_between_them() {
    within(async {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        shared_limit_holds(vec![redis.url()]).await;
    })
    .await;
}

#[tokio::test]
async fn two_replicas_on_a_redis_cluster_admit_the_limit_once_between_them() {
    within(async {
        let Some(cluster) = RedisCluster::start() else {
            return;
        };
        shared_limit_holds(cluster.urls()).await;
    })
    .await;
}

/// How many scripts the Redis server at `port` has run (`EVALSHA` and `EVAL`).
fn scripts_run(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A limit far above the load is decided from the replica's leases: a hundred requests
/// cost Redis about one call per eight (a lease is 10 ms of the rate, ten requests, topped
/// up when two are left), every answer still carries the limit's fields, and the share
/// taken is counted in Redis for every replica.
#[tokio::test]
async fn a_high_limit_is_decided_from_leases_with_one_call_to_redis_per_lease() {
    within(async {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let limit = table([
            ("name", "per-workload".into()),
            ("key", strings(&["spiffe_id"])),
            ("rate", "1000/s".into()),
        ]);
        let gw = replica(&pki, &upstream, &[redis.url()], limit).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let mut conn = client.connect().await.unwrap();
        let before = scripts_run(redis.port());
        let started = Instant::now();
        let mut remaining = Vec::new();
        for _ in 0..100 {
            let reply = conn.send("GET", PATH, &[], "").await.unwrap();
            assert_eq!(reply.status, 200);
            assert_eq!(
                reply.header("ratelimit-policy"),
                Some("\"per-workload\";q=1000;w=1")
            );
            let state = reply.header("ratelimit").unwrap().to_owned();
            let r: u32 = state
                .split(";r=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            remaining.push(r);
        }
        let calls = scripts_run(redis.port()) - before;
        let elapsed = started.elapsed();
        println!("100 requests in {elapsed:?}: {calls} scripts run in Redis");
        // A lease of ten and about twelve top-ups of eight, or a few more calls if a lease
        // ended (the requests were slow) or the API key's table was read meanwhile.
        assert!((10..=25).contains(&calls), "{calls} calls for 100 requests");
        // What a caller is told it has left counts what the replica holds for it.
        assert!(remaining.iter().all(|&r| r >= 899), "{remaining:?}");
        assert!(!gw.output().contains("panicked"), "{}", gw.output());
    })
    .await;
}

/// A gateway configuration whose route takes the API key `apikey:batch` alone, the keys
/// kept in the Redis of `redis` (no store file).
fn keys_in_redis(pki: &Pki, upstream: &TestUpstream, redis: &RedisServer) -> GatewayConfig {
    let pepper = pki.path().join("pepper");
    std::fs::write(&pepper, PEPPER).unwrap();
    std::fs::set_permissions(&pepper, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    base_config(pki)
        .section("state", redis_state(&[redis.url()]))
        .section(
            "api_keys",
            table([("pepper", format!("file:{}", pepper.display()).into())]),
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(
            RouteSpec::new(
                "route",
                &["GET"],
                "/v1/{*rest}",
                "provider",
                &["apikey:batch"],
            )
            .with("auth", strings(&["api_key"])),
        )
}

/// Writes `config` next to the PKI and creates the key `batch` with the CLI through it:
/// the file's path and the key.
async fn create_key(pki: &Pki, config: &GatewayConfig) -> (String, String) {
    let file = pki.path().join("idgate.toml");
    std::fs::write(&file, config.to_toml()).unwrap();
    let file = file.to_str().unwrap().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking({
        let file = file.clone();
        move || idgate_cli(&["keys", "create", "--config", &file, "--name", "batch"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    (file, out.trim().to_owned())
}

/// Sends the key until the gateway accepts it (it reads the store every 250 ms).
async fn until_accepted(client: &Client, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = client
            .send("GET", PATH, &[("x-api-key", key)], "")
            .await
            .unwrap();
        if reply.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the key was never accepted: {}",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_reload_while_redis_is_away_keeps_the_keys_it_had() {
    within(async {
        let Some(mut redis) = RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let config = keys_in_redis(&pki, &upstream, &redis);
        let gw = Gateway::start(&config, &[]).await;
        let (_, key) = create_key(&pki, &config).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        until_accepted(&client, &key).await;

        // Redis goes away, then the configuration is reloaded: the new snapshot cannot read
        // the keys, so the reload is refused and the running keys stay in force.
        redis.kill();
        gw.signal("HUP");
        // A refusal logs one line per problem, each written when it is: the one that names
        // the keys is waited for, not only the first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log_lines(
            &gw,
            "idgate_proxy::gateway",
            "configuration reload refused; the running configuration stays",
        )
        .iter()
        .any(|l| {
            l.get("key")
                .and_then(|k| k.as_str())
                .is_some_and(|k| k.starts_with("api_keys"))
        }) {
            assert!(
                Instant::now() < deadline,
                "no refused reload naming api_keys: {}",
                gw.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let reply = client
            .send("GET", PATH, &[("x-api-key", &key)], "")
            .await
            .unwrap();
        assert_eq!(
            reply.status, 200,
            "the key was dropped by the reload: {:?}",
            reply.body
        );
    })
    .await;
}

#[tokio::test]
async fn a_key_revoked_through_the_cli_is_refused_by_every_replica_within_a_second() {
    within(async {
        let Some(redis) = RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let config = keys_in_redis(&pki, &upstream, &redis);
        let a = Gateway::start(&config, &[]).await;
        let b = Gateway::start(&config, &[]).await;
        let (file, key) = create_key(&pki, &config).await;
        let id = key.split('_').nth(1).unwrap().to_owned();
        // Created on no replica in particular: both take it within their reload interval.
        for gw in [&a, &b] {
            until_accepted(&Client::new(&pki, Some(ONBOARDING), gw.port, false), &key).await;
        }

        let (code, _, err) = tokio::task::spawn_blocking({
            let file = file.clone();
            move || idgate_cli(&["keys", "revoke", "--config", &file, "--id", &id])
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "{err}");
        let revoked_at = Instant::now();
        let mut clients =
            [a.port, b.port].map(|port| Client::new(&pki, Some(ONBOARDING), port, false));
        let mut refused = [None, None];
        while refused.iter().any(Option::is_none) && revoked_at.elapsed() < Duration::from_secs(5) {
            for (i, client) in clients.iter_mut().enumerate() {
                if refused[i].is_some() {
                    continue;
                }
                let reply = client
                    .send("GET", PATH, &[("x-api-key", &key)], "")
                    .await
                    .unwrap();
                if reply.status == 401 {
                    refused[i] = Some(revoked_at.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (i, took) in refused.iter().enumerate() {
            let took = took.unwrap_or_else(|| panic!("replica {i} still accepts the revoked key"));
            println!("replica {i} refused the revoked key after {took:?}");
            assert!(took < Duration::from_secs(1), "replica {i} took {took:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn redis_killed_under_load_leaves_each_route_to_its_fail_mode_until_it_is_back() {
    within(async {
        let Some(mut redis) = RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let limit = table([
            ("name", "per-workload".into()),
            ("key", strings(&["spiffe_id", "route"])),
            ("rate", "3/m".into()),
        ]);
        let route = |name: &str, path: &str, mode: &str| {
            RouteSpec::new(name, &["GET"], path, "provider", &[ONBOARDING])
                .with("rate_limits", strings(&["per-workload"]))
                .with("on_state_error", mode)
        };
        let config = base_config(&pki)
            .section("state", redis_state(&[redis.url()]))
            .section("rate_limits", toml::Value::Array(vec![limit.into()]))
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(route("open", "/open/{*rest}", "fail_open"))
            .route(route("closed", "/closed/{*rest}", "fail_closed"));
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(client.get("/open/x").await.unwrap().status, 200);
        assert_eq!(client.get("/closed/x").await.unwrap().status, 200);

        // Load on both routes while Redis goes away.
        let load = {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..60 {
                    let path = if i % 2 == 0 { "/open/y" } else { "/closed/y" };
                    let started = Instant::now();
                    let status = client.get(path).await.map(|r| r.status).unwrap_or(0);
                    statuses.push((path, status, started.elapsed()));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                statuses
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.kill();
        let statuses = load.await.unwrap();
        assert!(
            statuses.iter().all(|(_, s, _)| [200, 429, 503].contains(s)),
            "{statuses:?}"
        );
        // With Redis gone, the open route serves and the closed one refuses.
        let open = client.get("/open/z").await.unwrap();
        assert_eq!(open.status, 200, "{:?}", open.body);
        let closed = client.get("/closed/z").await.unwrap();
        assert_eq!(closed.status, 503, "{:?}", closed.body);
        assert_eq!(
            closed.json()["type"],
            "https://idgate.dev/problems/state-unavailable"
        );
        assert!(closed.header("retry-after").is_some());
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(metrics.contains("idgate_state_errors_total"), "{metrics}");

        // Redis back (empty: it kept nothing): the shared limit applies again.
        redis.restart();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let status = client.get("/closed/after").await.unwrap().status;
            seen.push(status);
            if status == 429 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the limit never applied again: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Three admitted after the restart, then refused: counted in Redis again.
        assert_eq!(seen.iter().filter(|s| **s == 200).count(), 3, "{seen:?}");
        let out = gw.output();
        assert!(!out.contains("panicked"), "{out}");
    })
    .await;
}

/// In a Redis Cluster each limit is decided on its own: with the master of one limit's key
/// frozen, a request is still refused by another limit whose master answered, though the
/// route fails open for the limit that got no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_cluster_outage_still_enforces_the_limits_redis_answered() {
    within(async {
        let Some(cluster) = RedisCluster::start() else {
            return;
        };
        // Two limits on the route whose keys live on two different masters.
        let master = |name: &str| cluster.master_of(&format!("{{rl:{name}:route=route}}"));
        let tight = "tight";
        let loose = (0..64)
            .map(|i| format!("loose-{i}"))
            .find(|name| master(name) != master(tight))
            .unwrap();
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let limit = |name: &str, rate: &str, burst: i64| {
            toml::Value::from(table([
                ("name", name.into()),
                ("key", strings(&["route"])),
                ("rate", rate.into()),
                ("burst", burst.into()),
            ]))
        };
        let config = base_config(&pki)
            .section("state", redis_state(&cluster.urls()))
            .section(
                "rate_limits",
                toml::Value::Array(vec![limit(tight, "2/m", 2), limit(&loose, "100/m", 100)]),
            )
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(
                RouteSpec::new("route", &["GET"], "/v1/{*rest}", "provider", &[ONBOARDING])
                    .with("rate_limits", strings(&[tight, &loose]))
                    .with("on_state_error", "fail_open"),
            );
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for _ in 0..2 {
            let reply = client.get(PATH).await.unwrap();
            assert_eq!(reply.status, 200, "{:?}", reply.body);
        }

        let frozen = master(&loose);
        cluster.pause_node(frozen);
        let reply = client.get(PATH).await;
        cluster.resume_node(frozen);
        let reply = reply.unwrap();
        assert_eq!(reply.status, 429, "{:?}\n{}", reply.body, gw.output());
        assert_eq!(
            reply.json()["type"],
            "https://idgate.dev/problems/rate-limited"
        );
        // The refusal is the tight limit's (the loose one, at 100/m, has room; its node did
        // not answer and it failed open). Both are budgets every caller of the route shares,
        // so neither is in the RateLimit fields.
        assert!(reply.header("retry-after").is_some());
        assert_eq!(reply.header("ratelimit"), None);
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_rate_limited_total{route=\"route\",limit=\"tight\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("state_errors_total{operation=\"gcra\"} 1"),
            "{metrics}"
        );
    })
    .await;
}
