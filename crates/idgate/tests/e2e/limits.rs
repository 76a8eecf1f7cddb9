//! Connection limits on the listener: per client address, and the age after which a
//! connection is retired.

use std::time::Duration;

use crate::assert_eventually;
use crate::support::*;

const PATH: &str = "/v1/anything";

/// A gateway in front of `upstream` whose `[listener]` gets `listener_extra`.
async fn gateway(pki: &Pki, upstream: &TestUpstream, listener_extra: toml::Table) -> Gateway {
    OneRoute {
        url: &upstream.url(false),
        listener_extra,
        ..OneRoute::default()
    }
    .start(pki, &[])
    .await
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_closed_at_accept() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(&pki, &upstream, toml::toml! { max_connections_per_ip = 2 }).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        let mut first = client.connect().await.unwrap();
        let mut second = client.connect().await.unwrap();
        assert_eq!(first.send("GET", PATH, &[], "").await.unwrap().status, 200);
        assert_eq!(second.send("GET", PATH, &[], "").await.unwrap().status, 200);
        // A third from the same address does not get a handshake.
        let third = match client.connect().await {
            Ok(mut c) => c.send("GET", PATH, &[], "").await.map(|r| r.status),
            Err(e) => Err(e),
        };
        assert!(third.is_err(), "a third connection was served: {third:?}");

        // A place freed is a place available again.
        drop(first);
        assert_eventually!(
            match client.connect().await {
                Ok(mut c) => c
                    .send("GET", PATH, &[], "")
                    .await
                    .is_ok_and(|r| r.status == 200),
                Err(_) => false,
            },
            "no connection accepted after one closed"
        );
        assert_eq!(second.send("GET", PATH, &[], "").await.unwrap().status, 200);

        let (_, metrics) = admin_get(gw.admin_port, "/metrics").await.unwrap();
        assert!(
            metrics
                .contains(r#"idgate_connections_refused_total{reason="max_connections_per_ip"} "#),
            "{metrics}"
        );
        assert_eventually!(
            gw.output()
                .contains("connection refused at accept: limit reached"),
            "{}",
            gw.output()
        );
    })
    .await
}

#[tokio::test]
async fn a_connection_past_its_max_age_finishes_its_request_then_closes() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let gw = gateway(&pki, &upstream, toml::toml! { max_connection_age = "1s" }).await;
        for h2 in [false, true] {
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, h2);
            let mut conn = client.connect().await.unwrap();
            // In flight when the connection turns one second old: answered all the same.
            let r = conn.send("GET", PATH, &[], "").await.unwrap();
            assert_eq!(r.status, 200, "h2 {h2}: {:?}", r.body);
            // Then the connection is gone: the next request needs a new one.
            let again = conn.send("GET", PATH, &[], "").await;
            assert!(
                again.is_err(),
                "h2 {h2}: a retired connection served {again:?}"
            );
            let r = client.get(PATH).await.unwrap();
            assert_eq!(r.status, 200);
        }
    })
    .await
}

#[tokio::test]
async fn an_idle_http2_connection_is_told_to_go_away_but_not_while_a_request_runs() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let gw = gateway(&pki, &upstream, toml::toml! { idle_timeout = "1s" }).await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let mut conn = client.connect().await.unwrap();
        // Longer than the idle timeout, but a request is running: not idle.
        let r = conn.send("GET", PATH, &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        // Then nothing but keep-alive pings for twice the idle timeout: GOAWAY.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let again = conn.send("GET", PATH, &[], "").await;
        assert!(
            again.is_err(),
            "an idle HTTP/2 connection still served {again:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_http2_connection_without_a_preface_is_closed_at_idle_timeout() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        // The grace an idle connection gets to finish is at least 30 s.
        let gw = gateway(&pki, &upstream, toml::toml! { idle_timeout = "1s" }).await;
        // h2 negotiated, then not a byte: no preface, no request.
        let (mut silent, at) = tls_with(&pki, &gw, true).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), until_closed(&mut silent)).await;
        let lived = at.elapsed();
        assert!(
            closed.is_ok(),
            "a silent HTTP/2 connection was still open after {lived:?}"
        );
        assert!(
            lived >= Duration::from_millis(900) && lived < Duration::from_secs(4),
            "a silent HTTP/2 connection lived {lived:?}"
        );
    })
    .await
}

