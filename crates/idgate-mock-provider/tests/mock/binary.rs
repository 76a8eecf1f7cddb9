//! The `idgate-mock-provider` binary: secrets from the environment or files, the printed
//! URL, clean shutdown on SIGTERM, and no secret in its output.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use crate::support::{Client, Pki};

const KEY: &str = "binary-test-key-5f7e9a";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_idgate-mock-provider"))
}

#[tokio::test]
async fn serves_https_from_env_key_and_never_logs_credentials() {
    let pki = Pki::new();
    let mut child = bin()
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(pki.cert())
        .arg("--tls-key")
        .arg(pki.key())
        .args(["--api-key-env", "MY_DIDIT_KEY"])
        .env("MY_DIDIT_KEY", KEY)
        .env("IDGATE_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // "listening on https://127.0.0.1:PORT (didit)"
    let url = line
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    assert!(line.trim_end().ends_with("(didit)"), "{line}");
    let addr = url.strip_prefix("https://").unwrap().parse().unwrap();

    let c = Client::https(&pki, addr);
    let r = c
        .send("GET", "/v3/sessions/", &[("x-api-key", KEY)], b"")
        .await;
    assert_eq!(r.status, 200);
    let wrong = "wrong-key-visible-if-logged";
    let r = c
        .send("GET", "/v3/sessions/", &[("x-api-key", wrong)], b"")
        .await;
    assert_eq!(r.status, 401);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut out = String::new();
    stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let all = format!("{line}{out}{err}");
    assert!(all.contains("mock provider listening"), "{all}");
    assert!(!all.contains(KEY), "the API key leaked into the output");
    assert!(
        !all.contains(wrong),
        "a presented credential leaked into the output"
    );
}

/// A supervisor may stop the mock as soon as it says it listens: the SIGTERM must find
/// the mock's handler (a clean stop, status 0), never the default action that kills it.
#[test]
fn a_sigterm_sent_as_soon_as_the_mock_says_it_listens_stops_it_cleanly() {
    for _ in 0..5 {
        let mut child = bin()
            .args(["--listen", "127.0.0.1:0"])
            .env("MOCK_PROVIDER_API_KEY", KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on "), "{line:?}");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = child.wait().unwrap();
        assert!(exit.success(), "{exit:?}");
    }
}

#[test]
fn refuses_missing_secret_and_public_plain_http() {
    let out = bin()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api-key-env",
            "SURELY_UNSET_VAR_42",
        ])
        .env_remove("SURELY_UNSET_VAR_42")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SURELY_UNSET_VAR_42"), "{err}");

    let out = bin()
        .args(["--listen", "0.0.0.0:0"])
        .env("MOCK_PROVIDER_API_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");

    // Sumsub mode needs the HMAC secret too.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let out = bin()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "sumsub",
            "--api-key-file",
        ])
        .arg(&key_file)
        .args(["--secret-env", "SURELY_UNSET_SECRET_42"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SURELY_UNSET_SECRET_42"), "{err}");
}

#[test]
fn tls_flags_go_together() {
    let out = bin()
        .args(["--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent.crt"])
        .env("MOCK_PROVIDER_API_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key"));
}
