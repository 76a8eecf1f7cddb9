//! The parts of Vault's JSON answers that are read.
//!
//! A KV read is parsed for one field only: the secret's other fields are skipped unparsed,
//! never copied out of the (zeroized) answer, and the field read goes straight into
//! zeroizing memory.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::zeroizing::JsonSecret;

#[derive(Deserialize)]
pub(super) struct Errors {
    #[serde(default)]
    pub(super) errors: Vec<String>,
}

/// What a KV version 2 read says of one field.
pub(super) struct KvRead {
    /// `data.metadata`.
    pub(super) metadata: Option<KvMetadata>,
    pub(super) field: KvField,
}

/// The field named in a `vault:` reference, in `data.data`.
pub(super) enum KvField {
    /// `data.data` is null or absent: the version is deleted or destroyed.
    NoData,
    /// `data.data` has no such field.
    Missing,
    /// The field, as JSON: a string, or any other value.
    Present(JsonSecret),
}

#[derive(Deserialize)]
pub(super) struct KvMetadata {
    pub(super) version: u64,
    #[serde(default)]
    pub(super) deletion_time: String,
    #[serde(default)]
    pub(super) destroyed: bool,
}

/// Reads `field` and the metadata of a KV version 2 answer (`{"data": {"data": {..},
/// "metadata": {..}}}`); an answer without `data` is not one.
pub(super) fn kv_read(body: &[u8], field: &str) -> Result<KvRead, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let read = Root(field).deserialize(&mut de)?;
    de.end()?;
    Ok(read)
}

/// A map key compared with a name, without a copy of it.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

/// The whole answer: its `data`.
struct Root<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for Root<'_> {
    type Value = KvRead;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KvRead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Root<'_> {
    type Value = KvRead;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a KV version 2 answer")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KvRead, A::Error> {
        let mut read = None;
        while let Some(is_data) = map.next_key_seed(KeyIs("data"))? {
            if is_data {
                read = Some(map.next_value_seed(Data(self.0))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        read.ok_or_else(|| de::Error::missing_field("data"))
    }
}

/// `data`: the secret's `data` and `metadata`.
struct Data<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for Data<'_> {
    type Value = KvRead;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KvRead, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Data<'_> {
    type Value = KvRead;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the data of a KV version 2 answer")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KvRead, A::Error> {
        let mut read = KvRead {
            metadata: None,
            field: KvField::NoData,
        };
        while let Some(key) = map.next_key::<DataKey>()? {
            match key {
                DataKey::Data => read.field = map.next_value_seed(Fields(self.0))?,
                DataKey::Metadata => read.metadata = map.next_value()?,
                DataKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(read)
    }
}

/// The keys of `data` that are read.
enum DataKey {
    Data,
    Metadata,
    Other,
}

impl<'de> Deserialize<'de> for DataKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DataKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<DataKey, E> {
                Ok(match v {
                    "data" => DataKey::Data,
                    "metadata" => DataKey::Metadata,
                    _ => DataKey::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// `data.data`: null, or the secret's fields, of which one is read.
struct Fields<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = KvField;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KvField, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = KvField;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the fields of a secret, or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<KvField, E> {
        Ok(KvField::NoData)
    }

    fn visit_unit<E: de::Error>(self) -> Result<KvField, E> {
        Ok(KvField::NoData)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<KvField, D::Error> {
        d.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KvField, A::Error> {
        let mut field = KvField::Missing;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted {
                field = KvField::Present(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(field)
    }
}

#[derive(Deserialize)]
pub(super) struct AuthAnswer {
    pub(super) auth: Auth,
}

#[derive(Deserialize)]
pub(super) struct Auth {
    pub(super) client_token: JsonSecret,
    #[serde(default)]
    pub(super) lease_duration: u64,
    #[serde(default)]
    pub(super) renewable: bool,
}

#[derive(Deserialize)]
pub(super) struct Lookup {
    pub(super) data: LookupData,
}

#[derive(Deserialize)]
pub(super) struct LookupData {
    #[serde(default)]
    pub(super) ttl: u64,
    #[serde(default)]
    pub(super) renewable: bool,
}
