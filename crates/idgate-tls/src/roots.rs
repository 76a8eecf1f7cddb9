//! Trust anchors for the gateway's outbound TLS (upstreams, JWKS servers, Vault): the
//! platform's roots, read once per process, plus an optional CA file per destination.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why a CA file could not be added to the trust anchors; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: bad PEM: {source}", path.display())]
    BadPem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: unusable CA certificate: {source}", path.display())]
    Unusable {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: no CERTIFICATE block found", path.display())]
    NoCertificate { path: PathBuf },
}

/// The platform's trusted roots, read once per process: reading them is slow, and they
/// change with the OS image, not with the configuration.
pub fn platform_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for err in &found.errors {
            tracing::debug!(error = %err, "skipping an unreadable platform root");
        }
        let (added, _ignored) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                "no platform root certificates found; only destinations with their own `ca` will verify"
            );
        }
        store
    })
}

/// The platform's roots plus every certificate of the PEM file `ca`, if given. Blocking.
/// Errors name the file and never include key material (a CA file holds none).
pub fn roots_with_ca(ca: Option<&Path>) -> Result<RootCertStore, CaFileError> {
    let mut store = platform_roots().clone();
    if let Some(path) = ca {
        let mut n = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|source| CaFileError::Read {
            path: path.to_owned(),
            source,
        })? {
            let cert = cert.map_err(|source| CaFileError::BadPem {
                path: path.to_owned(),
                source,
            })?;
            store.add(cert).map_err(|source| CaFileError::Unusable {
                path: path.to_owned(),
                source,
            })?;
            n += 1;
        }
        if n == 0 {
            return Err(CaFileError::NoCertificate {
                path: path.to_owned(),
            });
        }
    }
    Ok(store)
}
