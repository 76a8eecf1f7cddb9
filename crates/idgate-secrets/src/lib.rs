//! Upstream credential custody: the secret reference grammar shared by every part of the
//! configuration, and the sources that resolve a reference to a value.
//!
//! Values are [`SecretString`]s: zeroized on drop, redacted in `Debug`, never `Display`ed.
//! No error here ever carries a secret value.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub mod pkcs11;
pub mod vault;

pub use pkcs11::Pkcs11Uri;
pub use secrecy::{ExposeSecret, SecretBox, SecretString};
pub use vault::VaultRef;

/// Where a secret lives. Written in configuration as `env:NAME`, `file:PATH`,
/// `pkcs11:<RFC 7512 URI>` or `vault:PATH#FIELD`.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Pkcs11(Pkcs11Uri),
    Vault(VaultRef),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A reference names a place, not a value, so it is safe to show.
        write!(f, "SecretRef({self})")
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Pkcs11(uri) => write!(f, "{uri}"),
            Self::Vault(r) => write!(f, "{r}"),
        }
    }
}

/// Why a reference is not usable. Never contains the value of a secret; for a string that is
/// not a reference at all (most likely a pasted secret), not even that string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefError {
    #[error(
        "a literal secret is not allowed here: write a reference (env:NAME, file:PATH, pkcs11:URI or vault:PATH#FIELD)"
    )]
    Literal,
    #[error("empty {0}: reference")]
    Empty(&'static str),
    #[error("environment variable names may only contain letters, digits and '_'")]
    BadEnvName,
    #[error("not a usable pkcs11: URI (RFC 7512): {0}")]
    BadPkcs11Uri(&'static str),
    #[error("not a usable vault: reference (vault:<mount>/<path>[?version=N]#<field>): {0}")]
    BadVaultRef(&'static str),
    #[error("{0}: references are not supported by this build of idgate")]
    Unsupported(&'static str),
}

impl SecretRef {
    /// Parses a reference. Relative `file:` paths are resolved against `base_dir` (the
    /// directory of the configuration file).
    pub fn parse(s: &str, base_dir: &Path) -> Result<Self, SecretRefError> {
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(SecretRefError::Literal);
        };
        match scheme {
            "env" => {
                if rest.is_empty() {
                    return Err(SecretRefError::Empty("env"));
                }
                if !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(SecretRefError::BadEnvName);
                }
                Ok(Self::Env(rest.to_owned()))
            }
            "file" => {
                if rest.is_empty() {
                    return Err(SecretRefError::Empty("file"));
                }
                Ok(Self::File(base_dir.join(rest)))
            }
            "pkcs11" => Pkcs11Uri::parse(rest, base_dir).map(Self::Pkcs11),
            "vault" => VaultRef::parse(rest).map(Self::Vault),
            _ => Err(SecretRefError::Literal),
        }
    }

    /// Reads the secret with its version. Blocking (file I/O, token calls): call at start-up
    /// or from a blocking thread.
    ///
    /// Versions: `env` for environment variables (they cannot change under a running
    /// process), a digest of the content for files, the object version for PKCS#11, the KV
    /// version for Vault.
    pub fn fetch(&self) -> Result<Fetched, SecretError> {
        match self {
            Self::Env(_) => {
                let v = self.resolve()?;
                Ok(Fetched {
                    value: SecretBox::new(v.expose_secret().as_bytes().into()),
                    version: "env".to_owned(),
                })
            }
            Self::File(_) => {
                let v = self.resolve()?;
                let version = content_version(v.expose_secret().as_bytes());
                Ok(Fetched {
                    value: SecretBox::new(v.expose_secret().as_bytes().into()),
                    version,
                })
            }
            Self::Pkcs11(uri) => {
                let hsm =
                    pkcs11::Hsm::shared(uri).map_err(|e| SecretError::Hsm(self.to_string(), e))?;
                let (value, version) = hsm
                    .unwrap_value(&uri.object, &uri.wrap_key)
                    .map_err(|e| SecretError::Hsm(self.to_string(), e))?;
                Ok(Fetched {
                    value,
                    version: version.to_string(),
                })
            }
            Self::Vault(r) => {
                let client = vault::installed().ok_or_else(|| {
                    SecretError::Vault(self.to_string(), vault::VaultError::NotConfigured)
                })?;
                let s = client
                    .read_blocking(r)
                    .map_err(|e| SecretError::Vault(self.to_string(), e))?;
                Ok(Fetched {
                    value: SecretBox::new(s.value.expose_secret().as_bytes().into()),
                    version: s.version.to_string(),
                })
            }
        }
    }

    /// Reads the secret as text. Blocking: call at start-up or from a blocking thread.
    pub fn resolve(&self) -> Result<SecretString, SecretError> {
        match self {
            Self::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                Ok(_) => Err(SecretError::Empty(self.to_string())),
                Err(_) => Err(SecretError::EnvMissing(name.clone())),
            },
            Self::File(path) => read_secret_file(path),
            Self::Pkcs11(_) | Self::Vault(_) => {
                let f = self.fetch()?;
                let text = std::str::from_utf8(f.value.expose_secret())
                    .map_err(|_| SecretError::NotHeaderSafe(self.to_string()))?;
                Ok(SecretString::from(text.to_owned()))
            }
        }
    }
}

