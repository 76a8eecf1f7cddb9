//! Rate limits (GCRA) and lockouts over real sockets: the admitted rate under ten times the
//! load, another caller unaffected, the RateLimit headers, tiers, lockouts and their expiry,
//! and lockouts at the token endpoint.

use std::time::{Duration, Instant};

use base64::Engine;

use crate::assert_eventually;
use crate::support::*;
use crate::tokens::{FORM, signing_key};

const PATH: &str = "/v1/anything";

/// `[[rate_limits]]` entries.
fn limits(entries: Vec<toml::Table>) -> toml::Value {
    toml::Value::Array(entries.into_iter().map(toml::Value::from).collect())
}

/// A gateway with one route for ONBOARDING and FRONTEND, limited by `route_limits`, and
/// `sections` added at the top.
async fn limited_gateway(
    pki: &Pki,
    upstream: &TestUpstream,
    route_limits: &[&str],
    sections: Vec<(&str, toml::Value)>,
) -> Gateway {
    let mut config = base_config(pki)
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(
            RouteSpec::new(
                "route",
                &["GET"],
                "/v1/{*rest}",
                "provider",
                &[ONBOARDING, FRONTEND],
            )
            .with("rate_limits", strings(route_limits)),
        );
    for (name, value) in sections {
        config = config.section(name, value);
    }
    Gateway::start(&config, &[]).await
}

#[tokio::test]
async fn under_ten_times_the_load_the_admitted_rate_stays_at_the_limit_and_others_pass() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        const RATE: f64 = 20.0;
        const BURST: f64 = 5.0;
        let per_workload = table([
            ("name", "per-workload".into()),
            ("key", strings(&["spiffe_id"])),
            ("rate", "20/s".into()),
            ("burst", 5.into()),
        ]);
        let gw = limited_gateway(
            &pki,
            &upstream,
            &["per-workload"],
            vec![("rate_limits", limits(vec![per_workload]))],
        )
        .await;

        // Ten times the rate, from a bounded number of concurrent senders, for three
        // seconds: what counts is how many were admitted, not how fast the machine is.
        // Each sender: 25 a second, so 200 a second together; a response may take up to
        // 40 ms before a sender falls behind.
        let senders = vec![Client::new(&pki, Some(ONBOARDING), gw.port, true); 8];
        let load = tokio::spawn(paced_load(
            senders,
            PATH,
            Duration::from_millis(40),
            Duration::from_secs(3),
        ));
        // Meanwhile another workload, with its own budget, is never refused.
        let other = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let mut other_conn = other.connect().await.unwrap();
        for _ in 0..5 {
            let reply = other_conn.send("GET", PATH, &[], "").await.unwrap();
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let count = load.await.unwrap();
        let elapsed = count.elapsed.as_secs_f64();
        let admitted = count.admitted as f64;
        let refused = count.refused as f64;
        let allowed = RATE * elapsed + BURST;
        println!("{admitted} admitted, {refused} refused in {elapsed:.2}s; {allowed:.1} allowed");
        // Ten times the limit was sent; on a slow machine at least three times must have
        // arrived for the test to say anything.
        assert!(
            refused >= 2.0 * admitted,
            "the load was not several times the limit: {admitted} admitted, {refused} refused"
        );
        assert!(
            admitted <= allowed + 1.0,
            "{admitted} admitted in {elapsed:.2}s, at most {allowed:.1} allowed"
        );
        assert!(
            admitted >= 0.95 * RATE * elapsed,
            "{admitted} admitted in {elapsed:.2}s: under 95% of the limit"
        );
        // The refusals are in the access log, with their reason, and counted.
        assert_eventually!(
            gw.output().contains("denied:rate-limited"),
            "no refusal in the access log:\n{}",
            gw.output()
        );
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_rate_limited_total{route=\"route\",limit=\"per-workload\"}"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn the_ratelimit_headers_come_with_every_answer_and_retry_after_with_a_refusal_but_never_show_a_shared_budget()
 {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let defs = vec![
            table([
                ("name", "per-ip".into()),
                ("key", strings(&["source_ip"])),
                ("rate", "2/m".into()),
            ]),
            table([
                ("name", "per-route".into()),
                ("key", strings(&["route"])),
                ("count", 100.into()),
                ("period", "10s".into()),
                ("burst", 50.into()),
            ]),
        ];
        let gw = limited_gateway(
            &pki,
            &upstream,
            &["per-route", "per-ip"],
            vec![("rate_limits", limits(defs))],
        )
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        // The route's own budget, shared by every caller, is left out: its `r` would tell
        // this caller how many requests the others sent.
        let policy = "\"per-ip\";q=2;w=60";
        for r in [1, 0] {
            let reply = client.get(PATH).await.unwrap();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.header("ratelimit-policy"), Some(policy));
            let state = reply.header("ratelimit").unwrap();
            assert!(
                state.starts_with(&format!("\"per-ip\";r={r};t=")) && !state.contains(','),
                "{state}"
            );
        }
        let reply = client.get(PATH).await.unwrap();
        assert_eq!(reply.status, 429, "{:?}", reply.body);
        assert_eq!(
            reply.json()["type"],
            "https://idgate.dev/problems/rate-limited"
        );
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        // One request every 30 s: the next is due in 30 s, rounded up to whole seconds.
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((29..=30).contains(&retry), "Retry-After {retry}");
        assert_eq!(reply.header("ratelimit-policy"), Some(policy));
        let state = reply.header("ratelimit").unwrap();
        assert!(
            state.ends_with(&format!("\"per-ip\";r=0;t={retry}")),
            "{state}"
        );
        assert_eq!(
            upstream.requests().len(),
            2,
            "a refused request went upstream"
        );
    })
    .await;
}

