//! Connecting to an upstream: `connect_timeout` bounds the TCP connect and the TLS handshake
//! together, whichever client the upstream has.

use std::time::{Duration, Instant};

use crate::support::*;

/// A loopback endpoint that accepts connections and never says a word: the TCP connect
/// succeeds, a TLS handshake never ends.
async fn silent_endpoint() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_hyper_upstream_stalling_its_tls_handshake_fails_at_connect_timeout_as_a_connect_failure()
{
    within(async {
        let pki = Pki::default_pki();
        let (port, silent) = silent_endpoint().await;
        let url = format!("https://localhost:{port}");
        // The two ways an upstream gets hyper's client.
        for extra in [
            toml::toml! {
                client = "hyper"
                connect_timeout = "500ms"
                request_timeout = "20s"
            },
            toml::toml! {
                http2 = true
                connect_timeout = "500ms"
                request_timeout = "20s"
            },
        ] {
            let gw = OneRoute {
                url: &url,
                upstream_extra: extra.clone(),
                ..OneRoute::default()
            }
            .start(&pki, &[])
            .await;
            let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
            let started = Instant::now();
            let r = client.get("/v1/anything").await.unwrap();
            let took = started.elapsed();
            // Unreachable (502), not timed out (504): nothing was sent, so the request is
            // one that may be retried or failed over whatever its method.
            assert_eq!(r.status, 502, "{extra}: {:?}\n{}", r.body, gw.output());
            assert!(
                r.json()["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("upstream-unreachable")),
                "{extra}: {:?}",
                r.body
            );
            assert!(
                took < Duration::from_secs(5),
                "{extra}: answered after {took:?}, not at connect_timeout"
            );
        }
        silent.abort();
    })
    .await
}
