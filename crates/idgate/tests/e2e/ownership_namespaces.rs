//! Ownership namespaces: an in-house upstream numbers each kind of object from 1, and two
//! upstreams may number theirs alike; an object created through one namespace's routes
//! owns nothing on another's. Also what `idgate check` says of a namespace it refuses, and
//! of two kinds of objects recorded in one namespace.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use crate::support::*;

const ATTACKER: &str = "spiffe://example.org/ns/web/sa/portal";
const VICTIM: &str = FRONTEND;
const WEB: &str = "spiffe://example.org/ns/web/*";

/// An in-house service over plain HTTP that numbers the objects of each collection from 1:
/// `POST /…/{collection}` stores the JSON body and answers `201 {"id": N}`;
/// `GET /…/{collection}/{N}` answers the object. Counts every request.
struct InHouse {
    url: String,
    state: Arc<Mutex<InHouseState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct InHouseState {
    collections: HashMap<String, Vec<Value>>,
    requests: usize,
}

impl Drop for InHouse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl InHouse {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(InHouseState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { url, state, task }
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

async fn answer(
    state: &Mutex<InHouseState>,
    req: http::Request<Incoming>,
) -> http::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let segments: Vec<&str> = parts
        .uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let mut state = state.lock().unwrap();
    state.requests += 1;
    let (status, doc) = match (parts.method.as_str(), segments.as_slice()) {
        ("POST", [.., collection]) => {
            let data: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let objects = state
                .collections
                .entry((*collection).to_owned())
                .or_default();
            objects.push(data);
            (201, json!({ "id": objects.len() }))
        }
        ("GET", [.., collection, id]) => {
            let found = id.parse::<usize>().ok().and_then(|n| {
                let objects = state.collections.get(*collection)?;
                objects
                    .get(n.checked_sub(1)?)
                    .cloned()
                    .map(|data| (n, data))
            });
            match found {
                Some((n, data)) => (200, json!({ "id": n, "data": data })),
                None => (404, json!({ "detail": "no such object" })),
            }
        }
        _ => (405, json!({})),
    };
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(doc.to_string())))
        .unwrap()
}

fn pki() -> Pki {
    Pki::new(TD, &[ONBOARDING, VICTIM, ATTACKER])
}

/// `POST path` with a JSON body; the reply.
async fn post(c: &Client, path: &str, body: &Value) -> Reply {
    c.send(
        "POST",
        path,
        &[("content-type", "application/json")],
        &body.to_string(),
    )
    .await
    .unwrap()
}

/// Documents and cases at one in-house upstream that numbers each from 1, every route
/// allowed to `ns/web/*`: the attacker and the victim are both there. `separate` gives
/// each kind its own `ownership_namespace`.
fn docs_and_cases(pki: &Pki, url: &str, separate: bool) -> GatewayConfig {
    let route = |name: &str, method: &str, path: &str, kind: &str| {
        let r = RouteSpec::new(name, &[method], path, "inhouse", &[WEB]);
        if separate {
            r.with("ownership_namespace", kind)
        } else {
            r
        }
    };
    base_config(pki)
        .upstream(UpstreamSpec::new("inhouse", url))
        .route(route("create-doc", "POST", "/docs", "docs").with("owns", "$.id"))
        .route(route("create-case", "POST", "/cases", "cases").with("owns", "$.id"))
        .route(route("case", "GET", "/cases/{case_id}", "cases").with("owner_param", "case_id"))
        .route(route("doc", "GET", "/docs/{doc_id}", "docs").with("owner_param", "doc_id"))
}

