//! The gateway's HTTP/1.1 client, against an upstream scripted byte for byte over a raw
//! socket (cleartext, so the bytes are the test's own; the TLS hop is the same code over
//! rustls, and most other end-to-end tests go through it): body framing both ways, interim responses, HEAD,
//! connection reuse, an idle connection the upstream closed, and responses whose framing
//! could be read two ways.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::assert_eventually;
use crate::support::*;

const TOKEN: &str = "h1-upstream-token-9c2e";
const TOKEN_ENV: &str = "TEST_H1_UPSTREAM_TOKEN";

/// A request as the upstream read it off the wire.
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Raw {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the upstream does with a request: the bytes to send back, then whether to close.
#[derive(Clone)]
enum Answer {
    Send(Vec<u8>),
    SendAndClose(Vec<u8>),
    /// Sends the pieces with a pause between them, then keeps the connection.
    Trickle(Vec<Vec<u8>>),
    /// Closes the connection without a word.
    Close,
    /// Never answers.
    Hang,
}

type Script = Arc<dyn Fn(usize, &Raw) -> Answer + Send + Sync>;

/// An HTTP/1.1 upstream that reads requests strictly and answers from a script. `n` counts
/// requests over all connections.
struct RawUpstream {
    port: u16,
    /// Requests that arrived (the head; the body only when read before answering).
    seen: Arc<Mutex<Vec<Raw>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(script: impl Fn(usize, &Raw) -> Answer + Send + Sync + 'static) -> Self {
        Self::start_with(None, script).await
    }

    /// With `early`, the upstream answers a request `early` after its head, before reading
    /// its body, and then reads and drops the body as its Content-Length says, as an HTTP
    /// server keeping its connection in step must.
    async fn start_with(
        early: Option<Duration>,
        script: impl Fn(usize, &Raw) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::new(AtomicUsize::new(0));
        let (seen2, conns2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns2.fetch_add(1, Ordering::SeqCst);
                let (script, seen, count) = (script.clone(), seen2.clone(), count.clone());
                tokio::spawn(serve(tcp, script, seen, count, early));
            }
        });
        Self {
            port,
            seen,
            connections,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Raw> {
        self.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut tcp: TcpStream,
    script: Script,
    seen: Arc<Mutex<Vec<Raw>>>,
    n: Arc<AtomicUsize>,
    early: Option<Duration>,
) {
    let mut buf = Vec::new();
    loop {
        let req = match early {
            None => read_request(&mut tcp, &mut buf).await,
            Some(_) => read_head(&mut tcp, &mut buf).await,
        };
        let Some(req) = req else {
            return;
        };
        seen.lock().unwrap().push(req.clone());
        let answer = script(n.fetch_add(1, Ordering::SeqCst), &req);
        if let Some(delay) = early {
            tokio::time::sleep(delay).await;
            if let Answer::Send(bytes) = &answer
                && tcp.write_all(bytes).await.is_err()
            {
                return;
            }
            // Now the body, to stay in step for the next request.
            let len: usize = req
                .header("content-length")
                .map_or(0, |v| v.parse().unwrap());
            while buf.len() < len {
                if fill(&mut tcp, &mut buf).await.is_none() {
                    return;
                }
            }
            buf.drain(..len);
            continue;
        }
        match answer {
            Answer::Send(bytes) => {
                if tcp.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Answer::SendAndClose(bytes) => {
                let _ = tcp.write_all(&bytes).await;
                return;
            }
            Answer::Trickle(pieces) => {
                for p in pieces {
                    if tcp.write_all(&p).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Answer::Close => return,
            Answer::Hang => {
                tokio::time::sleep(TEST_LIMIT).await;
                return;
            }
        }
    }
}

/// Reads one request: the head, then a body framed by Content-Length or chunked.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Raw> {
    let mut raw = read_head(tcp, buf).await?;
    read_body(tcp, buf, &mut raw).await?;
    Some(raw)
}

pub(crate) async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Raw> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(tcp, buf).await?;
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("ASCII head");
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let mut start = lines.next()?.split(' ');
    let (method, target) = (start.next()?.to_owned(), start.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line");
            (k.to_owned(), v.trim().to_owned())
        })
        .collect();
    Some(Raw {
        method,
        target,
        headers,
        body: Vec::new(),
    })
}

pub(crate) async fn read_body(tcp: &mut TcpStream, buf: &mut Vec<u8>, raw: &mut Raw) -> Option<()> {
    if raw.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(tcp, buf).await?;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16)
                .expect("chunk size");
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(tcp, buf).await?;
            }
            raw.body.extend_from_slice(&buf[..size]);
            assert_eq!(&buf[size..size + 2], b"\r\n", "chunk data ends with CRLF");
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = raw.header("content-length") {
        let len: usize = len.parse().expect("content-length");
        while buf.len() < len {
            fill(tcp, buf).await?;
        }
        raw.body = buf.drain(..len).collect();
    }
    Some(())
}

