#!/usr/bin/env python3
"""Writes the webhook signature test vectors in this directory, one JSON file per provider.

Computed independently of the Rust verifier, with Python's standard library only, the way
each provider documents its signature. For Didit, the provider's own recipe:

    body = json.dumps(shorten_floats(envelope), sort_keys=True, separators=(",", ":"))
    hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()

with `ensure_ascii=False` (or the default) for the `X-Signature-V2` forms.

Each vector: the scheme (and its options), the secrets (current first), `now` and the
tolerance in seconds, the request headers, the exact body, and what the verifier must
answer: the event it reports, or the reason (`Rejected::reason`) it refuses.

    python3 make_vectors.py           # rewrite the files
    python3 make_vectors.py --check   # exit 1 if the files are not what this script writes

Everything is fixed (secrets, ids, times), so the output is the same on every run.
"""

import hashlib
import hmac
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

NOW = 1767225600  # 2026-01-01T00:00:00Z
TOLERANCE = 300
SECRET = "whsec_current_5f1d0c9e"
PREVIOUS = "whsec_previous_8a2b7e41"
WRONG = "whsec_someone_else"


def mac(secret, message, digest=hashlib.sha256):
    if isinstance(message, str):
        message = message.encode()
    return hmac.new(secret.encode(), message, digest).hexdigest()


def sha256_key(message):
    if isinstance(message, str):
        message = message.encode()
    return "sha256:" + hashlib.sha256(message).hexdigest()


def shorten_floats(d):
    """Didit's: whole-number floats become integers."""
    if isinstance(d, dict):
        return {k: shorten_floats(v) for k, v in d.items()}
    if isinstance(d, list):
        return [shorten_floats(v) for v in d]
    if isinstance(d, float) and d.is_integer():
        return int(d)
    return d


def canonical(body, ensure_ascii):
    return json.dumps(
        shorten_floats(body), sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii
    )


def vector(name, scheme, headers, body, expect, secrets=(SECRET,), now=NOW, **options):
    v = {"name": name, "scheme": scheme}
    v.update(options)
    v.update(
        {
            "secrets": list(secrets),
            "now": now,
            "tolerance": TOLERANCE,
            "headers": [list(h) for h in headers],
            "body": body,
            "expect": expect,
        }
    )
    return v


def ok(replay_key, secret_index=0, event_id=None, session_id=None, event_type=None,
       timestamp=None, body_signed=True):
    return {
        "ok": {
            "event_id": event_id,
            "session_id": session_id,
            "event_type": event_type,
            "timestamp": timestamp,
            "replay_key": replay_key,
            "secret_index": secret_index,
            "body_signed": body_signed,
        }
    }


def error(reason):
    return {"error": reason}


def change_one_byte(body, old, new):
    assert body.count(old) == 1, old
    assert len(old) == len(new)
    return body.replace(old, new)


# ---- Didit ---------------------------------------------------------------------------

EVENT_ID = "3f7e1b52-9c4d-4a8e-b1f0-6d2c8e5a9b17"
SESSION_ID = "11111111-2222-4333-8444-555555555555"


def didit_envelope(ts, status="Approved"):
    """A status.updated event as Didit sends it: non-ASCII personal data and whole floats,
    so that the escaped and unescaped forms (and V1 and V2) differ."""
    return {
        "event_id": EVENT_ID,
        "webhook_type": "status.updated",
        "timestamp": ts,
        "created_at": ts - 120,
        "application_id": "a1b2c3d4-0000-4000-8000-00000000000a",
        "environment": "sandbox",
        "session_id": SESSION_ID,
        "status": status,
        "workflow_id": "6f1c2e0a-8d4b-4c3e-9a7f-2b5d8e1c4a90",
        "vendor_data": "user-42",
        "metadata": {"plan": "gold"},
        "decision": {
            "status": status,
            "id_verifications": [
                {
                    "status": "Approved",
                    "full_name": "Carmen Española Española",
                    "address": "Avenida de España 34, 28001 Madrid",
                    "age": 46,
                    "warnings": [],
                }
            ],
            "liveness_checks": [{"status": "Approved", "score": 89.92, "age_estimation": 38.6}],
            "face_matches": [{"status": "Approved", "score": 94.76}],
            "aml_screenings": [{"status": "Approved", "score": 0.0, "total_hits": 0}],
        },
    }


def didit_event(ts, key, secret_index=0, body_signed=True, event_id=EVENT_ID):
    return ok(key, secret_index, event_id, SESSION_ID, "status.updated", ts, body_signed)


