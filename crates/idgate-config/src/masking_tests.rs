#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use idgate_auth::ApiKeyIdentity;
use idgate_mask::PassTypes;
use idgate_tls::SpiffeId;

use super::*;
use crate::test_support::{BASE, added_problems};

/// The errors of `BASE` with `extra` in a directory holding a 0600 `key` file, as
/// `key: reason`, leaving out those of `BASE`.
fn errors(extra: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "k".repeat(40)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    added_problems(&dir.path().join("t.toml"), BASE, extra)
}

const PROFILES: &str = r#"
[masking.profiles.kyc-minimal]
pseudonym_key = "file:key"
non_json = "block"
rules = [
  { path = "$.id_verifications[*].document_number", action = "mask", keep = 4 },
  { path = "$..date_of_birth", action = "truncate_date" },
  { path = "$..full_name", action = "redact" },
  { path = "$..parsed_address", action = "drop" },
  { path = "$.vendor_data", action = "pseudonymize" },
  { path = "$..status", action = "allow" },
  { path = "$..ssn", action = "block" },
]
[masking.profiles.status-only]
rules = [{ path = "$.status", action = "allow" }, { path = "$[*]", action = "drop" }]
"#;

fn route(masking: &str) -> String {
    format!(
        r#"
[[routes]]
name = "decision"
methods = ["GET"]
path = "/v3/session/{{id}}/decision/"
upstream = "p"
allow = ["spiffe://example.org/ns/kyc/*"]
masking = {masking}
"#
    )
}

#[test]
fn profiles_and_routes_that_use_them_load() {
    let ok = format!(
        "{}{}{PROFILES}",
        route(r#""kyc-minimal""#),
        route(
            r#"{ default = "status-only", by_caller = [
  { callers = ["spiffe://example.org/ns/kyc/sa/review"], profile = "allow" },
  { callers = ["apikey:crm", "spiffe://example.org/ns/kyc/*"], profile = "kyc-minimal" },
] }"#
        )
        .replace("\"decision\"", "\"decision-2\"")
        .replace("/decision/", "/decision2/")
    );
    // The route's apikey entry needs the api_key layer only to be reachable; it is valid.
    assert_eq!(errors(&ok), Vec::<String>::new());
}

