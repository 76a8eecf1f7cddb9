//! Request bodies: framed by the gateway, streamed whole both ways, and refused on methods
//! and routes that take none.

use tokio::net::TcpStream;

use crate::support::*;

use super::{Answer, RawUpstream, client, gateway, ok};

#[tokio::test]
async fn request_bodies_are_framed_by_the_gateway() {
    within(async {
        let upstream =
            RawUpstream::start(|_, req| Answer::Send(ok(&req.body.len().to_string()))).await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
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
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
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
async fn a_body_on_a_get_head_options_or_delete_is_refused_unless_the_route_takes_one() {
    within(async {
        let upstream =
            RawUpstream::start(|_, req| Answer::Send(ok(&format!("body {}", req.body.len()))))
                .await;
        let pki = Pki::default_pki();
        let route = |path: &str| {
            RouteSpec::new(
                path,
                &["GET", "HEAD", "OPTIONS", "DELETE", "POST"],
                &format!("/{path}/{{*rest}}"),
                "provider",
                &[ONBOARDING],
            )
        };
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("provider", &upstream.url()))
            .route(route("strict"))
            .route(route("open").with("allow_body", true));
        let gw = Gateway::start(&config, &[]).await;
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
        let r = h2
            .send("DELETE", "/strict/h2", &[], "a body")
            .await
            .unwrap();
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
            toml::toml! { client = "curl" },
            toml::Table::new(),
            "upstreams[0].client",
            "use \"native\" or \"hyper\"",
        ),
        (
            toml::toml! {
                client = "native"
                http2 = true
            },
            toml::Table::new(),
            "upstreams[0].client",
            "uses hyper's client",
        ),
        (
            toml::Table::new(),
            toml::toml! { allow_body = true },
            "routes[0].allow_body",
            "lists none of them",
        ),
        (
            toml::Table::new(),
            toml::toml! { allow_body = "yes" },
            "allow_body",
            "invalid type",
        ),
    ] {
        let mut config = OneRoute {
            url: "https://127.0.0.1:9",
            upstream_extra,
            methods: &["POST", "PUT"],
            ..OneRoute::default()
        }
        .config(&pki);
        config.routes[0].extra = route_extra;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idgate.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        let (code, out, err) = run(std::process::Command::new(bin())
            .arg("check")
            .arg("--config")
            .arg(&path));
        assert_eq!(code, 2, "{key}: {out}{err}");
        let said = format!("{out}{err}");
        assert!(said.contains(key) && said.contains(reason), "{key}: {said}");
    }
}
