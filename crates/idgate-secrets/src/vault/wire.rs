//! The parts of Vault's JSON answers that are read.

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
pub(super) struct Errors {
    #[serde(default)]
    pub(super) errors: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct KvRead {
    pub(super) data: KvData,
}

#[derive(Deserialize)]
pub(super) struct KvData {
    pub(super) data: Option<Map<String, Value>>,
    pub(super) metadata: Option<KvMetadata>,
}

#[derive(Deserialize)]
pub(super) struct KvMetadata {
    pub(super) version: u64,
    #[serde(default)]
    pub(super) deletion_time: String,
    #[serde(default)]
    pub(super) destroyed: bool,
}

#[derive(Deserialize)]
pub(super) struct AuthAnswer {
    pub(super) auth: Auth,
}

#[derive(Deserialize)]
pub(super) struct Auth {
    pub(super) client_token: String,
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
