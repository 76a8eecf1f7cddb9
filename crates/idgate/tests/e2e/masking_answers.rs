//! Response masking against an upstream that answers each path in a chosen way: what
//! passes untouched (not JSON, streamed; no body, whatever the profile), what is refused
//! rather than passed unmasked (compressed, unparsable, too large, partial, a `block` rule,
//! not JSON on a blocking profile, more values to pseudonymize than one answer may have,
//! a body framed two ways), error answers masked like any other, the headers that describe
//! the upstream's bytes removed, answers to `HEAD`, `204` and `304` empty whatever an HTTP/2
//! upstream sends after their head; and `idgate check` naming every masking mistake by its
//! key.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::assert_eventually;
use crate::support::*;
use crate::upstream_h1::{read_body, read_head};

const DOC: &str = "BAA000589";
/// More than the 1 MiB a masked answer may have.
const BIG: usize = 2 << 20;
/// The profiles' pseudonym key.
const KEY_ENV: &str = "TEST_MASKING_ANSWERS_KEY";
const KEY: &str = "masking-answers-key-5e0c2a7b9d1f3e4a6c8b";

/// The most distinct values one answer may have pseudonymized, as docs/masking.md says.
const MAX_PSEUDONYMS: usize = 1024;

/// A list of `n` records, each with a value of its own to pseudonymize.
fn records(n: usize) -> Bytes {
    let items: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"vendor_data":"user-{i}","status":"Approved"}}"#))
        .collect();
    Bytes::from(format!(r#"{{"results":[{}]}}"#, items.join(",")))
}

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
        "json-then-html" => (
            200,
            vec![
                ("content-type", "application/json"),
                ("content-type", "text/html"),
            ],
            Bytes::from(format!(r#"{{"document_number":"{DOC}"}}"#)),
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
        "no-content" => (204, vec![], Bytes::new()),
        "created" => (201, vec![], Bytes::new()),
        "records-at-the-bound" => (200, json, records(MAX_PSEUDONYMS)),
        "records-past-the-bound" => (200, json, records(MAX_PSEUDONYMS + 1)),
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
        ("pseudonym_key", format!("env:{KEY_ENV}").into()),
        (
            "rules",
            toml::Value::Array(vec![
                toml::Value::Table(mask),
                rule("$..ssn", "block"),
                rule("$..vendor_data", "pseudonymize"),
            ]),
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
    Gateway::start(&config, &[(KEY_ENV, KEY)]).await
}

/// The slug of a gateway-made problem answer (`response-blocked`), its media type checked.
pub(crate) fn problem(r: &Reply) -> String {
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
            // Masked JSON under a second type a reader could go by.
            ("json-then-html", 502, "response-blocked"),
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

#[tokio::test]
async fn answers_without_a_body_pass_a_profile_that_blocks_what_is_not_json() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Scripted::start().await;
        let gw = start(&pki, &upstream).await;
        let strict = Client::new(&pki, Some(FRONTEND), gw.port, false);
        for (name, status) in [("no-content", 204), ("created", 201)] {
            let r = strict.get(&format!("/a/{name}")).await.unwrap();
            assert_eq!(
                (r.status, r.body.len()),
                (status, 0),
                "{name}: {:?}",
                r.body
            );
            assert_eq!(r.header("content-type"), None, "{name}");
        }
        // HEAD has no body either, and no length of the one GET would refuse.
        let r = strict.send("HEAD", "/a/pdf", &[], "").await.unwrap();
        assert_eq!((r.status, r.header("content-length")), (200, None));
        // Nor do the headers of a compressed GET answer, which HEAD repeats.
        let r = strict.send("HEAD", "/a/gzip", &[], "").await.unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0), "{:?}", r.body);
        // What has a body and is not JSON is still refused.
        let r = strict.get("/a/pdf").await.unwrap();
        assert_eq!((r.status, problem(&r).as_str()), (502, "response-blocked"));
    })
    .await;
}

#[tokio::test]
async fn an_answer_with_more_distinct_values_to_pseudonymize_than_the_bound_is_refused() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Scripted::start().await;
        let gw = start(&pki, &upstream).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let r = c.get("/a/records-at-the-bound").await.unwrap();
        assert_eq!(r.status, 200, "{}", gw.output());
        let results = r.json()["results"].as_array().cloned().unwrap();
        assert_eq!(results.len(), MAX_PSEUDONYMS);
        assert!(
            results
                .iter()
                .all(|item| item["vendor_data"].as_str().unwrap().starts_with("ps_"))
        );
        let r = c.get("/a/records-past-the-bound").await.unwrap();
        assert_eq!(
            (r.status, problem(&r).as_str()),
            (502, "unreadable-response")
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("user-"));
        assert_eventually!(
            gw.output()
                .contains("1025 distinct values to pseudonymize, more than the 1024"),
            "no log line says why:\n{}",
            gw.output()
        );
    })
    .await;
}

