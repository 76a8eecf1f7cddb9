//! The trail's keys: the Ed25519 key that signs checkpoints (a PKCS#8 key read through a
//! secret reference, or a key pair that never leaves a PKCS#11 token), the public keys that
//! verify them, and the AES-256 key that encrypts records at rest.
//!
//! Key material is held in zeroizing memory and never shown: `Debug` names a key by its id
//! (the first 8 bytes of the SHA-256 of its public key, or of the encryption key), which is
//! also what each checkpoint and each encrypted line carries.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use idgate_secrets::pkcs11::{Hsm, HsmError};
use idgate_secrets::{ExposeSecret, SecretError, SecretRef};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use zeroize::Zeroizing;

/// Why a key cannot be used. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("{reference}: {source}")]
    Hsm {
        reference: String,
        #[source]
        source: HsmError,
    },
    #[error("{what}: {why}")]
    Malformed { what: String, why: &'static str },
    #[error("{path}: cannot read: {kind}")]
    Read {
        path: String,
        kind: std::io::ErrorKind,
    },
    #[error("the system's random source failed")]
    Random,
}

fn malformed(what: impl fmt::Display, why: &'static str) -> KeyError {
    KeyError::Malformed {
        what: what.to_string(),
        why,
    }
}

/// The body of the first PEM block labelled `label`, decoded.
fn pem_block(text: &str, label: &str) -> Option<Zeroizing<Vec<u8>>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: Zeroizing<String> = Zeroizing::new(
        text[start..stop]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    STANDARD.decode(b64.as_bytes()).ok().map(Zeroizing::new)
}

/// 32 bytes given as base64 or hexadecimal text (or, from a token, as the raw bytes).
fn key_bytes(raw: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    if raw.len() == 32 && std::str::from_utf8(raw).is_err() {
        out.copy_from_slice(raw);
        return Some(out);
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    let decoded = Zeroizing::new(if text.len() == 64 {
        idgate_codec::hex::decode(text)?
    } else {
        STANDARD.decode(text).ok()?
    });
    (decoded.len() == 32).then(|| {
        out.copy_from_slice(&decoded);
        out
    })
}

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32-byte key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 public key that verifies checkpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kid())
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it), or
    /// the 32 bytes in base64 or hexadecimal.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some(der) = pem_block(text, "PUBLIC KEY") {
            let key = der.strip_prefix(&SPKI_PREFIX[..])?;
            return <[u8; 32]>::try_from(key).ok().map(Self);
        }
        key_bytes(text.trim().as_bytes()).map(|k| Self(*k))
    }

    /// Reads a public key file (see [`PublicKey::parse`]).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            kind: e.kind(),
        })?;
        Self::parse(&text).ok_or_else(|| {
            malformed(
                path.display(),
                "not an Ed25519 public key (a PEM PUBLIC KEY, or 32 bytes in base64 or hex)",
            )
        })
    }

    /// The PEM `PUBLIC KEY` document.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }

    /// The key's id: the first 8 bytes of the SHA-256 of the key, in hex.
    pub fn kid(&self) -> String {
        idgate_codec::hex::encode(
            &ring::digest::digest(&ring::digest::SHA256, &self.0).as_ref()[..8],
        )
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

/// Where the signing key is and how it signs.
enum Signer {
    /// Read from a file, the environment or Vault; held in memory.
    InMemory(Ed25519KeyPair),
    /// Held in a PKCS#11 token; each signature is a `C_Sign` there, by the newest version,
    /// and comes with the public key of the private key that made it.
    Token { hsm: Arc<Hsm>, label: String },
}

/// The key that signs checkpoints.
pub struct SigningKey {
    signer: Signer,
    public: Mutex<PublicKey>,
    reference: String,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("reference", &self.reference)
            .field("public", &self.public())
            .finish()
    }
}

