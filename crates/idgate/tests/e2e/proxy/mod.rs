//! The proxy end to end: routing and default deny, problem responses, what is forwarded and
//! what is stripped, upstream failures, HTTP versions, TLS policy, client authentication,
//! secrets in logs, the admin endpoints and shutdown.
//!
//! Every test runs the real `idgate serve` on loopback ports in front of a recording HTTPS
//! upstream; the gateway's answers are read as a client sees them.
//!
//! This module holds the setup the tests share; each submodule tests one concern.

// A failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_and_shutdown;
mod connections;
mod drain;
mod forwarding;
mod logging;
mod process;
mod routing;
mod upstream_failures;

use std::path::Path;

use crate::support::*;

/// The upstream credential the gateway injects; never seen by callers or in logs.
const PROVIDER_TOKEN: &str = "prov-token-s3cr3t-4f9a7c";
const PROVIDER_TOKEN_ENV: &str = "TEST_PROVIDER_TOKEN";
/// Not in the gateway's default strip list, so only the credential config protects it.
const PROVIDER_HEADER: &str = "x-provider-token";

/// Under the `ns/kyc/*` prefix, besides ONBOARDING.
const REVIEW: &str = "spiffe://example.org/ns/kyc/sa/review";
/// Shares the text `.../ns/kyc` but not the segment.
const KYCX: &str = "spiffe://example.org/ns/kycx/sa/intruder";
/// The prefix itself, with nothing under it.
const KYC_BARE: &str = "spiffe://example.org/ns/kyc";

const DECISION: &str = "/v3/session/abc-123/decision/";

fn pki() -> Pki {
    Pki::new(TD, &[ONBOARDING, FRONTEND, REVIEW, KYCX, KYC_BARE])
}

/// An upstream `name` at `url` (trusting `ca`) with the provider credential.
fn provider_upstream(name: &str, url: &str, ca: &Path) -> UpstreamSpec {
    UpstreamSpec::new(name, url)
        .ca(ca)
        .credential(CredentialSpec::header(
            PROVIDER_HEADER,
            &format!("env:{PROVIDER_TOKEN_ENV}"),
        ))
}

/// The routes every test here uses, all to `upstream`:
/// - `decision`  GET  /v3/session/{session_id}/decision/  allow ns/kyc/*   (prefix)
/// - `create-session` POST /v2/session/                   allow ONBOARDING (exact)
/// - `profile`   GET, PUT /v1/profile/{id}                allow FRONTEND   (exact)
fn with_standard_routes(config: GatewayConfig, upstream: &str) -> GatewayConfig {
    config
        .route(RouteSpec::new(
            "decision",
            &["GET"],
            "/v3/session/{session_id}/decision/",
            upstream,
            &["spiffe://example.org/ns/kyc/*"],
        ))
        .route(RouteSpec::new(
            "create-session",
            &["POST"],
            "/v2/session/",
            upstream,
            &[ONBOARDING],
        ))
        .route(RouteSpec::new(
            "profile",
            &["GET", "PUT"],
            "/v1/profile/{id}",
            upstream,
            &[FRONTEND],
        ))
}

/// A gateway in front of a recording upstream, with the standard routes.
struct Setup {
    pki: Pki,
    upstream: TestUpstream,
    gw: Gateway,
}

impl Setup {
    async fn start(mode: UpstreamMode) -> Self {
        Self::start_with(mode, |_| {}).await
    }

    /// `edit` may change the configuration (the listener, say, or the upstream, which is
    /// `upstreams[0]`).
    async fn start_with(mode: UpstreamMode, edit: impl FnOnce(&mut GatewayConfig)) -> Self {
        let pki = pki();
        let upstream = TestUpstream::https(&pki, mode).await;
        let url = upstream.url(true);
        Self::start_in_front_of(pki, upstream, &url, edit).await
    }

    /// In front of a plain-HTTP loopback upstream, so that the upstream hop is HTTP/1.1 (no
    /// ALPN) and nothing but the gateway removes headers on the way.
    async fn start_with_http1_upstream(mode: UpstreamMode) -> Self {
        let upstream = TestUpstream::http(mode).await;
        let url = upstream.url(false);
        Self::start_in_front_of(pki(), upstream, &url, |_| {}).await
    }

    /// [`Setup::start`] with the gateway logging at `trace`, for the tests that search its
    /// log for secrets.
    async fn start_tracing(mode: UpstreamMode) -> Self {
        let pki = pki();
        let upstream = TestUpstream::https(&pki, mode).await;
        let url = upstream.url(true);
        Self::start_in_front_of_with_env(pki, upstream, &url, |_| {}, &[TRACE_LOG]).await
    }

    async fn start_in_front_of(
        pki: Pki,
        upstream: TestUpstream,
        url: &str,
        edit: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        Self::start_in_front_of_with_env(pki, upstream, url, edit, &[]).await
    }

    async fn start_in_front_of_with_env(
        pki: Pki,
        upstream: TestUpstream,
        url: &str,
        edit: impl FnOnce(&mut GatewayConfig),
        env: &[(&str, &str)],
    ) -> Self {
        let mut config = with_standard_routes(
            base_config(&pki).upstream(provider_upstream("provider", url, &pki.files.bundle)),
            "provider",
        );
        edit(&mut config);
        let mut env = env.to_vec();
        env.push((PROVIDER_TOKEN_ENV, PROVIDER_TOKEN));
        let gw = Gateway::start(&config, &env).await;
        Self { pki, upstream, gw }
    }

    fn client(&self, id: Option<&str>) -> Client {
        Client::new(&self.pki, id, self.gw.port, false)
    }

    fn client_h2(&self, id: Option<&str>) -> Client {
        Client::new(&self.pki, id, self.gw.port, true)
    }
}

/// Asserts a gateway-made RFC 9457 problem: the status, the content type, every member, the
/// request id matching the response header, and none of `secrets` (nor the gateway's or the
/// upstream's internals) anywhere in the body or headers.
fn assert_problem(reply: &Reply, status: u16, secrets: &[&str]) -> serde_json::Value {
    assert_eq!(
        reply.status,
        status,
        "status; body: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "content type of a {status}"
    );
    let p = reply.json();
    let text = |k: &str| {
        p.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("problem member {k:?} is missing or not a string: {p}"))
            .to_owned()
    };
    assert!(text("type").starts_with("https://"), "type is a URI: {p}");
    assert!(!text("title").is_empty(), "title: {p}");
    assert!(!text("detail").is_empty(), "detail: {p}");
    assert_eq!(
        p["status"].as_u64(),
        Some(u64::from(status)),
        "status member: {p}"
    );
    let rid = text("request_id");
    assert_eq!(
        reply.header("x-request-id"),
        Some(rid.as_str()),
        "the problem's request_id is the x-request-id header"
    );
    let body = String::from_utf8_lossy(&reply.body);
    let headers = format!("{:?}", reply.headers);
    for needle in [
        "127.0.0.1",
        "/tmp/",
        ".pem",
        ".crt",
        ".key",
        "os error",
        PROVIDER_TOKEN,
    ]
    .iter()
    .chain(secrets)
    {
        assert!(
            !body.contains(needle),
            "problem body reveals {needle:?}: {body}"
        );
        assert!(
            !headers.contains(needle),
            "problem headers reveal {needle:?}: {headers}"
        );
    }
    p
}

fn is_32_hex(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn access_lines(gw: &Gateway) -> Vec<std::collections::HashMap<String, serde_json::Value>> {
    json_lines(&gw.output())
        .into_iter()
        .filter(|l| l.get("target").and_then(|t| t.as_str()) == Some("idgate::access"))
        .collect()
}
