//! SPIFFE JWT-SVIDs in `Authorization: Bearer`: the identity of a workload that reaches the
//! gateway without its X.509-SVID on the connection (behind a proxy that ends its TLS, or
//! serverless), verified against its trust domain's JWT bundle as the JWT-SVID
//! specification says.
//!
//! A token is verified in this order, each step refusing with a short reason that goes to
//! the log and to the caller's `error_description` (none of them says anything secret, and
//! the token is never echoed):
//!
//! 1. shape — the JWS checks of the `jwt` layer (compact, size, strict JSON), then §2: the
//!    header holds nothing but `alg`, `kid` and `typ`; `typ`, when present, is `JWT` or
//!    `JOSE`; `alg` is one of §2.1 that we verify (RS256/384/512, PS256/384/512, ES256,
//!    ES384 — never `none`, an HMAC or EdDSA; ES512 is refused by name, as unsupported);
//! 2. trust domain — the unverified `sub` must be a SPIFFE ID (§3.1) whose trust domain has
//!    a bundle;
//! 3. key — by `kid` in that bundle's `jwt-svid` keys (a token without `kid` only when the
//!    bundle has exactly one key for its `alg`); the key's type and curve must fit `alg`,
//!    which is what defeats algorithm confusion;
//! 4. signature — `ring`;
//! 5. claims — `exp` required (§3.3), checked with leeway; `nbf` and `iat` when present;
//!    `aud` required, one string or an array, of which one must be a configured audience
//!    (§3.2); the lifetime bound when configured. `iss` is not read: the specification gives
//!    it no meaning, and the bundle is what says who may sign for a trust domain.
//!
//! The bundles can be replaced at any time (a file re-read, the Workload API's stream)
//! through the verifier's [`JwtBundleStore`], without rebuilding the verifier.

mod bundle;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idgate_tls::SpiffeId;
use serde_json::{Map, Value};

pub use bundle::{
    JwtBundle, JwtBundleError, JwtBundleStore, JwtBundles, JwtBundlesError, MAX_BUNDLE_BYTES,
};

use crate::failure::AuthFailure;
use crate::jwt::claims::{numeric_date, string_or_array};
use crate::jwt::jws;
use crate::jwt::{Algorithm, select, verify_signature};

/// Clock skew tolerated on `exp`, `nbf` and `iat` unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// The algorithms of JWT-SVID §2.1 the gateway verifies: all of them but ES512, which
/// `ring` cannot verify (no P-521). EdDSA is not among §2.1's. SPIRE signs ES256 by
/// default and ES384 with `jwt_key_type = "ec-p384"`.
pub const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The only header members JWT-SVID §2 allows.
const HEADER_MEMBERS: [&str; 3] = ["alg", "kid", "typ"];

/// What a JWT-SVID must satisfy besides a valid signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidSettings {
    /// A token is accepted when its `aud` holds at least one of these.
    pub audiences: Vec<String>,
    pub leeway: Duration,
    /// When set, the longest validity accepted: `exp - iat`, or `exp - now` for a token
    /// without `iat`. A stolen token is good until it expires, so issuers that mint
    /// long-lived tokens are refused rather than trusted.
    pub max_lifetime: Option<Duration>,
}

impl JwtSvidSettings {
    /// With the default leeway and no lifetime bound.
    pub fn new(audiences: Vec<String>) -> Self {
        Self {
            audiences,
            leeway: DEFAULT_LEEWAY,
            max_lifetime: None,
        }
    }
}

/// Why a verifier cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtSvidSetupError {
    #[error("list at least one audience, and no empty one")]
    NoAudience,
    #[error("max_lifetime must be more than zero")]
    ZeroMaxLifetime,
}

/// A workload authenticated by a JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidIdentity {
    /// The token's `sub`.
    pub spiffe_id: SpiffeId,
    /// The token's `exp`.
    pub expires_at: SystemTime,
}

/// Verifies JWT-SVIDs. Cheap to share (`Send + Sync`); never touches the network.
#[derive(Debug)]
pub struct JwtSvidVerifier {
    settings: JwtSvidSettings,
    bundles: JwtBundleStore,
}

impl JwtSvidVerifier {
    /// A verifier with bundles of its own, such as those read from files.
    pub fn new(settings: JwtSvidSettings, bundles: JwtBundles) -> Result<Self, JwtSvidSetupError> {
        Self::with_store(settings, JwtBundleStore::new(bundles))
    }

