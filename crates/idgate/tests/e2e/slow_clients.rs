//! Callers that stop reading (`send_timeout`) and fan-out onto one upstream
//! (`max_connections`, `max_pending`, `pending_timeout`), against an upstream scripted over
//! a raw socket that counts its connections and sees when one is closed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::*;

/// What the gateway is given per `send_timeout` in these tests (`[listener]`), and how long
/// the test allows for it to act.
fn send_timeout() -> toml::Table {
    toml::toml! { send_timeout = "1s" }
}
const ACTS_WITHIN: Duration = Duration::from_secs(15);

/// An HTTP/1.1 upstream: `/big` streams a 1 GiB body until the gateway stops taking it;
/// `/masked` answers at once with [`masked_answer`]; `/slow` answers after `delay`; anything
/// else answers at once with a short body.
struct Upstream {
    port: u16,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// When a `/big` body could no longer be written (the gateway closed the connection).
    big_closed: Arc<Mutex<Option<Instant>>>,
    closed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let big_closed = Arc::new(Mutex::new(None));
        let closed = Arc::new(Notify::new());
        let (conns, big, notify) = (connections.clone(), big_closed.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp, delay, big.clone(), notify.clone()));
            }
        });
        Self {
            port,
            connections,
            big_closed,
            closed,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits until the connection of a `/big` body was closed by the gateway.
    async fn big_body_abandoned(&self) -> Instant {
        loop {
            let notified = self.closed.notified();
            if let Some(at) = *self.big_closed.lock().unwrap() {
                return at;
            }
            notified.await;
        }
    }
}

async fn serve(
    mut tcp: TcpStream,
    delay: Duration,
    big_closed: Arc<Mutex<Option<Instant>>>,
    closed: Arc<Notify>,
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        if target.ends_with("/big") {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n")
                .await;
            let piece = vec![b'x'; 64 * 1024];
            while tcp.write_all(&piece).await.is_ok() {}
            *big_closed.lock().unwrap() = Some(Instant::now());
            closed.notify_waiters();
            return;
        }
        if target.ends_with("/masked") {
            let answer = masked_answer();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                answer.len()
            );
            if tcp.write_all(head.as_bytes()).await.is_err()
                || tcp.write_all(&answer).await.is_err()
            {
                return;
            }
            continue;
        }
        if target.ends_with("/slow") {
            tokio::time::sleep(delay).await;
        }
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nfine";
        if tcp.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// About 512 KiB of JSON with a document number for the masking profile to mask: masked,
/// it is sent to the caller as one piece the gateway made.
fn masked_answer() -> Vec<u8> {
    format!(
        r#"{{"document_number":"BAA000589","pad":"{}"}}"#,
        "x".repeat(512 * 1024)
    )
    .into_bytes()
}

async fn gateway(
    pki: &Pki,
    upstream: &Upstream,
    listener: toml::Table,
    extra: toml::Table,
) -> Gateway {
    OneRoute {
        url: &upstream.url(),
        listener_extra: listener,
        upstream_extra: extra,
        ..OneRoute::default()
    }
    .start(pki, &[])
    .await
}

async fn metrics(gw: &Gateway) -> String {
    admin_get(gw.admin_port, "/metrics").await.unwrap().1
}