#[tokio::test]
async fn an_http2_connection_stalled_inside_its_preface_or_a_header_block_is_closed_soon_after_idle_timeout()
 {
    use tokio::io::AsyncWriteExt;
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        // Without a request to finish, the 30 s grace of an idle connection is not given.
        let gw = gateway(&pki, &upstream, toml::toml! { idle_timeout = "1s" }).await;
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
        // A HEADERS frame of stream 1 without END_HEADERS: a CONTINUATION is owed.
        let mut open_block = preface.to_vec();
        open_block.extend_from_slice(&[0, 0, 1, 0x1, 0x0, 0, 0, 0, 1, 0x82]);
        for (what, bytes) in [
            ("half a preface", &b"PRI * HTTP/2.0\r\n"[..]),
            ("a header block never ended", &open_block[..]),
        ] {
            let (mut stalled, at) = tls_with(&pki, &gw, true).await;
            stalled.write_all(bytes).await.unwrap();
            stalled.flush().await.unwrap();
            let closed =
                tokio::time::timeout(Duration::from_secs(15), until_closed(&mut stalled)).await;
            let lived = at.elapsed();
            assert!(closed.is_ok(), "{what}: still open after {lived:?}");
            assert!(
                lived >= Duration::from_millis(900) && lived < Duration::from_secs(8),
                "{what}: the connection lived {lived:?}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn an_http2_connection_that_sent_its_preface_is_told_to_go_away_at_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(&pki, &upstream, toml::toml! { idle_timeout = "1s" }).await;
        // A pooled client: its preface and SETTINGS, then nothing, as if waiting for work.
        let (mut pooled, at) = tls_with(&pki, &gw, true).await;
        pooled
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        pooled.flush().await.unwrap();
        // The frames the gateway sends, until a GOAWAY or the end of the connection.
        let goaway = tokio::time::timeout(Duration::from_secs(10), async {
            let mut header = [0u8; 9];
            loop {
                if pooled.read_exact(&mut header).await.is_err() {
                    return None;
                }
                let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0u8; len];
                if pooled.read_exact(&mut payload).await.is_err() {
                    return None;
                }
                if header[3] == 0x7 {
                    return Some(payload);
                }
            }
        })
        .await;
        let lived = at.elapsed();
        let Ok(goaway) = goaway else {
            panic!("an idle HTTP/2 connection was neither told to go away nor closed after {lived:?}");
        };
        let Some(goaway) = goaway else {
            panic!("an idle HTTP/2 connection that sent its preface was closed without a GOAWAY after {lived:?}");
        };
        assert_eq!(
            goaway.get(4..8),
            Some(&[0u8, 0, 0, 0][..]),
            "GOAWAY not NO_ERROR"
        );
        assert!(
            lived >= Duration::from_millis(900) && lived < Duration::from_secs(4),
            "GOAWAY after {lived:?}"
        );
    })
    .await
}

/// An HTTP/1.1 upstream on loopback whose `/v1/drip` answers its head at once, then its
/// body one piece every `every`, `pieces` in all; anything else is answered at once.
async fn dripping_upstream(
    pieces: usize,
    every: Duration,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    if head.split(' ').nth(1) == Some("/v1/drip") {
                        let _ = tcp
                            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                            .await;
                        for _ in 0..pieces {
                            tokio::time::sleep(every).await;
                            if tcp.write_all(b"5\r\ndrip\n\r\n").await.is_err() {
                                return;
                            }
                        }
                        if tcp.write_all(b"0\r\n\r\n").await.is_err() {
                            return;
                        }
                    } else if tcp
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_long_http2_response_body_is_not_cut_off_by_idle_timeout() {
    within(async {
        let pki = Pki::default_pki();
        // The body streams for three idle timeouts after its head.
        let (url, upstream) = dripping_upstream(6, Duration::from_millis(500)).await;
        let gw = OneRoute {
            url: &url,
            listener_extra: toml::toml! { idle_timeout = "1s" },
            ..OneRoute::default()
        }
        .start(&pki, &[])
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let mut conn = client.connect().await.unwrap();
        let r = conn.send("GET", "/v1/drip", &[], "").await.unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body, "drip\n".repeat(6), "{}", gw.output());
        // A connection taken for idle while the body streamed would have been sent GOAWAY,
        // and closed a grace later whatever it was still sending: it takes no new request.
        let again = conn.send("GET", PATH, &[], "").await;
        assert!(
            again.as_ref().is_ok_and(|r| r.status == 200),
            "the connection was told to go away while a response body streamed: {again:?}\n{}",
            gw.output()
        );
        upstream.abort();
    })
    .await
}

#[tokio::test]
async fn check_refuses_connection_limits_that_cannot_work() {
    let pki = Pki::default_pki();
    for (extra, reason) in [
        (
            toml::toml! { max_connections_per_ip = 0 },
            "must be more than zero",
        ),
        (
            toml::toml! {
                max_connections = 10
                max_connections_per_ip = 11
            },
            "must not be more than listener.max_connections",
        ),
        (
            toml::toml! { max_connection_age = "0s" },
            "must be more than zero",
        ),
    ] {
        let mut config = base_config(&pki)
            .upstream(UpstreamSpec::new("u", "http://127.0.0.1:9"))
            .route(RouteSpec::get("r", "/x", "u"));
        config.listener.extra = extra.clone();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idgate.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        let (code, out, err) = run(std::process::Command::new(bin())
            .arg("check")
            .arg("--config")
            .arg(&path));
        assert_eq!(code, 2, "{extra}: {out}{err}");
        assert!(
            err.contains(reason) || out.contains(reason),
            "{extra}: {out}{err}"
        );
        assert!(
            err.contains("listener.") || out.contains("listener."),
            "{out}{err}"
        );
    }
}

