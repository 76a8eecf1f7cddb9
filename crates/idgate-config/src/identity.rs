//! `[identity]`: the gateway's SVID and the trust bundles its callers are verified with,
//! read from files or streamed from the SPIFFE Workload API (a SPIRE agent's socket).

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use idgate_tls::workload::EndpointError;
use idgate_tls::{TrustDomain, WorkloadEndpoint};

use crate::context::Ctx;
use crate::raw;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub source: IdentitySource,
    /// With the Workload API: present the SVID whose registration entry has this hint,
    /// rather than the default (first) one.
    pub svid_hint: Option<String>,
    /// How often the files are checked for changes besides the directory watch.
    pub poll_interval: Duration,
}

/// Where the SVID and the trust bundles come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Files(FileIdentity),
    /// `workload_api`, or the `SPIFFE_ENDPOINT_SOCKET` environment variable when no source
    /// is configured. The bundles are those the agent sends: the gateway's own trust
    /// domain's and every federated one's.
    WorkloadApi(WorkloadEndpoint),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileIdentity {
    pub svid_cert: PathBuf,
    pub svid_key: PathBuf,
    pub trust_bundles: Vec<(TrustDomain, PathBuf)>,
}

impl IdentityConfig {
    /// The files, when the material is read from files.
    pub fn files(&self) -> Option<&FileIdentity> {
        match &self.source {
            IdentitySource::Files(f) => Some(f),
            IdentitySource::WorkloadApi(_) => None,
        }
    }

    /// The Workload API, when the material is streamed from it.
    pub fn workload_api(&self) -> Option<&WorkloadEndpoint> {
        match &self.source {
            IdentitySource::WorkloadApi(e) => Some(e),
            IdentitySource::Files(_) => None,
        }
    }

    /// The trust domains configured by name; empty when the Workload API decides them.
    pub fn configured_trust_domains(&self) -> HashSet<TrustDomain> {
        self.files()
            .map(|f| f.trust_bundles.iter().map(|(td, _)| td.clone()).collect())
            .unwrap_or_default()
    }
}

/// `env_socket`: the value of `SPIFFE_ENDPOINT_SOCKET`, used only when `[identity]` names
/// neither files nor `workload_api`.
pub(crate) fn parse(
    cx: &mut Ctx<'_>,
    i: raw::Identity,
    env_socket: Option<&str>,
) -> IdentityConfig {
    let poll_interval = cx.duration(
        "identity.poll_interval",
        i.poll_interval,
        Duration::from_secs(10),
    );
    let files_named = i.svid_cert.is_some() || i.svid_key.is_some() || !i.trust_bundles.is_empty();
    let source = match (i.workload_api, files_named) {
        (Some(_), true) => {
            cx.err(
                "identity.workload_api",
                "the SVID and the trust bundles come either from the Workload API or from files: \
                 remove svid_cert, svid_key and [[identity.trust_bundles]], or workload_api",
            );
            None
        }
        (Some(addr), false) => endpoint(cx, "identity.workload_api", &addr),
        (None, true) => files(cx, i.svid_cert, i.svid_key, i.trust_bundles),
        (None, false) => match env_socket {
            Some(addr) => endpoint(
                cx,
                &format!(
                    "identity (from the environment variable {})",
                    WorkloadEndpoint::ENV
                ),
                addr,
            ),
            None => {
                cx.err(
                    "identity",
                    format!(
                        "no SVID source: set svid_cert and svid_key with [[identity.trust_bundles]], \
                         or workload_api (or the environment variable {})",
                        WorkloadEndpoint::ENV
                    ),
                );
                None
            }
        },
    };
    let svid_hint = match i.svid_hint {
        Some(h) if h.is_empty() => {
            cx.err("identity.svid_hint", "must not be empty");
            None
        }
        Some(_) if !matches!(source, Some(IdentitySource::WorkloadApi(_)) | None) => {
            cx.err(
                "identity.svid_hint",
                "chooses among the SVIDs of the Workload API: it has no meaning with svid_cert",
            );
            None
        }
        hint => hint,
    };
    IdentityConfig {
        svid_hint,
        // A placeholder when the section is in error: the configuration is refused anyway.
        source: source.unwrap_or(IdentitySource::Files(FileIdentity {
            svid_cert: PathBuf::new(),
            svid_key: PathBuf::new(),
            trust_bundles: Vec::new(),
        })),
        poll_interval,
    }
}

