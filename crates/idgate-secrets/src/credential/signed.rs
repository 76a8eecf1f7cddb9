//! The two secrets of a signing scheme: an id sent as a header (Sumsub's app token, Veriff's
//! client id) and the HMAC key that signs each request. The provider accepts them only as a
//! pair, so they are read together and a new version of either replaces both at once: a
//! request never goes out with a new id and an old key, or the other way round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;

use super::live::{LiveValue, header_value};
use crate::hmac::{SignError, TokenKey, memory_key};
use crate::{Fetched, SecretError, SecretRef};

/// Which of the two secrets could not be loaded.
pub(super) enum Half {
    Id,
    Key,
}

pub(super) struct SignedPair {
    id_source: SecretRef,
    key_source: SecretRef,
    keys: Keys,
}

enum Keys {
    /// Both in memory, one value: each rotation of either gives a new pair.
    Memory(LiveValue<Pair>),
    /// The key stays in a token.
    Token(Box<InToken>),
}

/// The key stays in a token, which holds its versions; the pair is the id with the version
/// of the key read together with it, and each signature names that version, so a key
/// rotated in the token signs only once a refresh has read it with the id.
struct InToken {
    key: TokenKey,
    pair: LiveValue<TokenPair>,
}

struct TokenPair {
    id: HeaderValue,
    id_version: String,
    key_version: u32,
}

struct Pair {
    id: HeaderValue,
    id_version: String,
    key: ring::hmac::Key,
    key_version: String,
}

/// What a request is signed with: the id header, the lowercase hex signature, and the
/// version of the pair (`<id version>/<key version>`), for logs and metrics.
pub(super) struct Signed {
    pub(super) id: HeaderValue,
    pub(super) signature: String,
    pub(super) version: Arc<str>,
}

fn pair_version(id: &str, key: &str) -> String {
    format!("{id}/{key}")
}

impl SignedPair {
    /// Reads both secrets; blocking (files, tokens).
    pub(super) fn load(
        id_source: &SecretRef,
        key_source: &SecretRef,
        overlap: Duration,
    ) -> Result<Self, (Half, SecretError)> {
        let id = id_source.fetch().map_err(|e| (Half::Id, e))?;
        let keys = match TokenKey::load(key_source).map_err(|e| (Half::Key, e))? {
            Some(key) => {
                let key_version = key.newest_version().map_err(|e| (Half::Key, e))?;
                let pair =
                    Self::token_pair(id_source, &id, key_version).map_err(|e| (Half::Id, e))?;
                let version = pair_version(&pair.id_version, &key_version.to_string());
                Keys::Token(Box::new(InToken {
                    key,
                    pair: LiveValue::new(pair, version, overlap),
                }))
            }
            None => {
                let key = key_source.fetch().map_err(|e| (Half::Key, e))?;
                let pair = Self::pair(id_source, &id, &key).map_err(|e| (Half::Id, e))?;
                let version = pair_version(&pair.id_version, &pair.key_version);
                Keys::Memory(LiveValue::new(pair, version, overlap))
            }
        };
        Ok(Self {
            id_source: id_source.clone(),
            key_source: key_source.clone(),
            keys,
        })
    }

    fn pair(id_source: &SecretRef, id: &Fetched, key: &Fetched) -> Result<Pair, SecretError> {
        Ok(Pair {
            id: header_value("", id, id_source)?,
            id_version: id.version.clone(),
            key: memory_key(key),
            key_version: key.version.clone(),
        })
    }

    fn token_pair(
        id_source: &SecretRef,
        id: &Fetched,
        key_version: u32,
    ) -> Result<TokenPair, SecretError> {
        Ok(TokenPair {
            id: header_value("", id, id_source)?,
            id_version: id.version.clone(),
            key_version,
        })
    }

    /// Signs `data` with the pair a request that started at `started` uses.
    pub(super) async fn sign(&self, started: Instant, data: Vec<u8>) -> Result<Signed, SignError> {
        match &self.keys {
            Keys::Memory(live) => {
                let pair = live.for_request(started);
                let tag = ring::hmac::sign(&pair.value.key, &data);
                Ok(Signed {
                    id: pair.value.id.clone(),
                    signature: idgate_codec::hex::encode(tag.as_ref()),
                    version: pair.version.clone(),
                })
            }
            Keys::Token(t) => {
                let pair = t.pair.for_request(started);
                let signature = t.key.sign_at(pair.value.key_version, data).await?;
                Ok(Signed {
                    id: pair.value.id.clone(),
                    signature,
                    version: pair.version.clone(),
                })
            }
        }
    }

    /// Reads both secrets again; blocking. A new version of either replaces the pair; when
    /// either cannot be read, or the new pair is unusable, the current pair stays whole.
    /// Returns whether a new pair is now in use.
    pub(super) fn refresh(&self) -> Result<bool, SecretError> {
        match &self.keys {
            Keys::Memory(live) => {
                let id = self.id_source.fetch()?;
                let key = self.key_source.fetch()?;
                let current = live.current();
                if id.version == current.value.id_version
                    && key.version == current.value.key_version
                {
                    return Ok(false);
                }
                let pair = Self::pair(&self.id_source, &id, &key)?;
                let version = pair_version(&pair.id_version, &pair.key_version);
                live.replace(pair, version);
                Ok(true)
            }
            Keys::Token(t) => {
                let id = self.id_source.fetch()?;
                let key_version = t.key.newest_version()?;
                let current = t.pair.current();
                if id.version == current.value.id_version
                    && key_version == current.value.key_version
                {
                    return Ok(false);
                }
                let pair = Self::token_pair(&self.id_source, &id, key_version)?;
                let version = pair_version(&pair.id_version, &key_version.to_string());
                t.pair.replace(pair, version);
                Ok(true)
            }
        }
    }
}