pub(crate) async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

pub(crate) fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A gateway with one route, `/{*rest}` for any of the usual methods, to `upstream`.
async fn gateway(pki: &Pki, upstream: &RawUpstream, extra: &str) -> Gateway {
    OneRoute {
        url: &upstream.url(),
        upstream_extra: extra,
        credential: &format!("header = \"x-provider-token\"\nsecret = \"env:{TOKEN_ENV}\""),
        methods: r#"["GET", "HEAD", "POST", "PUT"]"#,
        path: "/{*rest}",
        ..OneRoute::default()
    }
    .start(pki, &[(TOKEN_ENV, TOKEN)])
    .await
}

fn client(pki: &Pki, gw: &Gateway) -> Client {
    Client::new(pki, Some(ONBOARDING), gw.port, false)
}

#[tokio::test]
async fn chunked_and_close_delimited_bodies_reach_the_caller_whole() {
    within(async {
        let upstream = RawUpstream::start(|n, _| match n {
            0 => Answer::Trickle(vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=\"a\"\r\nhello"
                    .to_vec(),
                b"\r\n7\r\n, world\r\n0\r\nx-trailer: dropped\r\n\r\n".to_vec(),
            ]),
            _ => Answer::SendAndClose(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end".to_vec(),
            ),
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, "").await;
        let c = client(&pki, &gw);

        let r = c.get("/chunked").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello, world"[..]));
        assert!(r.header("x-trailer").is_none());
        let r = c.get("/close").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"until the end"[..]));
        // The chunked response left its connection reusable: both requests used it.
        assert_eq!(upstream.connections(), 1);
        let seen = upstream.seen();
        assert_eq!(seen[1].target, "/close");
        assert_eq!(seen[1].header("x-provider-token"), Some(TOKEN));
        assert_eq!(
            seen[1].header("host"),
            Some(&*format!("127.0.0.1:{}", upstream.port))
        );
    })
    .await
}

#[tokio::test]
async fn responses_whose_framing_could_be_read_two_ways_get_502() {
    within(async {
        let bad: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-bad header: 1\r\n\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
        ];
        let script = bad.clone();
        let upstream =
            RawUpstream::start(move |n, _| Answer::SendAndClose(script[n].to_vec())).await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, "").await;
        let c = client(&pki, &gw);
        for (i, raw) in bad.iter().enumerate() {
            let r = c.get(&format!("/bad/{i}")).await.unwrap();
            assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(r.header("content-type"), Some("application/problem+json"));
            let body = String::from_utf8_lossy(&r.body);
            assert!(!body.contains(&upstream.port.to_string()), "{body}");
            assert!(!body.contains("hello"), "{body}");
        }
        assert_eventually!(
            gw.output().contains("invalid") || gw.output().contains("malformed"),
            "{}",
            gw.output()
        );
    })
    .await
}

