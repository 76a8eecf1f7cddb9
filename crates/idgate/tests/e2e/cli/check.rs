//! `idgate check`: every problem at once with its file, key path and reason, secrets never
//! echoed, and the warnings the configuration's parts raise while loading.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::assert_eventually;
use crate::support::*;

use super::{SET_ENV, UNSET_ENV, Workspace, check, missing_problems, route, upstream};

#[test]
fn check_accepts_a_valid_config() {
    let ws = Workspace::new();
    let secret_file = ws.path("provider.key");
    std::fs::write(&secret_file, "file-provider-key\n").unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut config = ws
        .base()
        .upstream(upstream("provider", &format!("env:{SET_ENV}")))
        .upstream(upstream("other", "file:provider.key"))
        .route(route(
            "decision",
            "/v3/session/{id}/",
            "provider",
            "spiffe://example.org/ns/kyc/*",
        ));
    config.listener.tls_min_version = Some(TlsVersion::V1_3);
    let config = ws.write_config("idgate.toml", &config);
    let (code, out, err) = check(&ws, &config);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("valid"), "{out}");
    assert!(
        !out.contains("provider-key"),
        "a secret value was printed: {out}"
    );
}

#[test]
fn check_lists_every_problem_at_once_with_file_key_and_reason() {
    let ws = Workspace::new();
    let open_secret = ws.path("group-readable.key");
    std::fs::write(&open_secret, "file-secret-value-9d2\n").unwrap();
    std::fs::set_permissions(&open_secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    // Each mistake is a value the typed builder holds as it is, wrong as it is.
    let mut config = ws
        .base()
        .trust("other.org", Path::new("pki/no-such-bundle.pem"))
        .upstream(upstream("provider", &format!("env:{UNSET_ENV}")))
        .upstream(upstream("literal", "sk_live_abc"))
        .upstream(upstream("open-file", "file:group-readable.key"))
        .route(
            RouteSpec::new("typo", &["GET"], "/a", "provider", &[])
                .with("alow", strings(&["spiffe://example.org/ns/kyc/sa/a"])),
        )
        .route(route(
            "bad-id",
            "/b",
            "provider",
            "spiffe://Example.org/not valid",
        ))
        .route(route(
            "twice",
            "/c",
            "provider",
            "spiffe://example.org/ns/kyc/sa/c",
        ))
        .route(route(
            "twice",
            "/d",
            "provider",
            "spiffe://example.org/ns/kyc/sa/d",
        ))
        .route(route(
            "orphan",
            "/e",
            "no-such-upstream",
            "spiffe://example.org/ns/kyc/sa/e",
        ));
    config.top_level.insert("bogus_top_level".into(), 1.into());
    config
        .listener
        .extra
        .insert("tls_min_version".into(), "1.1".into());
    let config = ws.write_config("broken.toml", &config);
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    let missing = missing_problems(
        &all,
        &config,
        &[
            ("bogus_top_level", "unknown key"),
            ("routes[0].alow", "unknown field"),
            ("routes[1].allow[0]", "not a SPIFFE ID"),
            ("identity.trust_bundles[1].bundle", "no such file"),
            (
                "upstreams[1].credential.secret",
                "literal secret is not allowed",
            ),
            ("routes[3].name", "defined twice"),
            ("routes[4].upstream", "no-such-upstream"),
            ("listener.tls_min_version", "\"1.1\""),
            ("upstreams[2].credential.secret", "640"),
            ("upstreams[0].credential.secret", UNSET_ENV),
        ],
    );
    assert!(
        missing.is_empty(),
        "problems not reported as `FILE: KEY: REASON` (key, reason): {missing:#?}\noutput:\n{all}"
    );
    assert!(
        !all.contains("sk_live_abc"),
        "the literal secret was echoed:\n{all}"
    );
    assert!(
        !all.contains("file-secret-value"),
        "a file secret was echoed:\n{all}"
    );
}

#[test]
fn check_refuses_a_literal_secret_without_echoing_it() {
    let ws = Workspace::new();
    let config = ws.write_config(
        "idgate.toml",
        &ws.base()
            .upstream(upstream("provider", "sk_live_abc"))
            .route(route("r", "/r", "provider", ONBOARDING)),
    );
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    assert!(
        missing_problems(
            &all,
            &config,
            &[("upstreams[0].credential.secret", "literal secret")]
        )
        .is_empty(),
        "{all}"
    );
    assert!(
        !all.contains("sk_live_abc"),
        "the literal secret was echoed:\n{all}"
    );
}

#[test]
fn check_refuses_a_group_readable_secret_file_naming_its_key() {
    let ws = Workspace::new();
    let open_secret = ws.path("group-readable.key");
    std::fs::write(&open_secret, "file-secret-value-9d2\n").unwrap();
    std::fs::set_permissions(&open_secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let config = ws.write_config(
        "idgate.toml",
        &ws.base()
            .upstream(upstream("provider", "file:group-readable.key"))
            .route(route("r", "/r", "provider", ONBOARDING)),
    );
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    assert!(all.contains("640"), "the reason names the mode: {all}");
    assert!(
        !all.contains("file-secret-value"),
        "the secret was echoed:\n{all}"
    );
    let missing = missing_problems(&all, &config, &[("upstreams[0].credential.secret", "640")]);
    assert!(
        missing.is_empty(),
        "not reported as `FILE: KEY: REASON`:\n{all}"
    );
}

#[test]
fn check_refuses_a_missing_env_secret_naming_its_key() {
    let ws = Workspace::new();
    let config = ws.write_config(
        "idgate.toml",
        &ws.base()
            .upstream(upstream("provider", &format!("env:{UNSET_ENV}")))
            .route(route("r", "/r", "provider", ONBOARDING)),
    );
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    assert!(
        all.contains(UNSET_ENV),
        "the reason names the variable: {all}"
    );
    let missing = missing_problems(
        &all,
        &config,
        &[("upstreams[0].credential.secret", UNSET_ENV)],
    );
    assert!(
        missing.is_empty(),
        "not reported as `FILE: KEY: REASON`:\n{all}"
    );
}

#[test]
fn check_refuses_one_bundle_file_for_two_trust_domains() {
    let ws = Workspace::new();
    // The example.org bundle named for a partner domain too: its CAs would vouch for both.
    let config = ws
        .base()
        .upstream(upstream("provider", &format!("env:{SET_ENV}")))
        .route(RouteSpec::new(
            "r",
            &["GET"],
            "/r",
            "provider",
            &[ONBOARDING],
        ))
        .trust("partner.test", &ws.pki.bundle);
    let config = ws.write_config("idgate.toml", &config);
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    let missing = missing_problems(
        &all,
        &config,
        &[(
            "identity.trust_bundles[1].bundle",
            "is also the bundle of trust domain example.org",
        )],
    );
    assert!(missing.is_empty(), "not reported:\n{all}");
}

#[test]
fn check_refuses_trace_connect_and_malformed_trusted_proxies() {
    let ws = Workspace::new();
    let mut config = ws
        .base()
        .upstream(upstream("provider", &format!("env:{SET_ENV}")))
        .route(RouteSpec::new(
            "r",
            &["GET", "TRACE", "CONNECT"],
            "/r",
            "provider",
            &[ONBOARDING],
        ));
    config.listener.extra.insert(
        "trusted_proxies".into(),
        strings(&[
            "10.0.0.0/8",
            "10.0.0.1/8",
            "proxy.internal",
            "::/0",
            "::ffff:192.0.2.0/120",
        ]),
    );
    let config = ws.write_config("idgate.toml", &config);
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    let missing = missing_problems(
        &all,
        &config,
        &[
            ("routes[0].methods[1]", "TRACE is never forwarded"),
            ("routes[0].methods[2]", "CONNECT is never forwarded"),
            ("listener.trusted_proxies[1]", "write \"10.0.0.0/8\""),
            ("listener.trusted_proxies[2]", "not an address or a CIDR"),
            ("listener.trusted_proxies[3]", "trusts every address"),
        ],
    );
    assert!(missing.is_empty(), "{missing:#?}\n{all}");
    for fine in ["trusted_proxies[0]", "trusted_proxies[4]", "methods[0]"] {
        assert!(!all.contains(fine), "{fine} was refused:\n{all}");
    }
}

#[test]
fn check_reports_a_broken_upstream_once_not_again_for_its_routes() {
    let ws = Workspace::new();
    let config = ws.write_config(
        "idgate.toml",
        &ws.base()
            .upstream(
                UpstreamSpec::new("didit", "https://127.0.0.1:9")
                    .ca(Path::new("pki/no-such-ca.pem")),
            )
            .route(route("decision", "/d", "didit", ONBOARDING)),
    );
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    let missing = missing_problems(&all, &config, &[("upstreams[0].ca", "no such file")]);
    assert!(missing.is_empty(), "{missing:#?}\n{all}");
    assert_eq!(all.lines().count(), 1, "more than the one problem:\n{all}");
}

/// `base` with an `[api_keys]` store that does not exist yet.
fn with_missing_key_store(ws: &Workspace, base: GatewayConfig) -> GatewayConfig {
    let pepper = ws.path("pepper");
    std::fs::write(&pepper, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(0o600)).unwrap();
    base.section(
        "api_keys",
        table([
            ("store", path_value(&ws.path("keys.redb"))),
            ("pepper", format!("file:{}", pepper.display()).into()),
        ]),
    )
    .upstream(upstream("provider", &format!("env:{SET_ENV}")))
    .route(route("r", "/r", "provider", ONBOARDING))
}

const NO_STORE_YET: &str = "the API key store does not exist yet";

#[test]
fn check_shows_the_warnings_its_parts_raise_while_loading() {
    let ws = Workspace::new();
    let config = ws.write_config("idgate.toml", &with_missing_key_store(&ws, ws.base()));
    let (code, out, err) = check(&ws, &config);
    assert_eq!(code, 0, "{out}{err}");
    let file = config.display().to_string();
    assert!(
        err.lines().any(
            |l| l.starts_with(&format!("warning: {file}: {NO_STORE_YET}"))
                && l.contains("keys.redb")
        ),
        "no warning about the missing store on stderr:\n{err}"
    );
    assert!(out.contains("valid"), "{out}");
}

/// `check` is often run as root: a state file it made would be root's, and refused to the
/// gateway running as its own user. It leaves a missing one to `serve`, and still opens
/// (and so checks) one that exists.
#[test]
fn check_does_not_create_a_missing_state_file() {
    let ws = Workspace::new();
    let state = ws.path("state.redb");
    let text = format!(
        "{}\n[state]\nbackend = \"redb\"\npath = \"{}\"\n",
        ws.base().to_toml(),
        state.display()
    );
    let config = ws.write("idgate.toml", &text);
    let (code, out, err) = check(&ws, &config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!state.exists(), "check created the state file");
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")
            && l.contains("state.redb")
            && l.contains("does not exist yet")),
        "no warning about the missing state file:\n{err}"
    );

    std::fs::write(&state, b"").unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = check(&ws, &config);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("state.redb"), "{err}");
}

