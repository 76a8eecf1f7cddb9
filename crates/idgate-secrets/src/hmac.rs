//! HMAC-SHA256 keys: held in memory (and rotated), or kept in an HSM that computes each tag
//! without letting the key out. Upstream request signatures (Sumsub, Veriff) and the
//! pseudonyms of response masking are made with them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::credential::live::LiveValue;
use crate::pkcs11::{Hsm, HsmError, ObjectKind};
use crate::{ExposeSecret, Fetched, SecretError, SecretRef};

/// The longest a request waits for a signature made in a token: for a signing slot of the
/// token, then for the token's answer. Past it the request fails as the credential being
/// unavailable (503), while a call the token is still working on keeps its slot.
const HSM_DEADLINE: Duration = Duration::from_secs(5);

/// The fewest bytes of an HMAC key the gateway signs with on its own behalf (a pseudonym key,
/// a webhook subscriber's secret): SHA-256's output, below which the key is weaker than the
/// tag it makes (RFC 2104, section 3). A provider's signing secret (Sumsub, Veriff) is used
/// at the length the provider issued it.
pub const MIN_OWN_KEY_BYTES: usize = 32;

/// An HMAC-SHA256 key: in memory (from env, file, Vault or a wrapped HSM value) or in the
/// HSM, where it is named by its label and the newest version signs.
pub struct HmacKey {
    source: SecretRef,
    /// The fewest bytes the key may have, in memory or in a token; 0 for no minimum.
    min_len: usize,
    kind: Kind,
}

enum Kind {
    Memory(LiveValue<ring::hmac::Key>),
    Hsm { hsm: Arc<Hsm>, label: String },
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
    #[error("no signing slot of the token came free within {0:?}")]
    Busy(Duration),
    #[error("the token did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Hsm(#[from] HsmError),
    #[error("the token returned a {0}-byte tag, not 32")]
    TagLength(usize),
}

/// Runs `call` on a blocking thread once one of `slots` is free, waiting at most `deadline`
/// in all. The slot goes with the call: it is freed when the token is done with it, not when
/// the caller stops waiting (a request cancelled by its client, or past the deadline), so a
/// token that slows down or hangs never has more than `slots` calls in flight.
async fn in_token<T: Send + 'static>(
    slots: &Arc<Semaphore>,
    deadline: Duration,
    call: impl FnOnce() -> Result<T, HsmError> + Send + 'static,
) -> Result<T, SignError> {
    let until = tokio::time::Instant::now() + deadline;
    let slot = tokio::time::timeout_at(until, slots.clone().acquire_owned())
        .await
        .map_err(|_| SignError::Busy(deadline))?
        .map_err(|_| SignError::QueueClosed)?;
    let task = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        call()
    });
    match tokio::time::timeout_at(until, task).await {
        Ok(done) => Ok(done??),
        Err(_) => Err(SignError::Timeout(deadline)),
    }
}

impl HmacKey {
    /// Loads the key `secret` names; blocking (files, tokens). A `pkcs11:` reference to an
    /// HMAC key stays in the token; any other reference is read into memory. A new version
    /// of an in-memory key serves requests that start after it, a request that started
    /// before keeps the previous one for at most `overlap`.
    pub fn load(secret: &SecretRef, overlap: Duration) -> Result<Self, SecretError> {
        Self::load_min(secret, overlap, 0)
    }

    /// [`HmacKey::load`], refusing a key shorter than `min_len` bytes. A key in memory is
    /// measured now and at every refresh. A key in a token is measured by the length the
    /// token states for its newest version (`CKA_VALUE_LEN`), now and again in the session of
    /// every signature, so a shorter version added later (by whatever tool) fails the
    /// signatures rather than make them; so does a version whose length the token does not
    /// state, which cannot be shown to be long enough.
    pub fn load_min(
        secret: &SecretRef,
        overlap: Duration,
        min_len: usize,
    ) -> Result<Self, SecretError> {
        if let Some(key) = Self::load_in_token(secret)? {
            if let Kind::Hsm { hsm, label } = &key.kind {
                hsm.check_hmac_key(label, min_len).map_err(|e| match e {
                    HsmError::KeyTooShort { len, min, .. } => SecretError::TooShort {
                        reference: secret.to_string(),
                        len,
                        min,
                    },
                    e => SecretError::Hsm(secret.to_string(), e),
                })?;
            }
            return Ok(Self { min_len, ..key });
        }
        let f = secret.fetch()?;
        check_len(secret, &f, min_len)?;
        Ok(Self {
            source: secret.clone(),
            min_len,
            kind: Kind::Memory(LiveValue::new(memory_key(&f), f.version, overlap)),
        })
    }

