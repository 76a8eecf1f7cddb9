//! The configuration file watched: under paced load, good and bad reloads by editing the
//! file (renamed over, or written in place and caught half-written) and by SIGHUP. Not one
//! request fails, a good reload's new route answers, a bad one changes nothing, and the
//! metrics count each.

use std::time::Duration;

use crate::assert_eventually;
use crate::support::*;

use super::{assert_not_restarted, replace_atomically, with_kyc_route};

fn config(pki: &Pki, upstream: &TestUpstream, extra: Option<&str>) -> GatewayConfig {
    let config = with_kyc_route(
        gateway_config(
            (&pki.files.gateway_cert, &pki.files.gateway_key),
            &[(TD, &pki.files.bundle)],
            // The periodic check is out of the picture: what is proven is the watch.
            "1h",
        ),
        upstream,
        &[ONBOARDING],
    );
    match extra {
        Some(path) => config.route(RouteSpec::get("extra", path, "provider")),
        None => config,
    }
}

async fn metric(gw: &Gateway, line_start: &str) -> Option<String> {
    let (_, text) = admin_get(gw.admin_port, "/metrics").await.ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l[line_start.len()..].trim().to_owned())
}

/// The generation, the reloads applied and refused, and whether the last one succeeded.
async fn reload_counts(gw: &Gateway) -> [Option<String>; 4] {
    [
        metric(gw, "idgate_config_generation ").await,
        metric(gw, "idgate_config_reloads_total{result=\"applied\"}").await,
        metric(gw, "idgate_config_reloads_total{result=\"refused\"}").await,
        metric(gw, "idgate_config_last_reload_success ").await,
    ]
}

async fn status(client: &Client, path: &str) -> u16 {
    client.get(path).await.map_or(0, |r| r.status)
}

const RELOADED: &str =
    "configuration reloaded: routes, upstreams, credentials and authentication replaced";

/// How many reloads the gateway logged as applied so far.
fn reloaded_lines(gw: &Gateway) -> usize {
    log_lines(gw, "idgate_proxy::gateway", RELOADED).len()
}

