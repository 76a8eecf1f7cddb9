//! SPIFFE ID, trust domain and ID-pattern parsing on arbitrary UTF-8.
//!
//! Input: the whole input is tried as an ID, a trust domain and a pattern. If it contains a
//! `\n`, the part before it is also tried as a pattern and the part after as an ID, and
//! `SpiffeIdPattern::matches` is checked against an independent segment-wise reference.

#![no_main]

use idgate_tls::{SpiffeId, SpiffeIdPattern, TrustDomain};
use libfuzzer_sys::fuzz_target;

const SCHEME: &str = "spiffe://";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(id) = SpiffeId::new(s) {
        check_id(s, &id);
    }
    if let Ok(td) = TrustDomain::new(s) {
        check_trust_domain(&td);
    }
    if let Ok(p) = SpiffeIdPattern::new(s) {
        check_pattern(&p);
    }

    if let Some((pat, id)) = s.split_once('\n') {
        if let (Ok(p), Ok(id)) = (SpiffeIdPattern::new(pat), SpiffeId::new(id)) {
            assert_eq!(
                p.matches(&id),
                reference_matches(&p, &id),
                "pattern {p:?} vs id {id:?}"
            );
        }
    }
});

fn check_id(s: &str, id: &SpiffeId) {
    // Display and as_str round-trip the input exactly.
    assert_eq!(id.to_string(), s);
    assert_eq!(id.as_str(), s);
    assert!(s.len() <= 2048, "accepted an ID of {} bytes", s.len());

    // Trust domain name + path reconstruct the ID.
    let td = id.trust_domain_name();
    let path = id.path();
    assert_eq!(format!("{SCHEME}{td}{path}"), s);
    assert!(path.is_empty() || path.starts_with('/'), "path {path:?}");
    assert!(!path.ends_with('/'), "trailing slash accepted: {s:?}");
    assert!(!td.contains('/'), "trust domain {td:?} holds a '/'");
    assert!(!s.contains('*'), "wildcard accepted in an ID: {s:?}");
    for seg in path.split('/').skip(1) {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "segment {seg:?} in {s:?}");
    }

    // The trust domain parses on its own, both bare and as a trust domain ID, to the same value.
    let parsed_td = TrustDomain::new(td).expect("trust domain of a valid ID must parse");
    assert_eq!(parsed_td.as_str(), td);
    assert_eq!(id.trust_domain(), parsed_td);
    assert_eq!(TrustDomain::new(&format!("{SCHEME}{td}")).as_ref(), Ok(&parsed_td));

    // Re-parsing the Display form gives an equal ID.
    let again = SpiffeId::new(&id.to_string()).expect("Display form must re-parse");
    assert_eq!(&again, id);
    assert_eq!(again.trust_domain_name(), td);
    assert_eq!(again.path(), path);

    // A pattern built from the ID is the exact pattern and matches it.
    let exact = SpiffeIdPattern::new(s).expect("a valid ID is a valid pattern");
    assert_eq!(exact, SpiffeIdPattern::Exact(id.clone()));
    assert!(exact.matches(id));
    check_pattern(&exact);

    // The prefix pattern `<id>/*` never matches the ID itself, but matches a child of it.
    let prefix = SpiffeIdPattern::new(&format!("{s}/*")).expect("<valid ID>/* is a valid pattern");
    assert!(matches!(prefix, SpiffeIdPattern::Prefix(_)));
    assert!(!prefix.matches(id), "{prefix:?} matches its own base {id:?}");
    check_pattern(&prefix);
    if let Ok(child) = SpiffeId::new(&format!("{s}/x")) {
        assert!(prefix.matches(&child), "{prefix:?} does not match child {child:?}");
        assert!(!exact.matches(&child));
    }
    // A sibling that merely shares the text prefix must not match.
    if !path.is_empty() {
        if let Ok(sibling) = SpiffeId::new(&format!("{s}x/y")) {
            assert!(!prefix.matches(&sibling), "{prefix:?} matches sibling {sibling:?}");
        }
    }
}

fn check_trust_domain(td: &TrustDomain) {
    let name = td.as_str();
    assert!(!name.is_empty() && name.len() <= 255);
    assert_eq!(td.to_string(), name);
    assert_eq!(TrustDomain::new(name).as_ref(), Ok(td));
    let id = SpiffeId::new(&format!("{SCHEME}{name}")).expect("trust domain ID must parse");
    assert_eq!(id.trust_domain_name(), name);
    assert_eq!(id.path(), "");
    assert_eq!(&id.trust_domain(), td);
}

fn check_pattern(p: &SpiffeIdPattern) {
    let text = p.to_string();
    let again = SpiffeIdPattern::new(&text).expect("Display form of a pattern must re-parse");
    assert_eq!(&again, p, "pattern Display does not round-trip: {text:?}");
    if let SpiffeIdPattern::Prefix(prefix) = p {
        assert!(prefix.ends_with('/'), "prefix {prefix:?} without trailing '/'");
        let base = &prefix[..prefix.len() - 1];
        SpiffeId::new(base).expect("a prefix pattern's base must be a valid ID");
    }
}

/// What `matches` should say, computed from the parsed parts rather than string prefixes.
fn reference_matches(p: &SpiffeIdPattern, id: &SpiffeId) -> bool {
    match p {
        SpiffeIdPattern::Exact(e) => e.as_str() == id.as_str(),
        SpiffeIdPattern::Prefix(prefix) => {
            let base = SpiffeId::new(&prefix[..prefix.len() - 1]).expect("valid base");
            if base.trust_domain_name() != id.trust_domain_name() {
                return false;
            }
            let base_segs: Vec<&str> = base.path().split('/').skip(1).collect();
            let id_segs: Vec<&str> = id.path().split('/').skip(1).collect();
            id_segs.len() > base_segs.len() && id_segs[..base_segs.len()] == base_segs[..]
        }
    }
}
