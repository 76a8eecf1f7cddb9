//! SPIFFE X.509-SVID verification, end to end, against a PKI made with the `openssl` command
//! line (not idgate's dev PKI): two trust domains with their own CAs, both configured, and
//! leaves that each break one rule of the X509-SVID specification.
//!
//! A refused client never gets a 2xx and never reaches the upstream. In TLS 1.3 the server
//! checks the client's certificate after the client has finished its side of the handshake,
//! so the client may learn of the refusal only on its first read: either is a refusal here.

use std::time::Duration;

use crate::assert_eventually;
use crate::support::*;

const EXAMPLE_ID: &str = "spiffe://example.org/ns/kyc/sa/onboarding";
const PARTNER_ID: &str = "spiffe://partner.test/ns/risk/sa/scorer";

const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// Two trust domains, `example.org` and `partner.test`, each with its own CA; the gateway's
/// own certificate (SPIFFE ID plus localhost/127.0.0.1) comes from example.org's CA.
struct TwoDomains {
    dir: tempfile::TempDir,
    example: OpenSslCa,
    partner: OpenSslCa,
    gateway: CertKey,
}

impl TwoDomains {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let example = OpenSslCa::new(dir.path(), "example-ca", "example.org");
        let partner = OpenSslCa::new(dir.path(), "partner-ca", "partner.test");
        let gateway = example.issue(
            "gateway",
            "subjectAltName = URI:spiffe://example.org/idgate,DNS:localhost,IP:127.0.0.1\n\
             basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth,clientAuth\n",
        );
        Self {
            dir,
            example,
            partner,
            gateway,
        }
    }

    /// A CA of a trust domain the gateway does not know.
    fn stranger(&self) -> OpenSslCa {
        OpenSslCa::new(self.dir.path(), "stranger-ca", "stranger.test")
    }

    /// A client presenting `identity`, trusting example.org's CA for the gateway.
    fn client(
        &self,
        identity: &CertKey,
        port: u16,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Client {
        Client::with_identity(&self.example.ca.cert, identity, port, versions)
    }
}

/// A gateway trusting both trust domains, in front of a recording upstream, with a route
/// for each trust domain's workload and one for both.
struct Fixture {
    pki: TwoDomains,
    upstream: TestUpstream,
    gw: Gateway,
}

impl Fixture {
    async fn start() -> Self {
        let pki = TwoDomains::new();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let route = |name: &str, allow: &[&str]| {
            RouteSpec::new(name, &["GET"], &format!("/v1/{name}"), "provider", allow)
        };
        let config = gateway_config(
            (&pki.gateway.cert, &pki.gateway.key),
            &[
                ("example.org", &pki.example.ca.cert),
                ("partner.test", &pki.partner.ca.cert),
            ],
            "10s",
        )
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(route("example-only", &[EXAMPLE_ID]))
        .route(route("partner-only", &["spiffe://partner.test/ns/risk/*"]))
        .route(route("both", &[EXAMPLE_ID, PARTNER_ID]));
        let gw = Gateway::start(&config, &[]).await;
        Self { pki, upstream, gw }
    }