/// The keys named by the refused reloads' log lines so far.
fn refusal_keys(gw: &Gateway) -> Vec<String> {
    log_lines(
        gw,
        "idgate_proxy::gateway",
        "configuration reload refused; the running configuration stays",
    )
    .iter()
    .filter_map(|l| l.get("key").and_then(|k| k.as_str()).map(str::to_owned))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_load_fail_no_request_and_a_bad_one_changes_nothing() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::start(&config(&pki, &upstream, None), &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(
            metric(&gw, "idgate_config_generation ").await.as_deref(),
            Some("1")
        );
        assert_eq!(status(&client, "/v1/extra").await, 404);

        // Keep-alive connections on HTTP/1.1 and HTTP/2 sending all along.
        let clients = (0..4)
            .map(|i| Client::new(&pki, Some(ONBOARDING), gw.port, i % 2 == 1))
            .collect();
        let load = tokio::spawn(paced_load(
            clients,
            "/v1/kyc",
            Duration::from_millis(20),
            Duration::from_secs(8),
        ));
        let refused = |n: u32| format!("{n}");

        // 1. Renamed over with a misspelt key beside a new route: refused, nothing changes.
        let mut invalid = config(&pki, &upstream, Some("/v1/extra"));
        invalid.top_level.insert("frobnicate".into(), true.into());
        replace_atomically(&gw.config_path, invalid.to_toml().as_bytes());
        assert_eventually!(
            metric(&gw, "idgate_config_reloads_total{result=\"refused\"}").await
                == Some(refused(1)),
            "the invalid file was not refused; output:\n{}",
            gw.output()
        );
        assert_eq!(status(&client, "/v1/extra").await, 404);
        assert_eq!(
            metric(&gw, "idgate_config_last_reload_success ")
                .await
                .as_deref(),
            Some("0")
        );

        // 2. Written in place and cut short, mid-value: refused as invalid, never applied.
        let good = config(&pki, &upstream, Some("/v1/extra")).to_toml();
        let cut = good.find("/v1/extra").expect("the extra route") + 4;
        std::fs::write(&gw.config_path, &good.as_bytes()[..cut]).unwrap();
        assert_eventually!(
            metric(&gw, "idgate_config_reloads_total{result=\"refused\"}").await
                == Some(refused(2)),
            "the half-written file was not refused; output:\n{}",
            gw.output()
        );
        assert_eq!(status(&client, "/v1/extra").await, 404);

        // 3. The rest of the write arrives: the new route answers.
        std::fs::write(&gw.config_path, good.as_bytes()).unwrap();
        assert_eventually!(
            status(&client, "/v1/extra").await == 200,
            "the completed file was not applied; output:\n{}",
            gw.output()
        );
        // Counted just after the new routes serve: waited for, not assumed done.
        assert_eventually!(
            metric(&gw, "idgate_config_generation ").await.as_deref() == Some("2"),
            "the applied reload was not counted; output:\n{}",
            gw.output()
        );

        // 4. SIGHUP with a broken file: refused, the new route still answers.
        replace_atomically(&gw.config_path, invalid.to_toml().as_bytes());
        gw.signal("HUP");
        assert_eventually!(
            metric(&gw, "idgate_config_reloads_total{result=\"refused\"}").await
                == Some(refused(3)),
            "the SIGHUP with an invalid file was not refused; output:\n{}",
            gw.output()
        );
        assert_eq!(status(&client, "/v1/extra").await, 200);

        // 5. SIGHUP with a good file that moves the route: applied once.
        replace_atomically(
            &gw.config_path,
            config(&pki, &upstream, Some("/v1/moved"))
                .to_toml()
                .as_bytes(),
        );
        gw.signal("HUP");
        assert_eventually!(
            status(&client, "/v1/moved").await == 200,
            "the SIGHUP with a good file was not applied; output:\n{}",
            gw.output()
        );
        assert_eq!(status(&client, "/v1/extra").await, 404);

        let count = load.await.unwrap();
        assert!(count.admitted > 0, "{count:?}");
        assert_eq!(count.refused, 0, "{count:?}");
        // Every reload counted once: the SIGHUP and the file's change are one reload. The
        // last one is counted just after its route serves, so the counts are waited for; a
        // reload counted twice would never give these.
        assert_eventually!(
            reload_counts(&gw).await == ["3", "2", "3", "1"].map(|n| Some(n.to_owned())),
            "the reloads were not each counted once ({:?}); output:\n{}",
            reload_counts(&gw).await,
            gw.output()
        );
        assert_not_restarted(&mut gw);
    })
    .await
}

#[tokio::test]
async fn a_reload_changes_the_log_level_in_place() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::start(&config(&pki, &upstream, None), &[]).await;
        let lines =
            |gw: &Gateway, message: &str| log_lines(gw, "idgate_proxy::gateway", message).len();
        let reloaded =
            "configuration reloaded: routes, upstreams, credentials and authentication replaced";

        // `warn` from now on: the reload says so at `info`, before the change.
        let mut quiet = config(&pki, &upstream, None);
        quiet.log = Some(LogSpec::json("warn"));
        replace_atomically(&gw.config_path, quiet.to_toml().as_bytes());
        assert_eventually!(
            lines(&gw, "log level changed") == 1,
            "the log level was not changed; output:\n{}",
            gw.output()
        );
        assert_eq!(lines(&gw, reloaded), 1);

        // The next reload's `info` line is filtered out, its `warn` line is not.
        quiet.workers = 2;
        replace_atomically(&gw.config_path, quiet.to_toml().as_bytes());
        assert_eventually!(
            gw.output().contains("changes `workers`"),
            "the second reload did not happen; output:\n{}",
            gw.output()
        );
        assert_eq!(lines(&gw, reloaded), 1, "{}", gw.output());
        assert!(
            !gw.output().contains(
                "takes effect only at restart; the running one stays\",\"setting\":\"log\""
            ),
            "{}",
            gw.output()
        );
        assert_not_restarted(&mut gw);
    })
    .await
}

