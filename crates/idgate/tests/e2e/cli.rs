//! The `idgate` command line: help, `check` reporting every problem with its file, key path
//! and reason, `dev-pki`, and `serve` refusing an invalid configuration before it starts.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(30);

fn idgate(args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("IDGATE_CONFIG")
        .env_remove("IDGATE_LOG");
    run_bounded(&mut cmd, LIMIT)
}

/// A directory with a dev PKI in `pki/` and room for configuration files.
struct Workspace {
    dir: tempfile::TempDir,
    pki: DevPkiPaths,
}

struct DevPkiPaths {
    bundle: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Pki::generate_into(&dir.path().join("pki"), TD, &[ONBOARDING]);
        Self {
            pki: DevPkiPaths {
                bundle: files.bundle,
                cert: files.gateway_cert,
                key: files.gateway_key,
            },
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    /// Writes `config` as `name`.
    fn write_config(&self, name: &str, config: &GatewayConfig) -> PathBuf {
        self.write(name, &config.to_toml())
    }

    /// `[listener]`, `[identity]` and `[admin]` that are valid (both listeners on port 0),
    /// with the bundle for example.org and no `[log]`.
    fn base(&self) -> GatewayConfig {
        GatewayConfig::new(&self.pki.cert, &self.pki.key).trust(TD, &self.pki.bundle)
    }
}

/// An upstream that is never dialled, whose credential is `secret` in `x-api-key`.
fn upstream(name: &str, secret: &str) -> UpstreamSpec {
    UpstreamSpec::new(name, "https://127.0.0.1:9")
        .credential(CredentialSpec::header("x-api-key", secret))
}

/// `GET path` to `upstream`, allowed for `allow`.
fn route(name: &str, path: &str, upstream: &str, allow: &str) -> RouteSpec {
    RouteSpec::new(name, &["GET"], path, upstream, &[allow])
}

/// Never set anywhere, so `env:` of it is a missing secret.
const UNSET_ENV: &str = "IDGATE_E2E_SECRET_THAT_IS_NEVER_SET";
const SET_ENV: &str = "IDGATE_E2E_SECRET";

fn check(ws: &Workspace, config: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(ws.dir.path())
        .env_remove(UNSET_ENV)
        .env(SET_ENV, "provider-key-for-check");
    run_bounded(&mut cmd, LIMIT)
}

/// The problems in `output` that are missing: each expected (key path, reason fragment)
/// must be on one line that also names the file, as `FILE: KEY: REASON`.
fn missing_problems<'a>(
    output: &str,
    file: &Path,
    expected: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let file = file.display().to_string();
    expected
        .iter()
        .filter(|(key, reason)| {
            !output
                .lines()
                .any(|l| l.contains(&format!("{file}: {key}: ")) && l.contains(reason))
        })
        .copied()
        .collect()
}

// ----------------------------------------------------------------------------------- help

