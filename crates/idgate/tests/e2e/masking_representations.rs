//! Response masking against an upstream that renders the same decision in whatever form
//! the caller asks for, as Django REST framework does (`Accept`, `?format=`): a masked
//! caller gets the JSON masked and every text rendering refused, never the personal data;
//! binary media still pass the default profile; a profile that names `text/csv` passes CSV
//! and nothing else that is text; an answer without a type passes only when its first
//! bytes are a type the profile passes; and `idgate check` names a bad `pass_types` entry.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::assert_eventually;
use crate::masking_answers::problem;
use crate::support::*;

const DOC: &str = "BAA000589";
const NAME: &str = "Carmen Espanola";
/// A PDF holding the person's data: binary media the default profile passes unread.
const PDF: &str = "%PDF-1.7\n%\u{e2}\u{e3}\n(BAA000589 Carmen Espanola)\n%%EOF\n";
/// A JPEG's first bytes.
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0";

/// An upstream that answers `/v3/session/s1/decision/` in the representation the caller
/// chooses, as a DRF service does, and other paths as their name says; it records the
/// `Accept` header each request came with.
struct Renderer {
    addr: SocketAddr,
    accepts: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Renderer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The decision in the form `format` (DRF's `?format=`) or else `accept` chooses: status,
/// `Content-Type`s and body.
fn decision(format: Option<&str>, accept: &str) -> (u16, Vec<&'static str>, Bytes) {
    let by_accept = [
        ("text/html", "api"),
        ("text/csv", "csv"),
        ("application/xml", "xml"),
        ("application/yaml", "yaml"),
    ]
    .into_iter()
    .find(|(t, _)| accept.split(',').any(|a| a.trim().starts_with(t)))
    .map(|(_, f)| f);
    let json = format!(
        r#"{{"session_id":"s1","status":"Approved","document_number":"{DOC}","full_name":"{NAME}"}}"#
    );
    let (content_type, body) = match format.or(by_accept) {
        Some("api") => (
            "text/html; charset=utf-8",
            format!(
                "<!DOCTYPE html><html><body><h1>Decision</h1><pre>{json}</pre>\
                 <table><tr><th>document_number</th><td>{DOC}</td></tr>\
                 <tr><th>full_name</th><td>{NAME}</td></tr></table></body></html>"
            ),
        ),
        Some("csv") => (
            "text/csv; charset=utf-8",
            format!("session_id,status,document_number,full_name\r\ns1,Approved,{DOC},{NAME}\r\n"),
        ),
        Some("xml") => (
            "application/xml; charset=utf-8",
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><root><session_id>s1</session_id>\
                 <document_number>{DOC}</document_number><full_name>{NAME}</full_name></root>"
            ),
        ),
        Some("yaml") => (
            "application/yaml",
            format!("session_id: s1\ndocument_number: {DOC}\nfull_name: {NAME}\n"),
        ),
        _ => ("application/json", json),
    };
    (200, vec![content_type], Bytes::from(body))
}

/// The answer to `/a/<name>`.
fn other(name: &str) -> (u16, Vec<&'static str>, Bytes) {
    let json = format!(r#"{{"document_number":"{DOC}","full_name":"{NAME}"}}"#);
    match name {
        "pdf" => (200, vec!["application/pdf"], Bytes::from(PDF)),
        "image" => (200, vec!["image/jpeg"], Bytes::from_static(JPEG)),
        "svg" => (
            200,
            vec!["image/svg+xml"],
            Bytes::from(format!("<svg><text>{DOC}</text></svg>")),
        ),
        "problem" => (404, vec!["application/problem+json"], Bytes::from(json)),
        "vnd" => (200, vec!["application/vnd.api+json"], Bytes::from(json)),
        "untyped-json" => (200, vec![], Bytes::from(json)),
        "untyped-html" => (
            200,
            vec![],
            Bytes::from(format!("<html><body>{DOC} {NAME}</body></html>")),
        ),
        "untyped-pdf" => (200, vec![], Bytes::from(PDF)),
        "two-types" => (
            200,
            vec!["image/jpeg", "text/html"],
            Bytes::from(format!("<html><body>{DOC}</body></html>")),
        ),
        _ => (404, vec!["application/json"], Bytes::from_static(b"{}")),
    }
}

impl Renderer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(Mutex::new(Vec::new()));
        let recorded = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let accepts = recorded.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    let accept = req
                        .headers()
                        .get("accept")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    accepts.lock().unwrap().push(accept.clone());
                    let path = req.uri().path().to_owned();
                    let format = req
                        .uri()
                        .query()
                        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("format=")))
                        .map(str::to_owned);
                    async move {
                        let _ = BodyExt::collect(req.into_body()).await;
                        let (status, types, body) = match path.strip_prefix("/a/") {
                            Some(name) => other(name),
                            None => decision(format.as_deref(), accept.as_deref().unwrap_or("")),
                        };
                        let mut b = http::Response::builder().status(status);
                        for t in types {
                            b = b.header("content-type", t);
                        }
                        Ok::<_, std::convert::Infallible>(b.body(Full::new(body)).unwrap())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            accepts,
            task,
        }
    }

    fn last_accept(&self) -> Option<String> {
        self.accepts.lock().unwrap().last().cloned().flatten()
    }
}

