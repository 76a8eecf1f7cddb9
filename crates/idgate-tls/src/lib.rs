//! TLS for idgate: typed SPIFFE IDs, X.509-SVID verification per trust domain, the
//! gateway's rotating TLS material and a development PKI.

pub mod client;
pub mod devpki;
pub mod handshake;
pub mod material;
pub mod roots;
pub mod spiffe;
pub mod svid;
#[cfg(test)]
mod test_ca;
mod verified;
pub mod verifier;
pub mod watch;
pub mod workload;

use std::sync::Arc;

pub use handshake::HandshakeFailure;
pub use material::{Expiry, MaterialError, MaterialSpec, TlsMaterial, TlsVersion};
pub use spiffe::{SpiffeId, SpiffeIdError, SpiffeIdPattern, TrustDomain};
pub use svid::{SvidError, leaf_facts, leaf_spiffe_id, not_after};
pub use verifier::{SpiffeClientVerifier, TrustBundles};
pub use workload::{WorkloadApi, WorkloadEndpoint, WorkloadStatus};

/// The one cryptographic provider of the whole process (ring), so that rustls never has to
/// guess between two.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
