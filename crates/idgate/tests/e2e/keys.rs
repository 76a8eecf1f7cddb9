//! Caller API keys end to end: `idgate keys create|list|revoke|rotate` on a real store file,
//! and a running gateway that accepts a key and refuses it within a second of its revocation,
//! without a restart.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::*;

const PEPPER: &str = "n3Wq4p8yVh0cE2rT6uJk1LmZs9Xa7DfB5gHiOoPqRwE=";
const PROVIDER_TOKEN_ENV: &str = "TEST_KEYS_PROVIDER_TOKEN";
const PROVIDER_TOKEN: &str = "prov-token-for-keys-tests-9c1d";

/// The CLI from an async test, off the runtime's thread.
async fn idgate_async(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        idgate_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// A dev PKI, a pepper file (0600) and a gateway configuration with an `[api_keys]` section
/// and one route that takes API keys, all in one temporary directory.
struct Setup {
    pki: Pki,
    config: PathBuf,
    store: PathBuf,
    pepper: PathBuf,
    /// What `config` holds.
    spec: GatewayConfig,
}

/// The `[api_keys]` section for a store and a pepper reference.
fn api_keys(store: &str, pepper: &str) -> toml::Table {
    table([
        ("store", store.into()),
        ("pepper", pepper.into()),
        ("reload_interval", "250ms".into()),
    ])
}

impl Setup {
    /// `auth` is the route's `auth` list; the route allows `apikey:batch`.
    fn new(auth: &[&str], upstream_url: &str) -> Self {
        let pki = Pki::default_pki();
        let store = pki.path().join("keys.redb");
        let pepper = pki.path().join("apikey-pepper");
        std::fs::write(&pepper, format!("{PEPPER}\n")).unwrap();
        std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(0o600)).unwrap();
        let spec = base_config(&pki)
            .section(
                "api_keys",
                api_keys(
                    &store.display().to_string(),
                    &format!("file:{}", pepper.display()),
                ),
            )
            .upstream(
                UpstreamSpec::new("provider", upstream_url)
                    .ca(&pki.files.bundle)
                    .credential(CredentialSpec::header(
                        "x-provider-token",
                        &format!("env:{PROVIDER_TOKEN_ENV}"),
                    )),
            )
            .route(
                RouteSpec::new(
                    "create-session",
                    &["POST"],
                    "/v2/session/",
                    "provider",
                    &["apikey:batch"],
                )
                .with("auth", strings(auth)),
            );
        let config = pki.path().join("idgate.toml");
        std::fs::write(&config, spec.to_toml()).unwrap();
        Self {
            pki,
            config,
            store,
            pepper,
            spec,
        }
    }

    fn keys(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["keys", args[0], "--config", self.config.to_str().unwrap()];
        all.extend(&args[1..]);
        idgate_cli(&all)
    }

    fn keys_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            "keys".to_owned(),
            args[0].to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
        ];
        all.extend(args[1..].iter().map(|s| (*s).to_owned()));
        all
    }
}

/// The one line a `create` or `rotate` prints on stdout: the key.
fn key_from(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly the key on stdout: {stdout:?}");
    let key = lines[0].to_owned();
    assert!(
        key.len() == 73 && key.starts_with("idg_") && key.as_bytes()[20] == b'_',
        "idg_<16 id chars>_<52 secret chars>: {key}"
    );
    key
}

fn id_of(key: &str) -> &str {
    &key[4..20]
}

fn secret_of(key: &str) -> &str {
    &key[21..]
}

/// HMAC-SHA256 of the key under the test pepper, hex: what the store is meant to hold.
fn keyed_hash_hex(key: &str) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, PEPPER.as_bytes());
    ring::hmac::sign(&k, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The list row of a key id.
fn row<'a>(list: &'a str, id: &str) -> &'a str {
    list.lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} in list:\n{list}"))
}

