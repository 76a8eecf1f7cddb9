//! Upstream credential custody: the secret reference grammar shared by every part of the
//! configuration, and the sources that resolve a reference to a value.
//!
//! Values are [`SecretString`]s: zeroized on drop, redacted in `Debug`, never `Display`ed.
//! No error here ever carries a secret value.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub mod credential;
#[doc(hidden)]
pub mod fuzzing;
pub mod hmac;
pub mod oauth2;
pub mod pkcs11;
pub mod vault;
mod zeroizing;

pub use hmac::HmacKey;
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
                // Validation refuses a `vault:` reference without a [vault] section: a
                // process without a client started without one (a reload added it), or could
                // not build it (which the start reports at `vault`).
                let client = vault::installed()
                    .ok_or_else(|| SecretError::VaultNeedsRestart(self.to_string()))?;
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
    idgate_codec::hex::encode(&tag.as_ref()[..6])
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
    #[error("{path}: is {what}; a secret must be a regular file (a symlink to one is fine)")]
    NotRegular { path: PathBuf, what: &'static str },
    #[error(
        "{path}: owned by uid {owner}; a secret file must belong to the gateway's user (uid {euid}) or root"
    )]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error(
        "{reference}: {len} bytes is too short for a key; use at least {min} random bytes (for example `openssl rand -base64 32`)"
    )]
    TooShort {
        reference: String,
        len: usize,
        min: usize,
    },
    #[error("{0}: the value contains characters not allowed in an HTTP header")]
    NotHeaderSafe(String),
    #[error("{0}: not supported by this build")]
    Unsupported(String),
    #[error("{0}: {1}")]
    Hsm(String, pkcs11::HsmError),
    #[error("{0}: {1}")]
    Vault(String, vault::VaultError),
    #[error(
        "{0}: no Vault client is running: the [vault] section is put into use when the gateway starts (restart after adding it)"
    )]
    VaultNeedsRestart(String),
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

