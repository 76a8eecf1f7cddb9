//! HMAC-SHA256 keys for request signatures: held in memory (and rotated), or kept in an HSM
//! that signs without letting them out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SignError;
use super::live::LiveValue;
use crate::pkcs11::{Hsm, ObjectKind};
use crate::{ExposeSecret, Fetched, SecretError, SecretRef};

/// Signatures in flight per HSM-held key: as many as the token's session pool keeps idle.
const HSM_CONCURRENCY: usize = 16;

/// An HMAC-SHA256 key: in memory (from env, file or a wrapped HSM value) or in the HSM.
pub(super) enum HmacKey {
    Memory(LiveValue<ring::hmac::Key>),
    Hsm {
        hsm: Arc<Hsm>,
        label: String,
        /// Bounds the signatures in flight, so a burst queues here instead of opening
        /// more token sessions than the pool keeps.
        in_flight: Arc<tokio::sync::Semaphore>,
    },
}

impl HmacKey {
    pub(super) fn load(secret: &SecretRef, overlap: Duration) -> Result<Self, SecretError> {
        if let SecretRef::Pkcs11(uri) = secret {
            let hsm = Hsm::shared(uri).map_err(|e| SecretError::Hsm(secret.to_string(), e))?;
            if hsm
                .kind_of(&uri.object)
                .map_err(|e| SecretError::Hsm(secret.to_string(), e))?
                == ObjectKind::HmacKey
            {
                return Ok(Self::Hsm {
                    hsm,
                    label: uri.object.clone(),
                    in_flight: Arc::new(tokio::sync::Semaphore::new(HSM_CONCURRENCY)),
                });
            }
        }
        let f = secret.fetch()?;
        Ok(Self::Memory(LiveValue::new(
            hmac_key(&f),
            f.version,
            overlap,
        )))
    }

    /// Signs `data`; returns the lowercase hex MAC and the key version used.
    pub(super) async fn sign(
        &self,
        started: Instant,
        data: Vec<u8>,
    ) -> Result<(String, Arc<str>), SignError> {
        match self {
            Self::Memory(live) => {
                let key = live.for_request(started);
                let tag = ring::hmac::sign(&key.value, &data);
                Ok((idgate_codec::hex::encode(tag.as_ref()), key.version.clone()))
            }
            Self::Hsm {
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
}

pub(super) fn hmac_key(f: &Fetched) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, f.value.expose_secret())
}
