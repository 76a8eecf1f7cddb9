//! What Vault (or OpenBao) answers a KV version 2 read
//! (`idgate_secrets::fuzzing::vault_kv_answer`): the first byte picks the status (200, 404,
//! 403, 500) and the field the reference names (`api_key`, `k`, `é`, or one with a `"`); the
//! rest is the body.
//!
//! Never panics. A value read (only from a 200) is the non-empty string `data.data.<field>`
//! of a JSON object, with the version `data.metadata.version`, from metadata that says the
//! version is neither destroyed nor deleted; where an answer names a member twice, the last
//! one counts, as in every JSON reader that does not refuse it. An answer without any such
//! name that has all of this is read. A 404 is `Deleted` with the metadata's version or
//! `NotFound`; a 403 is `PermissionDenied`; any other status is `Status`, with a detail of
//! Vault's `errors` on one line, without control characters, of at most 200 characters.
#![no_main]

use http::StatusCode;
use idgate_auth::jwt::json;
use idgate_secrets::fuzzing::vault_kv_answer;
use idgate_secrets::vault::VaultError;
use idgate_secrets::{ExposeSecret, VaultRef};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// What the answer `v` holds for `field`, read as a JSON reader that keeps a name's last
/// member would: the value and its version.
fn reference(v: &Value, field: &str) -> Option<(String, u64)> {
    let data = v.get("data")?.as_object()?;
    let meta = data.get("metadata")?.as_object()?;
    let version = meta.get("version")?.as_u64()?;
    if !matches!(meta.get("destroyed"), None | Some(Value::Bool(false))) {
        return None;
    }
    if !matches!(meta.get("deletion_time"), None | Some(Value::String(_))) {
        return None;
    }
    if meta
        .get("deletion_time")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty())
    {
        return None;
    }
    let value = data.get("data")?.as_object()?.get(field)?.as_str()?;
    (!value.is_empty()).then(|| (value.to_owned(), version))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = [
        StatusCode::OK,
        StatusCode::NOT_FOUND,
        StatusCode::FORBIDDEN,
        StatusCode::INTERNAL_SERVER_ERROR,
    ][usize::from(selector & 3)];
    let field = ["api_key", "k", "é", "a\"b"][usize::from(selector >> 2 & 3)];
    let r = VaultRef::parse(&format!("secret/idgate/didit#{field}")).expect("a reference");
    let read = vault_kv_answer(status, body, &r);
    // serde_json's `Value` refuses a lone surrogate escape that a skipped member may hold;
    // such an answer is only checked for the kind of its error.
    let doc = serde_json::from_slice::<Value>(body).ok();
    let expected = doc.as_ref().and_then(|v| reference(v, field));
    match (&read, status) {
        (Ok(secret), StatusCode::OK) => {
            let got = (secret.value.expose_secret().to_owned(), secret.version);
            if doc.is_some() {
                assert_eq!(
                    expected.as_ref(),
                    Some(&got),
                    "read otherwise than the reference"
                );
            }
        }
        (Ok(_), _) => panic!("a value read from a {status}"),
        (Err(e), StatusCode::OK) => {
            // Only an answer that names a member twice may be refused where the reference
            // reads it.
            if expected.is_some() {
                assert!(
                    json::value(body).is_err(),
                    "refused ({e}) an answer the reference reads"
                );
            }
        }
        (Err(VaultError::Deleted(version)), StatusCode::NOT_FOUND) => {
            if let Some(v) = &doc {
                assert_eq!(v["data"]["metadata"]["version"].as_u64(), Some(*version));
            }
        }
        (Err(VaultError::NotFound), StatusCode::NOT_FOUND) => {}
        (Err(VaultError::PermissionDenied), StatusCode::FORBIDDEN) => {}
        (Err(VaultError::Status { status: s, detail }), _) => {
            assert_eq!(*s, status.as_u16());
            assert!(!detail.is_empty());
            assert!(detail.chars().count() <= 201, "{detail}");
            assert!(!detail.chars().any(char::is_control), "{detail:?}");
            assert!(
                !detail.contains("  ") && detail.trim() == detail,
                "{detail:?}"
            );
        }
        (Err(e), _) => panic!("{status}: {e}"),
    }
});