/// A profile masking the document number and the name; `extra` adds keys (`pass_types`).
fn profile(extra: &[(&str, toml::Value)]) -> toml::Value {
    let rule = |path: &str, action: &str| {
        toml::Value::Table(table([("path", path.into()), ("action", action.into())]))
    };
    let mut t = table([(
        "rules",
        toml::Value::Array(vec![
            rule("$..document_number", "redact"),
            rule("$..full_name", "redact"),
        ]),
    )]);
    for (k, v) in extra {
        t.insert((*k).to_owned(), v.clone());
    }
    toml::Value::Table(t)
}

/// Routes `/v3/{*rest}` and `/a/{name}`: `FRONTEND` gets the profile `exports`, which
/// names `text/csv`; every other caller `kyc`, with `non_json` and `pass_types` left at
/// their defaults.
async fn start(pki: &Pki, upstream: &Renderer) -> Gateway {
    let masking = table([
        ("default", "kyc".into()),
        (
            "by_caller",
            toml::Value::Array(vec![toml::Value::Table(table([
                ("callers", strings(&[FRONTEND])),
                ("profile", "exports".into()),
            ]))]),
        ),
    ]);
    let callers = [ONBOARDING, FRONTEND];
    let config = base_config(pki)
        .upstream(UpstreamSpec::new(
            "didit",
            &format!("http://{}", upstream.addr),
        ))
        .route(
            RouteSpec::new("v3", &["GET"], "/v3/{*rest}", "didit", &callers)
                .with("masking", masking.clone()),
        )
        .route(
            RouteSpec::new("a", &["GET"], "/a/{name}", "didit", &callers).with("masking", masking),
        )
        .section(
            "masking",
            table([(
                "profiles",
                toml::Value::Table(table([
                    ("kyc", profile(&[])),
                    (
                        "exports",
                        profile(&[("pass_types", strings(&["text/csv", "application/pdf"]))]),
                    ),
                ])),
            )]),
        );
    Gateway::start(&config, &[]).await
}

fn holds_personal_data(r: &Reply) -> bool {
    let text = String::from_utf8_lossy(&r.body);
    text.contains(DOC) || text.contains(NAME)
}

const DECISION: &str = "/v3/session/s1/decision/";

#[tokio::test]
async fn a_caller_asking_for_html_or_the_browsable_api_gets_response_blocked_never_the_personal_data()
 {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Renderer::start().await;
        let gw = start(&pki, &upstream).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        // The same call in JSON is masked.
        let r = c.get(DECISION).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["document_number"], "[redacted]");
        assert!(!holds_personal_data(&r), "{:?}", r.body);

        let html = [("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")];
        let asks: [(String, &[(&str, &str)]); 7] = [
            (DECISION.to_owned(), &html),
            (format!("{DECISION}?format=api"), &[]),
            (format!("{DECISION}?format=csv"), &[]),
            (format!("{DECISION}?format=xml"), &[]),
            (format!("{DECISION}?format=yaml"), &[]),
            (DECISION.to_owned(), &[("accept", "text/csv")]),
            (DECISION.to_owned(), &[("accept", "application/xml")]),
        ];
        for (path, headers) in asks {
            let r = c.send("GET", &path, headers, "").await.unwrap();
            assert!(
                !holds_personal_data(&r),
                "{path} {headers:?}: the personal data passed: {:?}",
                r.body
            );
            assert_eq!(
                (r.status, problem(&r).as_str()),
                (502, "response-blocked"),
                "{path} {headers:?}"
            );
        }
        // The caller's Accept goes upstream as it was: the answer, not the request, is
        // what is judged (a query parameter chooses the form as well).
        let r = c
            .send("GET", DECISION, &[("accept", "text/csv")], "")
            .await
            .unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(upstream.last_accept().as_deref(), Some("text/csv"));
        // The log says which profile refused which type, never a value.
        assert_eventually!(
            gw.output().contains(
                "masking profile kyc: the answer is text/html, which is not JSON and not a type pass_types names"
            ),
            "no log line says why:\n{}",
            gw.output()
        );
        let log = gw.output();
        assert!(!log.contains(DOC) && !log.contains(NAME), "{log}");
    })
    .await;
}

