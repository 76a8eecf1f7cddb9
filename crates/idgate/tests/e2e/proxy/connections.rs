//! Connections from callers: HTTP/1.1 and HTTP/2 by ALPN, keep-alive, the TLS versions
//! allowed, and required or optional client authentication.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::assert_eventually;
use crate::support::*;

use super::{DECISION, Setup, assert_problem};

// ------------------------------------------------------------------------ HTTP versions

#[tokio::test]
async fn serves_http1_and_http2_chosen_by_alpn() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let r = s.client(Some(ONBOARDING)).get(DECISION).await.unwrap();
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_11));
        let r = s.client_h2(Some(ONBOARDING)).get(DECISION).await.unwrap();
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));
        // A gateway-made problem over HTTP/2 too.
        let r = s.client_h2(Some(FRONTEND)).get(DECISION).await.unwrap();
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_problem(&r, 403, &[]);
    })
    .await
}

#[tokio::test]
async fn http1_connection_stays_usable_after_a_refused_upload() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let mut conn = s.client(Some(FRONTEND)).connect().await.unwrap();
        let body = "x".repeat(512 * 1024);
        let r = conn.send("POST", "/v2/session/", &[], &body).await.unwrap();
        assert_problem(&r, 403, &[]);
        assert!(r.header("connection").is_none(), "{:?}", r.headers);
        // The refused body was read away, so the next request follows on the same connection.
        let r = conn.send("GET", "/v1/profile/p1", &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(s.upstream.requests().len(), 1);
    })
    .await
}

#[tokio::test]
async fn http1_keep_alive_serves_several_requests_on_one_connection() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let mut conn = s.client(Some(ONBOARDING)).connect().await.unwrap();
        for i in 0..5 {
            let path = format!("/v3/session/s{i}/decision/");
            let r = conn.send("GET", &path, &[], "").await.unwrap();
            assert_eq!(
                (r.status, r.version),
                (200, http::Version::HTTP_11),
                "request {i}"
            );
            assert_eq!(s.upstream.last().path_and_query, path);
        }
        // A gateway-made problem does not end the connection either.
        let r = conn.send("GET", "/nowhere", &[], "").await.unwrap();
        assert_problem(&r, 404, &[]);
        let r = conn.send("GET", DECISION, &[], "").await.unwrap();
        assert_eq!(r.status, 200);
    })
    .await
}

// --------------------------------------------------------------------------- TLS policy

#[tokio::test]
async fn rejects_plain_http_on_tls_listener() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.gw.port))
            .await
            .unwrap();
        tcp.write_all(b"GET /v3/session/abc/decision/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got)).await;
        assert!(
            read.is_ok(),
            "the gateway kept a plain-HTTP connection open"
        );
        assert!(
            !got.starts_with(b"HTTP/"),
            "plain HTTP got an HTTP answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        // At most a TLS alert record (content type 21).
        assert!(
            got.is_empty() || got[0] == 0x15,
            "unexpected bytes: {got:?}"
        );
        assert!(s.upstream.requests().is_empty());
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_tls_1_1_clients() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let (crt, key) = s.pki.workload(ONBOARDING);
        let port = s.gw.port;
        let out = tokio::task::spawn_blocking(move || {
            run_bounded(
                std::process::Command::new("openssl").args([
                    "s_client",
                    "-tls1_1",
                    // Let this client offer TLS 1.1 at all (distributions disable it by default),
                    // so that the refusal is the gateway's.
                    "-cipher",
                    "DEFAULT@SECLEVEL=0",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-servername",
                    "localhost",
                    "-cert",
                    crt.to_str().unwrap(),
                    "-key",
                    key.to_str().unwrap(),
                ]),
                Duration::from_secs(15),
            )
        })
        .await
        .unwrap();
        let (code, stdout, stderr) = out;
        let all = format!("{stdout}\n{stderr}");
        // An openssl that cannot offer TLS 1.1 fails on its own, and would prove nothing.
        assert!(
            !(all.contains("no protocols available")
                || all.contains("unknown option")
                || all.contains("Option unknown")),
            "the local openssl cannot offer TLS 1.1 (even at SECLEVEL=0), so the gateway's \
             refusal would go untested:\n{all}"
        );
        assert_ne!(code, 0, "openssl completed a TLS 1.1 handshake:\n{all}");
        assert!(
            all.contains("Cipher is (NONE)") || all.contains("alert"),
            "no sign of a refused handshake:\n{all}"
        );
        assert!(!all.contains("New, TLSv1.1"), "{all}");
        assert_eventually!(
            s.gw.output().contains("TLS handshake refused"),
            "the gateway did not log the refused handshake:\n{}",
            s.gw.output()
        );
        assert!(s.upstream.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn accepts_tls_1_2_clients_by_default() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        let (crt, key) = s.pki.workload(ONBOARDING);
        let c = Client {
            config: tls_client_config(
                &s.pki.files.bundle,
                Some((&crt, &key)),
                false,
                &[&rustls::version::TLS12],
            ),
            port: s.gw.port,
            h2: false,
        };
        let r = c.get(DECISION).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    })
    .await
}

