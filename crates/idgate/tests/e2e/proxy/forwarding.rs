//! What is forwarded and what is stripped: the path and query, hop-by-hop headers, caller
//! credentials and the injected upstream credential, request ids, forwarding headers, and
//! requests refused before they reach the upstream.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

use super::{DECISION, PROVIDER_HEADER, PROVIDER_TOKEN, Setup, assert_problem, is_32_hex};

#[tokio::test]
async fn forwards_the_canonical_path_and_the_query_as_received() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let c = s.client(Some(ONBOARDING));
        for (pq, forwarded) in [
            ("/v3/session/abc-123/decision/", None),
            (
                "/v3/session/a_b.c~d%20e/decision/?x=1&y=%2F%2e&z=a+b&x=2",
                None,
            ),
            ("/v3/session/ABC/decision/?", None),
            (
                "/v3/session/%41bc%2b/decision/?q=%00&empty=",
                Some("/v3/session/Abc%2B/decision/?q=%00&empty="),
            ),
        ] {
            let r = c.get(pq).await.unwrap();
            assert_eq!(r.status, 200, "{pq}: {:?}", r.body);
            assert_eq!(s.upstream.last().path_and_query, forwarded.unwrap_or(pq));
        }
        // And over HTTP/2, where the client sends the path in `:path`.
        let pq = "/v3/session/h2/decision/?a=%2F&b=c";
        let r = s.client_h2(Some(ONBOARDING)).get(pq).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(s.upstream.last().path_and_query, pq);
    })
    .await
}

#[tokio::test]
async fn a_gateway_api_key_in_the_query_never_reaches_the_upstream_on_any_route() {
    within(async {
        // The `decision` route takes no API keys; a caller pasting its gateway key into a
        // URL there must not hand it to the provider.
        let mut s = Setup::start_tracing(UpstreamMode::Echo).await;
        let key = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let c = s.client(Some(ONBOARDING));
        for pq in [
            format!("{DECISION}?token={key}"),
            format!("{DECISION}?t={}", key.replace('_', "%5F")),
        ] {
            let r = c.get(&pq).await.unwrap();
            let p = assert_problem(&r, 400, &[key]);
            assert!(
                p["type"].as_str().unwrap().ends_with("api-key-in-query"),
                "{p}"
            );
        }
        assert!(
            s.upstream.requests().is_empty(),
            "a key-shaped query was forwarded"
        );
        // A provider's own parameter named `key` is none of the gateway's business here.
        let r = c
            .get(&format!("{DECISION}?key=provider-side"))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        s.gw.assert_never_logged(&[key, &key.replace('_', "%5F")])
            .await;
    })
    .await
}

/// CGI, WSGI, PHP and Rack read `X_Forwarded_For` as they read `X-Forwarded-For`: a header
/// named with underscores would pass the stripping of forwarding headers and credentials by
/// its dashed name. None reaches the upstream, from an HTTP/1.1 or an HTTP/2 caller.
#[tokio::test]
async fn headers_named_with_underscores_never_reach_the_upstream() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let underscored = [
            ("X_Forwarded_For", "10.66.66.66"),
            ("x_real_ip", "10.66.66.66"),
            ("X_Forwarded_Host", "admin.internal"),
            ("x_api_key", "caller-chosen"),
            ("x_custom", "1"),
        ];
        let mut headers = underscored.to_vec();
        headers.push(("x-end-to-end", "kept"));
        let h1 = s
            .client(Some(ONBOARDING))
            .send("GET", DECISION, &headers, "")
            .await
            .unwrap();
        assert_eq!(h1.status, 200, "{:?}", h1.body);
        let seen_h1 = s.upstream.last();
        let h2 = s
            .client_h2(Some(ONBOARDING))
            .send("GET", DECISION, &headers, "")
            .await
            .unwrap();
        assert_eq!(h2.status, 200, "{:?}", h2.body);
        let seen_h2 = s.upstream.last();
        for seen in [&seen_h1, &seen_h2] {
            let names: Vec<&str> = seen.headers.keys().map(|k| k.as_str()).collect();
            assert!(
                names.iter().all(|n| !n.contains('_')),
                "a header named with an underscore reached the upstream: {names:?}"
            );
            assert_eq!(seen.headers.get("x-end-to-end").unwrap(), "kept");
            assert!(
                !format!("{:?}", seen.headers).contains("10.66.66.66"),
                "{:?}",
                seen.headers
            );
        }
    })
    .await
}

