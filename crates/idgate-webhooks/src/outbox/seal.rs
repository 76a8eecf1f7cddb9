//! The outbox at rest: each event body sealed with AES-256-GCM under the webhook's outbox
//! key, a fresh random 96-bit nonce per message, and a clear header that names the key and
//! binds the message to its queue and its event.
//!
//! A sealed message is:
//!
//! ```text
//! "IGO1" | header length (u16, big endian) | header (JSON) | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! The magic and the header are the associated data: a header changed, or a sealed body
//! moved under another header (another queue, another event), fails to open. The header
//! holds no personal data — the webhook, the subscriber, the queue, the key id, the event's
//! idempotency key and type, when it was received — so that the CLI can list messages
//! without the key.
//!
//! Keys are 32 bytes, read from a secret reference as raw bytes, 64 hex digits or base64.
//! A key's id is the first 8 bytes of HMAC-SHA256(key, "idgate outbox key id"), in hex:
//! stable across processes and restarts, and no help in guessing the key. The first key
//! of the list seals; every key opens what it sealed, so a rotation keeps the old key in
//! `outbox_previous_keys` until the messages sealed with it are gone.

use std::fmt;

use base64::Engine as _;
use idgate_secrets::{ExposeSecret, SecretError, SecretRef};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"IGO1";
const TAG_LEN: usize = 16;
/// No header is near this: names are short, the event key and type are bounded.
const MAX_HEADER: usize = 4096;

/// What a sealed message says in clear (and authenticates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The webhook's name.
    pub webhook: String,
    /// The subscriber's name.
    pub subscriber: String,
    /// The subscriber's outbox queue: a copy kept after delivery still names it.
    pub queue: String,
    /// The id of the key that sealed the body.
    pub key: String,
    /// The event's idempotency key, sent to the subscriber as `idgate-event-id`.
    pub event: String,
    /// The provider's event type, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// When the gateway received the event (Unix seconds).
    pub received_at: u64,
}

/// Why the outbox key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(
        "{reference}: an outbox key is 32 bytes (raw, 64 hex digits or base64); this one is not (make one with: openssl rand -hex 32)"
    )]
    Length { reference: String },
    #[error("no outbox key is configured")]
    None,
}

/// Why a message could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the system random source failed")]
    Random,
    #[error("the header is too long ({0} bytes)")]
    HeaderTooLong(usize),
    #[error("the body could not be encrypted")]
    Encrypt,
}

/// Why a sealed message could not be opened. Never says anything of its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed outbox message")]
    Malformed,
    #[error("sealed with key {0}, which is not configured (add it to outbox_previous_keys)")]
    UnknownKey(String),
    #[error("sealed for queue {found}, read from {expected}")]
    WrongQueue { expected: String, found: String },
    #[error("the message does not authenticate under its key (altered, or moved)")]
    Forged,
}

/// One AES-256-GCM key with its id.
struct Key {
    id: String,
    key: LessSafeKey,
}

/// The webhook's outbox keys: the first seals, each opens what it sealed.
pub struct OutboxKeys {
    keys: Vec<Key>,
    rng: SystemRandom,
}

impl fmt::Debug for OutboxKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxKeys")
            .field("ids", &self.keys.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

/// 32 key bytes from what a reference holds: raw, hex or base64 (surrounding whitespace
/// ignored for the text forms). The bytes, and a decoding's buffer, are zeroed when dropped.
fn key_bytes(value: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    if let Ok(raw) = <[u8; 32]>::try_from(value) {
        return Some(Zeroizing::new(raw));
    }
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Some(k) = idgate_codec::hex::decode_array::<32>(text) {
        return Some(Zeroizing::new(k));
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
    );
    <[u8; 32]>::try_from(decoded.as_slice())
        .ok()
        .map(Zeroizing::new)
}

fn key_id(key: &[u8; 32]) -> String {
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        b"idgate outbox key id",
    );
    idgate_codec::hex::encode(&mac.as_ref()[..8])
}

