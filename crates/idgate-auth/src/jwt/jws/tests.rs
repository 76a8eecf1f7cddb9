#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn algorithm_names_are_exact_and_never_none_or_hmac() {
    for a in Algorithm::ALL {
        assert_eq!(a.as_str().parse::<Algorithm>(), Ok(a));
    }
    assert_eq!("none".parse::<Algorithm>(), Err(AlgorithmError::None));
    assert_eq!("NONE".parse::<Algorithm>(), Err(AlgorithmError::None));
    for hs in ["HS256", "HS384", "HS512", "hs256"] {
        assert!(matches!(
            hs.parse::<Algorithm>(),
            Err(AlgorithmError::Hmac(_))
        ));
    }
    for other in [
        "rs256", "es384", "RS1024", "ES256K", "PS", "Ed25519", "es512", "",
    ] {
        assert!(matches!(
            other.parse::<Algorithm>(),
            Err(AlgorithmError::Unsupported(_))
        ));
    }
}

#[test]
fn es512_is_refused_by_name_as_unsupported() {
    let err = "ES512".parse::<Algorithm>().unwrap_err();
    assert_eq!(err, AlgorithmError::Es512);
    assert!(
        err.to_string()
            .starts_with("ES512 (P-521) is not supported"),
        "{err}"
    );
    let h = enc(r#"{"alg":"ES512","kid":"k"}"#);
    let token = format!(
        "{h}.{}.{}",
        enc(r#"{"iss":"x"}"#),
        URL_SAFE_NO_PAD.encode([1u8; 132])
    );
    assert_eq!(
        parse(&token).map(|_| ()),
        Err("ES512 (P-521) is not supported")
    );
}

#[test]
fn the_accepted_names_list_every_algorithm_in_order() {
    let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
    let (last, rest) = names.split_last().unwrap();
    assert_eq!(Algorithm::NAMES, format!("{} or {last}", rest.join(", ")));
    let err = "HS384".parse::<Algorithm>().unwrap_err().to_string();
    assert!(err.ends_with(Algorithm::NAMES), "{err}");
}

fn enc(v: &str) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

#[test]
fn parse_refuses_malformed_compact_tokens() {
    let h = enc(r#"{"alg":"ES256","kid":"k"}"#);
    let p = enc(r#"{"iss":"x"}"#);
    let s = URL_SAFE_NO_PAD.encode([1u8; 64]);
    assert!(parse(&format!("{h}.{p}.{s}")).is_ok());
    let cases = [
        (format!("{h}.{p}"), "malformed"),
        (format!("{h}.{p}.{s}.{s}"), "malformed"),
        (format!("{h}.{p}.{s}="), "malformed"),
        (format!("{h}=.{p}.{s}"), "malformed"),
        (format!("{h}.{p}.{s}+"), "malformed"),
        (format!("{}.{p}.{s}", enc("[1]")), "malformed"),
        (format!("{}.{p}.{s}", enc(r#"{"kid":"k"}"#)), "malformed"),
        (format!("{h}.{}.{s}", enc(r#""str""#)), "malformed"),
        (
            format!("{h}.{}.{s}", enc(r#"{"iss":"a","iss":"b"}"#)),
            "malformed",
        ),
        (format!("{h}.{p}."), "bad signature"),
        (
            format!("{}.{p}.", enc(r#"{"alg":"none"}"#)),
            "algorithm not allowed",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"HS256"}"#)),
            "algorithm not allowed",
        ),
        (
            format!(
                "{}.{p}.{s}",
                enc(r#"{"alg":"ES256","crit":["exp"],"exp":1}"#)
            ),
            "unsupported critical header",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"ES256","b64":false}"#)),
            "unsupported critical header",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"ES256","typ":"dpop+jwt"}"#)),
            "not an access token",
        ),
        (
            format!("{}.{p}.{s}", enc(r#"{"alg":"ES256","kid":7}"#)),
            "malformed",
        ),
        (
            format!("{h}.{}.{s}", "A".repeat(MAX_TOKEN_BYTES)),
            "token too large",
        ),
    ];
    for (token, why) in cases {
        assert_eq!(parse(&token).map(|_| ()), Err(why), "{token:.80}");
    }
    let ok = format!(
        "{}.{p}.{s}",
        enc(r#"{"alg":"ES256","typ":"at+jwt","crit":[]}"#)
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn at_jwt_is_recognised_in_both_spellings_and_any_case() {
    let p = enc(r#"{"iss":"x"}"#);
    let s = URL_SAFE_NO_PAD.encode([1u8; 64]);
    for (typ, at_jwt) in [
        (Some("at+jwt"), true),
        (Some("AT+JWT"), true),
        (Some("application/at+jwt"), true),
        (Some("Application/AT+JWT"), true),
        (Some("JWT"), false),
        (Some("application/jwt"), false),
        (None, false),
    ] {
        let header = match typ {
            Some(t) => format!(r#"{{"alg":"ES256","typ":"{t}"}}"#),
            None => r#"{"alg":"ES256"}"#.to_owned(),
        };
        let token = format!("{}.{p}.{s}", enc(&header));
        assert_eq!(parse(&token).unwrap().at_jwt, at_jwt, "{typ:?}");
    }
}