#[tokio::test]
async fn interim_responses_are_skipped_and_head_answers_carry_no_body() {
    within(async {
        let upstream = RawUpstream::start(|n, req| match (n, req.method.as_str()) {
            (0, _) => Answer::Send(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"
                    .to_vec(),
            ),
            (_, "HEAD") => Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec()),
            _ => Answer::Send(ok("after head")),
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, "").await;
        let c = client(&pki, &gw);
        let r = c.send("POST", "/created", &[], "{}").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (201, &b"ok"[..]));
        let r = c.send("HEAD", "/head", &[], "").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        // Had the gateway waited for five body bytes after the HEAD answer, this would hang
        // or read the next response as a body.
        let r = c.get("/next").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"after head"[..]));
        // The POST carried a body, so its connection ended with it; HEAD and GET shared one.
        assert_eq!(upstream.connections(), 2);
    })
    .await
}

#[tokio::test]
async fn an_idempotent_request_on_a_connection_the_upstream_dropped_is_sent_again_once() {
    within(async {
        // The upstream answers the first request on a connection and closes the connection
        // when the second one arrives, as a server whose keep-alive timer just ran out does.
        let per_conn = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
        let upstream = RawUpstream::start(move |_, req| {
            let key = req.header("x-test-conn").unwrap_or("-").to_owned();
            let mut m = per_conn.lock().unwrap();
            let count = m.entry(key).or_default();
            *count += 1;
            // Each connection: answer once, then drop the next request.
            if (*count).is_multiple_of(2) {
                Answer::Close
            } else {
                Answer::Send(ok("fine"))
            }
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, "").await;
        let c = client(&pki, &gw);
        let r = c
            .send("GET", "/one", &[("x-test-conn", "a")], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // GET: the dropped attempt is retried on a new connection.
        let r = c
            .send("GET", "/two", &[("x-test-conn", "a")], "")
            .await
            .unwrap();
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"fine"[..]),
            "{:?}",
            gw.output()
        );
        assert_eq!(upstream.connections(), 2);
        let targets: Vec<String> = upstream.seen().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/one", "/two", "/two"]);

        // POST is not idempotent: the upstream may have acted on it, so it is not sent again.
        let r = c
            .send("POST", "/three", &[("x-test-conn", "a")], "{}")
            .await
            .unwrap();
        assert_eq!(r.status, 502, "{:?}", r.body);
        let posts = upstream
            .seen()
            .into_iter()
            .filter(|r| r.target == "/three")
            .count();
        assert_eq!(posts, 1);
    })
    .await
}

#[tokio::test]
async fn request_bodies_are_framed_by_the_gateway() {
    within(async {
        let upstream =
            RawUpstream::start(|_, req| Answer::Send(ok(&req.body.len().to_string()))).await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, "").await;
        let c = client(&pki, &gw);

        let r = c.send("POST", "/sized", &[], "0123456789").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"10"[..]));
        // The caller's chunked body has no length up front: it goes on chunked.
        let body = "a chunked body of unknown length".repeat(100);
        let r = c
            .send(
                "POST",
                "/chunked",
                &[("transfer-encoding", "chunked")],
                &body,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // An empty PUT still says its length; a GET says nothing about a body.
        let r = c.send("PUT", "/empty", &[], "").await.unwrap();
        assert_eq!(r.status, 200);
        c.get("/get").await.unwrap();

        // An HTTP/2 caller's body arrives in DATA frames; its length is still announced.
        let h2 = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let r = h2
            .send("POST", "/h2-sized", &[], "0123456789")
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"10"[..]));

        let seen = upstream.seen();
        assert_eq!(seen[4].header("content-length"), Some("10"));
        assert_eq!(seen[4].body, b"0123456789");
        assert_eq!(seen[0].header("content-length"), Some("10"));
        assert_eq!(seen[0].body, b"0123456789");
        assert_eq!(seen[1].header("transfer-encoding"), Some("chunked"));
        assert_eq!(seen[1].header("content-length"), None);
        assert_eq!(seen[1].body, body.as_bytes());
        assert_eq!(seen[2].header("content-length"), Some("0"));
        assert_eq!(seen[3].header("content-length"), None);
        assert_eq!(seen[3].header("transfer-encoding"), None);
    })
    .await
}

