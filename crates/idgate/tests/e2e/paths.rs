//! Request paths end to end: a route guarded by a literal segment cannot be reached under
//! another spelling of its path (percent-encoding, case with `case_insensitive_paths`),
//! broken encodings and control characters are refused, the upstream receives the
//! canonical path the route was chosen on, and `idgate check` judges templates and warns
//! about literal/parameter siblings.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// The one workload allowed to export; kyc workloads may only read single users.
const EXPORTER: &str = "spiffe://example.org/ns/admin/sa/exporter";

fn pki() -> Pki {
    Pki::new(TD, &[ONBOARDING, EXPORTER])
}

/// `GET /api/users/{id}` for every `ns/kyc/*` workload, and `GET /api/users/export` for
/// [`EXPORTER`] alone, both to one upstream at `url`; `edit` may change the upstream.
fn users_config(pki: &Pki, url: &str, edit: impl FnOnce(&mut UpstreamSpec)) -> GatewayConfig {
    let mut upstream = UpstreamSpec::new("users", url);
    edit(&mut upstream);
    base_config(pki)
        .upstream(upstream)
        .route(RouteSpec::new(
            "user-read",
            &["GET"],
            "/api/users/{id}",
            "users",
            &["spiffe://example.org/ns/kyc/*"],
        ))
        .route(RouteSpec::new(
            "user-export",
            &["GET"],
            "/api/users/export",
            "users",
            &[EXPORTER],
        ))
}

/// Reads paths without regard to case.
fn case_insensitive(upstream: &mut UpstreamSpec) {
    upstream
        .extra
        .insert("case_insensitive_paths".into(), true.into());
}

struct Users {
    pki: Pki,
    upstream: TestUpstream,
    _gw: Gateway,
    port: u16,
}

impl Users {
    async fn start(edit: impl FnOnce(&mut UpstreamSpec)) -> Self {
        Self::start_with(edit, |_| {}).await
    }

    /// As [`Users::start`], with `routes` changing the configuration's routes.
    async fn start_with(
        edit: impl FnOnce(&mut UpstreamSpec),
        routes: impl FnOnce(&mut [RouteSpec]),
    ) -> Self {
        let pki = pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut config = users_config(&pki, &upstream.url(false), edit);
        routes(&mut config.routes);
        let gw = Gateway::start(&config, &[]).await;
        let port = gw.port;
        Self {
            pki,
            upstream,
            _gw: gw,
            port,
        }
    }

    /// An HTTP/1.1 and an HTTP/2 client presenting `id`'s SVID.
    fn clients(&self, id: &str) -> [Client; 2] {
        [
            Client::new(&self.pki, Some(id), self.port, false),
            Client::new(&self.pki, Some(id), self.port, true),
        ]
    }

    fn seen_paths(&self) -> Vec<String> {
        self.upstream
            .requests()
            .into_iter()
            .map(|s| s.path_and_query)
            .collect()
    }
}