#[tokio::test]
async fn strips_hop_by_hop_headers_before_forwarding() {
    within(async {
        // An HTTP/2 upstream hop (`http2 = true`: hyper's client, which drops some connection
        // headers by itself), and HTTP/1.1 ones over TLS and cleartext (the gateway's own
        // client, which writes whatever headers it is given).
        let h2_upstream =
            Setup::start_with(UpstreamMode::Echo, |c| c.upstreams[0].http2 = Some(true)).await;
        let tls_h1_upstream = Setup::start(UpstreamMode::Echo).await;
        let h1_upstream = Setup::start_with_http1_upstream(UpstreamMode::Echo).await;
        for (s, upstream_version) in [
            (&h2_upstream, http::Version::HTTP_2),
            (&tls_h1_upstream, http::Version::HTTP_11),
            (&h1_upstream, http::Version::HTTP_11),
        ] {
            let body = "a chunked request body";
            let r = s
                .client(Some(ONBOARDING))
                .send(
                    "POST",
                    "/v2/session/",
                    &[
                        ("connection", "keep-alive, x-hop-named"),
                        ("x-hop-named", "named in Connection"),
                        ("keep-alive", "timeout=5, max=100"),
                        ("te", "trailers"),
                        ("transfer-encoding", "chunked"),
                        ("upgrade", "websocket"),
                        ("proxy-authorization", "Basic cHJveHk6cGFzcw=="),
                        ("proxy-connection", "keep-alive"),
                        ("x-end-to-end", "kept"),
                    ],
                    body,
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            let seen = s.upstream.last();
            assert_eq!(seen.version, upstream_version, "the upstream hop's version");
            for h in [
                "connection",
                "x-hop-named",
                "keep-alive",
                "te",
                "upgrade",
                "proxy-authorization",
                "proxy-connection",
            ] {
                assert!(
                    !seen.headers.contains_key(h),
                    "{h} reached the {upstream_version:?} upstream: {:?}",
                    seen.headers
                );
            }
            // The chunked framing belongs to the inbound hop; the body arrives whole, framed
            // anew by the gateway's own client.
            assert_eq!(&seen.body[..], body.as_bytes());
            let te: Vec<_> = seen.headers.get_all("transfer-encoding").iter().collect();
            assert!(
                te.is_empty() || te == ["chunked"],
                "transfer-encoding {te:?}"
            );
            assert_eq!(seen.headers.get("x-end-to-end").unwrap(), "kept");
        }
    })
    .await
}

#[tokio::test]
async fn strips_caller_credentials_and_injects_the_upstream_credential() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        for c in [s.client(Some(ONBOARDING)), s.client_h2(Some(ONBOARDING))] {
            let r = c
                .send(
                    "GET",
                    DECISION,
                    &[
                        ("x-api-key", "caller-api-key-1"),
                        ("authorization", "Bearer caller-token-2"),
                        ("cookie", "session=caller-cookie-3"),
                        ("cookie", "other=caller-cookie-4"),
                        (PROVIDER_HEADER, "forged-by-caller"),
                        (PROVIDER_HEADER, "forged-twice"),
                    ],
                    "",
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            let seen = s.upstream.last();
            for h in ["x-api-key", "authorization", "cookie"] {
                assert!(
                    !seen.headers.contains_key(h),
                    "caller's {h} reached the upstream ({:?})",
                    seen.version
                );
            }
            let injected: Vec<_> = seen.headers.get_all(PROVIDER_HEADER).iter().collect();
            assert_eq!(
                injected,
                [PROVIDER_TOKEN],
                "exactly the gateway's credential"
            );
            let all = format!("{:?}", seen.headers);
            assert!(!all.contains("forged"), "{all}");
            assert!(!all.contains("caller-"), "{all}");
            // The credential never comes back to the caller.
            assert!(!format!("{:?}{:?}", r.headers, r.body).contains(PROVIDER_TOKEN));
        }
    })
    .await
}

#[tokio::test]
async fn an_upstream_that_echoes_the_credential_in_its_answer_never_hands_it_to_the_caller() {
    within(async {
        // An upstream (or a debugging layer before it) that answers with the request's
        // credential header, and credentials of its own kind.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let svc =
                    hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                        let token = req.headers().get(PROVIDER_HEADER).cloned();
                        async move {
                            let mut b = http::Response::builder()
                                .header("x-api-key", "upstream-echoed-key")
                                .header("authorization", "Bearer upstream-echoed-token")
                                .header("x-kept", "yes")
                                .header("content-type", "application/json");
                            if let Some(t) = token {
                                b = b.header(PROVIDER_HEADER, t);
                            }
                            Ok::<_, std::convert::Infallible>(
                                b.body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                                    .unwrap(),
                            )
                        }
                    });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let unused = TestUpstream::http(UpstreamMode::Echo).await;
        let s =
            Setup::start_in_front_of(super::pki(), unused, &format!("http://{addr}"), |_| {}).await;
        for c in [s.client(Some(ONBOARDING)), s.client_h2(Some(ONBOARDING))] {
            let r = c.get(DECISION).await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            for h in [PROVIDER_HEADER, "x-api-key", "authorization"] {
                assert_eq!(r.header(h), None, "{h} came back to the caller");
            }
            assert!(!format!("{:?}", r.headers).contains(PROVIDER_TOKEN));
            assert_eq!(r.header("x-kept"), Some("yes"));
        }
        echo.abort();
    })
    .await
}