#[tokio::test]
async fn large_bodies_stream_through_intact_both_ways() {
    within(async {
        let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let response = big.clone();
        let upstream = RawUpstream::start(move |_, req| {
            let mut head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-got: {}\r\n\r\n",
                response.len(),
                req.body.len()
            )
            .into_bytes();
            let (first, rest) = response.split_at(100_000);
            head.extend_from_slice(first);
            Answer::Trickle(vec![head, rest.to_vec()])
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, "").await;
        let sent = "x".repeat(2 * 1024 * 1024);
        for (i, h2) in [false, true].into_iter().enumerate() {
            let c = Client::new(&pki, Some(ONBOARDING), gw.port, h2);
            let r = c.send("POST", "/big", &[], &sent).await.unwrap();
            assert_eq!(r.status, 200, "h2 {h2}");
            assert_eq!(r.header("x-got"), Some(&*sent.len().to_string()), "h2 {h2}");
            assert_eq!(r.body.len(), big.len(), "h2 {h2}");
            assert!(r.body[..] == big[..], "h2 {h2}: the body arrived changed");
            assert_eq!(upstream.seen()[i].body, sent.as_bytes(), "h2 {h2}");
        }
    })
    .await
}

#[tokio::test]
async fn a_body_cut_short_by_the_upstream_is_not_passed_off_as_complete() {
    within(async {
        let upstream = RawUpstream::start(|_, _| {
            Answer::SendAndClose(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..".to_vec(),
            )
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, "").await;
        let r = client(&pki, &gw).get("/short").await;
        assert!(
            r.is_err(),
            "a truncated body reached the caller as complete: {r:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_504() {
    within(async {
        let upstream = RawUpstream::start(|_, _| Answer::Hang).await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, r#"request_timeout = "300ms""#).await;
        let r = client(&pki, &gw).get("/slow").await.unwrap();
        assert_eq!(r.status, 504);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    })
    .await
}

#[tokio::test]
async fn an_upstream_answering_before_the_body_is_heard_and_its_connection_dropped() {
    within(async {
        // 413 right after the head, before reading any of a 32 MiB body: had the gateway
        // insisted on writing the whole body first, it would wait for its request timeout.
        let upstream = RawUpstream::start_with(Some(Duration::ZERO), |_, req| {
            if req.target == "/big" {
                Answer::Send(
                    b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!".to_vec(),
                )
            } else {
                Answer::Send(ok("next"))
            }
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, r#"request_timeout = "20s""#).await;
        let c = client(&pki, &gw);
        let started = std::time::Instant::now();
        let body = "x".repeat(32 * 1024 * 1024);
        match c.send("POST", "/big", &[], &body).await {
            Ok(r) => assert_eq!((r.status, &r.body[..]), (413, &b"big!"[..])),
            // The caller may see its own upload cut off once the answer is in: fine, as long
            // as it was not held for the request timeout.
            Err(e) => assert!(started.elapsed() < Duration::from_secs(10), "{e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "held {:?}",
            started.elapsed()
        );
        // The cut-short request's connection is not reused: the next one is sent on a new
        // connection and arrives whole.
        let r = c.get("/after").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"next"[..]));
        assert_eq!(upstream.connections(), 2);
    })
    .await
}

#[tokio::test]
async fn a_request_body_reset_mid_way_never_leaves_its_connection_to_the_next_request() {
    within(async {
        // The upstream answers each request 300 ms after its head, then reads the body its
        // Content-Length announced. An HTTP/2 caller announces 100 bytes, sends 10 and
        // resets the stream. Were that connection pooled, the next caller's request would
        // be read as the missing 90 bytes.
        let upstream = RawUpstream::start_with(Some(Duration::from_millis(300)), |_, _| {
            Answer::Send(ok("fine"))
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, r#"request_timeout = "5s""#).await;

        let (cert, key) = pki.workload(ONBOARDING);
        let tls = tls_client_config(
            &pki.files.bundle,
            Some((&cert, &key)),
            true,
            rustls::DEFAULT_VERSIONS,
        );
        let tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut h2, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let req = http::Request::post(format!("https://localhost:{}/reset", gw.port))
            .header("content-length", "100")
            .body(())
            .unwrap();
        let (_response, mut stream) = h2.send_request(req, false).unwrap();
        stream
            .send_data(bytes::Bytes::from_static(b"0123456789"), false)
            .unwrap();
        assert_eventually!(
            !upstream.seen().is_empty(),
            "the request never reached the upstream"
        );
        stream.send_reset(h2::Reason::NO_ERROR);

        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = client(&pki, &gw).get("/next").await.unwrap();
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"fine"[..]),
            "{}",
            gw.output()
        );
        let targets: Vec<String> = upstream.seen().into_iter().map(|r| r.target).collect();
        assert_eq!(targets, ["/reset", "/next"]);
        assert_eq!(upstream.connections(), 2);
    })
    .await
}

#[tokio::test]
async fn an_https_upstream_whose_certificate_does_not_verify_gets_502() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let (port, admin) = (free_port(), free_port());
        let url = upstream.url(true);
        // Without `ca` only the platform's roots are trusted, and the test CA is not one.
        let config = OneRoute {
            url: &url,
            ..OneRoute::default()
        }
        .config(&pki, port, admin)
        .lines()
        .filter(|l| !l.starts_with("ca = "))
        .collect::<Vec<_>>()
        .join("\n");
        let gw = Gateway::start(&config, port, admin, &[]).await;
        let r = client(&pki, &gw).get("/v1/untrusted").await.unwrap();
        assert_eq!(r.status, 502, "{:?}", r.body);
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains(&upstream.addr.port().to_string()), "{body}");
        assert!(
            upstream.requests().is_empty(),
            "a request crossed an unverified TLS hop"
        );
        // The log line reaches the test through a pipe, a moment after the response.
        assert_eventually!(gw.output().contains("TLS"), "{}", gw.output());
    })
    .await
}

#[test]
fn check_refuses_http2_to_a_cleartext_upstream() {
    let pki = Pki::default_pki();
    let config = OneRoute {
        url: "http://127.0.0.1:9",
        upstream_extra: "http2 = true",
        ..OneRoute::default()
    }
    .config(&pki, free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = run(std::process::Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(&path));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("upstreams[0].http2"),
        "{out}{err}"
    );
}

#[tokio::test]
async fn a_body_on_a_get_head_options_or_delete_is_refused_unless_the_route_takes_one() {
    within(async {
        let upstream =
            RawUpstream::start(|_, req| Answer::Send(ok(&format!("body {}", req.body.len()))))
                .await;
        let pki = Pki::default_pki();
        let (port, admin) = (free_port(), free_port());
        let route = |path: &str, allow_body: bool| {
            format!(
                "\n[[routes]]\nname = \"{path}\"\nmethods = [\"GET\", \"HEAD\", \"OPTIONS\", \"DELETE\", \"POST\"]\npath = \"/{path}/{{*rest}}\"\nupstream = \"provider\"\nallow = [\"{ONBOARDING}\"]\n{}\n",
                if allow_body { "allow_body = true" } else { "" }
            )
        };
        let config = format!(
            "{}\n[[upstreams]]\nname = \"provider\"\nurl = \"{}\"\n{}{}",
            base_config(&pki, port, admin),
            upstream.url(),
            route("strict", false),
            route("open", true)
        );
        let gw = Gateway::start(&config, port, admin, &[]).await;
        let c = client(&pki, &gw);
        for method in ["GET", "HEAD", "OPTIONS", "DELETE"] {
            let r = c.send(method, "/strict/x", &[], "a body").await.unwrap();
            assert_eq!(r.status, 400, "{method}");
            if method != "HEAD" {
                let problem = r.json();
                assert_eq!(
                    problem["type"], "https://idgate.dev/problems/body-not-allowed",
                    "{method}"
                );
                assert!(
                    problem["detail"].as_str().unwrap().contains(method),
                    "{problem}"
                );
            }
        }
        // A chunked body says nothing of its length up front: it is a body all the same.
        let r = c
            .send(
                "GET",
                "/strict/chunked",
                &[("transfer-encoding", "chunked")],
                "a body",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        // So is one over HTTP/2.
        let h2 = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let r = h2.send("DELETE", "/strict/h2", &[], "a body").await.unwrap();
        assert_eq!(r.status, 400);
        assert!(
            upstream.seen().is_empty(),
            "a refused request reached the upstream"
        );

        // A length of 0 is no body; a POST takes one; the route that opts in passes it on.
        let r = c
            .send("GET", "/strict/empty", &[("content-length", "0")], "")
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"body 0"[..]));
        // Neither is a body of unknown length that ends with no data: a chunked body of one
        // `0` chunk, or an HTTP/2 DATA frame with END_STREAM and nothing in it.
        let r = c
            .send(
                "GET",
                "/strict/chunked-empty",
                &[("transfer-encoding", "chunked")],
                "",
            )
            .await
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"body 0"[..]));
        let (cert, key) = pki.workload(ONBOARDING);
        let tls = tls_client_config(
            &pki.files.bundle,
            Some((&cert, &key)),
            true,
            rustls::DEFAULT_VERSIONS,
        );
        let tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let (mut raw_h2, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let req = http::Request::get(format!("https://localhost:{}/strict/h2-empty", gw.port))
            .body(())
            .unwrap();
        let (response, mut stream) = raw_h2.send_request(req, false).unwrap();
        stream.send_data(bytes::Bytes::new(), true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);

        let r = c.send("POST", "/strict/post", &[], "a body").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"body 6"[..]));
        let r = c.send("DELETE", "/open/x", &[], "a body").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"body 6"[..]));
        let targets: Vec<String> = upstream.seen().into_iter().map(|r| r.target).collect();
        assert_eq!(
            targets,
            [
                "/strict/empty",
                "/strict/chunked-empty",
                "/strict/h2-empty",
                "/strict/post",
                "/open/x"
            ]
        );
    })
    .await
}

