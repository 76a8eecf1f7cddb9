//! Caller API keys end to end: `idgate keys create|list|revoke|rotate` on a real store file,
//! and a running gateway that accepts a key and refuses it within a second of its revocation,
//! without a restart.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use idgate_store::redis_testing::RedisServer;

use crate::assert_eventually;
use crate::support::*;

const PEPPER: &str = "n3Wq4p8yVh0cE2rT6uJk1LmZs9Xa7DfB5gHiOoPqRwE=";
const PROVIDER_TOKEN_ENV: &str = "TEST_KEYS_PROVIDER_TOKEN";
const PROVIDER_TOKEN: &str = "prov-token-for-keys-tests-9c1d";

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

    // A second key for the same holder is a different one.
    let (code, out2, _) = s.keys(&["create", "--name", "batch", "--same-holder"]);
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
    let (_, out, _) = s.keys(&["create", "--name", "nightly"]);
    let third = key_from(&out);
    let (code, _, _) = s.keys(&["rotate", "--id", id_of(&third), "--grace", "0s"]);
    assert_eq!(code, 0);
    let (_, list, _) = s.keys(&["list"]);
    assert!(row(&list, id_of(&third)).contains("expired"), "{list}");
}

#[test]
fn create_refuses_a_name_any_key_has_had_without_same_holder() {
    let s = Setup::new(&["api_key"], "https://127.0.0.1:9");
    let (code, out, err) = s.keys(&["create", "--name", "partner"]);
    assert_eq!(code, 0, "{err}");
    let first = key_from(&out);

    // A second partner given the same name would be the first one's principal: refused,
    // naming the key that holds the name and the ways on.
    let (code, out, err) = s.keys(&["create", "--name", "partner", "--scopes", "a"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "no key printed: {out}");
    for part in [
        "the name partner is held by",
        id_of(&first),
        "(active)",
        "one principal",
        "rotate",
        "--same-holder",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    let (_, list, _) = s.keys(&["list", "--json"]);
    assert_eq!(list.lines().count(), 1, "nothing was added: {list}");

    // The same holder may have a second key.
    let (code, out, err) = s.keys(&["create", "--name", "partner", "--same-holder"]);
    assert_eq!(code, 0, "{err}");
    let second = key_from(&out);

    // A revoked key's name still owns what its keys created: a new holder given it would
    // read them, so the name stays taken; the same holder may have it again.
    for k in [&first, &second] {
        let (code, _, err) = s.keys(&["revoke", "--id", id_of(k)]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, out, err) = s.keys(&["create", "--name", "partner"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "no key printed: {out}");
    for part in [
        "the name partner was held by",
        id_of(&first),
        id_of(&second),
        "(revoked)",
        "ownership retention",
        "--same-holder",
    ] {
        assert!(err.contains(part), "{part} in {err}");
    }
    let (code, out, err) = s.keys(&["create", "--name", "partner", "--same-holder"]);
    assert_eq!(code, 0, "{err}");
    let third = key_from(&out);
    // A rotated key holds its name while its grace lasts.
    let (code, out, err) = s.keys(&["rotate", "--id", id_of(&third), "--grace", "1h"]);
    assert_eq!(code, 0, "{err}");
    let fourth = key_from(&out);
    let (code, _, err) = s.keys(&["revoke", "--id", id_of(&fourth)]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = s.keys(&["create", "--name", "partner"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("is held by") && err.contains(id_of(&third)) && err.contains("(rotated)"),
        "{err}"
    );
    // Another name is free.
    let (code, _, err) = s.keys(&["create", "--name", "partner-b"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn list_and_revoke_do_not_create_a_missing_store() {
    let s = Setup::new(&["api_key"], "https://127.0.0.1:9");
    assert!(!s.store.exists());
    let wanted = format!(
        "no key store at {}; `idgate keys create` makes it",
        s.store.display()
    );

    // Listing a store that is not there lists nothing, and leaves it not there.
    let (code, out, err) = s.keys(&["list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!s.store.exists(), "list created the store");
    assert!(err.contains(&wanted), "{err}");
    let (code, out, err) = s.keys(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(!s.store.exists(), "list created the store");

    // Revoking or rotating in a store that is not there says so.
    for args in [
        vec!["revoke", "--id", "aaaaaaaaaaaaaaaa"],
        vec!["rotate", "--id", "aaaaaaaaaaaaaaaa"],
    ] {
        let (code, out, err) = s.keys(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains(&wanted), "{args:?}: {err}");
        assert!(!s.store.exists(), "{args:?} created the store");
    }

    // `create` makes it (0600), and the others then work on it.
    let (code, out, err) = s.keys(&["create", "--name", "batch"]);
    assert_eq!(code, 0, "{err}");
    let key = key_from(&out);
    let mode = std::fs::metadata(&s.store).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (code, _, err) = s.keys(&["revoke", "--id", id_of(&key)]);
    assert_eq!(code, 0, "{err}");
    let (_, list, _) = s.keys(&["list"]);
    assert!(row(&list, id_of(&key)).contains("revoked"), "{list}");
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
        let (code, out, err) = idgate_cli_async(s.keys_args(&["create", "--name", "batch"])).await;
        assert_eq!(code, 0, "{err}");
        let key = key_from(&out);
        let (_, out, _) = idgate_cli_async(s.keys_args(&["create", "--name", "other"])).await;
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
        let (code, _, err) = idgate_cli_async(s.keys_args(&["revoke", "--id", id_of(&key)])).await;
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

        // Rotation on the running gateway: both keys work during the grace period. The
        // holder of the revoked key gets a new one under its name.
        let (_, out, _) =
            idgate_cli_async(s.keys_args(&["create", "--name", "batch", "--same-holder"])).await;
        let first = key_from(&out);
        let (code, out, err) =
            idgate_cli_async(s.keys_args(&["rotate", "--id", id_of(&first), "--grace", "1h"]))
                .await;
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
        let (code, out, err) = idgate_cli_async(s.keys_args(&[
            "create",
            "--name",
            "batch",
            "--bind-spiffe",
            ONBOARDING,
        ]))
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

/// The value of a bulk-string reply (`$N\r\n…\r\n`).
fn bulk(reply: &str) -> &str {
    let (head, rest) = reply.split_once("\r\n").unwrap();
    let len: usize = head.strip_prefix('$').unwrap().parse().unwrap();
    &rest[..len]
}

/// The Redis twin of the verifier's unit test: with the keys in Redis and the Redis users of
/// docs/state.md, a record someone rewrote in Redis (binding removed, renamed to a name the
/// route allows, a scope added, the expiry cleared) is refused by the running gateway and
/// not copied by `rotate`; only the keys user writes keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_record_widened_in_redis_is_refused_and_only_the_keys_user_writes_keys() {
    within_limit(Duration::from_secs(90), async {
        const REDIS_PASSWORD: &str = "redis-users-password-5e1f";
        let Some(redis) = RedisServer::start() else {
            return;
        };
        for (name, rules) in idgate_store::redis_testing::documented_users(REDIS_PASSWORD) {
            let reply = redis.query(&format!("ACL SETUSER {name} reset {}", rules.join(" ")));
            assert_eq!(reply, "+OK\r\n", "{name}: {reply}");
        }
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let private = |name: &str, content: &str| {
            let path = pki.path().join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            format!("file:{}", path.display())
        };
        let pepper = private("pepper", PEPPER);
        let password = private("redis-password", REDIS_PASSWORD);
        let config = base_config(&pki)
            .section(
                "state",
                table([
                    ("backend", "redis".into()),
                    ("url", redis.url().into()),
                    ("username", "idgate".into()),
                    ("password", password.as_str().into()),
                ]),
            )
            .section(
                "api_keys",
                table([
                    ("pepper", pepper.as_str().into()),
                    ("reload_interval", "250ms".into()),
                ]),
            )
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(
                RouteSpec::new(
                    "admin",
                    &["GET"],
                    "/v1/{*rest}",
                    "provider",
                    &["apikey:admin", "apikey:other"],
                )
                .with("auth", strings(&["api_key"])),
            );
        let file = pki.path().join("idgate.toml");
        std::fs::write(&file, config.to_toml()).unwrap();
        let file = file.display().to_string();
        let keys = |args: &[&str], as_keys_user: bool| {
            let mut all = vec!["keys".to_owned(), args[0].to_owned(), "--config".to_owned()];
            all.push(file.clone());
            all.extend(args[1..].iter().map(|a| (*a).to_owned()));
            if as_keys_user {
                all.extend(["--redis-user".to_owned(), "idgate-keys".to_owned()]);
                all.extend(["--redis-password".to_owned(), password.clone()]);
            }
            idgate_cli_async(all)
        };

        // The gateway's own user cannot write a key; the keys user can.
        let (code, out, err) = keys(&["create", "--name", "admin"], false).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.is_empty() && !err.contains(REDIS_PASSWORD),
            "{out}{err}"
        );
        let (code, out, err) = keys(
            &[
                "create",
                "--name",
                "reporting",
                "--scopes",
                "sessions:read",
                "--expires",
                "1d",
                "--bind-spiffe",
                ONBOARDING,
            ],
            true,
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let key = key_from(&out);
        let id = id_of(&key).to_owned();

        let gw = Gateway::start(&config, &[]).await;
        let frontend = Client::new(&pki, Some(FRONTEND), gw.port, false);
        let get = |client: &Client, key: String| {
            let client = client.clone();
            async move {
                client
                    .send("GET", "/v1/x", &[("x-api-key", &key)], "")
                    .await
                    .unwrap()
            }
        };
        let r = get(&frontend, key.clone()).await;
        assert_eq!(r.status, 403, "bound to another workload: {:?}", r.body);

        // Someone with write access to Redis, not the pepper, widens the record.
        let records = "idgate:{keys}:records";
        let stored = redis.query(&format!("HGET {records} {id}"));
        let mut record: serde_json::Value = serde_json::from_str(bulk(&stored)).unwrap();
        record["bound_spiffe"] = serde_json::Value::Null;
        record["name"] = "admin".into();
        record["scopes"] = serde_json::json!(["sessions:read", "sessions:delete"]);
        record["expires_at"] = serde_json::Value::Null;
        let widened = record.to_string();
        assert!(!widened.contains('\''));
        assert_eq!(
            redis.query(&format!("HSET {records} {id} '{widened}'")),
            ":0\r\n"
        );
        assert!(redis.query("INCR idgate:{keys}:version").starts_with(':'));

        // The gateway takes the record in at its next read, and refuses the key.
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            let r = get(&frontend, key.clone()).await;
            if r.status != 403 || Instant::now() > deadline {
                break r.status;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(
            status,
            401,
            "a widened record is refused, not taken at its word\n{}",
            gw.output()
        );

        // `rotate` does not copy it into a new key; `list` warns about it.
        let (code, out, err) = keys(&["rotate", "--id", &id], true).await;
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.is_empty() && err.contains("does not verify"),
            "{out}{err}"
        );
        let (code, _, err) = keys(&["list"], true).await;
        assert_eq!(code, 0, "{err}");
        assert!(err.contains(&id) && err.contains("do not verify"), "{err}");

        // The log says so once for the record, however often the store is read after.
        let (code, out, err) = keys(&["create", "--name", "other"], true).await;
        assert_eq!(code, 0, "{err}");
        let other = key_from(&out);
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&frontend, other.clone()).await.status != 200 {
            assert!(Instant::now() < deadline, "the new key is never accepted");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let warnings = |log: &str| {
            log.lines()
                .filter(|l| l.contains("tag does not verify"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        // Read from the pipe by another thread: the warning is waited for, then counted.
        assert_eventually!(
            !warnings(&gw.output()).is_empty(),
            "the record that does not verify was not logged:\n{}",
            gw.output()
        );
        let log = gw.output();
        let warnings = warnings(&log);
        assert_eq!(warnings.len(), 1, "{log}");
        assert!(warnings[0].contains(&id), "{log}");

        // What a store writer can still do: put back a record as it was before its
        // revocation. The key works again, and the gateway says so.
        let other_id = id_of(&other).to_owned();
        let before_revocation =
            bulk(&redis.query(&format!("HGET {records} {other_id}"))).to_owned();
        let (code, _, err) = keys(&["revoke", "--id", &other_id], true).await;
        assert_eq!(code, 0, "{err}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&frontend, other.clone()).await.status != 401 {
            assert!(
                Instant::now() < deadline,
                "the revoked key is still accepted"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        redis.query(&format!("HSET {records} {other_id} '{before_revocation}'"));
        redis.query("INCR idgate:{keys}:version");
        let deadline = Instant::now() + Duration::from_secs(5);
        while get(&frontend, other.clone()).await.status != 200 {
            assert!(
                Instant::now() < deadline,
                "the record put back is not taken"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eventually!(
            gw.output()
                .lines()
                .any(|l| l.contains("was withdrawn in the store") && l.contains(&other_id)),
            "the record put back was not logged:\n{}",
            gw.output()
        );
        let log = gw.output();
        for secret in [PEPPER, REDIS_PASSWORD, secret_of(&key), secret_of(&other)] {
            assert!(!log.contains(secret), "a secret in the log:\n{log}");
        }
    })
    .await;
}
