//! The authentication sections as a whole file sees them: `[[jwt_issuers]]` keys, a
//! route's `allow` entries, and what errors may quote.

use std::path::Path;

use crate::test_support::problems;

const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"
[identity]
svid_cert = "c"
svid_key = "k"
[[identity.trust_bundles]]
trust_domain = "example.org"
bundle = "b"
[[upstreams]]
name = "p"
url = "https://provider.test"
[[jwt_issuers]]
name = "corp"
issuer = "https://idp.corp.test"
jwks_uri = "https://idp.corp.test/jwks"
audiences = ["idgate"]
[[jwt_issuers]]
name = "partner"
issuer = "https://idp.partner.test"
jwks_uri = "https://idp.partner.test/jwks"
audiences = ["idgate"]
[[routes]]
name = "r"
methods = ["GET"]
path = "/x"
upstream = "p"
auth = ["jwt"]
"#;

fn errors(allow: &str) -> Vec<String> {
    let text = format!("{BASE}allow = [{allow}]\n");
    problems(Path::new("t.toml"), &text, |_| true)
}

#[test]
fn client_entries_must_name_their_issuer_when_several_are_configured() {
    let unqualified = errors(r#""client:onboarding""#);
    assert!(
        unqualified
            .iter()
            .any(|e| e.starts_with("routes[0].allow[0]") && e.contains("client:onboarding@ISSUER")),
        "{unqualified:?}"
    );
    let qualified = errors(r#""client:onboarding@corp", "sub:alice@example.com@partner""#);
    assert!(
        !qualified.iter().any(|e| e.contains("allow")),
        "{qualified:?}"
    );
}

/// The file with `line` added to the first issuer (`corp`), which a route allows, parsed
/// in a directory holding the files `BASE` names: the config, or every problem.
fn with_corp(line: &str) -> Result<crate::Config, Vec<String>> {
    let text = BASE.replacen(
        "audiences = [\"idgate\"]\n",
        &format!("audiences = [\"idgate\"]\n{line}\n"),
        1,
    );
    let dir = tempfile::tempdir().map_err(|e| vec![e.to_string()])?;
    for f in ["c", "k", "b"] {
        std::fs::write(dir.path().join(f), "x").map_err(|e| vec![e.to_string()])?;
    }
    crate::parse(
        &dir.path().join("t.toml"),
        &format!("{text}allow = [\"client:a@corp\"]\n"),
    )
    .map_err(|e| {
        e.0.into_iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect()
    })
}

#[test]
fn jwt_issuer_names_are_unique_and_token_endpoint_is_reserved() {
    let issuer = |name: &str, host: &str| {
        format!(
            "[[jwt_issuers]]\nname = \"{name}\"\nissuer = \"https://{host}\"\n\
             jwks_uri = \"https://{host}/jwks\"\naudiences = [\"idgate\"]\n"
        )
    };
    // Two more issuers after `corp` and `partner`: a second `corp`, and one that takes the
    // built-in issuer's name.
    let extra = format!(
        "{}{}",
        issuer("corp", "idp.other.test"),
        issuer("token_endpoint", "idp.shadow.test")
    );
    let text = format!(
        "{}allow = [\"client:a@corp\"]\n",
        BASE.replacen("[[routes]]", &format!("{extra}[[routes]]"), 1)
    );
    let e = problems(Path::new("t.toml"), &text, |_| true);
    assert!(
        e.iter().any(|e| e.starts_with("jwt_issuers[2].name: ")
            && e.contains("\"corp\" is already the name of jwt_issuers[0]")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.starts_with("jwt_issuers[3].name: ")
            && e.contains("gateway's own token endpoint")),
        "{e:?}"
    );
    for fine in ["jwt_issuers[0].name", "jwt_issuers[1].name"] {
        assert!(!e.iter().any(|e| e.starts_with(fine)), "{fine}: {e:?}");
    }
    // Distinct names are fine.
    let e = errors(r#""client:a@corp""#);
    assert!(!e.iter().any(|e| e.contains(".name: ")), "{e:?}");
}

#[test]
fn require_typ_accepts_only_at_jwt() {
    let errors = |value: &str| {
        with_corp(&format!("require_typ = \"{value}\""))
            .err()
            .unwrap_or_default()
    };
    for ok in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        let e = errors(ok);
        assert!(!e.iter().any(|e| e.contains("require_typ")), "{ok}: {e:?}");
    }
    for bad in ["JWT", "", "at+jwt "] {
        let e = errors(bad);
        assert!(
            e.iter()
                .any(|e| e.starts_with("jwt_issuers[0].require_typ: ") && e.contains("at+jwt")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn errors_never_quote_a_misplaced_secret() {
    for text in [
        "workers = 1\nsecret = sk_live_abcdef123456\n",
        "workers = \"sk_live_abcdef123456\"\n",
        "[listener]\nbind = 123456789\n",
    ] {
        let Err(e) = crate::parse(Path::new("t.toml"), text) else {
            panic!("accepted")
        };
        let shown = e.to_string();
        assert!(
            !shown.contains("sk_live_abcdef123456") && !shown.contains("123456789"),
            "{shown}"
        );
    }
}

#[test]
fn algorithms_take_every_verified_name_and_refuse_es512_by_name() {
    use idgate_auth::jwt::Algorithm;
    let all =
        r#"["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]"#;
    let config = with_corp(&format!("algorithms = {all}")).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(config.jwt_issuers[0].algorithms, Algorithm::ALL);
    // Unset, the default is what it always was.
    let config = with_corp("").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        config.jwt_issuers[0].algorithms,
        [Algorithm::RS256, Algorithm::ES256]
    );

    let e = with_corp(r#"algorithms = ["ES384", "ES512"]"#).unwrap_err();
    assert_eq!(
        e,
        [
            "jwt_issuers[0].algorithms[1]: ES512 (P-521) is not supported: use ES384 (P-384) or ES256 (P-256)"
        ]
    );
    let e = with_corp(r#"algorithms = ["HS384"]"#).unwrap_err();
    assert!(
        e.len() == 1
            && e[0].starts_with(
                "jwt_issuers[0].algorithms[0]: \"HS384\" is not allowed: use RS256, RS384"
            )
            && e[0].contains("ES384 or EdDSA (never none or HS*)"),
        "{e:?}"
    );
}

#[test]
fn a_jwt_issuer_leeway_over_five_minutes_is_refused() {
    let leeway = |value: &str| with_corp(&format!("leeway = \"{value}\""));
    for ok in ["0s", "30s", "5m"] {
        let config = leeway(ok).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        assert!(config.jwt_issuers[0].leeway <= std::time::Duration::from_secs(300));
    }
    for long in ["301s", "1h", "720h"] {
        assert_eq!(
            leeway(long).unwrap_err(),
            [
                "jwt_issuers[0].leeway: at most 5m: leeway is for clock skew, and lengthens every token's life"
            ],
            "{long}"
        );
    }
}