#[tokio::test]
async fn with_a_redb_backend_rate_limits_are_counted_in_memory_never_in_the_file() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let file = pki.path().join("state.redb");
        let def = table([
            ("name", "per-ip".into()),
            ("key", strings(&["source_ip"])),
            ("rate", "3/m".into()),
        ]);
        let state = table([("backend", "redb".into()), ("path", path_value(&file))]);
        let gw = limited_gateway(
            &pki,
            &upstream,
            &["per-ip"],
            vec![("rate_limits", limits(vec![def])), ("state", state.into())],
        )
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for expected in [200, 200, 200, 429] {
            assert_eq!(client.get(PATH).await.unwrap().status, expected);
        }
        drop(gw);
        // Not one counter in the file: sweeping everything as of next year removes nothing.
        let store = idgate_store::RedbStore::open(&file, Duration::from_secs(5)).unwrap();
        let next_year = std::time::SystemTime::now() + Duration::from_secs(366 * 24 * 3600);
        let rows = idgate_store::Counters::sweep(&store, next_year)
            .await
            .unwrap();
        assert_eq!(rows, 0);
    })
    .await;
}

#[tokio::test]
async fn a_tier_gives_its_workloads_their_own_rate() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut def = table([
            ("name", "per-workload".into()),
            ("key", strings(&["spiffe_id"])),
            ("rate", "2/m".into()),
        ]);
        def.insert(
            "tiers".to_owned(),
            table([("gold", table([("rate", "5/m".into())]).into())]).into(),
        );
        let tiers = toml::Value::Array(vec![
            table([
                ("spiffe", "spiffe://example.org/ns/kyc/*".into()),
                ("tier", "gold".into()),
            ])
            .into(),
        ]);
        let gw = limited_gateway(
            &pki,
            &upstream,
            &["per-workload"],
            vec![("rate_limits", limits(vec![def])), ("tiers", tiers)],
        )
        .await;
        for (id, admitted, q) in [(ONBOARDING, 5, 5), (FRONTEND, 2, 2)] {
            let client = Client::new(&pki, Some(id), gw.port, false);
            for _ in 0..admitted {
                let reply = client.get(PATH).await.unwrap();
                assert_eq!(reply.status, 200, "{id}");
                assert_eq!(
                    reply.header("ratelimit-policy"),
                    Some(format!("\"per-workload\";q={q};w=60").as_str())
                );
            }
            assert_eq!(client.get(PATH).await.unwrap().status, 429, "{id}");
        }
    })
    .await;
}

