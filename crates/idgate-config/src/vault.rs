//! The `[vault]` section: where HashiCorp Vault is and how the gateway logs in to it, for the
//! `vault:<mount>/<path>#<field>` secret references.
//!
//! ```toml
//! [vault]
//! address = "https://vault.internal:8200"
//! ca = "pki/vault-ca.pem"          # optional, extra roots
//! namespace = "kyc"                # optional (Vault Enterprise / HCP)
//! timeout = "5s"
//! token = "env:VAULT_TOKEN"        # a secret reference, never vault:
//! # or instead of token:
//! # [vault.approle]
//! # role_id = "file:/run/idgate/role-id"
//! # secret_id = "file:/run/idgate/secret-id"
//! # mount = "approle"
//! ```
//!
//! A `vault:` reference anywhere in a file without this section is refused at its key.

use std::net::IpAddr;
use std::time::Duration;

use http::Uri;
use idgate_secrets::SecretRef;
use serde::Deserialize;

pub use idgate_secrets::vault::{VaultAuth, VaultSettings as VaultConfig};

use crate::context::Ctx;
use crate::raw;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: String,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    approle: Option<RawAppRole>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAppRole {
    role_id: String,
    secret_id: String,
    #[serde(default)]
    mount: Option<String>,
}

/// Validates `[vault]`, and refuses `vault:` references when it is absent. `text` is the
/// whole file, so that references in every section are found wherever they are parsed.
pub(crate) fn section(
    cx: &mut Ctx<'_>,
    table: &mut raw::Table,
    text: &str,
    warnings: &mut Vec<String>,
) -> Option<VaultConfig> {
    let Some(value) = table.remove("vault") else {
        if let Ok(all) = toml::from_str::<raw::Table>(text) {
            let mut found = Vec::new();
            for (key, v) in &all {
                vault_refs(key, v, &mut found);
            }
            for key in found {
                cx.err(
                    key,
                    "vault: references need a [vault] section with the address of Vault and how to log in",
                );
            }
        }
        return None;
    };
    let raw = cx.section::<RawVault>("vault", value)?;
    let before = cx.errors.len();
    let address = address(cx, &raw.address, warnings);
    let ca = raw.ca.as_deref().map(|p| cx.existing_file("vault.ca", p));
    let namespace = raw.namespace.and_then(|ns| {
        let ns = ns.trim_matches('/').to_owned();
        if ns.is_empty() || !ns.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            cx.err(
                "vault.namespace",
                "must be a namespace path like \"team/kyc\" (visible ASCII, no spaces)",
            );
            None
        } else {
            Some(ns)
        }
    });
    let timeout = cx.duration("vault.timeout", raw.timeout, Duration::from_secs(5));
    let auth = match (raw.token, raw.approle) {
        (Some(_), Some(_)) => {
            cx.err("vault", "set either token or [vault.approle], not both");
            None
        }
        (None, None) => {
            cx.err(
                "vault",
                "say how to log in: token = \"env:VAULT_TOKEN\" or a [vault.approle] section",
            );
            None
        }
        (Some(token), None) => login_ref(cx, "vault.token", &token).map(VaultAuth::Token),
        (None, Some(a)) => {
            let role_id = login_ref(cx, "vault.approle.role_id", &a.role_id);
            let secret_id = login_ref(cx, "vault.approle.secret_id", &a.secret_id);
            let mount = a.mount.unwrap_or_else(|| "approle".to_owned());
            let mount_ok = !mount.is_empty()
                && mount.split('/').all(|s| {
                    !s.is_empty()
                        && s != "."
                        && s != ".."
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                });
            if !mount_ok {
                cx.err(
                    "vault.approle.mount",
                    "must be the auth mount's path, like \"approle\" (letters, digits, '-', '.', '_', '/')",
                );
            }
            match (role_id, secret_id) {
                (Some(role_id), Some(secret_id)) if mount_ok => Some(VaultAuth::AppRole {
                    role_id,
                    secret_id,
                    mount,
                }),
                _ => None,
            }
        }
    };
    if cx.errors.len() != before {
        return None;
    }
    Some(VaultConfig {
        address: address?,
        ca,
        namespace,
        timeout,
        auth: auth?,
    })
}

fn address(cx: &mut Ctx<'_>, s: &str, warnings: &mut Vec<String>) -> Option<Uri> {
    let key = "vault.address";
    let Ok(uri) = s.parse::<Uri>() else {
        // Not echoed: a password may have been pasted into it.
        cx.err(
            key,
            "is not a URL: write Vault's address, like https://vault.internal:8200",
        );
        return None;
    };
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'));
    let Some(host) = host else {
        cx.err(key, "must be a URL like https://vault.internal:8200");
        return None;
    };
    if s.contains('@') || uri.query().is_some() || s.contains('#') {
        cx.err(key, "must not carry user info, a query or a fragment");
        return None;
    }
    if !matches!(uri.path(), "" | "/") {
        cx.err(
            key,
            "must be Vault's address without a path, like https://vault.internal:8200",
        );
        return None;
    }
    match uri.scheme_str() {
        Some("https") => Some(uri),
        Some("http") => {
            let loopback =
                host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                warnings.push(format!(
                    "vault.address {s} is plain http://: the Vault token and the secrets it returns are not encrypted (allowed on loopback only)"
                ));
                Some(uri)
            } else {
                cx.err(
                    key,
                    "must be https:// (http:// is allowed only for a Vault on loopback)",
                );
                None
            }
        }
        _ => {
            cx.err(key, "must start with https://");
            None
        }
    }
}