def didit_vectors():
    out = []
    ts = NOW - 30
    env = didit_envelope(ts)
    wire = canonical(env, ensure_ascii=True)  # the body as Didit sends it
    utf8 = canonical(env, ensure_ascii=False)
    assert wire != utf8
    sig = mac(SECRET, wire)
    event = didit_event(ts, "event:" + EVENT_ID)
    t = str(ts)

    # X-Signature: HMAC of the raw body.
    out += [
        vector("signature/valid", "didit", [("X-Signature", sig), ("X-Timestamp", t)], wire, event),
        vector("signature/valid-without-x-timestamp", "didit", [("X-Signature", sig)], wire, event),
        vector(
            "signature/rotation-previous-secret",
            "didit",
            [("X-Signature", mac(PREVIOUS, wire)), ("X-Timestamp", t)],
            wire,
            didit_event(ts, "event:" + EVENT_ID, secret_index=1),
            secrets=(SECRET, PREVIOUS),
        ),
        vector(
            "signature/previous-secret-after-rotation",
            "didit",
            [("X-Signature", mac(PREVIOUS, wire))],
            wire,
            error("bad_signature"),
        ),
        vector("signature/wrong-secret", "didit", [("X-Signature", mac(WRONG, wire))], wire,
               error("bad_signature")),
        vector(
            "signature/one-byte-changed",
            "didit",
            [("X-Signature", sig)],
            change_one_byte(wire, '"vendor_data":"user-42"', '"vendor_data":"user-43"'),
            error("bad_signature"),
        ),
        vector("signature/unescaped-body", "didit", [("X-Signature", sig)], utf8,
               error("bad_signature")),
        vector("signature/uppercase-hex", "didit", [("X-Signature", sig.upper())], wire,
               error("malformed")),
        vector("signature/missing", "didit", [("X-Timestamp", t)], wire, error("missing")),
        vector("signature/x-timestamp-disagrees", "didit",
               [("X-Signature", sig), ("X-Timestamp", str(ts + 1))], wire,
               error("timestamp_mismatch")),
    ]
    stale_ts, future_ts = NOW - TOLERANCE - 1, NOW + TOLERANCE + 1
    for name, when, reason in [("stale", stale_ts, "stale"), ("future", future_ts, "future")]:
        body = canonical(didit_envelope(when), ensure_ascii=True)
        out.append(vector("signature/" + name, "didit",
                          [("X-Signature", mac(SECRET, body)), ("X-Timestamp", str(when))],
                          body, error(reason)))
    edge = canonical(didit_envelope(NOW - TOLERANCE), ensure_ascii=True)
    out.append(vector("signature/exactly-the-tolerance", "didit",
                      [("X-Signature", mac(SECRET, edge))], edge,
                      didit_event(NOW - TOLERANCE, "event:" + EVENT_ID)))
    # Without an event id, the replay key is the digest of what was signed.
    no_event_id = dict(env)
    del no_event_id["event_id"]
    body = canonical(no_event_id, ensure_ascii=True)
    out.append(vector("signature/no-event-id", "didit", [("X-Signature", mac(SECRET, body))],
                      body, didit_event(ts, sha256_key(body), event_id=None)))

    # X-Signature-V2: the canonical JSON, in each form.
    forms = {
        "unescaped": utf8,
        "ascii": wire,
        "timestamp:unescaped": t + ":" + utf8,
        "timestamp:ascii": t + ":" + wire,
    }
    for form, message in forms.items():
        v2 = mac(SECRET, message)
        out.append(vector("signature-v2/" + form, "didit-v2", [("X-Signature-V2", v2), ("X-Timestamp", t)],
                          wire, event, v2_form=form))
        for other in forms:
            if other != form:
                out.append(vector("signature-v2/%s-signed-checked-as-%s" % (form, other), "didit-v2",
                                  [("X-Signature-V2", v2)], wire, error("bad_signature"),
                                  v2_form=other))
    # What V2 is for: a body re-serialised on its way (pretty-printed, non-ASCII unescaped)
    # no longer matches X-Signature, but its canonical form still matches V2.
    reserialised = json.dumps(env, indent=2, ensure_ascii=False)
    v2 = mac(SECRET, utf8)
    out += [
        vector("signature-v2/re-serialised-body", "didit-v2",
               [("X-Signature-V2", v2), ("X-Timestamp", t)], reserialised, event,
               v2_form="unescaped"),
        vector("signature/re-serialised-body", "didit", [("X-Signature", sig)], reserialised,
               error("bad_signature")),
        vector("signature-v2/rotation-previous-secret", "didit-v2",
               [("X-Signature-V2", mac(PREVIOUS, utf8))], wire,
               didit_event(ts, "event:" + EVENT_ID, secret_index=1),
               secrets=(SECRET, PREVIOUS), v2_form="unescaped"),
        vector("signature-v2/wrong-secret", "didit-v2", [("X-Signature-V2", mac(WRONG, utf8))],
               wire, error("bad_signature"), v2_form="unescaped"),
        vector("signature-v2/value-changed", "didit-v2", [("X-Signature-V2", v2)],
               change_one_byte(wire, '"vendor_data":"user-42"', '"vendor_data":"user-43"'),
               error("bad_signature"), v2_form="unescaped"),
    ]
    stale = didit_envelope(stale_ts)
    out.append(vector("signature-v2/stale", "didit-v2",
                      [("X-Signature-V2", mac(SECRET, canonical(stale, False)))],
                      canonical(stale, True), error("stale"), v2_form="unescaped"))

    # X-Signature-Simple: four fields.
    simple_message = "%d:%s:%s:%s" % (ts, SESSION_ID, "Approved", "status.updated")
    simple = mac(SECRET, simple_message)
    simple_event = didit_event(ts, sha256_key(simple_message), body_signed=False, event_id=None)
    out += [
        vector("signature-simple/valid", "didit-simple",
               [("X-Signature-Simple", simple), ("X-Timestamp", t)], wire, simple_event),
        # Only the four fields are signed: the rest of the body can change unnoticed, which
        # is why the verifier reports body_signed = false.
        vector("signature-simple/unsigned-part-changed", "didit-simple",
               [("X-Signature-Simple", simple)],
               change_one_byte(wire, '"vendor_data":"user-42"', '"vendor_data":"user-43"'),
               simple_event),
        vector("signature-simple/status-changed", "didit-simple", [("X-Signature-Simple", simple)],
               canonical(didit_envelope(ts, status="Declined"), True), error("bad_signature")),
        vector("signature-simple/rotation-previous-secret", "didit-simple",
               [("X-Signature-Simple", mac(PREVIOUS, simple_message))], wire,
               didit_event(ts, sha256_key(simple_message), 1, False, None),
               secrets=(SECRET, PREVIOUS)),
        vector("signature-simple/wrong-secret", "didit-simple",
               [("X-Signature-Simple", mac(WRONG, simple_message))], wire,
               error("bad_signature")),
    ]
    stale_message = "%d:%s:%s:%s" % (stale_ts, SESSION_ID, "Approved", "status.updated")
    out.append(vector("signature-simple/stale", "didit-simple",
                      [("X-Signature-Simple", mac(SECRET, stale_message))],
                      canonical(stale, True), error("stale")))
    return out


