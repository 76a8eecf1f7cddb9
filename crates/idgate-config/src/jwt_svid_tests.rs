//! `[jwt_svid]` and the `jwt_svid` layer as a whole file sees them: a valid section, and
//! each problem at its key.

use std::path::Path;

use super::*;

const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"
[identity]
svid_cert = "gw.crt"
svid_key = "gw.key"
[[identity.trust_bundles]]
trust_domain = "example.org"
bundle = "bundle.pem"
[[upstreams]]
name = "p"
url = "https://provider.test"
"#;

const ROUTE: &str = r#"
[[routes]]
name = "r"
methods = ["GET"]
path = "/x"
upstream = "p"
"#;

const ALLOW: &str = "allow = [\"spiffe://example.org/ns/kyc/*\"]\n";

/// A directory with the files `BASE` and the sections name.
fn dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "gw.crt",
        "gw.key",
        "bundle.pem",
        "partner.json",
        "example.json",
    ] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    dir
}

/// Parses `BASE` plus `text` in `dir`; the config, or every problem (as `key: reason`)
/// outside `[identity]`, whose files are placeholders.
fn parse_in(dir: &Path, text: &str) -> Result<crate::Config, Vec<String>> {
    let file = dir.join("idgate.toml");
    crate::parse(&file, &format!("{BASE}{text}")).map_err(|e| {
        e.0.iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect()
    })
}

const SECTION: &str = r#"
[jwt_svid]
audiences = ["spiffe://example.org/idgate"]
[[jwt_svid.bundles]]
trust_domain = "example.org"
file = "example.json"
[[jwt_svid.bundles]]
trust_domain = "partner.org"
file = "partner.json"
"#;

#[test]
fn a_jwt_svid_section_with_bundle_files_is_read() {
    let d = dir();
    let cfg = parse_in(
        d.path(),
        &format!(
            "{SECTION}{ROUTE}auth = [\"jwt_svid\"]\nallow = [\"spiffe://partner.org/ns/batch/*\"]\n"
        ),
    )
    .unwrap();
    let j = cfg.jwt_svid.unwrap();
    assert_eq!(j.audiences, ["spiffe://example.org/idgate"]);
    assert_eq!(j.leeway, Duration::from_secs(30));
    assert_eq!(j.max_lifetime, None);
    assert_eq!(j.bundles.len(), 2);
    assert_eq!(j.bundles[1].trust_domain.as_str(), "partner.org");
    assert_eq!(j.bundles[1].file, d.path().join("partner.json"));
    assert!(cfg.routes[0].auth.uses(AuthLayer::JwtSvid));
}

#[test]
fn leeway_and_max_lifetime_are_durations() {
    let d = dir();
    let text = SECTION.replace(
        "audiences = [\"spiffe://example.org/idgate\"]\n",
        "audiences = [\"spiffe://example.org/idgate\"]\nleeway = \"0s\"\nmax_lifetime = \"15m\"\n",
    );
    let j = parse_in(d.path(), &text).unwrap().jwt_svid.unwrap();
    assert_eq!(j.leeway, Duration::ZERO);
    assert_eq!(j.max_lifetime, Some(Duration::from_secs(900)));

    for (setting, key) in [
        ("leeway = \"soon\"", "jwt_svid.leeway"),
        ("leeway = \"10m\"", "jwt_svid.leeway"),
        ("max_lifetime = \"0s\"", "jwt_svid.max_lifetime"),
        ("max_lifetime = \"forever\"", "jwt_svid.max_lifetime"),
    ] {
        let text = SECTION.replace("[jwt_svid]\n", &format!("[jwt_svid]\n{setting}\n"));
        let errors = parse_in(d.path(), &text).unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{key}: "))),
            "{setting}: {errors:?}"
        );
    }
}

