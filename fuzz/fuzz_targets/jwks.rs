//! What an issuer's servers answer when the gateway fetches its keys: the input as a JWKS
//! document (`idgate_auth::jwt::fuzzing::jwks`, as `parse_jwks` reads it), as the issuer's
//! metadata (`metadata_jwks_uri`, as discovery reads it), and as a trust domain's JWT bundle
//! from the SPIFFE Workload API (`JwtBundle::parse_workload_api`).
//!
//! Never panics. A JWKS accepted is a strict JSON object whose `keys` array holds at least
//! as many entries as keys were kept, and at least one; each key kept verifies some
//! algorithm, and, where its `kid` names one entry only, that entry is a signing key (`use`
//! absent or `sig`, `key_ops` absent or with `verify`) whose algorithms are those of its
//! type and curve (RSA: `RS*`/`PS*`; P-256: ES256; P-384: ES384; Ed25519: EdDSA), only its
//! own `alg` when it names one. A `jwks_uri` accepted is the document's own, in a document
//! that names the configured issuer, and is `https`, or `http` to a loopback host. Every
//! key of a Workload API bundle has its `kid`.
#![no_main]

use http::Uri;
use idgate_auth::jwt::fuzzing::{jwks, metadata_jwks_uri};
use idgate_auth::jwt::{Algorithm, json};
use idgate_auth::jwt_svid::JwtBundle;
use idgate_tls::TrustDomain;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ISSUER: &str = "https://idp.example";

/// A member of a key, `null` read as absent (as an optional member is).
fn member<'a>(entry: &'a Value, name: &str) -> Option<&'a Value> {
    entry.get(name).filter(|v| !v.is_null())
}

fn family(entry: &Value) -> Vec<Algorithm> {
    use Algorithm::*;
    match (
        entry.get("kty").and_then(Value::as_str),
        entry.get("crv").and_then(Value::as_str),
    ) {
        (Some("RSA"), _) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        (Some("EC"), Some("P-256")) => vec![ES256],
        (Some("EC"), Some("P-384")) => vec![ES384],
        (Some("OKP"), Some("Ed25519")) => vec![EdDSA],
        other => panic!("a key of {other:?} was kept"),
    }
}

fn check_jwks(data: &[u8]) {
    let Ok(keys) = jwks(data) else { return };
    assert!(!keys.is_empty(), "a JWKS without a key was accepted");
    let doc = json::value(data).expect("an accepted JWKS is strict JSON");
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .expect("a keys array");
    assert!(keys.len() <= entries.len());
    for (kid, algs) in &keys {
        assert!(!algs.is_empty(), "key {kid:?} verifies nothing");
        let named: Vec<&Value> = entries
            .iter()
            .filter(|e| e.get("kid").and_then(Value::as_str) == kid.as_deref())
            .collect();
        let [entry] = named[..] else { continue };
        if kid.is_none() {
            // `kid: null` and no `kid` both read as none; an entry with a `kid` of another
            // type is not a key.
            continue;
        }
        assert!(member(entry, "use").is_none_or(|u| u == "sig"), "{entry}");
        if let Some(ops) = member(entry, "key_ops") {
            let ops = ops.as_array().expect("key_ops is an array");
            assert!(ops.iter().any(|o| o == "verify"), "{entry}");
        }
        let expected: Vec<Algorithm> = match entry.get("alg").and_then(Value::as_str) {
            Some(alg) => vec![
                alg.parse()
                    .expect("its own alg is one the gateway verifies"),
            ],
            None => family(entry),
        };
        assert_eq!(algs, &expected, "{entry}");
        assert!(
            expected.iter().all(|a| family(entry).contains(a)),
            "{entry}"
        );
    }
}

fn check_metadata(data: &[u8]) {
    let from = Uri::from_static("https://idp.example/.well-known/openid-configuration");
    let Ok(uri) = metadata_jwks_uri(data, ISSUER, &from) else {
        return;
    };
    let doc = json::value(data).expect("accepted metadata is strict JSON");
    assert_eq!(doc.get("issuer").and_then(Value::as_str), Some(ISSUER));
    let named = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .expect("a jwks_uri");
    assert_eq!(named.parse::<Uri>().ok().as_ref(), Some(&uri));
    let host = uri.host().expect("a host");
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            assert!(
                host.eq_ignore_ascii_case("localhost")
                    || ip
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|a| a.is_loopback()),
                "plain http to {host}"
            );
        }
        other => panic!("scheme {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check_jwks(data);
    check_metadata(data);
    let td = TrustDomain::new("example.org").expect("trust domain");
    if let Ok(bundle) = JwtBundle::parse_workload_api(td, data) {
        assert_eq!(bundle.key_ids().count(), bundle.len());
    }
});
