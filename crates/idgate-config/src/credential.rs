//! `[upstreams.credential]`: how the credential of an upstream is produced and sent.

use std::time::Duration;

use http::uri::Uri;
use idgate_secrets::SecretRef;

use crate::context::Ctx;
use crate::{auth, raw};

pub use idgate_secrets::credential::{CredentialConfig, CredentialScheme};

pub(crate) fn parse(
    cx: &mut Ctx<'_>,
    key: &str,
    upstream: &str,
    c: raw::Credential,
) -> Option<CredentialConfig> {
    let key = format!("{key}.credential");
    let before = cx.errors.len();
    let scheme_name = c.scheme.as_deref().unwrap_or("header");
    // Each scheme takes its own keys; a key of another scheme is a mistake worth naming.
    let allowed: &[&str] = match scheme_name {
        "header" => &["header", "prefix", "secret"],
        "sumsub" => &["app_token", "secret"],
        "veriff" => &["client", "secret"],
        "oauth2_client_credentials" => &["token_url", "client_id", "client_secret", "scope"],
        other => {
            cx.err(
                format!("{key}.scheme"),
                format!("\"{other}\" is not a scheme: use header, sumsub, veriff or oauth2_client_credentials"),
            );
            return None;
        }
    };
    for (name, present) in [
        ("header", c.header.is_some()),
        ("prefix", c.prefix.is_some()),
        ("secret", c.secret.is_some()),
        ("app_token", c.app_token.is_some()),
        ("client", c.client.is_some()),
        ("token_url", c.token_url.is_some()),
        ("client_id", c.client_id.is_some()),
        ("client_secret", c.client_secret.is_some()),
        ("scope", c.scope.is_some()),
    ] {
        if present && !allowed.contains(&name) {
            cx.err(
                format!("{key}.{name}"),
                format!("not used by scheme \"{scheme_name}\""),
            );
        }
    }
    let secret_ref = |cx: &mut Ctx<'_>, name: &str, v: Option<String>| -> Option<SecretRef> {
        let Some(v) = v else {
            cx.err(
                format!("{key}.{name}"),
                format!("missing: scheme \"{scheme_name}\" needs it"),
            );
            return None;
        };
        let r = SecretRef::parse(&v, cx.base)
            .map_err(|e| cx.err(format!("{key}.{name}"), e.to_string()))
            .ok()?;
        cx.secret_available(format!("{key}.{name}"), &r);
        Some(r)
    };
    let scheme = match scheme_name {
        "header" => {
            let header = match c
                .header
                .as_deref()
                .map(|h| http::HeaderName::from_bytes(h.as_bytes()))
            {
                Some(Ok(h)) => Some(h),
                Some(Err(_)) => {
                    cx.err(format!("{key}.header"), "not a header name");
                    None
                }
                None => {
                    cx.err(
                        format!("{key}.header"),
                        "missing: name the header the secret is sent in",
                    );
                    None
                }
            };
            let prefix = c.prefix.unwrap_or_default();
            if prefix.bytes().any(|b| b.is_ascii_control()) {
                cx.err(
                    format!("{key}.prefix"),
                    "must not contain control characters",
                );
            }
            let secret = secret_ref(cx, "secret", c.secret);
            CredentialScheme::Header {
                header: header?,
                prefix,
                secret: secret?,
            }
        }
        "sumsub" => {
            let app_token = secret_ref(cx, "app_token", c.app_token);
            let secret = secret_ref(cx, "secret", c.secret);
            CredentialScheme::Sumsub {
                app_token: app_token?,
                secret: secret?,
            }
        }
        "veriff" => {
            let client = secret_ref(cx, "client", c.client);
            let secret = secret_ref(cx, "secret", c.secret);
            CredentialScheme::Veriff {
                client: client?,
                secret: secret?,
            }
        }
        _ => {
            let token_url = match c.token_url.as_deref().map(str::parse::<Uri>) {
                Some(Ok(u))
                    if u.host().is_some()
                        && (u.scheme_str() == Some("https")
                            || (u.scheme_str() == Some("http") && auth::is_loopback_uri(&u))) =>
                {
                    Some(u)
                }
                Some(_) => {
                    cx.err(
                        format!("{key}.token_url"),
                        "must be an https:// URL (http:// only on loopback): the client secret is sent to it",
                    );
                    None
                }
                None => {
                    cx.err(
                        format!("{key}.token_url"),
                        "missing: the provider's token endpoint",
                    );
                    None
                }
            };
            if c.client_id.as_deref().is_none_or(str::is_empty) {
                cx.err(format!("{key}.client_id"), "missing");
            }
            let client_secret = secret_ref(cx, "client_secret", c.client_secret);
            CredentialScheme::OAuth2ClientCredentials {
                token_url: token_url?,
                client_id: c.client_id.unwrap_or_default(),
                client_secret: client_secret?,
                scope: c.scope,
            }
        }
    };
    let refresh_interval = cx.duration(
        &format!("{key}.refresh_interval"),
        c.refresh_interval,
        Duration::from_secs(5),
    );
    let overlap = cx.duration(
        &format!("{key}.overlap"),
        c.overlap,
        Duration::from_secs(30),
    );
    (cx.errors.len() == before).then(|| CredentialConfig {
        scheme,
        label: c.label.unwrap_or_else(|| upstream.to_owned()),
        refresh_interval,
        overlap,
    })
}