/// Two workloads behind one address, one of them in the gold tier, under a limit by
/// address: the default tier's request, well within its rate, leaves the gold tier its own
/// budget (and the other way round), in memory and in Redis.
#[tokio::test]
async fn a_lower_tier_caller_within_its_rate_does_not_refuse_a_higher_tier_caller_sharing_the_key()
{
    within(async {
        let redis = idgate_store::redis_testing::RedisServer::start();
        let mut backends = vec![None];
        if let Some(redis) = &redis {
            let state = table([("backend", "redis".into()), ("url", redis.url().into())]);
            backends.push(Some(state));
        }
        for state in backends {
            let pki = Pki::default_pki();
            let upstream = TestUpstream::http(UpstreamMode::Echo).await;
            let mut def = table([
                ("name", "per-ip".into()),
                ("key", strings(&["source_ip"])),
                ("rate", "30/m".into()),
            ]);
            let gold = table([("rate", "1000/s".into()), ("burst", 200.into())]);
            def.insert("tiers".to_owned(), table([("gold", gold.into())]).into());
            let tiers = toml::Value::Array(vec![
                table([
                    ("spiffe", "spiffe://example.org/ns/kyc/*".into()),
                    ("tier", "gold".into()),
                ])
                .into(),
            ]);
            let backend = if state.is_some() { "redis" } else { "memory" };
            let mut sections = vec![("rate_limits", limits(vec![def])), ("tiers", tiers)];
            if let Some(state) = state {
                sections.push(("state", state.into()));
            }
            let gw = limited_gateway(&pki, &upstream, &["per-ip"], sections).await;
            // Both connect from 127.0.0.1: the key does not tell them apart.
            let plain = Client::new(&pki, Some(FRONTEND), gw.port, false);
            let gold = Client::new(&pki, Some(ONBOARDING), gw.port, false);
            let reply = plain.get(PATH).await.unwrap();
            assert_eq!(reply.status, 200, "{backend}: {:?}", reply.body);
            let mut conn = gold.connect().await.unwrap();
            for n in 0..20 {
                let reply = conn.send("GET", PATH, &[], "").await.unwrap();
                assert_eq!(
                    reply.status, 200,
                    "{backend}: gold request {n}: {:?}",
                    reply.body
                );
                assert_eq!(
                    reply.header("ratelimit-policy"),
                    Some("\"per-ip\";q=1000;w=1")
                );
            }
            let reply = plain.get(PATH).await.unwrap();
            assert_eq!(reply.status, 200, "{backend}: {:?}", reply.body);
            assert_eq!(
                reply.header("ratelimit-policy"),
                Some("\"per-ip\";q=30;w=60")
            );
        }
        // In Redis each tier has a state of its own.
        if let Some(redis) = &redis {
            let keys = redis.query("KEYS *");
            assert!(
                keys.contains("rl:per-ip@gold:source_ip=127.0.0.1"),
                "{keys}"
            );
            assert!(keys.contains("rl:per-ip:source_ip=127.0.0.1"), "{keys}");
        }
    })
    .await;
}

/// When several limits refuse, `Retry-After` is the longest of their waits: a caller that
/// waits that long is admitted, one that waits for the shortest is refused again.
#[tokio::test]
async fn retry_after_is_the_longest_wait_of_the_limits_that_refused() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let defs = vec![
            table([
                ("name", "per-ip-second".into()),
                ("key", strings(&["source_ip"])),
                ("rate", "10/s".into()),
                ("burst", 1.into()),
            ]),
            table([
                ("name", "per-ip-minute".into()),
                ("key", strings(&["source_ip"])),
                ("rate", "1/m".into()),
                ("burst", 1.into()),
            ]),
        ];
        let gw = limited_gateway(
            &pki,
            &upstream,
            &["per-ip-second", "per-ip-minute"],
            vec![("rate_limits", limits(defs))],
        )
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(client.get(PATH).await.unwrap().status, 200);
        let reply = client.get(PATH).await.unwrap();
        assert_eq!(reply.status, 429, "{:?}", reply.body);
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((59..=60).contains(&retry), "Retry-After {retry}");
        let detail = reply.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(detail.contains("\"per-ip-minute\""), "{detail}");
    })
    .await;
}

/// A gateway whose route takes the SVID alone or with an API key, and `[lockout]` as given.
async fn lockout_gateway(pki: &Pki, upstream: &TestUpstream, lockout: toml::Table) -> Gateway {
    lockout_gateway_on(pki, upstream, lockout, None).await
}

/// The same, with `[state]` as given.
async fn lockout_gateway_on(
    pki: &Pki,
    upstream: &TestUpstream,
    lockout: toml::Table,
    state: Option<toml::Table>,
) -> Gateway {
    Gateway::start(&lockout_config(pki, upstream, lockout, state), &[]).await
}

