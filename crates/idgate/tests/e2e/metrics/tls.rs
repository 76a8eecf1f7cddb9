//! Refused TLS handshakes counted by reason, over real sockets, and the expiry times of the
//! gateway's SVID and trust bundle, following a rotation of each.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::assert_eventually;
use crate::support::*;

use super::{GATEWAY_ID, assert_nothing_private, scrape};

const ROGUE: &str = "spiffe://example.org/ns/kyc/sa/rogue";
const PLAIN: &str = "spiffe://example.org/ns/kyc/sa/plain";

/// Reads until the peer closes (or resets) the connection.
async fn until_closed(tcp: &mut TcpStream) {
    let mut buf = [0u8; 512];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Asserts that a client with `config` does not get an answer from the gateway.
async fn refused(client: Client) {
    if let Ok(reply) = client.get("/v1/kyc").await {
        panic!("a refused client got {}", reply.status);
    }
}

#[tokio::test]
async fn refused_handshakes_are_counted_by_reason() {
    within(async {
        let pki = Pki::default_pki();
        let upstream = TestUpstream::http(UpstreamMode::Echo).await;
        let mut config = base_config(&pki)
            .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
            .route(RouteSpec::get("kyc", "/v1/kyc", "provider"));
        config.listener.tls_min_version = Some(TlsVersion::V1_3);
        config
            .listener
            .extra
            .insert("handshake_timeout".into(), "500ms".into());
        let gw = Gateway::start(&config, &[]).await;
        let port = gw.port;
        let bundle = &pki.files.bundle;
        let ca = OpenSslCa::existing(pki.path(), bundle, &pki.files.ca_key);
        let tls13 = rustls::DEFAULT_VERSIONS;

        // An SVID of the right trust domain from another CA, and a client trusting that
        // other CA only, so that it refuses the gateway's certificate.
        let rogue = Pki::new(TD, &[ROGUE]);
        let (rogue_cert, rogue_key) = rogue.workload(ROGUE);
        let rogue_svid = CertKey {
            cert: rogue_cert,
            key: rogue_key,
        };
        refused(Client::with_identity(bundle, &rogue_svid, port, tls13)).await;
        let (cert, key) = pki.workload(ONBOARDING);
        let onboarding = CertKey { cert, key };
        refused(Client::with_identity(
            &rogue.files.bundle,
            &onboarding,
            port,
            tls13,
        ))
        .await;
        // No certificate at all.
        refused(Client::new(&pki, None, port, false)).await;
        // The right CA, but expired, and a certificate that is not an SVID.
        let expired = ca.issue_between(
            "expired",
            &svid_extensions(ONBOARDING),
            &openssl_time_ago(Duration::from_secs(2 * 86_400)),
            &openssl_time_ago(Duration::from_secs(86_400)),
        );
        refused(Client::with_identity(bundle, &expired, port, tls13)).await;
        let plain = ca.issue(
            "plain",
            "subjectAltName = DNS:plain.test\nbasicConstraints = critical,CA:FALSE\n\
             keyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n",
        );
        refused(Client::with_identity(bundle, &plain, port, tls13)).await;
        // TLS 1.2 only, to a listener that takes 1.3 only.
        let old = [&rustls::version::TLS12];
        refused(Client::with_identity(bundle, &onboarding, port, &old)).await;
        // Plain HTTP; a connection closed at once; one that never starts its handshake.
        let mut http = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        http.write_all(format!("GET /v1/kyc HTTP/1.1\r\nhost: {PLAIN}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        until_closed(&mut http).await;
        drop(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        until_closed(&mut silent).await;
        // And one that is accepted, which counts nowhere.
        let ok = Client::new(&pki, Some(ONBOARDING), port, true)
            .get("/v1/kyc")
            .await;
        assert_eq!(ok.unwrap().status, 200);

        let expected = [
            ("unknown_ca", 1.0),
            ("client_alert", 1.0),
            ("no_client_certificate", 1.0),
            ("expired", 1.0),
            ("bad_svid", 1.0),
            ("protocol_version", 1.0),
            ("malformed", 1.0),
            ("closed", 1.0),
            ("timeout", 1.0),
            ("not_yet_valid", 0.0),
            ("other", 0.0),
        ];
        let counted = |m: &super::exposition::Exposition| {
            expected.iter().all(|(reason, n)| {
                m.value("idgate_tls_handshake_failures_total", &[("reason", reason)]) == Some(*n)
            })
        };
        // The gateway may count a refusal a moment after the client saw it.
        assert_eventually!(counted(&scrape(&gw).await.0), "{}", scrape(&gw).await.1);
        let (m, text) = scrape(&gw).await;
        assert_eq!(
            m.series_of("idgate_tls_handshake_failures_total").count(),
            expected.len()
        );
        assert_nothing_private(&m, &text, &[ROGUE, ONBOARDING, PLAIN, "plain.test"]);
        // The log line says the same reason as the metric; it reaches the output through the
        // log's writer thread and a pipe, so it is waited for.
        assert_eventually!(
            log_lines(&gw, "idgate::tls", "TLS handshake refused")
                .iter()
                .any(|l| l.get("reason").and_then(|r| r.as_str()) == Some("bad_svid")),
            "{}",
            gw.output()
        );
    })
    .await;
}

/// A certificate file's `notAfter`, in Unix seconds.
fn not_after(path: &Path) -> f64 {
    let leaf = CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let t = idgate_tls::not_after(&leaf).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64
}

fn expiry(m: &super::exposition::Exposition, kind: &str, name: &str) -> Option<f64> {
    m.value(
        "idgate_certificate_expiry_timestamp_seconds",
        &[("kind", kind), ("name", name)],
    )
}

/// Replaces `path` by a rename, as SPIRE's helpers do.
fn replace(path: &Path, from: &Path) {
    let tmp = path.with_extension("next");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn certificate_expiry_times_follow_the_svid_and_bundle_in_use() {
    within(async {
        let pki = Pki::default_pki();
        let gw = Gateway::start(&base_config(&pki), &[]).await;
        let (m, text) = scrape(&gw).await;
        assert_eq!(
            m.series_of("idgate_certificate_expiry_timestamp_seconds")
                .count(),
            2,
            "{text}"
        );
        let svid = not_after(&pki.files.gateway_cert);
        assert_eq!(expiry(&m, "svid", GATEWAY_ID), Some(svid), "{text}");
        assert_eq!(
            expiry(&m, "trust_bundle", TD),
            Some(not_after(&pki.files.bundle))
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now..now + 3700.0).contains(&svid), "{text}");

        // A renewed SVID lasting two days, and a second CA in the bundle lasting a month.
        let out = pki.path().join("renewed");
        std::fs::create_dir_all(&out).unwrap();
        let renewed = OpenSslCa::existing(&out, &pki.files.bundle, &pki.files.ca_key)
            .issue_between(
                "gateway-v2",
                "subjectAltName = URI:spiffe://example.org/idgate,DNS:localhost,IP:127.0.0.1\n\
                 basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = serverAuth,clientAuth\n",
                &openssl_time_ago(Duration::from_secs(60)),
                &openssl_time_in(Duration::from_secs(2 * 86_400)),
            );
        replace(&pki.files.gateway_key, &renewed.key);
        replace(&pki.files.gateway_cert, &renewed.cert);
        let next_ca = OpenSslCa::new(&out, "next-ca", TD);
        let mut both = std::fs::read(&pki.files.bundle).unwrap();
        both.extend(std::fs::read(&next_ca.ca.cert).unwrap());
        let staged = out.join("bundle.pem");
        std::fs::write(&staged, both).unwrap();
        replace(&pki.files.bundle, &staged);

        let (svid, bundle) = (not_after(&renewed.cert), not_after(&next_ca.ca.cert));
        assert_eventually!(
            {
                let m = scrape(&gw).await.0;
                expiry(&m, "svid", GATEWAY_ID) == Some(svid)
                    && expiry(&m, "trust_bundle", TD) == Some(bundle)
            },
            "the expiry times did not follow the rotation: {}\n{}",
            scrape(&gw).await.1,
            gw.output()
        );
    })
    .await;
}