    /// A verifier reading the bundles of `store`, which someone else may keep up to date
    /// (the Workload API's bundle stream) and share with the verifiers of later snapshots.
    pub fn with_store(
        settings: JwtSvidSettings,
        store: JwtBundleStore,
    ) -> Result<Self, JwtSvidSetupError> {
        if settings.audiences.is_empty() || settings.audiences.iter().any(String::is_empty) {
            return Err(JwtSvidSetupError::NoAudience);
        }
        if settings.max_lifetime.is_some_and(|d| d.is_zero()) {
            return Err(JwtSvidSetupError::ZeroMaxLifetime);
        }
        Ok(Self {
            settings,
            bundles: store,
        })
    }

    /// Replaces every bundle at once; requests under way finish with the old set.
    pub fn set_bundles(&self, bundles: JwtBundles) {
        self.bundles.set(bundles);
    }

    /// The store the bundles are read from.
    pub fn store(&self) -> &JwtBundleStore {
        &self.bundles
    }

    pub fn settings(&self) -> &JwtSvidSettings {
        &self.settings
    }

    /// Verifies a compact JWT-SVID at time `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<JwtSvidIdentity, AuthFailure> {
        self.verify_inner(token, now)
            .map_err(AuthFailure::InvalidToken)
    }

    fn verify_inner(&self, token: &str, now: SystemTime) -> Result<JwtSvidIdentity, &'static str> {
        let unverified = jws::parse_with(token, svid_header)?;
        let alg = unverified.alg;
        if !ALGORITHMS.contains(&alg) {
            return Err("algorithm not allowed");
        }
        let spiffe_id = match unverified.claims.get("sub") {
            None => return Err("missing subject"),
            Some(Value::String(s)) => SpiffeId::new(s).map_err(|_| "subject is not a SPIFFE ID")?,
            Some(_) => return Err("malformed claims"),
        };

        let bundles = self.bundles.load();
        let bundle = bundles
            .get(spiffe_id.trust_domain_name())
            .ok_or("untrusted trust domain")?;
        let keys = bundle.key_set();
        let selection = select(keys, unverified.kid.as_deref(), alg);
        verify_signature(keys, selection, alg, &unverified).inspect_err(|why| {
            tracing::debug!(trust_domain = %bundle.trust_domain(), kid = unverified.kid.as_deref().unwrap_or("-"), %alg, reason = why, "JWT-SVID not verified by its trust domain's keys");
        })?;

        let expires_at = check_claims(&unverified.claims, &self.settings, now)?;
        Ok(JwtSvidIdentity {
            spiffe_id,
            expires_at,
        })
    }
}

/// JWT-SVID §2: no header member but `alg`, `kid` and `typ`, and `typ` `JWT` or `JOSE`.
/// This also refuses `crit`, `jku`, `jwk`, `x5u` and `b64`, each a way to make a verifier
/// look elsewhere for its key or read the token otherwise.
fn svid_header(header: &Map<String, Value>) -> Result<bool, &'static str> {
    if header.keys().any(|k| !HEADER_MEMBERS.contains(&k.as_str())) {
        return Err("header member not allowed in a JWT-SVID");
    }
    match header.get("typ") {
        None => Ok(false),
        Some(Value::String(t)) if t == "JWT" || t == "JOSE" => Ok(false),
        Some(_) => Err("not a JWT-SVID (typ)"),
    }
}

/// The registered claims JWT-SVID §3 requires, after the signature is verified: returns
/// the expiry.
fn check_claims(
    claims: &Map<String, Value>,
    settings: &JwtSvidSettings,
    now: SystemTime,
) -> Result<SystemTime, &'static str> {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let leeway = settings.leeway.as_secs_f64();
    // Times first: "expired" tells the workload to fetch a new SVID, whatever else is wrong.
    let exp = numeric_date(claims, "exp")?.ok_or("missing expiry")?;
    if now_s >= exp + leeway {
        return Err("expired");
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| nbf > now_s + leeway) {
        return Err("not yet valid");
    }
    let iat = numeric_date(claims, "iat")?;
    if iat.is_some_and(|iat| iat > now_s + leeway) {
        return Err("issued in the future");
    }
    if let Some(max) = settings.max_lifetime {
        let from = iat.unwrap_or(now_s);
        if exp - from > max.as_secs_f64() + leeway {
            return Err("lifetime too long");
        }
    }
    let expires_at = Duration::try_from_secs_f64(exp)
        .ok()
        .and_then(|d| UNIX_EPOCH.checked_add(d))
        .ok_or("malformed claims")?;

    let audiences = match claims.get("aud") {
        None => return Err("missing audience"),
        Some(v) => string_or_array(v)?,
    };
    if !audiences
        .iter()
        .any(|a| settings.audiences.iter().any(|e| e == a))
    {
        return Err("wrong audience");
    }
    Ok(expires_at)
}

#[cfg(test)]
mod tests;
