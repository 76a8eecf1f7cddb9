//! Response masking against an upstream that answers each path in a chosen way: what
//! passes untouched (not JSON, streamed), what is refused rather than passed unmasked
//! (compressed, unparsable, too large, partial, a `block` rule, not JSON on a blocking
//! profile), error answers masked like any other, the headers that describe the upstream's
//! bytes removed; and `idgate check` naming every masking mistake by its key.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::assert_eventually;
use crate::support::*;

const DOC: &str = "BAA000589";
/// More than the 1 MiB a masked answer may have.
const BIG: usize = 2 << 20;

/// A plain-HTTP upstream answering `/a/<name>` as `answer(name)` says; it records the
/// request headers it received.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Status, headers and body of the answer to `/a/<name>`.
fn answer(name: &str) -> (u16, Vec<(&'static str, &'static str)>, Bytes) {
    let json = vec![("content-type", "application/json")];
    match name {
        "pdf" => (
            200,
            vec![("content-type", "application/pdf"), ("etag", "\"pdf-1\"")],
            Bytes::from(format!("%PDF-1.7 {DOC} {}", "x".repeat(BIG))),
        ),
        "gzip" => (
            200,
            vec![
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            Bytes::from_static(b"\x1f\x8b\x08\x00not really gzip"),
        ),
        "broken" => (
            200,
            json,
            Bytes::from(format!(r#"{{"document_number":"{DOC}""#)),
        ),
        "latin1" => (
            200,
            vec![("content-type", "application/json; charset=iso-8859-1")],
            Bytes::from(format!(r#"{{"document_number":"{DOC}"}}"#)),
        ),
        "big" => (
            200,
            json,
            Bytes::from(format!(
                r#"{{"document_number":"{DOC}","pad":"{}"}}"#,
                "x".repeat(BIG)
            )),
        ),
        "error" => (
            422,
            vec![("content-type", "application/problem+json")],
            Bytes::from(format!(
                r#"{{"status":"Declined","document_number":"{DOC}"}}"#
            )),
        ),
        "headers" => (
            200,
            vec![
                ("content-type", "application/json"),
                ("etag", "\"v1\""),
                ("content-md5", "Q2hlY2sgSW50ZWdyaXR5IQ=="),
                ("accept-ranges", "bytes"),
                ("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT"),
            ],
            Bytes::from(format!(
                r#"{{"status": "Approved",  "document_number": "{DOC}"}}"#
            )),
        ),
        "untouched" => (
            200,
            json,
            Bytes::from_static(b"{ \"status\" : \"Approved\", \"zz\": 1, \"aa\": [1.50] }"),
        ),
        "ssn" => (
            200,
            json,
            Bytes::from_static(br#"{"person":{"ssn":"123-45-6789"},"status":"Approved"}"#),
        ),
        "empty" => (200, json, Bytes::new()),
        "text-json" => (
            200,
            vec![("content-type", "text/json; charset=utf-8")],
            Bytes::from(format!(r#"{{"document_number":"{DOC}"}}"#)),
        ),
        "partial" => (
            206,
            vec![
                ("content-type", "application/json"),
                ("content-range", "bytes 0-9/40"),
            ],
            Bytes::from_static(br#"{"document"#),
        ),
        _ => (404, json, Bytes::from_static(b"{}")),
    }
}

impl Scripted {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = recorded.clone();
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    seen.lock().unwrap().push(req.headers().clone());
                    let name = req.uri().path().trim_start_matches("/a/").to_owned();
                    async move {
                        let _ = BodyExt::collect(req.into_body()).await;
                        let (status, headers, body) = answer(&name);
                        let mut b = http::Response::builder().status(status);
                        for (k, v) in headers {
                            b = b.header(k, v);
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
        Self { addr, seen, task }
    }

    fn last_headers(&self) -> http::HeaderMap {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

fn profile(non_json: &str) -> toml::Value {
    let rule = |path: &str, action: &str| {
        toml::Value::Table(table([("path", path.into()), ("action", action.into())]))
    };
    let mut mask = table([
        ("path", "$..document_number".into()),
        ("action", "mask".into()),
    ]);
    mask.insert("keep".into(), 3.into());
    toml::Value::Table(table([
        ("non_json", non_json.into()),
        (
            "rules",
            toml::Value::Array(vec![toml::Value::Table(mask), rule("$..ssn", "block")]),
        ),
    ]))
}

/// The route `/a/{name}`: `FRONTEND` gets the profile refusing what is not JSON, every
/// other caller the one passing it.
async fn start(pki: &Pki, upstream: &Scripted) -> Gateway {
    let masking = table([
        ("default", "lenient".into()),
        (
            "by_caller",
            toml::Value::Array(vec![toml::Value::Table(table([
                ("callers", strings(&[FRONTEND])),
                ("profile", "strict".into()),
            ]))]),
        ),
    ]);
    let config = base_config(pki)
        .upstream(UpstreamSpec::new(
            "scripted",
            &format!("http://{}", upstream.addr),
        ))
        .route(
            RouteSpec::new(
                "a",
                &["GET", "HEAD"],
                "/a/{name}",
                "scripted",
                &[ONBOARDING, FRONTEND],
            )
            .with("masking", masking),
        )
        .section(
            "masking",
            table([(
                "profiles",
                toml::Value::Table(table([
                    ("lenient", profile("pass")),
                    ("strict", profile("block")),
                ])),
            )]),
        );
    Gateway::start(&config, &[]).await
}

fn problem(r: &Reply) -> String {
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{:?}",
        r.body
    );
    r.json()["type"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://idgate.dev/problems/")
        .to_owned()
}

#[tokio::test]
async fn answers_that_cannot_be_masked_are_refused_never_passed() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Scripted::start().await;
        let gw = start(&pki, &upstream).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        for (name, status, slug) in [
            ("gzip", 502, "unreadable-response"),
            ("broken", 502, "unreadable-response"),
            ("latin1", 502, "unreadable-response"),
            ("big", 502, "unreadable-response"),
            ("partial", 502, "unreadable-response"),
            ("ssn", 502, "response-blocked"),
        ] {
            let r = c.get(&format!("/a/{name}")).await.unwrap();
            assert_eq!(r.status, status, "{name}: {:?}", r.body);
            assert_eq!(problem(&r), slug, "{name}");
            let text = String::from_utf8_lossy(&r.body);
            assert!(
                !text.contains(DOC) && !text.contains("123-45"),
                "{name}: {text}"
            );
        }
        // The log names the rule, never the value (its lines arrive a moment later).
        assert_eventually!(
            gw.output().contains("rule 1 ($..ssn) blocks the answer"),
            "no log line names the blocking rule:\n{}",
            gw.output()
        );
        assert!(!gw.output().contains("123-45-6789"));
    })
    .await;
}

#[tokio::test]
async fn error_answers_are_masked_and_stale_headers_go() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Scripted::start().await;
        let gw = start(&pki, &upstream).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        let r = c.get("/a/error").await.unwrap();
        assert_eq!(r.status, 422);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(
            r.json(),
            serde_json::json!({"status": "Declined", "document_number": "******589"})
        );

        // The caller's Range, If-Range and Accept-Encoding do not reach the upstream, nor
        // the conditional headers whose 304 or 412 would confirm a guess of a masked value.
        let r = c
            .send(
                "GET",
                "/a/headers",
                &[
                    ("range", "bytes=0-3"),
                    ("if-range", "\"v1\""),
                    ("accept-encoding", "gzip"),
                    ("if-none-match", "W/\"guess\""),
                    ("if-match", "\"guess\""),
                    ("if-modified-since", "Sat, 05 Dec 2026 00:00:00 GMT"),
                    ("if-unmodified-since", "Sat, 05 Dec 2026 00:00:00 GMT"),
                ],
                "",
            )
            .await
            .unwrap();
        let seen = upstream.last_headers();
        for h in [
            "range",
            "if-range",
            "accept-encoding",
            "if-none-match",
            "if-match",
            "if-modified-since",
            "if-unmodified-since",
        ] {
            assert!(!seen.contains_key(h), "{h} reached the upstream");
        }
        assert_eq!(r.status, 200);
        // The upstream's text, its member order and whitespace kept, with only the masked
        // value changed.
        assert_eq!(
            r.body,
            r#"{"status": "Approved",  "document_number": "******589"}"#
        );
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        for h in ["etag", "content-md5", "accept-ranges"] {
            assert_eq!(r.header(h), None, "{h}");
        }
        assert_eq!(
            r.header("last-modified"),
            Some("Wed, 01 Jan 2025 00:00:00 GMT")
        );

        // HEAD: no body, and no length of the unmasked one.
        let r = c.send("HEAD", "/a/headers", &[], "").await.unwrap();
        assert_eq!((r.status, r.header("content-length")), (200, None));

        // Nothing to mask: the upstream's bytes as they were; an empty body stays empty.
        let r = c.get("/a/untouched").await.unwrap();
        assert_eq!(
            r.body,
            Bytes::from_static(b"{ \"status\" : \"Approved\", \"zz\": 1, \"aa\": [1.50] }")
        );
        let r = c.get("/a/empty").await.unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0));
        // JSON under another media type is masked too.
        let r = c.get("/a/text-json").await.unwrap();
        assert_eq!(r.body, r#"{"document_number":"******589"}"#);
    })
    .await;
}

#[tokio::test]
async fn an_answer_that_is_not_json_streams_through_unless_the_profile_blocks_it() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Scripted::start().await;
        let gw = start(&pki, &upstream).await;
        // Larger than any masked answer may be: it is streamed, not read.
        let (_, _, expected) = answer("pdf");
        let r = Client::new(&pki, Some(ONBOARDING), gw.port, false)
            .get("/a/pdf")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/pdf"));
        assert_eq!(r.body, expected);
        let r = Client::new(&pki, Some(FRONTEND), gw.port, true)
            .get("/a/pdf")
            .await
            .unwrap();
        assert_eq!((r.status, problem(&r).as_str()), (502, "response-blocked"));
        assert!(!String::from_utf8_lossy(&r.body).contains(DOC));
    })
    .await;
}

/// A configuration whose route `r` applies `default`, with `[masking]` as written.
fn check_config(pki: &Pki, default: &str, masking: &str) -> GatewayConfig {
    base_config(pki)
        .upstream(UpstreamSpec::new("p", "https://provider.test"))
        .route(
            RouteSpec::new("r", &["GET"], "/a", "p", &[ONBOARDING])
                .with("masking", table([("default", default.into())])),
        )
        .section("masking", toml::from_str::<toml::Table>(masking).unwrap())
}

#[test]
fn idgate_check_names_every_masking_mistake_by_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::default_pki();
    write_private(&dir.path().join("short-key"), b"only-16-bytes!!!");
    let short = r#"
[profiles.short]
pseudonym_key = "file:short-key"
rules = [{ path = "$.vendor_data", action = "pseudonymize" }]
"#;
    let bad = r#"
[profiles.bad]
pseudonym_key = "env:IDGATE_TEST_NO_SUCH_KEY"
rules = [
  { path = "$..", action = "drop" },
  { path = "$.a", action = "mask" },
  { path = "$.b", action = "pseudonymise" },
]
"#;
    let file = dir.path().join("idgate.toml");
    let f = file.display().to_string();
    let check = |config: GatewayConfig| {
        std::fs::write(&file, config.to_toml()).unwrap();
        let (code, out, err) = idgate_cli(&["check", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{out}{err}");
        err
    };
    let err = check(check_config(&pki, "kyc-maximal", &format!("{short}{bad}")));
    for line in [
        format!("{f}: masking.profiles.bad.rules[0].path: \"$..\": '.' at byte 1 must be followed"),
        format!("{f}: masking.profiles.bad.rules[1].keep: missing"),
        format!("{f}: masking.profiles.bad.rules[2].action: \"pseudonymise\" is not an action"),
        format!(
            "{f}: masking.profiles.bad.pseudonym_key: environment variable IDGATE_TEST_NO_SUCH_KEY is not set"
        ),
        format!("{f}: routes[0].masking.default: no masking profile is named \"kyc-maximal\""),
    ] {
        assert!(err.contains(&line), "expected {line:?} in:\n{err}");
    }
    // Once the file itself is valid, a key that cannot be used is named too.
    let err = check(check_config(&pki, "short", short));
    assert!(
        err.contains(&format!(
            "{f}: masking.profiles.short.pseudonym_key: masking profile short: pseudonym key: file:"
        )) && err.contains("16 bytes is too short"),
        "{err}"
    );
    assert!(!err.contains("only-16-bytes"), "{err}");
}
