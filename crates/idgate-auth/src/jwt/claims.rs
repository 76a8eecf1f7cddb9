//! The registered claims of an access token (RFC 7519 §4.1, RFC 9068 §2.2) checked against
//! one issuer's settings, and the identity and scopes they carry. Called only after the
//! signature has been verified.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    pub(crate) subject: String,
    pub(crate) client_id: Option<String>,
    pub(crate) scopes: Vec<String>,
    pub(crate) cnf_x5t_s256: Option<String>,
    pub(crate) expires_at: SystemTime,
}

/// One issuer's expectations.
pub(crate) struct Expect<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) audiences: &'a [String],
    pub(crate) leeway: Duration,
}

/// A NumericDate: seconds since the epoch, possibly fractional, never negative.
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
) -> Result<Option<f64>, &'static str> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(t)),
            _ => Err("malformed claims"),
        },
        Some(_) => Err("malformed claims"),
    }
}

fn optional_string<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, &'static str> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err("malformed claims"),
    }
}

/// Strings of a claim that may be one string or an array of strings.
pub(crate) fn string_or_array(value: &Value) -> Result<Vec<&str>, &'static str> {
    match value {
        Value::String(s) => Ok(vec![s.as_str()]),
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().ok_or("malformed claims"))
            .collect(),
        _ => Err("malformed claims"),
    }
}

