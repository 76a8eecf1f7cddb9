//! Behaviour of [`verify`] that the Python test vectors do not pin down one by one: the
//! order of checks, the bounds, what each scheme reports. Signatures here are made with
//! ring; the vectors (`tests/vectors/`) check the same code against Python's `hmac`.

use http::{HeaderMap, HeaderValue};
use ring::hmac;

use super::*;

const NOW: u64 = 1_767_225_600;
const SECRET: &[u8] = b"whsec_current";
const OLD: &[u8] = b"whsec_previous";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn hex_hmac(secret: &[u8], message: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    idgate_codec::hex::encode(hmac::sign(&key, message).as_ref())
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(*name, HeaderValue::from_str(value).unwrap());
    }
    h
}

fn check(scheme: Scheme, h: &HeaderMap, body: &[u8]) -> Result<Verified, Rejected> {
    verify(&scheme, &[SECRET, OLD], h, body, now(), DEFAULT_TOLERANCE)
}

fn didit_body(ts: i64) -> String {
    format!(
        r#"{{"event_id":"evt-1","session_id":"s-1","status":"Approved","timestamp":{ts},"webhook_type":"status.updated"}}"#
    )
}

#[test]
fn didit_signature_reports_the_event_and_the_secret_that_signed() {
    let body = didit_body(NOW as i64 - 10);
    let h = headers(&[("x-signature", &hex_hmac(OLD, body.as_bytes()))]);
    let v = check(Scheme::DiditSignature, &h, body.as_bytes()).unwrap();
    assert_eq!(v.event_id.as_deref(), Some("evt-1"));
    assert_eq!(v.session_id.as_deref(), Some("s-1"));
    assert_eq!(v.event_type.as_deref(), Some("status.updated"));
    assert_eq!(v.timestamp, Some(now() - Duration::from_secs(10)));
    assert_eq!(v.replay_key, "event:evt-1");
    assert_eq!(v.secret_index, 1);
    assert!(v.body_signed);
}

#[test]
fn the_signature_is_checked_before_the_timestamp() {
    let stale = didit_body(NOW as i64 - 301);
    let h = headers(&[("x-signature", &hex_hmac(b"wrong", stale.as_bytes()))]);
    assert_eq!(
        check(Scheme::DiditSignature, &h, stale.as_bytes()),
        Err(Rejected::BadSignature)
    );
    let h = headers(&[("x-signature", &hex_hmac(SECRET, stale.as_bytes()))]);
    assert_eq!(
        check(Scheme::DiditSignature, &h, stale.as_bytes()),
        Err(Rejected::Stale { age_secs: 301 })
    );
}

#[test]
fn the_tolerance_is_inclusive_and_applies_both_ways() {
    for (offset, want) in [
        (-300, Ok(())),
        (300, Ok(())),
        (-301, Err(Rejected::Stale { age_secs: 301 })),
        (301, Err(Rejected::Future { ahead_secs: 301 })),
        (i64::MIN, Err(Rejected::Stale { age_secs: i64::MAX })),
    ] {
        let body = didit_body(NOW as i64 + offset);
        let h = headers(&[("x-signature", &hex_hmac(SECRET, body.as_bytes()))]);
        let got = check(Scheme::DiditSignature, &h, body.as_bytes()).map(|_| ());
        assert_eq!(got, want, "{offset}");
    }
}

#[test]
fn x_timestamp_must_repeat_the_body() {
    let body = didit_body(NOW as i64);
    let sig = hex_hmac(SECRET, body.as_bytes());
    let ok = headers(&[("x-signature", &sig), ("x-timestamp", &NOW.to_string())]);
    assert!(check(Scheme::DiditSignature, &ok, body.as_bytes()).is_ok());
    let other = headers(&[("x-signature", &sig), ("x-timestamp", "1767225601")]);
    assert_eq!(
        check(Scheme::DiditSignature, &other, body.as_bytes()),
        Err(Rejected::TimestampMismatch)
    );
    let bad = headers(&[("x-signature", &sig), ("x-timestamp", "+1767225600")]);
    assert_eq!(
        check(Scheme::DiditSignature, &bad, body.as_bytes()),
        Err(Rejected::Malformed("x-timestamp"))
    );
}

