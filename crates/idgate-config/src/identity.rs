//! `[identity]`: the gateway's SVID and the trust bundles its callers are verified with.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use idgate_tls::TrustDomain;

use crate::context::Ctx;
use crate::raw;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub svid_cert: PathBuf,
    pub svid_key: PathBuf,
    pub trust_bundles: Vec<(TrustDomain, PathBuf)>,
    /// How often the files are checked for changes besides the directory watch.
    pub poll_interval: Duration,
}

pub(crate) fn parse(cx: &mut Ctx<'_>, i: raw::Identity) -> IdentityConfig {
    let svid_cert = cx.existing_file("identity.svid_cert", &i.svid_cert);
    let svid_key = cx.existing_file("identity.svid_key", &i.svid_key);
    if i.trust_bundles.is_empty() {
        cx.err(
            "identity.trust_bundles",
            "at least one [[identity.trust_bundles]] is needed to verify callers",
        );
    }
    let mut seen = HashSet::new();
    let mut trust_bundles = Vec::new();
    for (n, b) in i.trust_bundles.into_iter().enumerate() {
        let key = format!("identity.trust_bundles[{n}]");
        let path = cx.existing_file(&format!("{key}.bundle"), &b.bundle);
        match TrustDomain::new(&b.trust_domain) {
            Ok(td) => {
                if !seen.insert(td.clone()) {
                    cx.err(
                        format!("{key}.trust_domain"),
                        format!("trust domain {td} is configured twice"),
                    );
                }
                trust_bundles.push((td, path));
            }
            Err(e) => cx.err(
                format!("{key}.trust_domain"),
                format!("\"{}\" is not a trust domain: {e}", b.trust_domain),
            ),
        }
    }
    IdentityConfig {
        svid_cert,
        svid_key,
        trust_bundles,
        poll_interval: cx.duration(
            "identity.poll_interval",
            i.poll_interval,
            Duration::from_secs(10),
        ),
    }
}