#[tokio::test]
async fn an_http1_caller_that_stops_reading_is_disconnected_and_the_upstream_released() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Upstream::start(Duration::ZERO).await;
        let gw = gateway(&pki, &upstream, send_timeout(), toml::Table::new()).await;
        let mut caller = tls_to(&pki, &gw, false).await;
        caller
            .write_all(b"GET /v1/big HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        let n = caller.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);

        // The caller reads nothing more: buffers fill, then the gateway gives up on it and
        // closes the upstream connection, whose body is incomplete.
        let stopped = Instant::now();
        tokio::time::timeout(ACTS_WITHIN, upstream.big_body_abandoned())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the upstream connection was still open {ACTS_WITHIN:?} after the caller stopped reading"
                )
            });
        // What was buffered still arrives; then the connection ends.
        let drained = tokio::time::timeout(ACTS_WITHIN, async {
            let mut sink = vec![0u8; 256 * 1024];
            loop {
                match caller.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the caller's connection stayed open");
        eprintln!(
            "caller disconnected {:?} after it stopped reading",
            stopped.elapsed()
        );
        assert!(
            metrics(&gw)
                .await
                .contains(r#"idgate_send_timeouts_total{kind="connection"} 1"#),
            "{}",
            metrics(&gw).await
        );
    })
    .await
}

/// Asks for `/v1/big` on `h2`, whose stream window the caller never opens, and checks that
/// the gateway resets the stream and closes the upstream connection behind it.
async fn big_stream_is_reset(
    h2: &mut h2::client::SendRequest<bytes::Bytes>,
    gw: &Gateway,
    upstream: &Upstream,
) {
    let uri = format!("https://localhost:{}/v1/big", gw.port);
    let (response, _) = h2
        .send_request(http::Request::get(uri).body(()).unwrap(), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();

    tokio::time::timeout(ACTS_WITHIN, upstream.big_body_abandoned())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the upstream connection was still open {ACTS_WITHIN:?} after the stream stalled"
            )
        });
    // Data up to the window, never released, then the reset.
    let end = tokio::time::timeout(ACTS_WITHIN, async {
        loop {
            match body.data().await {
                Some(Ok(_)) => {}
                other => return other.map(|r| r.map(drop)),
            }
        }
    })
    .await
    .expect("the stream was not reset");
    let reset = end.and_then(Result::err).and_then(|e| e.reason());
    assert_eq!(reset, Some(h2::Reason::CANCEL), "{:?}", gw.output());
    assert!(
        metrics(gw)
            .await
            .contains(r#"idgate_send_timeouts_total{kind="stream"} 1"#),
        "{}",
        metrics(gw).await
    );
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_closed_is_reset_and_the_connection_kept() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Upstream::start(Duration::ZERO).await;
        let gw = gateway(&pki, &upstream, send_timeout(), toml::Table::new()).await;
        let tls = tls_to(&pki, &gw, true).await;
        // The connection is served (pings answered) and its own window is wide: only the
        // stream's window is never opened past its initial 64 KiB.
        let (mut h2, connection) = h2::client::Builder::new()
            .initial_connection_window_size(16 << 20)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .unwrap();
        tokio::spawn(connection);
        big_stream_is_reset(&mut h2, &gw, &upstream).await;

        // The connection itself is still good for other requests.
        let uri = format!("https://localhost:{}/v1/small", gw.port);
        let (response, _) = h2
            .send_request(http::Request::get(uri).body(()).unwrap(), true)
            .unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
    })
    .await
}

#[tokio::test]
async fn an_http2_stream_to_a_caller_announcing_no_window_is_reset_and_the_upstream_released() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Upstream::start(Duration::ZERO).await;
        let gw = gateway(&pki, &upstream, send_timeout(), toml::Table::new()).await;
        let tls = tls_to(&pki, &gw, true).await;
        // SETTINGS_INITIAL_WINDOW_SIZE = 0: no DATA frame of the stream can ever be sent.
        let (mut h2, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .unwrap();
        tokio::spawn(connection);
        big_stream_is_reset(&mut h2, &gw, &upstream).await;
    })
    .await
}

/// A gateway with `send_timeout` whose route masks the document numbers of the upstream's
/// answers, so `/v1/masked` is answered with one piece the gateway made.
async fn masking_gateway(pki: &Pki, upstream: &Upstream) -> Gateway {
    let mut config = OneRoute {
        url: &upstream.url(),
        listener_extra: send_timeout(),
        ..OneRoute::default()
    }
    .config(pki);
    config.routes[0]
        .extra
        .insert("masking".to_owned(), "documents".into());
    let masking: toml::Table = toml::from_str(
        r#"profiles.documents.rules = [{ path = "$..document_number", action = "mask", keep = 3 }]"#,
    )
    .unwrap();
    Gateway::start(&config.section("masking", masking), &[]).await
}

