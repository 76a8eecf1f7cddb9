//! An issuer on loopback: metadata and JWKS over plain HTTP/1.1, every request counted.

use super::*;

#[derive(Clone, Default)]
struct Idp {
    /// path → (status, body)
    docs: Arc<Mutex<HashMap<String, (u16, String)>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Idp {
    async fn start() -> (Self, String) {
        let idp = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let server = idp.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    *server.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let delay = *server.delay.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    let (status, body) = server
                        .docs
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or((404, "{}".into()));
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tcp.write_all(resp.as_bytes()).await;
                });
            }
        });
        (idp, base)
    }

    fn set(&self, path: &str, status: u16, body: String) {
        self.docs
            .lock()
            .unwrap()
            .insert(path.into(), (status, body));
    }

    fn set_jwks(&self, keys: &[Jwk]) {
        self.set("/jwks", 200, json!({ "keys": keys }).to_string());
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn remote_config(issuer: &str, jwks_uri: Option<String>) -> IssuerConfig {
    let mut c = IssuerConfig::new("test-idp", issuer, vec![AUD.into()]);
    if let Some(u) = jwks_uri {
        c.discovery = false;
        c.jwks_uri = Some(u.parse().unwrap());
    }
    c
}

fn claims_for(issuer: &str) -> Value {
    let mut c = claims();
    c["iss"] = json!(issuer);
    c
}

#[tokio::test]
async fn discovers_the_jwks_and_checks_the_metadata_issuer() {
    let (idp, base) = Idp::start().await;
    let key = TestKey::p256();
    idp.set_jwks(&[key.jwk("k1", Algorithm::ES256)]);
    idp.set(
        "/.well-known/openid-configuration",
        200,
        json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}).to_string(),
    );
    let v = JwtVerifier::new(vec![remote_config(&base, None)], vec![]).unwrap();
    let token = sign_token(&key, &header("ES256", "k1"), &claims_for(&base));
    let id = verify(&v, &token).await.unwrap();
    assert_eq!(id.token.issuer, base);
    assert_eq!(
        (
            idp.hits("/.well-known/openid-configuration"),
            idp.hits("/jwks")
        ),
        (1, 1)
    );
    assert!(verify(&v, &token).await.is_ok());
    assert_eq!(idp.hits("/jwks"), 1, "cached");

    // RFC 8414 metadata when there is no OIDC document.
    let (idp2, base2) = Idp::start().await;
    idp2.set_jwks(&[key.jwk("k1", Algorithm::ES256)]);
    idp2.set(
        "/.well-known/oauth-authorization-server",
        200,
        json!({"issuer": base2, "jwks_uri": format!("{base2}/jwks")}).to_string(),
    );
    let v = JwtVerifier::new(vec![remote_config(&base2, None)], vec![]).unwrap();
    assert!(
        verify(
            &v,
            &sign_token(&key, &header("ES256", "k1"), &claims_for(&base2))
        )
        .await
        .is_ok()
    );

    // Metadata that speaks for another issuer is not believed.
    let (idp3, base3) = Idp::start().await;
    idp3.set_jwks(&[key.jwk("k1", Algorithm::ES256)]);
    idp3.set(
        "/.well-known/openid-configuration",
        200,
        json!({"issuer": "https://elsewhere.example", "jwks_uri": format!("{base3}/jwks")})
            .to_string(),
    );
    let v = JwtVerifier::new(vec![remote_config(&base3, None)], vec![]).unwrap();
    let token = sign_token(&key, &header("ES256", "k1"), &claims_for(&base3));
    let why = verify(&v, &token).await.unwrap_err();
    assert_eq!(why, "signing keys unavailable");
    assert_eq!(idp3.hits("/jwks"), 0);
    // The issuer's outage is not the caller's wrong credential: no lockout counts it.
    assert!(!AuthFailure::InvalidToken(why).is_failed_attempt());
    assert!(AuthFailure::InvalidToken("expired").is_failed_attempt());
}

/// An issuer publishing the key `old` (the other one, `new`, not yet), and a verifier that
/// has fetched it and refreshes for an unknown kid at most every 2 s.
async fn rotating_issuer() -> (Idp, String, TestKey, TestKey, Arc<JwtVerifier>) {
    let (idp, base) = Idp::start().await;
    let (old, new) = (TestKey::ed25519(), TestKey::ed25519());
    idp.set_jwks(&[old.jwk("old", Algorithm::EdDSA)]);
    let mut cfg = remote_config(&base, Some(format!("{base}/jwks")));
    cfg.min_refresh_interval = Duration::from_secs(2);
    let v = Arc::new(JwtVerifier::new(vec![cfg], vec![]).unwrap());
    v.prefetch().await;
    (idp, base, old, new, v)
}