/// The configuration of [`lockout_gateway_on`], also written to `idgate.toml` in the PKI's
/// directory for the `idgate keys` CLI.
fn lockout_config(
    pki: &Pki,
    upstream: &TestUpstream,
    lockout: toml::Table,
    state: Option<toml::Table>,
) -> GatewayConfig {
    let pepper = pki.path().join("pepper");
    std::fs::write(&pepper, "0123456789abcdef0123456789abcdef-pepper").unwrap();
    std::fs::set_permissions(&pepper, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let any = toml::toml! { any = ["mtls", "api_key"] };
    let config = base_config(pki)
        .section(
            "api_keys",
            table([
                ("store", path_value(&pki.path().join("keys.redb"))),
                ("pepper", format!("file:{}", pepper.display()).into()),
            ]),
        )
        .section("lockout", lockout)
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(
            RouteSpec::new("route", &["GET"], "/v1/{*rest}", "provider", &[ONBOARDING])
                .with("auth", toml::Value::Array(vec![any.into()])),
        );
    let config = match state {
        Some(state) => config.section("state", state),
        None => config,
    };
    std::fs::write(pki.path().join("idgate.toml"), config.to_toml()).unwrap();
    config
}

/// `idgate keys ARGS` on the configuration [`lockout_config`] wrote, off the runtime.
async fn keys_cli(pki: &Pki, args: &[&str]) -> (i32, String, String) {
    let config = pki.path().join("idgate.toml").display().to_string();
    let mut all = vec![
        "keys".to_owned(),
        args[0].to_owned(),
        "--config".to_owned(),
        config,
    ];
    all.extend(args[1..].iter().map(|a| (*a).to_owned()));
    tokio::task::spawn_blocking(move || {
        idgate_cli(&all.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// A real key made with the CLI, presented with a wrong secret: a failure counted against
/// a key id that exists.
async fn real_key_wrong_secret(pki: &Pki, name: &str) -> String {
    let (code, out, err) = keys_cli(pki, &["create", "--name", name]).await;
    assert_eq!(code, 0, "{err}");
    let key = out.trim();
    let last = if key.ends_with('a') { 'b' } else { 'a' };
    format!("{}{last}", &key[..key.len() - 1])
}

fn bogus_key(c: char) -> String {
    format!("idg_{}_{}", c.to_string().repeat(16), "b".repeat(52))
}

#[tokio::test]
async fn a_source_is_locked_out_after_failures_until_the_cooldown_ends() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let lockout = table([
            ("max_failures", 3.into()),
            ("window", "1m".into()),
            ("cooldown", "2s".into()),
            ("by", strings(&["source_ip"])),
        ]);
        let gw = lockout_gateway(&pki, &upstream, lockout).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(client.get(PATH).await.unwrap().status, 200);
        let key = bogus_key('a');
        for _ in 0..3 {
            let reply = client
                .send("GET", PATH, &[("x-api-key", &key)], "")
                .await
                .unwrap();
            assert_eq!(reply.status, 401, "{:?}", reply.body);
        }
        // Locked out: even the SVID alone, which would pass, is refused before it is looked at.
        let locked_at = Instant::now();
        let reply = client.get(PATH).await.unwrap();
        assert_eq!(reply.status, 429, "{:?}", reply.body);
        assert_eq!(
            reply.json()["type"],
            "https://idgate.dev/problems/locked-out"
        );
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        // The line reaches the output through the log's writer thread: wait for it.
        assert_eventually!(
            gw.output()
                .contains("locked out after failed authentications"),
            "no lockout line: {}",
            gw.output()
        );
        assert!(!gw.output().contains(&key), "a presented key was logged");
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_lockouts_total{by=\"source_ip\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("idgate_lockout_refusals_total{by=\"source_ip\"} 1"),
            "{metrics}"
        );
        // And over when the cool-down is.
        tokio::time::sleep_until((locked_at + Duration::from_millis(2100)).into()).await;
        assert_eq!(client.get(PATH).await.unwrap().status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_lockout_kept_in_a_redb_state_file_outlives_the_gateway() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let lockout = table([
            ("max_failures", 2.into()),
            ("cooldown", "1m".into()),
            ("by", strings(&["source_ip"])),
        ]);
        let state = table([
            ("backend", "redb".into()),
            ("path", path_value(&pki.path().join("state.redb"))),
        ]);
        let gw = lockout_gateway_on(&pki, &upstream, lockout.clone(), Some(state.clone())).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let key = bogus_key('a');
        for _ in 0..2 {
            let reply = client
                .send("GET", PATH, &[("x-api-key", &key)], "")
                .await
                .unwrap();
            assert_eq!(reply.status, 401, "{:?}", reply.body);
        }
        assert_eq!(client.get(PATH).await.unwrap().status, 429);
        drop(gw);
        // Another gateway on the same file: the lockout is still there.
        let gw = lockout_gateway_on(&pki, &upstream, lockout, Some(state)).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let reply = client.get(PATH).await.unwrap();
        assert_eq!(reply.status, 429, "{:?}", reply.body);
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((50..=60).contains(&retry), "Retry-After {retry}");
    })
    .await;
}

#[tokio::test]
async fn a_locked_out_api_key_leaves_other_keys_and_callers_alone() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let lockout = table([
            ("max_failures", 2.into()),
            ("window", "1m".into()),
            ("cooldown", "1m".into()),
            ("by", strings(&["api_key_id"])),
        ]);
        let config = lockout_config(&pki, &upstream, lockout, None);
        // Keys that exist, guessed at: each id is counted on its own.
        let a = real_key_wrong_secret(&pki, "a").await;
        let b = real_key_wrong_secret(&pki, "b").await;
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for expected in [401, 401, 429, 429] {
            let reply = client
                .send("GET", PATH, &[("x-api-key", &a)], "")
                .await
                .unwrap();
            assert_eq!(reply.status, expected, "{:?}", reply.body);
        }
        let reply = client
            .send("GET", PATH, &[("x-api-key", &b)], "")
            .await
            .unwrap();
        assert_eq!(reply.status, 401, "another key is not locked out");
        assert_eq!(client.get(PATH).await.unwrap().status, 200);
        // A made-up id is locked out after as many failures (in the counter it shares).
        let made_up = bogus_key('c');
        for expected in [401, 401, 429] {
            let reply = client
                .send("GET", PATH, &[("x-api-key", &made_up)], "")
                .await
                .unwrap();
            assert_eq!(reply.status, expected, "{:?}", reply.body);
        }
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_lockout_refusals_total{by=\"api_key_id\"} 3"),
            "{metrics}"
        );
    })
    .await;
}

