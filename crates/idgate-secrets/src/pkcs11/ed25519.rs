//! Ed25519 keys held in a token (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, `CKM_EDDSA`): generated
//! there, never extractable, every signature made by the token. They sign the audit trail's
//! checkpoints. Versions follow the token's other keys: `CKA_ID` holds the version, and a
//! new key under the same label is the next version.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};

use super::*;

/// The DER encoding of the curve's OID, 1.3.101.112 (RFC 8410), as `CKA_EC_PARAMS`.
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

impl Hsm {
    /// Generates a new Ed25519 key pair in the token as the next version of `label`: the
    /// private key sensitive and never extractable. Returns its version and public key.
    pub fn generate_ed25519(&self, label: &str) -> Result<(u32, [u8; 32]), HsmError> {
        self.with_session(|s| {
            let version = match Self::newest(s, label, ObjectClass::PRIVATE_KEY) {
                Ok((_, v)) => next_version(label, v)?,
                Err(HsmError::NoObject(_)) => 1,
                Err(e) => return Err(e),
            };
            let id = version.to_be_bytes().to_vec();
            let public = [
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(ED25519_PARAMS.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id),
            ];
            let (public, _) = s
                .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
                .map_err(ck("C_GenerateKeyPair"))?;
            Ok((version, ec_point(s, public, label)?))
        })
    }

    /// The public key of the newest Ed25519 key pair of `label` (the pair of the newest
    /// private key, which signs), with its version.
    pub fn ed25519_public_key(&self, label: &str) -> Result<([u8; 32], u32), HsmError> {
        self.with_session(|s| {
            let (key, version) = Self::newest_of(s, label, Wanted::Ed25519Private)?;
            Ok((public_of(s, key, label)?, version))
        })
    }

    /// An Ed25519 signature (RFC 8032, pure) of `data` by the newest private key of `label`,
    /// made inside the token; with the key's version and the public key that verifies it,
    /// found in the same session by the private key's `CKA_ID`, so that a key pair generated
    /// meanwhile cannot pass its public key off as the signer's.
    pub fn ed25519_sign(
        &self,
        label: &str,
        data: &[u8],
    ) -> Result<(Vec<u8>, u32, [u8; 32]), HsmError> {
        self.with_session(|s| {
            let (key, version) = Self::newest_of(s, label, Wanted::Ed25519Private)?;
            let public = public_of(s, key, label)?;
            let params = EddsaParams::new(EddsaSignatureScheme::Pure);
            let sig = s
                .sign(&Mechanism::Eddsa(params), key, data)
                .map_err(ck("C_Sign"))?;
            if sig.len() != 64 {
                return Err(HsmError::WrongKind(label.to_owned(), "an Ed25519 key"));
            }
            Ok((sig, version, public))
        })
    }
}

/// The public key paired with the private key `private`: the public key object with its
/// label and `CKA_ID`.
fn public_of(s: &Session, private: ObjectHandle, label: &str) -> Result<[u8; 32], HsmError> {
    let id = s
        .get_attributes(private, &[AttributeType::Id])
        .map_err(ck("C_GetAttributeValue"))?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id),
            _ => None,
        })
        .ok_or_else(|| HsmError::WrongKind(label.to_owned(), "an Ed25519 key pair"))?;
    let public = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.clone()),
        ])
        .map_err(ck("C_FindObjects"))?;
    let [public] = public[..] else {
        // None, or several that could each be the one: the signer is not known for sure.
        return Err(HsmError::NoVersion {
            label: label.to_owned(),
            version: version_of(&id),
        });
    };
    ec_point(s, public, label)
}

/// The 32-byte public key in a public key object's `CKA_EC_POINT`: a DER OCTET STRING
/// (PKCS#11 3.0), or the raw point (as some modules store it).
fn ec_point(s: &Session, h: ObjectHandle, label: &str) -> Result<[u8; 32], HsmError> {
    let attrs = s
        .get_attributes(h, &[AttributeType::EcPoint])
        .map_err(ck("C_GetAttributeValue"))?;
    let point = attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        })
        .ok_or_else(|| HsmError::WrongKind(label.to_owned(), "an Ed25519 key"))?;
    let raw = match point.as_slice() {
        [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
        raw if raw.len() == 32 => raw,
        _ => return Err(HsmError::WrongKind(label.to_owned(), "an Ed25519 key")),
    };
    let mut out = [0; 32];
    out.copy_from_slice(raw);
    Ok(out)
}
