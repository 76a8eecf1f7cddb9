//! The masking profiles of one configuration, ready for the response guard
//! (`checks/masking.rs`): each profile's rules, its pseudonym key and what it does with
//! answers that are not JSON.
//!
//! A pseudonym key is loaded when the snapshot is built (start-up and every reload), like
//! upstream credentials: a `pkcs11:` HMAC key stays in the token, which computes every tag
//! (the newest version of the label signs); any other reference is read into memory and
//! read again every `refresh_interval`, a new version serving the answers of requests that
//! start after it. A new key means new pseudonyms: downstream systems joining on them see
//! the change at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate_config::{MIN_PSEUDONYM_KEY_BYTES, MaskingConfig, NonJson};
use idgate_mask::{Profile, Pseudonymizer};
use idgate_secrets::hmac::SignError;
use idgate_secrets::{HmacKey, SecretError};

/// How long a request that started before a key rotation may still use the previous key.
const KEY_OVERLAP: Duration = Duration::from_secs(30);

/// One configuration's masking profiles, by their index in the configuration.
#[derive(Debug, Default)]
pub struct MaskingProfiles {
    profiles: Vec<LoadedProfile>,
}

/// A profile with its key loaded.
#[derive(Debug)]
pub struct LoadedProfile {
    pub name: Arc<str>,
    pub profile: Profile,
    /// The key of `pseudonymize` rules, when the profile has any.
    pub key: Option<Arc<HmacKey>>,
    pub non_json: NonJson,
    refresh_interval: Duration,
}

/// A pseudonym key that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("masking profile {profile}: pseudonym key: {source}")]
pub struct MaskingKeyError {
    pub profile: String,
    #[source]
    pub source: SecretError,
}

impl MaskingKeyError {
    /// The key path of the setting at fault.
    pub fn key(&self) -> String {
        format!("masking.profiles.{}.pseudonym_key", self.profile)
    }
}

impl MaskingProfiles {
    /// Loads every profile's key. Blocking (files, tokens, Vault).
    pub fn load(config: &MaskingConfig) -> Result<Self, Vec<MaskingKeyError>> {
        let mut errors = Vec::new();
        let mut profiles = Vec::with_capacity(config.profiles.len());
        for p in &config.profiles {
            let key = match &p.pseudonym_key {
                Some(secret) if p.profile.pseudonymizes() => {
                    match HmacKey::load_min(secret, KEY_OVERLAP, MIN_PSEUDONYM_KEY_BYTES) {
                        Ok(k) => Some(Arc::new(k)),
                        Err(source) => {
                            errors.push(MaskingKeyError {
                                profile: p.name.clone(),
                                source,
                            });
                            None
                        }
                    }
                }
                _ => None,
            };
            profiles.push(LoadedProfile {
                name: p.name.as_str().into(),
                profile: p.profile.clone(),
                key,
                non_json: p.non_json.clone(),
                refresh_interval: p.refresh_interval,
            });
        }
        if errors.is_empty() {
            Ok(Self { profiles })
        } else {
            Err(errors)
        }
    }

    /// The profile at `index` in the configuration.
    pub fn get(&self, index: usize) -> Option<&LoadedProfile> {
        self.profiles.get(index)
    }

    /// Starts reading each in-memory key's source again every `refresh_interval`. The
    /// tasks end by themselves once the snapshot holding the keys is gone.
    pub fn start_background(&self) {
        for p in &self.profiles {
            if let Some(key) = p.key.as_ref().filter(|k| !k.in_token()) {
                spawn_refresh(key, p.refresh_interval, p.name.clone());
            }
        }
    }
}

fn spawn_refresh(key: &Arc<HmacKey>, every: Duration, profile: Arc<str>) {
    let weak = Arc::downgrade(key);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(key) = weak.upgrade() else { return };
            match tokio::task::spawn_blocking(move || key.refresh()).await {
                Ok(Ok(true)) => tracing::info!(
                    profile = &*profile,
                    "pseudonym key rotated: answers are pseudonymized with the new version"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    profile = &*profile,
                    error = %e,
                    "cannot refresh the pseudonym key; the current version stays in use"
                ),
                Err(e) => tracing::error!(error = %e, "pseudonym key refresh task failed"),
            }
        }
    });
}

/// Why pseudonyms could not be made for an answer.
#[derive(Debug, thiserror::Error)]
pub enum PseudonymError {
    #[error("the profile has no pseudonym key")]
    NoKey,
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// The pseudonyms of one answer: its profile's key as of when the request started.
pub struct KeyPseudonymizer<'a> {
    pub key: Option<&'a HmacKey>,
    pub started: Instant,
}

impl Pseudonymizer for KeyPseudonymizer<'_> {
    type Error = PseudonymError;

    async fn macs(&self, inputs: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, PseudonymError> {
        let key = self.key.ok_or(PseudonymError::NoKey)?;
        Ok(key.sign_all(self.started, inputs).await?.0)
    }
}
