//! `idgate serve --ready-file`: the addresses bound on port 0, reported once the gateway
//! serves, kept across a reload and removed at a clean shutdown.

use std::process::Command;
use std::time::Duration;

use crate::assert_eventually;
use crate::support::*;

#[tokio::test]
async fn the_ready_file_names_the_ports_bound_and_goes_away_at_shutdown() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let mut gw = OneRoute::kyc_decision(&upstream.url(true))
            .start(&pki, &[("TEST_PROVIDER_KEY", "prov-key-ready")])
            .await;
        let written = std::fs::read_to_string(&gw.ready_file).unwrap();
        let ready: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(ready["pid"], gw.child.id(), "{written}");
        let listener = format!("127.0.0.1:{}", gw.port);
        let admin = format!("127.0.0.1:{}", gw.admin_port);
        assert_eq!(ready["listener"], listener.as_str(), "{written}");
        assert_eq!(ready["admin"], admin.as_str(), "{written}");
        assert_ne!(gw.port, 0);
        assert_ne!(gw.admin_port, 0);

        // The start-up line names the same addresses.
        let serving = log_lines(&gw, "idgate_proxy::gateway", "idgate is serving");
        assert_eq!(serving.len(), 1, "{}", gw.output());
        assert_eq!(serving[0]["listener"], listener.as_str());
        assert_eq!(serving[0]["admin"], admin.as_str());

        // Both addresses serve: the admin listener is ready, the listener proxies.
        assert_eq!(admin_get(gw.admin_port, "/readyz").await.unwrap().0, 200);
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let r = client.get("/v3/session/s-1/decision/").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);

        // A reload keeps the listeners, and the file as it was.
        gw.signal("HUP");
        assert_eventually!(
            !log_lines(
                &gw,
                "idgate_proxy::gateway",
                "configuration reloaded: routes, upstreams, credentials and authentication replaced"
            )
            .is_empty(),
            "no reload:\n{}",
            gw.output()
        );
        assert_eq!(std::fs::read_to_string(&gw.ready_file).unwrap(), written);
        assert_eq!(
            client
                .get("/v3/session/s-2/decision/")
                .await
                .unwrap()
                .status,
            200
        );

        gw.signal("TERM");
        let status = gw
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("still running after SIGTERM:\n{}", gw.output()));
        assert!(status.success(), "{status}:\n{}", gw.output());
        assert!(
            !gw.ready_file.exists(),
            "the ready file outlived a clean shutdown"
        );
    })
    .await
}

#[test]
fn a_ready_file_in_a_missing_directory_is_refused_before_anything_is_bound() {
    let pki = Pki::default_pki();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("idgate.toml");
    let upstream = UpstreamSpec::new("provider", "http://127.0.0.1:9");
    let spec = base_config(&pki)
        .upstream(upstream)
        .route(RouteSpec::get("r", "/r", "provider"));
    std::fs::write(&config, spec.to_toml()).unwrap();
    let missing = dir.path().join("no-such-dir").join("ready.json");
    let (code, out, err) = run_bounded(
        Command::new(bin())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&missing)
            .env_remove("IDGATE_LOG"),
        Duration::from_secs(30),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--ready-file") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!format!("{out}{err}").contains("serving"), "{out}{err}");
}
