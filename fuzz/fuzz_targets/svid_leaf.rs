//! X.509-SVID leaf checks on arbitrary bytes (DER). Must never panic; an accepted
//! certificate's SPIFFE ID must itself be a valid, round-tripping SPIFFE ID with a path.

#![no_main]

use idgate_tls::{SpiffeId, leaf_spiffe_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = leaf_spiffe_id(data) {
        let again = SpiffeId::new(id.as_str()).expect("accepted SVID ID must re-parse");
        assert_eq!(again, id);
        // A leaf SVID names a workload, never a bare trust domain.
        assert!(!id.path().is_empty(), "accepted trust-domain ID {id:?} as a leaf");
    }
});
