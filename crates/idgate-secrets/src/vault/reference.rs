//! `vault:` references: which field of which KV v2 secret, and the URL it is read from.

use std::fmt;

use crate::SecretRefError;

/// One field of a KV v2 secret: `vault:secret/idgate/didit#api_key` is mount `secret`, path
/// `idgate/didit`, field `api_key`, read from `GET /v1/secret/data/idgate/didit`.
/// `?version=N` before the `#` pins a version; without it the newest is read.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VaultRef {
    pub mount: String,
    pub path: String,
    pub field: String,
    pub version: Option<u64>,
}

/// Mounts and paths go into request URLs as written, so they are kept to characters that
/// need no encoding there.
fn url_safe_segments(s: &str) -> bool {
    !s.is_empty()
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        })
}

impl VaultRef {
    /// Parses the part after `vault:`.
    pub fn parse(rest: &str) -> Result<Self, SecretRefError> {
        if rest.is_empty() {
            return Err(SecretRefError::Empty("vault"));
        }
        let (location, field) = rest.split_once('#').ok_or(SecretRefError::BadVaultRef(
            "name the field after '#', as in vault:secret/idgate/didit#api_key",
        ))?;
        if field.is_empty() {
            return Err(SecretRefError::BadVaultRef("the field after '#' is empty"));
        }
        if field.bytes().any(|b| b.is_ascii_control()) {
            return Err(SecretRefError::BadVaultRef(
                "the field must not contain control characters",
            ));
        }
        let (full_path, query) = match location.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (location, None),
        };
        let version = match query {
            None => None,
            Some(q) => {
                let n = q
                    .strip_prefix("version=")
                    .ok_or(SecretRefError::BadVaultRef("the only query is ?version=N"))?;
                match n.parse::<u64>() {
                    Ok(v) if v >= 1 && n.bytes().all(|b| b.is_ascii_digit()) => Some(v),
                    _ => {
                        return Err(SecretRefError::BadVaultRef(
                            "version must be a whole number from 1",
                        ));
                    }
                }
            }
        };
        let (mount, path) = full_path
            .split_once('/')
            .ok_or(SecretRefError::BadVaultRef(
                "write the KV mount, then the secret's path: vault:<mount>/<path>#<field>",
            ))?;
        if !url_safe_segments(mount) || !url_safe_segments(path) {
            return Err(SecretRefError::BadVaultRef(
                "mount and path segments must be non-empty, not '.' or '..', and use only letters, digits, '-', '.', '_' and '~'",
            ));
        }
        Ok(Self {
            mount: mount.to_owned(),
            path: path.to_owned(),
            field: field.to_owned(),
            version,
        })
    }

    /// `/v1/<mount>/data/<path>[?version=N]`: the KV v2 read endpoint.
    pub(super) fn api_path(&self) -> String {
        match self.version {
            Some(v) => format!("/v1/{}/data/{}?version={v}", self.mount, self.path),
            None => format!("/v1/{}/data/{}", self.mount, self.path),
        }
    }
}

impl fmt::Display for VaultRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vault:{}/{}", self.mount, self.path)?;
        if let Some(v) = self.version {
            write!(f, "?version={v}")?;
        }
        write!(f, "#{}", self.field)
    }
}
