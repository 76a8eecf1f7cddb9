//! Trust anchors for the gateway's outbound TLS (upstreams, JWKS servers, Vault): the
//! platform's roots, read once per process, plus an optional CA file per destination.

use std::path::Path;
use std::sync::OnceLock;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

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
pub fn roots_with_ca(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = platform_roots().clone();
    if let Some(path) = ca {
        let mut n = 0;
        for cert in
            CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?
        {
            let cert = cert.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
            store
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{}: no CERTIFICATE block found", path.display()));
        }
    }
    Ok(store)
}
