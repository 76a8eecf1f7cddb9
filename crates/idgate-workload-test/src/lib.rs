//! A SPIFFE Workload API server for tests: it speaks the spec's `workload.proto` over a
//! unix socket, as a SPIRE agent does, and a test drives what it issues.
//!
//! - [`TestCa`] and [`Svid`]: a trust domain's CA and its X.509-SVIDs (also as PEM files);
//! - [`JwtAuthority`]: an ES256 JWT-SVID signing key, its JWKS bundle and minted tokens;
//! - [`WorkloadApiServer`]: the server. [`set_x509`](WorkloadApiServer::set_x509),
//!   [`set_jwt_bundles`](WorkloadApiServer::set_jwt_bundles) and
//!   [`set_no_identity`](WorkloadApiServer::set_no_identity) push to every open stream at
//!   once; [`shutdown`](WorkloadApiServer::shutdown) is agent loss; the counters let a test
//!   wait until its client is subscribed.
//!
//! Protocol behaviour (SPIFFE Workload API and Workload Endpoint specs, SPIRE's choices
//! where the spec leaves one):
//! - a request without exactly one `workload.spiffe.io: true` metadata entry is refused
//!   with InvalidArgument;
//! - no identity for the caller: PermissionDenied, message `no identity issued`;
//! - shutdown: Unavailable;
//! - bundle maps are keyed by trust domain ID (`spiffe://example.org`), certificates are
//!   concatenated DER, JWT bundles are JWKS JSON;
//! - streams send the full current state first, then again on each change;
//! - `ValidateJWTSVID` validates with the JWT bundles set (alg ES256/ES384/RS*/PS*, the
//!   subject's trust domain bundle, `kid`, signature, `exp`, `nbf`, `aud`); a token that
//!   fails is an InvalidArgument, as in SPIRE.

mod counters;
mod files;
mod jwt;
pub mod pb;
mod pki;
mod server;
mod service;
mod state;
mod validate;

pub use counters::{Counters, WaitTimeout};
pub use jwt::{JwtAuthority, JwtError};
pub use pki::{PkiError, Svid, TestCa};
pub use server::WorkloadApiServer;
pub use state::{X509Identity, X509State};
