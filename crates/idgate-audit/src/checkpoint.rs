//! Signed checkpoints. Every N entries or T seconds, and whenever a file is closed, the
//! writer adds an entry that signs the chain's head with Ed25519:
//!
//! ```text
//! "checkpoint":{"head_seq":41,"head":"<hash of entry 41>","time":…,"close":"rotate",
//!               "alg":"Ed25519","kid":"<key id>","sig":"<base64>"}
//! ```
//!
//! The signature covers `idgate-audit-checkpoint-v1`, the head's sequence number and hash,
//! the time and the close mark, one per line. Whoever rewrites records (and every hash after
//! them) cannot make the next checkpoint verify without the signing key; the checkpoint is
//! itself an entry of the chain, so removing or moving one breaks the chain too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::chain::Digest;
use crate::json;
use crate::keys::{KeyError, PublicKey, SigningKey};

/// Why a checkpoint was written beyond its schedule: it closes its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The file reached its size or age; the chain goes on in the next file.
    Rotate,
    /// The gateway stopped cleanly; the next start continues the chain in a new file.
    Shutdown,
}

impl Close {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rotate => "rotate",
            Self::Shutdown => "shutdown",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "rotate" => Some(Self::Rotate),
            "shutdown" => Some(Self::Shutdown),
            _ => None,
        }
    }
}

/// The bytes a checkpoint's signature covers.
fn message(head_seq: u64, head: &Digest, time_ms: u64, close: Option<Close>) -> Vec<u8> {
    format!(
        "idgate-audit-checkpoint-v1\n{head_seq}\n{head}\n{time_ms}\n{}\n",
        close.map_or("-", Close::as_str)
    )
    .into_bytes()
}

/// The members of a checkpoint entry over `head` (entry `head_seq`), signed with `key`.
pub(crate) fn members(
    key: &SigningKey,
    head_seq: u64,
    head: &Digest,
    time_ms: u64,
    close: Option<Close>,
) -> Result<Vec<u8>, KeyError> {
    let (sig, public) = key.sign(&message(head_seq, head, time_ms, close))?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"\"checkpoint\":{\"head_seq\":");
    json::num(&mut out, head_seq);
    out.extend_from_slice(b",\"head\":\"");
    out.extend_from_slice(head.hex().as_bytes());
    out.extend_from_slice(b"\",\"time\":");
    json::num(&mut out, time_ms);
    json::key(&mut out, "time_dt");
    json::datetime(&mut out, time_ms);
    if let Some(c) = close {
        json::key(&mut out, "close");
        json::str(&mut out, c.as_str());
    }
    out.extend_from_slice(b",\"alg\":\"Ed25519\",\"kid\":\"");
    out.extend_from_slice(public.kid().as_bytes());
    out.extend_from_slice(b"\",\"sig\":\"");
    out.extend_from_slice(STANDARD.encode(sig).as_bytes());
    out.extend_from_slice(b"\"}");
    Ok(out)
}

/// A checkpoint as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub head_seq: u64,
    pub head: Digest,
    pub time_ms: u64,
    pub close: Option<Close>,
    pub kid: String,
    sig: Vec<u8>,
}

/// Why a checkpoint does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("its checkpoint member is missing or malformed")]
    Malformed,
    #[error("it signs entry {claimed} as the head, but the entry before it is {actual}")]
    WrongHead { claimed: u64, actual: u64 },
    #[error("the head hash it signs is not the hash of the entry before it")]
    HeadHash,
    #[error("it is signed by key {0}, which is not among the keys given to verify with")]
    UnknownKey(String),
    #[error(
        "its signature does not verify with key {0}: the checkpoint was forged, or the entries it covers were rewritten"
    )]
    BadSignature(String),
}