    /// The key `secret` names when it is an HMAC key kept in a token, which makes every
    /// signature with its newest version; `None` for any other reference, read into memory
    /// by its user. Blocking (token calls).
    fn load_in_token(secret: &SecretRef) -> Result<Option<Self>, SecretError> {
        Ok(TokenKey::load(secret)?.map(|k| Self {
            source: k.source,
            min_len: 0,
            kind: Kind::Hsm {
                hsm: k.hsm,
                label: k.label,
            },
        }))
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
            Kind::Hsm { hsm, label } => {
                let slots = hsm.signing_slots().clone();
                let (hsm, label, min_len) = (hsm.clone(), label.clone(), self.min_len);
                let (mac, version) = in_token(&slots, HSM_DEADLINE, move || {
                    hsm.hmac_sha256(&label, &data, min_len)
                })
                .await?;
                Ok((idgate_codec::hex::encode(&mac), version.to_string().into()))
            }
        }
    }

    /// The tag of each of `data`, all with one key version; in a token, in one blocking
    /// call and one session, a `C_Sign` for each, none started past the deadline. Returns
    /// the tags and the version used.
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
            Kind::Hsm { hsm, label } => {
                let slots = hsm.signing_slots().clone();
                let (hsm, label, data) = (hsm.clone(), label.clone(), data.to_vec());
                let min_len = self.min_len;
                // Past the deadline the caller has given up: the token stops making tags,
                // and the slot comes free within one tag of it.
                let until = Instant::now() + HSM_DEADLINE;
                let (macs, version) = in_token(&slots, HSM_DEADLINE, move || {
                    hsm.hmac_sha256_all(&label, &data, until, min_len)
                })
                .await?;
                let tags = macs.iter().map(|m| tag32(m)).collect::<Result<_, _>>()?;
                Ok((tags, version.to_string().into()))
            }
        }
    }

    /// Reads the source again; blocking. Returns whether a new version is now in use. A key
    /// in a token needs no refresh: the newest version signs every time (held to the
    /// minimum each time).
    pub fn refresh(&self) -> Result<bool, SecretError> {
        match &self.kind {
            Kind::Memory(live) => {
                let f = self.source.fetch()?;
                if *f.version == *live.version() {
                    return Ok(false);
                }
                check_len(&self.source, &f, self.min_len)?;
                live.replace(memory_key(&f), f.version);
                Ok(true)
            }
            Kind::Hsm { .. } => Ok(false),
        }
    }
}

/// An HMAC key kept in a token that signs with the version its caller names, not whichever
/// is newest when the tag is made: the key of a signing scheme, whose version is read with
/// the id it is paired with and changes only together with it.
pub(crate) struct TokenKey {
    source: SecretRef,
    hsm: Arc<Hsm>,
    label: String,
}

impl TokenKey {
    /// The key `secret` names when it is an HMAC key kept in a token; `None` for any other
    /// reference. Blocking (token calls).
    pub(crate) fn load(secret: &SecretRef) -> Result<Option<Self>, SecretError> {
        let SecretRef::Pkcs11(uri) = secret else {
            return Ok(None);
        };
        let hsm = Hsm::shared(uri).map_err(|e| SecretError::Hsm(secret.to_string(), e))?;
        let kind = hsm
            .kind_of(&uri.object)
            .map_err(|e| SecretError::Hsm(secret.to_string(), e))?;
        Ok((kind == ObjectKind::HmacKey).then(|| Self {
            source: secret.clone(),
            hsm,
            label: uri.object.clone(),
        }))
    }

    /// The newest version of the key in the token now; blocking.
    pub(crate) fn newest_version(&self) -> Result<u32, SecretError> {
        self.hsm
            .hmac_key_version(&self.label, 0)
            .map_err(|e| SecretError::Hsm(self.source.to_string(), e))
    }