/// A short tag that changes when a file secret's content does. Keyed with a random
/// per-process key, so the tag (which reaches logs and metrics) is no oracle for guessing
/// the secret offline.
fn content_version(content: &[u8]) -> String {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0u8; 32]))
    });
    let tag = ring::hmac::sign(key, content);
    tag.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A secret value and the version of its source it came from.
pub struct Fetched {
    pub value: SecretBox<[u8]>,
    pub version: String,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("{0} is empty")]
    Empty(String),
    #[error("{path}: cannot read: {kind}")]
    Read {
        path: PathBuf,
        kind: std::io::ErrorKind,
    },
    #[error("{path}: mode {mode:o} lets group or others read it; restrict it (chmod 600)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{0}: the value contains characters not allowed in an HTTP header")]
    NotHeaderSafe(String),
    #[error("{0}: not supported by this build")]
    Unsupported(String),
    #[error("{0}: {1}")]
    Hsm(String, pkcs11::HsmError),
    #[error("{0}: {1}")]
    Vault(String, vault::VaultError),
}

impl SecretError {
    /// The source is temporarily unavailable (a token that went away), not misconfigured.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Hsm(_, e) => e.token_gone(),
            Self::Vault(_, e) => e.is_transient(),
            _ => false,
        }
    }
}

fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    let read_err = |e: std::io::Error| SecretError::Read {
        path: path.to_owned(),
        kind: e.kind(),
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(read_err)?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| SecretError::NotHeaderSafe(format!("file:{}", path.display())))?;
    // Editors and `echo` add a final newline that is never part of the secret.
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(SecretError::Empty(format!("file:{}", path.display())));
    }
    Ok(SecretString::from(value.to_owned()))
}
impl SecretRef {
    /// Checks, without reading the value, that the secret can be had: the variable is set,
    /// the file exists with mode 0600 or stricter, the PKCS#11 module and PIN source exist.
    /// For `idgate check` and start-up, so every unusable reference is reported with its key.
    pub fn check_available(&self) -> Result<(), SecretError> {
        match self {
            Self::Env(name) => match std::env::var_os(name) {
                Some(v) if !v.is_empty() => Ok(()),
                Some(_) => Err(SecretError::Empty(self.to_string())),
                None => Err(SecretError::EnvMissing(name.clone())),
            },
            Self::File(path) => {
                let meta = std::fs::metadata(path).map_err(|e| SecretError::Read {
                    path: path.clone(),
                    kind: e.kind(),
                })?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(SecretError::TooOpen {
                        path: path.clone(),
                        mode,
                    });
                }
                std::fs::File::open(path)
                    .map(drop)
                    .map_err(|e| SecretError::Read {
                        path: path.clone(),
                        kind: e.kind(),
                    })
            }
            Self::Pkcs11(uri) => {
                if !uri.module_path.is_file() {
                    return Err(SecretError::Read {
                        path: uri.module_path.clone(),
                        kind: std::io::ErrorKind::NotFound,
                    });
                }
                match &uri.pin_source {
                    pkcs11::PinSource::Env(name) => Self::Env(name.clone()).check_available(),
                    pkcs11::PinSource::File(path) => Self::File(path.clone()).check_available(),
                }
            }
            // Reachability of the server is checked when the secret is first read.
            Self::Vault(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_secret_is_refused_without_echoing_it() {
        let err = SecretRef::parse("sk_live_abcdef", Path::new("/etc")).unwrap_err();
        assert_eq!(err, SecretRefError::Literal);
        assert!(!err.to_string().contains("sk_live"));
        // A colon inside a literal is not a scheme.
        let err = SecretRef::parse("user:pa55word", Path::new("/etc")).unwrap_err();
        assert_eq!(err, SecretRefError::Literal);
    }

    #[test]
    fn file_reference_resolves_relative_to_base_and_refuses_open_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let r = SecretRef::parse("file:key", dir.path()).unwrap();
        let err = r.resolve().unwrap_err();
        assert!(matches!(err, SecretError::TooOpen { .. }), "{err}");
        assert!(!err.to_string().contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(r.resolve().unwrap().expose_secret(), "s3cret");
    }

    #[test]
    fn debug_of_a_secret_is_redacted() {
        let s = SecretString::from("topsecretvalue".to_owned());
        assert!(!format!("{s:?}").contains("topsecretvalue"));
    }
}