#[test]
fn didit_bodies_need_a_whole_timestamp() {
    for (body, want) in [
        (r#"{"event_id":"e"}"#, Rejected::Missing("timestamp")),
        (r#"{"timestamp":null}"#, Rejected::Missing("timestamp")),
        (
            r#"{"timestamp":"1767225600"}"#,
            Rejected::Malformed("timestamp"),
        ),
        (
            r#"{"timestamp":1767225600.5}"#,
            Rejected::Malformed("timestamp"),
        ),
        (r#"[1767225600]"#, Rejected::Malformed("body")),
        ("not json", Rejected::Malformed("body")),
        (
            r#"{"timestamp":1,"timestamp":2}"#,
            Rejected::Malformed("body"),
        ),
    ] {
        let h = headers(&[("x-signature", &hex_hmac(SECRET, body.as_bytes()))]);
        assert_eq!(
            check(Scheme::DiditSignature, &h, body.as_bytes()),
            Err(want),
            "{body}"
        );
    }
    // A whole float is the integer Didit would have written.
    let body = format!(r#"{{"timestamp":{NOW}.0}}"#);
    let h = headers(&[("x-signature", &hex_hmac(SECRET, body.as_bytes()))]);
    let v = check(Scheme::DiditSignature, &h, body.as_bytes()).unwrap();
    assert_eq!(v.timestamp, Some(now()));
    assert!(v.replay_key.starts_with("sha256:") && v.event_id.is_none());
}

#[test]
fn v2_signs_the_canonical_form_of_what_was_received() {
    // Received with spaces, unsorted, escaped, a whole float: the canonical form is the same.
    let body = format!(
        r#"{{ "webhook_type": "status.updated", "timestamp": {NOW}, "name": "Jos\u00e9", "score": 97.0, "event_id": "e-2" }}"#
    );
    let utf8 = format!(
        r#"{{"event_id":"e-2","name":"José","score":97,"timestamp":{NOW},"webhook_type":"status.updated"}}"#
    );
    let ascii = utf8.replace('é', "\\u00e9");
    for (form, message) in [
        ("unescaped", utf8.clone()),
        ("ascii", ascii.clone()),
        ("timestamp:unescaped", format!("{NOW}:{utf8}")),
        ("timestamp:ascii", format!("{NOW}:{ascii}")),
    ] {
        let form: V2Form = form.parse().unwrap();
        let h = headers(&[("x-signature-v2", &hex_hmac(SECRET, message.as_bytes()))]);
        let v = check(Scheme::DiditSignatureV2(form), &h, body.as_bytes()).unwrap();
        assert_eq!(v.event_id.as_deref(), Some("e-2"));
        assert_eq!(v.replay_key, "event:e-2");
        // Every other form refuses it.
        for other in V2Form::NAMES.iter().filter(|n| **n != form.name()) {
            let other = Scheme::DiditSignatureV2(other.parse().unwrap());
            assert_eq!(
                check(other, &h, body.as_bytes()),
                Err(Rejected::BadSignature),
                "{} vs {other:?}",
                form.name()
            );
        }
    }
    assert_eq!(
        canonical_json(body.as_bytes(), NonAscii::Escaped).as_deref(),
        Some(ascii.as_str())
    );
}

#[test]
fn v2_refuses_a_body_that_parsers_read_differently() {
    // Last-wins canonicalisation would sign "Declined"; a first-wins reader sees "Approved".
    let body = format!(r#"{{"status":"Approved","status":"Declined","timestamp":{NOW}}}"#);
    let signed = format!(r#"{{"status":"Declined","timestamp":{NOW}}}"#);
    let h = headers(&[("x-signature-v2", &hex_hmac(SECRET, signed.as_bytes()))]);
    assert_eq!(
        check(
            Scheme::DiditSignatureV2(V2Form::default()),
            &h,
            body.as_bytes()
        ),
        Err(Rejected::Malformed("body"))
    );
}

#[test]
fn simple_covers_four_fields_and_says_so() {
    let body = didit_body(NOW as i64);
    let message = format!("{NOW}:s-1:Approved:status.updated");
    let h = headers(&[("x-signature-simple", &hex_hmac(SECRET, message.as_bytes()))]);
    let v = check(Scheme::DiditSignatureSimple, &h, body.as_bytes()).unwrap();
    assert!(!v.body_signed);
    assert_eq!(v.event_id, None, "event_id is not signed");
    assert_eq!(v.session_id.as_deref(), Some("s-1"));
    assert_eq!(v.replay_key, mac::digest_key(&[message.as_bytes()]));
    // A field holding the separator could move the boundaries of a genuine message.
    let moved = format!(
        r#"{{"session_id":"s-1:Approved","status":"status.updated","timestamp":{NOW},"webhook_type":"x"}}"#
    );
    assert_eq!(
        check(Scheme::DiditSignatureSimple, &h, moved.as_bytes()),
        Err(Rejected::Malformed("session_id"))
    );
    let missing = format!(r#"{{"session_id":"s-1","timestamp":{NOW}}}"#);
    assert_eq!(
        check(Scheme::DiditSignatureSimple, &h, missing.as_bytes()),
        Err(Rejected::Missing("status"))
    );
}

#[test]
fn simple_delivers_only_the_fields_it_signs() {
    // The unsigned part of the body (the event id, a decision) is anybody's to change.
    let body = format!(
        r#"{{"decision":{{"full_name":"Mallory"}},"event_id":"evt-forged","session_id":"s-\u00e9","status":"Approved","timestamp":{NOW},"vendor_data":"x","webhook_type":"status.updated"}}"#
    );
    let message = format!("{NOW}:s-\u{e9}:Approved:status.updated");
    let h = headers(&[("x-signature-simple", &hex_hmac(SECRET, message.as_bytes()))]);
    let v = check(Scheme::DiditSignatureSimple, &h, body.as_bytes()).unwrap();
    let part = format!(
        r#"{{"session_id":"s-\u00e9","status":"Approved","timestamp":{NOW},"webhook_type":"status.updated"}}"#
    );
    assert_eq!(v.signed_part.as_deref(), Some(part.as_bytes()));
    assert_eq!(v.deliverable(body.as_bytes()), part.as_bytes());
    // Where the whole body is signed, the whole body is what is delivered.
    let whole = didit_body(NOW as i64);
    let h = headers(&[("x-signature", &hex_hmac(SECRET, whole.as_bytes()))]);
    let v = check(Scheme::DiditSignature, &h, whole.as_bytes()).unwrap();
    assert_eq!(v.signed_part, None);
    assert_eq!(v.deliverable(whole.as_bytes()), whole.as_bytes());
}

#[test]
fn sumsub_algorithms() {
    let body = br#"{"applicantId":"a-1","type":"applicantReviewed"}"#;
    let sig = hex_hmac(SECRET, body);
    let sumsub = Scheme::SumsubDigest { allow_sha1: false };
    let v = check(sumsub, &headers(&[("x-payload-digest", &sig)]), body).unwrap();
    assert_eq!(v.session_id.as_deref(), Some("a-1"));
    assert_eq!(v.event_type.as_deref(), Some("applicantReviewed"));
    assert_eq!(v.timestamp, None);
    assert!(v.replay_key.starts_with("sha256:"));
    for (alg, want) in [
        ("HMAC_SHA256_HEX", Ok(())),
        (
            "HMAC_SHA512_HEX",
            Err(Rejected::Malformed("x-payload-digest")),
        ),
        ("HMAC_SHA1_HEX", Err(Rejected::Sha1NotAllowed)),
        ("hmac_sha256_hex", Err(Rejected::UnknownAlgorithm)),
        ("HMAC_MD5_HEX", Err(Rejected::UnknownAlgorithm)),
    ] {
        let h = headers(&[("x-payload-digest", &sig), ("x-payload-digest-alg", alg)]);
        assert_eq!(check(sumsub, &h, body).map(|_| ()), want, "{alg}");
    }
    let sha1 = {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SECRET);
        idgate_codec::hex::encode(hmac::sign(&key, body).as_ref())
    };
    let h = headers(&[
        ("x-payload-digest", &sha1),
        ("x-payload-digest-alg", "HMAC_SHA1_HEX"),
    ]);
    assert!(check(Scheme::SumsubDigest { allow_sha1: true }, &h, body).is_ok());
}

#[test]
fn raw_body_schemes_verify_bodies_that_are_not_json() {
    let body = b"\xff not json";
    let sig = hex_hmac(SECRET, body);
    for (scheme, header) in [
        (
            Scheme::SumsubDigest { allow_sha1: false },
            "x-payload-digest",
        ),
        (Scheme::Veriff, "x-hmac-signature"),
        (Scheme::Onfido, "x-sha2-signature"),
    ] {
        let v = check(scheme, &headers(&[(header, &sig)]), body).unwrap();
        assert_eq!((v.session_id, v.event_type), (None, None));
        assert_eq!(
            check(scheme, &headers(&[(header, &sig.to_uppercase())]), body),
            Err(Rejected::Malformed(header)),
            "every provider documents lowercase hex"
        );
    }
}

#[test]
fn veriff_and_onfido_name_the_session_and_the_event() {
    for (body, session, kind) in [
        (
            r#"{"status":"success","verification":{"id":"v-1","status":"approved"}}"#,
            "v-1",
            "decision",
        ),
        (
            r#"{"id":"v-2","action":"submitted","code":7002}"#,
            "v-2",
            "submitted",
        ),
        (
            r#"{"sessionId":"v-3","eventType":"fullauto","data":{}}"#,
            "v-3",
            "fullauto",
        ),
    ] {
        let h = headers(&[("x-hmac-signature", &hex_hmac(SECRET, body.as_bytes()))]);
        let v = check(Scheme::Veriff, &h, body.as_bytes()).unwrap();
        assert_eq!(
            (v.session_id.as_deref(), v.event_type.as_deref()),
            (Some(session), Some(kind))
        );
    }
    let body = br#"{"payload":{"action":"workflow_run.completed","object":{"id":"wr-1"}}}"#;
    let h = headers(&[("x-sha2-signature", &hex_hmac(SECRET, body))]);
    let v = check(Scheme::Onfido, &h, body).unwrap();
    assert_eq!(v.session_id.as_deref(), Some("wr-1"));
    assert_eq!(v.event_type.as_deref(), Some("workflow_run.completed"));
}

#[test]
fn persona_accepts_any_group_and_checks_its_t() {
    let body = br#"{"data":{"id":"evt_1","attributes":{"name":"inquiry.approved","payload":{"data":{"id":"inq_1"}}}}}"#;
    let sign = |secret: &[u8], t: u64| {
        let mut m = format!("{t}.").into_bytes();
        m.extend_from_slice(body);
        hex_hmac(secret, &m)
    };
    let header = format!(
        "t={NOW},v1={} t={NOW},v1={}",
        sign(b"someone else", NOW),
        sign(OLD, NOW)
    );
    let v = check(
        Scheme::Persona,
        &headers(&[("persona-signature", &header)]),
        body,
    )
    .unwrap();
    assert_eq!(v.secret_index, 1);
    assert_eq!(v.event_id.as_deref(), Some("evt_1"));
    assert_eq!(v.session_id.as_deref(), Some("inq_1"));
    assert_eq!(v.event_type.as_deref(), Some("inquiry.approved"));
    assert_eq!(v.timestamp, Some(now()));
    // t is signed: moving it breaks the signature; an old genuine one is stale.
    let moved = format!("t={},v1={}", NOW + 1, sign(SECRET, NOW));
    assert_eq!(
        check(
            Scheme::Persona,
            &headers(&[("persona-signature", &moved)]),
            body
        ),
        Err(Rejected::BadSignature)
    );
    let old = format!("t={},v1={}", NOW - 400, sign(SECRET, NOW - 400));
    assert_eq!(
        check(
            Scheme::Persona,
            &headers(&[("persona-signature", &old)]),
            body
        ),
        Err(Rejected::Stale { age_secs: 400 })
    );
}

#[test]
fn one_or_two_secrets() {
    let h = HeaderMap::new();
    for secrets in [&[][..], &[SECRET, OLD, SECRET][..]] {
        assert_eq!(
            verify(&Scheme::Onfido, secrets, &h, b"", now(), DEFAULT_TOLERANCE),
            Err(Rejected::Secrets {
                given: secrets.len()
            })
        );
    }
}

#[test]
fn missing_and_repeated_headers_are_named() {
    for scheme in Scheme::NAMES {
        let scheme: Scheme = scheme.parse().unwrap();
        let got = check(scheme, &HeaderMap::new(), b"{}");
        assert!(
            matches!(got, Err(Rejected::Missing(_))),
            "{scheme:?}: {got:?}"
        );
    }
    let sig = hex_hmac(SECRET, b"{}");
    let h = headers(&[("x-sha2-signature", &sig), ("x-sha2-signature", &sig)]);
    assert_eq!(
        check(Scheme::Onfido, &h, b"{}"),
        Err(Rejected::Malformed("x-sha2-signature"))
    );
}

#[test]
fn names_round_trip() {
    for name in Scheme::NAMES {
        assert_eq!(name.parse::<Scheme>().unwrap().name(), name);
    }
    for name in V2Form::NAMES {
        assert_eq!(name.parse::<V2Form>().unwrap().name(), name);
    }
    assert!("didit-v3".parse::<Scheme>().is_err());
    assert!("timestamp:".parse::<V2Form>().is_err());
    assert_eq!(V2Form::default().name(), "unescaped");
}

#[test]
fn ids_are_bounded_and_printable() {
    let long = "x".repeat(MAX_ID_LEN + 1);
    for (id, reported) in [
        ("ok", true),
        ("", false),
        ("a\\u0007b", false),
        (long.as_str(), false),
    ] {
        let body = format!(r#"{{"event_id":"{id}","timestamp":{NOW}}}"#);
        let h = headers(&[("x-signature", &hex_hmac(SECRET, body.as_bytes()))]);
        let v = check(Scheme::DiditSignature, &h, body.as_bytes()).unwrap();
        assert_eq!(v.event_id.is_some(), reported, "{id:?}");
        assert_eq!(v.replay_key.starts_with("event:"), reported);
    }
}
