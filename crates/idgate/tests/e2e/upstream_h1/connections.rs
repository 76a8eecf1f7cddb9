//! Connections to the upstream: reuse, an idle connection the upstream dropped, an upstream
//! answering early or a request body reset mid-way, certificate checks and HTTP/2 to a
//! cleartext upstream.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::assert_eventually;
use crate::support::*;

use super::{Answer, RawUpstream, client, gateway, ok};

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
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
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
        // Room for the body: past max_body_bytes the gateway would refuse it itself.
        let gw = gateway(
            &pki,
            &upstream,
            toml::toml! {
                request_timeout = "20s"
                max_body_bytes = 67108864
            },
        )
        .await;
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
        let gw = gateway(&pki, &upstream, toml::toml! { request_timeout = "5s" }).await;

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
        let url = upstream.url(true);
        // Without `ca` only the platform's roots are trusted, and the test CA is not one.
        let mut config = OneRoute {
            url: &url,
            ..OneRoute::default()
        }
        .config(&pki);
        config.upstreams[0].ca = None;
        let gw = Gateway::start(&config, &[]).await;
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
        upstream_extra: toml::toml! { http2 = true },
        ..OneRoute::default()
    }
    .config(&pki);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
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