#[tokio::test]
async fn an_id_created_as_one_kind_of_object_owns_nothing_of_another_kind_with_that_id() {
    within(async {
        let pki = pki();
        let upstream = InHouse::start().await;
        let gw = Gateway::start(&docs_and_cases(&pki, &upstream.url, true), &[]).await;
        let attacker = Client::new(&pki, Some(ATTACKER), gw.port, false);
        let victim = Client::new(&pki, Some(VICTIM), gw.port, false);

        // 1. The attacker creates a document: id 1.
        let r = post(&attacker, "/docs", &json!({"title": "bait"})).await;
        assert_eq!(
            (r.status, r.json()),
            (201, json!({"id": 1})),
            "{:?}",
            r.body
        );
        // 2. The victim creates a case with personal data: id 1 too, and it is hers.
        let personal = json!({"name": "Jane Roe", "iban": "DE89370400440532013000"});
        let r = post(&victim, "/cases", &personal).await;
        assert_eq!(
            (r.status, r.json()),
            (201, json!({"id": 1})),
            "{:?}",
            r.body
        );
        // 3. The attacker asks for case 1: the gateway answers 404 and asks no one.
        let before = upstream.requests();
        let r = attacker.get("/cases/1").await.unwrap();
        assert_eq!(r.status, 404, "{:?}", r.body);
        assert_eq!(r.json()["type"], "https://idgate.dev/problems/not-found");
        assert!(!String::from_utf8_lossy(&r.body).contains("Jane"));
        let r = victim.get("/docs/1").await.unwrap();
        assert_eq!(r.status, 404, "{:?}", r.body);
        assert_eq!(upstream.requests(), before);

        // Each reaches their own.
        let r = victim.get("/cases/1").await.unwrap();
        assert_eq!((r.status, &r.json()["data"]), (200, &personal));
        let r = attacker.get("/docs/1").await.unwrap();
        assert_eq!(
            (r.status, &r.json()["data"]["title"]),
            (200, &json!("bait"))
        );
    })
    .await;
}

#[tokio::test]
async fn one_id_at_two_upstreams_is_two_objects_with_two_owners() {
    within(async {
        let pki = pki();
        let (eu, us) = (InHouse::start().await, InHouse::start().await);
        // No ownership_namespace: each upstream's routes are in its own, by its name.
        let route = |name: &str, method: &str, path: &str, upstream: &str| {
            RouteSpec::new(name, &[method], path, upstream, &[WEB])
        };
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("eu", &eu.url))
            .upstream(UpstreamSpec::new("us", &us.url))
            .route(route("create-eu", "POST", "/eu/cases", "eu").with("owns", "$.id"))
            .route(route("create-us", "POST", "/us/cases", "us").with("owns", "$.id"))
            .route(route("eu", "GET", "/eu/cases/{id}", "eu").with("owner_param", "id"))
            .route(route("us", "GET", "/us/cases/{id}", "us").with("owner_param", "id"));
        let gw = Gateway::start(&config, &[]).await;
        let attacker = Client::new(&pki, Some(ATTACKER), gw.port, false);
        let victim = Client::new(&pki, Some(VICTIM), gw.port, false);

        let r = post(&attacker, "/eu/cases", &json!({"name": "bait"})).await;
        assert_eq!(
            (r.status, r.json()),
            (201, json!({"id": 1})),
            "{:?}",
            r.body
        );
        let r = post(&victim, "/us/cases", &json!({"name": "Jane Roe"})).await;
        assert_eq!(
            (r.status, r.json()),
            (201, json!({"id": 1})),
            "{:?}",
            r.body
        );

        let before = us.requests();
        assert_eq!(attacker.get("/us/cases/1").await.unwrap().status, 404);
        assert_eq!(us.requests(), before);
        assert_eq!(victim.get("/eu/cases/1").await.unwrap().status, 404);
        let r = victim.get("/us/cases/1").await.unwrap();
        assert_eq!(
            (r.status, &r.json()["data"]["name"]),
            (200, &json!("Jane Roe"))
        );
        let r = attacker.get("/eu/cases/1").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    })
    .await;
}

