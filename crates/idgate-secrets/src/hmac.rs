//! HMAC-SHA256 keys: held in memory (and rotated), or kept in an HSM that computes each tag
//! without letting the key out. Upstream request signatures (Sumsub, Veriff) and the
//! pseudonyms of response masking are made with them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::credential::live::LiveValue;
use crate::pkcs11::{Hsm, ObjectKind};
use crate::{ExposeSecret, Fetched, SecretError, SecretRef};

/// Signatures in flight per HSM-held key: as many as the token's session pool keeps idle.
const HSM_CONCURRENCY: usize = 16;

/// An HMAC-SHA256 key: in memory (from env, file, Vault or a wrapped HSM value) or in the
/// HSM, where it is named by its label and the newest version signs.
pub struct HmacKey {
    source: SecretRef,
    /// The fewest bytes a key in memory may have; 0 for no minimum.
    min_len: usize,
    kind: Kind,
}

enum Kind {
    Memory(LiveValue<ring::hmac::Key>),
    Hsm {
        hsm: Arc<Hsm>,
        label: String,
        /// Bounds the signatures in flight, so a burst queues here instead of opening
        /// more token sessions than the pool keeps.
        in_flight: Arc<tokio::sync::Semaphore>,
    },
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKey")
            .field("source", &self.source)
            .field("in_token", &self.in_token())
            .finish_non_exhaustive()
    }
}

/// Why an HMAC was not made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the signing queue is closed")]
    QueueClosed,
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Hsm(#[from] crate::pkcs11::HsmError),
    #[error("the token returned a {0}-byte tag, not 32")]
    TagLength(usize),
}

impl HmacKey {
    /// Loads the key `secret` names; blocking (files, tokens). A `pkcs11:` reference to an
    /// HMAC key stays in the token; any other reference is read into memory. A new version
    /// of an in-memory key serves requests that start after it, a request that started
    /// before keeps the previous one for at most `overlap`.
    pub fn load(secret: &SecretRef, overlap: Duration) -> Result<Self, SecretError> {
        Self::load_min(secret, overlap, 0)
    }

    /// [`HmacKey::load`], refusing a key in memory shorter than `min_len` bytes (now and at
    /// every refresh). A key in a token cannot be measured; the token enforces its own
    /// minimum.
    pub fn load_min(
        secret: &SecretRef,
        overlap: Duration,
        min_len: usize,
    ) -> Result<Self, SecretError> {
        if let SecretRef::Pkcs11(uri) = secret {
            let hsm = Hsm::shared(uri).map_err(|e| SecretError::Hsm(secret.to_string(), e))?;
            if hsm
                .kind_of(&uri.object)
                .map_err(|e| SecretError::Hsm(secret.to_string(), e))?
                == ObjectKind::HmacKey
            {
                return Ok(Self {
                    source: secret.clone(),
                    min_len,
                    kind: Kind::Hsm {
                        hsm,
                        label: uri.object.clone(),
                        in_flight: Arc::new(tokio::sync::Semaphore::new(HSM_CONCURRENCY)),
                    },
                });
            }
        }
        let f = secret.fetch()?;
        check_len(secret, &f, min_len)?;
        Ok(Self {
            source: secret.clone(),
            min_len,
            kind: Kind::Memory(LiveValue::new(hmac_key(&f), f.version, overlap)),
        })
    }

    /// Whether the key stays in an HSM, which computes every tag.
    pub fn in_token(&self) -> bool {
        matches!(self.kind, Kind::Hsm { .. })
    }

    /// Signs `data`; returns the lowercase hex MAC and the key version used.
    pub async fn sign(
        &self,
        started: Instant,
        data: Vec<u8>,
    ) -> Result<(String, Arc<str>), SignError> {
        match &self.kind {
            Kind::Memory(live) => {
                let key = live.for_request(started);
                let tag = ring::hmac::sign(&key.value, &data);
                Ok((idgate_codec::hex::encode(tag.as_ref()), key.version.clone()))
            }
            Kind::Hsm {
                hsm,
                label,
                in_flight,
            } => {
                let _permit = in_flight
                    .acquire()
                    .await
                    .map_err(|_| SignError::QueueClosed)?;
                let (hsm, label) = (hsm.clone(), label.clone());
                let (mac, version) =
                    tokio::task::spawn_blocking(move || hsm.hmac_sha256(&label, &data)).await??;
                Ok((idgate_codec::hex::encode(&mac), version.to_string().into()))
            }
        }
    }

