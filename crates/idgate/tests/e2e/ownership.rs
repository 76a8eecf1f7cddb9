//! Object ownership through the mock provider's Didit API: a session belongs to the
//! principal that created it (or to its sharing group); anyone else gets the very answer
//! an unknown id gets, and nothing of theirs reaches the provider.

use idgate_mock_provider::{AuthMode, MockConfig, MockHandle};

use crate::assert_eventually;
use crate::support::*;

const KYC_REVIEW: &str = "spiffe://example.org/ns/kyc/sa/review";
const PORTAL: &str = "spiffe://example.org/ns/web/sa/portal";
pub(crate) const PROVIDER_KEY: &str = "didit-key-for-ownership";

pub(crate) async fn didit_mock() -> MockHandle {
    idgate_mock_provider::start(MockConfig::new(
        any_port(),
        AuthMode::DiditApiKey(PROVIDER_KEY.to_owned().into()),
    ))
    .await
    .unwrap()
}

/// The Didit session routes with ownership, for every workload of `ns/kyc` (one group) and
/// `ns/web` (each on its own); `state` is the `[state]` table, if any.
fn config(pki: &Pki, mock: &MockHandle, state: Option<toml::Table>) -> GatewayConfig {
    let allow = [
        "spiffe://example.org/ns/kyc/*",
        "spiffe://example.org/ns/web/*",
    ];
    let route = |name: &str, method: &str, path: &str| {
        RouteSpec::new(name, &[method], path, "didit", &allow)
    };
    let mut config = base_config(pki)
        .upstream(
            UpstreamSpec::new("didit", &mock.url())
                .credential(CredentialSpec::header("x-api-key", "env:DIDIT_KEY")),
        )
        .route(route("create", "POST", "/v3/session/").with("owns", "$.session_id"))
        .route(
            route("decision", "GET", "/v3/session/{session_id}/decision/")
                .with("owner_param", "session_id"),
        )
        .route(
            route("update", "PATCH", "/v3/session/{session_id}/update-status/")
                .with("owner_param", "session_id"),
        )
        .route(
            route("delete", "DELETE", "/v3/session/{session_id}/delete/")
                .with("owner_param", "session_id"),
        )
        .route(
            route("list", "GET", "/v3/sessions/")
                .with("list", "filter")
                .with("list_items", "$.results")
                .with("list_id", "$.session_id"),
        )
        .section(
            "ownership",
            table([(
                "share",
                toml::Value::Array(vec![toml::Value::Table(table([
                    ("group", "kyc".into()),
                    ("principals", strings(&["spiffe://example.org/ns/kyc/*"])),
                ]))]),
            )]),
        );
    if let Some(state) = state {
        config = config.section("state", state);
    }
    config
}

async fn start(pki: &Pki, mock: &MockHandle, state: Option<toml::Table>) -> Gateway {
    Gateway::start(&config(pki, mock, state), &[("DIDIT_KEY", PROVIDER_KEY)]).await
}

fn pki() -> Pki {
    Pki::new(TD, &[ONBOARDING, KYC_REVIEW, FRONTEND, PORTAL])
}

fn client(pki: &Pki, id: &str, gw: &Gateway) -> Client {
    Client::new(pki, Some(id), gw.port, false)
}

