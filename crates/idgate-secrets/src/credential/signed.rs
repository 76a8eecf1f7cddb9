//! The two secrets of a signing scheme: an id sent as a header (Sumsub's app token, Veriff's
//! client id) and the HMAC key that signs each request. The provider accepts them only as a
//! pair, so they are read together and a new version of either replaces both at once: a
//! request never goes out with a new id and an old key, or the other way round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::HeaderValue;

use super::live::{LiveValue, header_value};
use crate::hmac::{SignError, TokenKey, memory_key};
use crate::{Fetched, SecretError, SecretRef, VaultRef};

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

/// Where to read the key once the id has been read as `id`. Two fields of one Vault secret
/// (neither pinned to a version) are read from one KV version: the key at the version the id
/// was read at, since a write to the secret between the two reads would otherwise pair the
/// id of one version with the key of the next.
fn key_read_with<'a>(
    id_source: &SecretRef,
    id: &Fetched,
    key_source: &'a SecretRef,
) -> std::borrow::Cow<'a, SecretRef> {
    use std::borrow::Cow;
    match (id_source, key_source) {
        (SecretRef::Vault(i), SecretRef::Vault(k))
            if i.mount == k.mount
                && i.path == k.path
                && i.version.is_none()
                && k.version.is_none() =>
        {
            match id.version.parse() {
                Ok(version) => Cow::Owned(SecretRef::Vault(VaultRef {
                    version: Some(version),
                    ..k.clone()
                })),
                Err(_) => Cow::Borrowed(key_source),
            }
        }
        _ => Cow::Borrowed(key_source),
    }
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
                let key = key_read_with(id_source, &id, key_source)
                    .fetch()
                    .map_err(|e| (Half::Key, e))?;
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
                let key = key_read_with(&self.id_source, &id, &self.key_source).fetch()?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::vault::{VaultAuth, VaultClient, VaultSettings};

    /// The fields of version `v` of the secret `secret/veriff`.
    fn fields(v: u64) -> (String, String) {
        (
            format!("client-id-{v}"),
            format!("signing-key-of-version-{v}"),
        )
    }

    /// A Vault that answers a token lookup and KV reads of `secret/veriff`, whose newest
    /// version becomes 2 right after the first read of the newest: as if a write landed
    /// between two reads of the gateway. A read of a pinned version gets that version.
    fn fake_vault() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let newest_reads = AtomicU32::new(0);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let target = head.split(' ').nth(1).unwrap_or("");
                let body = match target.split_once('?') {
                    _ if target == "/v1/auth/token/lookup-self" => {
                        r#"{"data":{"ttl":0,"renewable":false}}"#.to_owned()
                    }
                    Some(("/v1/secret/data/veriff", q)) => {
                        let v = q.strip_prefix("version=").unwrap().parse().unwrap();
                        kv(v)
                    }
                    None if target == "/v1/secret/data/veriff" => {
                        let reads = newest_reads.fetch_add(1, Ordering::SeqCst);
                        kv(if reads == 0 { 1 } else { 2 })
                    }
                    _ => r#"{"errors":[]}"#.to_owned(),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    fn kv(v: u64) -> String {
        let (id, key) = fields(v);
        format!(
            r#"{{"data":{{"data":{{"client_id":"{id}","signing_key":"{key}"}},"metadata":{{"version":{v},"deletion_time":"","destroyed":false}}}}}}"#
        )
    }

    fn expected(v: u64, data: &[u8]) -> (String, String, String) {
        let (id, key) = fields(v);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
        let tag = ring::hmac::sign(&key, data);
        (
            id,
            idgate_codec::hex::encode(tag.as_ref()),
            format!("{v}/{v}"),
        )
    }

    #[test]
    fn a_pair_in_one_vault_secret_is_read_from_one_kv_version() {
        let port = fake_vault();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "vault-token").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        crate::vault::install(
            VaultClient::new(VaultSettings {
                address: format!("http://127.0.0.1:{port}").parse().unwrap(),
                ca: None,
                namespace: None,
                timeout: Duration::from_secs(5),
                auth: VaultAuth::Token(SecretRef::File(token)),
            })
            .unwrap(),
        );
        let base = std::path::Path::new("/");
        let id = SecretRef::parse("vault:secret/veriff#client_id", base).unwrap();
        let key = SecretRef::parse("vault:secret/veriff#signing_key", base).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let signed = |pair: &SignedPair| {
            let s = rt
                .block_on(pair.sign(Instant::now(), b"body".to_vec()))
                .unwrap();
            (
                s.id.to_str().unwrap().to_owned(),
                s.signature,
                s.version.to_string(),
            )
        };

        let Ok(pair) = SignedPair::load(&id, &key, Duration::ZERO) else {
            panic!("the pair was not loaded");
        };
        assert_eq!(signed(&pair), expected(1, b"body"));
        // The next version is taken whole too.
        assert!(pair.refresh().unwrap());
        assert_eq!(signed(&pair), expected(2, b"body"));
    }
}
