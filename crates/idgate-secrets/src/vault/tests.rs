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
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
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
