//! `[siem]` as a whole file sees it: valid sinks, and each problem at its key.

use std::path::Path;

use super::*;
use crate::ConfigError;

const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"

[identity]
svid_cert = "gw.crt"
svid_key = "gw.key"

[[identity.trust_bundles]]
trust_domain = "example.org"
bundle = "bundle.pem"

[audit]
dir = "audit"
signing_key = "file:audit-signing.key"
"#;

/// Parses `BASE` plus `siem` in `dir`; the config, or every problem under `siem`.
fn parse_in(dir: &Path, siem: &str) -> Result<SiemConfig, Vec<ConfigError>> {
    let file = dir.join("idgate.toml");
    match crate::parse(&file, &format!("{BASE}\n{siem}")) {
        Ok(c) => Ok(c.siem.expect("a [siem] section")),
        Err(e) => {
            let siem: Vec<_> =
                e.0.iter()
                    .filter(|e| e.key.starts_with("siem"))
                    .cloned()
                    .collect();
            if siem.is_empty() {
                panic!("problems outside [siem]: {e}")
            } else {
                Err(siem)
            }
        }
    }
}

fn problems(dir: &Path, siem: &str) -> Vec<String> {
    match parse_in(dir, siem) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .iter()
            .map(|e| format!("{}: {}", e.key, e.reason))
            .collect(),
    }
}

/// A directory holding the files a valid configuration names.
fn dir_with_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "gw.crt",
        "gw.key",
        "bundle.pem",
        "siem-ca.pem",
        "siem.crt",
        "siem.key",
    ] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    // A secret file must be the owner's alone.
    let key = dir.path().join("audit-signing.key");
    std::fs::write(&key, "x").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    dir
}