fn endpoint(cx: &mut Ctx<'_>, key: &str, addr: &str) -> Option<IdentitySource> {
    match WorkloadEndpoint::parse(addr) {
        Ok(e) => Some(IdentitySource::WorkloadApi(e)),
        Err(why @ EndpointError::NotLoopback) => {
            cx.err(key, format!("\"{addr}\" is refused: {why}"));
            None
        }
        Err(why @ EndpointError::Malformed(_)) => {
            cx.err(
                key,
                format!(
                    "\"{addr}\" is not a Workload API address ({why}): use unix:///path/to/agent.sock or tcp://127.0.0.1:PORT"
                ),
            );
            None
        }
    }
}

fn files(
    cx: &mut Ctx<'_>,
    svid_cert: Option<String>,
    svid_key: Option<String>,
    bundles: Vec<raw::TrustBundle>,
) -> Option<IdentitySource> {
    let file = |cx: &mut Ctx<'_>, key: &str, value: Option<String>| match value {
        Some(p) => Some(cx.existing_file(key, &p)),
        None => {
            cx.err(
                key,
                "missing: the gateway's SVID is read from svid_cert and svid_key",
            );
            None
        }
    };
    let svid_cert = file(cx, "identity.svid_cert", svid_cert);
    let svid_key = file(cx, "identity.svid_key", svid_key);
    if bundles.is_empty() {
        cx.err(
            "identity.trust_bundles",
            "at least one [[identity.trust_bundles]] is needed to verify callers",
        );
    }
    let mut seen = HashSet::new();
    let mut files = std::collections::HashMap::new();
    let mut trust_bundles = Vec::new();
    for (n, b) in bundles.into_iter().enumerate() {
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
                cx.one_trust_domain_per_file(
                    &format!("{key}.bundle"),
                    &path,
                    &td.to_string(),
                    &mut files,
                );
                trust_bundles.push((td, path));
            }
            Err(e) => cx.err(
                format!("{key}.trust_domain"),
                format!("\"{}\" is not a trust domain: {e}", b.trust_domain),
            ),
        }
    }
    Some(IdentitySource::Files(FileIdentity {
        svid_cert: svid_cert?,
        svid_key: svid_key?,
        trust_bundles,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    const REST: &str = r#"
[listener]
bind = "127.0.0.1:8443"

[[upstreams]]
name = "provider"
url = "https://provider.example"

[[routes]]
name = "kyc"
methods = ["GET"]
path = "/v1/kyc"
upstream = "provider"
allow = ["spiffe://partner.example/ns/risk/sa/scorer"]
"#;

    fn parse(dir: &Path, identity: &str, env: Option<&str>) -> Result<crate::Config, Vec<String>> {
        crate::parse_with_env(
            &dir.join("idgate.toml"),
            &format!("{REST}\n[identity]\n{identity}"),
            env,
        )
        .map_err(|e| {
            e.0.iter()
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect()
        })
    }

    #[test]
    fn workload_api_streams_the_material_and_any_trust_domain_may_be_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(
            dir.path(),
            r#"workload_api = "unix:///run/spire/agent.sock""#,
            None,
        )
        .unwrap();
        assert_eq!(
            config.identity.workload_api().map(|e| e.as_str()),
            Some("unix:///run/spire/agent.sock")
        );
        assert!(config.identity.files().is_none());
        // The route allows a trust domain no file names: its bundle may come from the agent.
        assert!(config.identity.configured_trust_domains().is_empty());
    }

    #[test]
    fn workload_api_beside_svid_files_is_refused_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let errors = parse(
            dir.path(),
            "workload_api = \"unix:///run/spire/agent.sock\"\nsvid_cert = \"gw.crt\"",
            None,
        )
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("identity.workload_api: ") && e.contains("either")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_workload_api_address_that_is_not_unix_or_tcp_is_refused_at_its_key() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "/run/spire/agent.sock",
            "http://127.0.0.1:8081",
            "tcp://localhost:1",
            "unix://",
        ] {
            let errors = parse(dir.path(), &format!("workload_api = \"{bad}\""), None).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("identity.workload_api: ") && e.contains(bad)),
                "{bad}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_tcp_workload_api_address_that_is_not_loopback_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for remote in [
            "tcp://10.0.0.7:8081",
            "tcp://0.0.0.0:8081",
            "tcp://[2001:db8::1]:8081",
        ] {
            let errors =
                parse(dir.path(), &format!("workload_api = \"{remote}\""), None).unwrap_err();
            assert!(
                errors
                    .iter()
                    .any(|e| e.starts_with("identity.workload_api: ")
                        && e.contains(remote)
                        && e.contains("no authentication")
                        && e.contains("loopback")),
                "{remote}: {errors:?}"
            );
        }
        // From the environment too, with where it came from.
        let errors = parse(dir.path(), "", Some("tcp://192.0.2.1:8081")).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("SPIFFE_ENDPOINT_SOCKET") && e.contains("loopback")),
            "{errors:?}"
        );
        // The error names the file.
        let text = format!("{REST}\n[identity]\nworkload_api = \"tcp://10.0.0.7:8081\"");
        let errors =
            crate::parse_with_env(&dir.path().join("idgate.toml"), &text, None).unwrap_err();
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.key == "identity.workload_api" && e.file.ends_with("idgate.toml")),
            "{errors}"
        );
        // Loopback is taken.
        for local in ["tcp://127.0.0.1:8081", "tcp://[::1]:8081"] {
            let config = parse(dir.path(), &format!("workload_api = \"{local}\""), None).unwrap();
            assert_eq!(
                config.identity.workload_api().map(|e| e.as_str()),
                Some(local)
            );
        }
    }

    #[test]
    fn spiffe_endpoint_socket_is_the_source_when_identity_names_none() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(dir.path(), "", Some("unix:///tmp/agent.sock")).unwrap();
        assert_eq!(
            config.identity.workload_api().map(|e| e.as_str()),
            Some("unix:///tmp/agent.sock")
        );
        // A bad value is reported with where it came from.
        let errors = parse(dir.path(), "", Some("nonsense")).unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains("SPIFFE_ENDPOINT_SOCKET")),
            "{errors:?}"
        );
        // Files configured win over the environment: it is not even looked at.
        std::fs::write(dir.path().join("gw.crt"), "").unwrap();
        std::fs::write(dir.path().join("gw.key"), "").unwrap();
        std::fs::write(dir.path().join("b.pem"), "").unwrap();
        let config = parse(
            dir.path(),
            "svid_cert = \"gw.crt\"\nsvid_key = \"gw.key\"\n[[identity.trust_bundles]]\ntrust_domain = \"partner.example\"\nbundle = \"b.pem\"",
            Some("nonsense"),
        )
        .unwrap();
        assert!(config.identity.files().is_some());
    }

    #[test]
    fn one_bundle_file_for_two_trust_domains_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["gw.crt", "gw.key", "both.pem", "partner.pem"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let files = "svid_cert = \"gw.crt\"\nsvid_key = \"gw.key\"\n";
        let bundle = |td: &str, file: &str| {
            format!("[[identity.trust_bundles]]\ntrust_domain = \"{td}\"\nbundle = \"{file}\"\n")
        };
        // The file `spire-server bundle list` prints holds every federated domain's CAs: named
        // for two domains, a partner's CA would vouch for the gateway's own identities.
        let errors = parse(
            dir.path(),
            &format!(
                "{files}{}{}",
                bundle("example.org", "both.pem"),
                bundle("partner.example", "./both.pem")
            ),
            None,
        )
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("identity.trust_bundles[1].bundle: ")
                && errors[0].contains("is also the bundle of trust domain example.org"),
            "{errors:?}"
        );
        // A file for each is taken.
        let config = parse(
            dir.path(),
            &format!(
                "{files}{}{}",
                bundle("example.org", "both.pem"),
                bundle("partner.example", "partner.pem")
            ),
            None,
        )
        .unwrap();
        assert_eq!(config.identity.files().unwrap().trust_bundles.len(), 2);
    }

    #[test]
    fn no_source_at_all_names_every_way_to_give_one() {
        let dir = tempfile::tempdir().unwrap();
        let errors = parse(dir.path(), "", None).unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with("identity: ")
                && e.contains("svid_cert")
                && e.contains("workload_api")
                && e.contains("SPIFFE_ENDPOINT_SOCKET")),
            "{errors:?}"
        );
        // Half a pair of files is refused at the missing key.
        std::fs::write(dir.path().join("gw.crt"), "").unwrap();
        let errors = parse(dir.path(), "svid_cert = \"gw.crt\"", None).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("identity.svid_key: missing")),
            "{errors:?}"
        );
    }

    #[test]
    fn an_upstream_is_presented_the_gateways_svid_only_as_svid_and_only_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let api = r#"workload_api = "unix:///run/spire/agent.sock""#;
        let with = |line: &str| {
            let text = format!(
                "{}\n[identity]\n{api}",
                REST.replace(
                    "url = \"https://provider.example\"",
                    &format!("url = \"https://provider.example\"\n{line}")
                )
            );
            crate::parse_with_env(&dir.path().join("idgate.toml"), &text, None).map_err(|e| {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.key, e.reason))
                    .collect::<Vec<_>>()
            })
        };
        let config = with("client_certificate = \"svid\"").unwrap();
        assert!(config.upstreams[0].client_svid);
        assert!(!parse(dir.path(), api, None).unwrap().upstreams[0].client_svid);
        let errors = with("client_certificate = \"file:/x\"").unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("upstreams[0].client_certificate: ") && e.contains("svid")),
            "{errors:?}"
        );
        let text = format!(
            "{}\n[identity]\n{api}",
            REST.replace(
                "url = \"https://provider.example\"",
                "url = \"http://127.0.0.1:8080\"\nclient_certificate = \"svid\""
            )
        );
        let errors =
            crate::parse_with_env(&dir.path().join("idgate.toml"), &text, None).unwrap_err();
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.key == "upstreams[0].client_certificate" && e.reason.contains("https")),
            "{errors}"
        );
    }

    #[test]
    fn jwt_svid_may_leave_out_bundle_files_only_with_the_workload_api() {
        let dir = tempfile::tempdir().unwrap();
        let jwt = "\n[jwt_svid]\naudiences = [\"spiffe://example.org/idgate\"]\n";
        let config = parse(
            dir.path(),
            &format!("workload_api = \"unix:///run/spire/agent.sock\"\n{jwt}"),
            None,
        )
        .unwrap();
        assert!(config.jwt_svid.unwrap().bundles.is_empty());

        for f in ["gw.crt", "gw.key", "b.pem"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let errors = parse(
            dir.path(),
            &format!(
                "svid_cert = \"gw.crt\"\nsvid_key = \"gw.key\"\n[[identity.trust_bundles]]\ntrust_domain = \"partner.example\"\nbundle = \"b.pem\"\n{jwt}"
            ),
            None,
        )
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("jwt_svid.bundles: missing")),
            "{errors:?}"
        );
    }

    #[test]
    fn svid_hint_chooses_among_the_workload_apis_svids_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(
            dir.path(),
            "workload_api = \"unix:///run/spire/agent.sock\"\nsvid_hint = \"internal\"",
            None,
        )
        .unwrap();
        assert_eq!(config.identity.svid_hint.as_deref(), Some("internal"));
        for f in ["gw.crt", "gw.key", "b.pem"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let errors = parse(
            dir.path(),
            "svid_cert = \"gw.crt\"\nsvid_key = \"gw.key\"\nsvid_hint = \"internal\"\n[[identity.trust_bundles]]\ntrust_domain = \"partner.example\"\nbundle = \"b.pem\"",
            None,
        )
        .unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("identity.svid_hint: ") && e.contains("svid_cert")),
            "{errors:?}"
        );
    }
}
