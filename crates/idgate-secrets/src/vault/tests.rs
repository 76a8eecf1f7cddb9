use super::*;

#[test]
fn parses_mount_path_field_and_version() {
    let r = VaultRef::parse("secret/idgate/didit#api_key").unwrap();
    assert_eq!(r.mount, "secret");
    assert_eq!(r.path, "idgate/didit");
    assert_eq!(r.field, "api_key");
    assert_eq!(r.version, None);
    assert_eq!(r.api_path(), "/v1/secret/data/idgate/didit");
    assert_eq!(r.to_string(), "vault:secret/idgate/didit#api_key");

    let r = VaultRef::parse("kv/team-a/sumsub?version=3#hmac key").unwrap();
    assert_eq!(r.version, Some(3));
    assert_eq!(r.field, "hmac key");
    assert_eq!(r.api_path(), "/v1/kv/data/team-a/sumsub?version=3");
    assert_eq!(r.to_string(), "vault:kv/team-a/sumsub?version=3#hmac key");
}

#[test]
fn refuses_references_that_are_incomplete_or_would_change_the_url() {
    for bad in [
        "",
        "secret/idgate/didit",
        "secret/idgate/didit#",
        "secret#api_key",
        "/idgate/didit#api_key",
        "secret//didit#api_key",
        "secret/idgate/../sys/raw#k",
        "secret/idgate/./didit#k",
        "secret/idgate%2fdidit#k",
        "secret/idgate/didit?x=1#k",
        "secret/idgate/didit?version=0#k",
        "secret/idgate/didit?version=+1#k",
        "secret/idgate/didit?version=abc#k",
        "secret/a b#k",
        "secret/idgate/didit#a\nb",
    ] {
        assert!(VaultRef::parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn secret_ref_grammar_reads_vault_references() {
    let r = SecretRef::parse(
        "vault:secret/idgate/didit#api_key",
        std::path::Path::new("/"),
    )
    .unwrap();
    assert!(matches!(&r, SecretRef::Vault(v) if v.path == "idgate/didit"));
    assert_eq!(r.to_string(), "vault:secret/idgate/didit#api_key");
    assert!(SecretRef::parse("vault:", std::path::Path::new("/")).is_err());
}

#[test]
fn error_detail_is_one_bounded_line() {
    assert_eq!(
        error_detail(br#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#),
        "1 error occurred: * permission denied"
    );
    assert_eq!(error_detail(b"not json"), "no detail");
    let long = format!(r#"{{"errors":["{}"]}}"#, "x".repeat(500));
    assert!(error_detail(long.as_bytes()).chars().count() <= 201);
}

#[test]
fn reading_without_an_installed_client_names_the_missing_section() {
    assert_eq!(
        VaultError::NotConfigured.to_string(),
        "vault: references need a [vault] section"
    );
}

#[test]
fn client_refuses_an_address_without_scheme_or_host() {
    let settings = |addr: &str| VaultSettings {
        address: addr.parse().unwrap(),
        ca: None,
        namespace: None,
        timeout: Duration::from_secs(1),
        auth: VaultAuth::Token(SecretRef::Env("VAULT_TOKEN".into())),
    };
    assert!(VaultClient::new(settings("/v1")).is_err());
    assert!(VaultClient::new(settings("ftp://vault:8200")).is_err());
}

#[test]
fn unreachable_vault_is_a_transient_error_without_the_token() {
    use std::os::unix::fs::PermissionsExt;
    // A port nothing listens on, held for the whole test: the socket is bound but never
    // listens, so a connection is refused and no other process can take the port meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "hvs.sekrit-token").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let client = VaultClient::new(VaultSettings {
        address: format!("http://127.0.0.1:{port}").parse().unwrap(),
        ca: None,
        namespace: None,
        timeout: Duration::from_millis(500),
        auth: VaultAuth::Token(SecretRef::File(token_file)),
    })
    .unwrap();
    let err = client
        .read_blocking(&VaultRef::parse("secret/x#y").unwrap())
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("sekrit"), "{err}");
    // Dropping the client inside a runtime must not panic.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async move { drop(client) });
}

#[test]
fn the_approle_login_body_is_json_and_leaves_no_copy_in_memory() {
    const SECRET_ID: &str = "approle-secret-id-00000000000000000000000-tail-8a3e5c0f6d2b9147c3";
    let escaped = login_body("role \"1\"\n", "s\\x").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&escaped).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"role_id": "role \"1\"\n", "secret_id": "s\\x"})
    );
    drop((v, escaped));

    let mut scanner = crate::zeroizing::freed::Scanner::new();
    let body = login_body("5d1c3c2e-role", SECRET_ID).unwrap();
    let sent = body.clone();
    drop(body);
    drop(sent);
    assert!(
        !scanner.finds(crate::zeroizing::tail(SECRET_ID)),
        "a copy of the secret_id was left in memory"
    );
}