#[test]
fn each_problem_is_named_by_its_key() {
    let d = dir();
    for (section, key) in [
        (
            "[jwt_svid]\naudiences = []\n[[jwt_svid.bundles]]\ntrust_domain = \"example.org\"\nfile = \"example.json\"\n",
            "jwt_svid.audiences",
        ),
        (
            "[jwt_svid]\n[[jwt_svid.bundles]]\ntrust_domain = \"example.org\"\nfile = \"example.json\"\n",
            "jwt_svid.audiences",
        ),
        (
            "[jwt_svid]\naudiences = [\"\"]\n[[jwt_svid.bundles]]\ntrust_domain = \"example.org\"\nfile = \"example.json\"\n",
            "jwt_svid.audiences[0]",
        ),
        ("[jwt_svid]\naudiences = [\"a\"]\n", "jwt_svid.bundles"),
        (
            "[jwt_svid]\naudiences = [\"a\"]\n[[jwt_svid.bundles]]\ntrust_domain = \"example.org\"\nfile = \"missing.json\"\n",
            "jwt_svid.bundles[0].file",
        ),
        (
            "[jwt_svid]\naudiences = [\"a\"]\n[[jwt_svid.bundles]]\ntrust_domain = \"Example.org\"\nfile = \"example.json\"\n",
            "jwt_svid.bundles[0].trust_domain",
        ),
        (
            "[jwt_svid]\naudiences = [\"a\"]\n[[jwt_svid.bundles]]\ntrust_domain = \"example.org\"\nfile = \"example.json\"\n[[jwt_svid.bundles]]\ntrust_domain = \"spiffe://example.org\"\nfile = \"partner.json\"\n",
            "jwt_svid.bundles[1].trust_domain",
        ),
        (
            "[jwt_svid]\naudiences = [\"a\"]\nissuer = \"x\"\n",
            "jwt_svid.issuer",
        ),
        (
            "[jwt_svid]\naudiences = [\"a\"]\n[[jwt_svid.bundles]]\ntrust_domain = \"example.org\"\n",
            "jwt_svid.bundles[0]",
        ),
    ] {
        let errors = parse_in(d.path(), section).unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{key}: "))),
            "{section}: {errors:?}"
        );
    }
}

#[test]
fn bundles_may_be_left_out_only_when_the_workload_api_provides_them() {
    assert!(bundles_required(false));
    assert!(!bundles_required(true));
}

#[test]
fn a_route_using_jwt_svid_needs_the_section() {
    let d = dir();
    let errors = parse_in(d.path(), &format!("{ROUTE}{ALLOW}auth = [\"jwt_svid\"]\n")).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e == "routes[0].auth: uses jwt_svid, but there is no [jwt_svid] section"),
        "{errors:?}"
    );
    // Inside `any` too.
    let errors = parse_in(
        d.path(),
        &format!("{ROUTE}{ALLOW}auth = [{{ any = [\"mtls\", \"jwt_svid\"] }}]\n"),
    )
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("no [jwt_svid] section")),
        "{errors:?}"
    );
}

#[test]
fn jwt_and_jwt_svid_are_alternatives_never_both_required() {
    let d = dir();
    let issuer = "[[jwt_issuers]]\nname = \"corp\"\nissuer = \"https://idp.corp.test\"\njwks_uri = \"https://idp.corp.test/jwks\"\naudiences = [\"idgate\"]\n";
    for auth in [
        r#"["jwt", "jwt_svid"]"#,
        r#"["jwt_svid", { any = ["jwt", "api_key"] }]"#,
    ] {
        let errors = parse_in(
            d.path(),
            &format!("{SECTION}{issuer}{ROUTE}{ALLOW}auth = {auth}\n"),
        )
        .unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with("routes[0].auth: ")
                && e.contains("same Authorization: Bearer header")
                && e.contains("any = [\"jwt\", \"jwt_svid\"]")),
            "{auth}: {errors:?}"
        );
    }
    let ok = parse_in(
        d.path(),
        &format!("{SECTION}{issuer}{ROUTE}{ALLOW}auth = [{{ any = [\"jwt\", \"jwt_svid\"] }}]\n"),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn an_allow_entry_may_name_a_trust_domain_known_only_by_its_jwt_bundle() {
    let d = dir();
    let route = format!("{ROUTE}auth = [\"jwt_svid\"]\n");
    let ok = parse_in(
        d.path(),
        &format!("{SECTION}{route}allow = [\"spiffe://partner.org/x\"]\n"),
    );
    assert!(ok.is_ok(), "{ok:?}");
    let errors = parse_in(
        d.path(),
        &format!("{SECTION}{route}allow = [\"spiffe://unknown.org/x\"]\n"),
    )
    .unwrap_err();
    assert!(
        errors.iter().any(|e| e.starts_with("routes[0].allow[0]: ")),
        "{errors:?}"
    );
}

#[test]
fn one_jwt_svid_bundle_file_for_two_trust_domains_is_refused() {
    let d = dir();
    let errors = parse_in(
        d.path(),
        "[jwt_svid]\naudiences = [\"a\"]\n[[jwt_svid.bundles]]\ntrust_domain = \"example.org\"\nfile = \"example.json\"\n[[jwt_svid.bundles]]\ntrust_domain = \"partner.org\"\nfile = \"example.json\"\n",
    )
    .unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("jwt_svid.bundles[1].file: ")
            && errors[0].contains("is also the bundle of trust domain example.org"),
        "{errors:?}"
    );
}
