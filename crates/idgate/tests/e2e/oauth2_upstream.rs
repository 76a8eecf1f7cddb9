//! The OAuth2 client-credentials upstream scheme against a fake RFC 6749 token endpoint:
//! `client_secret_basic`, `grant_type=client_credentials`, tokens cached and fetched once
//! however many requests want one, refreshed before they expire, and a failing endpoint
//! turned into a 503 problem for the caller.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::assert_eventually;
use crate::support::*;
use crate::vault::{FakeHttps, Handler, json_response};

const CLIENT_ID: &str = "idgate client/01";
/// Characters that `client_secret_basic` must form-encode: ':', '/', ' ', '+', '~', UTF-8.
const CLIENT_SECRET: &str = "cs:9f/2 q+x~ü-7Hk";
const SCOPE: &str = "verifications:write sessions:read";

#[derive(Default)]
struct EndpointState {
    expires_in: u64,
    /// How long each answer takes (to make concurrent first requests overlap).
    delay: Duration,
    /// Answer this instead of a token.
    failure: Option<(u16, Value)>,
    /// Every request: when it arrived and the token issued (`None`: refused).
    requests: Vec<(Instant, Option<String>)>,
    /// Why requests were refused (for assertion messages).
    refusals: Vec<String>,
}

struct TokenEndpoint {
    server: FakeHttps,
    state: Arc<Mutex<EndpointState>>,
}

/// `application/x-www-form-urlencoded` decoding (RFC 6749 Appendix B).
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    std::str::from_utf8(body)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((form_decode(k)?, form_decode(v)?)))
        .collect()
}

impl EndpointState {
    /// Checks the request the way RFC 6749 §2.3.1 and §4.4.2 describe it.
    fn check(&self, parts: &http::request::Parts, body: &[u8]) -> Result<(), String> {
        if parts.method != http::Method::POST || parts.uri.path() != "/oauth/token" {
            return Err(format!("{} {}", parts.method, parts.uri));
        }
        let ct = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok());
        if ct != Some("application/x-www-form-urlencoded") {
            return Err(format!("content-type {ct:?}"));
        }
        let basic = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or("no Basic authorization")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .map_err(|_| "not base64")?;
        let decoded = String::from_utf8(decoded).map_err(|_| "not UTF-8")?;
        let (id, secret) = decoded.split_once(':').ok_or("no ':'")?;
        if form_decode(id).as_deref() != Some(CLIENT_ID)
            || form_decode(secret).as_deref() != Some(CLIENT_SECRET)
        {
            return Err(format!("wrong client credentials {decoded:?}"));
        }
        let fields = form_fields(body);
        let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("grant_type") != Some("client_credentials") {
            return Err(format!("grant_type {:?}", get("grant_type")));
        }
        if get("scope") != Some(SCOPE) {
            return Err(format!("scope {:?}", get("scope")));
        }
        Ok(())
    }
}

impl TokenEndpoint {
    async fn start(pki: &Pki, expires_in: u64) -> Self {
        let state = Arc::new(Mutex::new(EndpointState {
            expires_in,
            ..Default::default()
        }));
        let s = state.clone();
        let handler: Handler = Arc::new(move |parts, body| {
            let s = s.clone();
            Box::pin(async move {
                let delay = s.lock().unwrap().delay;
                tokio::time::sleep(delay).await;
                let mut st = s.lock().unwrap();
                let now = Instant::now();
                if let Err(why) = st.check(&parts, &body) {
                    st.refusals.push(why);
                    st.requests.push((now, None));
                    return json_response(401, &json!({"error": "invalid_client"}));
                }
                if let Some((status, body)) = st.failure.clone() {
                    st.requests.push((now, None));
                    return json_response(status, &body);
                }
                let token = format!("at-{}-{:08x}", st.requests.len() + 1, rand_u32());
                st.requests.push((now, Some(token.clone())));
                let mut resp = json_response(
                    200,
                    &json!({
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": st.expires_in,
                        "scope": SCOPE,
                    }),
                );
                let h = resp.headers_mut();
                h.insert("cache-control", "no-store".parse().unwrap());
                h.insert("pragma", "no-cache".parse().unwrap());
                resp
            })
        });
        Self {
            server: FakeHttps::start(pki, handler).await,
            state,
        }
    }

    fn url(&self) -> String {
        format!("{}/oauth/token", self.server.url())
    }

    fn requests(&self) -> Vec<(Instant, Option<String>)> {
        self.state.lock().unwrap().requests.clone()
    }

    fn tokens(&self) -> Vec<String> {
        self.requests().into_iter().filter_map(|(_, t)| t).collect()
    }

    fn refusals(&self) -> Vec<String> {
        self.state.lock().unwrap().refusals.clone()
    }

    fn set_failure(&self, failure: Option<(u16, Value)>) {
        self.state.lock().unwrap().failure = failure;
    }

    fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    u32::from_be_bytes(b)
}