# ---- Sumsub --------------------------------------------------------------------------

def sumsub_vectors():
    # As Sumsub posts it (Java's pretty printer): whitespace and key order are the sender's.
    body = json.dumps(
        {
            "applicantId": "5cb56e8e0a975a35f333cb83",
            "inspectionId": "5cb56e8e0a975a35f333cb84",
            "correlationId": "req-a260b669-4f14-4bb5-a4c5-ac0218acb9a4",
            "externalUserId": "user-42",
            "levelName": "basic-kyc-level",
            "type": "applicantReviewed",
            "reviewResult": {"reviewAnswer": "GREEN"},
            "reviewStatus": "completed",
            "createdAtMs": "2026-01-01 00:00:00.000",
            "sandboxMode": False,
        },
        indent=2,
    )
    event = ok(sha256_key(body), 0, None, "5cb56e8e0a975a35f333cb83", "applicantReviewed")
    sha256 = mac(SECRET, body)
    sha512 = mac(SECRET, body, hashlib.sha512)
    sha1 = mac(SECRET, body, hashlib.sha1)
    digest, alg = "X-Payload-Digest", "X-Payload-Digest-Alg"
    return [
        vector("sha256-default", "sumsub", [(digest, sha256)], body, event),
        vector("sha256", "sumsub", [(digest, sha256), (alg, "HMAC_SHA256_HEX")], body, event),
        vector("sha512", "sumsub", [(digest, sha512), (alg, "HMAC_SHA512_HEX")], body, event),
        vector("sha512-named-sha256", "sumsub", [(digest, sha512), (alg, "HMAC_SHA256_HEX")],
               body, error("malformed")),
        vector("sha1-allowed", "sumsub", [(digest, sha1), (alg, "HMAC_SHA1_HEX")], body, event,
               allow_sha1=True),
        vector("sha1-not-allowed", "sumsub", [(digest, sha1), (alg, "HMAC_SHA1_HEX")], body,
               error("sha1_not_allowed")),
        vector("unknown-algorithm", "sumsub", [(digest, sha256), (alg, "HMAC_SHA384_HEX")], body,
               error("unknown_algorithm")),
        vector("rotation-previous-secret", "sumsub",
               [(digest, mac(PREVIOUS, body, hashlib.sha512)), (alg, "HMAC_SHA512_HEX")], body,
               ok(sha256_key(body), 1, None, "5cb56e8e0a975a35f333cb83", "applicantReviewed"),
               secrets=(SECRET, PREVIOUS)),
        vector("wrong-secret", "sumsub", [(digest, mac(WRONG, body))], body,
               error("bad_signature")),
        vector("one-byte-changed", "sumsub", [(digest, sha256)],
               change_one_byte(body, '"GREEN"', '"GREEM"'), error("bad_signature")),
        vector("missing", "sumsub", [(alg, "HMAC_SHA256_HEX")], body, error("missing")),
    ]


