//! The validation context: the file being read, where relative paths start, and the
//! problems found so far; helpers that read common value types and record what is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idgate_secrets::SecretRef;
use serde::de::DeserializeOwned;

use crate::{ConfigError, parse_duration};

pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a Path,
    pub(crate) base: &'a Path,
    pub(crate) errors: Vec<ConfigError>,
    /// Whether secret references are checked for availability, or only parsed.
    pub(crate) check_secrets: bool,
}

impl Ctx<'_> {
    /// A test's result: `out`, or every error as `KEY: REASON`.
    #[cfg(test)]
    pub(crate) fn finish<T>(self, out: T) -> Result<T, Vec<String>> {
        if self.errors.is_empty() {
            Ok(out)
        } else {
            Err(self
                .errors
                .into_iter()
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect())
        }
    }

    /// Records why the secret `r` cannot be read now (an unset variable, an unreadable or
    /// too open file, a missing PKCS#11 module or PIN), unless secrets are not checked.
    pub(crate) fn secret_available(&mut self, key: impl Into<String>, r: &SecretRef) {
        if self.check_secrets
            && let Err(e) = r.check_available()
        {
            self.err(key, e.to_string());
        }
    }

    pub(crate) fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Deserializes one section, recording a serde error with its full key path.
    pub(crate) fn section<T: DeserializeOwned>(
        &mut self,
        key: &str,
        value: toml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}.{inner}")
                };
                let reason = without_values(&e.into_inner().to_string());
                self.err(path, reason);
                None
            }
        }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    pub(crate) fn existing_file(&mut self, key: &str, p: &str) -> PathBuf {
        let path = self.path(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.err(key, format!("{} is not a regular file", path.display())),
            Err(e) => self.err(
                key,
                format!("cannot read {}: {}", path.display(), io_reason(&e)),
            ),
        }
        path
    }

    /// Refuses `file` when an earlier entry named it for another trust domain (`owners`: each
    /// file, as the file system resolves it, and the trust domain it is for). Every CA or key
    /// in a bundle file is trusted for each trust domain the file is named for, so one of a
    /// partner's could vouch for an identity of the gateway's own.
    pub(crate) fn one_trust_domain_per_file(
        &mut self,
        key: &str,
        file: &Path,
        trust_domain: &str,
        owners: &mut std::collections::HashMap<PathBuf, String>,
    ) {
        let resolved = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
        match owners.get(&resolved) {
            Some(other) if other != trust_domain => self.err(
                key,
                format!(
                    "{} is also the bundle of trust domain {other}: each CA or key in a file would vouch for both; give each trust domain a file of its own (spire-server bundle list -id spiffe://{trust_domain} prints one)",
                    file.display()
                ),
            ),
            _ => {
                owners.insert(resolved, trust_domain.to_owned());
            }
        }
    }

    pub(crate) fn duration(&mut self, key: &str, v: Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(&s) {
                Ok(d) if d.is_zero() => {
                    self.err(key, "must be more than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.err(key, e.to_string());
                    default
                }
            },
        }
    }

    pub(crate) fn socket_addr(&mut self, key: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.err(
                key,
                format!("\"{s}\" is not an address:port like \"127.0.0.1:8443\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }
}

/// serde's type errors quote the value they found (`invalid type: string "sk_live_…",
/// expected …`); a misplaced secret must not be printed, so only the expectation is kept.
pub(crate) fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return match rest.rsplit_once(", expected ") {
                Some((_, expected)) => format!(
                    "wrong {}: expected {expected}",
                    prefix.trim_end_matches([':', ' '])
                ),
                None => format!("wrong {}", prefix.trim_end_matches([':', ' '])),
            };
        }
    }
    message.to_owned()
}

pub(crate) fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}