impl OutboxKeys {
    /// Reads every key; blocking (files, tokens, Vault). A `pkcs11:` reference is a value
    /// wrapped by a key in the token, unwrapped there once, here.
    pub fn load(references: &[SecretRef]) -> Result<Self, KeyError> {
        let mut raw = Zeroizing::new(Vec::with_capacity(references.len()));
        for r in references {
            let fetched = r.fetch()?;
            let key = key_bytes(fetched.value.expose_secret()).ok_or_else(|| KeyError::Length {
                reference: r.to_string(),
            })?;
            raw.push(*key);
        }
        Self::from_keys(&raw)
    }

    /// The keys themselves, the sealing one first.
    pub fn from_keys(keys: &[[u8; 32]]) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::None);
        }
        let keys = keys
            .iter()
            .filter_map(|k| {
                let unbound = UnboundKey::new(&AES_256_GCM, k).ok()?;
                Some(Key {
                    id: key_id(k),
                    key: LessSafeKey::new(unbound),
                })
            })
            .collect();
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> &str {
        self.keys.first().map_or("", |k| k.id.as_str())
    }

    /// Seals `body` under `header`, whose `key` is set here.
    pub fn seal(&self, mut header: Header, body: &[u8]) -> Result<Vec<u8>, SealError> {
        let key = self.keys.first().ok_or(SealError::Encrypt)?;
        header.key = key.id.clone();
        let header = serde_json::to_vec(&header).map_err(|_| SealError::Encrypt)?;
        let header_len =
            u16::try_from(header.len()).map_err(|_| SealError::HeaderTooLong(header.len()))?;
        if header.len() > MAX_HEADER {
            return Err(SealError::HeaderTooLong(header.len()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(6 + header.len() + NONCE_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        let aad_end = 6 + header.len();
        let mut sealed = body.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..aad_end]),
                &mut sealed,
            )
            .map_err(|_| SealError::Encrypt)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a message read from the outbox `queue` (the subscriber's queue, also for a copy
    /// kept after delivery).
    pub fn open(&self, queue: &str, sealed: &[u8]) -> Result<(Header, Vec<u8>), OpenError> {
        let header = read_header(sealed)?;
        if header.queue != queue {
            return Err(OpenError::WrongQueue {
                expected: queue.to_owned(),
                found: header.queue,
            });
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == header.key)
            .ok_or_else(|| OpenError::UnknownKey(header.key.clone()))?;
        let aad_end = 6 + header_len(sealed)?;
        let rest = &sealed[aad_end..];
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce).map_err(|_| OpenError::Malformed)?;
        let mut buf = ciphertext.to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&sealed[..aad_end]),
                &mut buf,
            )
            .map_err(|_| OpenError::Forged)?;
        let len = plain.len();
        buf.truncate(len);
        Ok((header, buf))
    }
}

fn header_len(sealed: &[u8]) -> Result<usize, OpenError> {
    match sealed {
        [m0, m1, m2, m3, hi, lo, ..] if [*m0, *m1, *m2, *m3] == *MAGIC => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            if len > MAX_HEADER || sealed.len() < 6 + len {
                return Err(OpenError::Malformed);
            }
            Ok(len)
        }
        _ => Err(OpenError::Malformed),
    }
}