# ---- Veriff --------------------------------------------------------------------------

def veriff_vectors():
    decision = json.dumps(
        {
            "status": "success",
            "verification": {
                "id": "12df6045-3846-3e45-946a-14fa6136d78b",
                "code": 9001,
                "status": "approved",
                "reason": None,
                "reasonCode": None,
                "vendorData": "user-42",
                "person": {"firstName": "Erika", "lastName": "Mustermann", "idNumber": None},
                "decisionTime": "2026-01-01T00:00:00.000Z",
                "acceptanceTime": "2025-12-31T23:58:00.000Z",
            },
            "technicalData": {"ip": "192.0.2.7"},
        },
        separators=(",", ":"),
    )
    started = json.dumps(
        {"id": "12df6045-3846-3e45-946a-14fa6136d78b", "attemptId": "f5c0bb8e-0000-4000-8000-000000000001",
         "feature": "selfid", "code": 7001, "action": "started", "vendorData": "user-42"}
    )
    sid = "12df6045-3846-3e45-946a-14fa6136d78b"
    sig = mac(SECRET, decision)
    event = ok(sha256_key(decision), 0, None, sid, "decision")
    h = "X-HMAC-SIGNATURE"
    return [
        vector("decision", "veriff", [(h, sig)], decision, event),
        vector("decision-uppercase-hex", "veriff", [(h, sig.upper())], decision,
               error("malformed")),
        vector("event-started", "veriff", [(h, mac(SECRET, started))], started,
               ok(sha256_key(started), 0, None, sid, "started")),
        vector("rotation-previous-secret", "veriff", [(h, mac(PREVIOUS, decision))], decision,
               ok(sha256_key(decision), 1, None, sid, "decision"), secrets=(SECRET, PREVIOUS)),
        vector("wrong-secret", "veriff", [(h, mac(WRONG, decision))], decision,
               error("bad_signature")),
        vector("one-byte-changed", "veriff", [(h, sig)],
               change_one_byte(decision, '"status":"approved"', '"status":"approvee"'),
               error("bad_signature")),
        vector("missing", "veriff", [], decision, error("missing")),
    ]


# ---- Onfido --------------------------------------------------------------------------

def onfido_vectors():
    body = json.dumps(
        {
            "payload": {
                "resource_type": "workflow_run",
                "action": "workflow_run.completed",
                "object": {
                    "id": "c3f4a9e2-7b1d-4e6a-9f0c-2d8b5e1a7c34",
                    "status": "approved",
                    "completed_at_iso8601": "2026-01-01T00:00:00Z",
                    "href": "https://api.eu.onfido.com/v3.6/workflow_runs/c3f4a9e2-7b1d-4e6a-9f0c-2d8b5e1a7c34",
                },
            }
        }
    )
    sig = mac(SECRET, body)
    event = ok(sha256_key(body), 0, None, "c3f4a9e2-7b1d-4e6a-9f0c-2d8b5e1a7c34",
               "workflow_run.completed")
    h = "X-SHA2-Signature"
    return [
        vector("workflow-run-completed", "onfido", [(h, sig)], body, event),
        vector("rotation-previous-secret", "onfido", [(h, mac(PREVIOUS, body))], body,
               ok(sha256_key(body), 1, None, "c3f4a9e2-7b1d-4e6a-9f0c-2d8b5e1a7c34",
                  "workflow_run.completed"), secrets=(SECRET, PREVIOUS)),
        vector("uppercase-hex", "onfido", [(h, sig.upper())], body, error("malformed")),
        vector("wrong-secret", "onfido", [(h, mac(WRONG, body))], body, error("bad_signature")),
        vector("one-byte-changed", "onfido", [(h, sig)],
               change_one_byte(body, '"status": "approved"', '"status": "declined"'),
               error("bad_signature")),
        vector("sha1-x-signature-only", "onfido", [("X-Signature", mac(SECRET, body, hashlib.sha1))],
               body, error("missing")),
    ]


