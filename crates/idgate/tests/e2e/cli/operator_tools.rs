//! The operator's tools with `--config` (`idgate webhooks`, `idgate keys`, `idgate
//! incidents`) read only the secrets their command uses: a provider credential only the
//! gateway's user may read does not stop them, and a secret they do use that cannot be
//! read stops them with its key or flag and its file named.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use idgate_store::redis_testing::{RedisServer, ServerOptions};

use super::*;
use crate::assert_eventually;
use crate::webhooks::{
    DIDIT_SECRET, SUBSCRIBER_SECRET, Subscriber, envelope, now_secs, post_signed, provider_client,
    webhook_config,
};

const PROVIDER_KEY: &str = "provider-api-key-for-the-operator-tests-3b8e";
const REDIS_PASSWORD: &str = "gateway-redis-password-6d2a";
const KEYS_PASSWORD: &str = "keys-redis-password-0c7f";
const PEPPER: &str = "q8Zt1Vb4Nc7Xm2Lk5Jh9Gf3Ds6Aa0Pe1Ow4Ir7Uy2Tq=";

fn args(words: &[&str], config: &Path) -> Vec<String> {
    let mut all: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
    all.extend(["--config".to_owned(), config.display().to_string()]);
    all
}

/// Makes the secret file at `path` one the gateway refuses to anyone but its own user:
/// owned by another user when the tests run as root (who could read any mode), readable
/// by others otherwise.
fn only_for_another_user(path: &Path) {
    if std::fs::metadata(path).unwrap().uid() == 0 {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    } else {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
}

/// An upstream whose credential is the file `key`, and a route to it.
fn with_provider(config: GatewayConfig, key: &Path) -> GatewayConfig {
    config
        .upstream(
            UpstreamSpec::new("provider", "https://127.0.0.1:9").credential(
                CredentialSpec::header("x-api-key", &format!("file:{}", key.display())),
            ),
        )
        .route(RouteSpec::new(
            "provider",
            &["GET"],
            "/provider",
            "provider",
            &[ONBOARDING],
        ))
}

fn file_ref(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// Nothing secret in what a command printed.
fn assert_no_secret(out: &str, err: &str) {
    for secret in [
        PROVIDER_KEY,
        REDIS_PASSWORD,
        KEYS_PASSWORD,
        PEPPER,
        DIDIT_SECRET,
        SUBSCRIBER_SECRET,
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "a secret was printed:\n{out}{err}"
        );
    }
}

#[tokio::test]
async fn webhooks_cli_needs_only_the_outbox_keys_and_state_password() {
    within(async {
        let Some(redis) = RedisServer::start_with(ServerOptions {
            password: Some(REDIS_PASSWORD.to_owned()),
            ..ServerOptions::default()
        }) else {
            return;
        };
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("redis-password");
        write_private(&password, REDIS_PASSWORD.as_bytes());
        let provider_key = dir.path().join("provider.key");
        write_private(&provider_key, PROVIDER_KEY.as_bytes());
        let mut sub = Subscriber::start(&pki).await;
        let spec = with_provider(
            webhook_config(&pki, dir.path(), &sub.url(), toml::Table::new()),
            &provider_key,
        )
        .section(
            "state",
            table([
                ("backend", "redis".into()),
                ("url", redis.url().into()),
                ("password", file_ref(&password).into()),
            ]),
        );
        let config = dir.path().join("idgate.toml");
        std::fs::write(&config, spec.to_toml()).unwrap();

        // A dead letter in the outbox, its body personal data.
        let gw = Gateway::start(&spec, &[]).await;
        sub.answer(&[410]);
        let mut e = envelope("evt-operator", "sess-op", 1, now_secs());
        e["decision"] = serde_json::json!({"full_name": "Ada Lovelace"});
        let r = post_signed(&provider_client(&pki, gw.port), DIDIT_SECRET, &e)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eventually!(
            gw.output().contains("webhook event is a dead letter"),
            "not buried:\n{}",
            gw.output()
        );
        drop(gw);
        sub.down();

        // The provider's and the subscriber's secrets are the gateway's user's alone, and
        // so is the upstream credential; one of them is not even there.
        only_for_another_user(&dir.path().join("didit.secret"));
        only_for_another_user(&provider_key);
        std::fs::remove_file(dir.path().join("subscriber.secret")).unwrap();

        let (code, out, err) = idgate_cli_async(args(&["webhooks", "list"], &config)).await;
        assert_eq!(code, 0, "{out}{err}");
        assert_no_secret(&out, &err);
        let id = out
            .lines()
            .find(|l| l.starts_with("didit/kyc/") && l.contains("dead"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no dead letter listed:\n{out}"))
            .to_owned();
        let (code, out, err) =
            idgate_cli_async(args(&["webhooks", "show", &id, "--body"], &config)).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("Ada Lovelace"), "{out}");

        // What the command uses is still read, and named when it cannot be.
        let outbox_key = dir.path().join("outbox.key");
        only_for_another_user(&outbox_key);
        let (code, out, err) =
            idgate_cli_async(args(&["webhooks", "show", &id, "--body"], &config)).await;
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains("didit: outbox key: ") && err.contains(&outbox_key.display().to_string()),
            "{err}"
        );
        assert!(!out.contains("Ada Lovelace"), "{out}");
        // Listing needs no outbox key.
        let (code, out, err) = idgate_cli_async(args(&["webhooks", "list"], &config)).await;
        assert_eq!(code, 0, "{out}{err}");

        only_for_another_user(&password);
        let (code, out, err) = idgate_cli_async(args(&["webhooks", "list"], &config)).await;
        assert_ne!(code, 0, "{out}{err}");
        assert!(
            err.contains(&format!("state.password: {}", password.display())),
            "{err}"
        );
        assert_no_secret(&out, &err);
    })
    .await;
}

/// A Redis server whose one user, `idgate-keys`, has `KEYS_PASSWORD`.
fn keys_redis() -> Option<RedisServer> {
    RedisServer::start_with(ServerOptions {
        username: Some("idgate-keys".to_owned()),
        password: Some(KEYS_PASSWORD.to_owned()),
        ..ServerOptions::default()
    })
}

#[tokio::test]
async fn keys_cli_needs_only_the_pepper_and_its_own_redis_password() {
    within(async {
        let Some(redis) = keys_redis() else {
            return;
        };
        let pki = Pki::default_pki();
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| -> PathBuf { dir.path().join(name) };
        let pepper = at("apikey-pepper");
        write_private(&pepper, PEPPER.as_bytes());
        let keys_password = at("redis-keys-password");
        write_private(&keys_password, KEYS_PASSWORD.as_bytes());
        // The gateway's own Redis user and upstream credential: its user's alone.
        let gateway_password = at("redis-password");
        write_private(&gateway_password, REDIS_PASSWORD.as_bytes());
        only_for_another_user(&gateway_password);
        let provider_key = at("provider.key");
        write_private(&provider_key, PROVIDER_KEY.as_bytes());
        only_for_another_user(&provider_key);
        let spec = with_provider(base_config(&pki), &provider_key)
            .section(
                "state",
                table([
                    ("backend", "redis".into()),
                    ("url", redis.url().into()),
                    ("username", "idgate".into()),
                    ("password", file_ref(&gateway_password).into()),
                ]),
            )
            .section("api_keys", table([("pepper", file_ref(&pepper).into())]));
        let config = at("idgate.toml");
        std::fs::write(&config, spec.to_toml()).unwrap();
        let keys = |words: &[&str]| {
            let mut all = args(&["keys", words[0]], &config);
            all.extend(words[1..].iter().map(|w| (*w).to_owned()));
            all.extend([
                "--redis-user".to_owned(),
                "idgate-keys".to_owned(),
                "--redis-password".to_owned(),
                file_ref(&keys_password),
            ]);
            idgate_cli_async(all)
        };

        let (code, out, err) = keys(&["create", "--name", "batch"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.trim().starts_with("idg_"), "{out}");
        let (code, out, err) = keys(&["list"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("batch"), "{out}");
        assert!(!err.contains("note:"), "{err}");
        assert_no_secret(&out, &err);

        // The pepper is read where it is needed, and named when it cannot be.
        only_for_another_user(&pepper);
        let (code, out, err) = keys(&["create", "--name", "other"]).await;
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains(&pepper.display().to_string()), "{err}");
        // Listing needs no pepper, but says what it could not check without it.
        let (code, out, err) = keys(&["list"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            err.contains("note: ") && err.contains(&pepper.display().to_string()),
            "{err}"
        );

        // So is the Redis password it was given.
        only_for_another_user(&keys_password);
        let (code, out, err) = keys(&["list"]).await;
        assert_eq!(code, 2, "{out}{err}");
        assert!(
            err.contains(&format!("--redis-password: {}", keys_password.display())),
            "{err}"
        );
        assert_no_secret(&out, &err);
    })
    .await;
}

#[test]
fn incidents_cli_needs_no_secret_of_the_configuration() {
    let pki = Pki::default_pki();
    let dir = tempfile::tempdir().unwrap();
    let provider_key = dir.path().join("provider.key");
    write_private(&provider_key, PROVIDER_KEY.as_bytes());
    only_for_another_user(&provider_key);
    let incidents = dir.path().join("incidents");
    std::fs::create_dir(&incidents).unwrap();
    let spec = with_provider(base_config(&pki), &provider_key).section(
        "incidents",
        table([
            ("dir", incidents.display().to_string().into()),
            (
                "notify",
                table([
                    ("url", "https://127.0.0.1:9/hooks/incidents".into()),
                    ("secret", format!("env:{UNSET_ENV}").into()),
                ])
                .into(),
            ),
        ]),
    );
    let config = dir.path().join("idgate.toml");
    std::fs::write(&config, spec.to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&["incidents", "list", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ID\tSTATE"), "{out}");
    assert_no_secret(&out, &err);
}