#[tokio::test]
async fn a_reload_changes_the_listener_for_new_connections_and_keeps_the_open_ones() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut gw = Gateway::start(&config(&pki, &upstream, None), &[]).await;
        let (cert, key) = pki.workload(ONBOARDING);
        let tls12 = Client {
            config: tls_client_config(
                &pki.files.bundle,
                Some((&cert, &key)),
                false,
                &[&rustls::version::TLS12],
            ),
            port: gw.port,
            h2: false,
        };
        let mut open = tls12.connect().await.unwrap();
        assert_eq!(
            open.send("GET", "/v1/kyc", &[], "").await.unwrap().status,
            200
        );

        // TLS 1.3 only from now on, with other timeouts: no new socket needed.
        let mut strict = config(&pki, &upstream, None);
        strict.listener.tls_min_version = Some(TlsVersion::V1_3);
        strict
            .listener
            .extra
            .insert("handshake_timeout".into(), "3s".into());
        replace_atomically(&gw.config_path, strict.to_toml().as_bytes());
        assert_eventually!(
            tls12.get("/v1/kyc").await.is_err(),
            "a TLS 1.2 handshake is still accepted; output:\n{}",
            gw.output()
        );
        // The connection opened before goes on, under the settings it started with.
        assert_eq!(
            open.send("GET", "/v1/kyc", &[], "").await.unwrap().status,
            200
        );
        let tls13 = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(status(&tls13, "/v1/kyc").await, 200);
        assert!(
            !gw.output().contains("changes `listener`"),
            "{}",
            gw.output()
        );
        // Counted just after the new settings are in force: waited for, not assumed done.
        assert_eventually!(
            metric(&gw, "idgate_config_generation ").await.as_deref() == Some("2"),
            "the applied reload was not counted; output:\n{}",
            gw.output()
        );
        assert_not_restarted(&mut gw);
    })
    .await
}

#[tokio::test]
async fn a_reload_naming_the_workload_api_keeps_the_files_in_use_not_those_started_with() {
    within(async {
        let pki = Pki::default_pki();
        let partner = Pki::new("partner.test", &[super::PARTNER]);
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let svid = (
            pki.files.gateway_cert.as_path(),
            pki.files.gateway_key.as_path(),
        );
        let with = |bundles: &[(&str, &std::path::Path)], allow: &[&str]| {
            with_kyc_route(gateway_config(svid, bundles, "1h"), &upstream, allow)
        };
        // Started trusting partner.test, which a reload then takes away.
        let mut gw = Gateway::start(
            &with(
                &[
                    (TD, &pki.files.bundle),
                    ("partner.test", &partner.files.bundle),
                ],
                &[ONBOARDING, super::PARTNER],
            ),
            &[],
        )
        .await;
        let (cert, key) = partner.workload(super::PARTNER);
        let scorer = Client {
            config: tls_client_config(
                &pki.files.bundle,
                Some((&cert, &key)),
                false,
                rustls::DEFAULT_VERSIONS,
            ),
            port: gw.port,
            h2: false,
        };
        assert_eq!(status(&scorer, "/v1/kyc").await, 200);
        replace_atomically(
            &gw.config_path,
            with(&[(TD, &pki.files.bundle)], &[ONBOARDING])
                .to_toml()
                .as_bytes(),
        );
        assert_eventually!(
            status(&scorer, "/v1/kyc").await == 0,
            "partner.test is still trusted; output:\n{}",
            gw.output()
        );
        // The file now names the Workload API, for the next restart: the source in use
        // stays, and it is the files of the last reload, not those the process started with.
        replace_atomically(
            &gw.config_path,
            with(&[], &[ONBOARDING])
                .workload_api("unix:///nonexistent/agent.sock")
                .to_toml()
                .as_bytes(),
        );
        assert_eventually!(
            reloaded_lines(&gw) == 2,
            "the second reload was not applied; output:\n{}",
            gw.output()
        );
        assert_eventually!(
            gw.output().contains("changes `identity.workload_api`"),
            "no restart warning for the source; output:\n{}",
            gw.output()
        );
        assert_eq!(
            status(&scorer, "/v1/kyc").await,
            0,
            "partner.test is trusted again"
        );
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        assert_eq!(status(&onboarding, "/v1/kyc").await, 200);
        assert_not_restarted(&mut gw);
    })
    .await
}

