//! `[audit]`: the tamper-evident audit trail — where its files go, how they rotate, how often
//! checkpoints are signed and batches synced, its keys, its queue; and the routes' options:
//! what a route does when the queue is full (`on_audit_full`), and whether its path
//! parameters are personal data (`personal_path_params`: the trail then keeps the template).
//!
//! What the writer is made of ([`AuditWriterConfig`]) takes effect at restart; the policies
//! (`on_audit_full`, `block_timeout`, the routes' options) change with a reload.

use std::path::PathBuf;
use std::time::Duration;

use idgate_secrets::SecretRef;
use serde::Deserialize;

use crate::context::Ctx;

/// What a request does when the audit queue has no place for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnAuditFull {
    /// Wait up to `block_timeout` for a place, then refuse with 503.
    #[default]
    Block,
    /// Refuse with 503 at once.
    FailClosed,
}

impl OnAuditFull {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::FailClosed => "fail_closed",
        }
    }
}

/// How the trail is written. Changing any of it takes a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditWriterConfig {
    /// The directory of the trail's files.
    pub dir: PathBuf,
    pub rotate_size: u64,
    pub rotate_age: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub sync_interval: Duration,
    pub queue_capacity: usize,
    /// The Ed25519 key that signs checkpoints: a PKCS#8 key (`file:`, `env:`, `vault:`) or a
    /// key pair in a token (`pkcs11:`).
    pub signing_key: SecretRef,
    /// Public keys that verify the trail (`idgate audit verify --config`); when given, the
    /// signing key's must be among them.
    pub public_keys: Vec<PathBuf>,
    /// Encrypts new files when set.
    pub encryption_key: Option<SecretRef>,
    /// Keys of earlier files: to read the previous run's end after a key change, and for
    /// `idgate audit show --config`.
    pub previous_encryption_keys: Vec<SecretRef>,
}

/// `[audit]`, when enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub writer: AuditWriterConfig,
    /// The routes' default when the queue is full.
    pub on_full: OnAuditFull,
    /// How long a `block` route waits for a place.
    pub block_timeout: Duration,
    /// Refused connections recorded one by one per second (a second's worth at once); past
    /// it they are counted, and one record a second says how many of each kind.
    pub connection_records_per_second: u32,
}

/// A route's audit options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteAudit {
    /// Overrides `[audit] on_audit_full` for this route.
    pub on_full: Option<OnAuditFull>,
    /// The path's parameters are personal data: the trail records the route's template, never
    /// the path as sent.
    pub personal_path_params: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    rotate_size: Option<toml::Value>,
    #[serde(default)]
    rotate_age: Option<String>,
    #[serde(default)]
    checkpoint_every: Option<i64>,
    #[serde(default)]
    checkpoint_interval: Option<String>,
    #[serde(default)]
    sync_interval: Option<String>,
    #[serde(default)]
    queue_capacity: Option<i64>,
    #[serde(default)]
    signing_key: Option<String>,
    #[serde(default)]
    public_keys: Vec<String>,
    #[serde(default)]
    encryption_key: Option<String>,
    #[serde(default)]
    previous_encryption_keys: Vec<String>,
    #[serde(default)]
    on_audit_full: Option<String>,
    #[serde(default)]
    block_timeout: Option<String>,
    #[serde(default)]
    connection_records_per_second: Option<i64>,
}

const DEFAULT_ROTATE_SIZE: u64 = 64 << 20;
const DEFAULT_ROTATE_AGE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CHECKPOINT_EVERY: u64 = 1000;
const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_QUEUE_CAPACITY: usize = 8192;
const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_millis(100);
/// About 200 KiB of trail a second at most for refused connections, whatever a peer does.
const DEFAULT_CONNECTION_RECORDS_PER_SECOND: u32 = 200;

/// `"64MiB"`, `"512KiB"`, `"1GiB"`, or a number of bytes.
fn size(cx: &mut Ctx<'_>, key: &str, v: Option<toml::Value>, default: u64) -> u64 {
    let parsed = match v {
        None => return default,
        Some(toml::Value::Integer(n)) => u64::try_from(n).ok(),
        Some(toml::Value::String(s)) => {
            let s = s.trim();
            let (digits, unit) =
                s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let scale = match unit.trim() {
                "" | "B" => Some(1),
                "KiB" => Some(1 << 10),
                "MiB" => Some(1 << 20),
                "GiB" => Some(1 << 30),
                _ => None,
            };
            digits
                .parse::<u64>()
                .ok()
                .zip(scale)
                .and_then(|(n, s)| n.checked_mul(s))
        }
        Some(_) => None,
    };
    match parsed {
        Some(n) if n >= 4096 => n,
        Some(_) => {
            cx.err(key, "must be at least 4KiB");
            default
        }
        None => {
            cx.err(
                key,
                "must be a size such as \"64MiB\", \"512KiB\" or \"1GiB\", or a number of bytes",
            );
            default
        }
    }
}

