//! Issuer configuration that is refused, tokens an issuer's rules refuse (ID tokens where
//! access tokens are required, bindings to anything but a certificate), and bearer tokens
//! read from headers.

use super::*;

#[test]
fn configuration_errors_name_the_issuer() {
    let remote = |f: &dyn Fn(&mut IssuerConfig)| {
        let mut c = IssuerConfig::new("corp", ISS, vec![AUD.into()]);
        f(&mut c);
        JwtVerifier::new(vec![c], vec![])
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(remote(&|_| {}).is_ok());
    assert!(
        remote(&|c| {
            c.discovery = false;
            c.jwks_uri = Some("https://idp.example/jwks".parse().unwrap());
        })
        .is_ok()
    );
    // A configured jwks_uri wins over discovery, even for an issuer that is no URL.
    assert!(
        remote(&|c| {
            c.issuer = "urn:example:idp".into();
            c.jwks_uri = Some("https://idp.example/jwks".parse().unwrap());
        })
        .is_ok()
    );
    for (f, needle) in [
        (
            &(|c: &mut IssuerConfig| c.audiences.clear()) as &dyn Fn(&mut IssuerConfig),
            "audiences",
        ),
        (&|c: &mut IssuerConfig| c.algorithms.clear(), "algorithms"),
        (
            &|c: &mut IssuerConfig| {
                c.discovery = false;
                c.jwks_uri = Some("http://idp.example/jwks".parse().unwrap());
            },
            "loopback",
        ),
        (
            &|c: &mut IssuerConfig| c.issuer = "http://idp.example".into(),
            "loopback",
        ),
        (
            &|c: &mut IssuerConfig| c.ca = Some("/nonexistent/ca.pem".into()),
            "ca",
        ),
    ] {
        let err = remote(f).unwrap_err();
        assert!(
            err.contains("jwt issuer corp") && err.contains(needle),
            "{err}"
        );
    }
    let twice = JwtVerifier::new(
        vec![IssuerConfig::new("a", ISS, vec![AUD.into()])],
        vec![StaticIssuer::new(
            ISS,
            vec![AUD.into()],
            vec![Algorithm::EdDSA],
            vec![TestKey::ed25519().jwk("k", Algorithm::EdDSA)],
        )],
    );
    assert!(twice.unwrap_err().to_string().contains("configured twice"));
    let bad_key = Jwk {
        crv: Some("X448".into()),
        ..TestKey::ed25519().jwk("k", Algorithm::EdDSA)
    };
    assert!(
        JwtVerifier::new(
            vec![],
            vec![StaticIssuer::new(
                ISS,
                vec![AUD.into()],
                vec![Algorithm::EdDSA],
                vec![bad_key]
            )]
        )
        .is_err()
    );
    assert!(
        JwtVerifier::new(
            vec![],
            vec![StaticIssuer::new(
                ISS,
                vec![AUD.into()],
                vec![Algorithm::EdDSA],
                vec![]
            )]
        )
        .is_err()
    );
}

#[tokio::test]
async fn an_issuer_can_require_at_jwt_so_id_tokens_are_refused() {
    let key = TestKey::p256();
    let jwk = key.jwk("ec", Algorithm::ES256);
    let mut strict = StaticIssuer::new(ISS, vec![AUD.into()], vec![Algorithm::ES256], vec![jwk]);
    strict.require_at_jwt = true;
    let strict = JwtVerifier::new(vec![], vec![strict]).unwrap();
    let lenient = static_verifier(
        vec![key.jwk("ec", Algorithm::ES256)],
        vec![Algorithm::ES256],
    );
    let token = |typ: Option<&str>| {
        let mut h = json!({"alg": "ES256", "kid": "ec"});
        if let Some(t) = typ {
            h["typ"] = json!(t);
        }
        sign_token(&key, &h, &claims())
    };
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "AT+JWT",
        "Application/At+Jwt",
    ] {
        assert!(verify(&strict, &token(Some(typ))).await.is_ok(), "{typ}");
    }
    // An ID token (typ JWT, or none) with the same keys and audience.
    for typ in [Some("JWT"), Some("application/jwt"), None] {
        assert_eq!(
            verify(&strict, &token(typ)).await.unwrap_err(),
            "not an access token (typ at+jwt required)",
            "{typ:?}"
        );
        assert!(verify(&lenient, &token(typ)).await.is_ok(), "{typ:?}");
    }
}

#[tokio::test]
async fn tokens_bound_to_anything_but_a_certificate_are_refused() {
    let key = TestKey::p256();
    let v = static_verifier(
        vec![key.jwk("ec", Algorithm::ES256)],
        vec![Algorithm::ES256],
    );
    let with_cnf = |cnf: Value| {
        let mut c = claims();
        c["cnf"] = cnf;
        sign_token(&key, &header("ES256", "ec"), &c)
    };
    let bound = verify(&v, &with_cnf(json!({"x5t#S256": "thumb"})))
        .await
        .unwrap();
    assert_eq!(bound.cnf_x5t_s256.as_deref(), Some("thumb"));
    for cnf in [
        json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
        json!({"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "abc"}}),
        json!({"x5t#S256": "thumb", "kid": "k"}),
    ] {
        assert_eq!(
            verify(&v, &with_cnf(cnf.clone())).await.unwrap_err(),
            "unsupported confirmation method",
            "{cnf}"
        );
    }
    assert_eq!(
        verify(&v, &with_cnf(json!("x5t#S256"))).await.unwrap_err(),
        "malformed claims"
    );
}

#[test]
fn verifier_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JwtVerifier>();
}

#[test]
fn bearer_token_from_headers() {
    let h = |values: &[&str]| {
        let mut m = HeaderMap::new();
        for v in values {
            m.append(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        m
    };
    assert_eq!(presented_bearer(&h(&[])), Ok(None));
    assert_eq!(presented_bearer(&h(&["ApiKey abc"])), Ok(None));
    assert_eq!(presented_bearer(&h(&["Bearer a.b.c"])), Ok(Some("a.b.c")));
    assert_eq!(presented_bearer(&h(&["bearer a.b.c"])), Ok(Some("a.b.c")));
    assert_eq!(
        presented_bearer(&h(&["BEARER   a.b-_c="])),
        Ok(Some("a.b-_c="))
    );
    assert_eq!(
        presented_bearer(&h(&["ApiKey k", "Bearer a.b.c"])),
        Ok(Some("a.b.c"))
    );
    assert_eq!(presented_bearer(&h(&["Bearertoken"])), Ok(None));
    for bad in [
        &["Bearer"][..],
        &["Bearer "],
        &["Bearer a b"],
        &["Bearer a,b"],
        &["Bearer a=b"],
    ] {
        assert_eq!(
            presented_bearer(&h(bad)),
            Err(AuthFailure::InvalidRequest("malformed bearer token")),
            "{bad:?}"
        );
    }
    assert_eq!(
        presented_bearer(&h(&["Bearer a.b.c", "Bearer d.e.f"])),
        Err(AuthFailure::InvalidRequest("more than one bearer token"))
    );
}
