//! What is done with the objects of a token: signing, unwrapping, importing new versions,
//! pruning old ones and listing them.

use super::*;

impl Hsm {
    /// HMAC-SHA256 computed inside the token with the newest key of this label, which must
    /// have at least `min_len` bytes ([`Hsm::check_hmac_key`]; 0 for no minimum).
    pub fn hmac_sha256(
        &self,
        label: &str,
        data: &[u8],
        min_len: usize,
    ) -> Result<(Vec<u8>, u32), HsmError> {
        self.with_session(|s| {
            let (key, version) = Self::newest_hmac_key(s, label, min_len)?;
            let mac = s
                .sign(&Mechanism::Sha256Hmac, key, data)
                .map_err(ck("C_Sign"))?;
            Ok((mac, version))
        })
    }

    /// HMAC-SHA256 computed inside the token with version `version` of this label's key, held
    /// to `min_len` bytes as [`Hsm::hmac_sha256`] holds the newest: for a key whose version
    /// must stay paired with another secret's, the version the caller read with it rather than
    /// whichever is newest now.
    pub fn hmac_sha256_at(
        &self,
        label: &str,
        version: u32,
        data: &[u8],
        min_len: usize,
    ) -> Result<Vec<u8>, HsmError> {
        self.with_session(|s| {
            let key = Self::hmac_key_at(s, label, version, min_len)?;
            s.sign(&Mechanism::Sha256Hmac, key, data)
                .map_err(ck("C_Sign"))
        })
    }

    /// The newest version of this label's HMAC key, held to `min_len` bytes.
    pub fn hmac_key_version(&self, label: &str, min_len: usize) -> Result<u32, HsmError> {
        self.with_session(|s| Self::newest_hmac_key(s, label, min_len).map(|(_, v)| v))
    }

    /// HMAC-SHA256 of each of `data` with the newest key of this label, in one session: the
    /// key is looked up (and held to `min_len`, as [`Hsm::hmac_sha256`] does) once, and every
    /// tag is made with the same version. Each tag is a `C_Sign` of its own; none is started
    /// once `until` has passed (the caller no longer waits for them), so the session, and
    /// the signing slot of whoever holds it, is given back within one `C_Sign` of it.
    pub fn hmac_sha256_all(
        &self,
        label: &str,
        data: &[Vec<u8>],
        until: Instant,
        min_len: usize,
    ) -> Result<(Vec<Vec<u8>>, u32), HsmError> {
        self.with_session(|s| {
            let (key, version) = Self::newest_hmac_key(s, label, min_len)?;
            let macs = each_until(data, until, |d| {
                s.sign(&Mechanism::Sha256Hmac, key, d).map_err(ck("C_Sign"))
            })?;
            Ok((macs, version))
        })
    }

    /// Decrypts the newest wrapped value of this label inside the token.
    pub fn unwrap_value(
        &self,
        label: &str,
        wrap_key: &str,
    ) -> Result<(SecretBox<[u8]>, u32), HsmError> {
        self.with_session(|s| {
            let (obj, version) = Self::newest_of(s, label, Wanted::WrappedValue)?;
            let attrs = s
                .get_attributes(obj, &[AttributeType::Value])
                .map_err(ck("C_GetAttributeValue"))?;
            let blob = attrs
                .into_iter()
                .find_map(|a| {
                    if let Attribute::Value(v) = a {
                        Some(v)
                    } else {
                        None
                    }
                })
                .ok_or_else(|| HsmError::BadWrapped(label.to_owned()))?;
            let rest = blob
                .strip_prefix(WRAP_MAGIC)
                .filter(|r| r.len() > GCM_IV_LEN + 16)
                .ok_or_else(|| HsmError::BadWrapped(label.to_owned()))?;
            let (iv, ct) = rest.split_at(GCM_IV_LEN);
            let mut iv = iv.to_vec();
            let aad = wrap_aad(label, version);
            let (key, _) = Self::newest_of(s, wrap_key, Wanted::WrapKey)?;
            let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(ck("GcmParams"))?;
            let plain = Zeroizing::new(
                s.decrypt(&Mechanism::AesGcm(params), key, ct)
                    .map_err(|_| HsmError::BadWrapped(label.to_owned()))?,
            );
            Ok((SecretBox::new(plain.as_slice().into()), version))
        })
    }