#[test]
fn every_bad_key_is_named_with_its_reason() {
    let bad = format!(
        "{}{}",
        route(
            r#"{ default = "kyc-maximal", by_caller = [{ callers = [], profile = "nope" }, { callers = ["mallory"], profile = "allow" }] }"#
        ),
        r#"
[masking.profiles.allow]
rules = [{ path = "$.a", action = "drop" }]
[masking.profiles."bad name"]
rules = [{ path = "$.a", action = "drop" }]
[masking.profiles.empty]
[masking.profiles.p]
pseudonym_key = "sk_live_0123456789"
non_json = "sometimes"
refresh_interval = "often"
rules = [
  { path = "date_of_birth", action = "truncate_date" },
  { path = "$..", action = "drop" },
  { path = "$.a", action = "mask" },
  { path = "$.a", action = "mask", keep = -1 },
  { path = "$.a", action = "redact", keep = 2 },
  { path = "$.a", action = "hide" },
  { path = "$[?(@.x)]", action = "drop" },
]
[masking.profiles.q]
rules = [{ path = "$.id", action = "pseudonymize" }]
[masking.profiles.r]
pseudonym_key = "file:missing-key"
rules = [{ path = "$.id", action = "pseudonymize" }, { path = "$.x", action = "drop", extra = 1 }]
"#
    );
    let found = errors(&bad);
    let expected = [
        "masking.profiles.allow: \"allow\" is the name routes use for no masking",
        "masking.profiles.bad name: a profile name is letters, digits",
        "masking.profiles.empty.rules: is empty",
        "masking.profiles.p.rules[0].path: \"date_of_birth\": must start with '$'",
        "masking.profiles.p.rules[1].path: \"$..\": '.' at byte 1 must be followed",
        "masking.profiles.p.rules[2].keep: missing: mask keeps the last `keep` characters",
        "masking.profiles.p.rules[3].keep: must be 0 or more",
        "masking.profiles.p.rules[4].keep: only mask takes keep, not redact",
        "masking.profiles.p.rules[5].action: \"hide\" is not an action: write drop, redact, mask, truncate_date, pseudonymize, allow, block",
        "masking.profiles.p.rules[6].path: \"$[?(@.x)]\": '[…]' at byte 1 must hold an index",
        "masking.profiles.p.pseudonym_key: a literal secret is not allowed here",
        "masking.profiles.p.refresh_interval:",
        "masking.profiles.p.non_json: \"sometimes\": write \"pass\" or \"block\"",
        "masking.profiles.q.rules[0].action: pseudonymize needs the profile's key: set masking.profiles.q.pseudonym_key",
        "masking.profiles.r.rules[1].extra: unknown field",
        "routes[0].masking.default: no masking profile is named \"kyc-maximal\"",
        "routes[0].masking.by_caller[0].callers: is empty",
        "routes[0].masking.by_caller[0].profile: no masking profile is named \"nope\"",
        "routes[0].masking.by_caller[1].callers[0]:",
    ];
    for e in expected {
        assert!(
            found.iter().any(|got| got.starts_with(e)),
            "expected {e:?} among:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));
    // The literal is never repeated.
    assert!(!found.join("\n").contains("sk_live"));

    // A key that cannot be read is named by its key.
    let errors_r = errors(&format!(
        "{}{}",
        route(r#""r""#),
        r#"
[masking.profiles.r]
pseudonym_key = "file:missing-key"
rules = [{ path = "$.id", action = "pseudonymize" }]
"#
    ));
    assert_eq!(errors_r.len(), 1, "{errors_r:?}");
    assert!(
        errors_r[0].starts_with("masking.profiles.r.pseudonym_key:")
            && errors_r[0].contains("missing-key"),
        "{errors_r:?}"
    );
    // A route's masking that is neither a name nor a table.
    let e = errors(&format!("{}{PROFILES}", route("3")));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("routes[0].masking: write a profile name"),
        "{e:?}"
    );
    let e = errors(&format!("{}{PROFILES}", route(r#"{ profile = "x" }"#)));
    assert!(
        e[0].starts_with("routes[0].masking.profile: unknown field"),
        "{e:?}"
    );
}

#[test]
fn a_route_picks_the_first_entry_naming_the_caller_or_its_default() {
    let mut cx = Ctx {
        file: Path::new("/etc/idgate/idgate.toml"),
        base: Path::new("/etc/idgate"),
        errors: Vec::new(),
        check_secrets: true,
    };
    let names = ProfileNames {
        loaded: vec!["a".into(), "b".into()],
        broken: Vec::new(),
    };
    let raw: toml::Value = toml::from_str::<toml::Table>(
        r#"m = { default = "b", by_caller = [
             { callers = ["spiffe://td/ns/audit/*"], profile = "allow" },
             { callers = ["apikey:crm", "spiffe://td/ns/*"], profile = "a" },
           ] }"#,
    )
    .unwrap()
    .remove("m")
    .unwrap();
    let m = super::route(
        &mut cx,
        "routes[0]",
        Some(raw),
        &names,
        (&Vec::new(), &HashSet::new()),
    )
    .unwrap();
    assert!(cx.errors.is_empty(), "{:?}", cx.errors);
    let id = |s: &str| SpiffeId::new(s).unwrap();
    let auditor = id("spiffe://td/ns/audit/sa/x");
    let other = id("spiffe://td/ns/web/sa/y");
    let elsewhere = id("spiffe://other/z");
    assert_eq!(
        m.choose(Some(Principal::Workload(&auditor))),
        ProfileChoice::Allow
    );
    assert_eq!(
        m.choose(Some(Principal::Workload(&other))),
        ProfileChoice::Profile(0)
    );
    assert_eq!(
        m.choose(Some(Principal::Workload(&elsewhere))),
        ProfileChoice::Profile(1)
    );
    let crm = ApiKeyIdentity {
        id: "k".into(),
        name: "crm".into(),
        scopes: Vec::new(),
        workload: None,
    };
    assert_eq!(
        m.choose(Some(Principal::ApiKey(&crm))),
        ProfileChoice::Profile(0)
    );
    assert_eq!(m.choose(None), ProfileChoice::Profile(1));
    assert!(m.masks());
    let all_allow = RouteMasking {
        by_caller: Vec::new(),
        default: ProfileChoice::Allow,
    };
    assert!(!all_allow.masks());
}

#[test]
fn a_profile_is_resolved_into_its_rules() {
    let mut cx = Ctx {
        file: Path::new("t.toml"),
        base: Path::new("."),
        errors: Vec::new(),
        check_secrets: true,
    };
    let raw: RawMasking = toml::from_str(
        r#"[profiles.p]
           rules = [{ path = "$..a", action = "mask", keep = 2 }, { path = "$.b", action = "block" }]"#,
    )
    .unwrap();
    let mut warnings = Vec::new();
    let (cfg, broken) = section(&mut cx, raw, &mut warnings);
    assert!(cx.errors.is_empty() && broken.is_empty() && warnings.is_empty());
    let p = &cfg.profiles[0];
    assert_eq!(
        (p.name.as_str(), &p.non_json),
        ("p", &NonJson::Pass(PassTypes::default()))
    );
    assert_eq!(p.refresh_interval, DEFAULT_KEY_REFRESH);
    let rules: Vec<(String, Action)> = p
        .profile
        .rules()
        .iter()
        .map(|r| (r.path.to_string(), r.action))
        .collect();
    assert_eq!(
        rules,
        [
            ("$..a".to_owned(), Action::Mask { keep: 2 }),
            ("$.b".to_owned(), Action::Block)
        ]
    );
}

#[test]
fn pass_types_name_the_media_a_passing_profile_lets_through_and_bad_ones_are_named() {
    let profile = |name: &str, extra: &str| {
        format!(
            "[masking.profiles.{name}]\n{extra}\nrules = [{{ path = \"$.a\", action = \"drop\" }}]\n"
        )
    };
    let good = format!(
        "{}{}",
        route(r#""csv""#),
        profile(
            "csv",
            r#"pass_types = ["text/csv", "image/*", "Application/PDF"]"#
        )
    );
    assert_eq!(errors(&good), Vec::<String>::new());

    let bad = format!(
        "{}{}{}{}{}",
        route(r#""wide""#),
        profile(
            "wide",
            r#"pass_types = ["*/*", "text/*", "application/json", "text/csv; charset=utf-8", "pdf"]"#
        ),
        profile("none", "pass_types = []"),
        profile(
            "blocking",
            "non_json = \"block\"\npass_types = [\"image/*\"]"
        ),
        profile("typed", "pass_types = \"image/*\""),
    );
    let found = errors(&bad);
    let expected = [
        "masking.profiles.wide.pass_types[0]: \"*/*\": name the types",
        "masking.profiles.wide.pass_types[1]: \"text/*\": a text type passes only when named",
        "masking.profiles.wide.pass_types[2]: \"application/json\": JSON is always masked",
        "masking.profiles.wide.pass_types[3]: \"text/csv; charset=utf-8\": write the type without parameters",
        "masking.profiles.wide.pass_types[4]: \"pdf\": write a media type",
        "masking.profiles.none.pass_types: is empty: write non_json = \"block\"",
        "masking.profiles.blocking.pass_types: is for non_json = \"pass\"",
        "masking.profiles.typed.pass_types:",
    ];
    for e in expected {
        assert!(
            found.iter().any(|got| got.starts_with(e)),
            "expected {e:?} among:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(found.len(), expected.len(), "{}", found.join("\n"));

    // Resolved: the types named, in their order, lowercase.
    let mut cx = Ctx {
        file: Path::new("t.toml"),
        base: Path::new("."),
        errors: Vec::new(),
        check_secrets: true,
    };
    let raw: RawMasking = toml::from_str(
        r#"[profiles.p]
           pass_types = ["text/csv", "Image/*"]
           rules = [{ path = "$.a", action = "drop" }]"#,
    )
    .unwrap();
    let (cfg, _) = section(&mut cx, raw, &mut Vec::new());
    assert!(cx.errors.is_empty(), "{:?}", cx.errors);
    let NonJson::Pass(types) = &cfg.profiles[0].non_json else {
        panic!("{:?}", cfg.profiles[0].non_json);
    };
    let named: Vec<String> = types.ranges().iter().map(|r| r.to_string()).collect();
    assert_eq!(named, ["text/csv", "image/*"]);
}

#[test]
fn a_key_no_rule_uses_is_worth_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "k".repeat(40)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cx = Ctx {
        file: Path::new("t.toml"),
        base: dir.path(),
        errors: Vec::new(),
        check_secrets: true,
    };
    let raw: RawMasking = toml::from_str(
        r#"[profiles.p]
           pseudonym_key = "file:key"
           rules = [{ path = "$.a", action = "drop" }]"#,
    )
    .unwrap();
    let mut warnings = Vec::new();
    section(&mut cx, raw, &mut warnings);
    assert!(cx.errors.is_empty(), "{:?}", cx.errors);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("masking.profiles.p.pseudonym_key"));
}

#[test]
fn a_masking_caller_of_an_unknown_trust_domain_is_refused() {
    // The gateway trusts example.org only.
    let base = BASE.replace(
        "svid_key = \"k\"\n",
        "svid_key = \"k\"\n[[identity.trust_bundles]]\ntrust_domain = \"example.org\"\nbundle = \"b\"\n",
    );
    let by_caller = |caller: &str| {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k".repeat(40)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let masking = format!(
            r#"{{ default = "allow", by_caller = [{{ callers = ["{caller}"], profile = "kyc-minimal" }}] }}"#
        );
        added_problems(
            &dir.path().join("t.toml"),
            &base,
            &format!("{}{PROFILES}", route(&masking)),
        )
    };
    assert_eq!(
        by_caller("spiffe://example.org/ns/partner/*"),
        Vec::<String>::new()
    );
    assert_eq!(
        by_caller("spiffe://example.org/ns/partner/sa/api"),
        Vec::<String>::new()
    );
    // A typo in the trust domain: the partner would get the default, "allow".
    for typo in [
        "spiffe://exmaple.org/ns/partner/*",
        "spiffe://exmaple.org/ns/partner/sa/api",
    ] {
        assert_eq!(
            by_caller(typo),
            [
                "routes[0].masking.by_caller[0].callers[0]: trust domain exmaple.org has no [[identity.trust_bundles]] entry, so no caller could match"
            ],
            "{typo}"
        );
    }
}
