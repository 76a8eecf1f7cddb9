//! Each reason from a real handshake: the gateway's own `ServerConfig` (its SPIFFE
//! verifier included) against a rustls client, bytes passed between them in memory, and
//! the server's error wrapped as tokio-rustls wraps it.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{AlertDescription, ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::*;
use crate::material::{MaterialSpec, TlsMaterial, TlsVersion};
use crate::test_ca::{Ca, Leaf};

/// The gateway's TLS material: its SVID from `ca`, `ca` trusted for `example.org`.
struct Gateway {
    _dir: tempfile::TempDir,
    material: TlsMaterial,
}

impl Gateway {
    fn new(ca: &Ca) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let leaf = ca.leaf(&["spiffe://example.org/idgate", "dns:localhost"], -1, 24);
        let spec = MaterialSpec {
            svid_cert: write("gateway.crt", &leaf.pem),
            svid_key: write("gateway.key", &leaf.key_pem),
            bundles: vec![(
                "example.org".parse().unwrap(),
                write("bundle.pem", &ca.pem()),
            )],
        };
        let material = TlsMaterial::load(spec, crate::crypto_provider()).unwrap();
        Self {
            _dir: dir,
            material,
        }
    }

    fn server(&self, min: TlsVersion) -> Arc<ServerConfig> {
        Arc::new(self.material.server_config(min, true).unwrap())
    }
}

/// A client trusting `server_ca`, presenting `identity` if given.
fn client(
    server_ca: &Ca,
    identity: Option<Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.root()).unwrap();
    let builder = ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

/// Moves what `from` has to send into `to`; false when there was nothing.
fn pass(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])) -> bool {
    let mut bytes = Vec::new();
    from(&mut bytes);
    if bytes.is_empty() {
        return false;
    }
    to(&bytes);
    true
}