#[tokio::test]
async fn unknown_kid_refreshes_at_most_once_per_interval_however_many_ask() {
    let (idp, base, old, new, v) = rotating_issuer().await;
    assert_eq!(idp.hits("/jwks"), 1);
    let forged = sign_token(&old, &header("EdDSA", "made-up"), &claims_for(&base));
    assert_eq!(
        verify(&v, &forged).await.unwrap_err(),
        "signing key not known yet"
    );
    assert_eq!(
        idp.hits("/jwks"),
        1,
        "no refresh within the interval of the first fetch"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // Made-up kids, all at once, while the issuer is slow: one fetch between them.
    *idp.delay.lock().unwrap() = Duration::from_millis(200);
    let forged: Vec<_> = (0..20)
        .map(|i| {
            let v = v.clone();
            let token = sign_token(
                &old,
                &header("EdDSA", &format!("made-up-{i}")),
                &claims_for(&base),
            );
            tokio::spawn(async move { verify(&v, &token).await })
        })
        .collect();
    for f in forged {
        assert_eq!(f.await.unwrap().unwrap_err(), "unknown signing key");
    }
    assert_eq!(idp.hits("/jwks"), 2, "one refresh for twenty unknown kids");
    *idp.delay.lock().unwrap() = Duration::ZERO;

    // The issuer rotates; within the interval the new kid is not fetched again...
    idp.set_jwks(&[
        old.jwk("old", Algorithm::EdDSA),
        new.jwk("new", Algorithm::EdDSA),
    ]);
    let rotated = sign_token(&new, &header("EdDSA", "new"), &claims_for(&base));
    assert_eq!(
        verify(&v, &rotated).await.unwrap_err(),
        "signing key not known yet"
    );
    assert_eq!(idp.hits("/jwks"), 2);
    // ...and after it, one refresh finds it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(verify(&v, &rotated).await.is_ok());
    assert_eq!(idp.hits("/jwks"), 3);
    assert!(verify(&v, &rotated).await.is_ok());
    assert!(
        verify(
            &v,
            &sign_token(&old, &header("EdDSA", "old"), &claims_for(&base))
        )
        .await
        .is_ok()
    );
    assert_eq!(idp.hits("/jwks"), 3);
}

#[tokio::test]
async fn a_refresh_whose_request_went_away_is_made_whole() {
    let (idp, base, old, new, v) = rotating_issuer().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // The issuer rotates, and answers slowly; the request that asks for the new kid goes
    // away (its client reset the stream) while the fetch is under way.
    idp.set_jwks(&[
        old.jwk("old", Algorithm::EdDSA),
        new.jwk("new", Algorithm::EdDSA),
    ]);
    *idp.delay.lock().unwrap() = Duration::from_millis(500);
    let rotated = sign_token(&new, &header("EdDSA", "new"), &claims_for(&base));
    let gone = {
        let (v, token) = (v.clone(), rotated.clone());
        tokio::spawn(async move { verify(&v, &token).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    gone.abort();
    // The fetch goes on without it: within the interval, the new key is known.
    tokio::time::sleep(Duration::from_millis(700)).await;
    *idp.delay.lock().unwrap() = Duration::ZERO;
    assert!(verify(&v, &rotated).await.is_ok());
    assert_eq!(idp.hits("/jwks"), 2);
}

#[tokio::test]
async fn stale_keys_are_refreshed_in_the_background_and_kept_when_the_issuer_fails() {
    let (idp, base) = Idp::start().await;
    let (k1, k2) = (TestKey::p256(), TestKey::p256());
    idp.set_jwks(&[k1.jwk("k1", Algorithm::ES256)]);
    let mut cfg = remote_config(&base, Some(format!("{base}/jwks")));
    cfg.jwks_refresh_interval = Duration::from_millis(200);
    cfg.min_refresh_interval = Duration::from_millis(100);
    let v = JwtVerifier::new(vec![cfg], vec![]).unwrap();
    let t1 = sign_token(&k1, &header("ES256", "k1"), &claims_for(&base));
    assert!(verify(&v, &t1).await.is_ok());
    assert_eq!(idp.hits("/jwks"), 1);

    // The issuer breaks: old keys go on working while the refresh fails.
    idp.set("/jwks", 500, "{}".into());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(verify(&v, &t1).await.is_ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while idp.hits("/jwks") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no background refresh"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(verify(&v, &t1).await.is_ok());

    // It comes back with another key: the next background refresh replaces the set.
    idp.set_jwks(&[k2.jwk("k2", Algorithm::ES256)]);
    let t2 = sign_token(&k2, &header("ES256", "k2"), &claims_for(&base));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let _ = verify(&v, &t1).await;
        if verify(&v, &t2).await.is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated key never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once the minimum interval has passed, k1 is looked for in a fresh set, which lacks it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        verify(&v, &t1).await.unwrap_err(),
        "unknown signing key",
        "k1 was withdrawn"
    );
}

/// Polls `cond` every 20 ms until it holds, failing after five seconds.
async fn eventually<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_verifier_built_with_the_key_cache_takes_over_the_keys_held_while_the_issuer_is_down() {
    let (idp, base) = Idp::start().await;
    let key = TestKey::p256();
    idp.set_jwks(&[key.jwk("k1", Algorithm::ES256)]);
    let jwks = format!("{base}/jwks");
    let cache = IssuerKeyCache::default();
    let build = |cfg: IssuerConfig| JwtVerifier::with_key_cache(vec![cfg], vec![], &cache);
    let running = build(remote_config(&base, Some(jwks.clone()))).unwrap();
    running.prefetch().await;
    let token = sign_token(&key, &header("ES256", "k1"), &claims_for(&base));
    assert!(verify(&running, &token).await.is_ok());

    idp.set("/jwks", 500, "{}".into());
    // Another name and other intervals are the same issuer at the same address.
    let mut same = remote_config(&base, Some(jwks.clone()));
    same.name = "renamed".into();
    same.jwks_refresh_interval = Duration::from_secs(60);
    let next = build(same).unwrap();
    assert!(verify(&next, &token).await.is_ok());
    assert_eq!(
        idp.hits("/jwks"),
        1,
        "the keys held were taken, not fetched"
    );

    // Keys from another address are not taken over.
    idp.set("/other-jwks", 500, "{}".into());
    let elsewhere = build(remote_config(&base, Some(format!("{base}/other-jwks")))).unwrap();
    assert_eq!(
        verify(&elsewhere, &token).await.unwrap_err(),
        "signing keys unavailable"
    );

    // Once no verifier holds the issuer, neither does the cache.
    drop((running, next, elsewhere));
    let later = build(remote_config(&base, Some(jwks))).unwrap();
    assert_eq!(
        verify(&later, &token).await.unwrap_err(),
        "signing keys unavailable"
    );
}

#[tokio::test]
async fn requests_waiting_for_an_issuers_first_keys_share_one_failed_fetch() {
    let (idp, base) = Idp::start().await;
    let key = TestKey::ed25519();
    idp.set("/jwks", 500, "{}".into());
    *idp.delay.lock().unwrap() = Duration::from_millis(1500);
    let v = Arc::new(
        JwtVerifier::new(
            vec![remote_config(&base, Some(format!("{base}/jwks")))],
            vec![],
        )
        .unwrap(),
    );
    let token = sign_token(&key, &header("EdDSA", "k"), &claims_for(&base));
    let started = std::time::Instant::now();
    let waiting: Vec<_> = (0..5)
        .map(|_| {
            let (v, token) = (v.clone(), token.clone());
            tokio::spawn(async move { verify(&v, &token).await })
        })
        .collect();
    for w in waiting {
        let refused = tokio::time::timeout(Duration::from_secs(20), w)
            .await
            .expect("a request waited for fetches of its own")
            .unwrap();
        assert_eq!(refused.unwrap_err(), "signing keys unavailable");
    }
    assert_eq!(idp.hits("/jwks"), 1, "one fetch for all five");
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "refused after {:?}: one slow fetch each, one after another",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_issuer_that_publishes_no_usable_key_is_no_longer_trusted() {
    let (idp, base) = Idp::start().await;
    let key = TestKey::p256();
    let mut cfg = remote_config(&base, Some(format!("{base}/jwks")));
    cfg.jwks_refresh_interval = Duration::from_millis(200);
    cfg.min_refresh_interval = Duration::from_millis(100);
    let token = sign_token(&key, &header("ES256", "k1"), &claims_for(&base));
    let hmac = json!({"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "k1"});
    let mut encryption = serde_json::to_value(key.jwk("k1", Algorithm::ES256)).unwrap();
    encryption["use"] = json!("enc");
    for withdrawn in [json!({"keys": []}), json!({"keys": [hmac, encryption]})] {
        idp.set_jwks(&[key.jwk("k1", Algorithm::ES256)]);
        let v = JwtVerifier::new(vec![cfg.clone()], vec![]).unwrap();
        assert!(verify(&v, &token).await.is_ok());

        // A well-formed JWKS without a key to verify with: the issuer's word, taken.
        idp.set("/jwks", 200, withdrawn.to_string());
        eventually("the withdrawn key is still trusted", || async {
            verify(&v, &token).await.is_err()
        })
        .await;
        // Past the minimum interval the kid is looked for in a fresh set, which lacks it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let why = verify(&v, &token).await.unwrap_err();
        assert_eq!(why, "unknown signing key", "{withdrawn}");
        assert!(AuthFailure::InvalidToken(why).is_failed_attempt());
    }

    // An issuer that has never published a usable key: its tokens are refused as signed with
    // an unknown key, not as its outage.
    idp.set("/jwks", 200, json!({"keys": []}).to_string());
    let v = JwtVerifier::new(vec![cfg], vec![]).unwrap();
    let no_kid = sign_token(&key, &json!({"alg": "ES256"}), &claims_for(&base));
    assert_eq!(
        verify(&v, &no_kid).await.unwrap_err(),
        "unknown signing key"
    );
}

#[tokio::test]
async fn a_token_whose_kid_could_not_be_looked_up_is_not_a_failed_attempt() {
    let (idp, base) = Idp::start().await;
    let (old, new) = (TestKey::ed25519(), TestKey::ed25519());
    idp.set_jwks(&[old.jwk("old", Algorithm::EdDSA)]);
    let mut cfg = remote_config(&base, Some(format!("{base}/jwks")));
    cfg.min_refresh_interval = Duration::from_secs(2);
    let v = JwtVerifier::new(vec![cfg], vec![]).unwrap();
    v.prefetch().await;
    let rotated = sign_token(&new, &header("EdDSA", "new"), &claims_for(&base));
    let refusal = |why: &'static str| AuthFailure::InvalidToken(why);

    // The issuer rotated just after the fetch: the new kid cannot be looked for yet.
    let why = verify(&v, &rotated).await.unwrap_err();
    assert_eq!(why, "signing key not known yet");
    assert_eq!(idp.hits("/jwks"), 1);
    assert!(!refusal(why).is_failed_attempt());

    // Past the interval, but the issuer is down: the look-up fails.
    idp.set("/jwks", 500, "{}".into());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let why = verify(&v, &rotated).await.unwrap_err();
    assert_eq!(idp.hits("/jwks"), 2);
    assert_eq!(why, "signing key not known yet");
    assert!(!refusal(why).is_failed_attempt());

    // A fresh fetch that succeeds and lacks the kid: that token was not the issuer's.
    idp.set_jwks(&[old.jwk("old", Algorithm::EdDSA)]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let why = verify(&v, &rotated).await.unwrap_err();
    assert_eq!(idp.hits("/jwks"), 3);
    assert_eq!(why, "unknown signing key");
    assert!(refusal(why).is_failed_attempt());
}

#[tokio::test]
async fn oversized_or_broken_jwks_is_refused() {
    let (idp, base) = Idp::start().await;
    let key = TestKey::ed25519();
    let mut big = serde_json::to_value(key.jwk("k", Algorithm::EdDSA)).unwrap();
    big["pad"] = json!("x".repeat(300 * 1024));
    idp.set("/jwks", 200, json!({ "keys": [big] }).to_string());
    let mut cfg = remote_config(&base, Some(format!("{base}/jwks")));
    cfg.min_refresh_interval = Duration::from_secs(1);
    let v = JwtVerifier::new(vec![cfg], vec![]).unwrap();
    let token = sign_token(&key, &header("EdDSA", "k"), &claims_for(&base));
    assert_eq!(
        verify(&v, &token).await.unwrap_err(),
        "signing keys unavailable"
    );

    // A retry after a failure waits a moment, so a flood of tokens is not a flood of fetches.
    idp.set_jwks(&[key.jwk("k", Algorithm::EdDSA)]);
    assert_eq!(
        verify(&v, &token).await.unwrap_err(),
        "signing keys unavailable"
    );
    assert_eq!(idp.hits("/jwks"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(verify(&v, &token).await.is_ok());

    idp.set("/jwks", 200, "not json".into());
    let v = JwtVerifier::new(
        vec![remote_config(&base, Some(format!("{base}/jwks")))],
        vec![],
    )
    .unwrap();
    assert_eq!(
        verify(&v, &token).await.unwrap_err(),
        "signing keys unavailable"
    );
}

#[tokio::test]
async fn non_ascii_algorithm_names_are_refused_without_panicking() {
    let k = keys();
    // {"alg":"aé"}: byte 2 falls inside the two-byte 'é'.
    for token in [
        "eyJhbGciOiJhXHUwMGU5In0.e30.AA",
        &format!("{}.e30.AA", b64("{\"alg\":\"H\u{e9}256\"}".as_bytes())),
        &format!("{}.e30.AA", b64("{\"alg\":\"\u{e9}\"}".as_bytes())),
    ] {
        assert!(verify(&k.verifier, token).await.is_err(), "{token}");
    }
    assert!("a\u{e9}".parse::<Algorithm>().is_err());
}