# ---- Persona -------------------------------------------------------------------------

def persona_vectors():
    body = json.dumps(
        {
            "data": {
                "type": "event",
                "id": "evt_XGuYWp1WcH2tKVCZLSs4Jbv4",
                "attributes": {
                    "name": "inquiry.approved",
                    "created-at": "2026-01-01T00:00:00.000Z",
                    "payload": {
                        "data": {
                            "type": "inquiry",
                            "id": "inq_2CVZ4HyVg7qaboXz2YfRh9bD",
                            "attributes": {"status": "approved", "reference-id": "user-42"},
                        }
                    },
                },
            }
        }
    )

    def group(secret, t):
        return "t=%d,v1=%s" % (t, mac(secret, "%d.%s" % (t, body)))

    t = NOW - 5

    def event(secret_index, ts=t):
        return ok("event:evt_XGuYWp1WcH2tKVCZLSs4Jbv4", secret_index,
                  "evt_XGuYWp1WcH2tKVCZLSs4Jbv4", "inq_2CVZ4HyVg7qaboXz2YfRh9bD",
                  "inquiry.approved", ts)

    h = "Persona-Signature"
    new_then_old = group(SECRET, t) + " " + group(PREVIOUS, t)
    old_then_new = group(PREVIOUS, t) + " " + group(SECRET, t)
    return [
        vector("one-group", "persona", [(h, group(SECRET, t))], body, event(0)),
        # During a rotation Persona sends a group per secret. Groups are tried in order, and
        # for each group the secrets in order (current first): the first match is reported.
        vector("two-groups-gateway-has-both", "persona", [(h, old_then_new)], body, event(1),
               secrets=(SECRET, PREVIOUS)),
        vector("two-groups-gateway-has-new", "persona", [(h, old_then_new)], body, event(0)),
        vector("two-groups-gateway-has-old", "persona", [(h, new_then_old)], body, event(0),
               secrets=(PREVIOUS,)),
        vector("two-groups-neither", "persona", [(h, new_then_old)], body,
               error("bad_signature"), secrets=(WRONG,)),
        vector("wrong-secret", "persona", [(h, group(WRONG, t))], body, error("bad_signature")),
        vector("one-byte-changed", "persona", [(h, group(SECRET, t))],
               change_one_byte(body, '"inquiry.approved"', '"inquiry.declined"'),
               error("bad_signature")),
        vector("t-moved", "persona", [(h, group(SECRET, t).replace("t=%d" % t, "t=%d" % (t + 1)))],
               body, error("bad_signature")),
        vector("stale", "persona", [(h, group(SECRET, NOW - TOLERANCE - 1))], body,
               error("stale")),
        vector("future", "persona", [(h, group(SECRET, NOW + TOLERANCE + 1))], body,
               error("future")),
        vector("stale-group-and-fresh-forgery", "persona",
               [(h, group(WRONG, t) + " " + group(SECRET, NOW - 3600))], body, error("stale")),
        vector("five-groups", "persona", [(h, " ".join([group(SECRET, t)] * 5))], body,
               error("malformed")),
        vector("uppercase-hex", "persona", [(h, group(SECRET, t).upper().replace("T=", "t=").replace("V1=", "v1="))],
               body, error("malformed")),
        vector("missing", "persona", [], body, error("missing")),
    ]


FILES = {
    "didit.json": didit_vectors,
    "sumsub.json": sumsub_vectors,
    "veriff.json": veriff_vectors,
    "onfido.json": onfido_vectors,
    "persona.json": persona_vectors,
}


def render(make):
    doc = {
        "generated_by": "make_vectors.py (do not edit by hand)",
        "vectors": make(),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] and not check:
        sys.exit("usage: make_vectors.py [--check]")
    stale = []
    for name, make in FILES.items():
        path = os.path.join(HERE, name)
        text = render(make)
        if check:
            try:
                with open(path, encoding="utf-8") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != text:
                stale.append(name)
        else:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
    if stale:
        sys.exit("out of date (run make_vectors.py): " + ", ".join(stale))


if __name__ == "__main__":
    main()
