#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::HeaderMap;
use idgate_store::MemoryStore;

use super::*;

const PEPPER: &[u8] = b"0123456789abcdef0123456789abcdef-pepper";
const ONBOARDING: &str = "spiffe://example.org/ns/kyc/sa/onboarding";

fn pepper() -> Pepper {
    Pepper::new(SecretBox::new(PEPPER.into()), "test").unwrap()
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn spec(name: &str) -> KeySpec {
    KeySpec::new(name, vec!["sessions:create".into()], None, None).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

#[test]
fn the_verifier_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + Clone + 'static>() {}
    shared::<ApiKeyVerifier>();
}

#[test]
fn keys_have_the_documented_format_and_are_all_different() {
    let p = pepper();
    let a = generate(&p, &spec("batch"), t(1_800_000_000)).unwrap();
    let b = generate(&p, &spec("batch"), t(1_800_000_000)).unwrap();
    let key = a.key.expose_secret();
    assert_eq!(key.len(), KEY_LEN);
    assert!(key.starts_with("idg_"));
    assert_eq!(parse_key_id(key), Some(a.record.id.as_str()));
    assert_eq!(a.record.id.len(), 16);
    assert_eq!(key.rsplit('_').next().unwrap().len(), 52);
    assert_ne!(a.record.id, b.record.id);
    assert_ne!(key, b.key.expose_secret());
    assert_eq!(a.record.created_at, t(1_800_000_000));
    assert_eq!(a.record.pepper_id, p.id());
    // Neither the key nor its secret part appears in the record or in Debug output.
    let secret = key.rsplit('_').next().unwrap();
    let shown = format!("{a:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert_ne!(a.record.hash, [0; 32]);
}

#[test]
fn base32_matches_rfc4648_vectors() {
    // RFC 4648 §10, lowercase and unpadded.
    for (input, out) in [
        ("", ""),
        ("f", "my"),
        ("fo", "mzxq"),
        ("foo", "mzxw6"),
        ("foob", "mzxw6yq"),
        ("fooba", "mzxw6ytb"),
        ("foobar", "mzxw6ytboi"),
    ] {
        assert_eq!(base32(input.as_bytes()), out, "{input}");
    }
}

#[test]
fn malformed_keys_do_not_parse() {
    let good = format!("idg_{}_{}", "a".repeat(16), "b".repeat(52));
    assert!(parse_key_id(&good).is_some());
    for bad in [
        String::new(),
        good.replacen("idg_", "idx_", 1),
        good.to_uppercase(),
        format!("{good}c"),
        good[..good.len() - 1].to_owned(),
        good.replacen("a_b", "aab", 1),
        good.replacen('b', "1", 1),
        good.replacen('b', "é", 1),
    ] {
        assert_eq!(parse_key_id(&bad), None, "{bad}");
    }
}

#[test]
fn a_key_parses_only_with_every_character_in_the_base32_alphabet() {
    let alphabet: Vec<u8> = (b'a'..=b'z').chain(b'2'..=b'7').collect();
    for byte in 0..=0x7f_u8 {
        for at in [4, 19, 21, 72] {
            let mut key = format!("idg_{}_{}", "a".repeat(16), "b".repeat(52)).into_bytes();
            key[at] = byte;
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            assert_eq!(
                parse_key_id(&key).is_some(),
                alphabet.contains(&byte),
                "byte {byte:#04x} at {at}"
            );
        }
    }
}

#[test]
fn the_hash_is_keyed_with_the_pepper() {
    let key = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let a = pepper();
    let b = Pepper::new(
        SecretBox::new(b"another pepper, also 32 bytes long!".as_slice().into()),
        "b",
    )
    .unwrap();
    assert_eq!(a.hash(key), a.hash(key));
    assert_ne!(a.hash(key), b.hash(key));
    assert_ne!(a.id(), b.id());
    // Not a bare SHA-256 of the key: a stolen database alone does not let one test guesses.
    let bare = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    assert_ne!(a.hash(key).as_slice(), bare.as_ref());
    assert!(matches!(
        Pepper::new(SecretBox::new(b"short".as_slice().into()), "file:/p"),
        Err(ApiKeyError::PepperTooShort { len: 5, .. })
    ));
    assert!(!format!("{a:?}").contains("pepper\""));
    assert!(!format!("{a:?}").contains("0123456789"));
}

#[test]
fn verifies_a_good_key_and_refuses_every_kind_of_wrong_one_alike() {
    let p = pepper();
    let now = t(1_800_000_000);
    let good = generate(&p, &spec("batch"), now).unwrap();
    let mut expiring = KeySpec::new("nightly", vec![], Some(t(1_800_000_100)), None).unwrap();
    expiring.scopes = vec!["a".into(), "b".into()];
    let expiring = generate(&p, &expiring, now).unwrap();
    let revoked = generate(&p, &spec("old"), now).unwrap();
    let mut revoked_record = revoked.record.clone();
    revoked_record.revoked_at = Some(now);
    let verifier = ApiKeyVerifier::new(
        pepper(),
        [good.record.clone(), expiring.record.clone(), revoked_record],
    );

    let ok = verifier
        .verify(good.key.expose_secret(), None, now)
        .unwrap();
    assert_eq!(ok.name, "batch");
    assert_eq!(ok.id, good.record.id);
    assert_eq!(ok.scopes, ["sessions:create"]);

    let key = good.key.expose_secret();
    let wrong_secret = format!(
        "{}{}",
        &key[..KEY_LEN - 1],
        if key.ends_with('a') { 'b' } else { 'a' }
    );
    let unknown = generate(&p, &spec("batch"), now).unwrap();
    for (what, presented, at) in [
        ("wrong secret", wrong_secret.as_str(), now),
        ("unknown id", unknown.key.expose_secret(), now),
        ("malformed", "idg_nope", now),
        ("empty", "", now),
        ("revoked", revoked.key.expose_secret(), now),
        ("expired", expiring.key.expose_secret(), t(1_800_000_100)),
    ] {
        assert_eq!(
            verifier.verify(presented, None, at),
            Err(AuthFailure::InvalidApiKey),
            "{what}"
        );
    }
    assert!(
        verifier
            .verify(expiring.key.expose_secret(), None, t(1_800_000_099))
            .is_ok()
    );

    // The same key under another pepper is refused.
    let other = ApiKeyVerifier::new(
        Pepper::new(
            SecretBox::new(b"another pepper, also 32 bytes long!".as_slice().into()),
            "b",
        )
        .unwrap(),
        [good.record.clone()],
    );
    assert_eq!(
        other.verify(key, None, now),
        Err(AuthFailure::InvalidApiKey)
    );
}

#[test]
fn a_bound_key_works_only_from_its_workload() {
    let p = pepper();
    let now = t(1_800_000_000);
    let spec = KeySpec::new("onboarding", vec![], None, Some(id(ONBOARDING))).unwrap();
    let k = generate(&p, &spec, now).unwrap();
    assert_eq!(k.record.bound_spiffe.as_deref(), Some(ONBOARDING));
    let v = ApiKeyVerifier::new(pepper(), [k.record.clone()]);
    let key = k.key.expose_secret();
    assert_eq!(
        v.verify(key, Some(&id(ONBOARDING)), now).unwrap().workload,
        Some(id(ONBOARDING)),
        "a bound key is also its workload"
    );
    assert_eq!(
        v.verify(
            key,
            Some(&id("spiffe://example.org/ns/web/sa/frontend")),
            now
        ),
        Err(AuthFailure::ApiKeyBindingMismatch)
    );
    assert_eq!(
        v.verify(key, None, now),
        Err(AuthFailure::ApiKeyBindingMismatch)
    );
    // A wrong key says nothing about bindings.
    let wrong = format!(
        "{}{}",
        &key[..KEY_LEN - 1],
        if key.ends_with('a') { 'b' } else { 'a' }
    );
    assert_eq!(v.verify(&wrong, None, now), Err(AuthFailure::InvalidApiKey));
}

#[test]
fn a_record_whose_binding_or_scopes_were_changed_in_the_store_is_refused() {
    let p = pepper();
    let now = t(1_800_000_000);
    let spec = KeySpec::new(
        "reporting",
        vec!["sessions:read".into()],
        Some(t(1_800_000_100)),
        Some(id(ONBOARDING)),
    )
    .unwrap();
    let k = generate(&p, &spec, now).unwrap();
    let other = generate(&p, &self::spec("admin"), now).unwrap();
    let key = k.key.expose_secret();
    let peer = id(ONBOARDING);
    let elsewhere = id("spiffe://example.org/ns/web/sa/frontend");
    assert!(p.vouches_for(&k.record));
    assert!(
        ApiKeyVerifier::new(pepper(), [k.record.clone()])
            .verify(key, Some(&peer), now)
            .is_ok()
    );

    let changed = |f: &dyn Fn(&mut StoredKey)| {
        let mut r = k.record.clone();
        f(&mut r);
        r
    };
    for (what, record) in [
        ("binding removed", changed(&|r| r.bound_spiffe = None)),
        (
            "binding moved",
            changed(&|r| r.bound_spiffe = Some(elsewhere.as_str().to_owned())),
        ),
        (
            "scope added",
            changed(&|r| r.scopes.push("sessions:delete".into())),
        ),
        (
            "scope replaced",
            changed(&|r| r.scopes = vec!["admin".into()]),
        ),
        ("renamed", changed(&|r| r.name = "admin".into())),
        ("expiry cleared", changed(&|r| r.expires_at = None)),
        (
            "expiry moved",
            changed(&|r| r.expires_at = Some(t(1_900_000_000))),
        ),
        (
            "created moved",
            changed(&|r| r.created_at = t(1_800_000_050)),
        ),
        ("tag removed", changed(&|r| r.tag = None)),
        (
            "another record's tag",
            changed(&|r| r.tag = other.record.tag),
        ),
        (
            "pepper id changed",
            changed(&|r| r.pepper_id = "0011223344556677".into()),
        ),
    ] {
        assert!(!p.vouches_for(&record), "{what}");
        let verifier = ApiKeyVerifier::new(pepper(), [record]);
        for from in [Some(&peer), Some(&elsewhere), None] {
            assert_eq!(
                verifier.verify(key, from, now),
                Err(AuthFailure::InvalidApiKey),
                "{what}, from {from:?}"
            );
        }
    }

    // A tag made with the pepper itself rather than the key derived from it is refused too.
    let mut raw = k.record.clone();
    let raw_tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, PEPPER),
        &granting_fields(&raw),
    );
    raw.tag = Some(raw_tag.as_ref().try_into().unwrap());
    assert!(!p.vouches_for(&raw));

    // Revocation and rotation are outside the tag: the store writes them without the pepper.
    let mut rotated = k.record.clone();
    rotated.replaced_by = Some(other.record.id.clone());
    rotated.grace_until = Some(t(1_800_000_050));
    assert!(p.vouches_for(&rotated));
    let verifier = ApiKeyVerifier::new(pepper(), [rotated.clone()]);
    assert!(verifier.verify(key, Some(&peer), now).is_ok());
    rotated.revoked_at = Some(now);
    assert!(p.vouches_for(&rotated));
}