impl Checkpoint {
    /// Reads the `checkpoint` member of an entry.
    pub fn from_entry(value: &serde_json::Value) -> Result<Self, CheckpointError> {
        let c = value.get("checkpoint").ok_or(CheckpointError::Malformed)?;
        let str_of = |k| c.get(k).and_then(serde_json::Value::as_str);
        let close = match c.get("close") {
            None => None,
            Some(v) => Some(
                v.as_str()
                    .and_then(Close::parse)
                    .ok_or(CheckpointError::Malformed)?,
            ),
        };
        if str_of("alg") != Some("Ed25519") {
            return Err(CheckpointError::Malformed);
        }
        Ok(Self {
            head_seq: c
                .get("head_seq")
                .and_then(serde_json::Value::as_u64)
                .ok_or(CheckpointError::Malformed)?,
            head: str_of("head")
                .and_then(Digest::parse)
                .ok_or(CheckpointError::Malformed)?,
            time_ms: c
                .get("time")
                .and_then(serde_json::Value::as_u64)
                .ok_or(CheckpointError::Malformed)?,
            close,
            kid: str_of("kid").ok_or(CheckpointError::Malformed)?.to_owned(),
            sig: str_of("sig")
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or(CheckpointError::Malformed)?,
        })
    }

    /// Checks the checkpoint of entry `seq` (whose `prev` is `prev`) with `keys`.
    pub fn verify(
        &self,
        seq: u64,
        prev: &Digest,
        keys: &[PublicKey],
    ) -> Result<(), CheckpointError> {
        if self.head_seq.checked_add(1) != Some(seq) {
            return Err(CheckpointError::WrongHead {
                claimed: self.head_seq,
                actual: seq.saturating_sub(1),
            });
        }
        if self.head != *prev {
            return Err(CheckpointError::HeadHash);
        }
        let key = keys
            .iter()
            .find(|k| k.kid() == self.kid)
            .ok_or_else(|| CheckpointError::UnknownKey(self.kid.clone()))?;
        let msg = message(self.head_seq, &self.head, self.time_ms, self.close);
        if key.verify(&msg, &self.sig) {
            Ok(())
        } else {
            Err(CheckpointError::BadSignature(self.kid.clone()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn key() -> SigningKey {
        let dir = tempfile::tempdir().unwrap();
        let (pem, _) = crate::keys::generate_signing_key().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, pem.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        SigningKey::load(&idgate_secrets::SecretRef::File(path)).unwrap()
    }

    fn read(members: &[u8]) -> Checkpoint {
        let mut obj = b"{".to_vec();
        obj.extend_from_slice(members);
        obj.push(b'}');
        Checkpoint::from_entry(&serde_json::from_slice(&obj).unwrap()).unwrap()
    }

    #[test]
    fn a_checkpoint_verifies_only_over_its_head_with_its_key() {
        let k = key();
        let head = Digest::of(b"entry 9");
        let c = read(&members(&k, 9, &head, 1000, Some(Close::Rotate)).unwrap());
        assert_eq!(c.close, Some(Close::Rotate));
        let keys = [k.public()];
        c.verify(10, &head, &keys).unwrap();
        assert!(matches!(
            c.verify(11, &head, &keys),
            Err(CheckpointError::WrongHead { .. })
        ));
        assert_eq!(
            c.verify(10, &Digest::of(b"x"), &keys),
            Err(CheckpointError::HeadHash)
        );
        let other = key();
        assert!(matches!(
            c.verify(10, &head, &[other.public()]),
            Err(CheckpointError::UnknownKey(_))
        ));
        // Another key's signature under this key's id: forged.
        let forged = read(&members(&other, 9, &head, 1000, Some(Close::Rotate)).unwrap());
        let forged = Checkpoint {
            kid: c.kid.clone(),
            ..forged
        };
        assert!(matches!(
            forged.verify(10, &head, &keys),
            Err(CheckpointError::BadSignature(_))
        ));
        // The close mark is signed: a rotation cannot be turned into a shutdown.
        let turned = Checkpoint {
            close: Some(Close::Shutdown),
            ..c
        };
        assert!(matches!(
            turned.verify(10, &head, &keys),
            Err(CheckpointError::BadSignature(_))
        ));
    }
}