const KV_ANSWER: &[u8] = br#"{"request_id":"r","lease_id":"","renewable":false,"lease_duration":0,
"data":{"data":{"other":"kv-other-field-0000000000000000000000000-tail-1b7d4f9a2e6c8053f5",
"api_key":"kv-read-field-00000000000000000000000000-tail-6c2a8e4b0d7f1935a6","n":[1,{"x":2}]},
"metadata":{"created_time":"2026-11-02T10:00:00Z","custom_metadata":null,"deletion_time":"",
"destroyed":false,"version":7}},"wrap_info":null,"warnings":null,"auth":null}"#;

#[test]
fn a_kv_read_takes_its_field_and_leaves_no_copy_of_any_field_in_memory() {
    const OTHER: &str = "kv-other-field-0000000000000000000000000-tail-1b7d4f9a2e6c8053f5";
    const READ: &str = "kv-read-field-00000000000000000000000000-tail-6c2a8e4b0d7f1935a6";
    let mut scanner = crate::zeroizing::freed::Scanner::new();
    let kv = wire::kv_read(KV_ANSWER, "api_key").unwrap();
    assert_eq!(kv.metadata.as_ref().map(|m| m.version), Some(7));
    match &kv.field {
        wire::KvField::Present(JsonSecret::Text(v)) => {
            assert_eq!(v.expose_secret(), READ);
        }
        _ => panic!("the field was not read"),
    }
    drop(kv);
    assert!(
        !scanner.finds(crate::zeroizing::tail(READ)),
        "a copy of the field read was left in memory"
    );
    assert!(
        !scanner.finds(crate::zeroizing::tail(OTHER)),
        "a copy of another field was left in memory"
    );
}

#[test]
fn a_kv_read_tells_a_missing_field_from_one_that_is_not_a_string_or_a_deleted_version() {
    let field = |body: &str, name: &str| wire::kv_read(body.as_bytes(), name).map(|k| k.field);
    let body = r#"{"data":{"data":{"a":"x","n":1,"o":{"k":"v"}},"metadata":{"version":2}}}"#;
    assert!(matches!(field(body, "b"), Ok(wire::KvField::Missing)));
    for name in ["n", "o"] {
        assert!(matches!(
            field(body, name),
            Ok(wire::KvField::Present(JsonSecret::Other))
        ));
    }
    let escaped = r#"{"data":{"data":{"k\u0065y":"v\"1"},"metadata":{"version":2}}}"#;
    match field(escaped, "key") {
        Ok(wire::KvField::Present(JsonSecret::Text(v))) => {
            assert_eq!(v.expose_secret(), "v\"1");
        }
        _ => panic!("an escaped field was not read"),
    }
    let deleted = r#"{"data":{"data":null,"metadata":{"version":3,"deletion_time":"t"}}}"#;
    let kv = wire::kv_read(deleted.as_bytes(), "a").unwrap();
    assert!(matches!(kv.field, wire::KvField::NoData));
    assert_eq!(kv.metadata.map(|m| m.version), Some(3));
    for bad in [
        "<html>",
        r#"{"data":{"data":{"a":"x"}"#,
        "{}",
        r#"{"data":1}"#,
    ] {
        assert!(wire::kv_read(bad.as_bytes(), "a").is_err(), "{bad}");
    }
}
