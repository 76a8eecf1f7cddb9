//! The verifier's memory of verified chains: used only for the same bytes, under the same
//! bundles, inside the chain's validity; forgotten on any bundle change; bounded.

use std::time::{Duration as StdDuration, SystemTime};

use super::*;
use crate::test_ca::Ca;

fn provider() -> Arc<CryptoProvider> {
    crate::crypto_provider()
}

fn bundles(ca: &Ca) -> TrustBundles {
    let mut store = RootCertStore::empty();
    store.add(ca.root()).unwrap();
    TrustBundles::new(
        [("example.org".parse().unwrap(), Arc::new(store))],
        &provider(),
    )
    .unwrap()
}

fn verifier(bundles: &Arc<ArcSwap<TrustBundles>>) -> SpiffeClientVerifier {
    SpiffeClientVerifier::new(bundles.clone(), provider(), true)
}

fn at(offset_secs: i64) -> UnixTime {
    let now = SystemTime::now();
    let t = if offset_secs >= 0 {
        now + StdDuration::from_secs(offset_secs.unsigned_abs())
    } else {
        now - StdDuration::from_secs(offset_secs.unsigned_abs())
    };
    UnixTime::since_unix_epoch(t.duration_since(SystemTime::UNIX_EPOCH).unwrap())
}

const HOUR: i64 = 3600;

fn hits(bundles: &Arc<ArcSwap<TrustBundles>>) -> u64 {
    bundles.load().verified.hits()
}

#[test]
fn a_chain_verified_once_is_taken_from_memory_on_the_next_handshake() {
    let ca = Ca::new("example.org CA");
    let bundles = Arc::new(ArcSwap::from_pointee(bundles(&ca)));
    let v = verifier(&bundles);
    let leaf = ca.svid("spiffe://example.org/ns/kyc/sa/a").der;

    v.verify_client_cert(&leaf, &[], at(0)).unwrap();
    assert_eq!(hits(&bundles), 0);
    assert_eq!(bundles.load().verified.len(), 1);
    v.verify_client_cert(&leaf, &[], at(60)).unwrap();
    v.verify_client_cert(&leaf, &[], at(120)).unwrap();
    assert_eq!(hits(&bundles), 2);
}

#[test]
fn a_remembered_chain_outside_its_validity_is_verified_again_and_refused() {
    let ca = Ca::new("example.org CA");
    let bundles = Arc::new(ArcSwap::from_pointee(bundles(&ca)));
    let v = verifier(&bundles);
    let leaf = ca.svid("spiffe://example.org/ns/kyc/sa/a").der;
    v.verify_client_cert(&leaf, &[], at(0)).unwrap();

    let expired = v.verify_client_cert(&leaf, &[], at(25 * HOUR)).unwrap_err();
    assert!(
        matches!(
            expired,
            Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
        ),
        "the full verification gives the reason: {expired:?}"
    );
    assert!(matches!(
        v.verify_client_cert(&leaf, &[], at(-2 * HOUR)),
        Err(Error::InvalidCertificate(_))
    ));
    assert_eq!(hits(&bundles), 0);
    // Still valid now: taken from memory again.
    v.verify_client_cert(&leaf, &[], at(0)).unwrap();
    assert_eq!(hits(&bundles), 1);
}

#[test]
fn changing_the_bundles_forgets_every_remembered_chain() {
    let bundles_of = bundles;
    let old = Ca::new("old example.org CA");
    let bundles = Arc::new(ArcSwap::from_pointee(bundles_of(&old)));
    let v = verifier(&bundles);
    let leaf = old.svid("spiffe://example.org/ns/kyc/sa/a").der;
    v.verify_client_cert(&leaf, &[], at(0)).unwrap();

    // The trust domain's bundle now holds only a new CA: the old CA's SVID is refused.
    let new = Ca::new("new example.org CA");
    bundles.store(Arc::new(bundles_of(&new)));
    let refused = v.verify_client_cert(&leaf, &[], at(0)).unwrap_err();
    assert!(
        matches!(
            refused,
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{refused:?}"
    );
    assert_eq!(hits(&bundles), 0);
    assert_eq!(bundles.load().verified.len(), 0);
}

#[test]
fn another_leaf_or_another_list_of_intermediates_is_not_taken_from_memory() {
    let ca = Ca::new("example.org CA");
    let stranger = Ca::new("example.org CA");
    let bundles = Arc::new(ArcSwap::from_pointee(bundles(&ca)));
    let v = verifier(&bundles);
    let leaf = ca.svid("spiffe://example.org/ns/kyc/sa/a").der;
    v.verify_client_cert(&leaf, &[], at(0)).unwrap();

    // Same SPIFFE ID and issuer name, another CA's signature.
    let forged = stranger.svid("spiffe://example.org/ns/kyc/sa/a").der;
    assert!(v.verify_client_cert(&forged, &[], at(0)).is_err());
    // The remembered leaf with an intermediate added is another chain.
    v.verify_client_cert(&leaf, &[stranger.root()], at(0))
        .unwrap();
    assert_eq!(hits(&bundles), 0);
    assert_eq!(bundles.load().verified.len(), 2);
}

#[test]
fn a_refused_chain_is_never_remembered() {
    let ca = Ca::new("example.org CA");
    let stranger = Ca::new("stranger CA");
    let bundles = Arc::new(ArcSwap::from_pointee(bundles(&ca)));
    let v = verifier(&bundles);
    let forged = stranger.svid("spiffe://example.org/ns/kyc/sa/a").der;
    for _ in 0..2 {
        assert!(v.verify_client_cert(&forged, &[], at(0)).is_err());
    }
    let other_domain = ca.svid("spiffe://other.org/ns/kyc/sa/a").der;
    assert!(v.verify_client_cert(&other_domain, &[], at(0)).is_err());
    assert_eq!(bundles.load().verified.len(), 0);
    assert_eq!(hits(&bundles), 0);
}

#[test]
fn the_memory_of_verified_chains_is_bounded() {
    let ca = Ca::new("example.org CA");
    let memory = VerifiedChains::with_capacity(3);
    let leaves: Vec<_> = (0..7)
        .map(|i| ca.svid(&format!("spiffe://example.org/w/{i}")).der)
        .collect();
    for leaf in &leaves {
        memory.remember(ChainKey::of(leaf, &[]), leaf, &[], at(0));
        assert!(memory.len() <= 3);
    }
    let last = leaves.last().unwrap();
    assert!(memory.holds(&ChainKey::of(last, &[]), at(0)));
}

#[test]
fn the_chain_key_separates_the_certificates() {
    let a = CertificateDer::from(vec![1u8, 2, 3]);
    let b = CertificateDer::from(vec![4u8]);
    let ab = CertificateDer::from(vec![1u8, 2, 3, 4]);
    let a_b = ChainKey::of(&a, std::slice::from_ref(&b));
    assert!(a_b != ChainKey::of(&ab, &[]));
    assert!(a_b != ChainKey::of(&b, std::slice::from_ref(&a)));
    assert!(a_b == ChainKey::of(&a, &[b]));
}