/// A reference to one of the login credentials: any source but Vault itself.
fn login_ref(cx: &mut Ctx<'_>, key: &str, v: &str) -> Option<SecretRef> {
    match SecretRef::parse(v, cx.base) {
        Ok(SecretRef::Vault(_)) => {
            cx.err(
                key,
                "must be an env:, file: or pkcs11: reference: Vault's own login cannot come from Vault",
            );
            None
        }
        Ok(r) => {
            cx.secret_available(key, &r);
            Some(r)
        }
        Err(e) => {
            cx.err(key, e.to_string());
            None
        }
    }
}

/// Key paths (`upstreams[0].credential.secret`) of every string that is a `vault:` reference.
fn vault_refs(path: &str, v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::String(s) if s.starts_with("vault:") => out.push(path.to_owned()),
        toml::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                vault_refs(&format!("{path}[{i}]"), item, out);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t {
                vault_refs(&format!("{path}.{k}"), item, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::ConfigError;

    const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"

[identity]
svid_cert = "gw.crt"
svid_key = "gw.key"

[[upstreams]]
name = "didit"
url = "https://verification.didit.me"
[upstreams.credential]
header = "x-api-key"
secret = "vault:secret/idgate/didit#api_key"
"#;

    /// The problems reported for `key` (identity files do not exist here; that is ignored).
    fn problems(text: &str, key: &str) -> Vec<String> {
        let errors = match crate::parse(Path::new("/nonexistent/idgate.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0,
        };
        errors
            .into_iter()
            .filter(|e: &ConfigError| e.key == key)
            .map(|e| e.reason)
            .collect()
    }

    #[test]
    fn vault_reference_without_vault_section_is_refused_at_its_key() {
        let p = problems(BASE, "upstreams[0].credential.secret");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("vault: references need a [vault] section"));
    }

    #[test]
    fn vault_section_takes_a_token_or_approle_and_never_a_vault_reference() {
        let with = |section: &str| format!("{BASE}\n[vault]\n{section}\n");
        assert!(
            problems(
                &with("address = \"https://vault:8200\"\ntoken = \"env:VAULT_TOKEN\""),
                "upstreams[0].credential.secret"
            )
            .is_empty()
        );
        assert!(
            problems(
                &with("address = \"https://vault:8200\"\ntoken = \"env:VAULT_TOKEN\""),
                "vault"
            )
            .is_empty()
        );
        assert_eq!(
            problems(&with("address = \"https://vault:8200\""), "vault").len(),
            1
        );
        assert_eq!(
            problems(
                &with("address = \"https://vault:8200\"\ntoken = \"env:T\"\n[vault.approle]\nrole_id = \"env:R\"\nsecret_id = \"env:S\""),
                "vault"
            )
            .len(),
            1
        );
        assert_eq!(
            problems(
                &with("address = \"https://vault:8200\"\ntoken = \"vault:secret/t#token\""),
                "vault.token"
            )
            .len(),
            1
        );
        assert_eq!(
            problems(
                &with("address = \"https://vault:8200\"\ntoken = \"hvs.literal\""),
                "vault.token"
            )
            .len(),
            1
        );
        assert_eq!(
            problems(
                &with("address = \"https://vault:8200\"\n[vault.approle]\nrole_id = \"env:R\"\nsecret_id = \"env:S\"\nmount = \"../sys\""),
                "vault.approle.mount"
            )
            .len(),
            1
        );
        // The login's own secret must be there at start-up, like every other reference.
        let p = problems(
            &with(
                "address = \"https://vault:8200\"\ntoken = \"env:IDGATE_TEST_UNSET_VAULT_TOKEN\"",
            ),
            "vault.token",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("IDGATE_TEST_UNSET_VAULT_TOKEN"), "{p:?}");
        // Misspelt keys are errors, not ignored settings.
        let text = with("address = \"https://vault:8200\"\ntokn = \"env:T\"");
        let all = crate::parse(Path::new("/nonexistent/idgate.toml"), &text).unwrap_err();
        assert!(
            all.0
                .iter()
                .any(|e| e.key.starts_with("vault") && e.reason.contains("tokn")),
            "{all}"
        );
    }

    #[test]
    fn plain_http_is_only_for_a_vault_on_loopback() {
        let with = |addr: &str| {
            format!("{BASE}\n[vault]\naddress = \"{addr}\"\ntoken = \"env:VAULT_TOKEN\"\n")
        };
        assert_eq!(
            problems(&with("http://vault.internal:8200"), "vault.address").len(),
            1
        );
        assert!(problems(&with("http://127.0.0.1:8200"), "vault.address").is_empty());
        assert_eq!(
            problems(&with("https://vault:8200/v1"), "vault.address").len(),
            1
        );
        assert_eq!(
            problems(&with("https://user:pw@vault:8200"), "vault.address").len(),
            1
        );
        assert_eq!(problems(&with("vault:8200"), "vault.address").len(), 1);
    }
}
