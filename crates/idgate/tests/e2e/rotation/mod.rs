//! Rotation of the gateway's SVID and trust bundles while it serves: atomic renames,
//! Kubernetes-style `..data` symlink swaps, bad files, and SIGHUP — all without a restart.
//!
//! The gateway's TLS files are polled only once an hour here, so what is proven is the
//! directory watch (or SIGHUP), not the poll.
//!
//! This module holds the helpers the tests share; each submodule tests one concern.

mod config_file;
mod sighup;
mod svid;
mod trust_bundle;

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::support::*;

const PARTNER: &str = "spiffe://partner.test/ns/risk/sa/scorer";

/// The extensions of a gateway SVID: its SPIFFE ID and the loopback names the tests dial.
const GATEWAY_EXTENSIONS: &str = "subjectAltName = URI:spiffe://example.org/idgate,DNS:localhost,IP:127.0.0.1\n\
     basicConstraints = critical,CA:FALSE\n\
     keyUsage = critical,digitalSignature\n\
     extendedKeyUsage = serverAuth,clientAuth\n";

/// `config` with an upstream and one route, `/v1/kyc`, for these SPIFFE IDs.
fn with_kyc_route(config: GatewayConfig, upstream: &TestUpstream, allow: &[&str]) -> GatewayConfig {
    config
        .upstream(UpstreamSpec::new("provider", &upstream.url(false)))
        .route(RouteSpec::new(
            "kyc",
            &["GET"],
            "/v1/kyc",
            "provider",
            allow,
        ))
}

/// Starts a gateway with this SVID and bundle, polling its files every `poll`.
async fn start(
    svid: (&Path, &Path),
    bundle: &Path,
    poll: &str,
    upstream: &TestUpstream,
) -> Gateway {
    let config = with_kyc_route(
        gateway_config(svid, &[(TD, bundle)], poll),
        upstream,
        &[ONBOARDING],
    );
    Gateway::start(&config, &[]).await
}

/// The first certificate of a PEM file.
fn leaf_der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path)
        .expect("read cert")
        .next()
        .expect("a certificate")
        .expect("pem")
}

/// The certificate the gateway presents to a new connection.
pub(crate) async fn presented_cert(client: &Client) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", client.port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(client.config.clone())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no server certificate".to_owned())
}

async fn presents(client: &Client, cert: &Path) -> bool {
    presented_cert(client).await.ok() == Some(leaf_der(cert))
}

/// Whether a new connection's GET succeeds (a refused SVID gives an error or a non-2xx).
async fn accepted(client: &Client) -> bool {
    matches!(client.get("/v1/kyc").await, Ok(r) if r.status == 200)
}

/// Replaces `path` atomically with `contents`: written under a temporary name in the same
/// directory, then renamed over it, as cert-manager, SPIRE helpers and `install` do.
fn replace_atomically(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("rotating");
    std::fs::write(&tmp, contents).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// A new gateway SVID signed by the dev PKI's own CA (its `bundle.pem` and `ca.key`).
fn reissue_gateway_svid(pki: &Pki, name: &str) -> CertKey {
    let out = pki.path().join("reissued");
    std::fs::create_dir_all(&out).expect("mkdir");
    OpenSslCa::existing(&out, &pki.files.bundle, &pki.path().join("ca.key"))
        .issue(name, GATEWAY_EXTENSIONS)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

/// The process started at the beginning of the test is still the one serving: nothing was
/// restarted to take the change into use.
fn assert_not_restarted(gw: &mut Gateway) {
    assert!(
        gw.child.try_wait().expect("try_wait").is_none(),
        "the gateway exited; output:\n{}",
        gw.output()
    );
}

/// Error texts of the gateway's "new TLS material refused" log lines.
fn material_refusals(gw: &Gateway) -> Vec<String> {
    log_lines(
        gw,
        "idgate_tls::watch",
        "new TLS material refused; the previous material stays in use",
    )
    .into_iter()
    .map(|l| {
        l.get("error")
            .and_then(|e| e.as_str())
            .unwrap_or_default()
            .to_owned()
    })
    .collect()
}
