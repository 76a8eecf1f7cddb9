//! What the upstream reads when a caller writes its request in a form the gateway routes one
//! way and could have forwarded another: a target with a query and no path, an empty
//! chunked body on a method that takes none, a body of unknown length on a `GET` to an
//! upstream served by hyper's client. The upstream records each request as it came off the
//! wire.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;
use crate::upstream_h1::{Raw, ok, read_body, read_head};

/// A plain HTTP/1.1 upstream that records every request (its body read as its own framing
/// says) and answers `200` with `body <length of the body it read>`.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<Raw>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(record(tcp, seen2.clone()));
            }
        });
        Self { port, seen, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Raw> {
        self.seen.lock().unwrap().clone()
    }
}

async fn record(mut tcp: TcpStream, seen: Arc<Mutex<Vec<Raw>>>) {
    let mut buf = Vec::new();
    while let Some(mut req) = read_head(&mut tcp, &mut buf).await {
        if read_body(&mut tcp, &mut buf, &mut req).await.is_none() {
            return;
        }
        let answer = ok(&format!("body {}", req.body.len()));
        seen.lock().unwrap().push(req);
        if tcp.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// A gateway with the route `route` for `methods` on `path` to `upstream`.
async fn gateway(pki: &Pki, upstream: UpstreamSpec, route: RouteSpec) -> Gateway {
    Gateway::start(&base_config(pki).upstream(upstream).route(route), &[]).await
}

/// Sends `request` as written over HTTP/1.1 (it asks to close) and returns the answer's
/// status line and body.
async fn send_raw_h1(pki: &Pki, gw: &Gateway, request: &str) -> (String, String) {
    let mut tls = tls_to(pki, gw, false).await;
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The gateway closes after its answer: `connection: close`.
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// Sends a request over HTTP/2 with the `:path` of `uri` as it is, and `body` in DATA
/// frames without a `content-length`; returns the answer's status and body.
async fn send_raw_h2(
    pki: &Pki,
    gw: &Gateway,
    method: &str,
    uri: &str,
    body: &str,
) -> (u16, Vec<u8>) {
    let (mut h2, connection) = h2::client::handshake(tls_to(pki, gw, true).await)
        .await
        .unwrap();
    tokio::spawn(connection);
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(req, body.is_empty()).unwrap();
    if !body.is_empty() {
        stream
            .send_data(bytes::Bytes::from(body.to_owned()), true)
            .unwrap();
    }
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    (status, got)
}

#[tokio::test]
async fn a_target_with_a_query_and_no_path_goes_upstream_as_the_root_path_it_was_routed_on() {
    within(async {
        let pki = Pki::default_pki();
        for base in ["", "/v1"] {
            let upstream = Recorder::start().await;
            let gw = gateway(
                &pki,
                UpstreamSpec::new("provider", &format!("{}{base}", upstream.url())),
                RouteSpec::get("root", "/", "provider"),
            )
            .await;
            // HTTP/1.1 in absolute form, without a path.
            let (status, _) = send_raw_h1(
                &pki,
                &gw,
                &format!(
                    "GET https://localhost:{}?q=1 HTTP/1.1\r\nhost: localhost:{}\r\nconnection: close\r\n\r\n",
                    gw.port, gw.port
                ),
            )
            .await;
            assert!(status.starts_with("HTTP/1.1 200 "), "base {base:?}: {status}");
            // HTTP/2 with a `:path` of `?q=1`.
            let (status, _) =
                send_raw_h2(&pki, &gw, "GET", &format!("https://localhost:{}?q=1", gw.port), "")
                    .await;
            assert_eq!(status, 200, "base {base:?}");

            let targets: Vec<String> = upstream.seen().into_iter().map(|r| r.target).collect();
            let expected = format!("{base}/?q=1");
            assert_eq!(targets, [expected.as_str(); 2], "base {base:?}");
        }
    })
    .await
}

#[tokio::test]
async fn an_empty_chunked_get_reaches_the_upstream_without_transfer_encoding() {
    within(async {
        let pki = Pki::default_pki();
        for client in ["native", "hyper"] {
            let upstream = Recorder::start().await;
            let gw = gateway(
                &pki,
                UpstreamSpec::new("provider", &upstream.url()).with("client", client),
                RouteSpec::get("route", "/v1/{*rest}", "provider"),
            )
            .await;
            // Written by hand: hyper's client drops the header of a body that is empty.
            let (status, body) = send_raw_h1(
                &pki,
                &gw,
                "GET /v1/chunked-empty HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n",
            )
            .await;
            assert!(status.starts_with("HTTP/1.1 200 "), "{client}: {status}");
            assert_eq!(body, "body 0", "{client}");
            let seen = upstream.seen();
            assert_eq!(seen.len(), 1, "{client}");
            assert_eq!(seen[0].target, "/v1/chunked-empty", "{client}");
            assert_eq!(seen[0].header("transfer-encoding"), None, "{client}");
            assert_eq!(seen[0].header("content-length"), None, "{client}");
        }
    })
    .await
}

#[tokio::test]
async fn a_get_body_of_unknown_length_reaches_a_hyper_client_upstream_or_is_refused() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Recorder::start().await;
        let gw = gateway(
            &pki,
            UpstreamSpec::new("provider", &upstream.url()).with("client", "hyper"),
            RouteSpec::get("route", "/v1/{*rest}", "provider").with("allow_body", true),
        )
        .await;
        let body = "a body of unknown length";
        // HTTP/1.1, chunked.
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let r = c
            .send("GET", "/v1/h1", &[("transfer-encoding", "chunked")], body)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8_lossy(&r.body),
            format!("body {}", body.len())
        );
        // HTTP/2, DATA without a length.
        let (status, answer) = send_raw_h2(
            &pki,
            &gw,
            "GET",
            &format!("https://localhost:{}/v1/h2", gw.port),
            body,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            String::from_utf8_lossy(&answer),
            format!("body {}", body.len())
        );

        let seen = upstream.seen();
        assert_eq!(seen.len(), 2);
        for req in &seen {
            assert_eq!(req.method, "GET");
            assert_eq!(req.body, body.as_bytes(), "{}", req.target);
        }
    })
    .await
}