async fn gateway(pki: &Pki, upstream: &TestUpstream, endpoint: &TokenEndpoint) -> Gateway {
    let credential = CredentialSpec {
        scheme: Some("oauth2_client_credentials".into()),
        ..CredentialSpec::default()
    }
    .with("token_url", endpoint.url())
    .with("client_id", CLIENT_ID)
    .with("client_secret", "env:OAUTH_CLIENT_SECRET")
    .with("scope", SCOPE);
    let config = base_config(pki)
        .upstream(
            UpstreamSpec::new("persona", &upstream.url(true))
                .ca(&pki.files.bundle)
                .credential(credential),
        )
        .route(RouteSpec::new(
            "inquiries",
            &["GET", "POST"],
            "/api/v1/inquiries/{id}",
            "persona",
            &[ONBOARDING],
        ));
    Gateway::start(&config, &[("OAUTH_CLIENT_SECRET", CLIENT_SECRET)]).await
}

fn bearer(seen: &Seen) -> String {
    seen.headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Nothing secret in the gateway's output: not the client secret, not any token.
fn assert_output_clean(gw: &Gateway, endpoint: &TokenEndpoint) {
    let out = gw.output();
    assert!(
        !out.contains(CLIENT_SECRET),
        "client secret in the output:\n{out}"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode(CLIENT_SECRET);
    assert!(!out.contains(&basic));
    for t in endpoint.tokens() {
        assert!(!out.contains(&t), "token {t} in the output:\n{out}");
    }
}

#[tokio::test]
async fn upstream_sees_the_bearer_token_and_one_token_serves_many_requests() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let endpoint = TokenEndpoint::start(&pki, 3600).await;
    let gw = gateway(&pki, &upstream, &endpoint).await;

    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let mut conn = client.connect().await.unwrap();
    for i in 0..10 {
        // A caller's own Authorization is for the gateway, never forwarded.
        let reply = conn
            .send(
                "GET",
                &format!("/api/v1/inquiries/inq_{i}"),
                &[("authorization", "Bearer callers-own-token")],
                "",
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{:?}\n{}", reply.body, gw.output());
    }
    assert_eq!(endpoint.refusals(), Vec::<String>::new());
    let tokens = endpoint.tokens();
    assert_eq!(tokens.len(), 1, "one token request expected: {tokens:?}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 10);
    for s in &seen {
        assert_eq!(bearer(s), format!("Bearer {}", tokens[0]));
    }
    assert_output_clean(&gw, &endpoint);
}

#[tokio::test]
async fn a_token_the_upstream_refuses_is_replaced_for_the_next_request() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::UnauthorizedFirst(1)).await;
    // Tokens that would last an hour: without the refusal, the first would be sent all along.
    let endpoint = TokenEndpoint::start(&pki, 3600).await;
    let gw = gateway(&pki, &upstream, &endpoint).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);

    let refused = client.get("/api/v1/inquiries/inq_1").await.unwrap();
    assert_eq!(refused.status, 401, "the upstream's answer, passed on");
    let reply = client.get("/api/v1/inquiries/inq_2").await.unwrap();
    assert_eq!(reply.status, 200, "{:?}\n{}", reply.body, gw.output());
    let tokens = endpoint.tokens();
    assert_eq!(tokens.len(), 2, "a new token after the refusal: {tokens:?}");
    let seen = upstream.requests();
    assert_eq!(bearer(&seen[0]), format!("Bearer {}", tokens[0]));
    assert_eq!(bearer(&seen[1]), format!("Bearer {}", tokens[1]));
    // And it serves on.
    let again = client.get("/api/v1/inquiries/inq_3").await.unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(endpoint.tokens().len(), 2);
    assert_output_clean(&gw, &endpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_cause_exactly_one_token_request() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let endpoint = TokenEndpoint::start(&pki, 3600).await;
    // Slow enough that all twenty arrive while the first token is being fetched.
    endpoint.set_delay(Duration::from_millis(500));
    let gw = gateway(&pki, &upstream, &endpoint).await;

    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(client.connect().await.unwrap());
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                c.send("GET", &format!("/api/v1/inquiries/inq_{i}"), &[], "")
                    .await
                    .map(|r| r.status)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200, "{}", gw.output());
    }
    assert_eq!(
        endpoint.requests().len(),
        1,
        "token requests: {:?}",
        endpoint.requests()
    );
    let token = format!("Bearer {}", endpoint.tokens()[0]);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|s| bearer(s) == token));
    assert_output_clean(&gw, &endpoint);
}

#[tokio::test]
async fn token_is_refreshed_shortly_before_it_expires() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let endpoint = TokenEndpoint::start(&pki, 3).await;
    let gw = gateway(&pki, &upstream, &endpoint).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let mut conn = client.connect().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(8);
    while endpoint.tokens().len() < 2 && Instant::now() < deadline {
        let reply = conn
            .send("GET", "/api/v1/inquiries/inq_1", &[], "")
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{}", gw.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = endpoint.requests();
    assert!(
        requests.len() >= 2,
        "no second token within 8 s: {requests:?}"
    );
    let gap = requests[1].0 - requests[0].0;
    // Lifetime 3 s: the next token is fetched ahead of expiry, not at the first request
    // after it, and not needlessly early.
    assert!(
        gap >= Duration::from_millis(1500) && gap < Duration::from_millis(3000),
        "second token fetched {gap:?} after the first"
    );
    let second = format!("Bearer {}", endpoint.tokens()[1]);
    let reply = conn
        .send("GET", "/api/v1/inquiries/inq_2", &[], "")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(bearer(&upstream.last()), second);
    assert_output_clean(&gw, &endpoint);
}

