//! Typed SPIFFE identifiers, parsed exactly as the SPIFFE-ID specification says.
//!
//! A SPIFFE ID is `spiffe://<trust domain><path>`. The trust domain holds only lowercase
//! letters, digits, `.`, `-` and `_`; the path is made of `/`-separated segments of letters,
//! digits, `.`, `-` and `_`, with no empty, `.` or `..` segment and no trailing slash. There
//! is no port, user info, query or fragment, and the whole ID is at most 2048 bytes.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a SPIFFE ID, trust domain or ID pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain may only contain lowercase letters, digits, '.', '-' and '_'")]
    BadTrustDomainChar,
    #[error("the trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    #[error("the path may only contain letters, digits, '.', '-', '_' and '/' separators")]
    BadPathChar,
    #[error("the path has an empty segment or a trailing '/'")]
    EmptySegment,
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    #[error("a SPIFFE ID is at most 2048 bytes")]
    TooLong,
    #[error("a wildcard is only allowed as a whole last segment: \"spiffe://td/prefix/*\"")]
    BadWildcard,
}

fn is_td_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !td.bytes().all(is_td_char) {
        return Err(SpiffeIdError::BadTrustDomainChar);
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // The caller split at the first '/', so the path starts with it.
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if !segment.bytes().all(is_path_char) {
            return Err(SpiffeIdError::BadPathChar);
        }
    }
    Ok(())
}

/// A SPIFFE trust domain, such as `example.org`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID
    /// (`spiffe://example.org`).
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let name = s.strip_prefix(SCHEME).unwrap_or(s);
        check_trust_domain(name)?;
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A workload's SPIFFE ID, such as `spiffe://example.org/ns/kyc/sa/onboarding`.
///
/// Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Arc<str>,
    td_len: usize,
}

impl SpiffeId {
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td)?;
        check_path(path)?;
        Ok(Self {
            id: s.into(),
            td_len: td.len(),
        })
    }

    /// The trust domain name (`example.org`).
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().into())
    }

    /// The path (`/ns/kyc/sa/onboarding`), empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.id[SCHEME.len() + self.td_len..]
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// An entry of a route's `allow` list: one exact SPIFFE ID, or every ID under a path prefix
/// (`spiffe://example.org/ns/kyc/*`). A prefix matches whole segments only, so
/// `.../ns/kyc/*` matches `.../ns/kyc/sa/x` but neither `.../ns/kyc` nor `.../ns/kycx/y`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum SpiffeIdPattern {
    Exact(SpiffeId),
    /// Holds the prefix including its trailing `/`, e.g. `spiffe://example.org/ns/kyc/`.
    Prefix(Arc<str>),
}

impl SpiffeIdPattern {
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if let Some(base) = s.strip_suffix("/*") {
            // The part before the wildcard must itself be a valid ID.
            let base = SpiffeId::new(base)?;
            let mut prefix = String::with_capacity(base.as_str().len() + 1);
            prefix.push_str(base.as_str());
            prefix.push('/');
            return Ok(Self::Prefix(prefix.into()));
        }
        if s.contains('*') {
            return Err(SpiffeIdError::BadWildcard);
        }
        SpiffeId::new(s).map(Self::Exact)
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(exact) => exact == id,
            Self::Prefix(prefix) => {
                id.as_str().len() > prefix.len() && id.as_str().starts_with(&**prefix)
            }
        }
    }
}

impl fmt::Display for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => f.write_str(id.as_str()),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl fmt::Debug for SpiffeIdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeIdPattern({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_ids() {
        let id = SpiffeId::new("spiffe://example.org/ns/kyc/sa/onboarding").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/kyc/sa/onboarding");
        let td = SpiffeId::new("spiffe://example.org").unwrap();
        assert_eq!(td.path(), "");
    }

    #[test]
    fn refuses_malformed_ids() {
        for (bad, why) in [
            ("http://example.org/a", SpiffeIdError::WrongScheme),
            ("SPIFFE://example.org/a", SpiffeIdError::WrongScheme),
            ("spiffe:///a", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://Example.org/a", SpiffeIdError::BadTrustDomainChar),
            (
                "spiffe://example.org:443/a",
                SpiffeIdError::BadTrustDomainChar,
            ),
            (
                "spiffe://user@example.org/a",
                SpiffeIdError::BadTrustDomainChar,
            ),
            ("spiffe://example.org/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/", SpiffeIdError::EmptySegment),
            ("spiffe://example.org/a/../b", SpiffeIdError::DotSegment),
            ("spiffe://example.org/a/./b", SpiffeIdError::DotSegment),
            ("spiffe://example.org/a?x=1", SpiffeIdError::BadPathChar),
            ("spiffe://example.org/a#f", SpiffeIdError::BadPathChar),
            ("spiffe://example.org/a%20b", SpiffeIdError::BadPathChar),
        ] {
            assert_eq!(SpiffeId::new(bad).unwrap_err(), why, "{bad}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2100));
        assert_eq!(SpiffeId::new(&long).unwrap_err(), SpiffeIdError::TooLong);
    }

    #[test]
    fn prefix_pattern_matches_whole_segments_only() {
        let p = SpiffeIdPattern::new("spiffe://example.org/ns/kyc/*").unwrap();
        let ok = SpiffeId::new("spiffe://example.org/ns/kyc/sa/x").unwrap();
        let same = SpiffeId::new("spiffe://example.org/ns/kyc").unwrap();
        let sibling = SpiffeId::new("spiffe://example.org/ns/kycx/sa").unwrap();
        let other_td = SpiffeId::new("spiffe://example.com/ns/kyc/sa/x").unwrap();
        assert!(p.matches(&ok));
        assert!(!p.matches(&same));
        assert!(!p.matches(&sibling));
        assert!(!p.matches(&other_td));
        assert_eq!(
            SpiffeIdPattern::new("spiffe://example.org/ns/*/sa").unwrap_err(),
            SpiffeIdError::BadWildcard
        );
        assert_eq!(p.to_string(), "spiffe://example.org/ns/kyc/*");
    }
}