#[tokio::test]
async fn a_reload_adds_and_removes_trust_domains_and_refuses_a_bad_bundle() {
    within(async {
        let pki = Pki::default_pki();
        let partner = Pki::new("partner.test", &[super::PARTNER]);
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let svid = (
            pki.files.gateway_cert.as_path(),
            pki.files.gateway_key.as_path(),
        );
        let with = |bundles: &[(&str, &std::path::Path)], allow: &[&str]| {
            with_kyc_route(gateway_config(svid, bundles, "1h"), &upstream, allow).to_toml()
        };
        let example_only = with(&[(TD, &pki.files.bundle)], &[ONBOARDING]);
        let gw = Gateway::start(
            &with_kyc_route(
                gateway_config(svid, &[(TD, &pki.files.bundle)], "1h"),
                &upstream,
                &[ONBOARDING],
            ),
            &[],
        )
        .await;
        // A workload of `issuer`, trusting the gateway's own CA.
        let client = |issuer: &Pki, id: &str| {
            let (cert, key) = issuer.workload(id);
            Client {
                config: tls_client_config(
                    &pki.files.bundle,
                    Some((&cert, &key)),
                    false,
                    rustls::DEFAULT_VERSIONS,
                ),
                port: gw.port,
                h2: false,
            }
        };
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let scorer = client(&partner, super::PARTNER);
        assert_eq!(status(&onboarding, "/v1/kyc").await, 200);
        assert_eq!(
            status(&scorer, "/v1/kyc").await,
            0,
            "partner.test is not trusted yet"
        );

        // A bundle file that holds no certificate: refused, with its key.
        let garbage = partner.path().join("not-a-bundle.pem");
        std::fs::write(&garbage, b"no certificate here\n").unwrap();
        replace_atomically(
            &gw.config_path,
            with(
                &[(TD, &pki.files.bundle), ("partner.test", &garbage)],
                &[ONBOARDING, super::PARTNER],
            )
            .as_bytes(),
        );
        assert_eventually!(
            metric(&gw, "idgate_config_reloads_total{result=\"refused\"}").await
                == Some("1".to_owned()),
            "the bad bundle was not refused; output:\n{}",
            gw.output()
        );
        // The refusal is counted before its reasons are logged, and the log reaches the
        // output through a writer thread and a pipe: waited for, not assumed written.
        assert_eventually!(
            refusal_keys(&gw).contains(&"identity.trust_bundles[1].bundle".to_owned()),
            "the refusal does not name the bundle's key; output:\n{}",
            gw.output()
        );
        assert_eq!(status(&scorer, "/v1/kyc").await, 0);

        // The trust domain added with a good bundle: its workloads are let in.
        replace_atomically(
            &gw.config_path,
            with(
                &[
                    (TD, &pki.files.bundle),
                    ("partner.test", &partner.files.bundle),
                ],
                &[ONBOARDING, super::PARTNER],
            )
            .as_bytes(),
        );
        assert_eventually!(
            status(&scorer, "/v1/kyc").await == 200,
            "partner.test was not added; output:\n{}",
            gw.output()
        );
        assert_eq!(status(&onboarding, "/v1/kyc").await, 200);

        // And removed again.
        replace_atomically(&gw.config_path, example_only.as_bytes());
        assert_eventually!(
            status(&scorer, "/v1/kyc").await == 0,
            "partner.test is still trusted; output:\n{}",
            gw.output()
        );
        assert_eq!(status(&onboarding, "/v1/kyc").await, 200);
        // The new trust takes effect before the reload's last lines are written: both
        // reloads' lines are waited for, so that a restart warning would be among them.
        assert_eventually!(
            reloaded_lines(&gw) == 2,
            "the two reloads were not both logged; output:\n{}",
            gw.output()
        );
        assert!(
            !gw.output().contains("changes `identity`"),
            "{}",
            gw.output()
        );
    })
    .await
}
