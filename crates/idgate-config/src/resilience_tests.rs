#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use super::*;

const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"
[identity]
svid_cert = "c"
svid_key = "k"
[[upstreams]]
name = "p"
url = "https://provider.test"
[[upstreams]]
name = "q"
url = "https://secondary.test"
"#;

/// The errors of `BASE` with `extra` (in a directory holding a `key` file), as
/// `key: reason`, leaving out those of `BASE`; and the warnings when there are none but
/// those of `BASE`.
fn check(extra: &str) -> Result<crate::Config, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "k".repeat(44)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = dir.path().join("t.toml");
    let base: Vec<String> = match crate::parse(&file, BASE) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|e| e.key).collect(),
    };
    let text = format!("{BASE}{extra}");
    match crate::parse(&file, &text) {
        Ok(c) => Ok(c),
        Err(e) => {
            let own: Vec<String> =
                e.0.into_iter()
                    .filter(|e| !base.contains(&e.key))
                    .map(|e| format!("{}: {}", e.key, e.reason))
                    .collect();
            Err(own)
        }
    }
}

fn errors(extra: &str) -> Vec<String> {
    check(extra).err().unwrap_or_default()
}

fn route(extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "r"
methods = ["GET"]
path = "/v1/x"
upstream = "p"
allow = ["spiffe://a.test/x"]
{extra}
"#
    )
}