/// Opens a `file:` secret and checks the opened file itself, so that what is checked is what
/// is read: a path swapped between a check and a read (an atomic rename, a Kubernetes
/// `..data` symlink flip) cannot slip in another file.
///
/// Symlinks are followed (Kubernetes secret volumes are symlinks); the file they lead to must
/// be a regular file with mode 0600 or stricter, owned by the gateway's effective user or by
/// root (which can read it anyway, and owns Kubernetes secret volumes).
fn open_secret_file(path: &Path) -> Result<(std::fs::File, std::fs::Metadata), SecretError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let read_err = |e: std::io::Error| SecretError::Read {
        path: path.to_owned(),
        kind: e.kind(),
    };
    // Non-blocking, so that opening a FIFO returns at once (and is refused below) instead of
    // waiting for a writer; it changes nothing for a regular file.
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(SecretError::NotRegular {
            path: path.to_owned(),
            what,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(SecretError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    Ok((file, meta))
}

/// The largest `file:` secret read: far more than any key, token or PIN.
const MAX_SECRET_FILE: usize = 64 * 1024;

fn read_secret_file(path: &Path) -> Result<SecretString, SecretError> {
    use std::io::Read;
    let (mut file, _) = open_secret_file(path)?;
    let failed = |kind| SecretError::Read {
        path: path.to_owned(),
        kind,
    };
    // One buffer of the largest size, whatever size the file reports (procfs files report
    // 0): it is never reallocated, which would leave a copy of the secret that is not
    // zeroed, and a file that holds more than it can take is refused.
    let mut buf = zeroize::Zeroizing::new(vec![0u8; MAX_SECRET_FILE + 1]);
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e.kind())),
        }
    }
    if len > MAX_SECRET_FILE {
        return Err(failed(std::io::ErrorKind::FileTooLarge));
    }
    let text = std::str::from_utf8(&buf[..len])
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
    /// the file is a regular file with mode 0600 or stricter and a trusted owner, the PKCS#11
    /// module and PIN source exist.
    /// For `idgate check` and start-up, so every unusable reference is reported with its key.
    pub fn check_available(&self) -> Result<(), SecretError> {
        match self {
            Self::Env(name) => match std::env::var_os(name) {
                Some(v) if !v.is_empty() => Ok(()),
                Some(_) => Err(SecretError::Empty(self.to_string())),
                None => Err(SecretError::EnvMissing(name.clone())),
            },
            Self::File(path) => open_secret_file(path).map(drop),
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

    fn private_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_file_secret_whose_size_reads_as_zero_is_read_whole() {
        let path = Path::new("/proc/self/environ");
        let len = std::fs::metadata(path).unwrap().len();
        assert_eq!(len, 0, "procfs reports no size");
        let expected = std::fs::read(path).unwrap();
        let value = read_secret_file(path).unwrap();
        assert!(!expected.is_empty());
        assert_eq!(value.expose_secret().as_bytes(), expected.trim_ascii_end());
    }

    #[test]
    fn a_file_secret_larger_than_any_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let most = "k".repeat(MAX_SECRET_FILE);
        let path = private_file(dir.path(), "most", &most, 0o600);
        assert_eq!(read_secret_file(&path).unwrap().expose_secret(), most);
        let path = private_file(dir.path(), "more", &format!("{most}k"), 0o600);
        let err = read_secret_file(&path).unwrap_err();
        assert!(
            matches!(
                err,
                SecretError::Read {
                    kind: std::io::ErrorKind::FileTooLarge,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn file_secret_owned_by_another_user_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = private_file(dir.path(), "key", "s3cret", 0o600);
        let euid = rustix::process::geteuid().as_raw();
        let other = if euid == 4242 { 4243 } else { 4242 };
        if std::os::unix::fs::chown(&path, Some(other), None).is_err() {
            // Only root can give a file away; as another user, the test has nothing to try.
            assert_ne!(euid, 0);
            return;
        }
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), other);
        let r = SecretRef::File(path.clone());
        for err in [r.resolve().unwrap_err(), r.check_available().unwrap_err()] {
            assert!(
                matches!(err, SecretError::WrongOwner { owner, .. } if owner == other),
                "{err}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
            assert!(!err.to_string().contains("s3cret"));
        }
        // Root's own files are trusted: root can read them anyway.
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        if euid == 0 {
            assert_eq!(r.resolve().unwrap().expose_secret(), "s3cret");
        }
    }

    #[test]
    fn file_secret_that_is_a_directory_or_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        // Opening a FIFO for reading blocks until a writer comes, unless done with care: a
        // stuck read would hang start-up, so this runs on a thread with a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        let paths = (sub.clone(), fifo.clone());
        std::thread::spawn(move || {
            let results = [&paths.0, &paths.1].map(|p| {
                let r = SecretRef::File(p.clone());
                (r.resolve().map(drop), r.check_available())
            });
            let _ = tx.send(results);
        });
        let results = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("reading a FIFO secret blocked");
        for ((read, check), what) in results.into_iter().zip(["a directory", "a FIFO"]) {
            for err in [read.unwrap_err(), check.unwrap_err()] {
                assert!(
                    matches!(err, SecretError::NotRegular { what: w, .. } if w == what),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn symlinked_file_secret_is_judged_by_the_file_it_leads_to() {
        let dir = tempfile::tempdir().unwrap();
        let open = private_file(dir.path(), "open", "world-readable", 0o644);
        let private = private_file(dir.path(), "private", "s3cret\n", 0o600);
        let to_open = dir.path().join("to-open");
        let to_private = dir.path().join("to-private");
        std::os::unix::fs::symlink(&open, &to_open).unwrap();
        std::os::unix::fs::symlink(&private, &to_private).unwrap();
        // The link itself is 0777: only the target's mode counts, in both directions.
        let err = SecretRef::File(to_open).resolve().unwrap_err();
        assert!(
            matches!(err, SecretError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert_eq!(
            SecretRef::File(to_private.clone())
                .resolve()
                .unwrap()
                .expose_secret(),
            "s3cret"
        );
        assert!(SecretRef::File(to_private).check_available().is_ok());
    }

    /// A Kubernetes secret volume updates by flipping a symlink: a reader that checks one
    /// file and reads another would, now and then, read a file it never checked.
    #[test]
    fn file_secret_swapped_while_being_read_is_never_read_unchecked() {
        let dir = tempfile::tempdir().unwrap();
        let private = private_file(dir.path(), "private", "checked", 0o600);
        let open = private_file(dir.path(), "open", "unchecked", 0o644);
        let link = dir.path().join("secret");
        let tmp = dir.path().join("secret.tmp");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, link) = (stop.clone(), link.clone());
            std::thread::spawn(move || {
                let mut flip = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let target = if flip { &private } else { &open };
                    let _ = std::fs::remove_file(&tmp);
                    if std::os::unix::fs::symlink(target, &tmp).is_err()
                        || std::fs::rename(&tmp, &link).is_err()
                    {
                        break;
                    }
                    flip = !flip;
                }
            })
        };
        let r = SecretRef::File(link);
        let started = std::time::Instant::now();
        let (mut accepted, mut refused) = (0u32, 0u32);
        while started.elapsed() < std::time::Duration::from_secs(2) {
            match r.resolve() {
                Ok(v) => {
                    assert_eq!(
                        v.expose_secret(),
                        "checked",
                        "read a file that was never checked"
                    );
                    accepted += 1;
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(accepted > 0 && refused > 0, "{accepted} {refused}");
    }

    #[test]
    fn debug_of_a_secret_is_redacted() {
        let s = SecretString::from("topsecretvalue".to_owned());
        assert!(!format!("{s:?}").contains("topsecretvalue"));
    }
}