fn on_full(cx: &mut Ctx<'_>, key: &str, v: &str) -> Option<OnAuditFull> {
    match v {
        "block" => Some(OnAuditFull::Block),
        "fail_closed" => Some(OnAuditFull::FailClosed),
        other => {
            cx.err(key, format!("\"{other}\" is not block or fail_closed"));
            None
        }
    }
}

fn secret(cx: &mut Ctx<'_>, key: &str, s: &str) -> Option<SecretRef> {
    let r = SecretRef::parse(s, cx.base)
        .map_err(|e| cx.err(key, e.to_string()))
        .ok()?;
    cx.secret_available(key, &r);
    Some(r)
}

/// `[audit]`; `None` when it is disabled.
pub(crate) fn parse(cx: &mut Ctx<'_>, a: RawAudit) -> Option<AuditConfig> {
    // Turned off, the section is kept for later: its keys need not be usable now.
    if !a.enabled.unwrap_or(true) {
        return None;
    }
    let dir = match &a.dir {
        Some(d) if !d.is_empty() => Some(cx.path(d)),
        _ => {
            cx.err(
                "audit.dir",
                "missing: the directory the trail's files are written to",
            );
            None
        }
    };
    let signing_key = match &a.signing_key {
        Some(s) => secret(cx, "audit.signing_key", s),
        None => {
            cx.err(
                "audit.signing_key",
                "missing: the Ed25519 key that signs checkpoints (file:PATH of a PKCS#8 key, or pkcs11:URI); `idgate audit keygen` makes one",
            );
            None
        }
    };
    let public_keys = a
        .public_keys
        .iter()
        .enumerate()
        .map(|(i, p)| cx.existing_file(&format!("audit.public_keys[{i}]"), p))
        .collect();
    let encryption_key = a
        .encryption_key
        .as_deref()
        .and_then(|s| secret(cx, "audit.encryption_key", s));
    let previous_encryption_keys = a
        .previous_encryption_keys
        .iter()
        .enumerate()
        .filter_map(|(i, s)| secret(cx, &format!("audit.previous_encryption_keys[{i}]"), s))
        .collect();
    let checkpoint_every = match a.checkpoint_every {
        None => DEFAULT_CHECKPOINT_EVERY,
        Some(n @ 1..=1_000_000) => n as u64,
        Some(_) => {
            cx.err(
                "audit.checkpoint_every",
                "must be between 1 and 1000000 entries",
            );
            DEFAULT_CHECKPOINT_EVERY
        }
    };
    let queue_capacity = match a.queue_capacity {
        None => DEFAULT_QUEUE_CAPACITY,
        Some(n @ 1..=1_000_000) => n as usize,
        Some(_) => {
            cx.err(
                "audit.queue_capacity",
                "must be between 1 and 1000000 records",
            );
            DEFAULT_QUEUE_CAPACITY
        }
    };
    let writer_rest = (
        size(cx, "audit.rotate_size", a.rotate_size, DEFAULT_ROTATE_SIZE),
        cx.duration("audit.rotate_age", a.rotate_age, DEFAULT_ROTATE_AGE),
        cx.duration(
            "audit.checkpoint_interval",
            a.checkpoint_interval,
            DEFAULT_CHECKPOINT_INTERVAL,
        ),
        cx.duration(
            "audit.sync_interval",
            a.sync_interval,
            DEFAULT_SYNC_INTERVAL,
        ),
    );
    let on_full_default = a
        .on_audit_full
        .as_deref()
        .and_then(|v| on_full(cx, "audit.on_audit_full", v))
        .unwrap_or_default();
    let block_timeout = cx.duration(
        "audit.block_timeout",
        a.block_timeout,
        DEFAULT_BLOCK_TIMEOUT,
    );
    if block_timeout > Duration::from_secs(10) {
        cx.err(
            "audit.block_timeout",
            "must be at most 10s: a request waits this long for a place in the queue",
        );
    }
    let connection_records_per_second = match a.connection_records_per_second {
        None => DEFAULT_CONNECTION_RECORDS_PER_SECOND,
        Some(n @ 1..=100_000) => n as u32,
        Some(_) => {
            cx.err(
                "audit.connection_records_per_second",
                "must be between 1 and 100000 records",
            );
            DEFAULT_CONNECTION_RECORDS_PER_SECOND
        }
    };
    let (rotate_size, rotate_age, checkpoint_interval, sync_interval) = writer_rest;
    if sync_interval > Duration::from_secs(10) {
        cx.err(
            "audit.sync_interval",
            "must be at most 10s: a crash loses up to this much of the trail",
        );
    }
    Some(AuditConfig {
        writer: AuditWriterConfig {
            dir: dir?,
            rotate_size,
            rotate_age,
            checkpoint_every,
            checkpoint_interval,
            sync_interval,
            queue_capacity,
            signing_key: signing_key?,
            public_keys,
            encryption_key,
            previous_encryption_keys,
        },
        on_full: on_full_default,
        block_timeout,
        connection_records_per_second,
    })
}

