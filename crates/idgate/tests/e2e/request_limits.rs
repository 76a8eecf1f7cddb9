//! Request limits over real sockets: header count and size (431, HTTP/1.1 and HTTP/2), the
//! route's body limit (413, before anything reaches the upstream when the length is
//! announced, and where a stage reads the body whole), a stalled body (408), and a head
//! trickled past `header_timeout`.

use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const PATH: &str = "/v1/anything";

async fn gateway(pki: &Pki, upstream: &TestUpstream, listener_extra: toml::Table) -> Gateway {
    let mut config = OneRoute {
        url: &upstream.url(false),
        methods: &["GET", "POST"],
        listener_extra,
        ..OneRoute::default()
    }
    .config(pki);
    config.routes[0].extra = toml::toml! { max_body_bytes = 1000 };
    Gateway::start(&config, &[]).await
}

/// Mutual TLS as the onboarding workload, HTTP/1.1, for writing raw requests.
async fn raw(client: &Client) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", client.port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(client.config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads what the gateway answers until it closes or `limit` passes.
async fn answer(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n")
                        && String::from_utf8_lossy(&out).contains("\"status\"")
                    {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431_on_both_protocols() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(
            &pki,
            &upstream,
            toml::toml! {
                max_header_count = 20
                max_header_bytes = 2048
            },
        )
        .await;
        let names: Vec<String> = (0..30).map(|i| format!("x-h{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let big = "a".repeat(4096);
        for h2 in [false, true] {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, h2);
            let r = client.send("GET", PATH, &many, "").await;
            let status = r.as_ref().map(|r| r.status);
            assert_eq!(status, Ok(431), "h2 {h2}: too many headers: {r:?}");
            let r = client.send("GET", PATH, &[("x-big", &big)], "").await;
            let status = r.as_ref().map(|r| r.status);
            assert_eq!(status, Ok(431), "h2 {h2}: too large a header: {r:?}");
            // Within both limits: served.
            assert_eq!(
                client
                    .send("GET", PATH, &many[..10], "")
                    .await
                    .unwrap()
                    .status,
                200
            );
        }
        let h2 = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let r = h2.send("GET", PATH, &many, "").await.unwrap();
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(
            r.json()["type"],
            "https://idgate.dev/problems/too-many-headers"
        );
        assert_eq!(
            upstream.requests().len(),
            2,
            "an oversized head reached the upstream"
        );
    })
    .await
}

#[tokio::test]
async fn a_body_over_the_route_limit_gets_413_and_an_announced_one_never_reaches_upstream() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
        let over = "x".repeat(2000);
        for h2 in [false, true] {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, h2);
            let r = client.send("POST", PATH, &[], &over).await.unwrap();
            assert_eq!(r.status, 413, "h2 {h2}: {:?}", r.body);
            assert_eq!(
                r.json()["type"],
                "https://idgate.dev/problems/body-too-large"
            );
            let r = client.send("POST", PATH, &[], &over[..1000]).await.unwrap();
            assert_eq!(r.status, 200, "h2 {h2}: at the limit");
        }
        // Content-Length said so up front: the upstream saw only the two within the limit.
        assert_eq!(upstream.requests().len(), 2);

        // A chunked body that crosses the limit as it streams: 413 too.
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let mut tls = raw(&client).await;
        let mut req = format!(
            "POST {PATH} HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..4 {
            req.extend_from_slice(format!("{:x}\r\n{}\r\n", 400, "y".repeat(400)).as_bytes());
        }
        req.extend_from_slice(b"0\r\n\r\n");
        tls.write_all(&req).await.unwrap();
        let got = answer(&mut tls, Duration::from_secs(10)).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    })
    .await
}

#[tokio::test]
async fn a_chunked_body_over_the_route_limit_gets_413_where_a_schema_reads_it_whole() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("schema.json");
        std::fs::write(&schema, r#"{"type": "object"}"#).unwrap();
        let mut config = OneRoute {
            url: &upstream.url(false),
            methods: &["POST"],
            ..OneRoute::default()
        }
        .config(&pki);
        let schema = schema.display().to_string();
        config.routes[0].extra = toml::toml! {
            max_body_bytes = 1000
            schema = schema
        };
        let gw = Gateway::start(&config, &[]).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let json = |n: usize| format!(r#"{{"a":"{}"}}"#, "x".repeat(n));

        // Within the limit, chunked: validated and forwarded.
        let mut tls = raw(&client).await;
        tls.write_all(&chunked_json(&json(900))).await.unwrap();
        let got = answer_head(&mut tls).await;
        assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        // Over it, with no length announced: the schema's read stops at the route's limit.
        let mut tls = raw(&client).await;
        tls.write_all(&chunked_json(&json(200_000))).await.unwrap();
        let got = answer(&mut tls, Duration::from_secs(10)).await;
        assert!(got.starts_with("HTTP/1.1 413"), "{got}");
        let seen = upstream.requests();
        assert_eq!(
            seen.len(),
            1,
            "only the body within the limit went upstream"
        );
        assert_eq!(seen[0].body.len(), json(900).len());
    })
    .await
}

/// A POST of `body` as `application/json`, chunked in pieces of 1000 bytes.
fn chunked_json(body: &str) -> Vec<u8> {
    let mut req = format!(
        "POST {PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.as_bytes().chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

/// Reads until the end of the answer's head.
async fn answer_head(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_a_trickled_head_is_closed() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(
            &pki,
            &upstream,
            toml::toml! {
                body_timeout = "500ms"
                header_timeout = "1s"
            },
        )
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        let mut tls = raw(&client).await;
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n0123456789"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        let got = answer(&mut tls, Duration::from_secs(10)).await;
        assert!(got.starts_with("HTTP/1.1 408"), "{got}");
        assert!(got.contains("body-timeout"), "{got}");

        // A head sent a byte at a time, slower than header_timeout allows: closed.
        let mut tls = raw(&client).await;
        let started = Instant::now();
        let mut closed = false;
        for b in format!("GET {PATH} HTTP/1.1\r\nhost: localhost\r\nx-slow: ")
            .bytes()
            .cycle()
            .take(200)
        {
            if tls.write_all(&[b]).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            if started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        if !closed {
            let mut buf = [0u8; 64];
            closed = matches!(
                tokio::time::timeout(Duration::from_secs(1), tls.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            );
        }
        assert!(closed, "a trickled head kept its connection");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}

#[tokio::test]
async fn over_max_connections_an_http1_client_gets_a_quick_503_and_the_gateway_goes_on() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(&pki, &upstream, toml::toml! { max_connections = 2 }).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let mut first = client.connect().await.unwrap();
        let mut second = client.connect().await.unwrap();
        assert_eq!(first.send("GET", PATH, &[], "").await.unwrap().status, 200);
        assert_eq!(second.send("GET", PATH, &[], "").await.unwrap().status, 200);

        let r = client.get(PATH).await.unwrap();
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["type"], "https://idgate.dev/problems/overloaded");
        // HTTP/2 gets no answer of its own: closed after its handshake (shed all the same).
        let h2 = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        assert!(h2.get(PATH).await.is_err());
        assert_eq!(
            upstream.requests().len(),
            2,
            "a shed request reached the upstream"
        );

        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics
                .contains(r#"idgate_connections_refused_total{reason="max_connections_shed"} 2"#),
            "{metrics}"
        );
        drop(first);
        crate::assert_eventually!(
            client.get(PATH).await.is_ok_and(|r| r.status == 200),
            "no connection served after one closed"
        );
        assert_eq!(second.send("GET", PATH, &[], "").await.unwrap().status, 200);
    })
    .await
}