/// A TLS connection to `gw` as `ONBOARDING` speaking HTTP/1.1, and when its handshake ended.
async fn h1_tls(
    pki: &Pki,
    gw: &Gateway,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    std::time::Instant,
) {
    tls_with(pki, gw, false).await
}

/// A TLS connection to `gw` as `ONBOARDING` that negotiated `h2` or HTTP/1.1, and when its
/// handshake ended.
async fn tls_with(
    pki: &Pki,
    gw: &Gateway,
    h2: bool,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    std::time::Instant,
) {
    let (cert, key) = pki.workload(ONBOARDING);
    let config = tls_client_config(
        &pki.files.bundle,
        Some((&cert, &key)),
        h2,
        rustls::DEFAULT_VERSIONS,
    );
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    (tls, std::time::Instant::now())
}

/// Reads one response (head and a `content-length` body) off an HTTP/1.1 connection; its
/// head, lower-cased.
async fn read_h1_response(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tls.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {text}"));
    let mut body = vec![0u8; length];
    tls.read_exact(&mut body).await.unwrap();
    text
}

#[tokio::test]
async fn an_http1_keep_alive_connection_closes_idle_timeout_after_its_last_response() {
    use tokio::io::AsyncWriteExt;
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let gw = gateway(&pki, &upstream, toml::toml! { idle_timeout = "1s" }).await;
        const GET: &[u8] = b"GET /v1/anything HTTP/1.1\r\nhost: localhost\r\n\r\n";

        // Answered after longer than the idle timeout (a request in progress is not
        // idleness), twice on the one connection; then, silent, closed a second later.
        let (mut idle, _) = h1_tls(&pki, &gw).await;
        for _ in 0..2 {
            idle.write_all(GET).await.unwrap();
            let head = read_h1_response(&mut idle).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
        }
        let answered = std::time::Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut idle))
            .await
            .expect("an idle keep-alive connection was still open 5 s after its last response");
        let lived = answered.elapsed();
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        assert!(
            lived >= Duration::from_millis(800) && lived < Duration::from_millis(2500),
            "an idle keep-alive connection lived {lived:?} after its last response"
        );

        // A next head sent a few bytes at a time, never finished: the bytes do not keep
        // the connection, which closes a second after the last response.
        let (mut trickled, _) = h1_tls(&pki, &gw).await;
        trickled.write_all(GET).await.unwrap();
        read_h1_response(&mut trickled).await;
        let answered = std::time::Instant::now();
        let mut sent = 0;
        let closed = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if sent >= 20 || trickled.write_all(b"x-a: b\r\n").await.is_err() {
                break answered.elapsed();
            }
            sent += 1;
            if trickled.flush().await.is_err() {
                break answered.elapsed();
            }
            // Closed by the gateway: a read sees the end at once.
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(
                Duration::from_millis(1),
                tokio::io::AsyncReadExt::read(&mut trickled, &mut byte),
            )
            .await;
            if matches!(read, Ok(Ok(0) | Err(_))) {
                break answered.elapsed();
            }
        };
        assert!(
            closed < Duration::from_millis(2500),
            "a trickled head held the connection {closed:?} after the last response ({sent} writes)"
        );
    })
    .await
}

/// Reads until the gateway ends the connection; returns what it sent.
async fn until_closed(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn an_http1_connection_gets_idle_timeout_from_its_handshake_for_its_first_request_head() {
    use tokio::io::AsyncWriteExt;
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let gw = gateway(&pki, &upstream, toml::toml! { idle_timeout = "2s" }).await;

        // Silent after the handshake: closed at the idle timeout, not before.
        let (mut silent, at) = h1_tls(&pki, &gw).await;
        let got = until_closed(&mut silent).await;
        let lived = at.elapsed();
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        assert!(
            lived >= Duration::from_millis(1800) && lived < Duration::from_secs(4),
            "a silent connection lived {lived:?}"
        );

        // Part of a head late in the idle timeout: it does not buy a fresh one.
        let (mut partial, _) = h1_tls(&pki, &gw).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // Taken before the bytes can reach the gateway: a fresh idle timeout would end no
        // sooner than 2 s after this instant, the handshake's ends about 0.5 s after it.
        let wrote = std::time::Instant::now();
        partial
            .write_all(b"GET /v1/anything HTTP/1.1\r\n")
            .await
            .unwrap();
        let got = until_closed(&mut partial).await;
        let lived = wrote.elapsed();
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        assert!(
            lived < Duration::from_secs(2),
            "a connection with an unfinished head lived {lived:?} after it"
        );

        // A request sent after a pause is answered; so is one after a second pause that ends
        // past the first request's deadline: later requests get the idle timeout afresh.
        let (mut late, _) = h1_tls(&pki, &gw).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        late.write_all(b"GET /v1/anything HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let text = read_h1_response(&mut late).await;
        assert!(text.starts_with("http/1.1 200"), "{text}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        late.write_all(
            b"GET /v1/anything HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let got = until_closed(&mut late).await;
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    })
    .await
}