#[tokio::test]
async fn a_callers_trailer_fields_are_stripped_as_its_head_is() {
    within(async {
        // hyper's HTTP/2 client sends the trailers the body yields, stripped of what the head
        // is stripped of; the gateway's own HTTP/1.1 client writes none.
        let h2_upstream =
            Setup::start_with(UpstreamMode::Echo, |c| c.upstreams[0].http2 = Some(true)).await;
        let h1_upstream = Setup::start(UpstreamMode::Echo).await;
        for (s, upstream_version) in [
            (&h2_upstream, http::Version::HTTP_2),
            (&h1_upstream, http::Version::HTTP_11),
        ] {
            let mut tls = raw_tls(s).await;
            tls.write_all(
                format!(
                    "POST /v2/session/ HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\
                     trailer: {PROVIDER_HEADER}, authorization, x-forwarded-for\r\n\r\n\
                     5\r\nhello\r\n0\r\n{PROVIDER_HEADER}: forged-by-caller\r\n\
                     authorization: Bearer forged\r\nx-forwarded-for: 203.0.113.66\r\n\
                     cookie: s=forged\r\nx-checksum: abc\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tls.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "closed before an answer");
                head.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&head);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let seen = s.upstream.last();
            assert_eq!(seen.version, upstream_version);
            assert_eq!(&seen.body[..], b"hello");
            let trailers = format!("{:?}", seen.trailers);
            let expected: &[&str] = if upstream_version == http::Version::HTTP_2 {
                &["x-checksum"]
            } else {
                &[]
            };
            let names: Vec<&str> = seen
                .trailers
                .iter()
                .flat_map(|t| t.keys().map(http::HeaderName::as_str))
                .collect();
            assert_eq!(names, expected, "{upstream_version:?}: {trailers}");
            let all = format!("{:?}", seen.headers);
            assert!(!all.contains("forged") && !all.contains("203.0.113.66"), "{all}");
        }
    })
    .await
}

#[tokio::test]
async fn keeps_a_valid_caller_request_id_and_returns_it() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let id = "caller-req_42.a:b";
        let r = s
            .client(Some(ONBOARDING))
            .send("GET", DECISION, &[("x-request-id", id)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-request-id"), Some(id));
        assert_eq!(s.upstream.last().headers.get("x-request-id").unwrap(), id);

        // Also on a problem the gateway makes itself.
        let r = s
            .client(Some(FRONTEND))
            .send("GET", DECISION, &[("x-request-id", id)], "")
            .await
            .unwrap();
        let p = assert_problem(&r, 403, &[]);
        assert_eq!(p["request_id"], id);
    })
    .await
}

#[tokio::test]
async fn generates_a_request_id_when_missing_or_invalid() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let c = s.client(Some(ONBOARDING));
        let too_long = "a".repeat(129);
        let mut ids = Vec::new();
        for sent in [
            None,
            Some("has spaces in it"),
            Some("semi;colon"),
            Some(too_long.as_str()),
        ] {
            let headers: Vec<(&str, &str)> = sent.iter().map(|v| ("x-request-id", *v)).collect();
            let r = c.send("GET", DECISION, &headers, "").await.unwrap();
            assert_eq!(r.status, 200, "{:?}", r.body);
            let got = r
                .header("x-request-id")
                .expect("x-request-id returned")
                .to_owned();
            assert!(is_32_hex(&got), "generated id {got:?} for sent {sent:?}");
            let upstream_saw = s.upstream.last();
            let upstream_ids: Vec<_> = upstream_saw
                .headers
                .get_all("x-request-id")
                .iter()
                .collect();
            assert_eq!(
                upstream_ids,
                [got.as_str()],
                "the upstream sees the same one id"
            );
            ids.push(got);
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "generated ids are distinct");
    })
    .await
}