#[tokio::test]
async fn token_endpoint_failure_gives_the_caller_a_503_problem_and_recovers() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let endpoint = TokenEndpoint::start(&pki, 3600).await;
    endpoint.set_failure(Some((
        401,
        json!({"error": "invalid_client", "error_description": "client authentication failed"}),
    )));
    let gw = gateway(&pki, &upstream, &endpoint).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, true);

    let reply = client.get("/api/v1/inquiries/inq_1").await.unwrap();
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    let problem = reply.json();
    assert_eq!(
        problem["type"].as_str(),
        Some("https://idgate.dev/problems/credential-unavailable"),
        "{problem}"
    );
    assert_eq!(problem["status"], 503);
    assert!(
        upstream.requests().is_empty(),
        "a request went out without a token"
    );
    assert_eventually!(
        json_lines(&gw.output()).iter().any(|l| {
            l.get("problem").and_then(|p| p.as_str()) == Some("credential-unavailable")
                && l.get("reason").and_then(|r| r.as_str()).is_some_and(|r| {
                    r.contains("credential persona") && r.contains("status 401 (invalid_client)")
                })
        }),
        "no log line names the credential and the endpoint's answer:\n{}",
        gw.output()
    );

    // The endpoint is asked again once it may have recovered, not once per waiting request.
    endpoint.set_failure(None);
    assert_eventually!(
        client
            .get("/api/v1/inquiries/inq_2")
            .await
            .is_ok_and(|r| r.status == 200),
        "no recovery after the token endpoint came back:\n{}",
        gw.output()
    );
    assert_eq!(
        bearer(&upstream.last()),
        format!("Bearer {}", endpoint.tokens()[0])
    );
    assert_output_clean(&gw, &endpoint);
}

#[tokio::test]
async fn failed_refresh_keeps_the_current_token_until_it_expires() {
    let pki = Pki::default_pki();
    let upstream = TestUpstream::https(&pki, UpstreamMode::Echo).await;
    let endpoint = TokenEndpoint::start(&pki, 4).await;
    let gw = gateway(&pki, &upstream, &endpoint).await;
    let client = Client::new(&pki, Some(ONBOARDING), gw.port, false);
    let mut conn = client.connect().await.unwrap();
    let reply = conn
        .send("GET", "/api/v1/inquiries/inq_1", &[], "")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    // The gateway took the token in between the endpoint's answer and this reply, so it
    // expires (lifetime 4 s) no sooner than 4 s after `issued` and no later than 4 s after
    // `answered`; its refresh is due a second earlier.
    let answered = Instant::now();
    let issued = endpoint.requests()[0].0;
    let lifetime = Duration::from_secs(4);
    endpoint.set_failure(Some((503, json!({"error": "temporarily_unavailable"}))));

    // Each answer: when its request was sent and when it came back, after `issued`.
    let mut answers = Vec::new();
    while issued.elapsed() < Duration::from_millis(5500) {
        let sent = issued.elapsed();
        let r = conn
            .send("GET", "/api/v1/inquiries/inq_1", &[], "")
            .await
            .unwrap();
        answers.push((sent, issued.elapsed(), r.status));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Judged by what must have happened before or after the expiry, whatever the delays of a
    // busy machine: a request answered before it was served with the current token, failed
    // refreshes or not; one sent after it finds none.
    let (mut kept, mut ended) = (0, 0);
    for (sent, at, status) in &answers {
        if *at < lifetime {
            assert_eq!(*status, 200, "answered at {at:?}: {answers:?}");
            if issued + *sent >= answered + lifetime - Duration::from_secs(1) {
                kept += 1;
            }
        } else if issued + *sent >= answered + lifetime {
            assert_eq!(*status, 503, "sent at {sent:?}: {answers:?}");
            ended += 1;
        }
    }
    assert!(
        kept > 0 && ended > 0,
        "no request after the refresh was due and before the expiry ({kept}), or after the \
         expiry ({ended}): {answers:?}"
    );
    let refused = endpoint
        .requests()
        .iter()
        .filter(|(_, t)| t.is_none())
        .count();
    assert!(refused >= 2, "refresh was not retried: {refused}");
    // A failed fetch is shared for a second, so the endpoint is not hammered.
    assert!(refused <= 6, "{refused} token requests in 2.5 s");
    // Logged by the refresh, read from the pipe by another thread: waited for.
    assert_eventually!(
        gw.output()
            .contains("cannot fetch the next OAuth2 token; the current one stays in use"),
        "the failed refresh was not logged:\n{}",
        gw.output()
    );
    assert_output_clean(&gw, &endpoint);
}