#[test]
fn names_and_scopes_are_checked() {
    assert!(
        KeySpec::new(
            "batch-job_1.x",
            vec!["a:b".into(), "c/d".into()],
            None,
            None
        )
        .is_ok()
    );
    for name in ["", "has space", "a\"b", &"x".repeat(65), "naïve"] {
        assert!(
            matches!(
                KeySpec::new(name, vec![], None, None),
                Err(ApiKeyError::InvalidName(_))
            ),
            "{name}"
        );
    }
    for scope in ["", "a b", "a,b", "a\"", "é"] {
        assert!(
            matches!(
                KeySpec::new("n", vec![scope.into()], None, None),
                Err(ApiKeyError::InvalidScope(_))
            ),
            "{scope}"
        );
    }
}

#[test]
fn rotation_keeps_the_old_key_for_its_grace_period_and_revocation_is_picked_up() {
    let p = pepper();
    let now = SystemTime::now();
    let store = Arc::new(MemoryStore::new());
    let old = generate(&p, &spec("batch"), now).unwrap();
    block_on(store.insert(&old.record)).unwrap();
    let verifier = ApiKeyVerifier::with_store(pepper(), store.clone()).unwrap();
    assert!(verifier.verify(old.key.expose_secret(), None, now).is_ok());

    let new = generate(&p, &spec("batch"), now).unwrap();
    let until = now + Duration::from_secs(3600);
    block_on(store.rotate(&old.record.id, &new.record, until)).unwrap();
    assert!(verifier.reload().unwrap(), "a changed store is re-read");
    for key in [&old.key, &new.key] {
        assert!(verifier.verify(key.expose_secret(), None, now).is_ok());
    }
    let after = until + Duration::from_secs(1);
    assert_eq!(
        verifier.verify(old.key.expose_secret(), None, after),
        Err(AuthFailure::InvalidApiKey)
    );
    assert!(
        verifier
            .verify(new.key.expose_secret(), None, after)
            .is_ok()
    );

    block_on(store.revoke(&new.record.id, now)).unwrap();
    verifier.reload().unwrap();
    assert_eq!(
        verifier.verify(new.key.expose_secret(), None, now),
        Err(AuthFailure::InvalidApiKey)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_reload_task_picks_up_a_revocation_in_a_redb_file_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.redb");
    let pepper_path = dir.path().join("pepper");
    std::fs::write(&pepper_path, PEPPER).unwrap();
    std::fs::set_permissions(
        &pepper_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let pepper_ref = SecretRef::parse("file:pepper", dir.path()).unwrap();

    // The gateway starts before the store exists.
    let verifier = ApiKeyVerifier::open(&path, &pepper_ref).unwrap();
    assert!(verifier.is_empty());
    let task = verifier.spawn_reload(Duration::from_millis(100));

    // The CLI, in another handle, writes while the gateway polls.
    let writer = RedbStore::open(&path, idgate_store::DEFAULT_WAIT).unwrap();
    let k = generate(&pepper(), &spec("batch"), SystemTime::now()).unwrap();
    writer.insert(&k.record).await.unwrap();
    let key = k.key.expose_secret().to_owned();
    let deadline = Instant::now() + Duration::from_secs(1);
    while verifier.verify(&key, None, SystemTime::now()).is_err() {
        assert!(
            Instant::now() < deadline,
            "a new key is accepted within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    writer
        .revoke(&k.record.id, SystemTime::now())
        .await
        .unwrap();
    // From the moment the revocation is committed (the commit's own wait for the disk,
    // long on a loaded machine, is not the reload task's).
    let revoked_at = Instant::now();
    while verifier.verify(&key, None, SystemTime::now()).is_ok() {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "revocation takes effect within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(verifier);
    // With every verifier gone, the task ends by itself.
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    h
}

#[test]
fn keys_are_taken_from_x_api_key_or_authorization_apikey() {
    let k = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let other = "idg_cccccccccccccccc_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let auth = format!("ApiKey {k}");
    assert_eq!(presented_key(&headers(&[])).unwrap(), None);
    assert_eq!(
        presented_key(&headers(&[("x-api-key", k)])).unwrap(),
        Some(k)
    );
    assert_eq!(
        presented_key(&headers(&[("authorization", &auth)])).unwrap(),
        Some(k)
    );
    assert_eq!(
        presented_key(&headers(&[("authorization", &format!("apikey   {k}"))])).unwrap(),
        Some(k)
    );
    assert_eq!(
        presented_key(&headers(&[("x-api-key", k), ("authorization", &auth)])).unwrap(),
        Some(k)
    );
    // A bearer token is the JWT layer's.
    assert_eq!(
        presented_key(&headers(&[("authorization", "Bearer abc")])).unwrap(),
        None
    );
    assert_eq!(
        presented_key(&headers(&[
            ("x-api-key", k),
            ("authorization", "Bearer abc")
        ]))
        .unwrap(),
        Some(k)
    );
    assert!(matches!(
        presented_key(&headers(&[
            ("x-api-key", k),
            ("authorization", &format!("ApiKey {other}"))
        ])),
        Err(AuthFailure::InvalidRequest(_))
    ));
    assert!(matches!(
        presented_key(&headers(&[("x-api-key", k), ("x-api-key", other)])),
        Err(AuthFailure::InvalidRequest(_))
    ));
    assert!(matches!(
        presented_key(&headers(&[("authorization", "ApiKey")])),
        Err(AuthFailure::InvalidRequest(_))
    ));
    assert_eq!(
        presented_key(&headers(&[("x-api-key", "")])),
        Err(AuthFailure::InvalidApiKey)
    );
    assert_eq!(
        presented_key(&headers(&[("x-api-key", "caf\u{e9}")])),
        Err(AuthFailure::InvalidApiKey)
    );
}

#[test]
fn parsers_of_untrusted_text_never_panic() {
    // A cheap deterministic fuzz over pieces that matter to the parsers.
    let pieces = [
        "idg_",
        "_",
        "%",
        "%5F",
        "%F0%9F",
        "%%",
        "+",
        "&",
        ";",
        "=",
        "a",
        "7",
        "é",
        "😀",
        "api_key",
        "KEY",
        "aaaaaaaaaaaaaaaa",
        "ApiKey ",
        " ",
        "\t",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let verifier = ApiKeyVerifier::new(pepper(), []);
    for _ in 0..20_000 {
        let mut s = String::new();
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        for _ in 0..(seed >> 60) {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            s.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
        }
        let _ = parse_key_id(&s);
        let _ = key_in_query(Some(&s));
        let _ = verifier.verify(&s, None, SystemTime::now());
        if let Ok(v) = http::HeaderValue::from_str(&s) {
            let mut h = HeaderMap::new();
            h.append("x-api-key", v.clone());
            h.append(http::header::AUTHORIZATION, v);
            let _ = presented_key(&h);
        }
    }
}

#[test]
fn keys_in_the_query_string_are_detected() {
    let k = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    for q in [
        "api_key=x".to_owned(),
        "a=1&APIKEY=x".to_owned(),
        "api-key=".to_owned(),
        "X-Api-Key=x".to_owned(),
        "key=x".to_owned(),
        "api%5Fkey=x".to_owned(),
        format!("token={k}"),
        format!("t={}", k.replace('_', "%5F")),
        k.to_owned(),
        format!("redirect=https%3A%2F%2Fx%2F%3Fk%3D{k}"),
        format!("a=1;b={}", k.to_uppercase()),
    ] {
        assert!(key_in_query(Some(&q)), "{q}");
    }
    for q in [
        None,
        Some(""),
        Some("session_id=abc&monkey=1"),
        Some("idg_=x"),
        Some("keys=1"),
        Some("q=idg_short"),
    ] {
        assert!(!key_in_query(q), "{q:?}");
    }
}

#[test]
fn key_shaped_values_are_found_under_any_name_and_plain_parameters_pass() {
    let k = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    for q in [
        format!("token={k}"),
        format!("t={}", k.replace('_', "%5F")),
        format!("a=1;b={}", k.to_uppercase()),
        format!("x={}", &k[..KEY_PREFIX.len() + ID_CHARS]),
    ] {
        assert!(idgate_key_in_query(Some(&q)), "{q}");
    }
    for q in [
        None,
        Some("key=abc"),
        Some("api_key=provider-side-param"),
        Some("q=idg_short"),
        Some("q=idg_aaaaaaaaaaaaaaa"),
        Some("q=idg_aaaaaaaaaaaaaaa1"),
    ] {
        assert!(!idgate_key_in_query(q), "{q:?}");
    }
}