#[tokio::test]
async fn an_http2_stream_with_a_one_byte_window_is_reset_within_send_timeout_for_a_masked_answer() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Upstream::start(Duration::ZERO).await;
        let gw = masking_gateway(&pki, &upstream).await;
        let tls = tls_to(&pki, &gw, true).await;
        // SETTINGS_INITIAL_WINDOW_SIZE = 1, and no WINDOW_UPDATE ever: one byte of the
        // answer can be sent, the rest never.
        let (mut h2, connection) = h2::client::Builder::new()
            .initial_window_size(1)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, bytes::Bytes>(tls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let uri = format!("https://localhost:{}/v1/masked", gw.port);
        let (response, _) = h2
            .send_request(http::Request::get(uri).body(()).unwrap(), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let answered = Instant::now();
        let mut body = response.into_body();

        // The byte the window allows, then the reset once send_timeout (1 s) has passed.
        let within_send_timeout = Duration::from_secs(1) + Duration::from_secs(4);
        let mut received = 0;
        let end = tokio::time::timeout(within_send_timeout, async {
            loop {
                match body.data().await {
                    Some(Ok(data)) => received += data.len(),
                    other => return other.map(|r| r.map(drop)),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("the stream was still open {within_send_timeout:?} after its answer began")
        });
        let reset = end.and_then(Result::err).and_then(|e| e.reason());
        assert_eq!(reset, Some(h2::Reason::CANCEL), "{:?}", gw.output());
        assert_eq!(received, 1);
        eprintln!(
            "stream reset {:?} after its answer began",
            answered.elapsed()
        );
        assert!(
            metrics(&gw)
                .await
                .contains(r#"idgate_send_timeouts_total{kind="stream"} 1"#),
            "{}",
            metrics(&gw).await
        );
    })
    .await
}

#[tokio::test]
async fn an_http2_stream_whose_caller_leaves_the_last_byte_unread_is_reset_within_send_timeout() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Upstream::start(Duration::ZERO).await;
        let gw = masking_gateway(&pki, &upstream).await;
        let uri = format!("https://localhost:{}/v1/masked", gw.port);

        // A caller that reads as it should gets the whole masked answer.
        let (mut h2, connection) = h2::client::handshake(tls_to(&pki, &gw, true).await)
            .await
            .unwrap();
        tokio::spawn(connection);
        let (response, _) = h2
            .send_request(http::Request::get(&uri).body(()).unwrap(), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut answer = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            answer.extend_from_slice(&data);
            body.flow_control().release_capacity(data.len()).unwrap();
        }
        assert!(answer.len() > 512 * 1024, "{}", answer.len());
        assert!(!answer.windows(9).any(|w| w == b"BAA000589"), "not masked");
        // So does curl over HTTP/2 (nghttp2), last byte and all.
        let (cert, key) = pki.workload(ONBOARDING);
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "--http2", "--max-time", "20", "-o", "-", "--cacert"])
            .arg(&pki.files.bundle)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["-w", "\n%{http_code} %{http_version} %{size_download}"])
            .arg(&uri);
        let (code, out, err) =
            tokio::task::spawn_blocking(move || run_bounded(&mut curl, ACTS_WITHIN))
                .await
                .unwrap();
        assert_eq!(code, 0, "curl: {err}");
        let (body, last) = out.rsplit_once('\n').unwrap();
        assert_eq!(last, format!("200 2 {}", answer.len()), "{err}");
        assert_eq!(body.as_bytes(), answer, "curl read another answer");

        // This one opens the stream's window for all of the answer but its last byte, and
        // never for that one.
        let window = u32::try_from(answer.len() - 1).unwrap();
        let (mut h2, connection) = h2::client::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, bytes::Bytes>(tls_to(&pki, &gw, true).await)
            .await
            .unwrap();
        tokio::spawn(connection);
        let (response, _) = h2
            .send_request(http::Request::get(&uri).body(()).unwrap(), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let within_send_timeout = Duration::from_secs(1) + Duration::from_secs(4);
        let mut received = 0;
        let end = tokio::time::timeout(within_send_timeout, async {
            loop {
                match body.data().await {
                    Some(Ok(data)) => received += data.len(),
                    other => return other.map(|r| r.map(drop)),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("the stream was still open {within_send_timeout:?} after its answer began")
        });
        let reset = end.and_then(Result::err).and_then(|e| e.reason());
        assert_eq!(reset, Some(h2::Reason::CANCEL), "{:?}", gw.output());
        assert_eq!(received, answer.len() - 1);
        assert!(
            metrics(&gw)
                .await
                .contains(r#"idgate_send_timeouts_total{kind="stream"} 1"#),
            "{}",
            metrics(&gw).await
        );
    })
    .await
}

/// Sends `n` requests to `/v1/slow` at once, each on its own HTTP/2 connection.
async fn at_once(pki: &Pki, gw: &Gateway, n: usize) -> Vec<Reply> {
    let client = Client::new(pki, Some(ONBOARDING), gw.port, true);
    let requests = (0..n).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.get("/v1/slow").await.unwrap() })
    });
    let mut replies = Vec::new();
    for r in requests.collect::<Vec<_>>() {
        replies.push(r.await.unwrap());
    }
    replies
}

