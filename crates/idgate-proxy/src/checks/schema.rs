//! A route's `schema`: the request body must be JSON (`415` for another content type,
//! `400 invalid-json` with the line and column where parsing failed) satisfying the route's
//! JSON Schema (`422 schema-violation`, with a JSON pointer into the body for each failing
//! place, at most [`MAX_ERRORS`]). RFC 9110 §15.5.21: 422 is for content whose type and
//! syntax are right but whose instructions cannot be processed, which is what a schema
//! violation is.
//!
//! The body the schema judges must be the body the upstream reads. An object that names a
//! member twice is not JSON here (`400`): parsers disagree on which of the two counts, and
//! `{"callback": "http://…", "callback": "https://…"}` would pass the schema by its last
//! member and reach an upstream that keeps the first. A request with two `Content-Type`
//! headers is refused (`415`) for the same reason: the upstream might read the body by the
//! other one.
//!
//! Nothing the caller sent is echoed: a failure names where (the pointer) and which rule
//! of the schema (its keyword), never the value, which may be personal data.
//! Requests of methods without a body (GET, HEAD, OPTIONS, DELETE) are not checked: the
//! body rule (`no_body`) refuses their bodies.

use http::header::{CONTENT_TYPE, HeaderMap};
use http::request::Parts;
use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

use super::json_response::is_json;
use crate::ctx::RequestCtx;
use crate::problem::{Refusal, SchemaFailure};
use crate::upstream::Upstream;

/// The most failures one answer lists.
pub(crate) const MAX_ERRORS: usize = 20;

pub(super) async fn check(
    ctx: &mut RequestCtx<'_>,
    validator: &jsonschema::Validator,
    upstream: &Upstream,
    req: &Parts,
) -> Result<(), Refusal> {
    if idgate_config::body_needs_opt_in(&req.method) {
        return Ok(());
    }
    if !declares_json(&req.headers) {
        return Err(Refusal::UnsupportedMediaType);
    }
    let body = ctx
        .read_body(upstream.max_body_bytes, upstream.request_timeout)
        .await?;
    let doc = parse(&body)?;
    let errors = failures(validator, &doc);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Refusal::SchemaViolation { errors })
    }
}

/// Whether the request's one `Content-Type` says its body is JSON in UTF-8.
pub(crate) fn declares_json(headers: &HeaderMap) -> bool {
    headers.get_all(CONTENT_TYPE).iter().nth(1).is_none() && is_json(headers)
}

/// The body as a document, refused where it is not JSON or an object names a member twice.
fn parse(body: &[u8]) -> Result<Value, Refusal> {
    idgate_auth::jwt::json::value(body).map_err(|e| Refusal::InvalidJson {
        line: e.line(),
        column: e.column(),
        what: match e.classify() {
            serde_json::error::Category::Eof => "the body ends too early",
            // The only data error the strict parse raises.
            serde_json::error::Category::Data => "a member name given twice",
            _ => "a syntax error",
        },
    })
}

/// Where `doc` fails the schema and which keyword, without the values found there.
pub(crate) fn failures(validator: &jsonschema::Validator, doc: &Value) -> Vec<SchemaFailure> {
    let mut out = Vec::new();
    for e in validator.iter_errors(doc) {
        let at = e.instance_path().as_str();
        match e.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                for name in unexpected {
                    out.push(SchemaFailure {
                        pointer: child(at, name),
                        detail: "is not allowed here".to_owned(),
                    });
                }
            }
            ValidationErrorKind::Required { property } => out.push(SchemaFailure {
                pointer: child(at, property.as_str().unwrap_or_default()),
                detail: "is required".to_owned(),
            }),
            kind => out.push(SchemaFailure {
                pointer: at.to_owned(),
                detail: format!("does not satisfy the schema's \"{}\"", kind.keyword()),
            }),
        }
        if out.len() >= MAX_ERRORS {
            out.truncate(MAX_ERRORS);
            break;
        }
    }
    out
}

/// The JSON pointer (RFC 6901) of member `name` under `parent`.
fn child(parent: &str, name: &str) -> String {
    format!("{parent}/{}", name.replace('~', "~0").replace('/', "~1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_object_naming_a_member_twice_is_not_json_here() {
        for body in [
            &br#"{"callback":"http://evil.example/","callback":"https://ok.example/"}"#[..],
            br#"{"a":{"b":1,"c":2,"b":3}}"#,
            br#"[{"x":1},{"x":1,"x":1}]"#,
            // The same name written two ways.
            br#"{"a":1,"\u0061":2}"#,
        ] {
            match parse(body) {
                Err(Refusal::InvalidJson { what, .. }) => {
                    assert_eq!(what, "a member name given twice", "{body:?}");
                }
                other => panic!("{body:?}: {other:?}"),
            }
        }
        let doc = parse(br#"{"a":{"b":[1,-2,3.5,"x",null,true]},"b":{"a":1}}"#).unwrap();
        assert_eq!(
            doc,
            json!({"a": {"b": [1, -2, 3.5, "x", null, true]}, "b": {"a": 1}})
        );
        assert!(matches!(
            parse(b"{\"a\":"),
            Err(Refusal::InvalidJson {
                what: "the body ends too early",
                ..
            })
        ));
        assert!(matches!(
            parse(b"{\"a\" 1}"),
            Err(Refusal::InvalidJson {
                what: "a syntax error",
                ..
            })
        ));
        // Nesting stays bounded as with `serde_json`'s own documents.
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn failures_name_pointers_and_keywords_never_values() {
        let schema = json!({
            "type": "object",
            "required": ["workflow_id"],
            "additionalProperties": false,
            "properties": {
                "workflow_id": {"type": "string"},
                "contact_details": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}}}
            }
        });
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let doc = json!({"is_admin/x": true, "contact_details": {"email": "jane.doe-secret"}});
        let mut f = failures(&v, &doc);
        f.sort_by(|a, b| a.pointer.cmp(&b.pointer));
        let pointers: Vec<&str> = f.iter().map(|f| f.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            ["/contact_details/email", "/is_admin~1x", "/workflow_id"]
        );
        assert!(!format!("{f:?}").contains("jane.doe-secret"));
        assert!(failures(&v, &json!({"workflow_id": "w"})).is_empty());
    }
}