    fn refusals(&self) -> Vec<String> {
        log_lines(&self.gw, "idgate::tls", "TLS handshake refused")
            .into_iter()
            .map(|l| {
                l.get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// Asserts that `identity` is refused at the handshake over TLS 1.2 and TLS 1.3, that the
    /// upstream never hears of it, and that each refusal is logged with a reason containing
    /// `why`.
    async fn assert_refused(&self, identity: &CertKey, why: &str) {
        for versions in [TLS13, TLS12] {
            let before = self.refusals().len();
            let result = self
                .pki
                .client(identity, self.gw.port, versions)
                .get("/v1/both")
                .await;
            if let Ok(reply) = &result {
                assert!(
                    !(200..300).contains(&reply.status),
                    "{versions:?}: {} was let through: {reply:?}",
                    identity.cert.display()
                );
            }
            assert_eventually!(
                self.refusals().len() > before,
                "{versions:?}: no refusal logged for {}; client saw {result:?}; log:\n{}",
                identity.cert.display(),
                self.gw.output()
            );
            let logged = &self.refusals()[before];
            assert!(
                logged.contains(why),
                "{versions:?}: the refusal of {} should say {why:?}, it says {logged:?}",
                identity.cert.display()
            );
        }
        assert!(
            self.upstream.requests().is_empty(),
            "a refused client reached the upstream: {:?}",
            self.upstream.requests()
        );
    }
}

async fn status(client: &Client, path: &str) -> u16 {
    client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .status
}

#[tokio::test]
async fn svids_of_two_trust_domains_are_accepted_and_authorized_by_their_own_ids() {
    let fx = Fixture::start().await;
    let port = fx.gw.port;
    let example = fx
        .pki
        .example
        .issue("example-workload", &svid_extensions(EXAMPLE_ID));
    let partner = fx
        .pki
        .partner
        .issue("partner-workload", &svid_extensions(PARTNER_ID));

    for versions in [TLS13, TLS12] {
        let example = fx.pki.client(&example, port, versions);
        let partner = fx.pki.client(&partner, port, versions);
        assert_eq!(status(&example, "/v1/both").await, 200);
        assert_eq!(status(&partner, "/v1/both").await, 200);
        assert_eq!(status(&example, "/v1/example-only").await, 200);
        assert_eq!(status(&partner, "/v1/partner-only").await, 200);
        assert_eq!(status(&example, "/v1/partner-only").await, 403);
        assert_eq!(status(&partner, "/v1/example-only").await, 403);
    }
    let paths: Vec<String> = fx
        .upstream
        .requests()
        .into_iter()
        .map(|s| s.path_and_query)
        .collect();
    assert_eq!(
        paths,
        [
            "/v1/both",
            "/v1/both",
            "/v1/example-only",
            "/v1/partner-only"
        ]
        .repeat(2),
        "only the allowed requests reach the upstream"
    );
}

#[tokio::test]
async fn accepts_svid_issued_by_an_intermediate_ca_of_its_trust_domain() {
    let fx = Fixture::start().await;
    let dir = fx.pki.dir.path();
    let intermediate = fx.pki.example.issue(
        "intermediate-ca",
        "basicConstraints = critical,CA:TRUE,pathlen:0\n\
         keyUsage = critical,keyCertSign,cRLSign\n\
         subjectAltName = URI:spiffe://example.org\n",
    );
    let leaf = OpenSslCa::existing(dir, &intermediate.cert, &intermediate.key)
        .issue("via-intermediate", &svid_extensions(EXAMPLE_ID));
    // The client sends its chain: the leaf, then the intermediate.
    let chain = CertKey {
        cert: dir.join("via-intermediate-chain.crt"),
        key: leaf.key.clone(),
    };
    let pem = [leaf.cert, intermediate.cert].map(|p| std::fs::read_to_string(p).expect("pem"));
    std::fs::write(&chain.cert, pem.concat()).expect("write chain");

    for versions in [TLS13, TLS12] {
        let client = fx.pki.client(&chain, fx.gw.port, versions);
        assert_eq!(status(&client, "/v1/example-only").await, 200);
    }
}

#[tokio::test]
async fn refuses_expired_svid() {
    let fx = Fixture::start().await;
    let expired = fx.pki.example.issue_between(
        "expired",
        &svid_extensions(EXAMPLE_ID),
        &openssl_time_ago(Duration::from_secs(3 * 86_400)),
        &openssl_time_ago(Duration::from_secs(86_400)),
    );
    fx.assert_refused(&expired, "certificate expired").await;
}

#[tokio::test]
async fn refuses_svid_not_valid_yet() {
    let fx = Fixture::start().await;
    let early = fx.pki.example.issue_between(
        "not-yet-valid",
        &svid_extensions(EXAMPLE_ID),
        &openssl_time_in(Duration::from_secs(86_400)),
        &openssl_time_in(Duration::from_secs(2 * 86_400)),
    );
    fx.assert_refused(&early, "certificate not valid yet").await;
}

#[tokio::test]
async fn refuses_svid_from_untrusted_trust_domain() {
    let fx = Fixture::start().await;
    let stranger = fx.pki.stranger().issue(
        "stranger",
        &svid_extensions("spiffe://stranger.test/ns/x/sa/y"),
    );
    fx.assert_refused(&stranger, "trust domain stranger.test is not configured")
        .await;
}

#[tokio::test]
async fn refuses_partner_signed_svid_claiming_an_example_org_id() {
    // partner.test's CA is trusted, but only for partner.test: it cannot vouch for an
    // example.org identity, even though the signature chains to a configured bundle.
    let fx = Fixture::start().await;
    let forged = fx
        .pki
        .partner
        .issue("cross-domain", &svid_extensions(EXAMPLE_ID));
    fx.assert_refused(&forged, "UnknownIssuer").await;
}

#[tokio::test]
async fn refuses_ca_certificate_as_client_svid() {
    let fx = Fixture::start().await;
    // A CA certificate issued by a trusted CA, carrying a workload's ID.
    let ca_leaf = fx.pki.example.issue(
        "ca-as-leaf",
        &format!(
            "subjectAltName = URI:{EXAMPLE_ID}\n\
             basicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,digitalSignature,keyCertSign\n\
             extendedKeyUsage = clientAuth\n"
        ),
    );
    fx.assert_refused(&ca_leaf, "CA certificate").await;
    // The trust domain's own root, whose URI SAN is the trust domain's ID.
    fx.assert_refused(&fx.pki.example.ca, "CA certificate")
        .await;
}

#[tokio::test]
async fn refuses_certificate_without_uri_san() {
    let fx = Fixture::start().await;
    let dns_only = fx.pki.example.issue(
        "dns-only",
        "subjectAltName = DNS:onboarding.example.org\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth\n",
    );
    fx.assert_refused(&dns_only, "no URI SAN").await;
}

#[tokio::test]
async fn refuses_certificate_with_two_uri_sans() {
    let fx = Fixture::start().await;
    let two = fx.pki.example.issue(
        "two-uris",
        &format!(
            "subjectAltName = URI:{EXAMPLE_ID},URI:spiffe://example.org/ns/web/sa/frontend\n\
             basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\n\
             extendedKeyUsage = clientAuth\n"
        ),
    );
    fx.assert_refused(&two, "more than one URI SAN").await;
}

#[tokio::test]
async fn refuses_svid_whose_key_usage_is_unfit_for_a_workload() {
    let fx = Fixture::start().await;
    let no_signature = fx.pki.example.issue(
        "key-encipherment-only",
        &format!(
            "subjectAltName = URI:{EXAMPLE_ID}\n\
             basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,keyEncipherment\n\
             extendedKeyUsage = clientAuth\n"
        ),
    );
    fx.assert_refused(&no_signature, "digitalSignature").await;
    let cert_sign = fx.pki.example.issue(
        "key-cert-sign",
        &format!(
            "subjectAltName = URI:{EXAMPLE_ID}\n\
             basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyCertSign\n\
             extendedKeyUsage = clientAuth\n"
        ),
    );
    fx.assert_refused(&cert_sign, "keyCertSign").await;
}

#[tokio::test]
async fn refuses_svid_without_client_auth_extended_key_usage() {
    let fx = Fixture::start().await;
    let server_only = fx.pki.example.issue(
        "server-auth-only",
        &format!(
            "subjectAltName = URI:{EXAMPLE_ID}\n\
             basicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth\n"
        ),
    );
    fx.assert_refused(&server_only, "extended key usage").await;
}

#[tokio::test]
async fn refuses_uri_san_that_is_not_a_valid_spiffe_id() {
    let fx = Fixture::start().await;
    for (name, uri) in [
        ("uppercase-trust-domain", "spiffe://Example.ORG/x"),
        ("https-scheme", "https://example.org/x"),
        ("dot-segment", "spiffe://example.org/ns/../x"),
    ] {
        let bad = fx.pki.example.issue(name, &svid_extensions(uri));
        fx.assert_refused(&bad, "not a valid SPIFFE ID").await;
    }
}

#[tokio::test]
async fn refuses_leaf_whose_spiffe_id_names_only_the_trust_domain() {
    // X509-SVID §5.2: a leaf's SPIFFE ID must have a path; `spiffe://example.org` is the ID
    // of the trust domain itself (what a CA carries), not of a workload.
    let fx = Fixture::start().await;
    let td_only = fx
        .pki
        .example
        .issue("trust-domain-id", &svid_extensions("spiffe://example.org"));
    fx.assert_refused(&td_only, "has no path").await;
}

#[tokio::test]
async fn refuses_self_signed_svid() {
    let fx = Fixture::start().await;
    let dir = fx.pki.dir.path();
    let self_signed = openssl_self_signed(
        dir,
        "self-signed",
        "onboarding",
        &svid_extensions(EXAMPLE_ID),
    );
    fx.assert_refused(&self_signed, "UnknownIssuer").await;
    // An impostor CA with the very name of example.org's CA: the name finds the trust
    // anchor, the signature does not verify against it.
    let impostor = OpenSslCa::new(dir, "impostor-ca", "example.org");
    let forged = impostor.issue("impostor-leaf", &svid_extensions(EXAMPLE_ID));
    fx.assert_refused(&forged, "BadSignature").await;
}

/// A gateway trusting example.org's CA, with one route `/x` that `allowed` may call.
async fn expiry_gateway(allowed: &str) -> (TwoDomains, TestUpstream, Gateway) {
    let domains = TwoDomains::new();
    let upstream = TestUpstream::http(UpstreamMode::Echo).await;
    let config = gateway_config(
        (&domains.gateway.cert, &domains.gateway.key),
        &[("example.org", &domains.example.ca.cert)],
        "1h",
    )
    .upstream(UpstreamSpec::new("u", &upstream.url(false)))
    .route(RouteSpec::new("r", &["GET"], "/x", "u", &[allowed]));
    let gw = Gateway::start(&config, &[]).await;
    (domains, upstream, gw)
}

#[tokio::test]
async fn a_connection_is_closed_when_its_client_svid_expires() {
    let (domains, _upstream, gw) = expiry_gateway("spiffe://example.org/short").await;
    let port = gw.port;
    // Long enough for the certificate to be made and a handshake done on a busy machine;
    // `notAfter` is whole seconds, so it falls up to a second before `lifetime` is up.
    let lifetime = Duration::from_secs(10);
    let expires = std::time::SystemTime::now() + lifetime - Duration::from_secs(1);
    let short = domains.example.issue_between(
        "short-lived",
        &svid_extensions("spiffe://example.org/short"),
        &openssl_time_ago(Duration::from_secs(60)),
        &openssl_time_in(lifetime),
    );
    let client = Client::with_identity(
        &domains.example.ca.cert,
        &short,
        port,
        rustls::DEFAULT_VERSIONS,
    );
    let mut conn = client.connect().await.unwrap();
    assert_eq!(conn.send("GET", "/x", &[], "").await.unwrap().status, 200);
    // The connection serves until the certificate expires, and is closed soon after.
    let deadline = expires + Duration::from_secs(15);
    let refused = loop {
        match conn.send("GET", "/x", &[], "").await {
            Ok(r) => assert_eq!(r.status, 200, "{:?}", r.body),
            Err(e) => break e,
        }
        assert!(
            std::time::SystemTime::now() < deadline,
            "the connection outlived its certificate by 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        std::time::SystemTime::now() >= expires,
        "the connection was closed before its certificate expired: {refused}"
    );
    // Logged as the connection is closed, which the client may see first: waited for.
    assert_eventually!(
        gw.output().contains("client certificate expired"),
        "the expiry was not logged:\n{}",
        gw.output()
    );
}

#[tokio::test]
async fn a_connection_is_closed_when_an_intermediate_of_its_chain_expires_before_the_leaf() {
    let (domains, _upstream, gw) = expiry_gateway("spiffe://example.org/via-short-ca").await;
    // An intermediate CA that ends in 10 s, and a leaf it issues for an hour.
    let lifetime = Duration::from_secs(10);
    let expires = std::time::SystemTime::now() + lifetime - Duration::from_secs(1);
    let dir = domains.dir.path();
    let intermediate = domains.example.issue_between(
        "short-ca",
        "basicConstraints = critical,CA:TRUE,pathlen:0\n\
         keyUsage = critical,keyCertSign,cRLSign\n\
         subjectAltName = URI:spiffe://example.org\n",
        &openssl_time_ago(Duration::from_secs(60)),
        &openssl_time_in(lifetime),
    );
    let leaf = OpenSslCa::existing(dir, &intermediate.cert, &intermediate.key).issue_between(
        "via-short-ca",
        &svid_extensions("spiffe://example.org/via-short-ca"),
        &openssl_time_ago(Duration::from_secs(60)),
        &openssl_time_in(Duration::from_secs(3600)),
    );
    let chain = CertKey {
        cert: dir.join("via-short-ca-chain.crt"),
        key: leaf.key.clone(),
    };
    let pem = [leaf.cert, intermediate.cert].map(|p| std::fs::read_to_string(p).expect("pem"));
    std::fs::write(&chain.cert, pem.concat()).expect("write chain");
    let client = Client::with_identity(
        &domains.example.ca.cert,
        &chain,
        gw.port,
        rustls::DEFAULT_VERSIONS,
    );
    let mut conn = client.connect().await.unwrap();
    assert_eq!(conn.send("GET", "/x", &[], "").await.unwrap().status, 200);
    // The connection serves until the intermediate expires, not the leaf an hour later.
    let deadline = expires + Duration::from_secs(15);
    loop {
        match conn.send("GET", "/x", &[], "").await {
            Ok(r) => assert_eq!(r.status, 200, "{:?}", r.body),
            Err(_) => break,
        }
        assert!(
            std::time::SystemTime::now() < deadline,
            "the connection outlived its chain's intermediate by 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(std::time::SystemTime::now() >= expires);
}
