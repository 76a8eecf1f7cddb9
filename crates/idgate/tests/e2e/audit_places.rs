//! The audit queue's reserved places go to requests that are served. A webhook post or a
//! token request takes one only once it will be served (its signature verified, its client
//! authenticated): posts whose body never comes, from anybody, cannot take the places of
//! requests on other routes and have them refused `503 audit-unavailable`. Each stalled
//! request is still recorded, once, when it ends.
//!
//! A stalled request here is an HTTP/1.1 request whose head announces a body with
//! `Expect: 100-continue`: the gateway's `100 Continue` says that its handler started to
//! read the body, so the request has got as far as it can without it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use idgate_mock_provider::didit_webhook;
use rustls_pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::support::*;
use crate::webhooks::{DIDIT_SECRET, Subscriber, WEBHOOK_PATH, envelope, now_secs, webhook_config};

/// Places in each of the queue's two pools.
const CAPACITY: usize = 4;
/// Stalled requests held at once: more than the queue has places.
const STALLED: usize = CAPACITY + 2;
/// How long one read from the gateway may take before the test fails.
const READ_WITHIN: Duration = Duration::from_secs(10);

/// The served route: `GET /v3/session/{id}/decision/` for the onboarding workload, refused at
/// once when its record has no place.
const SERVED: &str = "/v3/session/s1/decision/";