pub(crate) fn check(
    claims: &Map<String, Value>,
    expect: &Expect<'_>,
    now: SystemTime,
) -> Result<Claims, &'static str> {
    if optional_string(claims, "iss")? != Some(expect.issuer) {
        return Err("wrong issuer");
    }

    // Times first: an expired token is "expired" whatever else is wrong with it, which is
    // the answer that tells a client to fetch a new one.
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let leeway = expect.leeway.as_secs_f64();
    let exp = numeric_date(claims, "exp")?.ok_or("missing expiry")?;
    if now_s >= exp + leeway {
        return Err("expired");
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| nbf > now_s + leeway) {
        return Err("not yet valid");
    }
    if numeric_date(claims, "iat")?.is_some_and(|iat| iat > now_s + leeway) {
        return Err("issued in the future");
    }
    let expires_at = Duration::try_from_secs_f64(exp)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .ok_or("malformed claims")?;

    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(v) => string_or_array(v)?,
    };
    if !audiences
        .iter()
        .any(|a| expect.audiences.iter().any(|e| e == a))
    {
        return Err("wrong audience");
    }

    let subject = match optional_string(claims, "sub")? {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => return Err("missing subject"),
    };
    let client_id = match optional_string(claims, "client_id")? {
        Some(c) => Some(c.to_owned()),
        None => optional_string(claims, "azp")?.map(str::to_owned),
    };

    // `scope` is RFC 8693/9068's space-separated string; `scp` is the array (or string)
    // that Azure AD, Okta and others send instead. Both count.
    let mut scopes: Vec<String> = Vec::new();
    // Split on the space alone (RFC 6749 §3.3): a scope name holding another blank, such as
    // U+2003, stays one name and matches no scope a route requires.
    let mut add = |s: &str| {
        for scope in s.split(' ').filter(|t| !t.is_empty()) {
            if !scopes.iter().any(|have| have == scope) {
                scopes.push(scope.to_owned());
            }
        }
    };
    if let Some(s) = optional_string(claims, "scope")? {
        add(s);
    }
    if let Some(scp) = claims.get("scp") {
        for s in string_or_array(scp)? {
            add(s);
        }
    }

    // RFC 7800 confirmation: the only method the gateway can check is the client
    // certificate's thumbprint (RFC 8705). A token bound to anything else — a DPoP key
    // (`jkt`, RFC 9449 §7), a `jwk`, `kid`, `jku` — is no bearer token, and accepting it as
    // one would drop the proof of possession its issuer asked for.
    let cnf_x5t_s256 = match claims.get("cnf") {
        None => None,
        Some(Value::Object(cnf)) => {
            if cnf.is_empty() || cnf.keys().any(|k| k != "x5t#S256") {
                return Err("unsupported confirmation method");
            }
            optional_string(cnf, "x5t#S256")?.map(str::to_owned)
        }
        Some(_) => return Err("malformed claims"),
    };

    Ok(Claims {
        subject,
        client_id,
        scopes,
        cnf_x5t_s256,
        expires_at,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn expect() -> (String, Vec<String>) {
        (
            "https://idp.example".into(),
            vec!["idgate".into(), "other".into()],
        )
    }

    fn run(claims: Value) -> Result<Claims, &'static str> {
        let (issuer, audiences) = expect();
        let Value::Object(map) = claims else {
            panic!("object")
        };
        check(
            &map,
            &Expect {
                issuer: &issuer,
                audiences: &audiences,
                leeway: Duration::from_secs(30),
            },
            at(NOW),
        )
    }

    fn base() -> Value {
        json!({
            "iss": "https://idp.example", "sub": "svc", "aud": "idgate",
            "exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 10,
            "client_id": "onboarding", "scope": "a b", "scp": ["b", "c"],
            "cnf": {"x5t#S256": "thumb"}
        })
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = base();
        v[field] = value;
        v
    }

    fn without(field: &str) -> Value {
        let mut v = base();
        v.as_object_mut().unwrap().remove(field);
        v
    }

    #[test]
    fn a_good_token_yields_its_identity_scopes_and_binding() {
        let c = run(base()).unwrap();
        assert_eq!(c.subject, "svc");
        assert_eq!(c.client_id.as_deref(), Some("onboarding"));
        assert_eq!(c.scopes, ["a", "b", "c"]);
        assert_eq!(c.cnf_x5t_s256.as_deref(), Some("thumb"));
        assert_eq!(c.expires_at, at(NOW + 300));

        let c = run(with("aud", json!(["x", "other"]))).unwrap();
        assert_eq!(c.subject, "svc");
        let mut azp = without("client_id");
        azp["azp"] = json!("web");
        assert_eq!(run(azp).unwrap().client_id.as_deref(), Some("web"));
        assert_eq!(
            run(with("scp", json!("c d"))).unwrap().scopes,
            ["a", "b", "c", "d"]
        );
        assert_eq!(
            run(with("exp", json!((NOW + 1) as f64 + 0.5)))
                .unwrap()
                .subject,
            "svc"
        );
    }

    #[test]
    fn times_are_checked_with_leeway() {
        assert!(
            run(with("exp", json!(NOW - 29))).is_ok(),
            "inside the leeway"
        );
        assert_eq!(run(with("exp", json!(NOW - 30))).unwrap_err(), "expired");
        assert_eq!(run(with("exp", json!(NOW - 3600))).unwrap_err(), "expired");
        assert_eq!(run(without("exp")).unwrap_err(), "missing expiry");
        assert_eq!(
            run(with("exp", json!("soon"))).unwrap_err(),
            "malformed claims"
        );
        assert_eq!(run(with("exp", json!(-1))).unwrap_err(), "malformed claims");
        assert!(run(with("nbf", json!(NOW + 30))).is_ok());
        assert_eq!(
            run(with("nbf", json!(NOW + 31))).unwrap_err(),
            "not yet valid"
        );
        assert!(run(with("iat", json!(NOW + 30))).is_ok());
        assert_eq!(
            run(with("iat", json!(NOW + 31))).unwrap_err(),
            "issued in the future"
        );
        assert!(run(without("nbf")).is_ok() && run(without("iat")).is_ok());
    }

    #[test]
    fn issuer_audience_and_subject_are_required() {
        assert_eq!(
            run(with("iss", json!("https://idp.example/"))).unwrap_err(),
            "wrong issuer"
        );
        assert_eq!(run(without("iss")).unwrap_err(), "wrong issuer");
        assert_eq!(
            run(with("aud", json!("nobody"))).unwrap_err(),
            "wrong audience"
        );
        assert_eq!(run(with("aud", json!([]))).unwrap_err(), "wrong audience");
        assert_eq!(
            run(with("aud", json!("IDGATE"))).unwrap_err(),
            "wrong audience"
        );
        assert_eq!(run(without("aud")).unwrap_err(), "wrong audience");
        assert_eq!(
            run(with("aud", json!([1]))).unwrap_err(),
            "malformed claims"
        );
        assert_eq!(run(without("sub")).unwrap_err(), "missing subject");
        assert_eq!(run(with("sub", json!(""))).unwrap_err(), "missing subject");
        assert_eq!(run(with("sub", json!(5))).unwrap_err(), "malformed claims");
        assert_eq!(
            run(with("scope", json!(["a"]))).unwrap_err(),
            "malformed claims"
        );
        assert_eq!(
            run(with("cnf", json!("x"))).unwrap_err(),
            "malformed claims"
        );
    }

    #[test]
    fn only_a_certificate_binding_is_accepted_in_cnf() {
        for cnf in [
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            json!({"x5t#S256": "thumb", "jkt": "abc"}),
            json!({"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}}),
            json!({"kid": "k1"}),
            json!({"jku": "https://attacker.example/jwks"}),
            json!({"x5t": "sha1-thumb"}),
            json!({"future-method": true}),
            json!({}),
        ] {
            assert_eq!(
                run(with("cnf", cnf.clone())).unwrap_err(),
                "unsupported confirmation method",
                "{cnf}"
            );
        }
        for cnf in [json!(["x5t#S256"]), json!(null), json!(1), json!(true)] {
            assert_eq!(
                run(with("cnf", cnf.clone())).unwrap_err(),
                "malformed claims",
                "{cnf}"
            );
        }
        assert_eq!(
            run(with("cnf", json!({"x5t#S256": 7}))).unwrap_err(),
            "malformed claims"
        );
        assert_eq!(run(without("cnf")).unwrap().cnf_x5t_s256, None);
    }
}