/// How many guesses [`at_once`] sends.
const GUESSES: usize = 40;

/// One request of a burst.
struct Sent {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
}

impl Sent {
    fn get<const N: usize>(path: &'static str, headers: [(&'static str, String); N]) -> Self {
        Self {
            method: "GET",
            path,
            headers: headers.into(),
            body: "",
        }
    }
}

/// [`GUESSES`] requests sent at once, one per connection (each connected first, so that they
/// arrive together): `request(i)` makes the `i`th. Their statuses.
async fn at_once(client: &Client, request: impl Fn(usize) -> Sent) -> Vec<u16> {
    let mut connections = Vec::with_capacity(GUESSES);
    for _ in 0..GUESSES {
        connections.push(client.connect().await.unwrap());
    }
    let mut burst = tokio::task::JoinSet::new();
    for (i, mut connection) in connections.into_iter().enumerate() {
        let sent = request(i);
        burst.spawn(async move {
            let headers: Vec<(&str, &str)> =
                sent.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let reply = connection
                .send(sent.method, sent.path, &headers, sent.body)
                .await
                .unwrap();
            reply.status
        });
    }
    burst.join_all().await
}

/// Every guess of a burst was answered 401 (judged) or 429 (held), and at most `most` were
/// judged.
fn judged_at_most(statuses: &[u16], most: usize) {
    let answered = statuses.iter().filter(|&&s| s == 401).count();
    let locked = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(answered + locked, GUESSES, "{statuses:?}");
    assert!(
        answered <= most,
        "{answered} guesses were judged: {statuses:?}"
    );
}

/// Guesses sent all at once, one per connection, at a key that exists: each is checked
/// against the shared lockout before the failures of the others are written, so the shared
/// count alone would answer every one of them. The gateway also counts each failure as it
/// is judged: once `max_failures` wrong guesses were answered, the rest get 429, right or
/// wrong, and the key holder's right secret too until the cool-down ends.
#[tokio::test]
async fn guesses_sent_at_once_get_no_more_answers_than_max_failures() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let lockout = table([
            ("max_failures", 3.into()),
            ("window", "1m".into()),
            ("cooldown", "1m".into()),
            ("by", strings(&["api_key_id"])),
        ]);
        // A backend the requests wait on (redb answers on a blocking thread), as Redis.
        let state = table([
            ("backend", "redb".into()),
            ("path", path_value(&pki.path().join("state.redb"))),
        ]);
        let config = lockout_config(&pki, &upstream, lockout, Some(state));
        let (code, out, err) = keys_cli(&pki, &["create", "--name", "held"]).await;
        assert_eq!(code, 0, "{err}");
        let right = out.trim().to_owned();
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let statuses = at_once(&client, |i| {
            // The key's id, each guess a different wrong secret.
            let tail = char::from(b'a' + u8::try_from(i % 26).unwrap());
            let mut guess = format!(
                "{}{}",
                &right[..right.len() - 2],
                tail.to_string().repeat(2)
            );
            if guess == right {
                guess = format!("{}22", &right[..right.len() - 2]);
            }
            Sent::get(PATH, [("x-api-key", guess)])
        })
        .await;
        judged_at_most(&statuses, 3);
        // The right secret now gets the same answer as a wrong one.
        let reply = client
            .send("GET", PATH, &[("x-api-key", &right)], "")
            .await
            .unwrap();
        assert_eq!(reply.status, 429, "{:?}", reply.body);
        assert!(!gw.output().contains(&right[20..]), "a secret was logged");
    })
    .await;
}

