//! `[jwt_svid]`: the audiences a SPIFFE JWT-SVID must name, its clock leeway and lifetime
//! bound, and the files holding each trust domain's SPIFFE bundle (JWT-SVID keys).
//!
//! The bundle files are read when the configuration is built (and on every reload), not
//! here: a file that cannot be used refuses the start or the reload, naming
//! `jwt_svid.bundles[N].file`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use idgate_auth::policy::{AuthLayer, RouteAuth};
use idgate_tls::TrustDomain;
use serde::Deserialize;

use crate::context::Ctx;

/// One `[[jwt_svid.bundles]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidBundleFile {
    pub trust_domain: TrustDomain,
    /// A SPIFFE bundle (JWKS) whose `"use": "jwt-svid"` keys sign the trust domain's SVIDs.
    pub file: PathBuf,
}

/// `[jwt_svid]`: how JWT-SVIDs on routes listing the `jwt_svid` layer are verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidConfig {
    /// A token's `aud` must hold at least one of these.
    pub audiences: Vec<String>,
    pub leeway: Duration,
    /// When set, the longest validity accepted (`exp - iat`, or `exp - now` without `iat`).
    pub max_lifetime: Option<Duration>,
    /// Bundles read from files; empty only when they come from the Workload API.
    pub bundles: Vec<JwtSvidBundleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtSvid {
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    leeway: Option<String>,
    #[serde(default)]
    max_lifetime: Option<String>,
    #[serde(default)]
    bundles: Vec<RawBundle>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBundle {
    trust_domain: String,
    file: String,
}

/// Whether `[jwt_svid]` may go without `bundles`: only when the gateway gets its bundles
/// from the SPIFFE Workload API, which delivers every trust domain's JWT bundle. Without
/// either, no JWT-SVID could ever be verified, and every request on a `jwt_svid` route
/// would be refused — a configuration mistake to report at load, not at run time.
pub(crate) fn bundles_required(bundles_from_workload_api: bool) -> bool {
    !bundles_from_workload_api
}

/// `bundles_from_workload_api`: see [`bundles_required`].
pub(crate) fn parse(
    cx: &mut Ctx<'_>,
    raw: RawJwtSvid,
    bundles_from_workload_api: bool,
) -> Option<JwtSvidConfig> {
    let before = cx.errors.len();
    if raw.audiences.is_empty() {
        cx.err(
            "jwt_svid.audiences",
            "list the audiences (aud) a JWT-SVID must name, like \"spiffe://example.org/idgate\"",
        );
    }
    for (i, a) in raw.audiences.iter().enumerate() {
        if a.is_empty() || a.trim() != a {
            cx.err(
                format!("jwt_svid.audiences[{i}]"),
                "must be a non-empty audience without surrounding spaces",
            );
        }
    }
    let leeway = crate::auth::leeway(
        cx,
        "jwt_svid.leeway",
        raw.leeway,
        idgate_auth::jwt_svid::DEFAULT_LEEWAY,
    );
    // `duration` reports a zero or malformed value itself.
    let max_lifetime = raw
        .max_lifetime
        .map(|v| cx.duration("jwt_svid.max_lifetime", Some(v), Duration::ZERO));
    if raw.bundles.is_empty() && bundles_required(bundles_from_workload_api) {
        cx.err(
            "jwt_svid.bundles",
            "missing: name each trust domain's bundle file in [[jwt_svid.bundles]] (trust_domain, file)",
        );
    }
    let mut seen = HashSet::new();
    let mut files = std::collections::HashMap::new();
    let mut bundles = Vec::new();
    for (n, b) in raw.bundles.into_iter().enumerate() {
        let key = format!("jwt_svid.bundles[{n}]");
        let file = cx.existing_file(&format!("{key}.file"), &b.file);
        match TrustDomain::new(&b.trust_domain) {
            Ok(trust_domain) => {
                if !seen.insert(trust_domain.clone()) {
                    cx.err(
                        format!("{key}.trust_domain"),
                        format!("trust domain {trust_domain} is configured twice"),
                    );
                }
                cx.one_trust_domain_per_file(
                    &format!("{key}.file"),
                    &file,
                    &trust_domain.to_string(),
                    &mut files,
                );
                bundles.push(JwtSvidBundleFile { trust_domain, file });
            }
            Err(e) => cx.err(
                format!("{key}.trust_domain"),
                format!("\"{}\" is not a trust domain: {e}", b.trust_domain),
            ),
        }
    }
    (cx.errors.len() == before).then_some(JwtSvidConfig {
        audiences: raw.audiences,
        leeway,
        max_lifetime,
        bundles,
    })
}

/// Refuses a route requiring `jwt` and `jwt_svid` separately (in different entries of
/// `auth`): both read the one bearer token of `Authorization`, so both could never pass.
/// Within one `any` they are alternatives, which is fine.
pub(crate) fn check_bearer_layers(cx: &mut Ctx<'_>, route_key: &str, auth: &RouteAuth) {
    let entry = |layer| {
        auth.requirements
            .iter()
            .position(|r| r.layers().contains(&layer))
    };
    if let (Some(a), Some(b)) = (entry(AuthLayer::Jwt), entry(AuthLayer::JwtSvid))
        && a != b
    {
        cx.err(
            format!("{route_key}.auth"),
            "requires both \"jwt\" and \"jwt_svid\", which read the same Authorization: Bearer header: a request carries one bearer token, so both can never pass; to accept either, write { any = [\"jwt\", \"jwt_svid\"] }",
        );
    }
}

#[cfg(test)]
#[path = "jwt_svid_tests.rs"]
mod tests;
