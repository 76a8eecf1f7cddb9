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
//! ```no_run
//! # async fn demo(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use idgate_workload_test::{TestCa, WorkloadApiServer, X509State};
//!
//! let server = WorkloadApiServer::start(&dir.join("agent.sock")).await?;
//! let ca = TestCa::new("example.org")?;
//! let svid = ca.svid("spiffe://example.org/idgate", Duration::from_secs(3600))?;
//! server.set_x509(X509State::issued_by(&ca, svid));
//! // … point the client at server.endpoint(), then:
//! server.wait_for_x509_streams(1, Duration::from_secs(10)).await?;
//! let rotated = ca.svid("spiffe://example.org/idgate", Duration::from_secs(3600))?;
//! server.set_x509(X509State::issued_by(&ca, rotated));
//! server.shutdown().await; // agent loss
//! # Ok(())
//! # }
//! ```
//!
//! Protocol behaviour (SPIFFE Workload API and Workload Endpoint specs, SPIRE's choices
//! where the spec leaves one):
//! - a request without exactly one `workload.spiffe.io: true` metadata entry is refused
//!   with InvalidArgument;
//! - before the first `set_x509`, X.509 streams stay open and send nothing, as SPIRE's do
//!   for a registered workload whose SVIDs are still being minted (the spec's alternative,
//!   PermissionDenied, is [`set_no_identity`](WorkloadApiServer::set_no_identity));
//! - no identity for the caller: PermissionDenied, message `no identity issued` (SPIRE's
//!   wording, which the spiffe crate reports as `NoIdentityIssued`), to open streams too;
//! - shutdown: Unavailable;
//! - bundle maps are keyed by trust domain ID (`spiffe://example.org`), certificates are
//!   concatenated DER, JWT bundles are JWKS JSON;
//! - streams send the full current state first, then again on each `set_*` (a stream that
//!   is slower than the pushes may see only the latest state, which is complete anyway);
//! - what a test sets is sent as it is (no check of hint uniqueness or of empty lists), so
//!   a test can also play a non-conforming agent;
//! - `FetchJWTSVID` mints with the [`JwtAuthority`] set for each identity's trust domain;
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