/// Standard error is a pipe here, as in CI or a log file: the warnings the parts raise
/// (with fields: the store's path) carry no terminal colour codes.
#[test]
fn check_warnings_are_plain_text_when_not_a_terminal() {
    let ws = Workspace::new();
    let config = ws.write_config("idgate.toml", &with_missing_key_store(&ws, ws.base()));
    let (code, out, err) = check(&ws, &config);
    assert_eq!(code, 0, "{out}{err}");
    let warning = err
        .lines()
        .find(|l| l.contains(NO_STORE_YET))
        .unwrap_or_else(|| panic!("no warning about the missing store:\n{err}"));
    assert!(warning.contains("keys.redb"), "{warning}");
    assert!(
        !err.contains('\u{1b}') && !out.contains('\u{1b}'),
        "escape codes in the output: {err:?}"
    );
}

#[tokio::test]
async fn serve_logs_the_warnings_its_parts_raise_while_loading() {
    let ws = Workspace::new();
    // The same base with JSON logs.
    let mut base = ws.base();
    base.log = Some(LogSpec {
        format: Some(LogFormat::Json),
        level: None,
    });
    let gw = Gateway::start(
        &with_missing_key_store(&ws, base),
        &[(SET_ENV, "provider-key-for-serve")],
    )
    .await;
    let warned = json_lines(&gw.output()).into_iter().any(|l| {
        l.get("level").and_then(|v| v.as_str()) == Some("WARN")
            && l.get("message")
                .and_then(|v| v.as_str())
                .is_some_and(|m| m.starts_with(NO_STORE_YET))
    });
    assert!(
        warned,
        "no warning about the missing store:\n{}",
        gw.output()
    );
}