/// A trail written by the gateway, with keys made by `idgate audit keygen`.
struct Trail {
    keys: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Trail {
    fn new() -> Self {
        let keys = tempfile::tempdir().unwrap();
        let out = keys.path().join("keys");
        let (code, out, err) = idgate_cli(&["audit", "keygen", "--out", out.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        Self {
            keys,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn public(&self) -> PathBuf {
        self.keys.path().join("keys/audit-signing.pub")
    }

    /// `[audit]` with a queue of [`CAPACITY`] places, synced every 20 ms.
    fn section(&self) -> toml::Table {
        let signing = self.keys.path().join("keys/audit-signing.pem");
        table([
            ("dir", path_value(self.dir.path())),
            ("signing_key", format!("file:{}", signing.display()).into()),
            ("public_keys", vec![path_value(&self.public())].into()),
            ("sync_interval", "20ms".into()),
            ("queue_capacity", (CAPACITY as i64).into()),
        ])
    }

    /// The trail verifies, sealed; its request records (OCSF API Activity).
    fn verified_requests(&self) -> Vec<Value> {
        let (public, dir) = (self.public(), self.dir.path());
        let (code, out, err) = idgate_cli(&[
            "audit",
            "verify",
            "--key",
            public.to_str().unwrap(),
            dir.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("sealed"), "{out}");
        let (code, out, err) = idgate_cli(&["audit", "show", dir.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        out.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["class_uid"] == 6003)
            .collect()
    }
}

/// The upstream `provider` and the served route to it, `fail_closed` on a full queue.
fn with_served_route(config: GatewayConfig, pki: &Pki, upstream: &TestUpstream) -> GatewayConfig {
    config
        .upstream(UpstreamSpec::new("provider", &upstream.url(true)).ca(&pki.files.bundle))
        .route(
            RouteSpec::get("decision", "/v3/session/{id}/decision/", "provider")
                .with("on_audit_full", "fail_closed"),
        )
}

/// Reads from `tls` into `buf` until it holds a whole head; `None` at the end of the stream.
async fn read_head(tls: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(READ_WITHIN, tls.read(&mut chunk))
            .await
            .expect("the gateway answered nothing in time")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status code of a response head.
fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response head: {head:?}"))
}

/// A request whose head went out with `Expect: 100-continue` and whose body is held back.
struct Stalled {
    id: String,
    tls: TlsStream<TcpStream>,
    body: Vec<u8>,
    /// What the gateway answered the head: `100` once its handler reads the body.
    first: u16,
}

impl Stalled {
    /// Sends the head of `POST path` announcing `body`, and waits for the gateway's first
    /// answer.
    async fn open(
        config: Arc<rustls::ClientConfig>,
        port: u16,
        path: &str,
        id: String,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Self {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\
             expect: 100-continue\r\nconnection: close\r\nx-request-id: {id}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = Vec::new();
        let first = read_head(&mut tls, &mut buf)
            .await
            .map_or(0, |h| status(&h));
        Self {
            id,
            tls,
            body,
            first,
        }
    }

    /// Sends the body at last: the status of the answer.
    async fn release(mut self) -> u16 {
        assert_eq!(self.first, 100, "{}", self.id);
        self.tls.write_all(&self.body).await.unwrap();
        self.tls.flush().await.unwrap();
        let mut buf = Vec::new();
        let head = read_head(&mut self.tls, &mut buf)
            .await
            .unwrap_or_else(|| panic!("{}: no answer", self.id));
        status(&head)
    }
}

/// Holds [`STALLED`] requests made by `open`, then asks the served route: it must be served.
/// Then releases each stalled request; `expect` is the status its release must get.
async fn hold_then_serve<F, Fut>(
    onboarding: &Client,
    open: F,
    expect: impl Fn(usize) -> u16,
) -> Vec<String>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Stalled>,
{
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        stalled.push(open(i).await);
    }
    let firsts: Vec<u16> = stalled.iter().map(|s| s.first).collect();
    // Every stalled request is being read, none of them served: a request on another route
    // finds its record's place.
    let served = onboarding.get(SERVED).await.unwrap();
    assert_eq!(
        served.status, 200,
        "the served route was refused while {STALLED} requests stalled (their first answers: \
         {firsts:?}): {:?}",
        served.body
    );
    assert!(
        firsts.iter().all(|f| *f == 100),
        "each stalled request is read, not refused: {firsts:?}"
    );
    let mut ids = Vec::new();
    for (i, s) in stalled.into_iter().enumerate() {
        let id = s.id.clone();
        assert_eq!(s.release().await, expect(i), "{id}");
        ids.push(id);
    }
    ids
}

/// Stops the gateway cleanly, so that its trail ends sealed.
fn stop(gw: &mut Gateway) {
    gw.signal("TERM");
    let status = gw.wait_exit(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{}", gw.output());
}

/// Each stalled request and the served one have exactly one record, with their status.
fn assert_each_recorded_once(requests: &[Value], ids: &[String], expect: impl Fn(usize) -> u16) {
    for (i, id) in ids.iter().enumerate() {
        let records: Vec<&Value> = requests
            .iter()
            .filter(|r| r["api"]["request"]["uid"] == id.as_str())
            .collect();
        assert_eq!(records.len(), 1, "{id}: {records:?}");
        assert_eq!(
            records[0]["http_response"]["code"],
            expect(i),
            "{id}: {}",
            records[0]
        );
    }
    let served: Vec<&Value> = requests
        .iter()
        .filter(|r| r["api"]["operation"] == "decision")
        .collect();
    assert_eq!(served.len(), 1, "{requests:?}");
    assert_eq!(served[0]["http_response"]["code"], 200, "{}", served[0]);
    assert_eq!(
        requests.len(),
        ids.len() + 1,
        "one record per request: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_webhook_posts_do_not_take_the_audit_places_of_served_requests() {
    within_limit(Duration::from_secs(90), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let sub = Subscriber::start(&pki).await;
        let state = tempfile::tempdir().unwrap();
        let trail = Trail::new();
        // The documented setup: providers present no client certificate, the webhook has no
        // source_cidrs.
        let config = webhook_config(&pki, state.path(), &sub.url(), toml::Table::new())
            .section("audit", trail.section());
        let mut gw = Gateway::start(&with_served_route(config, &pki, &upstream), &[]).await;
        let onboarding = Client::new(&pki, Some(ONBOARDING), gw.port, false);
        let (port, anybody) = (gw.port, Client::new(&pki, None, gw.port, false).config);

        // Even posts are signed with the webhook's secret, odd ones with another: once their
        // bodies arrive, the first are kept (200), the others refused (401).
        let t = now_secs();
        let expect = |i: usize| if i.is_multiple_of(2) { 200 } else { 401 };
        let open = |i: usize| {
            let anybody = anybody.clone();
            async move {
                let secret = if i.is_multiple_of(2) {
                    DIDIT_SECRET
                } else {
                    "not-the-secret"
                };
                let event = envelope(&format!("evt-stalled-{i}"), "sess-1", i as u64, t);
                let signed = didit_webhook::sign(secret, &event);
                let mut headers: Vec<(&str, &str)> = signed.headers().to_vec();
                headers.push(("content-type", "application/json"));
                Stalled::open(
                    anybody,
                    port,
                    WEBHOOK_PATH,
                    format!("stalled-webhook-{i}"),
                    &headers,
                    signed.body.clone(),
                )
                .await
            }
        };
        let ids = hold_then_serve(&onboarding, open, expect).await;
        stop(&mut gw);
        assert_each_recorded_once(&trail.verified_requests(), &ids, expect);
    })
    .await;
}

/// `[token_endpoint]` with one client, authenticated by the onboarding SVID.
fn token_endpoint(dir: &Path) -> toml::Table {
    let key = crate::tokens::signing_key(dir);
    let client = table([
        ("client_id", "onboarding".into()),
        ("spiffe_id", ONBOARDING.into()),
        ("scopes", strings(&["sessions:read"])),
    ]);
    table([
        ("issuer", "https://idgate.test".into()),
        ("audience", "idgate".into()),
        ("signing_key", format!("file:{}", key.display()).into()),
        ("token_ttl", "5m".into()),
        ("clients", vec![toml::Value::from(client)].into()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_token_requests_do_not_take_the_audit_places_of_served_requests() {
    within_limit(Duration::from_secs(90), async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
        let trail = Trail::new();
        let config = base_config(&pki)
            .section("token_endpoint", token_endpoint(pki.path()))
            .section("audit", trail.section());
        let mut gw = Gateway::start(&with_served_route(config, &pki, &upstream), &[]).await;
        let (port, onboarding) = (gw.port, Client::new(&pki, Some(ONBOARDING), gw.port, false));

        // Any workload with an SVID may ask. Even requests are a client credentials grant
        // (200, a token), odd ones ask for a grant the endpoint does not give (400).
        let expect = |i: usize| if i.is_multiple_of(2) { 200 } else { 400 };
        let open = |i: usize| {
            let config = onboarding.config.clone();
            async move {
                let form = if i.is_multiple_of(2) {
                    "grant_type=client_credentials&scope=sessions%3Aread"
                } else {
                    "grant_type=authorization_code&scope=sessions%3Aread"
                };
                Stalled::open(
                    config,
                    port,
                    "/oauth2/token",
                    format!("stalled-token-{i}"),
                    &[crate::tokens::FORM],
                    form.as_bytes().to_vec(),
                )
                .await
            }
        };
        let ids = hold_then_serve(&onboarding, open, expect).await;
        stop(&mut gw);
        assert_each_recorded_once(&trail.verified_requests(), &ids, expect);
    })
    .await;
}