/// The `Commands:` section of `idgate --help`: (name, one-line description), with wrapped
/// descriptions joined.
fn listed_subcommands(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let section = help
        .split_once("Commands:")
        .map_or("", |(_, rest)| rest)
        .split("\n\n")
        .next()
        .unwrap_or("");
    for line in section.lines().filter(|l| !l.trim().is_empty()) {
        let indent = line.len() - line.trim_start().len();
        match out.last_mut() {
            // A continuation of the previous description is indented further.
            Some((_, desc)) if indent > 2 => {
                desc.push(' ');
                desc.push_str(line.trim());
            }
            _ => {
                let (name, desc) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
                out.push((name.to_owned(), desc.trim().to_owned()));
            }
        }
    }
    out
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn help_describes_idgate_and_each_subcommand() {
    let (code, out, err) = idgate(&["--help"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("identity-verification providers"),
        "idgate --help does not say what idgate is:\n{out}"
    );
    let listed = listed_subcommands(&out);
    for name in ["serve", "check", "dev-pki"] {
        assert!(
            listed.iter().any(|(n, _)| n == name),
            "idgate --help does not list {name}:\n{out}"
        );
    }
    // Every listed subcommand answers --help with the description it is listed with.
    for (name, desc) in listed.iter().filter(|(n, _)| n != "help") {
        assert!(
            !desc.is_empty(),
            "{name} is listed without a description:\n{out}"
        );
        let (code, sub, err) = idgate(&[name, "--help"]);
        assert_eq!(code, 0, "idgate {name} --help: {err}");
        assert!(
            squash(&sub).contains(&squash(desc)),
            "idgate {name} --help does not describe itself as {desc:?}:\n{sub}"
        );
        assert!(sub.contains(&format!("Usage: idgate {name}")), "{sub}");
    }
    for (sub, words) in [
        ("serve", &["--config", "SIGTERM"][..]),
        ("check", &["--config", "Exits 0"][..]),
        ("dev-pki", &["--out", "--trust-domain", "--workload"][..]),
    ] {
        let (_, out, _) = idgate(&[sub, "--help"]);
        for word in words {
            assert!(
                out.contains(word),
                "idgate {sub} --help lacks {word:?}:\n{out}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------- check

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

// -------------------------------------------------------------------------------- dev-pki

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

fn openssl_text(cert: &Path) -> String {
    let (code, out, err) = run_bounded(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert),
        LIMIT,
    );
    assert_eq!(code, 0, "openssl x509 {}: {err}", cert.display());
    out
}

#[test]
fn dev_pki_writes_bundle_gateway_and_workload_svids_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let (code, out, err) = idgate(&[
        "dev-pki",
        "--out",
        out_dir.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--workload",
        ONBOARDING,
        "--workload",
        FRONTEND,
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");

    let bundle = out_dir.join("bundle.pem");
    for (name, secret) in [
        ("bundle.pem", false),
        ("gateway.crt", false),
        ("gateway.key", true),
        ("ca.key", true),
        ("ns-kyc-sa-onboarding.crt", false),
        ("ns-kyc-sa-onboarding.key", true),
        ("ns-web-sa-frontend.crt", false),
        ("ns-web-sa-frontend.key", true),
    ] {
        let p = out_dir.join(name);
        assert!(p.is_file(), "{name} not written; stdout:\n{out}");
        if secret {
            assert_eq!(mode(&p), 0o600, "{name} mode");
        } else {
            assert_eq!(mode(&p) & 0o077 & !0o044, 0, "{name} mode {:o}", mode(&p));
        }
    }

    assert!(
        openssl_text(&bundle).contains("CA:TRUE"),
        "the bundle is a CA"
    );
    for (id, stem) in [
        (ONBOARDING, "ns-kyc-sa-onboarding"),
        (FRONTEND, "ns-web-sa-frontend"),
    ] {
        let crt = out_dir.join(format!("{stem}.crt"));
        let text = openssl_text(&crt);
        assert!(
            text.contains(&format!("URI:{id}")),
            "{stem}.crt lacks URI SAN {id}:\n{text}"
        );
        assert!(text.contains("CA:FALSE"), "{stem}.crt is a leaf:\n{text}");
        let (code, vout, verr) = run_bounded(
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(&bundle)
                .arg(&crt),
            LIMIT,
        );
        assert_eq!(
            code, 0,
            "{stem}.crt does not chain to bundle.pem: {vout}{verr}"
        );
    }
    let gw = openssl_text(&out_dir.join("gateway.crt"));
    for san in [
        "URI:spiffe://example.org/idgate",
        "DNS:localhost",
        "IP Address:127.0.0.1",
    ] {
        assert!(gw.contains(san), "gateway.crt lacks {san}:\n{gw}");
    }
}

#[test]
fn dev_pki_refuses_a_workload_outside_the_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let (code, out, err) = idgate(&[
        "dev-pki",
        "--out",
        out_dir.to_str().unwrap(),
        "--trust-domain",
        TD,
        "--workload",
        ONBOARDING,
        "--workload",
        "spiffe://other.org/ns/kyc/sa/onboarding",
    ]);
    assert!(
        err.contains("spiffe://other.org/ns/kyc/sa/onboarding"),
        "the refusal names the workload: {err}"
    );
    assert!(!out_dir.join("bundle.pem").exists(), "nothing is written");
    assert_eq!(
        code, 2,
        "a usage problem exits 2; stdout:\n{out}\nstderr:\n{err}"
    );
}

#[test]
fn dev_pki_refuses_a_malformed_spiffe_id_or_trust_domain() {
    for (td, workload) in [
        (TD, "spiffe://example.org//double-slash"),
        (TD, "spiffe://example.org/trailing/"),
        (TD, "https://example.org/ns/kyc"),
        (TD, "spiffe://Example.org/upper"),
        (TD, "spiffe://example.org/ns/../up"),
        ("Example.Org", "spiffe://example.org/ns/kyc"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("pki");
        let (code, out, err) = idgate(&[
            "dev-pki",
            "--out",
            out_dir.to_str().unwrap(),
            "--trust-domain",
            td,
            "--workload",
            workload,
        ]);
        assert_eq!(code, 2, "{td} {workload}: stdout:\n{out}\nstderr:\n{err}");
        assert!(err.contains("error:"), "{err}");
        assert!(!out_dir.exists(), "{td} {workload}: something was written");
    }
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

// ---------------------------------------------------------------------------------- serve

#[test]
fn serve_with_an_invalid_config_exits_2_and_prints_the_problems_without_starting() {
    let ws = Workspace::new();
    let mut invalid_file = ws
        .base()
        .upstream(upstream("provider", &format!("env:{SET_ENV}")))
        .route(route("r", "/r", "no-such-upstream", ONBOARDING));
    invalid_file
        .listener
        .extra
        .insert("tls_min_version".into(), "1.0".into());
    // Valid as a file, but the secret it needs is missing: refused before binding as well.
    let missing_secret = ws
        .base()
        .upstream(upstream("provider", &format!("env:{UNSET_ENV}")))
        .route(route("r", "/r", "provider", ONBOARDING));
    for (name, text, expected) in [
        (
            "invalid.toml",
            invalid_file,
            &["listener.tls_min_version", "routes[0].upstream"][..],
        ),
        ("missing-secret.toml", missing_secret, &[UNSET_ENV][..]),
    ] {
        let config = ws.write_config(name, &text);
        // The gateway writes this file once it has bound its listeners and serves.
        let ready_file = ws.path(&format!("{name}.ready"));
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file)
            .env_remove("IDGATE_LOG")
            .env_remove(UNSET_ENV)
            .env(SET_ENV, "provider-key-for-serve");
        let (code, out, err) = run_bounded(&mut cmd, LIMIT);
        let all = format!("{out}{err}");
        assert_eq!(code, 2, "{name}: {all}");
        for e in expected {
            assert!(
                all.contains(e),
                "{name}: the output does not name {e:?}:\n{all}"
            );
        }
        assert!(!all.contains("serving"), "{name}: it started:\n{all}");
        // The listeners bind port 0, so no port number could tell whether they were bound;
        // the ready file would.
        assert!(
            !ready_file.exists(),
            "{name}: the gateway reported its listeners bound"
        );
    }
}
