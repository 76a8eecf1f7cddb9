//! What the ownership guards do with upstream answers they cannot read: a compressed or
//! non-JSON 2xx is refused from its head at once (the caller never waits on its body), a
//! 2xx without the object's id is withheld, and answers that are not 2xx pass unread.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// The head (and body) the upstream sends for `/t/{case}`; the body of a head announcing
/// more is never sent.
fn answer(case: &str) -> &'static str {
    match case {
        "gzip" => {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: 100000\r\n\r\n"
        }
        "html" => {
            "HTTP/1.1 201 Created\r\ncontent-type: text/html\r\ncontent-length: 100000\r\n\r\n"
        }
        "huge" => {
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2000000\r\n\r\n"
        }
        "no-id" => {
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 13\r\n\r\n{\"other\":\"x\"}"
        }
        "refused" => {
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbad"
        }
        _ => {
            "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 10\r\n\r\n{\"id\":\"1\"}"
        }
    }
}

/// A plain-HTTP upstream answering each request by its path's last segment.
async fn scripted_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let path = line.split(' ').nth(1).unwrap_or("/");
                let case = path.rsplit('/').next().unwrap_or("");
                let answer = answer(case);
                let _ = sock.write_all(answer.as_bytes()).await;
                // Hold the connection when a body announced is never sent: it stays owed.
                if !answer.contains("connection: close") {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn answers_the_guard_cannot_read_are_refused_at_once_or_passed_unread() {
    within(async {
        let pki = Pki::default_pki();
        let url = scripted_upstream().await;
        let config = base_config(&pki)
            .upstream(UpstreamSpec::new("raw", &url).with("request_timeout", "20s"))
            .route(
                RouteSpec::new("create", &["POST"], "/t/{case}", "raw", &[ONBOARDING])
                    .with("owns", "$.id"),
            );
        let gw = Gateway::start(&config, &[]).await;
        let c = Client::new(&pki, Some(ONBOARDING), gw.port, false);

        for case in ["gzip", "html", "huge", "no-id"] {
            let start = Instant::now();
            let r = c
                .send("POST", &format!("/t/{case}"), &[], "")
                .await
                .unwrap();
            assert_eq!(r.status, 502, "{case}: {:?}", r.body);
            assert_eq!(
                r.json()["type"],
                "https://idgate.dev/problems/unreadable-response",
                "{case}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{case} waited on the body"
            );
        }
        let r = c.send("POST", "/t/refused", &[], "").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (400, &b"bad"[..]));
        let r = c.send("POST", "/t/ok", &[], "").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (201, &br#"{"id":"1"}"#[..]));
        assert_eq!(r.header("content-length"), Some("10"));
    })
    .await;
}