/// The upstream's `x-forwarded-for` lines for `headers` sent by `c`.
async fn forwarded_for_seen(s: &Setup, c: &Client, headers: &[(&str, &str)]) -> Vec<String> {
    let reply = c.send("GET", DECISION, headers, "").await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    s.upstream
        .last()
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Every forwarding header a caller might send about itself.
const CLAIMED_ORIGIN: [(&str, &str); 15] = [
    ("x-forwarded-for", "1.2.3.4"),
    ("forwarded", "for=1.2.3.4;proto=https"),
    ("x-real-ip", "1.2.3.4"),
    ("x-forwarded-host", "admin.internal"),
    ("x-forwarded-proto", "http"),
    ("x-forwarded-port", "8080"),
    ("x-forwarded", "for=1.2.3.4"),
    ("forwarded-for", "1.2.3.4"),
    ("x-client-ip", "1.2.3.4"),
    ("true-client-ip", "1.2.3.4"),
    ("cf-connecting-ip", "1.2.3.4"),
    ("fastly-client-ip", "1.2.3.4"),
    ("x-cluster-client-ip", "1.2.3.4"),
    ("x-original-forwarded-for", "1.2.3.4"),
    ("x-appengine-user-ip", "1.2.3.4"),
];

#[tokio::test]
async fn a_callers_own_x_forwarded_for_is_replaced_by_its_address() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let c = s.client(Some(ONBOARDING));
        assert_eq!(forwarded_for_seen(&s, &c, &[]).await, ["127.0.0.1"]);
        assert_eq!(
            forwarded_for_seen(&s, &c, &CLAIMED_ORIGIN).await,
            ["127.0.0.1"]
        );
        let seen = s.upstream.last();
        for (name, _) in &CLAIMED_ORIGIN[1..] {
            assert!(
                seen.headers.get(*name).is_none(),
                "{name} reached the upstream"
            );
        }
        let two_lines = [
            ("x-forwarded-for", "198.51.100.1, 203.0.113.7"),
            ("x-forwarded-for", "192.0.2.9"),
        ];
        assert_eq!(forwarded_for_seen(&s, &c, &two_lines).await, ["127.0.0.1"]);
    })
    .await
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_its_address_appended() {
    within(async {
        let s = Setup::start_with(UpstreamMode::Echo, |c| {
            c.listener
                .extra
                .insert("trusted_proxies".into(), strings(&["127.0.0.0/8"]));
        })
        .await;
        let c = s.client(Some(ONBOARDING));
        assert_eq!(forwarded_for_seen(&s, &c, &[]).await, ["127.0.0.1"]);
        assert_eq!(
            forwarded_for_seen(&s, &c, &CLAIMED_ORIGIN).await,
            ["1.2.3.4, 127.0.0.1"]
        );
        let seen = s.upstream.last();
        for (name, value) in &CLAIMED_ORIGIN[1..] {
            assert_eq!(seen.headers.get(*name).unwrap(), value, "{name}");
        }
        let two_lines = [
            ("x-forwarded-for", "198.51.100.1, 203.0.113.7"),
            ("x-forwarded-for", "192.0.2.9"),
        ];
        assert_eq!(
            forwarded_for_seen(&s, &c, &two_lines).await,
            ["198.51.100.1, 203.0.113.7, 192.0.2.9, 127.0.0.1"]
        );
    })
    .await
}

/// A TLS connection to the gateway as ONBOARDING speaking HTTP/1.1, for bytes no HTTP
/// client would send.
async fn raw_tls(s: &Setup) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.gw.port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(s.client(Some(ONBOARDING)).config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

#[tokio::test]
async fn trace_and_connect_never_reach_the_upstream() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        for h2 in [false, true] {
            let c = Client::new(&s.pki, Some(ONBOARDING), s.gw.port, h2);
            let reply = c.send("TRACE", DECISION, &[], "").await.unwrap();
            assert_eq!(reply.status, 405, "TRACE over h2={h2}");
        }
        // CONNECT's target is an authority, never a path: nothing to route.
        let mut tls = raw_tls(&s).await;
        tls.write_all(b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nhost: 127.0.0.1:443\r\n\r\n")
            .await
            .unwrap();
        let mut head = vec![0u8; 1024];
        let n = tls.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..n]);
        assert!(head.starts_with("HTTP/1.1 4"), "{head}");
        assert!(s.upstream.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn ambiguous_paths_get_400_and_never_reach_the_upstream() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let ambiguous = [
            "/v3/session/x/../abc/decision/",
            "/v1/profile/../../v3/session/abc/decision/",
            "/v3/session/./abc/decision/",
            "/v3/session/a%2fb/decision/",
            "/v3/session/a%2Fb/decision/",
            "/v3/session/%2e%2e/decision/",
            "/v3//session/abc/decision/",
            "/v3/session/abc//decision/",
            "/v3/session/a%5cb/decision/",
        ];
        for c in [s.client(Some(ONBOARDING)), s.client_h2(Some(ONBOARDING))] {
            for path in ambiguous {
                let r = c.get(path).await.unwrap();
                let p = assert_problem(&r, 400, &[]);
                assert_eq!(
                    p["type"], "https://idgate.dev/problems/ambiguous-path",
                    "{path}"
                );
            }
        }
        assert!(
            s.upstream.requests().is_empty(),
            "reached the upstream: {:?}",
            s.upstream
                .requests()
                .iter()
                .map(|r| r.path_and_query.clone())
                .collect::<Vec<_>>()
        );
    })
    .await
}