#[tokio::test]
async fn tls_min_version_1_3_refuses_tls_1_2_clients() {
    within(async {
        let s = Setup::start_with(UpstreamMode::Echo, |c| {
            c.listener.tls_min_version = Some(TlsVersion::V1_3);
        })
        .await;
        let (crt, key) = s.pki.workload(ONBOARDING);
        let client = |versions: &[&'static rustls::SupportedProtocolVersion]| Client {
            config: tls_client_config(&s.pki.files.bundle, Some((&crt, &key)), false, versions),
            port: s.gw.port,
            h2: false,
        };
        let refused = client(&[&rustls::version::TLS12]).get(DECISION).await;
        assert!(
            refused.is_err(),
            "a TLS 1.2 client got an answer: {refused:?}"
        );
        assert!(s.upstream.requests().is_empty());

        let r = client(&[&rustls::version::TLS13])
            .get(DECISION)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    })
    .await
}

// ----------------------------------------------------------------- client authentication

#[tokio::test]
async fn required_client_auth_refuses_connections_without_a_certificate() {
    within(async {
        let s = Setup::start(UpstreamMode::Echo).await;
        for c in [s.client(None), s.client_h2(None)] {
            // In TLS 1.3 the client finishes its side before the server reads its (empty)
            // certificate, so the refusal may show only on the first request.
            match c.get(DECISION).await {
                Err(_) => {}
                Ok(r) => assert!(
                    !(200..300).contains(&r.status),
                    "a caller without a certificate got {}: {:?}",
                    r.status,
                    r.body
                ),
            }
        }
        assert!(s.upstream.requests().is_empty());
        assert_eventually!(
            s.gw.output().contains("TLS handshake refused"),
            "no log of the refused handshake:\n{}",
            s.gw.output()
        );
    })
    .await
}

#[tokio::test]
async fn optional_client_auth_answers_401_with_a_challenge_without_a_certificate() {
    within(async {
        let s = Setup::start_with(UpstreamMode::Echo, |c| {
            c.listener.client_auth = ClientAuth::Optional;
        })
        .await;
        for c in [s.client(None), s.client_h2(None)] {
            let mut conn = c
                .connect()
                .await
                .expect("the handshake completes without a certificate");
            let r = conn.send("GET", DECISION, &[], "").await.unwrap();
            let p = assert_problem(&r, 401, &[]);
            assert_eq!(
                p["type"],
                "https://idgate.dev/problems/client-certificate-required"
            );
            let challenge = r
                .header("www-authenticate")
                .expect("a 401 carries WWW-Authenticate");
            assert!(!challenge.is_empty());
            // The route comes before authentication: an unknown path is a 404, not a 401.
            let r = conn.send("GET", "/nowhere", &[], "").await.unwrap();
            assert_problem(&r, 404, &[]);
        }
        assert!(s.upstream.requests().is_empty());
        // With a certificate, the same listener serves the route.
        let r = s.client(Some(ONBOARDING)).get(DECISION).await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    })
    .await
}
