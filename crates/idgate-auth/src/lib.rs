//! Caller authentication and route authorization.
//!
//! A route lists the layers it requires (`mtls`, `api_key`, `jwt`, `jwt_svid`, or `any` of
//! several);
//! each layer that passes adds an identity to one [`Caller`]. Authorization judges its
//! [`Principal`]s one at a time: one of them must be on the route's allow list and hold the
//! scopes. Failures are [`AuthFailure`]s, mapped to 401/403 problems with a
//! correct `WWW-Authenticate` challenge in one place.

pub mod api_key;
pub mod caller;
pub mod failure;
pub mod issuer;
pub mod jwt;
pub mod jwt_svid;
pub mod policy;

pub use caller::{ApiKeyIdentity, Caller, JwtSvidIdentity, Principal, TokenIdentity};
pub use failure::AuthFailure;
pub use policy::{AllowEntry, AuthLayer, RouteAuth, ScopeRule};