    /// The tag of each of `data`, all with one key version; in a token, in one blocking
    /// call and one session. Returns the tags and the version used.
    pub async fn sign_all(
        &self,
        started: Instant,
        data: &[Vec<u8>],
    ) -> Result<(Vec<[u8; 32]>, Arc<str>), SignError> {
        match &self.kind {
            Kind::Memory(live) => {
                let key = live.for_request(started);
                let tags = data
                    .iter()
                    .map(|d| tag32(ring::hmac::sign(&key.value, d).as_ref()))
                    .collect::<Result<_, _>>()?;
                Ok((tags, key.version.clone()))
            }
            Kind::Hsm {
                hsm,
                label,
                in_flight,
            } => {
                let _permit = in_flight
                    .acquire()
                    .await
                    .map_err(|_| SignError::QueueClosed)?;
                let (hsm, label, data) = (hsm.clone(), label.clone(), data.to_vec());
                let (macs, version) =
                    tokio::task::spawn_blocking(move || hsm.hmac_sha256_all(&label, &data))
                        .await??;
                let tags = macs.iter().map(|m| tag32(m)).collect::<Result<_, _>>()?;
                Ok((tags, version.to_string().into()))
            }
        }
    }

    /// Reads the source again; blocking. Returns whether a new version is now in use. A key
    /// in a token needs no refresh: the newest version signs every time.
    pub fn refresh(&self) -> Result<bool, SecretError> {
        match &self.kind {
            Kind::Memory(live) => {
                let f = self.source.fetch()?;
                if *f.version == *live.version() {
                    return Ok(false);
                }
                check_len(&self.source, &f, self.min_len)?;
                live.replace(hmac_key(&f), f.version);
                Ok(true)
            }
            Kind::Hsm { .. } => Ok(false),
        }
    }
}

fn tag32(mac: &[u8]) -> Result<[u8; 32], SignError> {
    mac.try_into().map_err(|_| SignError::TagLength(mac.len()))
}

fn check_len(source: &SecretRef, f: &Fetched, min_len: usize) -> Result<(), SecretError> {
    let len = f.value.expose_secret().len();
    if len < min_len {
        return Err(SecretError::TooShort {
            reference: source.to_string(),
            len,
            min: min_len,
        });
    }
    Ok(())
}

fn hmac_key(f: &Fetched) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, f.value.expose_secret())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn key_file(dir: &std::path::Path, value: &str) -> SecretRef {
        let path = dir.join("key");
        std::fs::write(&path, value).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        SecretRef::File(path)
    }

    #[tokio::test]
    async fn a_key_in_memory_signs_one_value_or_many_alike_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let source = key_file(dir.path(), "first key of thirty-two bytes!!!");
        let key = HmacKey::load_min(&source, Duration::ZERO, 32).unwrap();
        assert!(!key.in_token());
        let reference = |k: &str, d: &[u8]| {
            ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k.as_bytes()),
                d,
            )
        };
        let (hex, v1) = key.sign(Instant::now(), b"a".to_vec()).await.unwrap();
        let (tags, same) = key
            .sign_all(Instant::now(), &[b"a".to_vec(), b"b".to_vec()])
            .await
            .unwrap();
        assert_eq!((&*v1, &*same), (&*same, &*v1));
        assert_eq!(hex, idgate_codec::hex::encode(&tags[0]));
        assert_eq!(
            tags[1].as_slice(),
            reference("first key of thirty-two bytes!!!", b"b").as_ref()
        );
        assert!(!key.refresh().unwrap(), "nothing changed");

        // Too short a new version is refused and the current one stays.
        key_file(dir.path(), "short");
        assert!(matches!(
            key.refresh(),
            Err(SecretError::TooShort {
                len: 5,
                min: 32,
                ..
            })
        ));
        key_file(dir.path(), "second key of thirty-two bytes!!");
        assert!(key.refresh().unwrap());
        let (tags, v2) = key
            .sign_all(Instant::now(), &[b"b".to_vec()])
            .await
            .unwrap();
        assert_ne!(v1, v2);
        assert_eq!(
            tags[0].as_slice(),
            reference("second key of thirty-two bytes!!", b"b").as_ref()
        );
    }

    #[test]
    fn a_short_key_is_refused_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let source = key_file(dir.path(), "tiny-secret");
        let err = HmacKey::load_min(&source, Duration::ZERO, 32).unwrap_err();
        assert!(err.to_string().contains("11 bytes"), "{err}");
        assert!(!err.to_string().contains("tiny-secret"));
        assert!(HmacKey::load(&source, Duration::ZERO).is_ok());
        assert!(!format!("{:?}", HmacKey::load(&source, Duration::ZERO).unwrap()).contains("tiny"));
    }
}