/// A route's `on_audit_full` and `personal_path_params`.
pub(crate) fn route(
    cx: &mut Ctx<'_>,
    key: &str,
    (on_audit_full, personal): (Option<String>, Option<bool>),
    path: &str,
    audit: bool,
) -> RouteAudit {
    let on_full = on_audit_full.as_deref().and_then(|v| {
        let k = format!("{key}.on_audit_full");
        if !audit {
            cx.err(&k, "there is no [audit] section (or it is disabled)");
        }
        on_full(cx, &k, v)
    });
    let personal_path_params = personal.unwrap_or(false);
    if personal_path_params && !path.contains('{') {
        cx.err(
            format!("{key}.personal_path_params"),
            "the path has no parameters to keep out of the audit trail",
        );
    }
    RouteAudit {
        on_full,
        personal_path_params,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::test_support::{BASE, problems};

    fn parse_text(dir: &Path, text: &str) -> Result<Option<AuditConfig>, Vec<String>> {
        let file = dir.join("idgate.toml");
        let mut cx = Ctx {
            file: &file,
            base: dir,
            errors: Vec::new(),
            check_secrets: true,
        };
        let raw: RawAudit = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let out = parse(&mut cx, raw);
        cx.finish(out)
    }

    fn key_file(dir: &Path) {
        let p = dir.join("signing.pem");
        std::fs::write(&p, "x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn defaults_and_sizes() {
        let dir = tempfile::tempdir().unwrap();
        key_file(dir.path());
        let a = parse_text(
            dir.path(),
            "dir = \"trail\"\nsigning_key = \"file:signing.pem\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.writer.dir, dir.path().join("trail"));
        assert_eq!(a.writer.rotate_size, 64 << 20);
        assert_eq!(a.writer.sync_interval, Duration::from_millis(100));
        assert_eq!(
            (a.on_full, a.block_timeout),
            (OnAuditFull::Block, Duration::from_millis(100))
        );
        assert_eq!(a.connection_records_per_second, 200);
        let a = parse_text(
            dir.path(),
            "dir = \"t\"\nsigning_key = \"file:signing.pem\"\nrotate_size = \"512KiB\"\non_audit_full = \"fail_closed\"",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.writer.rotate_size, a.on_full),
            (512 << 10, OnAuditFull::FailClosed)
        );
        assert_eq!(parse_text(dir.path(), "enabled = false").unwrap(), None);
        assert_eq!(
            parse_text(
                dir.path(),
                "enabled = false\nsigning_key = \"file:gone.pem\""
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn every_problem_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let errs = parse_text(
            dir.path(),
            "signing_key = \"sk_live_literal\"\nrotate_size = \"lots\"\non_audit_full = \"maybe\"\nqueue_capacity = 0\nencryption_key = \"file:missing.key\"\npublic_keys = [\"nope.pub\"]\nconnection_records_per_second = 0",
        )
        .unwrap_err();
        for key in [
            "audit.dir:",
            "audit.signing_key:",
            "audit.rotate_size:",
            "audit.on_audit_full:",
            "audit.queue_capacity:",
            "audit.encryption_key:",
            "audit.public_keys[0]:",
            "audit.connection_records_per_second:",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(key)), "{key} in {errs:?}");
        }
        assert!(errs.iter().all(|e| !e.contains("sk_live")), "{errs:?}");
    }

    /// The route errors of `BASE` with a route `extra` and `section`, as `key: reason`.
    fn route_errors(extra: &str, section: &str) -> Vec<String> {
        let text = format!(
            "{BASE}[[routes]]\nname = \"r\"\nmethods = [\"GET\"]\npath = \"/v1/session/{{id}}\"\nupstream = \"p\"\nallow = [\"spiffe://example.org/a\"]\n{extra}\n{section}"
        );
        problems(Path::new("t.toml"), &text, |e| e.key.starts_with("routes"))
    }

    #[test]
    fn route_options_are_checked_against_the_section_and_the_path() {
        assert_eq!(
            route_errors("personal_path_params = true", ""),
            Vec::<String>::new()
        );
        let errs = route_errors("on_audit_full = \"fail_closed\"", "");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[0].on_audit_full: there is no [audit]")),
            "{errs:?}"
        );
        let errs = route_errors(
            "on_audit_full = \"never\"",
            "[audit]\ndir = \"/tmp\"\nsigning_key = \"env:IDGATE_TEST_UNSET_KEY\"",
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("routes[0].on_audit_full: \"never\"")),
            "{errs:?}"
        );
        assert!(!errs.iter().any(|e| e.contains("no [audit]")), "{errs:?}");
        let text = format!(
            "{BASE}[[routes]]\nname = \"r\"\nmethods = [\"GET\"]\npath = \"/v1/x\"\nupstream = \"p\"\nallow = [\"spiffe://example.org/a\"]\npersonal_path_params = true\n"
        );
        let errs = crate::parse(Path::new("t.toml"), &text).unwrap_err();
        assert!(
            errs.0
                .iter()
                .any(|e| e.key == "routes[0].personal_path_params"),
            "{errs:?}"
        );
    }
}