#[tokio::test]
async fn binary_media_still_pass_the_default_profile_and_json_variants_are_still_masked() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Renderer::start().await;
        let gw = start(&pki, &upstream).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, true);

        let r = c.get("/a/pdf").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.header("content-type"), Some("application/pdf"));
        assert_eq!(r.body, PDF);
        let r = c.get("/a/image").await.unwrap();
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some("image/jpeg"))
        );
        assert_eq!(r.body, JPEG);
        // An image type that is text (XML) is not covered by `image/*`.
        let r = c.get("/a/svg").await.unwrap();
        assert_eq!((r.status, problem(&r).as_str()), (502, "response-blocked"));
        assert!(!holds_personal_data(&r));

        for (name, status, content_type) in [
            ("problem", 404, "application/problem+json"),
            ("vnd", 200, "application/vnd.api+json"),
        ] {
            let r = c.get(&format!("/a/{name}")).await.unwrap();
            assert_eq!(r.status, status, "{name}: {:?}", r.body);
            assert_eq!(r.header("content-type"), Some(content_type), "{name}");
            assert_eq!(
                r.json(),
                serde_json::json!({"document_number": "[redacted]", "full_name": "[redacted]"}),
                "{name}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_profile_that_names_text_csv_passes_csv_and_no_other_text() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Renderer::start().await;
        let gw = start(&pki, &upstream).await;
        let c = Client::new(&pki, Some(FRONTEND), gw.port, false);

        let r = c.get(&format!("{DECISION}?format=csv")).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.header("content-type"), Some("text/csv; charset=utf-8"));
        assert!(String::from_utf8_lossy(&r.body).starts_with("session_id,status"));
        for format in ["api", "xml"] {
            let r = c.get(&format!("{DECISION}?format={format}")).await.unwrap();
            assert_eq!(
                (r.status, problem(&r).as_str()),
                (502, "response-blocked"),
                "{format}"
            );
            assert!(!holds_personal_data(&r), "{format}");
        }
        // The JSON is masked as for any other profile.
        let r = c.get(DECISION).await.unwrap();
        assert_eq!(r.json()["full_name"], "[redacted]");
    })
    .await;
}

#[tokio::test]
async fn an_answer_without_a_media_type_passes_only_when_its_first_bytes_are_a_type_the_profile_passes()
 {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Renderer::start().await;
        let gw = start(&pki, &upstream).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        for name in ["untyped-json", "untyped-html", "two-types"] {
            let r = c.get(&format!("/a/{name}")).await.unwrap();
            assert!(!holds_personal_data(&r), "{name}: {:?}", r.body);
            assert_eq!(
                (r.status, problem(&r).as_str()),
                (502, "response-blocked"),
                "{name}"
            );
        }
        let r = c.get("/a/untyped-pdf").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body, PDF);
        assert_eq!(
            r.header("content-length"),
            Some(PDF.len().to_string().as_str())
        );
    })
    .await;
}

#[test]
fn idgate_check_names_a_bad_pass_types_entry_by_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default_pki();
    let masking = r#"
[profiles.wide]
pass_types = ["image/*", "*/*", "text/*", "application/problem+json"]
rules = [{ path = "$..full_name", action = "redact" }]
[profiles.strict]
non_json = "block"
pass_types = ["application/pdf"]
rules = [{ path = "$..full_name", action = "redact" }]
"#;
    let config = base_config(&pki)
        .upstream(UpstreamSpec::new("p", "https://provider.test"))
        .route(RouteSpec::new("r", &["GET"], "/a", "p", &[ONBOARDING]).with("masking", "wide"))
        .section("masking", toml::from_str::<toml::Table>(masking).unwrap());
    let file = dir.path().join("idgate.toml");
    std::fs::write(&file, config.to_toml()).unwrap();
    let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    let f = file.display();
    for line in [
        format!("{f}: masking.profiles.wide.pass_types[1]: \"*/*\": name the types"),
        format!(
            "{f}: masking.profiles.wide.pass_types[2]: \"text/*\": a text type passes only when named"
        ),
        format!(
            "{f}: masking.profiles.wide.pass_types[3]: \"application/problem+json\": JSON is always masked"
        ),
        format!("{f}: masking.profiles.strict.pass_types: is for non_json = \"pass\""),
    ] {
        assert!(err.contains(&line), "expected {line:?} in:\n{err}");
    }
    assert!(!err.contains("pass_types[0]"), "{err}");
}