/// Runs a handshake between `server` and `client` and returns the reason the server gives
/// for its failure, found as the listener finds it (through an `io::Error`).
fn server_failure(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> HandshakeFailure {
    let mut s = ServerConnection::new(server).unwrap();
    let mut c = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut server_error = None;
    for _ in 0..20 {
        let to_server = pass(
            &mut |out| {
                while c.wants_write() {
                    c.write_tls(out).unwrap();
                }
            },
            &mut |mut bytes| {
                while !bytes.is_empty() && server_error.is_none() {
                    s.read_tls(&mut bytes).unwrap();
                    if let Err(e) = s.process_new_packets() {
                        server_error = Some(e);
                    }
                }
            },
        );
        if let Some(e) = server_error.take() {
            return HandshakeFailure::of(&io::Error::new(io::ErrorKind::InvalidData, e));
        }
        let to_client = pass(
            &mut |out| {
                while s.wants_write() {
                    s.write_tls(out).unwrap();
                }
            },
            &mut |mut bytes| {
                while !bytes.is_empty() {
                    c.read_tls(&mut bytes).unwrap();
                    // A client that refuses the server sends its alert on the next write.
                    if c.process_new_packets().is_err() {
                        break;
                    }
                }
            },
        );
        assert!(
            to_server || to_client,
            "the handshake stalled without an error (handshaking: {})",
            s.is_handshaking()
        );
    }
    panic!("the handshake did not fail");
}

const ONBOARDING: &str = "spiffe://example.org/ns/kyc/sa/onboarding";
const ANY: &[&rustls::SupportedProtocolVersion] = rustls::ALL_VERSIONS;

#[test]
fn a_client_without_a_certificate_is_no_client_certificate() {
    let ca = Ca::new("example.org");
    let gw = Gateway::new(&ca);
    let reason = server_failure(gw.server(TlsVersion::Tls12), client(&ca, None, ANY));
    assert_eq!(reason, HandshakeFailure::NoClientCertificate);
}

#[test]
fn an_svid_from_another_ca_or_an_unknown_trust_domain_is_unknown_ca() {
    let ca = Ca::new("example.org");
    let gw = Gateway::new(&ca);
    // Another CA under the very same name, and one under another name: neither is trusted.
    for other in [Ca::new("example.org"), Ca::new("elsewhere.test")] {
        let id = client(&ca, Some(other.svid(ONBOARDING)), ANY);
        assert_eq!(
            server_failure(gw.server(TlsVersion::Tls12), id),
            HandshakeFailure::UnknownCa
        );
    }
    // The right CA, but for a trust domain the gateway has no bundle for.
    let stranger = client(&ca, Some(ca.svid("spiffe://stranger.test/w")), ANY);
    assert_eq!(
        server_failure(gw.server(TlsVersion::Tls12), stranger),
        HandshakeFailure::UnknownCa
    );
}

#[test]
fn expired_and_not_yet_valid_svids_are_told_apart() {
    let ca = Ca::new("example.org");
    let gw = Gateway::new(&ca);
    let expired = client(&ca, Some(ca.leaf(&[ONBOARDING], -48, -24)), ANY);
    assert_eq!(
        server_failure(gw.server(TlsVersion::Tls12), expired),
        HandshakeFailure::Expired
    );
    let early = client(&ca, Some(ca.leaf(&[ONBOARDING], 24, 48)), ANY);
    assert_eq!(
        server_failure(gw.server(TlsVersion::Tls12), early),
        HandshakeFailure::NotYetValid
    );
}

#[test]
fn a_certificate_that_is_not_an_svid_is_bad_svid() {
    let ca = Ca::new("example.org");
    let gw = Gateway::new(&ca);
    for sans in [
        &["dns:client.example.org"][..],
        &[ONBOARDING, "spiffe://example.org/ns/kyc/sa/other"][..],
        &["spiffe://example.org"][..],
    ] {
        let id = client(&ca, Some(ca.leaf(sans, -1, 24)), ANY);
        assert_eq!(
            server_failure(gw.server(TlsVersion::Tls12), id),
            HandshakeFailure::BadSvid,
            "{sans:?}"
        );
    }
}

#[test]
fn a_client_offering_only_tls_1_2_to_a_tls_1_3_listener_is_protocol_version() {
    let ca = Ca::new("example.org");
    let gw = Gateway::new(&ca);
    let old = client(&ca, Some(ca.svid(ONBOARDING)), &[&rustls::version::TLS12]);
    assert_eq!(
        server_failure(gw.server(TlsVersion::Tls13), old),
        HandshakeFailure::ProtocolVersion
    );
}

#[test]
fn a_client_that_does_not_trust_the_gateway_is_client_alert() {
    let ca = Ca::new("example.org");
    let gw = Gateway::new(&ca);
    // The client trusts another CA for the gateway's certificate and says so with an alert.
    let doubting = client(&Ca::new("example.org"), Some(ca.svid(ONBOARDING)), ANY);
    assert_eq!(
        server_failure(gw.server(TlsVersion::Tls12), doubting),
        HandshakeFailure::ClientAlert
    );
}

#[test]
fn plain_http_to_the_tls_port_is_malformed() {
    let ca = Ca::new("example.org");
    let gw = Gateway::new(&ca);
    let mut s = ServerConnection::new(gw.server(TlsVersion::Tls12)).unwrap();
    s.read_tls(&mut &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..])
        .unwrap();
    let e = s.process_new_packets().unwrap_err();
    let e = io::Error::new(io::ErrorKind::InvalidData, e);
    assert_eq!(HandshakeFailure::of(&e), HandshakeFailure::Malformed);
}

#[test]
fn errors_of_the_connection_itself_are_closed_or_other() {
    for kind in [
        io::ErrorKind::UnexpectedEof,
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::BrokenPipe,
    ] {
        let e = io::Error::new(kind, "tls handshake eof");
        assert_eq!(
            HandshakeFailure::of(&e),
            HandshakeFailure::Closed,
            "{kind:?}"
        );
    }
    let e = io::Error::other("something else");
    assert_eq!(HandshakeFailure::of(&e), HandshakeFailure::Other);
    let e = io::Error::new(
        io::ErrorKind::InvalidData,
        Error::AlertReceived(AlertDescription::UnknownCA),
    );
    assert_eq!(HandshakeFailure::of(&e), HandshakeFailure::ClientAlert);
}

#[test]
fn every_reason_has_its_own_label() {
    let labels: std::collections::BTreeSet<_> =
        HandshakeFailure::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), HandshakeFailure::ALL.len());
    assert!(
        labels
            .iter()
            .all(|l| { l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') })
    );
}
