//! The verifier against every test vector in `tests/vectors/*.json`: signatures computed
//! by Python's `hmac` and `json` modules the way each provider documents them
//! (`tests/vectors/make_vectors.py`), independently of the Rust code. Each vector says
//! what the verifier must report, or the reason it must refuse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use idgate_webhooks::verify::{Scheme, V2Form, Verified, verify};
use serde_json::Value;

const FILES: [&str; 5] = [
    "didit.json",
    "sumsub.json",
    "veriff.json",
    "onfido.json",
    "persona.json",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn vectors(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["vectors"].as_array().unwrap().clone()
}

fn scheme(v: &Value) -> Scheme {
    let mut scheme: Scheme = v["scheme"].as_str().unwrap().parse().unwrap();
    match &mut scheme {
        Scheme::DiditSignatureV2(form) => {
            *form = v["v2_form"].as_str().unwrap().parse::<V2Form>().unwrap();
        }
        Scheme::SumsubDigest { allow_sha1 } => {
            *allow_sha1 = v["allow_sha1"].as_bool().unwrap_or(false);
        }
        _ => {}
    }
    scheme
}

fn unix(secs: &Value) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.as_u64().unwrap())
}

/// The verifier's answer in the vectors' terms.
fn outcome(result: Result<Verified, idgate_webhooks::verify::Rejected>) -> Value {
    match result {
        Ok(v) => serde_json::json!({"ok": {
            "event_id": v.event_id,
            "session_id": v.session_id,
            "event_type": v.event_type,
            "timestamp": v.timestamp.map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs()),
            "replay_key": v.replay_key,
            "secret_index": v.secret_index,
            "body_signed": v.body_signed,
        }}),
        Err(e) => serde_json::json!({"error": e.reason()}),
    }
}

fn run(file: &str) -> usize {
    let all = vectors(file);
    assert!(!all.is_empty(), "{file} has no vectors");
    let mut failures = Vec::new();
    for v in &all {
        let name = v["name"].as_str().unwrap();
        let secrets: Vec<&[u8]> = v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().as_bytes())
            .collect();
        let mut headers = HeaderMap::new();
        for pair in v["headers"].as_array().unwrap() {
            let name = HeaderName::from_bytes(pair[0].as_str().unwrap().as_bytes()).unwrap();
            headers.append(
                name,
                HeaderValue::from_str(pair[1].as_str().unwrap()).unwrap(),
            );
        }
        let got = outcome(verify(
            &scheme(v),
            &secrets,
            &headers,
            v["body"].as_str().unwrap().as_bytes(),
            unix(&v["now"]),
            Duration::from_secs(v["tolerance"].as_u64().unwrap()),
        ));
        if got != v["expect"] {
            failures.push(format!("{file} {name}: got {got}, want {}", v["expect"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    all.len()
}

#[test]
fn didit_vectors() {
    // X-Signature, each V2 form, Simple: valid, rotated, forged, altered, stale, future.
    assert!(run("didit.json") >= 40);
}

#[test]
fn sumsub_vectors() {
    run("sumsub.json");
}

#[test]
fn veriff_vectors() {
    run("veriff.json");
}

#[test]
fn onfido_vectors() {
    run("onfido.json");
}

#[test]
fn persona_vectors() {
    run("persona.json");
}

#[test]
fn every_vector_file_is_checked_and_each_has_both_outcomes() {
    let on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    for name in &on_disk {
        assert!(FILES.contains(&name.as_str()), "{name} is not run");
    }
    for file in FILES {
        let all = vectors(file);
        let accepted = all
            .iter()
            .filter(|v| v["expect"].get("ok").is_some())
            .count();
        for reason in ["bad_signature", "missing"] {
            assert!(
                all.iter().any(|v| v["expect"]["error"] == reason),
                "{file}: no {reason} vector"
            );
        }
        assert!(accepted > 0 && accepted < all.len(), "{file}");
    }
}

/// The files are what the script writes today: nobody edited them by hand, and a change
/// to the script was followed by regenerating them.
#[test]
fn vectors_are_what_the_script_writes() {
    let out = Command::new("python3")
        .arg(dir().join("make_vectors.py"))
        .arg("--check")
        .output()
        .expect("python3 (the vectors are computed with Python's standard library)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
