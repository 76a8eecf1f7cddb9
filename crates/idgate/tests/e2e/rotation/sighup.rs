//! SIGHUP: routes and allow lists reloaded from the configuration file, and an invalid or
//! unusable file refused while the running routes keep serving.

use crate::assert_eventually;
use crate::support::*;

use super::{assert_not_restarted, replace_atomically, with_kyc_route};

/// The routes of the SIGHUP tests: `kyc` for the allowed IDs, and `extra` if asked.
fn sighup_config(
    pki: &Pki,
    upstream: &TestUpstream,
    kyc_allow: &[&str],
    extra: bool,
) -> GatewayConfig {
    let config = with_kyc_route(
        gateway_config(
            (&pki.files.gateway_cert, &pki.files.gateway_key),
            &[(TD, &pki.files.bundle)],
            "1h",
        ),
        upstream,
        kyc_allow,
    );
    if extra {
        config.route(RouteSpec::get("extra", "/v1/extra", "provider"))
    } else {
        config
    }
}

async fn get_status(client: &Client, path: &str) -> u16 {
    client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status
}

#[tokio::test]
async fn sighup_reloads_routes_and_allow_lists_from_the_config_file() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let config = sighup_config(&pki, &upstream, &[ONBOARDING], false);
    let mut gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let onboarding = Client::new(&pki, Some(ONBOARDING), port, false);
    let frontend = Client::new(&pki, Some(FRONTEND), port, false);
    assert_eq!(get_status(&frontend, "/v1/kyc").await, 403);
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 404);

    // The listeners stay on port 0 in the file: the running ones are kept. Besides the
    // routes, two settings that only a restart changes.
    let mut changed = sighup_config(&pki, &upstream, &[ONBOARDING, FRONTEND], true);
    changed.workers = 2;
    changed
        .listener
        .extra
        .insert("max_connections".into(), 5000.into());
    replace_atomically(&gw.config_path, changed.to_toml().as_bytes());
    gw.signal("HUP");
    assert_eventually!(
        get_status(&frontend, "/v1/kyc").await == 200,
        "the widened allow list was not taken into use; log:\n{}",
        gw.output()
    );
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 200);
    assert_eq!(get_status(&onboarding, "/v1/kyc").await, 200);
    // The signal's line; the file's watch may also have reloaded the file before the
    // signal was taken, so there may be two reloads.
    assert_eventually!(
        !log_lines(
            &gw,
            "idgate_proxy::gateway",
            "SIGHUP: reloading TLS material and configuration"
        )
        .is_empty(),
        "the SIGHUP was not logged:\n{}",
        gw.output()
    );
    // One warning for each key that waits, with its section, at each reload. They are
    // written just after the new routes serve: waited for, not assumed written.
    for (setting, key) in [
        ("listener", "listener.max_connections"),
        ("workers", "workers"),
    ] {
        let message = format!(
            "the new configuration changes `{key}`, which takes effect only at restart; the running one stays"
        );
        assert_eventually!(
            {
                let reloads = log_lines(
                    &gw,
                    "idgate_proxy::gateway",
                    "configuration reloaded: routes, upstreams, credentials and authentication replaced",
                )
                .len();
                let lines = log_lines(&gw, "idgate_proxy::gateway", &message);
                reloads > 0
                    && lines.len() == reloads
                    && lines.iter().all(|line| {
                        line.get("setting").and_then(|s| s.as_str()) == Some(setting)
                            && line.get("key").and_then(|s| s.as_str()) == Some(key)
                    })
            },
            "not one restart warning for {key} at each reload:\n{}",
            gw.output()
        );
    }
    assert!(
        !gw.output().contains("changes `listener.bind`")
            && !gw.output().contains("changes `identity")
            && !gw.output().contains("changes `admin"),
        "{}",
        gw.output()
    );
    assert_not_restarted(&mut gw);
}

#[tokio::test]
async fn sighup_with_an_invalid_config_file_keeps_the_running_routes_and_says_why() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let config = sighup_config(&pki, &upstream, &[ONBOARDING], true);
    let mut gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let onboarding = Client::new(&pki, Some(ONBOARDING), port, false);
    let frontend = Client::new(&pki, Some(FRONTEND), port, false);

    // A misspelt key, alongside a change that would have widened the allow list.
    let mut invalid = sighup_config(&pki, &upstream, &[ONBOARDING, FRONTEND], false);
    invalid.top_level.insert("frobnicate".into(), true.into());
    replace_atomically(&gw.config_path, invalid.to_toml().as_bytes());
    gw.signal("HUP");
    let refused = || {
        log_lines(
            &gw,
            "idgate_proxy::gateway",
            "configuration reload refused; the running configuration stays",
        )
    };
    assert_eventually!(
        !refused().is_empty(),
        "the invalid configuration was not refused in the log:\n{}",
        gw.output()
    );
    let problem = refused()[0]
        .get("problem")
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        problem.contains("frobnicate") && problem.contains(&*gw.config_path.to_string_lossy()),
        "the refusal should name the file and the key: {problem:?}"
    );
    let field = |name: &str| {
        refused()[0]
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("file"), gw.config_path.to_string_lossy());
    assert_eq!(field("key"), "frobnicate");
    assert!(
        field("reason").contains("unknown key"),
        "{}",
        field("reason")
    );
    assert_eq!(get_status(&onboarding, "/v1/kyc").await, 200);
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 200);
    assert_eq!(get_status(&frontend, "/v1/kyc").await, 403);
    assert_not_restarted(&mut gw);
}

#[tokio::test]
async fn sighup_with_a_config_that_cannot_be_put_into_use_names_the_key_and_keeps_serving() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let config = sighup_config(&pki, &upstream, &[ONBOARDING], true);
    let mut gw = Gateway::start(&config, &[]).await;
    let port = gw.port;
    let onboarding = Client::new(&pki, Some(ONBOARDING), port, false);
    let frontend = Client::new(&pki, Some(FRONTEND), port, false);

    // The file validates (the CA file exists), but holds no certificate: only building the
    // upstream's client finds that out.
    let ca = gw.config_path.with_file_name("not-a-ca.pem");
    std::fs::write(&ca, "no certificate in here\n").unwrap();
    let mut unusable = sighup_config(&pki, &upstream, &[ONBOARDING, FRONTEND], false);
    unusable.upstreams[0].ca = Some(ca);
    replace_atomically(&gw.config_path, unusable.to_toml().as_bytes());
    gw.signal("HUP");
    let refused = || {
        log_lines(
            &gw,
            "idgate_proxy::gateway",
            "configuration reload refused; the running configuration stays",
        )
    };
    assert_eventually!(
        !refused().is_empty(),
        "the unusable configuration was not refused in the log:\n{}",
        gw.output()
    );
    let field = |name: &str| {
        refused()[0]
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("file"), gw.config_path.to_string_lossy());
    assert_eq!(field("key"), "upstreams[0].ca");
    assert!(
        field("reason").contains("no CERTIFICATE block"),
        "{}",
        field("reason")
    );
    assert_eq!(get_status(&onboarding, "/v1/kyc").await, 200);
    assert_eq!(get_status(&onboarding, "/v1/extra").await, 200);
    assert_eq!(get_status(&frontend, "/v1/kyc").await, 403);
    assert_not_restarted(&mut gw);
}