/// Made-up API key ids share a fixed number of lockout counters, so that a caller making
/// them up cannot grow the state store without end; a real key's id keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_api_key_ids_create_a_bounded_number_of_lockout_keys() {
    within(async {
        let Some(redis) = idgate_store::redis_testing::RedisServer::start() else {
            return;
        };
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let lockout = table([
            ("max_failures", 3.into()),
            ("window", "1m".into()),
            ("cooldown", "1m".into()),
            ("by", strings(&["api_key_id"])),
        ]);
        let state = table([("backend", "redis".into()), ("url", redis.url().into())]);
        let config = lockout_config(&pki, &upstream, lockout, Some(state));
        let real = real_key_wrong_secret(&pki, "batch").await;
        let gw = Gateway::start(&config, &[]).await;

        // More made-up ids than there are shared counters, over kept-alive connections.
        const GUESSES: usize = 5000;
        const CONNECTIONS: usize = 50;
        let mut flood = tokio::task::JoinSet::new();
        for c in 0..CONNECTIONS {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
            flood.spawn(async move {
                let mut conn = client.connect().await.unwrap();
                for i in (c..GUESSES).step_by(CONNECTIONS) {
                    let guess = made_up_key(i + 1);
                    let headers = [("x-api-key", guess.as_str())];
                    let reply = match conn.send("GET", PATH, &headers, "").await {
                        Ok(reply) => reply,
                        Err(_) => {
                            conn = client.connect().await.unwrap();
                            conn.send("GET", PATH, &headers, "").await.unwrap()
                        }
                    };
                    assert!([401, 429].contains(&reply.status), "{:?}", reply.body);
                }
            });
        }
        while let Some(done) = flood.join_next().await {
            done.unwrap();
        }
        let keys: usize = redis
            .query("DBSIZE")
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap();
        assert!(
            keys > 0 && keys <= 4096,
            "{keys} keys for {GUESSES} made-up ids"
        );

        // A real key's id is counted, and locked out, under its own key.
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for expected in [401, 401, 401, 429] {
            let reply = client
                .send("GET", PATH, &[("x-api-key", &real)], "")
                .await
                .unwrap();
            assert_eq!(reply.status, expected, "{:?}", reply.body);
        }
        let lockout_key = format!("idgate:w:{{lockout:api_key_id={}}}", &real[4..20]);
        assert_eq!(redis.query(&format!("EXISTS {lockout_key}")).trim(), ":1");
    })
    .await;
}

/// A token endpoint with a client `batch` (secret `batch-client-secret-value`) and
/// `onboarding` (its SVID), a lockout by token client after 2 failures, and `[state]` as
/// given.
pub(crate) fn token_lockout_config(
    pki: &Pki,
    upstream: &TestUpstream,
    state: Option<toml::Table>,
) -> GatewayConfig {
    let key = signing_key(pki.path());
    let secret_file = pki.path().join("batch-secret");
    std::fs::write(&secret_file, "batch-client-secret-value").unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let clients = [
        table([
            ("client_id", "onboarding".into()),
            ("spiffe_id", ONBOARDING.into()),
            ("scopes", strings(&["sessions:read"])),
        ]),
        table([
            ("client_id", "batch".into()),
            (
                "client_secret",
                format!("file:{}", secret_file.display()).into(),
            ),
            ("scopes", strings(&["sessions:read"])),
        ]),
    ];
    let config = base_config(pki)
        .section(
            "token_endpoint",
            table([
                ("issuer", "https://idgate.test".into()),
                ("audience", "idgate".into()),
                ("signing_key", format!("file:{}", key.display()).into()),
                ("clients", clients.map(toml::Value::from).to_vec().into()),
            ]),
        )
        .section(
            "lockout",
            table([
                ("max_failures", 2.into()),
                ("cooldown", "1m".into()),
                ("by", strings(&["token_client"])),
            ]),
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(RouteSpec::get("route", "/v1/{*rest}", "provider"));
    match state {
        Some(state) => config.section("state", state),
        None => config,
    }
}

/// `Authorization: Basic` for the client `batch` and `secret`.
pub(crate) fn batch_basic(secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("batch:{secret}"))
    )
}