    /// Signs `data` inside the token with version `version` of the key; returns the
    /// lowercase hex MAC. A version the token no longer holds fails the signature.
    pub(crate) async fn sign_at(&self, version: u32, data: Vec<u8>) -> Result<String, SignError> {
        let slots = self.hsm.signing_slots().clone();
        let (hsm, label) = (self.hsm.clone(), self.label.clone());
        let mac = in_token(&slots, HSM_DEADLINE, move || {
            hsm.hmac_sha256_at(&label, version, &data, 0)
        })
        .await?;
        Ok(idgate_codec::hex::encode(&mac))
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

/// An HMAC-SHA256 key in memory, as ring keeps it: the hash states after the padded key,
/// which ring does not zeroize when they are dropped.
pub(crate) fn memory_key(f: &Fetched) -> ring::hmac::Key {
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

    /// Token calls that block until `release` is set, counting how many started.
    struct HeldCalls {
        started: Arc<std::sync::atomic::AtomicUsize>,
        starts: tokio::sync::mpsc::UnboundedSender<()>,
        release: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    }

    impl HeldCalls {
        fn new() -> (Self, tokio::sync::mpsc::UnboundedReceiver<()>) {
            let (starts, rx) = tokio::sync::mpsc::unbounded_channel();
            let calls = Self {
                started: Default::default(),
                starts,
                release: Default::default(),
            };
            (calls, rx)
        }

        fn call(&self) -> impl FnOnce() -> Result<(), HsmError> + Send + 'static {
            let (started, starts, release) = (
                self.started.clone(),
                self.starts.clone(),
                self.release.clone(),
            );
            move || {
                started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = starts.send(());
                let (released, cv) = &*release;
                // Bounded, so a failing test never leaves a thread behind for long.
                let _ = cv
                    .wait_timeout_while(released.lock().unwrap(), Duration::from_secs(30), |r| !*r)
                    .unwrap();
                Ok(())
            }
        }

        fn started(&self) -> usize {
            self.started.load(std::sync::atomic::Ordering::SeqCst)
        }

        fn release(&self) {
            *self.release.0.lock().unwrap() = true;
            self.release.1.notify_all();
        }
    }

    #[tokio::test]
    async fn hsm_signing_bound_holds_for_cancelled_requests() {
        let slots = Arc::new(Semaphore::new(16));
        let (calls, mut starts) = HeldCalls::new();
        let waiting: Vec<_> = (0..16)
            .map(|_| {
                let (slots, call) = (slots.clone(), calls.call());
                tokio::spawn(async move { in_token(&slots, Duration::from_secs(30), call).await })
            })
            .collect();
        for _ in 0..16 {
            tokio::time::timeout(Duration::from_secs(5), starts.recv())
                .await
                .unwrap();
        }
        // The requests go away (streams reset by an h2 client, clients timing out) while
        // the token still works on their signatures.
        for w in &waiting {
            w.abort();
        }
        for w in waiting {
            assert!(w.await.unwrap_err().is_cancelled());
        }
        // Their calls keep their slots: a new request never starts a 17th call, it waits
        // for a slot and then fails as the credential being unavailable.
        let err = in_token(&slots, Duration::from_millis(200), calls.call())
            .await
            .unwrap_err();
        assert!(matches!(err, SignError::Busy(_)), "{err}");
        assert_eq!(calls.started(), 16);
        // Once the token is done with them, the slots serve again.
        calls.release();
        let done = in_token(&slots, Duration::from_secs(5), || Ok(7)).await;
        assert_eq!(done.unwrap(), 7);
        assert_eq!(calls.started(), 16);
    }

    #[tokio::test]
    async fn a_token_call_past_the_deadline_fails_the_request_and_keeps_its_slot() {
        let slots = Arc::new(Semaphore::new(1));
        let (calls, _starts) = HeldCalls::new();
        let err = in_token(&slots, Duration::from_millis(100), calls.call())
            .await
            .unwrap_err();
        assert!(matches!(err, SignError::Timeout(_)), "{err}");
        assert_eq!(slots.available_permits(), 0, "the hung call lost its slot");
        calls.release();
        assert!(
            in_token(&slots, Duration::from_secs(5), || Ok(()))
                .await
                .is_ok()
        );
        assert_eq!(calls.started(), 1);
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