#[test]
fn check_refuses_a_client_or_allow_body_that_cannot_apply() {
    let pki = Pki::default_pki();
    for (upstream_extra, route_extra, key, reason) in [
        (
            "client = \"curl\"",
            "",
            "upstreams[0].client",
            "use \"native\" or \"hyper\"",
        ),
        (
            "client = \"native\"\nhttp2 = true",
            "",
            "upstreams[0].client",
            "uses hyper's client",
        ),
        (
            "",
            "allow_body = true",
            "routes[0].allow_body",
            "lists none of them",
        ),
        ("", "allow_body = \"yes\"", "allow_body", "invalid type"),
    ] {
        let config = OneRoute {
            url: "https://127.0.0.1:9",
            upstream_extra,
            methods: r#"["POST", "PUT"]"#,
            ..OneRoute::default()
        }
        .config(&pki, free_port(), free_port())
            + route_extra
            + "\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idgate.toml");
        std::fs::write(&path, config).unwrap();
        let (code, out, err) = run(std::process::Command::new(bin())
            .arg("check")
            .arg("--config")
            .arg(&path));
        assert_eq!(code, 2, "{key}: {out}{err}");
        let said = format!("{out}{err}");
        assert!(said.contains(key) && said.contains(reason), "{key}: {said}");
    }
}