#[test]
fn create_prints_the_key_once_and_the_store_holds_only_a_keyed_hash() {
    let s = Setup::new(&["api_key"], "https://127.0.0.1:9");
    let (code, out, err) = s.keys(&[
        "create",
        "--name",
        "batch",
        "--scopes",
        "sessions:create,sessions:read",
        "--expires",
        "90d",
        "--bind-spiffe",
        ONBOARDING,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let key = key_from(&out);
    assert!(
        !err.contains(secret_of(&key)),
        "the key only on stdout: {err}"
    );
    assert!(
        err.contains("only time the key is shown"),
        "a warning on stderr that it is not shown again: {err}"
    );
    assert!(
        err.contains(id_of(&key)) && err.contains("name batch"),
        "{err}"
    );

    // The store file: created 0600, holding neither the key, its secret part nor the pepper.
    let mode = std::fs::metadata(&s.store).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "store mode {mode:o}");
    let raw = std::fs::read(&s.store).unwrap();
    assert!(
        contains(&raw, id_of(&key).as_bytes()),
        "the id is the lookup key"
    );
    for (what, needle) in [
        ("key", key.as_str()),
        ("secret", secret_of(&key)),
        ("secret prefix", &secret_of(&key)[..16]),
        ("pepper", PEPPER),
    ] {
        assert!(
            !contains(&raw, needle.as_bytes()),
            "the store holds the {what}"
        );
    }
    let hash = keyed_hash_hex(&key);
    assert!(
        contains(&raw, hash.as_bytes()),
        "the store holds HMAC-SHA256(pepper, key)"
    );
    let unkeyed: String = ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        !contains(&raw, unkeyed.as_bytes()),
        "no bare SHA-256 of the key"
    );

    // list: metadata, never the key, its secret or its hash.
    let (code, list, err) = s.keys(&["list"]);
    assert_eq!(code, 0, "{list}{err}");
    let r = row(&list, id_of(&key));
    for part in [
        "batch",
        "sessions:create,sessions:read",
        ONBOARDING,
        "active",
    ] {
        assert!(r.contains(part), "{part} in {r}");
    }
    let (code, json, err) = s.keys(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["id"], id_of(&key));
    assert_eq!(v["bound_spiffe"], ONBOARDING);
    assert_eq!(v["state"], "active");
    for text in [&list, &json, &err] {
        assert!(!text.contains(secret_of(&key)), "{text}");
        assert!(!text.contains(&hash), "{text}");
    }

    // Paths in [api_keys] are relative to the configuration file, as the gateway reads them.
    // The provider's secret is not in this shell's environment, which `keys` does not need.
    let relative = s.pki.path().join("relative.toml");
    let mut config = s.spec.clone();
    config.sections.insert(
        "api_keys".into(),
        api_keys("relative.redb", "file:apikey-pepper").into(),
    );
    std::fs::write(&relative, config.to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&[
        "keys",
        "create",
        "--config",
        relative.to_str().unwrap(),
        "--name",
        "rel",
    ]);
    assert_eq!(code, 0, "{err}");
    key_from(&out);
    assert!(s.pki.path().join("relative.redb").exists(), "{err}");

    // A second key is a different one.
    let (code, out2, _) = s.keys(&["create", "--name", "batch"]);
    assert_eq!(code, 0);
    assert_ne!(key_from(&out2), key);
}