impl SigningKey {
    /// Loads the key a reference names: a `pkcs11:` key pair in a token (its object label),
    /// or a PKCS#8 Ed25519 private key (PEM `PRIVATE KEY`, or its DER in base64) read from
    /// `file:`, `env:` or `vault:`. Blocking.
    pub fn load(reference: &SecretRef) -> Result<Self, KeyError> {
        let name = reference.to_string();
        if let SecretRef::Pkcs11(uri) = reference {
            let hsm_err = |source| KeyError::Hsm {
                reference: name.clone(),
                source,
            };
            let hsm = Hsm::shared(uri).map_err(hsm_err)?;
            let (public, _) = hsm.ed25519_public_key(&uri.object).map_err(hsm_err)?;
            let public = PublicKey(public);
            return Ok(Self {
                signer: Signer::Token {
                    hsm,
                    label: uri.object.clone(),
                },
                public: Mutex::new(public),
                reference: name,
            });
        }
        let fetched = reference.fetch()?;
        let raw = fetched.value.expose_secret();
        let der = std::str::from_utf8(raw)
            .ok()
            .and_then(|text| {
                pem_block(text, "PRIVATE KEY")
                    .or_else(|| STANDARD.decode(text.trim()).ok().map(Zeroizing::new))
            })
            .ok_or_else(|| {
                malformed(
                    &name,
                    "not a PKCS#8 Ed25519 private key (PEM PRIVATE KEY, or its DER in base64)",
                )
            })?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| malformed(&name, "not a PKCS#8 Ed25519 private key"))?;
        let public = PublicKey::from_bytes(
            <[u8; 32]>::try_from(pair.public_key().as_ref())
                .map_err(|_| malformed(&name, "not an Ed25519 key"))?,
        );
        Ok(Self {
            signer: Signer::InMemory(pair),
            public: Mutex::new(public),
            reference: name,
        })
    }

    /// The public key of the last signature (or, before one, of the key loaded).
    pub fn public(&self) -> PublicKey {
        *self.public.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs `message`; returns the signature and the public key that verifies it.
    pub fn sign(&self, message: &[u8]) -> Result<(Vec<u8>, PublicKey), KeyError> {
        let (sig, public) = match &self.signer {
            Signer::InMemory(pair) => (pair.sign(message).as_ref().to_vec(), self.public()),
            Signer::Token { hsm, label } => {
                // The public key comes from the session that signed: looked up apart, it
                // could be that of a key pair generated in between.
                let hsm_err = |source| KeyError::Hsm {
                    reference: self.reference.clone(),
                    source,
                };
                let (sig, _, public) = hsm.ed25519_sign(label, message).map_err(hsm_err)?;
                (sig, PublicKey(public))
            }
        };
        *self.public.lock().unwrap_or_else(|e| e.into_inner()) = public;
        Ok((sig, public))
    }
}

/// The DER of a PKCS#8 v1 Ed25519 private key (RFC 8410) before its 32-byte seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A new Ed25519 key: its PKCS#8 document as PEM (to be kept secret) and its public key.
pub fn generate_signing_key() -> Result<(Zeroizing<String>, PublicKey), KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Random)?;
    let public = <[u8; 32]>::try_from(pair.public_key().as_ref()).map_err(|_| KeyError::Random)?;
    // Written as PKCS#8 v1 (the seed alone), as OpenSSL writes and reads Ed25519 keys; ring's
    // v2 document holds the seed at a fixed place.
    let seed = pkcs8.as_ref().get(16..48).ok_or(KeyError::Random)?;
    let mut v1 = Zeroizing::new(PKCS8_V1_PREFIX.to_vec());
    v1.extend_from_slice(seed);
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&v1).map_err(|_| KeyError::Random)?;
    let b64 = Zeroizing::new(STANDARD.encode(v1.as_slice()));
    let mut pem = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, PublicKey(public)))
}

/// The AES-256 key that encrypts records at rest.
#[derive(Clone)]
pub struct EncryptionKey {
    key: Zeroizing<[u8; 32]>,
    kid: String,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey({})", self.kid)
    }
}

impl EncryptionKey {
    fn new(key: Zeroizing<[u8; 32]>) -> Self {
        let kid = idgate_codec::hex::encode(
            &ring::digest::digest(&ring::digest::SHA256, key.as_ref()).as_ref()[..8],
        );
        Self { key, kid }
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self::new(Zeroizing::new(key))
    }

    /// Reads the key a reference names: 32 bytes as base64 or hex text (or raw, from a
    /// token's wrapped value). Blocking.
    pub fn load(reference: &SecretRef) -> Result<Self, KeyError> {
        let fetched = reference.fetch()?;
        key_bytes(fetched.value.expose_secret())
            .map(Self::new)
            .ok_or_else(|| {
                malformed(
                    reference,
                    "not an AES-256 key: 32 bytes in base64 (44 characters) or hex (64 digits)",
                )
            })
    }