/// Records as a version without namespaces kept them, under the id alone and naming the
/// owner alone, answer no one after the upgrade: not the id they were made for, and not
/// the namespace an id with a `:` reads like.
#[tokio::test]
async fn a_record_kept_before_namespaces_owns_nothing_after_the_upgrade() {
    use idgate_store::{ObjectId, Owner, Ownership, RedbStore};
    within(async {
        let pki = pki();
        let upstream = InHouse::start().await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state.redb");
        {
            let store = RedbStore::open(&file, Duration::from_secs(5)).unwrap();
            let attacker = Owner::new(ATTACKER).unwrap();
            for id in ["1", "cases:1"] {
                let id = ObjectId::new(id).unwrap();
                let day = Duration::from_secs(24 * 3600);
                store
                    .put(&id, &attacker, day, SystemTime::now())
                    .await
                    .unwrap();
            }
        }
        let state = table([("backend", "redb".into()), ("path", path_value(&file))]);
        let config = docs_and_cases(&pki, &upstream.url, true).section("state", state);
        let gw = Gateway::start(&config, &[]).await;
        let attacker = Client::new(&pki, Some(ATTACKER), gw.port, false);
        let victim = Client::new(&pki, Some(VICTIM), gw.port, false);
        // Case 1 is made upstream; the record of before that reads like it keeps it from
        // being recorded until it expires: withheld, as an object another owns.
        let r = post(&victim, "/cases", &json!({"name": "Jane Roe"})).await;
        assert_eq!(r.status, 404, "{:?}", r.body);

        // Neither record of before lets its owner through: the gateway asks no one.
        let before = upstream.requests();
        for path in ["/cases/1", "/docs/1"] {
            let r = attacker.get(path).await.unwrap();
            assert_eq!(r.status, 404, "{path}: {:?}", r.body);
        }
        assert_eq!(upstream.requests(), before);
        // Created again, a document is recorded in its namespace and reached.
        let r = post(&attacker, "/docs", &json!({"title": "again"})).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let r = attacker.get("/docs/1").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    })
    .await;
}

/// Writes `config` into a fresh directory and runs `idgate check` on it: (exit code,
/// stderr, the file's path).
fn check(config: &GatewayConfig) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let path = path.display().to_string();
    let (code, _, err) = idgate_cli(&["check", "--config", &path]);
    (code, err, path)
}

#[test]
fn a_namespace_that_could_blur_a_records_key_is_refused_at_load_by_file_and_key() {
    let pki = pki();
    let config = base_config(&pki)
        .upstream(UpstreamSpec::new("inhouse", "http://127.0.0.1:9"))
        .route(
            RouteSpec::new("create-case", &["POST"], "/cases", "inhouse", &[WEB])
                .with("owns", "$.id")
                .with("ownership_namespace", "cases:v1"),
        )
        .route(
            RouteSpec::new("case", &["GET"], "/cases/{id}", "inhouse", &[WEB])
                .with("owner_param", "id")
                .with("ownership_namespace", ""),
        );
    let (code, err, file) = check(&config);
    assert_ne!(code, 0, "{err}");
    for (key, reason) in [
        (
            "routes[0].ownership_namespace",
            "\"cases:v1\" may hold only ASCII letters, digits, '-', '_' and '.'",
        ),
        ("routes[1].ownership_namespace", "\"\" is empty"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&format!("{file}: {key}: {reason}"))),
            "no {key}: {reason} in:\n{err}"
        );
    }
}

#[test]
fn two_kinds_of_objects_in_one_upstreams_namespace_are_warned_about_by_check() {
    let pki = pki();
    let (code, err, file) = check(&docs_and_cases(&pki, "http://127.0.0.1:9", false));
    assert_eq!(code, 0, "{err}");
    let warning = err
        .lines()
        .find(|l| l.starts_with(&format!("warning: {file}: routes[1] \"create-case\"")))
        .unwrap_or_else(|| panic!("no warning about the shared namespace:\n{err}"));
    assert!(
        warning.contains("routes[0] \"create-doc\"")
            && warning.contains("\"inhouse\"")
            && warning.contains("ownership_namespace"),
        "{warning}"
    );
    let (code, err, _) = check(&docs_and_cases(&pki, "http://127.0.0.1:9", true));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("namespace"), "{err}");
}