#[tokio::test]
async fn a_token_client_guessed_at_is_locked_out_and_others_still_get_tokens() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let config = token_lockout_config(&pki, &upstream, None);
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let basic = batch_basic;
        let token = |auth: Option<String>, form: String| {
            let client = &client;
            async move {
                let mut headers = vec![FORM];
                let auth = auth.unwrap_or_default();
                if !auth.is_empty() {
                    headers.push(("authorization", auth.as_str()));
                }
                client
                    .send("POST", "/oauth2/token", &headers, &form)
                    .await
                    .unwrap()
            }
        };
        let grant = "grant_type=client_credentials".to_owned();
        let post = |secret: &str| format!("{grant}&client_id=batch&client_secret={secret}");
        // One wrong secret by HTTP Basic, one in the form: both count against the client.
        let reply = token(Some(basic("wrong")), grant.clone()).await;
        assert_eq!(reply.status, 401, "{:?}", reply.body);
        let reply = token(None, post("wrong")).await;
        assert_eq!(reply.status, 401, "{:?}", reply.body);
        // The right secret now comes too late, either way: the client is locked out before
        // its secret is compared.
        for (auth, form) in [
            (Some(basic("batch-client-secret-value")), grant.clone()),
            (None, post("batch-client-secret-value")),
        ] {
            let reply = token(auth, form).await;
            assert_eq!(reply.status, 429, "{:?}", reply.body);
            assert_eq!(
                reply.json()["type"],
                "https://idgate.dev/problems/locked-out"
            );
            let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
            assert!((50..=60).contains(&retry), "Retry-After {retry}");
        }
        // A client authenticating with its SVID is not affected.
        let reply = token(None, grant.clone()).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    })
    .await;
}

/// The same guessing at a client's secret, the guesses sent at once on a backend the
/// requests wait on: no more than `max_failures` are answered, and the right secret is
/// refused with them.
#[tokio::test]
async fn guesses_at_a_token_clients_secret_sent_at_once_get_no_more_answers_than_max_failures() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let state = table([
            ("backend", "redb".into()),
            ("path", path_value(&pki.path().join("state.redb"))),
        ]);
        let config = token_lockout_config(&pki, &upstream, Some(state));
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let statuses = at_once(&client, |i| Sent {
            method: "POST",
            path: "/oauth2/token",
            headers: vec![
                (FORM.0, FORM.1.to_owned()),
                ("authorization", batch_basic(&format!("guess-{i}"))),
            ],
            body: "grant_type=client_credentials",
        })
        .await;
        judged_at_most(&statuses, 2);
        let auth = batch_basic("batch-client-secret-value");
        let reply = client
            .send(
                "POST",
                "/oauth2/token",
                &[FORM, ("authorization", &auth)],
                "grant_type=client_credentials",
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 429, "{:?}", reply.body);
    })
    .await;
}

/// A well-formed API key whose id nobody was given: the `n`th of a flood of guesses.
fn made_up_key(n: usize) -> String {
    const BASE32: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    let id: String = (0..16)
        .map(|i| char::from(BASE32[(n >> (5 * (i % 4))) % 32]))
        .rev()
        .collect();
    format!("idg_{id}_{}", "q".repeat(52))
}

/// How many threads the process `pid` runs.
fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Failed logins on a redb state file whose writes cannot keep up (here: its write lock
/// held by another process, as the `idgate keys` CLI or a stalled disk would hold it) wait in
/// a bounded queue for the file: they do not take a blocking thread each, so the API key
/// reload still runs and a revoked key is refused on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_auth_flood_on_redb_keeps_lockout_writes_bounded() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let pepper = pki.path().join("pepper");
        write_private(&pepper, b"0123456789abcdef0123456789abcdef-pepper");
        let state_file = pki.path().join("state.redb");
        let config = base_config(&pki)
            .section(
                "api_keys",
                table([
                    ("store", path_value(&pki.path().join("keys.redb"))),
                    ("pepper", format!("file:{}", pepper.display()).into()),
                    ("reload_interval", "200ms".into()),
                ]),
            )
            .section(
                "state",
                table([
                    ("backend", "redb".into()),
                    ("path", path_value(&state_file)),
                ]),
            )
            .section(
                "lockout",
                table([
                    ("max_failures", 1000.into()),
                    ("window", "1m".into()),
                    ("cooldown", "1m".into()),
                    ("by", strings(&["api_key_id"])),
                ]),
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
                .with("auth", strings(&["mtls", "api_key"])),
            );
        let config_file = pki.path().join("idgate.toml");
        std::fs::write(&config_file, config.to_toml()).unwrap();
        let keys = |args: &[&str]| {
            let mut all = vec!["keys", args[0], "--config", config_file.to_str().unwrap()];
            all.extend(&args[1..]);
            let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
            tokio::task::spawn_blocking(move || {
                idgate_cli(&all.iter().map(String::as_str).collect::<Vec<_>>())
            })
        };
        let (code, out, err) = keys(&["create", "--name", "batch"]).await.unwrap();
        assert_eq!(code, 0, "{err}");
        let key = out.trim().to_owned();
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let with_key = |key: String| {
            let client = &client;
            async move {
                client
                    .send("GET", PATH, &[("x-api-key", &key)], "")
                    .await
                    .unwrap()
                    .status
            }
        };
        assert_eq!(with_key(key.clone()).await, 200);
        let threads_before = threads_of(gw.child.id());

        // The file is held; a flood of made-up keys, each failure a lockout write.
        let held = idgate_store::redb_testing::HeldWrites::on(&state_file);
        let mut flood = tokio::task::JoinSet::new();
        for task in 0..100 {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
            flood.spawn(async move {
                for i in 0..7 {
                    let guess = made_up_key(task * 7 + i + 1);
                    let reply = client
                        .send("GET", PATH, &[("x-api-key", &guess)], "")
                        .await
                        .unwrap();
                    assert_eq!(reply.status, 401, "{:?}", reply.body);
                }
            });
        }
        while let Some(done) = flood.join_next().await {
            done.unwrap();
        }
        let threads = threads_of(gw.child.id());
        println!("{threads} threads after the flood, {threads_before} before");
        assert!(
            threads < threads_before + 100,
            "{threads} threads after the flood, {threads_before} before"
        );

        // The key is revoked meanwhile: the gateway's reload still runs, and refuses it.
        let (code, _, err) = keys(&["revoke", "--id", &key[4..20]]).await.unwrap();
        assert_eq!(code, 0, "{err}");
        let revoked = Instant::now();
        let status = loop {
            let status = with_key(key.clone()).await;
            if status != 200 || revoked.elapsed() > Duration::from_secs(3) {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(status, 401, "the revoked key still works\n{}", gw.output());
        drop(held);
    })
    .await;
}