#[test]
fn three_kinds_of_sinks_with_their_defaults() {
    let dir = dir_with_files();
    let text = r#"
[siem]
shutdown_timeout = "2s"

[[siem.sinks]]
kind = "stdout"

[[siem.sinks]]
kind = "file"
path = "audit.jsonl"
on_full = "drop_oldest"

[[siem.sinks]]
name = "soc"
kind = "syslog"
address = "siem.example.org:6514"
ca = "siem-ca.pem"
client_cert = "siem.crt"
client_key = "siem.key"
facility = "audit"
buffer_events = 500
buffer_bytes = 65536
"#;
    // The identity files exist, so the whole file is valid.
    let file = dir.path().join("idgate.toml");
    let config = crate::parse(&file, &format!("{BASE}\n{text}"));
    let siem = match config {
        Ok(c) => c.siem.unwrap(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(siem.shutdown_timeout, Duration::from_secs(2));
    let names: Vec<_> = siem.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["stdout", "file", "soc"]);
    assert_eq!(siem.sinks[0].buffer.on_full, OnFull::DropNewest);
    assert_eq!(siem.sinks[0].buffer.events, 100_000);
    assert_eq!(siem.sinks[1].buffer.on_full, OnFull::DropOldest);
    assert_eq!(
        siem.sinks[1].kind,
        SinkKind::File {
            path: dir.path().join("audit.jsonl")
        }
    );
    assert_eq!(siem.sinks[2].key, "siem.sinks[2]");
    assert_eq!(siem.sinks[2].buffer.events, 500);
    assert_eq!(siem.sinks[2].buffer.bytes, 65536);
    let SinkKind::Syslog(s) = &siem.sinks[2].kind else {
        panic!("a syslog sink")
    };
    assert_eq!((s.host.as_str(), s.port), ("siem.example.org", 6514));
    assert_eq!(s.facility.code(), 13);
    assert_eq!(s.severity, Severity::INFO);
    assert_eq!(s.msgid, "audit");
    assert!(!s.utf8_bom);
    assert_eq!(s.replay_bytes, 1 << 20);
    let tls = s.tls.as_ref().expect("TLS by default");
    assert_eq!(tls.server_name, "siem.example.org");
    assert_eq!(
        tls.ca.as_deref(),
        Some(dir.path().join("siem-ca.pem").as_path())
    );
    assert_eq!(
        tls.client_cert,
        Some((dir.path().join("siem.crt"), dir.path().join("siem.key")))
    );
}

#[test]
fn plaintext_only_when_asked_and_never_with_tls_settings() {
    let dir = dir_with_files();
    let plain = parse_in(
        dir.path(),
        "[[siem.sinks]]\nkind = \"syslog\"\naddress = \"[::1]:514\"\ninsecure_plaintext = true\n",
    )
    .unwrap();
    let SinkKind::Syslog(s) = &plain.sinks[0].kind else {
        panic!("a syslog sink")
    };
    assert!(s.tls.is_none());
    assert_eq!(s.host, "::1");
    assert_eq!(
        problems(
            dir.path(),
            "[[siem.sinks]]\nkind = \"syslog\"\naddress = \"127.0.0.1:514\"\ninsecure_plaintext = true\nca = \"siem-ca.pem\"\n"
        ),
        ["siem.sinks[0].ca: a TLS setting on a sink with insecure_plaintext = true: choose one"]
    );
}

#[test]
fn each_problem_is_named_at_its_key() {
    let dir = dir_with_files();
    let p = |text: &str| problems(dir.path(), text);
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"kafka\"\n"),
        ["siem.sinks[0].kind: \"kafka\" is not a sink: use \"stdout\", \"file\" or \"syslog\""]
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"syslog\"\n"),
        ["siem.sinks[0].address: missing: a syslog sink needs the collector's HOST:PORT"]
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"syslog\"\naddress = \"siem.example.org\"\n").len(),
        1
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"syslog\"\naddress = \"h:6514\"\nclient_cert = \"siem.crt\"\n"),
        ["siem.sinks[0].client_key: missing: client_cert needs its client_key"]
    );
    let missing_ca =
        p("[[siem.sinks]]\nkind = \"syslog\"\naddress = \"h:6514\"\nca = \"nope.pem\"\n");
    assert_eq!(missing_ca.len(), 1);
    assert!(
        missing_ca[0].starts_with("siem.sinks[0].ca: cannot read ")
            && missing_ca[0].ends_with("nope.pem: no such file"),
        "{missing_ca:?}"
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"syslog\"\naddress = \"h:6514\"\nfacility = \"local9\"\n").len(),
        1
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"syslog\"\naddress = \"h:6514\"\nmsgid = \"has space\"\n"),
        ["siem.sinks[0].msgid: must be 1-32 printable ASCII characters without spaces"]
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"stdout\"\npath = \"x\"\nfacility = \"auth\"\n"),
        [
            "siem.sinks[0].facility: only for kind = \"syslog\" (this is \"stdout\")",
            "siem.sinks[0].path: only for kind = \"file\" (this is \"stdout\")",
        ]
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"file\"\n"),
        ["siem.sinks[0].path: missing: a file sink needs the path it appends to"]
    );
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"stdout\"\n[[siem.sinks]]\nkind = \"stdout\"\n"),
        [
            "siem.sinks[1].name: another sink is named \"stdout\": give each sink of one kind a distinct name"
        ]
    );
    assert_eq!(
        p(
            "[[siem.sinks]]\nkind = \"stdout\"\nbuffer_events = 0\nbuffer_bytes = 10\non_full = \"block\"\n"
        ),
        [
            "siem.sinks[0].buffer_events: must be at least 1",
            "siem.sinks[0].buffer_bytes: must be between 1024 and 4294967296 (4 GiB)",
            "siem.sinks[0].on_full: \"block\" is not a policy: use \"drop_newest\" or \"drop_oldest\"",
        ]
    );
    // A window the kernel's smallest send buffer would outgrow is refused; 0 turns replay off.
    assert_eq!(
        p("[[siem.sinks]]\nkind = \"syslog\"\naddress = \"h:6514\"\nreplay_bytes = 4096\n"),
        [
            "siem.sinks[0].replay_bytes: must be 0 (no replay) or at least 16384 (16 KiB): the kernel may hold more unacknowledged bytes than a smaller window keeps"
        ]
    );
    for fine in [0, 16384] {
        assert_eq!(
            p(&format!(
                "[[siem.sinks]]\nkind = \"syslog\"\naddress = \"h:6514\"\nreplay_bytes = {fine}\n"
            )),
            Vec::<String>::new()
        );
    }
    assert_eq!(
        p("[siem]\n"),
        [
            "siem.sinks: [siem] names no sink: add [[siem.sinks]] with kind = \"stdout\", \"file\" or \"syslog\""
        ]
    );
    let unknown = p("[[siem.sinks]]\nkind = \"stdout\"\nadress = \"x\"\n");
    assert_eq!(unknown.len(), 1);
    assert!(
        unknown[0].starts_with("siem.sinks[0].adress: unknown field `adress`"),
        "{unknown:?}"
    );
}

#[test]
fn errors_name_the_file() {
    let dir = dir_with_files();
    let errors = parse_in(dir.path(), "[[siem.sinks]]\nkind = \"file\"\n").unwrap_err();
    assert_eq!(errors[0].file, dir.path().join("idgate.toml"));
    assert!(errors[0].to_string().starts_with(&format!(
        "{}: siem.sinks[0].path: ",
        dir.path().join("idgate.toml").display()
    )));
}

#[test]
fn a_siem_without_an_audit_trail_is_refused() {
    let dir = dir_with_files();
    let file = dir.path().join("idgate.toml");
    let base = BASE.split("[audit]").next().unwrap_or(BASE);
    for audit in [
        "",
        "[audit]\nenabled = false\ndir = \"audit\"\nsigning_key = \"file:k\"\n",
    ] {
        let text = format!("{base}\n{audit}\n[siem]\n[[siem.sinks]]\nkind = \"stdout\"\n");
        let errors = crate::parse(&file, &text).unwrap_err();
        let found: Vec<_> = errors
            .0
            .iter()
            .map(|e| (e.key.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            found,
            [(
                "siem",
                "[siem] exports the audit trail's records: it needs an enabled [audit] section"
            )],
            "{audit:?}"
        );
    }
}