/// An HTTP/1.1 upstream that answers every request with `answer`, byte for byte.
struct RawAnswer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawAnswer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawAnswer {
    async fn start(answer: Vec<u8>) -> Self {
        use tokio::io::AsyncWriteExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(mut req) = read_head(&mut tcp, &mut buf).await {
                        if read_body(&mut tcp, &mut buf, &mut req).await.is_none()
                            || tcp.write_all(&answer).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, task }
    }
}

/// Every byte of every frame the gateway sends on an HTTP/2 connection carrying one `GET`
/// of `path`, until that stream ends (or is reset, or the connection closes), read off the
/// wire: what a caller receives, whether or not its own HTTP/2 stack would accept it.
async fn raw_h2_get(c: &Client, path: &str) -> Vec<u8> {
    raw_h2(c, "GET", path)
        .await
        .into_iter()
        .flat_map(|f| f.payload)
        .collect()
}

/// One frame as it came off the wire.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Every frame the gateway sends on an HTTP/2 connection carrying one request of `method`
/// (without a body) for `path`, until that stream ends (or is reset, or the connection
/// closes).
async fn raw_h2(c: &Client, method: &str, path: &str) -> Vec<Frame> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    assert!(c.h2);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", c.port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(c.config.clone())
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    // HPACK without Huffman: `:method GET` and `:scheme https` from the static table,
    // another method, the path and the authority as literals with an indexed name.
    let mut block = vec![];
    if method == "GET" {
        block.push(0x82);
    } else {
        block.extend([2, method.len() as u8]);
        block.extend(method.as_bytes());
    }
    block.push(0x87);
    for (index, value) in [(4u8, path), (1, "localhost")] {
        block.extend([index, value.len() as u8]);
        block.extend(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x1 | 0x4, 1, &block));
    tls.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let mut head = [0u8; 9];
        if tls.read_exact(&mut head).await.is_err() {
            return seen;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if tls.read_exact(&mut payload).await.is_err() {
            return seen;
        }
        seen.push(Frame {
            kind,
            flags,
            stream,
            payload,
        });
        match kind {
            // SETTINGS: acknowledged, so the gateway has no reason to wait.
            0x4 if flags & 0x1 == 0 => tls.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(),
            // DATA or HEADERS ending the stream, RST_STREAM, GOAWAY.
            0x0 | 0x1 if stream == 1 && flags & 0x1 != 0 => return seen,
            0x3 if stream == 1 => return seen,
            0x7 => return seen,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_json_answer_framed_both_ways_never_reaches_an_http2_caller_unmasked() {
    within(async {
        let json = format!(r#"{{"document_number":"{DOC}"}}"#);
        // `Content-Length: 0`, and the body chunked: a reader that believes the header
        // finds nothing to mask; hyper's client reads the chunks.
        let both = |first: &str, second: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{first}\r\n{second}\r\n\r\n\
                 {:x}\r\n{json}\r\n0\r\n\r\n",
                json.len()
            )
            .into_bytes()
        };
        let answers = [
            both("content-length: 0", "transfer-encoding: chunked"),
            both("transfer-encoding: chunked", "content-length: 0"),
        ];
        let pki = Pki::default_pki();
        let mut config = base_config(&pki).section(
            "masking",
            table([(
                "profiles",
                toml::Value::Table(table([("lenient", profile("pass"))])),
            )]),
        );
        let mut upstreams = Vec::new();
        for (i, answer) in answers.iter().enumerate() {
            let upstream = RawAnswer::start(answer.clone()).await;
            for client in ["native", "hyper"] {
                let name = format!("{client}{i}");
                config = config
                    .upstream(
                        UpstreamSpec::new(&name, &format!("http://127.0.0.1:{}", upstream.port))
                            .with("client", client),
                    )
                    .route(
                        RouteSpec::new(&name, &["GET"], &format!("/{name}"), &name, &[ONBOARDING])
                            .with("masking", "lenient"),
                    );
            }
            upstreams.push(upstream);
        }
        let gw = Gateway::start(&config, &[(KEY_ENV, KEY)]).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        for i in 0..answers.len() {
            for client in ["native", "hyper"] {
                let wire = raw_h2_get(&c, &format!("/{client}{i}")).await;
                let text = String::from_utf8_lossy(&wire);
                assert!(!text.contains(DOC), "{client}{i}: the value passed: {text}");
                // Refused as the own client refuses it: a bad upstream answer.
                let r = c.get(&format!("/{client}{i}")).await.unwrap();
                assert_eq!(
                    (r.status, problem(&r).as_str()),
                    (502, "upstream-unreachable"),
                    "{client}{i}"
                );
            }
        }
    })
    .await;
}

/// An HTTPS upstream speaking HTTP/2 alone that answers a path ending in `/no-content`
/// with a `204`, one ending in `/not-modified` with a `304`, and any other with a `200`,
/// each followed by a JSON body holding `DOC`, to `HEAD` as well: DATA after a head that
/// allows no content, which HTTP/2 does not forbid the upstream to send nor the client to
/// take (hyper's server sends a body whatever the status and method, with the
/// `Content-Length` it finds missing).
struct H2Upstream {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Upstream {
    fn body() -> Bytes {
        Bytes::from(format!(r#"{{"document_number":"{DOC}"}}"#))
    }

    async fn start(pki: &Pki) -> Self {
        use rustls_pki_types::pem::PemObject as _;
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(&pki.files.gateway_cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pki.files.gateway_key).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(idgate_tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req: http::Request<_>| async move {
                        let path = req.uri().path();
                        let status = if path.ends_with("/no-content") {
                            204
                        } else if path.ends_with("/not-modified") {
                            304
                        } else {
                            200
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Self::body()))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { port, task }
    }
}

#[tokio::test]
async fn a_204_or_304_with_a_body_from_an_http2_upstream_reaches_an_http2_caller_empty() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = H2Upstream::start(&pki).await;
        let mut spec = UpstreamSpec::new("h2", &format!("https://127.0.0.1:{}", upstream.port))
            .ca(&pki.files.bundle);
        spec.http2 = Some(true);
        let config = base_config(&pki)
            .upstream(spec)
            .route(
                RouteSpec::new("masked", &["GET", "HEAD"], "/m/{name}", "h2", &[ONBOARDING])
                    .with("masking", "lenient"),
            )
            .route(RouteSpec::new(
                "plain",
                &["GET", "HEAD"],
                "/p/{name}",
                "h2",
                &[ONBOARDING],
            ))
            .section(
                "masking",
                table([(
                    "profiles",
                    toml::Value::Table(table([("lenient", profile("pass"))])),
                )]),
            );
        let gw = Gateway::start(&config, &[(KEY_ENV, KEY)]).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let length = H2Upstream::body().len().to_string();
        for (route, masked) in [("m", true), ("p", false)] {
            for (method, name, status) in [
                ("GET", "no-content", 204),
                ("GET", "not-modified", 304),
                ("HEAD", "found", 200),
            ] {
                let path = format!("/{route}/{name}");
                let what = format!("{method} {path}");
                // On the wire: the stream ends with its head, and no byte of the body
                // follows it.
                let frames = raw_h2(&c, method, &path).await;
                let text = String::from_utf8_lossy(
                    &frames
                        .iter()
                        .flat_map(|f| f.payload.clone())
                        .collect::<Vec<_>>(),
                )
                .into_owned();
                assert!(!text.contains(DOC), "{what}: the body passed: {text}");
                let stream: Vec<_> = frames.iter().filter(|f| f.stream == 1).collect();
                assert!(
                    stream.iter().all(|f| f.kind != 0x0 || f.payload.is_empty()),
                    "{what}: DATA with bytes"
                );
                assert!(
                    stream.iter().any(|f| f.kind == 0x1 && f.flags & 0x1 != 0),
                    "{what}: no head ending the stream: {}",
                    gw.output()
                );
                // As a caller's HTTP/2 stack reads it: `Content-Length` dropped on a `204`,
                // kept on `HEAD` and `304` where no profile applies.
                let r = c.send(method, &path, &[], "").await.unwrap();
                assert_eq!((r.status, r.body.len()), (status, 0), "{what}");
                let expected = (status != 204 && !masked).then_some(length.as_str());
                assert_eq!(r.header("content-length"), expected, "{what}");
            }
        }
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