/// libfaketime, preloaded into the gateway alone to set its system clock
/// (`scripts/setup-test-deps.sh` installs it); `None` when it is not there, and then the test
/// is skipped, but where `IDGATE_REQUIRE_FAKETIME` is set (as CI sets it).
fn libfaketime() -> Option<std::path::PathBuf> {
    let found = std::fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("IDGATE_REQUIRE_FAKETIME").is_none(),
            "libfaketime is not installed (scripts/setup-test-deps.sh installs it)"
        );
        eprintln!("skipped: libfaketime is not installed");
    }
    found
}

/// The seconds between the gateway's `Date` and this process's clock.
fn clock_ahead(reply: &Reply) -> i64 {
    let date = reply.header("date").expect("a Date header");
    let theirs = httpdate::parse_http_date(date).expect("an HTTP date");
    let ours = std::time::SystemTime::now();
    match theirs.duration_since(ours) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    }
}

#[tokio::test]
async fn a_step_of_the_system_clock_moves_no_rate_limit_counted_in_the_gateway() {
    within(async {
        let Some(lib) = libfaketime() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let offset = dir.path().join("offset");
        std::fs::write(&offset, "+0").unwrap();
        let lib = lib.display().to_string();
        let offset_file = offset.display().to_string();
        let env = [
            ("LD_PRELOAD", lib.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", offset_file.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ];
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let defs = vec![table([
            ("name", "per-ip-hour".into()),
            ("key", strings(&["source_ip"])),
            ("rate", "1/h".into()),
            ("burst", 1.into()),
        ])];
        let mut config = base_config(&pki)
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(
                RouteSpec::new("route", &["GET"], "/v1/{*rest}", "provider", &[ONBOARDING])
                    .with("rate_limits", strings(&["per-ip-hour"])),
            );
        config = config.section("rate_limits", limits(defs));
        let gw = Gateway::start(&config, &env).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(client.get(PATH).await.unwrap().status, 200);
        let refused = |reply: &Reply| {
            assert_eq!(reply.status, 429, "{:?}", reply.body);
            reply.header("retry-after").unwrap().parse::<u64>().unwrap()
        };
        let first = refused(&client.get(PATH).await.unwrap());
        assert!((3590..=3600).contains(&first), "Retry-After {first}");

        // The clock set 20 minutes forward (the certificates stay valid), then 4 minutes
        // back: the wait is what real time left of it, whatever the clock says. The forward
        // step shows in the answer's `Date` (after the backward one, hyper keeps its last
        // `Date` until its clock passes the second it was made for).
        for step in ["+1200", "-240"] {
            std::fs::write(&offset, step).unwrap();
            let reply = client.get(PATH).await.unwrap();
            if step == "+1200" {
                let ahead = clock_ahead(&reply);
                assert!(
                    (1195..=1205).contains(&ahead),
                    "the gateway's clock is {ahead} s ahead, not 1200: {:?}",
                    reply.header("date")
                );
            }
            let wait = refused(&reply);
            assert!(
                (3580..=3600).contains(&wait),
                "Retry-After {wait} with the clock stepped {step}"
            );
        }
    })
    .await;
}