/// The clear header of a sealed message, without opening it (for listing). Unauthenticated
/// until the message is opened.
pub fn read_header(sealed: &[u8]) -> Result<Header, OpenError> {
    let len = header_len(sealed)?;
    serde_json::from_slice(&sealed[6..6 + len]).map_err(|_| OpenError::Malformed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn header(queue: &str, event: &str) -> Header {
        Header {
            webhook: "didit".into(),
            subscriber: "kyc".into(),
            queue: queue.into(),
            key: String::new(),
            event: event.into(),
            event_type: Some("status.updated".into()),
            received_at: 1_800_000_000,
        }
    }

    #[test]
    fn a_sealed_body_opens_only_where_it_was_sealed_for() {
        let keys = OutboxKeys::from_keys(&[[7u8; 32]]).unwrap();
        let body = br#"{"session_id":"s1","full_name":"Ada Lovelace"}"#;
        let sealed = keys
            .seal(header("webhook.didit.kyc", "evt_1"), body)
            .unwrap();
        assert!(
            !sealed.windows(12).any(|w| w == b"Ada Lovelace"),
            "the body is not stored in clear"
        );
        let (h, opened) = keys.open("webhook.didit.kyc", &sealed).unwrap();
        assert_eq!(opened, body);
        assert_eq!(h.key, keys.sealing_key_id());
        assert_eq!(read_header(&sealed).unwrap(), h);

        // Another queue: refused before decrypting.
        assert!(matches!(
            keys.open("webhook.didit.other", &sealed),
            Err(OpenError::WrongQueue { .. })
        ));
        // The header rewritten to name the other queue (or event): it no longer authenticates.
        let at = sealed.windows(5).position(|w| w == b"evt_1").unwrap();
        let mut moved = sealed.clone();
        moved[at + 4] = b'2';
        assert_eq!(
            keys.open("webhook.didit.kyc", &moved),
            Err(OpenError::Forged)
        );
        // A flipped ciphertext bit.
        let mut flipped = sealed.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert_eq!(
            keys.open("webhook.didit.kyc", &flipped),
            Err(OpenError::Forged)
        );
        assert_eq!(
            keys.open("webhook.didit.kyc", b"IGO1"),
            Err(OpenError::Malformed)
        );
        assert_eq!(keys.open("q", b"plain"), Err(OpenError::Malformed));
    }

    #[test]
    fn each_message_gets_its_own_nonce() {
        let keys = OutboxKeys::from_keys(&[[1u8; 32]]).unwrap();
        let a = keys.seal(header("q", "e"), b"same").unwrap();
        let b = keys.seal(header("q", "e"), b"same").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn a_rotated_key_still_opens_what_it_sealed() {
        let old = OutboxKeys::from_keys(&[[1u8; 32]]).unwrap();
        let sealed = old.seal(header("q", "e"), b"body").unwrap();
        let rotated = OutboxKeys::from_keys(&[[2u8; 32], [1u8; 32]]).unwrap();
        assert_ne!(rotated.sealing_key_id(), old.sealing_key_id());
        assert_eq!(rotated.open("q", &sealed).unwrap().1, b"body");
        let resealed = rotated.seal(header("q", "e"), b"body").unwrap();
        assert_eq!(
            read_header(&resealed).unwrap().key,
            rotated.sealing_key_id()
        );
        let without_old = OutboxKeys::from_keys(&[[2u8; 32]]).unwrap();
        assert_eq!(
            without_old.open("q", &sealed),
            Err(OpenError::UnknownKey(old.sealing_key_id().to_owned()))
        );
    }

    #[test]
    fn keys_are_read_raw_hex_or_base64() {
        let raw = [9u8; 32];
        let hex = idgate_codec::hex::encode(&raw);
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        assert_eq!(key_bytes(&raw).as_deref(), Some(&raw));
        assert_eq!(
            key_bytes(format!("{hex}\n").as_bytes()).as_deref(),
            Some(&raw)
        );
        assert_eq!(key_bytes(b64.as_bytes()).as_deref(), Some(&raw));
        assert_eq!(key_bytes(b"too short"), None);
        assert_eq!(key_id(&raw), key_id(&raw));
        assert_eq!(key_id(&raw).len(), 16);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.key");
        std::fs::write(&path, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let loaded = OutboxKeys::load(&[SecretRef::File(path.clone())]).unwrap();
        assert_eq!(loaded.sealing_key_id(), key_id(&raw));
        std::fs::write(&path, "short").unwrap();
        let e = OutboxKeys::load(&[SecretRef::File(path)]).unwrap_err();
        assert!(e.to_string().contains("32 bytes"), "{e}");
        assert!(!format!("{loaded:?}").contains(&hex));
    }
}