/// The problem type of a refusal, after checking the status and the media type.
fn problem_type(reply: &Reply, status: u16, path: &str) -> String {
    assert_eq!(
        reply.status,
        status,
        "{path}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "{path}"
    );
    reply.json()["type"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn encoded_spellings_of_a_guarded_literal_are_routed_to_it_and_refused() {
    within(async {
        let s = Users::start(|_| {}).await;
        for c in s.clients(ONBOARDING) {
            for path in [
                "/api/users/export",
                "/api/users/%65xport",
                "/api/users/exp%6Frt",
                "/api/users/exp%6frt",
                "/api/users/%65%78%70%6f%72%74",
                "/api/users/%65%78%70%6F%72%74?all=1",
            ] {
                let r = c.get(path).await.unwrap();
                assert_eq!(
                    problem_type(&r, 403, path),
                    "https://idgate.dev/problems/forbidden",
                    "{path}"
                );
            }
        }
        assert!(
            s.upstream.requests().is_empty(),
            "a kyc workload reached the upstream: {:?}",
            s.seen_paths()
        );

        // The workload the export route is for gets it under any spelling, and the
        // upstream receives the canonical path the route was chosen on.
        let [h1, h2] = s.clients(EXPORTER);
        for (c, path) in [
            (&h1, "/api/users/%65xport?all=%2f1"),
            (&h2, "/api/users/exp%6frt"),
        ] {
            let r = c.get(path).await.unwrap();
            assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        }
        assert_eq!(
            s.seen_paths(),
            ["/api/users/export?all=%2f1", "/api/users/export"]
        );

        // The parameter route still takes everything else, forwarded in canonical form.
        let [h1, _] = s.clients(ONBOARDING);
        for path in [
            "/api/users/%41lice",
            "/api/users/caf%c3%a9",
            "/api/users/a%7cb",
        ] {
            let r = h1.get(path).await.unwrap();
            assert_eq!(r.status, 200, "{path}: {:?}", r.body);
        }
        assert_eq!(
            &s.seen_paths()[2..],
            [
                "/api/users/Alice",
                "/api/users/caf%C3%A9",
                "/api/users/a%7Cb"
            ]
        );
    })
    .await
}

#[tokio::test]
async fn case_variants_reach_the_literal_route_when_the_upstream_ignores_case() {
    within(async {
        let s = Users::start(case_insensitive).await;
        for c in s.clients(ONBOARDING) {
            for path in [
                "/api/users/EXPORT",
                "/api/users/Export",
                "/API/Users/eXp%4Frt",
                "/api/users/%45XPORT",
            ] {
                let r = c.get(path).await.unwrap();
                assert_eq!(
                    problem_type(&r, 403, path),
                    "https://idgate.dev/problems/forbidden",
                    "{path}"
                );
            }
            // Such an upstream may fold `ſ`, `ı` or the Kelvin sign into ASCII letters, which
            // the gateway does not: characters beyond ASCII are refused on its routes.
            for path in [
                "/api/users/%C5%BFecret",
                "/api/users/adm%C4%B1n",
                "/api/users/%E2%84%AAyc",
            ] {
                let r = c.get(path).await.unwrap();
                assert_eq!(
                    problem_type(&r, 400, path),
                    "https://idgate.dev/problems/invalid-target-encoding",
                    "{path}"
                );
            }
        }
        assert!(
            s.upstream.requests().is_empty(),
            "a kyc workload reached the upstream: {:?}",
            s.seen_paths()
        );
        let [h1, h2] = s.clients(EXPORTER);
        assert_eq!(h1.get("/api/users/EXPORT").await.unwrap().status, 200);
        // A parameter keeps its case: only literal segments are compared without it.
        assert_eq!(h2.get("/API/users/%41lice").await.unwrap().status, 403);
        let [kyc, _] = s.clients(ONBOARDING);
        assert_eq!(kyc.get("/API/users/%41lice").await.unwrap().status, 200);
        assert_eq!(s.seen_paths(), ["/api/users/EXPORT", "/API/users/Alice"]);
    })
    .await
}

#[tokio::test]
async fn a_method_the_literal_route_lacks_is_405_in_every_case_on_an_upstream_that_ignores_case() {
    within(async {
        // The export is a POST for the exporter alone; kyc workloads read single users.
        let s = Users::start_with(case_insensitive, |routes| {
            routes[1].methods = vec!["POST".into()];
        })
        .await;
        for c in s.clients(ONBOARDING) {
            for path in [
                "/api/users/export",
                "/api/users/EXPORT",
                "/api/users/Export",
                "/API/Users/eXPORT",
                "/api/users/%45XPORT",
            ] {
                let r = c.get(path).await.unwrap();
                assert_eq!(
                    problem_type(&r, 405, path),
                    "https://idgate.dev/problems/method-not-allowed",
                    "{path}"
                );
                assert_eq!(r.header("allow"), Some("POST"), "{path}");
            }
        }
        assert!(
            s.upstream.requests().is_empty(),
            "a GET of the export reached the upstream: {:?}",
            s.seen_paths()
        );
        // The routes still take what they list, in any case.
        let [h1, h2] = s.clients(EXPORTER);
        let r = h2.send("POST", "/api/users/EXPORT", &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let [kyc, _] = s.clients(ONBOARDING);
        assert_eq!(kyc.get("/API/users/Alice").await.unwrap().status, 200);
        assert_eq!(h1.get("/api/users/EXPORT").await.unwrap().status, 405);
        assert_eq!(s.seen_paths(), ["/api/users/EXPORT", "/API/users/Alice"]);
    })
    .await
}

#[tokio::test]
async fn a_trailing_escaped_newline_never_reaches_the_upstream_through_a_parameter_route() {
    within(async {
        // To an upstream matching `^/api/users/export$` with Python's `re` (Starlette,
        // FastAPI) after decoding the path, `/api/users/export%0A` is the export.
        let s = Users::start(|_| {}).await;
        for c in s.clients(ONBOARDING) {
            for path in [
                "/api/users/export%0A",
                "/api/users/export%0a",
                "/api/users/export%0D%0A",
                "/api/users/export%0d",
                "/api/users/export%09",
                "/api/users/export%7F",
                "/api/users/export%01",
                "/api/users/%65xport%0A?all=1",
            ] {
                let r = c.get(path).await.unwrap();
                assert_eq!(
                    problem_type(&r, 400, path),
                    "https://idgate.dev/problems/ambiguous-path",
                    "{path}"
                );
            }
        }
        // The parameter route is up: only what it should take got through.
        let [kyc, _] = s.clients(ONBOARDING);
        assert_eq!(kyc.get("/api/users/Alice").await.unwrap().status, 200);
        assert_eq!(s.seen_paths(), ["/api/users/Alice"]);
    })
    .await
}

#[tokio::test]
async fn broken_encodings_and_non_ascii_get_400_and_never_reach_the_upstream() {
    within(async {
        let s = Users::start(|_| {}).await;
        let invalid = "https://idgate.dev/problems/invalid-target-encoding";
        let ambiguous = "https://idgate.dev/problems/ambiguous-path";
        for c in s.clients(ONBOARDING) {
            for (path, want) in [
                // Overlong `.` (`%C0%AE`), alone and as a dot segment.
                ("/api/users/%C0%AE", invalid),
                ("/api/users/%C0%AE%C0%AE/export", invalid),
                ("/api/users/%c0%ae", invalid),
                ("/api/users/%E0%80%AE", invalid),
                // A lone continuation byte, a truncated sequence, a surrogate.
                ("/api/users/%80export", invalid),
                ("/api/users/exp%C3rt", invalid),
                ("/api/users/%ED%A0%80", invalid),
                ("/api/users/%zz", invalid),
                ("/api/users/%6", invalid),
                // Raw bytes outside ASCII, in the path and in the query.
                ("/api/users/caf\u{e9}", invalid),
                ("/api/users/1?name=caf\u{e9}", invalid),
                // Dot segments are recognised after decoding.
                ("/api/users/%2e%2e/users/export", ambiguous),
                ("/api/users/.%2E/x", ambiguous),
                ("/api/users/a%2Fb", ambiguous),
            ] {
                let r = c.get(path).await.unwrap();
                assert_eq!(problem_type(&r, 400, path), want, "{path}");
            }
        }
        assert!(
            s.upstream.requests().is_empty(),
            "reached the upstream: {:?}",
            s.seen_paths()
        );
    })
    .await
}

/// Runs `idgate check` on `config`: (exit code, stdout, stderr).
async fn check(config: GatewayConfig) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    tokio::task::spawn_blocking(move || {
        let _dir = dir;
        run_bounded(
            Command::new(bin())
                .arg("check")
                .arg("--config")
                .arg(&path)
                .env_remove("IDGATE_LOG"),
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn check_warns_when_a_literal_shadows_a_parameter_with_another_allow_list() {
    within(async {
        let pki = pki();
        let config = users_config(&pki, "http://127.0.0.1:1", |_| {});
        let (code, out, err) = check(config).await;
        assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
        let warning = err
            .lines()
            .find(|l| l.contains("shadows"))
            .unwrap_or_else(|| panic!("no warning:\n{err}"));
        for part in [
            "warning: ",
            "routes[1] \"user-export\" (GET /api/users/export)",
            "routes[0] \"user-read\" (GET /api/users/{id})",
            "allow list",
            "canonicalised",
            "upstream \"users\" must agree",
        ] {
            assert!(warning.contains(part), "{part:?} missing from: {warning}");
        }

        // The same allow list on both: nothing to warn about.
        let mut same = users_config(&pki, "http://127.0.0.1:1", |_| {});
        same.routes[1].allow = vec!["spiffe://example.org/ns/kyc/*".into()];
        let (code, _, err) = check(same).await;
        assert_eq!(code, 0, "{err}");
        assert!(!err.contains("shadows"), "{err}");
    })
    .await
}

#[tokio::test]
async fn check_refuses_templates_that_could_never_match_or_differ_only_in_case() {
    within(async {
        let pki = pki();
        let mut encoded = users_config(&pki, "http://127.0.0.1:1", |_| {});
        encoded.routes[1].path = "/api/users/%65xport".into();
        let (code, out, err) = check(encoded).await;
        assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
        assert!(
            err.contains("routes[1].path") && err.contains("write \"/api/users/export\""),
            "{err}"
        );

        // A control character would be refused in every request, escaped or raw.
        for path in ["/api/users/export%0A", "/api/users/export\n"] {
            let mut control = users_config(&pki, "http://127.0.0.1:1", |_| {});
            control.routes[1].path = path.into();
            let (code, out, err) = check(control).await;
            assert_eq!(code, 2, "{path:?}: stdout:\n{out}\nstderr:\n{err}");
            assert!(
                err.contains("routes[1].path") && err.contains("ambiguous-path"),
                "{path:?}: {err}"
            );
        }

        let mut by_case = users_config(&pki, "http://127.0.0.1:1", case_insensitive);
        by_case.routes[1].path = "/API/Users/{user}".into();
        let (code, out, err) = check(by_case).await;
        assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
        assert!(
            err.contains("routes[1].path") && err.contains("case_insensitive_paths"),
            "{err}"
        );
    })
    .await
}
