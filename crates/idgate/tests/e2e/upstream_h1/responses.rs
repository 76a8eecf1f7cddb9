//! Responses from the upstream: chunked and close-delimited bodies, framing that could be
//! read two ways, interim responses, HEAD, a body cut short, a body that trickles or stalls,
//! and an upstream that never answers.

use std::time::{Duration, Instant};

use crate::assert_eventually;
use crate::support::*;

use super::{Answer, RawUpstream, TOKEN, client, gateway, ok};

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
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
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
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
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
async fn answers_the_gateway_could_misread_or_pass_on_misframed_are_refused_or_mended() {
    within(async {
        let upstream = RawUpstream::start(|n, _| match n {
            // A transfer coding the gateway cannot undo: its bytes would reach the caller
            // under a framing that no longer says they are compressed.
            0 => Answer::SendAndClose(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            ),
            1 => Answer::Send(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\nhello"
                    .to_vec(),
            ),
            // `close` beside a byte that is not ASCII: the connection must not be reused.
            2 => Answer::Send(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\xff\r\n\r\nok"
                    .to_vec(),
            ),
            _ => Answer::Send(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext".to_vec()),
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
        let c = client(&pki, &gw);

        let r = c.get("/gzip").await.unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert!(!String::from_utf8_lossy(&r.body).contains("hello"));

        let r = c.get("/repeated-length").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        let lengths: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"]);
        assert_eq!(upstream.connections(), 2, "the second answer's connection is kept");

        let r = c.get("/unreadable-connection").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        let r = c.get("/after").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"next"[..]));
        assert_eq!(
            upstream.connections(),
            3,
            "an unreadable Connection header ends its connection"
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
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
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
        // The POST carried a body, so its connection ended with it; the HEAD's answer
        // announced a body it did not carry, so its connection ended too (bytes its upstream
        // sent after it anyway must not reach the next request): the GET had one of its own.
        assert_eq!(upstream.connections(), 3);
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
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
        let r = client(&pki, &gw).get("/short").await;
        assert!(
            r.is_err(),
            "a truncated body reached the caller as complete: {r:?}"
        );
    })
    .await
}

#[tokio::test]
async fn a_chunk_size_beyond_64_bits_ends_the_body_instead_of_being_read_modulo() {
    within(async {
        // Read modulo 2^64 the size would be 5 and `hello` a complete body.
        let upstream = RawUpstream::start(|_, _| {
            Answer::SendAndClose(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                  10000000000000005\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            )
        })
        .await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, toml::Table::new()).await;
        // The head may already be on its way when the size line is read, so the caller sees
        // either a 502 or a body that ends in error; never `hello` as a complete body.
        match client(&pki, &gw).get("/huge-chunk").await {
            Err(_) => {}
            Ok(r) => {
                assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(&r.body));
                assert!(!String::from_utf8_lossy(&r.body).contains("hello"));
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_504() {
    within(async {
        let upstream = RawUpstream::start(|_, _| Answer::Hang).await;
        let pki = Pki::default_pki();
        let gw = gateway(&pki, &upstream, toml::toml! { request_timeout = "300ms" }).await;
        let r = client(&pki, &gw).get("/slow").await.unwrap();
        assert_eq!(r.status, 504);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    })
    .await
}

#[tokio::test]
async fn a_response_body_that_trickles_or_stalls_is_cut_off_with_either_client() {
    within_limit(Duration::from_secs(20), async {
        // A byte every 50 ms: each wait is far within the read timeout (request_timeout),
        // and the body would never end; only the whole body's time limit cuts it.
        let dripping = RawUpstream::start(|_, _| {
            Answer::Drip(
                b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nstart".to_vec(),
                Duration::from_millis(50),
            )
        })
        .await;
        // Some bytes, then nothing on a connection kept open: the read timeout cuts it.
        let stalled = RawUpstream::start(|_, _| {
            Answer::Trickle(vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec(),
                b"start".to_vec(),
            ])
        })
        .await;
        let pki = Pki::default_pki();
        for client_kind in ["native", "hyper"] {
            for (upstream, limits, what, reason) in [
                (
                    &dripping,
                    toml::toml! { response_body_timeout = "700ms" },
                    "a body trickling past response_body_timeout",
                    "body_timeout",
                ),
                (
                    &stalled,
                    toml::toml! { request_timeout = "700ms" },
                    "a body pausing past the read timeout",
                    "read_timeout",
                ),
            ] {
                let mut extra = limits;
                extra.insert("client".into(), client_kind.into());
                let gw = gateway(&pki, upstream, extra).await;
                let started = Instant::now();
                let r = client(&pki, &gw).get("/slow-body").await;
                let took = started.elapsed();
                assert!(
                    r.is_err(),
                    "{what} ({client_kind}) reached the caller as complete: {r:?}"
                );
                assert!(
                    took >= Duration::from_millis(600) && took < Duration::from_secs(10),
                    "{what} ({client_kind}) was cut after {took:?}, not at its limit"
                );
                // The access line went out with the head (200): the cut is counted and
                // logged on its own, with the request's id.
                let series = format!(
                    "idgate_upstream_body_errors_total{{upstream=\"provider\",reason=\"{reason}\"}} 1"
                );
                assert_eventually!(
                    admin_get(gw.admin_port, "/metrics")
                        .await
                        .is_ok_and(|(_, m)| m.lines().any(|l| l == series)),
                    "{what} ({client_kind}) not counted as {series}"
                );
                // The log is read from the gateway's output as it comes: wait for the line.
                let logged = |out: &str| {
                    out.lines().any(|l| {
                        l.contains("the upstream's body broke off")
                            && l.contains(&format!("\"reason\":\"{reason}\""))
                            && l.contains("\"request_id\":\"")
                    })
                };
                assert_eventually!(
                    logged(&gw.output()),
                    "{what} ({client_kind}) not logged with its reason and request id: {}",
                    gw.output()
                );
            }
        }
    })
    .await
}
