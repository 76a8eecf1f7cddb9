//! What the sections' unit tests share: a minimal file that is valid but for what a test
//! adds, and the problems of a file as `key: reason` lines.

use std::path::Path;

use crate::ConfigError;

/// A listener, the gateway's SVID files (named, not read while parsing) and one upstream,
/// `p`.
pub(crate) const BASE: &str = r#"
[listener]
bind = "127.0.0.1:8443"
[identity]
svid_cert = "c"
svid_key = "k"
[[upstreams]]
name = "p"
url = "https://provider.test"
"#;

/// The problems of `text`, read as `file`, that `keep` takes, as `key: reason`.
pub(crate) fn problems(
    file: &Path,
    text: &str,
    keep: impl Fn(&ConfigError) -> bool,
) -> Vec<String> {
    match crate::parse(file, text) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.into_iter()
                .filter(|e| keep(e))
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect()
        }
    }
}

/// The problems `extra` brings to `base`: those at a key where `base` alone has none.
pub(crate) fn added_problems(file: &Path, base: &str, extra: &str) -> Vec<String> {
    let before: Vec<String> = match crate::parse(file, base) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|e| e.key).collect(),
    };
    problems(file, &format!("{base}{extra}"), |e| {
        !before.contains(&e.key)
    })
}
