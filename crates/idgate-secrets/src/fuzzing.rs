//! The readers of what a token endpoint and Vault answer, for the fuzz targets
//! (`fuzz/fuzz_targets/oauth2_token_answer.rs`, `fuzz/fuzz_targets/vault_answer.rs`); not
//! part of the crate's interface. Each function is the production reader, with no other
//! logic.

use std::time::Duration;

use http::StatusCode;
use http::header::HeaderValue;

use crate::VaultRef;
use crate::oauth2::TokenError;
use crate::vault::{VaultError, VaultSecret};

/// What a token endpoint's successful answer gives: the `Authorization` value, the token's
/// lifetime, and how long before its end the next one is fetched.
pub fn token_answer(body: &[u8]) -> Result<(HeaderValue, Duration, Duration), TokenError> {
    let (header, lifetime) = crate::oauth2::read_answer(body)?;
    Ok((header, lifetime, crate::oauth2::refresh_margin(lifetime)))
}

/// The error code a token endpoint's refusal is logged with (`" (code)"`, or empty).
pub fn token_error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .map(|v| crate::oauth2::error_code(&v))
        .unwrap_or_default()
}

/// What Vault's answer to the KV version 2 read of `r` gives.
pub fn vault_kv_answer(
    status: StatusCode,
    body: &[u8],
    r: &VaultRef,
) -> Result<VaultSecret, VaultError> {
    crate::vault::kv_answer(status, body, r)
}