/// Creates a session as `caller`; returns its id.
async fn create(c: &Client, vendor_data: &str) -> String {
    let body = format!(r#"{{"workflow_id":"wf-1","vendor_data":"{vendor_data}"}}"#);
    let r = c
        .send(
            "POST",
            "/v3/session/",
            &[("content-type", "application/json")],
            &body,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["session_id"].as_str().unwrap().to_owned()
}

/// Everything a caller can observe of an answer, but the `date` header.
fn observable(r: &Reply) -> (u16, Vec<(String, String)>, bytes::Bytes) {
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| *k != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (r.status, headers, r.body.clone())
}

/// The same request for `id` and for an id nobody created: the answers must be identical.
async fn same_as_unknown(c: &Client, method: &str, path: &str, id: &str, body: &str) -> Reply {
    let rid = [
        ("x-request-id", "probe-1"),
        ("content-type", "application/json"),
    ];
    let theirs = c
        .send(method, &path.replace("{id}", id), &rid, body)
        .await
        .unwrap();
    let unknown = "5b0f8a53-6c6e-4f44-9d57-0a4f6c1e2d3b";
    let missing = c
        .send(method, &path.replace("{id}", unknown), &rid, body)
        .await
        .unwrap();
    assert_eq!(theirs.status, 404, "{method} {path}: {:?}", theirs.body);
    assert_eq!(observable(&theirs), observable(&missing), "{method} {path}");
    theirs
}

#[tokio::test]
async fn another_callers_session_cannot_be_told_from_a_missing_one() {
    within(async {
        let pki = pki();
        let mock = didit_mock().await;
        let gw = start(&pki, &mock, None).await;
        let a = client(&pki, FRONTEND, &gw);
        let b = client(&pki, PORTAL, &gw);
        let id = create(&a, "a-1").await;

        let before = mock.state().total_requests();
        let decision = "/v3/session/{id}/decision/";
        let r = same_as_unknown(&b, "GET", decision, &id, "").await;
        assert_eq!(r.json()["type"], "https://idgate.dev/problems/not-found");
        let update = "/v3/session/{id}/update-status/";
        same_as_unknown(&b, "PATCH", update, &id, r#"{"new_status":"Approved"}"#).await;
        same_as_unknown(&b, "DELETE", "/v3/session/{id}/delete/", &id, "").await;
        // A session the provider hands back to another caller (same vendor_data) is withheld.
        let r = b
            .send(
                "POST",
                "/v3/session/",
                &[("content-type", "application/json")],
                r#"{"workflow_id":"wf-1","vendor_data":"a-1"}"#,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 404, "{:?}", r.body);
        assert!(!String::from_utf8_lossy(&r.body).contains(&id));
        // Only that create reached the provider: nothing of the probes did.
        assert_eq!(mock.state().total_requests(), before + 1);

        // The owner reaches all of it.
        let r = a.get(&decision.replace("{id}", &id)).await.unwrap();
        assert_eq!(
            (r.status, r.json()["session_id"].as_str()),
            (200, Some(&*id))
        );
        let r = a
            .send(
                "PATCH",
                &update.replace("{id}", &id),
                &[("content-type", "application/json")],
                r#"{"new_status":"Approved"}"#,
            )
            .await
            .unwrap();
        assert_ne!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(mock.state().total_requests(), before + 3);
        let r = a
            .send("DELETE", &format!("/v3/session/{id}/delete/"), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 204);
        // Deleted: its record went with it, so the gateway answers without asking.
        let r = a.get(&decision.replace("{id}", &id)).await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(mock.state().total_requests(), before + 4);
    })
    .await;
}

#[tokio::test]
async fn a_sharing_group_owns_together_and_lists_are_filtered() {
    within(async {
        let pki = pki();
        let mock = didit_mock().await;
        let gw = start(&pki, &mock, None).await;
        let onboarding = client(&pki, ONBOARDING, &gw);
        let review = client(&pki, KYC_REVIEW, &gw);
        let frontend = client(&pki, FRONTEND, &gw);
        let portal = client(&pki, PORTAL, &gw);
        let k1 = create(&onboarding, "k-1").await;
        let k2 = create(&review, "k-2").await;
        let f1 = create(&frontend, "f-1").await;
        let p1 = create(&portal, "p-1").await;

        // The kyc group reads what either member created.
        for id in [&k1, &k2] {
            for c in [&onboarding, &review] {
                let r = c.get(&format!("/v3/session/{id}/decision/")).await.unwrap();
                assert_eq!(r.status, 200, "{:?}", r.body);
            }
            let r = frontend
                .get(&format!("/v3/session/{id}/decision/"))
                .await
                .unwrap();
            assert_eq!(r.status, 404);
        }

        let listed = |r: Reply| -> Vec<String> {
            assert_eq!(r.status, 200, "{:?}", r.body);
            let mut ids: Vec<String> = r.json()["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["session_id"].as_str().unwrap().to_owned())
                .collect();
            ids.sort();
            ids
        };
        let mut kyc = vec![k1.clone(), k2.clone()];
        kyc.sort();
        assert_eq!(listed(review.get("/v3/sessions/").await.unwrap()), kyc);
        assert_eq!(listed(frontend.get("/v3/sessions/").await.unwrap()), [f1]);
        // The caller's Accept-Encoding is not passed on: the gateway must read the list.
        let r = portal
            .send("GET", "/v3/sessions/", &[("accept-encoding", "gzip")], "")
            .await
            .unwrap();
        assert_eq!(
            mock.state()
                .last_request()
                .unwrap()
                .headers
                .get("accept-encoding"),
            None
        );
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert_eq!(listed(r), [p1]);
    })
    .await;
}

#[tokio::test]
async fn ownership_records_survive_a_restart_with_the_redb_backend() {
    within(async {
        let pki = pki();
        let mock = didit_mock().await;
        let dir = tempfile::tempdir().unwrap();
        let state = table([
            ("backend", "redb".into()),
            ("path", path_value(&dir.path().join("state.redb"))),
        ]);
        let gw = start(&pki, &mock, Some(state.clone())).await;
        let id = create(&client(&pki, FRONTEND, &gw), "r-1").await;
        drop(gw);

        let gw = start(&pki, &mock, Some(state)).await;
        let path = format!("/v3/session/{id}/decision/");
        let r = client(&pki, FRONTEND, &gw).get(&path).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = client(&pki, PORTAL, &gw).get(&path).await.unwrap();
        assert_eq!(r.status, 404);
    })
    .await;
}

/// With the state backend gone, an ownership check is refused (the route fails closed) and
/// counted where every state failure is, so that an operator sees why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_state_failure_counts_in_state_errors_total() {
    within(async {
        let Some(mut redis) = idgate_store::redis_testing::RedisServer::start() else {
            return;
        };
        let pki = pki();
        let mock = didit_mock().await;
        let state = table([("backend", "redis".into()), ("url", redis.url().into())]);
        let gw = start(&pki, &mock, Some(state)).await;
        let owner = client(&pki, FRONTEND, &gw);
        let id = create(&owner, "s-1").await;
        let path = format!("/v3/session/{id}/decision/");
        assert_eq!(owner.get(&path).await.unwrap().status, 200);

        redis.kill();
        // An id the gateway holds no cached record of: only the backend could say whose it is.
        let unknown = "/v3/session/5b0f8a53-6c6e-4f44-9d57-0a4f6c1e2d3b/decision/";
        let r = owner.get(unknown).await.unwrap();
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(
            r.json()["type"],
            "https://idgate.dev/problems/state-unavailable"
        );
        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics.contains("idgate_state_errors_total{operation=\"ownership\"} 1"),
            "{metrics}"
        );
        // Logged as the check is refused, read from the pipe by another thread: waited for.
        assert_eventually!(
            gw.output().contains("the state backend failed"),
            "the failure was not logged:\n{}",
            gw.output()
        );
    })
    .await;
}

/// The gateway keeps the ownership records it read from Redis for a few seconds, but such a
/// record answers its owner only: another caller's probe is asked of Redis as an id that
/// does not exist would be, so neither its answer nor its timing tells the two apart, even
/// while Redis is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_record_answers_its_owner_only_and_another_callers_probe_goes_to_the_backend() {
    within(async {
        let Some(mut redis) = idgate_store::redis_testing::RedisServer::start() else {
            return;
        };
        let pki = pki();
        let mock = didit_mock().await;
        let state = table([("backend", "redis".into()), ("url", redis.url().into())]);
        let gw = start(&pki, &mock, Some(state)).await;
        let (owner, other) = (client(&pki, FRONTEND, &gw), client(&pki, PORTAL, &gw));
        let id = create(&owner, "s-1").await;
        let decision = "/v3/session/{id}/decision/";
        same_as_unknown(&other, "GET", decision, &id, "").await;

        redis.kill();
        // The owner is answered from the record kept here...
        let r = owner.get(&decision.replace("{id}", &id)).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        // ...the other caller's probe needs the backend, as an unknown id does.
        let rid = [("x-request-id", "probe-2")];
        let theirs = other
            .send("GET", &decision.replace("{id}", &id), &rid, "")
            .await
            .unwrap();
        let missing = other
            .send(
                "GET",
                &decision.replace("{id}", "5b0f8a53-6c6e-4f44-9d57-0a4f6c1e2d3b"),
                &rid,
                "",
            )
            .await
            .unwrap();
        assert_eq!(theirs.status, 503, "{:?}", theirs.body);
        assert_eq!(observable(&theirs), observable(&missing));
    })
    .await;
}