#[tokio::test]
async fn streams_fanned_in_from_http2_callers_wait_for_one_of_max_connections() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Upstream::start(Duration::from_millis(100)).await;
        let gw = gateway(
            &pki,
            &upstream,
            toml::Table::new(),
            toml::toml! {
                max_connections = 2
                max_pending = 100
                request_timeout = "50s"
                pending_timeout = "40s"
            },
        )
        .await;
        // Three HTTP/2 connections, twenty streams each, all at once.
        let mut requests = Vec::new();
        for _ in 0..3 {
            let tls = tls_to(&pki, &gw, true).await;
            let (sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(tls),
            )
            .await
            .unwrap();
            tokio::spawn(connection);
            for _ in 0..20 {
                let mut sender = sender.clone();
                let uri = format!("https://localhost:{}/v1/slow", gw.port);
                requests.push(tokio::spawn(async move {
                    let req = http::Request::get(uri)
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    sender.send_request(req).await.unwrap().status()
                }));
            }
        }
        for r in requests {
            assert_eq!(r.await.unwrap(), 200);
        }
        // Sixty streams, and never more than two upstream connections: the others waited.
        assert_eq!(upstream.connections(), 2);
    })
    .await
}

#[tokio::test]
async fn a_request_that_cannot_wait_for_an_upstream_connection_gets_503_busy() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = Upstream::start(Duration::from_millis(1500)).await;
        for (extra, reason) in [
            (
                toml::toml! {
                    max_connections = 2
                    max_pending = 0
                },
                "queue_full",
            ),
            (
                toml::toml! {
                    max_connections = 2
                    pending_timeout = "200ms"
                },
                "queue_timeout",
            ),
        ] {
            let before = upstream.connections();
            let gw = gateway(&pki, &upstream, toml::Table::new(), extra.clone()).await;
            let replies = at_once(&pki, &gw, 3).await;
            let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
            statuses.sort_unstable();
            assert_eq!(statuses, [200, 200, 503], "{extra}");
            let busy = replies.iter().find(|r| r.status == 503).unwrap();
            assert_eq!(
                busy.header("content-type"),
                Some("application/problem+json")
            );
            assert_eq!(
                busy.json()["type"],
                "https://idgate.dev/problems/upstream-busy"
            );
            assert_eq!(busy.header("retry-after"), Some("1"));
            assert_eq!(upstream.connections() - before, 2, "{extra}");
            let m = metrics(&gw).await;
            assert!(
                m.contains(&format!(
                    r#"idgate_upstream_saturated_total{{upstream="provider",reason="{reason}"}} 1"#
                )),
                "{m}"
            );
        }
    })
    .await
}

#[tokio::test]
async fn an_http2_upstream_is_bounded_to_max_connections_requests_in_flight() {
    within(async {
        let pki = Pki::default_pki();
        let upstream =
            TestUpstream::https(&pki, UpstreamMode::Delay(Duration::from_millis(1500))).await;
        let gw = OneRoute {
            url: &upstream.url(true),
            upstream_extra: toml::toml! {
                http2 = true
                max_connections = 2
                max_pending = 0
            },
            ..OneRoute::default()
        }
        .start(&pki, &[])
        .await;
        let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);
        let requests: Vec<_> = (0..3)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.get("/v1/x").await.unwrap() })
            })
            .collect();
        let mut statuses = Vec::new();
        for r in requests {
            statuses.push(r.await.unwrap().status);
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 200, 503]);
        assert_eq!(upstream.requests().len(), 2);
    })
    .await
}

#[test]
fn check_refuses_connection_caps_and_send_timeouts_that_cannot_work() {
    let pki = Pki::default_pki();
    for (listener, upstream, key, reason) in [
        (
            toml::toml! { send_timeout = "0s" },
            toml::Table::new(),
            "listener.send_timeout",
            "must be more than zero",
        ),
        (
            toml::Table::new(),
            toml::toml! { max_connections = 0 },
            "upstreams[0].max_connections",
            "must be more than zero",
        ),
        (
            toml::Table::new(),
            toml::toml! {
                request_timeout = "2s"
                pending_timeout = "3s"
            },
            "upstreams[0].pending_timeout",
            "must not be longer than request_timeout",
        ),
    ] {
        let config = OneRoute {
            url: "http://127.0.0.1:9",
            listener_extra: listener,
            upstream_extra: upstream,
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
        let all = format!("{out}{err}");
        assert_eq!(code, 2, "{all}");
        assert!(all.contains(key) && all.contains(reason), "{all}");
    }
}