/// A misspelt level would name a target and silence every other line: in `[log] level` it
/// is refused with its key, in `IDGATE_LOG` it is ignored with a warning and the gateway
/// logs at its `level`.
#[tokio::test]
async fn a_misspelt_log_level_is_refused_and_a_misspelt_idgate_log_is_ignored() {
    let ws = Workspace::new();
    let base = || {
        ws.base()
            .upstream(upstream("provider", &format!("env:{SET_ENV}")))
            .route(route("r", "/r", "provider", ONBOARDING))
    };
    let mut misspelt = base();
    misspelt.log = Some(LogSpec {
        format: None,
        level: Some("inof".to_owned()),
    });
    let config = ws.write_config("idgate.toml", &misspelt);
    let (code, out, err) = check(&ws, &config);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    let missing = missing_problems(&all, &config, &[("log.level", "\"inof\" is not a level")]);
    assert!(missing.is_empty(), "{missing:#?}\n{all}");

    let gw = Gateway::start(
        &base(),
        &[(SET_ENV, "provider-key-for-serve"), ("IDGATE_LOG", "inof")],
    )
    .await;
    // The warning goes to stderr and the log to stdout, each read by its own thread.
    assert_eventually!(
        gw.output()
            .contains("IDGATE_LOG ignored: \"inof\" is not a level"),
        "no warning about IDGATE_LOG: {}",
        gw.output()
    );
    assert!(gw.output().contains("idgate is serving"), "{}", gw.output());
}
