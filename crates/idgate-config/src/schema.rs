//! A route's `schema`: the JSON Schema (draft 2020-12) its request bodies must satisfy,
//! read and compiled when the configuration is loaded, so `idgate check` reports a broken
//! schema with its key path and every request of a snapshot shares one compiled validator.
//!
//! References are resolved inside the schema document only (`#/$defs/…`): the validator is
//! built without its HTTP and file retrievers, so a `$ref` to another document is an error
//! at load time and nothing is fetched while requests are served.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::context::{Ctx, io_reason};

/// The largest schema file read: a schema is configuration, not data.
const MAX_SCHEMA_BYTES: u64 = 1024 * 1024;

/// A compiled request-body schema and the file it came from.
#[derive(Clone)]
pub struct RouteSchema {
    pub path: PathBuf,
    pub validator: Arc<jsonschema::Validator>,
}

impl fmt::Debug for RouteSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSchema")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Why a schema file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is larger than 1 MiB")]
    TooLarge { path: PathBuf },
    #[error("{path} is not JSON: {reason}")]
    NotJson { path: PathBuf, reason: String },
    #[error("{path} is not a valid JSON Schema (draft 2020-12): {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Reads and compiles the schema at `path` (draft 2020-12, `format` asserted).
pub fn compile_schema(path: &Path) -> Result<RouteSchema, SchemaError> {
    let read_err = |e: std::io::Error| SchemaError::Read {
        path: path.to_owned(),
        reason: io_reason(&e),
    };
    // A device or a pipe could be read (or wait to be opened) for ever: only a regular
    // file, looked at before it is opened, and only so much of it.
    if !std::fs::metadata(path).map_err(read_err)?.is_file() {
        return Err(SchemaError::Read {
            path: path.to_owned(),
            reason: "not a regular file".to_owned(),
        });
    }
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_SCHEMA_BYTES + 1),
        &mut text,
    )
    .map_err(read_err)?;
    if text.len() as u64 > MAX_SCHEMA_BYTES {
        return Err(SchemaError::TooLarge {
            path: path.to_owned(),
        });
    }
    let doc: Value = serde_json::from_slice(&text).map_err(|e| SchemaError::NotJson {
        path: path.to_owned(),
        reason: format!("line {}, column {}", e.line(), e.column()),
    })?;
    // Patterns run against callers' bodies: the `regex` engine matches in linear time, where
    // a backtracking one (lookaround, backreferences) could be made to take seconds.
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&doc)
        .map_err(|e| SchemaError::Invalid {
            path: path.to_owned(),
            reason: format!("{} at {}", e.kind().keyword(), schema_location(&e)),
        })?;
    Ok(RouteSchema {
        path: path.to_owned(),
        validator: Arc::new(validator),
    })
}

/// Where in the schema compilation failed; the message itself may quote the schema, which
/// is the operator's, so it is kept.
fn schema_location(e: &jsonschema::ValidationError<'_>) -> String {
    let at = e.schema_path().as_str();
    let at = if at.is_empty() { "the root" } else { at };
    format!("{at} ({e})")
}

pub(crate) fn route_schema(cx: &mut Ctx<'_>, key: &str, file: &str) -> Option<RouteSchema> {
    match compile_schema(&cx.path(file)) {
        Ok(s) => Some(s),
        Err(e) => {
            cx.err(key, e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("s.json");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn a_schema_compiles_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            r#"{"type":"object","required":["a"],"additionalProperties":false,
                "properties":{"a":{"type":"string","format":"uuid"}}}"#,
        );
        let s = compile_schema(&p).unwrap();
        let ok = serde_json::json!({"a": "3f0e5a4e-1b1c-4a3b-9a59-0c5e2f9e7d11"});
        assert!(s.validator.is_valid(&ok));
        assert!(!s.validator.is_valid(&serde_json::json!({"a": "x"})));
        assert!(
            !s.validator
                .is_valid(&serde_json::json!({"a": ok["a"], "b": 1}))
        );
    }

    #[test]
    fn remote_references_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        for r in ["https://example.com/s.json", "file:///etc/passwd"] {
            let p = write(dir.path(), &format!(r#"{{"$ref":"{r}"}}"#));
            assert!(
                matches!(compile_schema(&p), Err(SchemaError::Invalid { .. })),
                "{r}"
            );
        }
    }

    #[test]
    fn unreadable_and_invalid_schemas_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            compile_schema(&dir.path().join("none.json")),
            Err(SchemaError::Read { .. })
        ));
        assert!(matches!(
            compile_schema(Path::new("/dev/zero")),
            Err(SchemaError::Read { .. })
        ));
        let p = write(dir.path(), "{");
        assert!(matches!(
            compile_schema(&p),
            Err(SchemaError::NotJson { .. })
        ));
        // Lookaround needs a backtracking engine, which bodies are not matched with.
        let p = write(dir.path(), r#"{"type":"string","pattern":"^(?=a)a+$"}"#);
        assert!(matches!(
            compile_schema(&p),
            Err(SchemaError::Invalid { .. })
        ));
        let p = write(dir.path(), r#"{"type": 5}"#);
        assert!(matches!(
            compile_schema(&p),
            Err(SchemaError::Invalid { .. })
        ));
    }
}