#[test]
fn a_cached_fallback_needs_the_fallback_key_and_safe_methods_alone() {
    let e = errors(&route(r#"fallback = { cache = true }"#));
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].fallback.cache: cached answers are encrypted")),
        "{e:?}"
    );
    let e = errors(&format!(
        "[fallback]\nkey = \"file:key\"\n{}",
        route(r#"fallback = { cache = true, max_age = "5m" }"#)
            .replace(r#"methods = ["GET"]"#, r#"methods = ["GET", "POST"]"#)
    ));
    assert!(
        e.iter().any(|e| e.starts_with(
            "routes[0].fallback.cache: only a route of GET and HEAD alone may serve cached answers, and this one takes POST"
        )),
        "{e:?}"
    );
    let e = errors(&format!(
        "[fallback]\nkey = \"file:key\"\n{}",
        route(r#"fallback = { cache = true, max_age = "soon", ttl = 3 }"#)
    ));
    assert!(
        e.iter().any(|e| e.starts_with("routes[0].fallback")),
        "{e:?}"
    );
}

#[test]
fn a_cached_fallback_loads_with_its_settings() {
    // The identity files do not exist: only the route's own errors matter.
    let e = errors(&format!(
        "[fallback]\nkey = \"file:key\"\nmax_entries = 10\n{}",
        route(r#"fallback = { cache = true, max_age = "5m", max_bytes = 1000 }"#)
    ));
    assert!(e.is_empty(), "{e:?}");
    let cx_route = parse_route(
        &route(r#"fallback = { cache = true, max_age = "5m", max_bytes = 1000 }"#),
        "[fallback]\nkey = \"file:key\"\n",
    );
    assert_eq!(
        cx_route.cache,
        Some(FallbackCache {
            max_age: Duration::from_secs(300),
            max_bytes: 1000
        })
    );
}

#[test]
fn a_cached_fallback_may_keep_answers_of_at_most_1_mib() {
    let with = |max_bytes: u64| {
        errors(&format!(
            "[fallback]\nkey = \"file:key\"\n{}",
            route(&format!(
                "fallback = {{ cache = true, max_bytes = {max_bytes} }}"
            ))
        ))
    };
    assert!(
        with(MAX_FALLBACK_BYTES).is_empty(),
        "{:?}",
        with(MAX_FALLBACK_BYTES)
    );
    let e = with(MAX_FALLBACK_BYTES + 1);
    assert!(
        e.iter().any(|e| e.starts_with(
            "routes[0].fallback.max_bytes: must be at most 1048576 (1 MiB): an answer to cache is held whole in memory"
        )),
        "{e:?}"
    );
    assert!(!with(1 << 40).is_empty());
}

/// A route's resilience settings, parsed alone (the rest of the file is not validated).
fn parse_route(route_text: &str, sections: &str) -> RouteResilience {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "k".repeat(44)).unwrap();
    let file = dir.path().join("t.toml");
    let mut cx = Ctx {
        file: &file,
        base: dir.path(),
        errors: Vec::new(),
        check_secrets: true,
    };
    let table: toml::Table = toml::from_str(&format!("{sections}{route_text}")).unwrap();
    let fallback = table.get("fallback").is_some();
    let testing = table
        .get("testing")
        .and_then(|t| t.get("fault_injection"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let r = &table["routes"][0];
    let upstreams: HashMap<&str, usize> = [("p", 0), ("q", 1)].into_iter().collect();
    let broken = HashSet::new();
    let out = super::route(
        &mut cx,
        "routes[0]",
        (
            r.get("fallback").cloned(),
            r.get("failover")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            r.get("faults").cloned(),
        ),
        (&[Method::GET], Some(0)),
        &Known {
            upstreams: &upstreams,
            case_insensitive: &[false, false],
            broken_upstreams: &broken,
            fallback,
            fault_injection: testing,
        },
    );
    assert!(cx.errors.is_empty(), "{:?}", cx.errors);
    out
}

#[test]
fn a_failover_names_another_existing_upstream() {
    let e = errors(&route(r#"failover = "nowhere""#));
    assert!(
        e.iter()
            .any(|e| e == "routes[0].failover: no upstream is named \"nowhere\""),
        "{e:?}"
    );
    let e = errors(&route(r#"failover = "p""#));
    assert!(
        e.iter()
            .any(|e| e.starts_with("routes[0].failover: names the route's own upstream")),
        "{e:?}"
    );
    assert_eq!(
        parse_route(&route(r#"failover = "q""#), "").failover,
        Some(1)
    );
}

#[test]
fn a_failover_upstream_must_read_paths_with_the_same_case_as_its_route() {
    // Two more upstreams that read paths without case.
    let folding = r#"
[[upstreams]]
name = "f"
url = "https://folding.test"
case_insensitive_paths = true
[[upstreams]]
name = "g"
url = "https://folding-secondary.test"
case_insensitive_paths = true
"#;
    let e = errors(&format!("{folding}{}", route(r#"failover = "f""#)));
    assert!(
        e.iter().any(|e| e.starts_with(
            "routes[0].failover: upstream \"f\" reads paths without case (case_insensitive_paths), \
             the route's own upstream with case"
        )),
        "{e:?}"
    );
    let e = errors(&format!(
        "{folding}{}",
        route(r#"failover = "p""#).replace(r#"upstream = "p""#, r#"upstream = "f""#)
    ));
    assert!(
        e.iter().any(|e| e.starts_with(
            "routes[0].failover: upstream \"p\" reads paths with case (case_insensitive_paths), \
             the route's own upstream without case"
        )),
        "{e:?}"
    );
    // Both without case, or both with it: nothing to say.
    let e = errors(&format!(
        "{folding}{}",
        route(r#"failover = "g""#).replace(r#"upstream = "p""#, r#"upstream = "f""#)
    ));
    assert!(e.is_empty(), "{e:?}");
    let e = errors(&format!("{folding}{}", route(r#"failover = "q""#)));
    assert!(e.is_empty(), "{e:?}");
}

#[test]
fn faults_are_refused_without_the_testing_switch() {
    let e = errors(&route(r#"faults = { abort_percent = 5 }"#));
    assert!(
        e.iter().any(|e| e.starts_with(
            "routes[0].faults: faults are injected only in rehearsals: set [testing] fault_injection = true"
        )),
        "{e:?}"
    );
    let e = errors(&format!(
        "[testing]\nfault_injection = false\n{}",
        route(r#"faults = { abort_percent = 5 }"#)
    ));
    assert!(
        e.iter().any(|e| e.starts_with("routes[0].faults:")),
        "{e:?}"
    );
}

#[test]
fn faults_are_checked_and_read_in_parts_per_million() {
    let on = "[testing]\nfault_injection = true\n";
    let e = errors(&format!(
        "{on}{}",
        route(r#"faults = { delay_percent = 10, abort_status = 302, abort_percent = 101 }"#)
    ));
    for key in [
        "routes[0].faults.delay:",
        "routes[0].faults.abort_status:",
        "routes[0].faults.abort_percent:",
    ] {
        assert!(e.iter().any(|e| e.starts_with(key)), "{key} in {e:?}");
    }
    let f = parse_route(
        &route(r#"faults = { delay = "200ms", delay_percent = 10, abort_percent = 2.5 }"#),
        on,
    )
    .faults
    .unwrap();
    assert_eq!(
        f,
        Faults {
            delay: Duration::from_millis(200),
            delay_ppm: 100_000,
            abort_status: 503,
            abort_ppm: 25_000,
        }
    );
}

#[test]
fn fault_injection_is_announced_with_its_routes() {
    let routes = vec![];
    assert_eq!(fault_warning(TestingConfig::default(), &routes), None);
    let w = fault_warning(
        TestingConfig {
            fault_injection: true,
        },
        &routes,
    )
    .unwrap();
    assert!(w.starts_with("FAULT INJECTION IS ON"), "{w}");
}