    /// A new random key and its text (base64), to be kept secret.
    pub fn generate() -> Result<(Self, Zeroizing<String>), KeyError> {
        let mut key = Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), key.as_mut())
            .map_err(|_| KeyError::Random)?;
        let text = Zeroizing::new(STANDARD.encode(key.as_ref()));
        Ok((Self::new(key), text))
    }

    /// The key's id: the first 8 bytes of its SHA-256, in hex. Names the key in each
    /// encrypted line without revealing it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn private_file(dir: &Path, name: &str, content: &str) -> SecretRef {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        SecretRef::File(path)
    }

    #[test]
    fn a_generated_key_signs_what_its_public_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (pem, public) = generate_signing_key().unwrap();
        let key = SigningKey::load(&private_file(dir.path(), "k.pem", &pem)).unwrap();
        assert_eq!(key.public(), public);
        let (sig, by) = key.sign(b"checkpoint").unwrap();
        assert_eq!(by, public);
        assert!(public.verify(b"checkpoint", &sig));
        assert!(!public.verify(b"checkpoinT", &sig));
        assert_eq!(PublicKey::parse(&public.to_pem()), Some(public));
        assert_eq!(
            PublicKey::parse(&idgate_codec::hex::encode(public.bytes())),
            Some(public)
        );
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }

    #[test]
    fn an_openssl_pkcs8_v1_key_is_accepted_and_junk_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key inside).
        let v1 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOtxcZHScMD4xRhSkq2gQXtRsZKe+nqX9HMcCyIsnqWY\n-----END PRIVATE KEY-----\n";
        SigningKey::load(&private_file(dir.path(), "v1.pem", v1)).unwrap();
        let err = SigningKey::load(&private_file(dir.path(), "bad", "hello")).unwrap_err();
        assert!(err.to_string().contains("not a PKCS#8"), "{err}");
    }

    #[test]
    fn encryption_keys_are_32_bytes_of_base64_or_hex() {
        let dir = tempfile::tempdir().unwrap();
        let (key, text) = EncryptionKey::generate().unwrap();
        let loaded = EncryptionKey::load(&private_file(dir.path(), "e", &text)).unwrap();
        assert_eq!(loaded.bytes(), key.bytes());
        assert_eq!(loaded.kid(), key.kid());
        let hex = idgate_codec::hex::encode(key.bytes());
        assert_eq!(
            EncryptionKey::load(&private_file(dir.path(), "h", &hex))
                .unwrap()
                .kid(),
            key.kid()
        );
        let err = EncryptionKey::load(&private_file(dir.path(), "s", "c2hvcnQ=")).unwrap_err();
        assert!(err.to_string().contains("not an AES-256 key"), "{err}");
        assert!(!format!("{key:?}").contains(text.as_str()));
    }

    /// Set in the process [`in_own_token_store`] runs a test in: its SoftHSM2 token store.
    const STORE: &str = "IDGATE_TEST_SOFTHSM_STORE";
    const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

    /// Runs `body` (the test `name` of this module) in a process of its own, with a SoftHSM2
    /// token store of its own (SoftHSM2 reads `SOFTHSM2_CONF` once per process) holding the
    /// token `idgate`, whose user PIN is in the file it is given.
    fn in_own_token_store(name: &str, body: impl FnOnce(&Path)) {
        use std::time::{Duration, Instant};
        if let Some(dir) = std::env::var_os(STORE) {
            let dir = Path::new(&dir);
            let pin = |p: &str| idgate_secrets::SecretString::from(p.to_owned());
            idgate_secrets::pkcs11::init_token(
                Path::new(SOFTHSM_MODULE),
                idgate_secrets::pkcs11::SlotChoice::ByLabel,
                "idgate",
                &pin("5678"),
                &pin("1234"),
                false,
            )
            .unwrap();
            private_file(dir, "pin", "1234");
            body(&dir.join("pin"));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        let store = format!("directories.tokendir = {}/tokens\n", dir.path().display());
        std::fs::write(&conf, store).unwrap();
        let test = format!("keys::tests::{name}");
        let out = dir.path().join("out");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env("SOFTHSM2_CONF", &conf)
            .env(STORE, dir.path())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let output = std::fs::read_to_string(&out).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()) && output.contains("1 passed"),
            "{test} (status {status:?}):\n{output}"
        );
    }

    #[test]
    fn a_checkpoint_names_the_public_key_of_the_private_key_that_signed_it() {
        use idgate_secrets::pkcs11::cryptoki::object::{Attribute, ObjectClass};
        in_own_token_store(
            "a_checkpoint_names_the_public_key_of_the_private_key_that_signed_it",
            |pin| {
                let reference = SecretRef::parse(
                    &format!(
                        "pkcs11:token=idgate;object=audit?module-path={SOFTHSM_MODULE}&pin-source=file:{}",
                        pin.display()
                    ),
                    Path::new("/"),
                )
                .unwrap();
                let SecretRef::Pkcs11(uri) = &reference else {
                    panic!("{reference}")
                };
                let hsm = Hsm::open(uri).unwrap();
                let (_, first) = hsm.generate_ed25519("audit").unwrap();
                let (_, second) = hsm.generate_ed25519("audit").unwrap();
                let key = SigningKey::load(&reference).unwrap();
                assert_eq!(key.public(), PublicKey(second));
                let (sig, by) = key.sign(b"checkpoint 1").unwrap();
                assert_eq!(by, PublicKey(second));
                assert!(by.verify(b"checkpoint 1", &sig));

                // From now on the newest public key is not that of the newest private key,
                // as when a key pair is generated between a signature and the look-up of
                // its public key.
                hsm.with_session(|s| {
                    let found = s
                        .find_objects(&[
                            Attribute::Class(ObjectClass::PRIVATE_KEY),
                            Attribute::Id(2u32.to_be_bytes().to_vec()),
                        ])
                        .unwrap();
                    assert_eq!(found.len(), 1);
                    s.destroy_object(found[0]).unwrap();
                    Ok(())
                })
                .unwrap();
                let (sig, by) = key.sign(b"checkpoint 2").unwrap();
                assert_eq!(by, PublicKey(first));
                assert!(by.verify(b"checkpoint 2", &sig));
                assert_eq!(key.public(), PublicKey(first));
                // And a key loaded now names the same.
                let key = SigningKey::load(&reference).unwrap();
                assert_eq!(key.public(), PublicKey(first));
                let (sig, by) = key.sign(b"checkpoint 3").unwrap();
                assert!(by.verify(b"checkpoint 3", &sig));
                assert_eq!(key.public(), PublicKey(first));
            },
        );
    }
}