    /// Stores `value` wrapped under the token's AES key (created non-extractable if missing),
    /// as the next version of `label`. Returns the version.
    pub fn import_wrapped(
        &self,
        label: &str,
        wrap_key: &str,
        value: &[u8],
    ) -> Result<u32, HsmError> {
        self.with_session(|s| {
            let key = match Self::newest_of(s, wrap_key, Wanted::WrapKey) {
                Ok((k, _)) => k,
                Err(HsmError::NoObject(_)) => s
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Extractable(false),
                            Attribute::Encrypt(true),
                            Attribute::Decrypt(true),
                            Attribute::ValueLen(32.into()),
                            Attribute::Label(wrap_key.as_bytes().to_vec()),
                            Attribute::Id(1u32.to_be_bytes().to_vec()),
                        ],
                    )
                    .map_err(ck("C_GenerateKey"))?,
                Err(e) => return Err(e),
            };
            let version = match Self::newest(s, label, ObjectClass::DATA) {
                Ok((_, v)) => next_version(label, v)?,
                Err(HsmError::NoObject(_)) => 1,
                Err(e) => return Err(e),
            };
            let mut iv = s
                .generate_random_vec(GCM_IV_LEN as u32)
                .map_err(ck("C_GenerateRandom"))?;
            let aad = wrap_aad(label, version);
            let mut blob = WRAP_MAGIC.to_vec();
            blob.extend_from_slice(&iv);
            let params = GcmParams::new(&mut iv, &aad, 128.into()).map_err(ck("GcmParams"))?;
            let ct = s
                .encrypt(&Mechanism::AesGcm(params), key, value)
                .map_err(ck("C_Encrypt"))?;
            blob.extend_from_slice(&ct);
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Application(format!("idgate/{version}").into_bytes()),
                Attribute::Value(blob),
            ])
            .map_err(ck("C_CreateObject"))?;
            Ok(version)
        })
    }

    /// Stores an HMAC key as a sensitive, non-extractable generic secret, as the next version
    /// of `label`. Returns the version.
    pub fn import_hmac_key(&self, label: &str, key: &[u8]) -> Result<u32, HsmError> {
        self.with_session(|s| {
            let version = match Self::newest(s, label, ObjectClass::SECRET_KEY) {
                Ok((_, v)) => next_version(label, v)?,
                Err(HsmError::NoObject(_)) => 1,
                Err(e) => return Err(e),
            };
            s.create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(version.to_be_bytes().to_vec()),
                Attribute::Value(key.to_vec()),
            ])
            .map_err(ck("C_CreateObject"))?;
            Ok(version)
        })
    }

    /// Deletes every version of `label` older than `keep_from`.
    pub fn prune(&self, label: &str, keep_from: u32) -> Result<usize, HsmError> {
        self.with_session(|s| {
            let mut n = 0;
            for class in [ObjectClass::DATA, ObjectClass::SECRET_KEY] {
                let handles = s
                    .find_objects(&[
                        Attribute::Class(class),
                        Attribute::Label(label.as_bytes().to_vec()),
                    ])
                    .map_err(ck("C_FindObjects"))?;
                for h in handles {
                    let v = object_version(s, h, class)?;
                    if v < keep_from {
                        s.destroy_object(h).map_err(ck("C_DestroyObject"))?;
                        n += 1;
                    }
                }
            }
            Ok(n)
        })
    }

    /// Labels, kinds, versions and protection flags of the token's objects — never values.
    pub fn list(&self) -> Result<Vec<ObjectInfo>, HsmError> {
        self.with_session(|s| {
            let mut out = Vec::new();
            for h in s.find_objects(&[]).map_err(ck("C_FindObjects"))? {
                let attrs = s
                    .get_attributes(
                        h,
                        &[
                            AttributeType::Class,
                            AttributeType::Label,
                            AttributeType::Id,
                            AttributeType::Application,
                        ],
                    )
                    .map_err(ck("C_GetAttributeValue"))?;
                let mut info = ObjectInfo {
                    label: String::new(),
                    kind: "other",
                    version: 0,
                    extractable: None,
                    sensitive: None,
                };
                for a in attrs {
                    match a {
                        Attribute::Label(l) => {
                            info.label = String::from_utf8_lossy(&l).into_owned()
                        }
                        Attribute::Id(id) => info.version = version_of(&id),
                        Attribute::Application(app) => info.version = data_version(&app),
                        Attribute::Class(c) if c == ObjectClass::DATA => {
                            info.kind = "wrapped-value"
                        }
                        Attribute::Class(c) if c == ObjectClass::SECRET_KEY => {
                            info.kind = "secret-key"
                        }
                        Attribute::Class(c) if c == ObjectClass::PRIVATE_KEY => {
                            info.kind = "private-key"
                        }
                        Attribute::Class(c) if c == ObjectClass::PUBLIC_KEY => {
                            info.kind = "public-key"
                        }
                        _ => {}
                    }
                }
                if info.kind == "secret-key" {
                    let flags = s
                        .get_attributes(
                            h,
                            &[
                                AttributeType::Extractable,
                                AttributeType::Sensitive,
                                AttributeType::KeyType,
                            ],
                        )
                        .map_err(ck("C_GetAttributeValue"))?;
                    for a in flags {
                        match a {
                            Attribute::Extractable(b) => info.extractable = Some(b),
                            Attribute::Sensitive(b) => info.sensitive = Some(b),
                            Attribute::KeyType(k) if k == KeyType::AES => {
                                info.kind = "aes-wrap-key"
                            }
                            Attribute::KeyType(k) if k == KeyType::GENERIC_SECRET => {
                                info.kind = "hmac-key"
                            }
                            _ => {}
                        }
                    }
                }
                out.push(info);
            }
            out.sort_by(|a, b| (a.label.as_str(), a.version).cmp(&(b.label.as_str(), b.version)));
            Ok(out)
        })
    }

    /// Whether the newest secret key with this label has at least `min_len` bytes, as the
    /// token states its length (`CKA_VALUE_LEN`) without letting the key out. A key whose
    /// length the token does not state is refused too ([`HsmError::KeyLenUnknown`]): it
    /// cannot be shown to meet the minimum. No minimum (0) accepts every key.
    pub fn check_hmac_key(&self, label: &str, min_len: usize) -> Result<(), HsmError> {
        self.with_session(|s| Self::newest_hmac_key(s, label, min_len).map(|_| ()))
    }

    /// The newest secret key with this label, held to `min_len` bytes in the session that
    /// then signs with it: a version added after the key was loaded (by `idgate hsm rotate`
    /// or another tool) is measured before its first tag, not only the version seen at load.
    fn newest_hmac_key(
        s: &Session,
        label: &str,
        min_len: usize,
    ) -> Result<(ObjectHandle, u32), HsmError> {
        let (h, version) = Self::newest_of(s, label, Wanted::HmacKey)?;
        Self::held_to(s, h, label, version, min_len)?;
        Ok((h, version))
    }

    /// Version `version` of this label's secret key (the first found, as [`Hsm::newest`]
    /// takes the first of the newest), held to `min_len` bytes.
    fn hmac_key_at(
        s: &Session,
        label: &str,
        version: u32,
        min_len: usize,
    ) -> Result<ObjectHandle, HsmError> {
        let mut template = vec![
            Attribute::Class(Wanted::HmacKey.class()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        template.extend(Wanted::HmacKey.attributes());
        let handles = s.find_objects(&template).map_err(ck("C_FindObjects"))?;
        for h in handles {
            if object_version(s, h, ObjectClass::SECRET_KEY)? == version {
                Self::held_to(s, h, label, version, min_len)?;
                return Ok(h);
            }
        }
        Err(HsmError::NoVersion {
            label: label.to_owned(),
            version,
        })
    }

    /// Whether the key `h` (version `version` of `label`) has at least `min_len` bytes, as
    /// the token states its length; 0 accepts every key.
    fn held_to(
        s: &Session,
        h: ObjectHandle,
        label: &str,
        version: u32,
        min_len: usize,
    ) -> Result<(), HsmError> {
        if min_len == 0 {
            return Ok(());
        }
        let attrs = s
            .get_attributes(h, &[AttributeType::ValueLen])
            .map_err(ck("C_GetAttributeValue"))?;
        let len = attrs.into_iter().find_map(|a| match a {
            Attribute::ValueLen(len) => Some(usize::from(len)),
            _ => None,
        });
        match len {
            Some(len) if len >= min_len => Ok(()),
            Some(len) => Err(HsmError::KeyTooShort {
                label: label.to_owned(),
                version,
                len,
                min: min_len,
            }),
            None => Err(HsmError::KeyLenUnknown {
                label: label.to_owned(),
                version,
                min: min_len,
            }),
        }
    }

    /// The flags of the newest secret key with this label: (extractable, sensitive).
    pub fn key_flags(&self, label: &str) -> Result<(bool, bool), HsmError> {
        self.with_session(|s| {
            let (h, _) = Self::newest(s, label, ObjectClass::SECRET_KEY)?;
            let attrs = s
                .get_attributes(h, &[AttributeType::Extractable, AttributeType::Sensitive])
                .map_err(ck("C_GetAttributeValue"))?;
            let mut flags = (true, false);
            for a in attrs {
                match a {
                    Attribute::Extractable(b) => flags.0 = b,
                    Attribute::Sensitive(b) => flags.1 = b,
                    _ => {}
                }
            }
            Ok(flags)
        })
    }
}

/// `call` on each of `data` in order, none started once `until` has passed.
fn each_until<T>(
    data: &[Vec<u8>],
    until: Instant,
    mut call: impl FnMut(&[u8]) -> Result<T, HsmError>,
) -> Result<Vec<T>, HsmError> {
    let mut out = Vec::with_capacity(data.len());
    for d in data {
        if Instant::now() >= until {
            return Err(HsmError::Token {
                op: "C_Sign",
                error: format!(
                    "stopped after {} of {} tags: the caller's time ran out",
                    out.len(),
                    data.len()
                ),
                gone: false,
            });
        }
        out.push(call(d)?);
    }
    Ok(out)
}

/// Binds a ciphertext to its label and version, so a wrapped blob copied to another label
/// (or rolled back to an older version number) fails to decrypt.
fn wrap_aad(label: &str, version: u32) -> Vec<u8> {
    let mut aad = b"idgate-wrapped-v1\0".to_vec();
    aad.extend_from_slice(label.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn no_tag_is_started_once_the_callers_time_has_run_out() {
        let data: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
        let far = Instant::now() + Duration::from_secs(3600);
        let all = each_until(&data, far, |d| Ok(d[0])).unwrap();
        assert_eq!(all, (0..10u8).collect::<Vec<_>>());

        // A token that slows down: the fourth tag takes until past the deadline.
        let until = Instant::now() + Duration::from_millis(100);
        let mut started = Vec::new();
        let err = each_until(&data, until, |_| {
            started.push(Instant::now());
            if started.len() == 4 {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
            }
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, HsmError::Token { gone: false, .. }), "{err}");
        assert!((1..=4).contains(&started.len()), "{}", started.len());
        assert!(started.iter().all(|at| *at < until));
        assert!(!err.token_gone());
    }
}