#[test]
fn bad_arguments_are_refused_before_anything_is_stored() {
    let s = Setup::new(&["api_key"], "https://127.0.0.1:9");
    for (args, needle) in [
        (vec!["create", "--name", "has space"], "invalid key name"),
        (
            vec!["create", "--name", "a", "--scopes", "x y"],
            "invalid scope",
        ),
        (
            vec!["create", "--name", "a", "--expires", "soon"],
            "--expires",
        ),
        (
            vec!["create", "--name", "a", "--expires", "0d"],
            "more than zero",
        ),
        (
            vec!["create", "--name", "a", "--bind-spiffe", "https://x"],
            "--bind-spiffe",
        ),
    ] {
        let (code, out, err) = s.keys(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: nothing on stdout: {out}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!s.store.exists(), "nothing was stored");

    // A pepper others can read is refused, naming the file and not its content.
    std::fs::set_permissions(&s.pepper, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = s.keys(&["create", "--name", "a"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("chmod 600") && !err.contains(PEPPER), "{err}");

    // Without [api_keys], --config says what is missing; --store/--pepper work without one.
    let bare = s.pki.path().join("bare.toml");
    let mut without = s.spec.clone();
    without.sections.remove("api_keys");
    without.routes[0]
        .extra
        .insert("auth".into(), strings(&["mtls"]));
    without.routes[0].allow = vec![ONBOARDING.into()];
    std::fs::write(&bare, without.to_toml()).unwrap();
    let (code, _, err) = idgate_cli(&["keys", "list", "--config", bare.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("[api_keys]"), "{err}");
    std::fs::set_permissions(&s.pepper, std::fs::Permissions::from_mode(0o600)).unwrap();
    let other_store = s.pki.path().join("other.redb");
    let (code, out, err) = idgate_cli(&[
        "keys",
        "create",
        "--store",
        other_store.to_str().unwrap(),
        "--pepper",
        &format!("file:{}", s.pepper.display()),
        "--name",
        "flags",
    ]);
    assert_eq!(code, 0, "{err}");
    key_from(&out);
}

#[test]
fn rotate_keeps_the_old_key_for_its_grace_and_revoke_is_recorded() {
    let s = Setup::new(&["api_key"], "https://127.0.0.1:9");
    let (_, out, _) = s.keys(&[
        "create",
        "--name",
        "batch",
        "--scopes",
        "a,b",
        "--bind-spiffe",
        ONBOARDING,
    ]);
    let old = key_from(&out);

    let (code, out, err) = s.keys(&["rotate", "--id", id_of(&old), "--grace", "2h"]);
    assert_eq!(code, 0, "{err}");
    let new = key_from(&out);
    assert_ne!(id_of(&new), id_of(&old));
    assert!(err.contains("only time the key is shown"), "{err}");
    assert!(
        err.contains(&format!("old key {} stays valid until", id_of(&old))),
        "{err}"
    );

    let (_, list, _) = s.keys(&["list"]);
    let old_row = row(&list, id_of(&old));
    assert!(
        old_row.contains(&format!("rotated to {}", id_of(&new))),
        "{old_row}"
    );
    let new_row = row(&list, id_of(&new));
    for part in ["batch", "a,b", ONBOARDING, "active"] {
        assert!(
            new_row.contains(part),
            "same name, scopes and binding: {new_row}"
        );
    }

    // A key is rotated once; the replacement is the one to rotate next.
    let (code, out, err) = s.keys(&["rotate", "--id", id_of(&old)]);
    assert_eq!(code, 1);
    assert!(out.is_empty() && err.contains(id_of(&new)), "{out}{err}");

    let (code, _, err) = s.keys(&["revoke", "--id", id_of(&new)]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = s.keys(&["list"]);
    assert!(row(&list, id_of(&new)).contains("revoked"), "{list}");
    let (code, _, err) = s.keys(&["rotate", "--id", id_of(&new)]);
    assert_eq!(code, 1, "a revoked key is not rotated: {err}");
    let (code, _, err) = s.keys(&["revoke", "--id", "aaaaaaaaaaaaaaaa"]);
    assert_eq!(code, 1);
    assert!(err.contains("no API key with id aaaaaaaaaaaaaaaa"), "{err}");

    // A zero grace ends the old key at once.
    let (_, out, _) = s.keys(&["create", "--name", "batch"]);
    let third = key_from(&out);
    let (code, _, _) = s.keys(&["rotate", "--id", id_of(&third), "--grace", "0s"]);
    assert_eq!(code, 0);
    let (_, list, _) = s.keys(&["list"]);
    assert!(row(&list, id_of(&third)).contains("expired"), "{list}");
}

async fn post(client: &Client, headers: &[(&str, &str)], path: &str) -> Reply {
    client.send("POST", path, headers, "{}").await.unwrap()
}

/// The judged behaviour: a running gateway accepts a key made after it started, and refuses
/// it within a second of `idgate keys revoke`, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_gateway_refuses_a_revoked_key_within_a_second() {
    tokio::time::timeout(Duration::from_secs(90), async {
        // The PKI first, then an upstream serving its certificate, then the config naming it.
        let s = Setup::new(&["mtls", "api_key"], "https://127.0.0.1:9");
        let upstream = TestUpstream::https(&s.pki, UpstreamMode::Echo).await;
        let mut config = s.spec.clone();
        config.upstreams[0].url = upstream.url(true);
        std::fs::write(&s.config, config.to_toml()).unwrap();

        let mut gw = Gateway::start(&config, &[(PROVIDER_TOKEN_ENV, PROVIDER_TOKEN)]).await;
        // The gateway started before any key existed; the CLI shares the store with it.
        let (code, out, err) = idgate_async(s.keys_args(&["create", "--name", "batch"])).await;
        assert_eq!(code, 0, "{err}");
        let key = key_from(&out);
        let (_, out, _) = idgate_async(s.keys_args(&["create", "--name", "other"])).await;
        let other = key_from(&out);

        let client = Client::new(&s.pki, Some(ONBOARDING), gw.port, false);
        let deadline = Instant::now() + Duration::from_secs(1);
        let reply = loop {
            let r = post(&client, &[("x-api-key", &key)], "/v2/session/").await;
            if r.status == 200 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(
            reply.status,
            200,
            "a key made while the gateway runs works within a second: {:?}\n{}",
            reply.body,
            gw.output()
        );
        let seen = upstream.last();
        assert!(
            seen.headers.get("x-api-key").is_none(),
            "the caller's key is not forwarded upstream"
        );
        assert_eq!(
            seen.headers.get("x-provider-token").unwrap(),
            PROVIDER_TOKEN
        );

        // The Authorization: ApiKey form works as well.
        let auth = format!("ApiKey {key}");
        let r = post(&client, &[("authorization", &auth)], "/v2/session/").await;
        assert_eq!(r.status, 200, "{:?}", r.body);

        // Another name is authenticated but not on the allow list.
        let r = post(&client, &[("x-api-key", &other)], "/v2/session/").await;
        assert_eq!(r.status, 403, "{:?}", r.body);

        // A wrong secret: 401 with an ApiKey challenge, and nothing about which part was wrong.
        let last = key.chars().last().unwrap();
        let wrong = format!("{}{}", &key[..72], if last == 'a' { 'b' } else { 'a' });
        let r = post(&client, &[("x-api-key", &wrong)], "/v2/session/").await;
        assert_eq!(r.status, 401, "{:?}", r.body);
        assert!(
            r.header("www-authenticate")
                .unwrap_or("")
                .contains("ApiKey"),
            "{:?}",
            r.headers
        );
        assert!(
            r.json()["type"]
                .as_str()
                .unwrap()
                .ends_with("invalid-api-key")
        );

        // In the query string, even a valid key is refused with a problem that says why.
        let before = upstream.requests().len();
        for path in [
            format!("/v2/session/?api_key={key}"),
            format!("/v2/session/?x={key}"),
        ] {
            let r = post(&client, &[], &path).await;
            assert_eq!(r.status, 400, "{path}: {:?}", r.body);
            let p = r.json();
            assert!(
                p["type"].as_str().unwrap().ends_with("api-key-in-query"),
                "{p}"
            );
            assert!(p["detail"].as_str().unwrap().contains("header"), "{p}");
        }
        assert_eq!(
            upstream.requests().len(),
            before,
            "nothing reached the upstream"
        );

        // Revoke while the gateway runs: refused within a second of the CLI returning.
        let (code, _, err) = idgate_async(s.keys_args(&["revoke", "--id", id_of(&key)])).await;
        assert_eq!(code, 0, "{err}");
        let revoked = Instant::now();
        let status = loop {
            let r = post(&client, &[("x-api-key", &key)], "/v2/session/").await;
            if r.status != 200 || revoked.elapsed() > Duration::from_secs(3) {
                break r.status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let took = revoked.elapsed();
        assert_eq!(status, 401, "a revoked key is refused");
        assert!(
            took < Duration::from_secs(1),
            "revocation took {took:?}, more than a second"
        );
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "no restart involved"
        );

        // Rotation on the running gateway: both keys work during the grace period.
        let (_, out, _) = idgate_async(s.keys_args(&["create", "--name", "batch"])).await;
        let first = key_from(&out);
        let (code, out, err) =
            idgate_async(s.keys_args(&["rotate", "--id", id_of(&first), "--grace", "1h"])).await;
        assert_eq!(code, 0, "{err}");
        let second = key_from(&out);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let a = post(&client, &[("x-api-key", &first)], "/v2/session/").await;
            let b = post(&client, &[("x-api-key", &second)], "/v2/session/").await;
            if a.status == 200 && b.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "old and new key both work: {} {}",
                a.status,
                b.status
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }

        // Neither the key nor its secret ever appears in the gateway's log.
        let log = gw.output();
        for k in [&key, &first, &second] {
            assert!(!log.contains(secret_of(k)), "a key in the log:\n{log}");
        }
    })
    .await
    .expect("the test finished within 90 s");
}

/// A key bound to a workload works only over that workload's mTLS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_key_works_only_from_its_workload() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let s = Setup::new(&["mtls", "api_key"], "https://127.0.0.1:9");
        let upstream = TestUpstream::https(&s.pki, UpstreamMode::Echo).await;
        let mut config = s.spec.clone();
        config.upstreams[0].url = upstream.url(true);
        let (code, out, err) =
            idgate_async(s.keys_args(&["create", "--name", "batch", "--bind-spiffe", ONBOARDING]))
                .await;
        assert_eq!(code, 0, "{err}");
        let key = key_from(&out);
        let gw = Gateway::start(&config, &[(PROVIDER_TOKEN_ENV, PROVIDER_TOKEN)]).await;
        let onboarding = Client::new(&s.pki, Some(ONBOARDING), gw.port, false);
        let frontend = Client::new(&s.pki, Some(FRONTEND), gw.port, false);
        let r = post(&onboarding, &[("x-api-key", &key)], "/v2/session/").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = post(&frontend, &[("x-api-key", &key)], "/v2/session/").await;
        assert_eq!(r.status, 403, "{:?}", r.body);
        assert!(
            r.json()["type"]
                .as_str()
                .unwrap()
                .ends_with("api-key-binding-mismatch")
        );
    })
    .await
    .expect("the test finished within 60 s");
}
